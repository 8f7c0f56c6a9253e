"""The sbatch script of the Slurm backend, as a pure function.

Only values from the validated profile (never raw ``user_options``) reach the
script, each checked against a strict character set, and the script holds no
secret: slurmctld keeps a copy of every batch script and of the environment
it was submitted with. The server fetches its tokens at start from the hub
with a one-time code bound to its Slurm job id (:mod:`hub_ext.bootstrap`).

A profile that names where its nodes mount the archive (``archive_node_path``)
runs the server in a per-job sandbox on the node (:class:`NodeSandbox`): the job is
submitted by the hub as root, and its script does what the local backend's hub does —
``bwrap`` (:func:`spawner.sandbox.bwrap_args`, the one builder) binds the scope's folders
of the node path read-only in the plan's layout and nothing else of the archive, then
``setpriv`` drops to the user, with the archive group inside the sandbox only. Every
argument is quoted with :func:`shlex.quote`; the job's output goes to a directory of
root's on the nodes (``NodeSandbox.log_dir``), never the user's home, which root would
write through the user's links. Without a node path the job is the user's, as before,
and mounts nothing.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
import shlex

from hub_ext.profiles import format_memory, format_walltime
from xnat_bridge.errors import InvalidRequest

from .plan import SECRET_NAME, SpawnPlan
from .sandbox import RunAs, SandboxSpec, sandbox_command

_SBATCH_VALUE = re.compile(r"^[A-Za-z0-9_.:,=+@/-]{1,200}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


@dataclasses.dataclass(frozen=True)
class SlurmSettings:
    """Site settings of the Slurm backend (traits of the spawner)."""

    launcher: tuple[str, ...]         #: the command that fetches the secrets and starts the server
    server_cmd: tuple[str, ...]       #: the single-user server command (after the launcher's ``--``)
    home: str
    log_dir: str = ""                 #: where Slurm writes the server log; default: the home
    extra_directives: tuple[str, ...] = ()   #: admin-written ``#SBATCH`` lines (trusted)
    #: the sandbox on the node: given exactly when the profile names ``archive_node_path``
    sandbox: NodeSandbox | None = None


@dataclasses.dataclass(frozen=True)
class NodeSandbox:
    """The per-job sandbox on the compute node (a profile with ``archive_node_path``). The
    archive root of its :class:`~spawner.sandbox.SandboxSpec` is the profile's node path and
    its home the job's (:attr:`SlurmSettings.home`): :meth:`spec` puts them together."""

    run_as: RunAs                     #: the user inside the sandbox (uid, gid, groups + archive group)
    log_dir: str                      #: root's directory on the nodes for the job's output (not the home)
    ro_paths: tuple[str, ...] = ()    #: read-only binds: the Python environment, the code, /run/munge
    rw_paths: tuple[str, ...] = ()    #: read-write binds: the user's staging directory
    bwrap: str = "/usr/bin/bwrap"     #: ``bwrap`` on the nodes

    def spec(self, archive_root: str, home: str) -> SandboxSpec:
        return SandboxSpec(archive_root, home, self.ro_paths, self.rw_paths, self.bwrap)


