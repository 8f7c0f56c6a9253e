"""Secure HPC offload: a dataset and a training script to the secure Slurm partition.

    job = xnat_bridge.submit("t1", script="train.py", cpus=2, mem="4G", walltime="1:00:00")

Modules, one concern each:

``policy``     admin limits (``XNAT_HPC_OFFLOAD``) and resource requests (pure)
``registry``   job states and records in ``<workspace>/jobs.sqlite``
``inputs``     the one script resolver, the client-token syntax, the dataset checks
``bundles``    encrypted bundles of this process (identities in memory only)
``jobscript``  the ``SLURMCluster`` options and job-script prologue (pure)
``slurm``      ``squeue``/``scancel`` and dask-jobqueue's ``sbatch``, through ``procs``
``keyrelease`` releasing a dataset identity once, to the right Slurm job
``worker``     the task that runs on the node (decrypt, run, encrypt, wipe)
``jobdir``     the job's node-local directory: checked, used and wiped through descriptors
``nodeguard``  the job's main process on the node: checks the directory, wipes it on every exit
``context``    :class:`OffloadContext`, the frozen collaborators of a job run
``runner``     one job's background thread (stage → submit → run → collect)
``manager``    :class:`OffloadManager`, the server's offload service (idempotency included)
``api``        ``submit``/``jobs``/``Job`` for notebooks; ``cli`` for ``xnat-hpc-hub jobs``

Workspace layout: ``jobs.sqlite``, ``jobs/<id>/log.txt`` (the script's live
output), ``jobs/<id>/results/`` (decrypted results), ``jobs/<id>/provenance.json``;
directories 0700, files 0600. See docs/security.md, section "Offload".
"""

from ..lazy import lazy_names

#: names imported on first use (PEP 562): the node guard and the worker's task import one
#: module of this package each, not the manager and everything it needs
_LAZY = {"Job": "api", "jobs": "api", "set_manager": "api", "submit": "api",
         "OffloadManager": "manager", "OffloadPolicy": "policy", "ResourceRequest": "policy",
         "JobRecord": "registry", "JobRegistry": "registry", "JobState": "registry"}
__getattr__, __dir__ = lazy_names(__name__, _LAZY, globals())


__all__ = ["Job", "JobRecord", "JobRegistry", "JobState", "OffloadManager", "OffloadPolicy",
           "ResourceRequest", "jobs", "set_manager", "submit"]
