"""xnat_bridge — XNAT access for the user's notebook server.

Runs inside the researcher's server and notebooks; imports nothing from the
hub side (``hub_ext``, ``spawner``).
"""

__version__ = "0.1.0.dev0"
