"""``xnat-local``: the server runs as the user's Unix account in a bubblewrap sandbox.

Only the scope's archive directories are bound into the sandbox, read-only,
at /xnat/data (:mod:`spawner.sandbox`), when ``xnat_data_root`` is set;
otherwise nothing is mounted and the server reads through XNAT's REST API.
The user's Unix account must exist and not be a system account
(:func:`hub_ext.unix_accounts.unix_account`, ``c.UnixAccounts.min_uid``), as for JupyterHub's
LocalProcessSpawner.

The archive is closed to the users' accounts (docs/admin.md: files of the group
``archive_group``, under a directory only root can traverse). So, when the hub
is root, ``bwrap`` runs as root — JupyterHub's drop to the user before ``exec``
(``make_preexec_fn``) is skipped — sets up the scope's binds, and the server
command is run through ``setpriv`` (:func:`spawner.sandbox.setpriv_args`): the
user's uid, gid and groups, plus ``archive_group`` only when the scope is
mounted, no capabilities, ``no_new_privs``. Before that the hub creates the
user's staging directory (:mod:`spawner.userdirs`). A hub that is not root runs
``bwrap`` as JupyterHub would (as the user), which can bind no closed archive.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from pathlib import Path

from traitlets import Any, List, Unicode, default

import xnat_bridge
from hub_ext.unix_accounts import unix_account, unix_account_name
from xnat_bridge.errors import XnatHpcError
from xnat_bridge.extras import needs_extra

from .mixin import XnatScopedSpawner
from .plan import DataMount, SpawnPlan
from .sandbox import (
    RunAs,
    SandboxSpec,
    bwrap_args,
    closed_to_users,
    sandbox_identity,
    sandboxed_server_pids,
    setpriv_args,
)
from .userdirs import prepare_staging

with needs_extra("hub", "the local backend (spawner.local)"):
    from jupyterhub.spawner import LocalProcessSpawner

#: archive roots already found open to users (warned about once per hub process)
_warned_open: set[str] = set()


def _code_roots() -> list[str]:
    """Where our packages and the interpreter live (for editable installs: the checkout)."""
    roots = {sys.prefix, os.path.realpath(sys.base_prefix),
             str(Path(xnat_bridge.__file__).resolve().parents[1])}
    return sorted(r for r in roots if r and r != "/")


def _ancestors(path: str) -> list[os.stat_result]:
    """``stat`` of *path* and of every directory above it (blocking)."""
    out, current = [], os.path.realpath(path)
    while True:
        out.append(os.stat(current))
        if current == "/":
            return out
        current = os.path.dirname(current)


class XnatLocalSpawner(XnatScopedSpawner, LocalProcessSpawner):
    """Local process in a bubblewrap sandbox that sees only the chosen XNAT scope."""

    backends = ("local",)

    bwrap_path = Unicode(
        help="Path of the bubblewrap executable (default: ``bwrap`` on PATH).",
    ).tag(config=True)

    @default("bwrap_path")
    def _default_bwrap(self):
        return shutil.which("bwrap") or "/usr/bin/bwrap"

    setpriv_path = Unicode(
        help="""Path of util-linux's ``setpriv`` (default: ``setpriv`` on PATH), which drops
        from root to the user inside the sandbox when the hub runs as root.""",
    ).tag(config=True)

    @default("setpriv_path")
    def _default_setpriv(self):
        return shutil.which("setpriv") or "/usr/bin/setpriv"

    archive_group = Unicode(
        "xnat-archive",
        help="""Unix group that may read the XNAT archive (``xnat_data_root``), e.g.
        ``xnat-archive``: the archive's directories 0750 and files 0640 of this group, under a
        directory only root can traverse (0700). A local server whose scope is mounted gets the
        group inside its sandbox only, where nothing of the archive but its scope exists; no
        user may be a member of it otherwise. Empty: no group is granted (then the archive's
        files must be readable by others, still under the root-only directory). A group that
        does not exist refuses starts that mount the scope, saying so. See docs/admin.md.""",
    ).tag(config=True)

    sandbox_ro_paths = List(
        Unicode(),
        help="""Extra host paths bound read-only into the sandbox, e.g. a shared software
        tree. The interpreter, the Python environment and the munge socket directory
        (for Slurm commands) are always bound.""",
    ).tag(config=True)

    server_cmd = List(
        Unicode(),
        help="""The single-user server command run inside the sandbox (default: this
        environment's ``jupyterhub-singleuser``).""",
    ).tag(config=True)

    @default("server_cmd")
    def _default_server_cmd(self):
        return [os.path.join(sys.prefix, "bin", "jupyterhub-singleuser")]

    run_as = Any(None, help="The RunAs of the current start when the hub is root (set by prepare_host).")

    async def _signal(self, sig):
        """Signal the server inside the sandbox, not bubblewrap.

        ``bwrap`` passes no signal on: a SIGINT or SIGTERM to it ends bwrap alone, and
        ``--die-with-parent`` then kills the server with SIGKILL before its shutdown ran — the
        offload jobs it follows kept running, their bundles and worker TLS keys left on the
        staging area. JupyterHub's stop sends SIGINT, waits ``interrupt_timeout`` (the grace
        period, 10 s by default), then SIGTERM (``term_timeout``): both reach the server as
        SIGTERM, whose shutdown stops its extensions — ours cancels its jobs and removes what
        they leave. Only the last resort, SIGKILL, goes to bwrap (which takes the sandbox
        down with it). Returns whether the sandbox still exists.
        """
        inner = sandboxed_server_pids(self.pid) if sig != signal.SIGKILL and self.pid else []
        if not inner:
            return await super()._signal(sig)
        # SIGTERM for JupyterHub's SIGINT too: jupyter_server without a terminal takes SIGINT
        # as a KeyboardInterrupt, which ends its loop without stopping its extensions
        for pid in inner:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        self.log.info("sent signal %s to %s's server (pids %s) in its sandbox", signal.SIGTERM.value,
                      self._log_name, inner)
        return True

    def data_mount(self) -> DataMount:
        """Read-only binds of the scope's folders of ``xnat_data_root``; none when it is empty."""
        return DataMount.HOST_PATH if self.xnat_data_root else DataMount.NONE

    def sandbox_spec(self, plan: SpawnPlan) -> SandboxSpec:
        home = unix_account(self.user.name, self.config).pw_dir  # no system accounts
        staging = plan.server_env.offload.staging_dir
        return SandboxSpec(self.xnat_data_root, home,
                           tuple(_code_roots() + ["/run/munge", *self.sandbox_ro_paths]),
                           (staging,) if staging else (), self.bwrap_path)

    def _run_as(self, plan: SpawnPlan, account) -> RunAs:
        """The user's identity inside the sandbox (blocking: group database)."""
        run_as = sandbox_identity(account, mounted=bool(plan.mounts), archive_group=self.archive_group,
                                  setpriv=self.setpriv_path, setting="XnatLocalSpawner", log=self.log,
                                  who=self._log_name)
        if not os.access(self.setpriv_path, os.X_OK):
            self.log.error("cannot start %s's server: %s is not executable; install util-linux's "
                           "setpriv or set XnatLocalSpawner.setpriv_path", self._log_name, self.setpriv_path)
            raise XnatHpcError("Your server was not started: this hub cannot run servers as their "
                               "users. The hub's administrators have been told.")
        return run_as

    def _check_archive_closed(self) -> None:
        """Warn the admin (once) when users' accounts can reach the archive outside any
        sandbox (blocking: ``stat``)."""
        root = self.xnat_data_root
        if not root or root in _warned_open:
            return
        try:
            closed = closed_to_users(_ancestors(root))
        except OSError as exc:
            self.log.warning("cannot check the XNAT archive %s: %s", root, exc)
            return
        if not closed:
            _warned_open.add(root)
            self.log.warning("the XNAT archive %s can be reached by users' own accounts, outside any "
                             "sandbox and unaudited: put it under a directory only root can traverse "
                             "(chmod 0700), see docs/admin.md", root)

    async def prepare_host(self, plan: SpawnPlan) -> None:
        """As root: the user's staging directory, then whom the sandbox drops to."""
        account = await asyncio.to_thread(unix_account, self.user.name, self.config)
        await prepare_staging(self, plan, account)
        self.run_as = None
        if os.geteuid() == 0:
            if plan.mounts:
                await asyncio.to_thread(self._check_archive_closed)
            self.run_as = await asyncio.to_thread(self._run_as, plan, account)

    def apply_plan(self, plan: SpawnPlan) -> None:
        cmd = bwrap_args(plan, self.sandbox_spec(plan))
        if self.run_as is not None:
            cmd += setpriv_args(self.run_as)
        self.cmd = cmd + list(self.server_cmd)

    def make_preexec_fn(self, name):
        """Root hub: none — ``bwrap`` starts as root and ``setpriv`` drops to the user inside
        the sandbox. Otherwise JupyterHub's (become the user before ``exec``)."""
        if self.run_as is not None:
            return None
        return super().make_preexec_fn(unix_account_name(name, self.config))
