"""``xnat-slurm``: the server is a Slurm job (batchspawner's SlurmSpawner underneath).

Differences from plain batchspawner, on purpose:

* the batch script comes from a pure builder (:mod:`spawner.slurm_script`)
  fed only with the validated profile — raw ``user_options`` never reach it;
* no secret reaches Slurm (which stores scripts and environments): the hub API
  token and the XNAT alias token are fetched by the job from the hub with a
  one-time code bound to its job id (:mod:`hub_ext.bootstrap`), which also
  records the server's port instead of batchspawner's set-any-attribute API;
* ``sbatch`` runs as the user (``runuser`` when the hub is root), argument
  list, no shell;
* progress events say what Slurm is doing (submitted, pending with reason, running).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import sys

from batchspawner import SlurmSpawner
from batchspawner.batchspawner import JobStatus
from traitlets import Float, List, Unicode, default

from hub_ext import bootstrap
from xnat_bridge.errors import SlurmError

from .mixin import XnatScopedSpawner
from .plan import SpawnPlan
from .slurm_script import SlurmSettings, batch_script, split_env

_SBIN = ("/usr/sbin", "/sbin")


class XnatSlurmSpawner(XnatScopedSpawner, SlurmSpawner):
    """A Slurm job per server; resources from the admin's profile only."""

    backends = ("slurm",)
    mounts_scope = False  # compute nodes read XNAT through its REST API

    server_host = Unicode(
        "",
        help="""Address the hub's proxy uses to reach servers, when Slurm's node host names
        are not reachable (e.g. ``127.0.0.1`` on a one-node development cluster). Empty:
        the node name Slurm reports.""",
    ).tag(config=True)

    extra_directives = List(
        Unicode(),
        help="Extra ``#SBATCH`` options for every server job, e.g. ``--nice=10`` (admin-trusted).",
    ).tag(config=True)

    python = Unicode(
        help="Python on the compute nodes that has xnat-hpc-hub installed (default: the hub's).",
    ).tag(config=True)

    @default("python")
    def _default_python(self):
        return sys.executable

    @default("startup_poll_interval")
    def _default_poll(self):
        return 0.1

    @default("exec_prefix")
    def _default_exec_prefix(self):
        return ""  # squeue/scancel as the hub; sbatch goes through submit_batch_script below

    bootstrap_ttl = Float(
        900.0, help="Seconds a job has to fetch its secrets from the hub after submission.",
    ).tag(config=True)

    def apply_plan(self, plan: SpawnPlan) -> None:
        """Nothing to set: :meth:`submit_batch_script` builds the script from the plan itself.
        Only the queue-state reporting of :meth:`query_job_status` starts afresh."""
        self.__dict__["_xnat_reported"] = None

    def _home(self) -> str:
        try:
            return pwd.getpwnam(self.user.name).pw_dir
        except KeyError:
            raise SlurmError(f"there is no Unix account {self.user.name!r} on this hub for Slurm jobs; "
                             "ask the admin to create it") from None

    async def submit_batch_script(self):
        plan: SpawnPlan = self.xnat_plan
        public, secret = split_env(self.get_env())
        code = bootstrap.registry.issue(self, secret, ttl=self.bootstrap_ttl)
        public[bootstrap.ENV_CODE] = code
        home = self._home()
        settings = SlurmSettings(launcher=(self.python, "-m", "xnat_bridge.launch"),
                                 server_cmd=(os.path.join(os.path.dirname(self.python),
                                                          "jupyterhub-singleuser"), *self.get_args()),
                                 home=home, extra_directives=tuple(self.extra_directives))
        script = batch_script(plan, settings, list(public))
        argv = [shutil.which("sbatch") or "sbatch", "--parsable"]
        if os.geteuid() == 0 and self.user.name != "root":
            runuser = shutil.which("runuser", path=os.pathsep.join((os.environ.get("PATH", ""), *_SBIN)))
            argv = [runuser or "/usr/sbin/runuser", "-u", self.user.name, "--", *argv]
        self.log.debug("submitting server job for %s: %s", self._log_name, argv)
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=public, cwd=home)
        out, err = await proc.communicate(script.encode())
        if proc.returncode != 0:
            bootstrap.registry.revoke(self)
            message = err.decode(errors="replace").strip() or f"exit code {proc.returncode}"
            raise SlurmError(f"Slurm refused the server job: {message}")
        self.job_id = out.decode().strip().split(";")[0]
        bootstrap.registry.bind(code, self.job_id)
        self._progress(40, f"Submitted Slurm job {self.job_id} "
                           f"(partition {plan.profile.resources.partition or 'default'})")
        return self.job_id

    async def query_job_status(self):
        status = await super().query_job_status()
        seen = self.__dict__.get("_xnat_reported")
        if status != seen and self.xnat_owner()._spawn_pending:
            self.__dict__["_xnat_reported"] = status
            if status == JobStatus.PENDING:
                self._progress(50, f"Slurm job {self.job_id} is pending in the queue")
            elif status == JobStatus.RUNNING:
                self._progress(70, f"Slurm job {self.job_id} is running; starting JupyterLab")
        return status

    def state_gethost(self):
        return self.server_host or super().state_gethost()

    async def stop(self, now=False):
        bootstrap.registry.revoke(self)
        return await super().stop(now=now)
