"""Hand a batch-spawned server its secrets without Slurm ever storing them.

slurmctld keeps every batch script and the environment it was submitted with,
so the Slurm backend submits neither the hub API token nor the XNAT alias
token. Instead it registers them here under a **one-time code** (random, 256
bits, valid for ``ttl`` seconds) bound to the Slurm job id; the code is the one
secret-looking value in the job's environment. At start, the launcher
(:mod:`xnat_bridge.launch`) posts ``{code, job_id, port}`` to
``/hub/api/xnat-hpc/bootstrap``; the hub checks that the code is known, fresh,
unused and issued for exactly that Slurm job, records the server's port (this
replaces batchspawner's ``/api/batchspawner`` handler, which sets *any*
attribute a job sends), and answers the secrets once. A second claim, a wrong
job id or an expired code is refused and logged; a code seen later in
Slurm's state is worthless. The route is installed with the hub's other routes
by ``c.JupyterHub.extra_handlers`` (:mod:`hub_ext.handlers`); without it Slurm
servers cannot start, and the Slurm backend says so at start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from xnat_bridge.errors import InvalidRequest, PermissionDenied
from xnat_bridge.extras import needs_extra

from .errors import map_errors

with needs_extra("hub", "the hub's bootstrap API (hub_ext.bootstrap)"):
    from jupyterhub.apihandlers import APIHandler

log = logging.getLogger(__name__)

ENV_CODE = "XNAT_HPC_BOOTSTRAP"
ROUTE = r"/api/xnat-hpc/bootstrap"


@dataclass
class _Entry:
    owner: Any                      # the spawner
    secret_env: dict[str, str] = field(repr=False)
    expires: float = 0.0
    job_id: str = ""


class BootstrapRegistry:
    """One-time codes → (spawner, secrets), in the hub's memory only."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    def issue(self, owner: Any, secret_env: dict[str, str], ttl: float = 900.0) -> str:
        code = secrets.token_urlsafe(32)
        with self._lock:
            self._purge()
            self._entries[code] = _Entry(owner, dict(secret_env), self._clock() + ttl)
        return code

    def bind(self, code: str, job_id: str) -> None:
        """Tie a code to the Slurm job it was submitted with (after sbatch answered)."""
        with self._lock:
            if code in self._entries:
                self._entries[code].job_id = str(job_id)

    def revoke(self, owner: Any) -> None:
        with self._lock:
            for code in [c for c, e in self._entries.items() if e.owner is owner]:
                del self._entries[code]

    def claim(self, code: str, job_id: str) -> tuple[Any, dict[str, str]]:
        """The owner and secrets for *code*, once; ``PermissionError`` with the reason otherwise.

        :class:`NotBoundYet` when sbatch has not answered yet (the job started
        faster than the hub learnt its id): the caller may retry shortly.
        """
        with self._lock:
            self._purge()
            entry = self._entries.get(code)
            if entry is None:
                raise PermissionError("unknown, expired or already used bootstrap code")
            if not entry.job_id:
                raise NotBoundYet("the hub has not yet recorded this job's id")
            del self._entries[code]  # one claim only, right or wrong
        if entry.job_id != str(job_id):
            raise PermissionError(f"bootstrap code was issued for Slurm job {entry.job_id}, "
                                  f"claimed by job {job_id!r}")
        return entry.owner, entry.secret_env

    def _purge(self) -> None:
        now = self._clock()
        for code in [c for c, e in self._entries.items() if e.expires < now]:
            del self._entries[code]


class NotBoundYet(PermissionError):
    """The code exists but sbatch's answer (the job id) has not been recorded yet."""


registry = BootstrapRegistry()


class BootstrapHandler(APIHandler):
    """``POST /hub/api/xnat-hpc/bootstrap`` — the code is the credential (no token yet)."""

    def check_xsrf_cookie(self):  # no cookie is involved: the one-time code authenticates
        return

    @map_errors
    async def post(self):
        try:
            body = json.loads(self.request.body or b"{}")
            code, job_id, port = str(body["code"]), str(body["job_id"]), int(body["port"])
        except (ValueError, KeyError, TypeError):
            raise InvalidRequest("expected JSON {code, job_id, port}") from None
        if not 1024 <= port <= 65535 or not job_id.isdigit():
            raise InvalidRequest("port must be 1024-65535 and job_id a Slurm job id")
        try:
            for _ in range(100):  # up to ~10 s for sbatch's answer to reach the hub
                try:
                    spawner, secret_env = registry.claim(code, job_id)
                    break
                except NotBoundYet:
                    await asyncio.sleep(0.1)
            else:
                raise PermissionError("the hub never learnt this job's id")
        except PermissionError as exc:
            log.warning("refused server bootstrap from %s for Slurm job %s: %s",
                        self.request.remote_ip, job_id, exc)
            raise PermissionDenied("bootstrap refused") from None
        spawner.port = port
        if callable(getattr(spawner, "mark_phase", None)):
            spawner.mark_phase("bootstrap")
        log.info("Slurm job %s of %s claimed its secrets; server port %s", job_id,
                 getattr(spawner, "_log_name", "?"), port)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"env": secret_env}))
