"""xnat_bridge — XNAT access for the user's notebook server.

Runs inside the researcher's server and notebooks; imports nothing from the
hub side (``hub_ext``, ``spawner``).

    import xnat_bridge
    conn = xnat_bridge.connect()     # XNAT_HOST / XNAT_USER / XNAT_PASS / XNAT_HPC_SCOPE
    conn.permissions()               # {"NEURO_MRI": "Owner", ...}
"""

__version__ = "0.1.0.dev0"

from .connection import Connection, connect  # noqa: E402
from .datasets import Manifest, ManifestFile  # noqa: E402
from .errors import XnatHpcError  # noqa: E402
from .scope import Scope  # noqa: E402

__all__ = ["connect", "Connection", "Manifest", "ManifestFile", "Scope", "XnatHpcError"]
