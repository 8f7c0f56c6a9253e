"""Which Unix accounts a hub user may run as: never a system account.

The local and Slurm backends run each server as the Unix account of the hub
user's name (as JupyterHub's LocalProcessSpawner and batchspawner do). A hub
name that is also the name of a system account (``root``, ``daemon``, ``slurm``,
``munge``, ...) must not get a server, whatever XNAT says about the login:
:class:`UnixAccounts` refuses accounts whose uid is below ``min_uid``.

One setting, read where it matters:

* at login (:class:`hub_ext.auth.XnatAuthenticator`): a name whose Unix account
  is a system account is refused (a name without a Unix account may log in:
  Kubernetes servers need none);
* at every start of a local or Slurm server (:meth:`UnixAccounts.entry`): the
  account must exist and be at or above the floor.

Configuration (``jupyterhub_config.py``)::

    c.UnixAccounts.min_uid = 1000     # Debian's UID_MIN (/etc/login.defs)

``pwd`` lookups may block (LDAP/SSSD): call these in a thread from the event loop.
"""

from __future__ import annotations

import pwd

from traitlets import Int
from traitlets.config import LoggingConfigurable

from xnat_bridge.errors import PermissionDenied


class UnixAccounts(LoggingConfigurable):
    """The rule for the Unix accounts that hub users' servers run as."""

    min_uid = Int(
        1000,
        help="""Lowest uid of a Unix account that a hub user's server may run as, e.g.
        ``1000`` (Debian's ``UID_MIN`` in /etc/login.defs, the default) or ``10000`` on a site
        whose LDAP accounts start there. A login whose hub name is the name of an account
        below it (``root``, ``daemon``, a service account) is refused, and so is every start
        of a local or Slurm server as such an account. Checked at login and at each start.""",
    ).tag(config=True)

    def lookup(self, name: str) -> pwd.struct_passwd | None:
        """The account *name* if it exists (and is allowed); None when there is none.
        A system account raises :class:`PermissionDenied` (blocking: ``pwd``)."""
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            return None
        if entry.pw_uid < self.min_uid:
            self.log.warning("refused hub user %r: Unix account uid %d is below UnixAccounts.min_uid %d",
                             name, entry.pw_uid, self.min_uid)
            raise PermissionDenied(
                f"The hub user {name!r} is refused because its Unix account is a system account "
                f"(uid {entry.pw_uid}, below this hub's minimum {self.min_uid}).")
        return entry

    def entry(self, name: str) -> pwd.struct_passwd:
        """The account a server of *name* runs as: it must exist and not be a system account
        (:class:`PermissionDenied` otherwise; blocking: ``pwd``)."""
        entry = self.lookup(name)
        if entry is None:
            raise PermissionDenied(
                f"There is no Unix account {name!r} on this hub to run your server as; ask the "
                "hub's administrators to create it.")
        return entry


def unix_account(name: str, config=None) -> pwd.struct_passwd:
    """``UnixAccounts(config=config).entry(name)``: what the local and Slurm spawners call
    before they run anything as the user *name* (``config``: the spawner's ``self.config``)."""
    return UnixAccounts(config=config).entry(name)
