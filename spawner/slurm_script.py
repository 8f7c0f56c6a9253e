"""The sbatch script of the Slurm backend, as a pure function.

Only values from the validated profile (never raw ``user_options``) reach the
script, each checked against a strict character set, and the script holds no
secret: slurmctld keeps a copy of every batch script and of the environment
it was submitted with. The server fetches its tokens at start from the hub
with a one-time code bound to its Slurm job id (:mod:`hub_ext.bootstrap`).
"""

from __future__ import annotations

import dataclasses
import re
import shlex

from hub_ext.profiles import format_memory, format_walltime
from xnat_bridge.errors import InvalidRequest

from .plan import SECRET_NAME, SpawnPlan

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


def batch_script(plan: SpawnPlan, settings: SlurmSettings, env_names: list[str]) -> str:
    """The whole script; *env_names*: the (public) variables to ``--export``."""
    for name in env_names:
        if not ENV_NAME.match(name) or SECRET_NAME.search(name):
            raise InvalidRequest(f"environment variable {name!r} may not be exported to Slurm")
    server = _value(plan.server_name or "default", "server name") if plan.server_name else "default"
    log_dir = settings.log_dir or settings.home
    head = ["#!/bin/bash",
            f"#SBATCH --job-name=jupyter-{_value(plan.user, 'user')}-{server}",
            f"#SBATCH --output={_value(log_dir, 'log directory')}/jupyter-xnat-%j.log",
            f"#SBATCH --chdir={_value(settings.home, 'home')}",
            f"#SBATCH --export={','.join(sorted(env_names)) or 'NONE'}"]
    head += [f"#SBATCH {line}" for line in directives(plan)]
    head += [f"#SBATCH {line}" for line in settings.extra_directives]
    cmd = " ".join(shlex.quote(part) for part in (*settings.launcher, "--", *settings.server_cmd))
    body = ["set -euo pipefail", "umask 077",
            "# the server fetches its tokens from the hub with a one-time code; none is in this script",
            f"exec {cmd}"]
    return "\n".join(head + ["", *body]) + "\n"
