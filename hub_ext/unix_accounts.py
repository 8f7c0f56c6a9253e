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
  account must exist and be at or above the floor — or, where the hub's machine owns its
  accounts (``create_missing``), it is created then, as JupyterHub's ``LocalAuthenticator``
  does with ``create_system_users``.

Configuration (``jupyterhub_config.py``)::

    c.UnixAccounts.min_uid = 1000     # Debian's UID_MIN (/etc/login.defs)
    c.UnixAccounts.create_missing = True   # a single machine whose accounts the hub may make

``pwd`` lookups may block (LDAP/SSSD): call these in a thread from the event loop.
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess

from traitlets import Bool, Int, List, TraitError, Unicode, validate
from traitlets.config import LoggingConfigurable

from xnat_bridge.errors import PermissionDenied, XnatHpcError

#: the names the hub creates accounts for: lower-case Unix account names (what
#: :func:`hub_ext.names.hub_name` gives every login under the default ``name_pattern``)
CREATABLE = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")


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

    create_missing = Bool(
        False,
        help="""Create the Unix account of a hub user who has none when their local or Slurm
        server starts (``add_user_cmd`` + the name, as root; the home made ``0700``), instead of
        refusing the start. For a single machine whose accounts the hub owns (the demo, a lab
        workstation): where accounts come from a directory (LDAP) and Slurm nodes share them,
        leave it off and map logins onto the directory's accounts with
        ``c.XnatAuthenticator.username_map``. Only lower-case Unix names are created; the new
        account must still be at or above ``min_uid``.""",
    ).tag(config=True)

    name_template = Unicode(
        "{name}",
        help="""The Unix account a hub user's server runs as, from the hub user's name:
        ``{name}`` (the default: the account of the hub user's own name, as JupyterHub's
        LocalProcessSpawner and batchspawner have it), or e.g. ``xnat-{name}`` on a machine whose
        people have ordinary logins of their own, to keep the hub's servers, workspaces and Slurm
        jobs in accounts apart from them (the test suite runs in throwaway accounts this way,
        never in the demo users'). Applied wherever the hub or governance turns a hub user into
        a Unix account: login and start checks, ``create_missing``, the servers' and jobs'
        uid, the revocation's ``scancel``.""",
    ).tag(config=True)

    @validate("name_template")
    def _check_template(self, proposal):
        template = proposal["value"]
        if template.count("{name}") != 1 or "{" in template.replace("{name}", "") or "/" in template:
            raise TraitError(f"UnixAccounts.name_template must hold {{name}} once and no other field "
                             f"or '/', not {template!r}")
        return template

    def account_name(self, hub_name: str) -> str:
        """The Unix account name of the hub user *hub_name* (:attr:`name_template`; pure)."""
        return self.name_template.replace("{name}", hub_name)

    add_user_cmd = List(
        Unicode(), ["useradd", "--create-home", "--user-group", "--shell", "/bin/bash"],
        help="""The command that creates an account (``create_missing``); the name is appended.""",
    ).tag(config=True)

    def lookup(self, hub_name: str) -> pwd.struct_passwd | None:
        """The account of the hub user *hub_name* (:meth:`account_name`) if it exists (and is
        allowed); None when there is none. A system account raises :class:`PermissionDenied`
        (blocking: ``pwd``)."""
        name = self.account_name(hub_name)
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            return None
        if entry.pw_uid < self.min_uid:
            self.log.warning("refused hub user %r: Unix account %r uid %d is below UnixAccounts.min_uid %d",
                             hub_name, name, entry.pw_uid, self.min_uid)
            raise PermissionDenied(
                f"The hub user {hub_name!r} is refused because its Unix account is a system account "
                f"(uid {entry.pw_uid}, below this hub's minimum {self.min_uid}).")
        return entry

    def entry(self, hub_name: str) -> pwd.struct_passwd:
        """The account a server of the hub user *hub_name* runs as: it must exist and not be a
        system account (:class:`PermissionDenied` otherwise; blocking: ``pwd``)."""
        entry = self.lookup(hub_name)
        name = self.account_name(hub_name)
        if entry is None and self.create_missing:
            entry = self.create(hub_name)
        if entry is None:
            raise PermissionDenied(
                f"There is no Unix account {name!r} on this hub to run your server as; ask the "
                "hub's administrators to create it (or to map your XNAT login to your account).")
        return entry

    def create(self, hub_name: str) -> pwd.struct_passwd:
        """Create the account of the hub user *hub_name* (``add_user_cmd``), its home ``0700``;
        the new entry, or :class:`PermissionDenied` naming why not (blocking)."""
        name = self.account_name(hub_name)
        if not CREATABLE.fullmatch(name):
            raise PermissionDenied(f"The hub does not create a Unix account named {name!r} (only lower-case "
                                   "Unix names); ask the hub's administrators to create or map it.")
        cmd = [*self.add_user_cmd, name]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.log.error("creating the Unix account %r failed: %s", name, exc)
            raise XnatHpcError(f"The Unix account {name!r} could not be created; the hub's administrators "
                               "have been told.") from None
        if done.returncode != 0 and self.lookup(hub_name) is None:  # another start may have made it
            self.log.error("creating the Unix account %r failed (%s exit %d): %s", name, cmd[0],
                           done.returncode, done.stderr.strip()[:500])
            raise XnatHpcError(f"The Unix account {name!r} could not be created; the hub's administrators "
                               "have been told.")
        entry = self.lookup(hub_name)
        if entry is None:
            raise XnatHpcError(f"The Unix account {name!r} was not found after it was created.")
        if os.path.isdir(entry.pw_dir) and os.stat(entry.pw_dir).st_uid == entry.pw_uid:
            os.chmod(entry.pw_dir, 0o700)  # a user's workspace is theirs alone
        self.log.info("created the Unix account %r (uid %d) for its hub user", name, entry.pw_uid)
        return entry


def unix_account(hub_name: str, config=None) -> pwd.struct_passwd:
    """``UnixAccounts(config=config).entry(hub_name)``: what the local, Slurm and Kubernetes
    spawners call before they run anything as the hub user *hub_name* (``config``: the
    spawner's ``self.config``)."""
    return UnixAccounts(config=config).entry(hub_name)


def unix_account_name(hub_name: str, config=None) -> str:
    """The Unix account name of the hub user *hub_name* under ``config``'s
    ``UnixAccounts.name_template`` (pure but for reading the configuration)."""
    return UnixAccounts(config=config).account_name(hub_name)
