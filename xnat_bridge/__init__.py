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

from .connection import Connection, connect
from .datasets import Manifest, ManifestFile
from .errors import XnatHpcError
from .offload import Job, jobs, submit
from .scope import Scope

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
