"""``xnat-local``: the server runs as the user's Unix account in a bubblewrap sandbox.

Only the scope's archive directories are bound into the sandbox, read-only,
at /xnat/data (:mod:`spawner.sandbox`), when ``xnat_data_root`` is set;
otherwise nothing is mounted and the server reads through XNAT's REST API.
The user's Unix account must exist and not be a system account
(:func:`hub_ext.unix_accounts.unix_account`, ``c.UnixAccounts.min_uid``), as for JupyterHub's
LocalProcessSpawner.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from jupyterhub.spawner import LocalProcessSpawner
from traitlets import List, Unicode, default

import xnat_bridge
from hub_ext.unix_accounts import unix_account

from .mixin import XnatScopedSpawner
from .plan import DataMount, SpawnPlan
from .sandbox import SandboxSpec, bwrap_args


def _code_roots() -> list[str]:
    """Where our packages and the interpreter live (for editable installs: the checkout)."""
    roots = {sys.prefix, os.path.realpath(sys.base_prefix),
             str(Path(xnat_bridge.__file__).resolve().parents[1])}
    return sorted(r for r in roots if r and r != "/")


class XnatLocalSpawner(XnatScopedSpawner, LocalProcessSpawner):
    """Local process in a bubblewrap sandbox that sees only the chosen XNAT scope."""

    backends = ("local",)

    bwrap_path = Unicode(
        help="Path of the bubblewrap executable (default: ``bwrap`` on PATH).",
    ).tag(config=True)

    @default("bwrap_path")
    def _default_bwrap(self):
        return shutil.which("bwrap") or "/usr/bin/bwrap"

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

    def data_mount(self) -> DataMount:
        """Read-only binds of the scope's folders of ``xnat_data_root``; none when it is empty."""
        return DataMount.HOST_PATH if self.xnat_data_root else DataMount.NONE

    def sandbox_spec(self, plan: SpawnPlan) -> SandboxSpec:
        home = unix_account(self.user.name, self.config).pw_dir  # no system accounts
        staging = plan.server_env.offload.staging_dir
        return SandboxSpec(self.xnat_data_root, home,
                           tuple(_code_roots() + ["/run/munge", *self.sandbox_ro_paths]),
                           (staging,) if staging else (), self.bwrap_path)

    def apply_plan(self, plan: SpawnPlan) -> None:
        self.cmd = bwrap_args(plan, self.sandbox_spec(plan)) + list(self.server_cmd)
