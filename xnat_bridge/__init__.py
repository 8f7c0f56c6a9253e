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

import importlib

#: the package's names and the module each comes from, imported on first use (PEP 562): the
#: processes on a Slurm node (the node guard, the worker's task) import a module of this
#: package each, and should not pay for the client, requests and the rest (~0.12 s per start)
_LAZY = {"Connection": "connection", "connect": "connection", "Manifest": "datasets",
         "ManifestFile": "datasets", "XnatHpcError": "errors", "Job": "offload", "jobs": "offload",
         "submit": "offload", "Scope": "scope"}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_LAZY])

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
