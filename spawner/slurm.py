"""``xnat-slurm``: the server is a Slurm job (batchspawner's SlurmSpawner underneath).

Differences from plain batchspawner, on purpose:

* the batch script comes from a pure builder (:mod:`spawner.slurm_script`)
  fed only with the validated profile — raw ``user_options`` never reach it;
* no secret reaches Slurm (which stores scripts and environments): the hub API
  token and the XNAT alias token are fetched by the job from the hub with a
  one-time code bound to its job id (:mod:`hub_ext.bootstrap`), which also
  records the server's port instead of batchspawner's set-any-attribute API;
* ``sbatch`` runs as the user (``runuser`` when the hub is root); ``squeue`` and
  ``scancel`` run as the hub. All three come from the one Slurm adapter
  (:mod:`xnat_bridge.slurm`, through the subprocess gateway :mod:`xnat_bridge.procs`):
  argument lists, no shell, logged at debug (batchspawner's ``exec_prefix``,
  ``batch_submit_cmd``, ``batch_query_cmd`` and ``batch_cancel_cmd`` shell templates
  are not used); its ``state_*_re`` patterns still read ``squeue``'s answer for the
  job (``STATE NODE``), and which states are pending or running is the adapter's one
  list (:data:`~xnat_bridge.slurm.PENDING_STATES`, :data:`~xnat_bridge.slurm.RUNNING_STATES`);
* the hub must serve the bootstrap API (``c.JupyterHub.extra_handlers``,
  :mod:`hub_ext.handlers`): a start without it fails at once, saying so;
* progress events say what Slurm is doing (submitted, pending with reason, running);
* before submitting, the hub (root) creates the user's staging directory, 0700 and
  owned by the user (:mod:`spawner.userdirs`);
* the archive (decided per profile by :func:`spawner.decide.build_plan`):
  a profile without ``archive_node_path`` mounts nothing — the job is the user's and
  reads XNAT's REST API only, ``XNAT_DATA`` unset. A profile with one runs the server in a
  per-job sandbox on the node, as the local backend does on the hub host: the hub (root)
  submits the job, whose script runs ``bwrap`` as root with the scope's folders of the node
  path bound read-only (the plan's mounts and layout, :func:`spawner.sandbox.bwrap_args`) and
  ``setpriv`` to the user with ``archive_group`` inside the sandbox only
  (:class:`~spawner.slurm_script.NodeSandbox`). The archive stays closed to the users'
  accounts on the nodes too (docs/admin.md, "The archive on the nodes").
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from traitlets import Any, Float, List, Unicode, default

import xnat_bridge
from hub_ext import bootstrap
from hub_ext.errors import spawn_error
from hub_ext.handlers import CONFIG_LINE, missing_routes
from hub_ext.unix_accounts import unix_account
from xnat_bridge import procs  # noqa: F401 - the gateway under the adapter (tests patch procs.arun here)
from xnat_bridge import slurm
from xnat_bridge.errors import CommandFailed, SlurmError, XnatHpcError
from xnat_bridge.extras import needs_extra

from .decide import node_sandbox
from .mixin import XnatScopedSpawner
from .plan import DataMount, SpawnPlan
from .sandbox import RunAs, sandbox_identity
from .slurm_script import NodeSandbox, SlurmSettings, batch_script, split_env
from .userdirs import prepare_staging

with needs_extra("hub", "the Slurm backend (spawner.slurm)"):
    from batchspawner import SlurmSpawner
    from batchspawner.batchspawner import JobStatus

class XnatSlurmSpawner(XnatScopedSpawner, SlurmSpawner):
    """A Slurm job per server; resources from the admin's profile only."""

    backends = ("slurm",)

    def data_mount(self) -> DataMount:
        """The scope's folders of the profile's ``archive_node_path``, bound in a sandbox on the
        node; a profile without one mounts nothing (:func:`spawner.decide.build_plan`: the server
        reads XNAT's REST API)."""
        return DataMount.HOST_PATH

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

    state_pending_re = Unicode(
        slurm.state_regex(slurm.PENDING_STATES),
        help="""Pattern of ``squeue``'s ``STATE NODE`` answer for a job that waits (batchspawner's
        trait). Default: the Slurm adapter's pending states (:data:`xnat_bridge.slurm.PENDING_STATES`:
        PENDING, CONFIGURING, REQUEUED, held, ...), each a whole word at the start. Warning: a
        state matched by neither this nor ``state_running_re`` makes the hub take the server
        for gone.""",
    ).tag(config=True)

    state_running_re = Unicode(
        slurm.state_regex(slurm.RUNNING_STATES),
        help="""Pattern of ``squeue``'s ``STATE NODE`` answer for a job that holds its node
        (batchspawner's trait). Default: the Slurm adapter's running states
        (:data:`xnat_bridge.slurm.RUNNING_STATES`: RUNNING, COMPLETING, SUSPENDED, ...).""",
    ).tag(config=True)

    bootstrap_ttl = Float(
        900.0, help="Seconds a job has to fetch its secrets from the hub after submission.",
    ).tag(config=True)

    # -- the sandbox on the node (profiles with archive_node_path) ----------------
    bwrap_path = Unicode(
        "/usr/bin/bwrap",
        help="""Path of bubblewrap on the compute nodes, for profiles that name
        ``archive_node_path`` (their job builds the server's sandbox with it, as root).""",
    ).tag(config=True)

    setpriv_path = Unicode(
        "/usr/bin/setpriv",
        help="""Path of util-linux's ``setpriv`` on the compute nodes: it drops from root to the
        user inside a node sandbox (profiles with ``archive_node_path``).""",
    ).tag(config=True)

    archive_group = Unicode(
        "xnat-archive",
        help="""Unix group that may read the archive at the nodes' ``archive_node_path`` (the same
        group as ``c.XnatLocalSpawner.archive_group``, with the same gid on the nodes), granted
        inside a node sandbox only, when the scope is mounted. It has no members. Empty: no
        group is granted (the archive's files must then be readable by others, under a
        directory only root can traverse). A group that does not exist on the hub refuses
        such starts, saying so. See docs/admin.md, "The archive on the nodes".""",
    ).tag(config=True)

    sandbox_ro_paths = List(
        Unicode(),
        help="""Extra node paths bound read-only into a node sandbox, e.g. a shared software
        tree ``/sw``. The Python environment of ``python``, this package's code and the munge
        socket directory (``/run/munge``, for offload jobs) are always bound.""",
    ).tag(config=True)

    sandbox_log_dir = Unicode(
        "/var/log/xnat-hpc-hub/slurm-servers",
        help="""Directory on the compute nodes, root's (0700), where Slurm writes the output of
        server jobs that run in a node sandbox (``jupyter-xnat-<job id>.log``): such a job
        starts as root, and root must not write in the user's home. It must exist on every
        node of the profiles' partitions (the development cluster makes it); a job whose
        output cannot be opened fails at once. Other Slurm servers log to the user's home.""",
    ).tag(config=True)

    node_run_as = Any(None, help="Whom the node sandbox of the current start drops to (set by prepare_host).")

    #: the last queue state reported as progress in this start (see :meth:`query_job_status`)
    reported_status: JobStatus | None = None

    def apply_plan(self, plan: SpawnPlan) -> None:
        """Nothing to set: :meth:`submit_batch_script` builds the script from the plan itself.
        Only the queue-state reporting of :meth:`query_job_status` starts afresh."""
        self.reported_status = None

    async def prepare_host(self, plan: SpawnPlan) -> None:
        """As root: the user's staging directory, before the job is submitted; for a profile
        with ``archive_node_path``, whom its node sandbox drops to."""
        account = await asyncio.to_thread(self._account)
        await prepare_staging(self, plan, account)
        self.node_run_as = None
        if node_sandbox(plan.profile):
            if os.geteuid() != 0:
                self.log.error("cannot start %s's server with profile %s: its archive_node_path needs a "
                               "hub that runs as root (the job builds the sandbox as root); run the hub "
                               "as root or remove archive_node_path", self._log_name, plan.profile.slug)
                raise XnatHpcError("Your server was not started: this hub cannot run servers of profile "
                                   f"{plan.profile.slug!r} on Slurm. The hub's administrators have been told.")
            self.node_run_as = await asyncio.to_thread(self._run_as, plan, account)

    def _run_as(self, plan: SpawnPlan, account) -> RunAs:
        """The user's identity inside the node sandbox: uid, gid and groups from the hub's user
        database (the nodes share it), plus ``archive_group`` when the scope is mounted
        (blocking: group database)."""
        return sandbox_identity(account, mounted=bool(plan.mounts), archive_group=self.archive_group,
                                setpriv=self.setpriv_path, setting="XnatSlurmSpawner", log=self.log,
                                who=self._log_name, on_nodes=True)

    def _code_roots(self) -> list[str]:
        """Where the nodes' Python environment and this package's code are (the same paths as
        on the hub: ``python`` defaults to the hub's own interpreter)."""
        python = Path(self.python)
        roots = {str(python.parent.parent), str(Path(os.path.realpath(python)).parent.parent),
                 str(Path(xnat_bridge.__file__).resolve().parents[1])}
        return sorted(r for r in roots if r not in ("", "/"))

    def sandbox_settings(self, plan: SpawnPlan) -> NodeSandbox | None:
        """The sandbox on the node for *plan*'s job, None when its profile names no
        ``archive_node_path`` (then the job is the user's and mounts nothing), or no plan."""
        if plan is None or not node_sandbox(plan.profile):
            return None
        if self.node_run_as is None:
            raise XnatHpcError("the node sandbox was not prepared for this start (prepare_host)")
        staging = plan.server_env.offload.staging_dir
        return NodeSandbox(run_as=self.node_run_as, log_dir=self.sandbox_log_dir,
                           ro_paths=tuple(self._code_roots() + ["/run/munge", *self.sandbox_ro_paths]),
                           rw_paths=(staging,) if staging else (), bwrap=self.bwrap_path)

    def check_bootstrap_route(self) -> None:
        """Refuse to start when the hub does not serve the bootstrap API: the job could
        never fetch its secrets (checked at each start, not at import)."""
        if missing_routes(self.config, [(bootstrap.ROUTE, bootstrap.BootstrapHandler)]):
            self.log.error("cannot start Slurm servers: JupyterHub.extra_handlers lacks %s; add to "
                           "jupyterhub_config.py: %s", bootstrap.ROUTE, CONFIG_LINE)
            raise spawn_error(XnatHpcError(
                "This hub is not set up to start servers on Slurm: its bootstrap API "
                f"(/hub{bootstrap.ROUTE}) is missing. Hub administrators: add "
                f"`{CONFIG_LINE}` to jupyterhub_config.py and restart the hub."))

    async def start(self):
        self.check_bootstrap_route()
        return await super().start()

    def _account(self):
        return unix_account(self.user.name, self.config)  # exists, not a system account

    def _home(self) -> str:
        return self._account().pw_dir

    async def submit_batch_script(self):
        plan: SpawnPlan = self.xnat_plan
        public, secret = split_env(self.get_env())
        code = bootstrap.registry.issue(self, secret, ttl=self.bootstrap_ttl)
        public[bootstrap.ENV_CODE] = code
        home = self._home()
        sandbox = self.sandbox_settings(plan)
        settings = SlurmSettings(launcher=(self.python, "-m", "xnat_bridge.launch"),
                                 server_cmd=(os.path.join(os.path.dirname(self.python),
                                                          "jupyterhub-singleuser"), *self.get_args()),
                                 home=home, extra_directives=tuple(self.extra_directives), sandbox=sandbox)
        try:
            script = batch_script(plan, settings, list(public))
        except XnatHpcError:
            bootstrap.registry.revoke(self)
            raise
        # a sandboxed job is root's (its script builds the sandbox, then drops to the user)
        account = self._account().pw_name
        run_as = account if os.geteuid() == 0 and account != "root" and sandbox is None else None
        self.log.debug("submitting server job for %s (sbatch as %s%s)", self._log_name, run_as or "the hub",
                       f", sandbox on the node over {plan.profile.archive_node_path}" if sandbox else "")
        try:
            job_id = await slurm.asubmit(script, run_as=run_as, env=public, cwd=home, timeout=None)
        except CommandFailed as exc:
            bootstrap.registry.revoke(self)
            message = exc.stderr.strip() or f"exit code {exc.returncode}"
            raise SlurmError(f"Slurm refused the server job: {message}") from None
        if not job_id:
            bootstrap.registry.revoke(self)
            raise SlurmError("Slurm gave no job id for the server job (sbatch --parsable printed none)")
        self.job_id = job_id
        self.mark_phase("sbatch")
        bootstrap.registry.bind(code, self.job_id)
        self._progress(40, f"Submitted Slurm job {self.job_id} "
                           f"(partition {plan.profile.resources.partition or 'default'})")
        return self.job_id

    async def query_job_status(self):
        """The job's state from ``squeue`` (batchspawner's JobStatus); reported as progress
        while a start is under way."""
        if not self.job_id:
            self.job_status = ""
            return JobStatus.NOTFOUND
        try:
            self.job_status = await slurm.astate_node(self.job_id, timeout=None)
        except CommandFailed as exc:  # e.g. "slurm_load_jobs error: ..." (state_unknown_re)
            self.job_status = exc.stderr.strip()
        except Exception:  # noqa: BLE001 - as batchspawner: an unreadable state is "not found"
            self.log.exception("error querying Slurm job %s of %s", self.job_id, self._log_name)
            self.job_status = ""
        if self.state_isrunning():
            status = JobStatus.RUNNING
        elif self.state_ispending():
            status = JobStatus.PENDING
        elif self.state_isunknown():
            status = JobStatus.UNKNOWN
        else:
            status = JobStatus.NOTFOUND
        if status != self.reported_status and self.spawn_progress is not None:
            self.reported_status = status
            if status == JobStatus.PENDING:
                self._progress(50, f"Slurm job {self.job_id} is pending in the queue")
            elif status == JobStatus.RUNNING:
                self.mark_phase("queued")
                self._progress(70, f"Slurm job {self.job_id} is running; starting JupyterLab")
        return status

    async def cancel_batch_job(self):
        self.log.info("cancelling Slurm job %s of %s", self.job_id, self._log_name)
        await slurm.acancel([self.job_id], timeout=None)

    def state_gethost(self):
        return self.server_host or super().state_gethost()

    async def stop(self, now=False):
        bootstrap.registry.revoke(self)
        return await super().stop(now=now)
