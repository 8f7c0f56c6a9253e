"""xnat_bridge — XNAT access for the user's notebook server.

Runs inside the researcher's server and notebooks; imports nothing from the
hub side (``hub_ext``, ``spawner``).

    import xnat_bridge
    conn = xnat_bridge.connect()     # XNAT_HOST / XNAT_USER / XNAT_PASS / XNAT_HPC_SCOPE
    conn.permissions()               # {"NEURO_MRI": "Owner", ...}
    job = xnat_bridge.submit("t1", script="train.py", cpus=2, mem="4G")   # secure partition
    job.wait(); job.results()
"""

__version__ = "0.1.0.dev0"

from .lazy import lazy_names

#: the package's names and the module each comes from, imported on first use (PEP 562): the
#: processes on a Slurm node (the node guard, the worker's task) import a module of this
#: package each, and should not pay for the client, requests and the rest (~0.12 s per start)
_LAZY = {"Connection": "connection", "connect": "connection", "Manifest": "datasets",
         "ManifestFile": "datasets", "XnatHpcError": "errors", "Job": "offload", "jobs": "offload",
         "submit": "offload", "Scope": "scope"}
__getattr__, __dir__ = lazy_names(__name__, _LAZY, globals())

__all__ = [
           "Connection",
           "Job",
           "Manifest",
           "ManifestFile",
           "Scope",
           "XnatHpcError",
           "connect",
           "jobs",
           "submit",
]