def split_env(env: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(public, secret): secrets are handed over by the hub at start, never through Slurm."""
    public, secret = {}, {}
    for key, value in env.items():
        (secret if SECRET_NAME.search(key) else public)[key] = value
    return public, secret


def _value(value: str, what: str) -> str:
    value = str(value)
    if not _SBATCH_VALUE.match(value):
        raise InvalidRequest(f"{what} {value!r} contains characters sbatch does not accept here")
    return value


def directives(plan: SpawnPlan) -> list[str]:
    """``#SBATCH`` resource lines from the profile."""
    r = plan.profile.resources
    lines = [f"--cpus-per-task={int(r.cpus)}"]
    if r.memory:
        lines.append(f"--mem={format_memory(r.memory)}")
    if r.walltime:
        lines.append(f"--time={format_walltime(r.walltime)}")
    if r.gpus:
        lines.append(f"--gres=gpu:{int(r.gpus)}")
    for key, value in (("partition", r.partition), ("account", r.account), ("qos", r.qos),
                       ("constraint", r.constraint)):
        if value:
            lines.append(f"--{key}={_value(value, key)}")
    return lines


def _inside(path: str, directory: str) -> bool:
    path, directory = posixpath.normpath(path), posixpath.normpath(directory)
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _sandbox(plan: SpawnPlan, settings: SlurmSettings) -> NodeSandbox | None:
    """The node sandbox of *plan*, checked against the profile: one exactly when the profile
    names ``archive_node_path``, and a mounted scope only with one."""
    node_path = plan.profile.archive_node_path
    sandbox = settings.sandbox
    if node_path is None and sandbox is not None:
        raise InvalidRequest(f"profile {plan.profile.slug!r} names no archive_node_path, so its "
                             "Slurm job has no sandbox on the node")
    if node_path is not None and sandbox is None:
        raise InvalidRequest(f"profile {plan.profile.slug!r} names archive_node_path {node_path!r} "
                             "but the Slurm job was given no sandbox to bind it in")
    if plan.mounts and sandbox is None:
        raise InvalidRequest(f"the spawn plan of {plan.user} mounts {len(plan.mounts)} archive "
                             "folders, but a Slurm job without a node sandbox can mount none")
    if sandbox is not None:
        log_dir = _value(sandbox.log_dir, "log directory")
        if not log_dir.startswith("/") or _inside(log_dir, settings.home) or _inside(settings.home, log_dir):
            raise InvalidRequest(f"log directory {sandbox.log_dir!r} of a sandboxed server job must be an "
                                 f"absolute directory of root's on the nodes, outside the home "
                                 f"{settings.home!r} (root writes the job's output there)")
    return sandbox


def batch_script(plan: SpawnPlan, settings: SlurmSettings, env_names: list[str]) -> str:
    """The whole script; *env_names*: the (public) variables of ``sbatch``'s environment, all of
    the job's (``--export=ALL``: the caller runs ``sbatch`` with those and nothing else)."""
    for name in env_names:
        if not ENV_NAME.match(name) or SECRET_NAME.search(name):
            raise InvalidRequest(f"environment variable {name!r} may not be exported to Slurm")
    sandbox = _sandbox(plan, settings)
    server = _value(plan.server_name or "default", "server name") if plan.server_name else "default"
    log_dir = sandbox.log_dir if sandbox is not None else settings.log_dir or settings.home
    head = ["#!/bin/bash",
            f"#SBATCH --job-name=jupyter-{_value(plan.user, 'user')}-{server}",
            f"#SBATCH --output={_value(log_dir, 'log directory')}/jupyter-xnat-%j.log",
            f"#SBATCH --chdir={_value(settings.home, 'home')}",
            # the job's environment is sbatch's, which the backend gives exactly these names (not
            # a list of names or NONE: Slurm then loads the login environment, a second per start)
            "#SBATCH --export=ALL",
            f"# environment: {','.join(sorted(env_names)) or '(none)'}"]
    head += [f"#SBATCH {line}" for line in directives(plan)]
    head += [f"#SBATCH {line}" for line in settings.extra_directives]
    argv = [*settings.launcher, "--", *settings.server_cmd]
    body = ["set -euo pipefail", "umask 077",
            "# the server fetches its tokens from the hub with a one-time code; none is in this script"]
    if sandbox is not None:
        node_path = plan.profile.archive_node_path
        argv = sandbox_command(plan, sandbox.spec(node_path, settings.home), sandbox.run_as) + argv
        body.append("# root builds the server's sandbox (of the archive only the scope's folders, "
                    "read-only), then setpriv drops to the user for good")
    body.append(f"exec {' '.join(shlex.quote(part) for part in argv)}")
    return "\n".join(head + ["", *body]) + "\n"
