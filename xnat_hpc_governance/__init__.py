"""xnat-hpc-hub's governance service: the process that governs, beside the hub (issue 19).

A JupyterHub-managed service, as ``jupyterhub-idle-culler`` is: one process, one event loop,
started and restarted by the hub (``c.JupyterHub.services``), acting on the hub only through
its REST API with the token the hub gives it. Today it runs the **revocation re-check**
(:mod:`xnat_hpc_governance.revocation_watch`): every ``c.OwnerAccess.recheck_interval`` seconds it asks
XNAT which projects each user with a running server may still read, and stops, cancels and
wipes what a lost project's scope holds. It reads the same ``jupyterhub_config.py`` as the hub
(``--config``), so a site configures governance once.

Register it with :func:`hub_ext.hub_rest.register_governance` (``config_file=__file__``);
``python -m xnat_hpc_governance --help`` lists its options.
"""

from .app import GovernanceService, main

__all__ = ["GovernanceService", "main"]
