"""The hub's own routes, for ``c.JupyterHub.extra_handlers``.

JupyterHub puts each route under its hub prefix, so with the default base URL::

    /hub/api/xnat-hpc/bootstrap    Slurm jobs fetch their secrets (hub_ext.bootstrap)
    /hub/api/xnat-hpc/audit        servers send their audit events, enter their jobs in the
    /hub/api/xnat-hpc/jobs/...     ledger and hold results for review: passed on to the
    /hub/api/xnat-hpc/review/...   governance service's process (hub_ext.governance_forward)
    /hub/xnat-hpc/owner            the owners' pages' old addresses: redirects to the
    /hub/xnat-hpc/owner/access     governance service's pages, /services/xnat-hpc-governance/…
    /hub/xnat-hpc/review           (xnat_hpc_governance.owner_pages)
    /hub/xnat-plugin/api/...       the hub's REST API in XNAT's names, for XNAT's plugin
                                   (hub_ext.plugin_gateway)

In ``jupyterhub_config.py``::

    from hub_ext.handlers import xnat_hpc_handlers
    c.JupyterHub.extra_handlers = xnat_hpc_handlers()

Importing this module registers nothing; only the configuration does. The Slurm
backend refuses to start a server when the bootstrap route is missing
(:func:`missing_routes`), since its job could never fetch its secrets.
"""

from __future__ import annotations

from typing import Any

from .bootstrap import BootstrapHandler
from .bootstrap import ROUTE as BOOTSTRAP_ROUTE
from .governance_forward import forward_handlers
from .plugin_gateway import gateway_handlers
from .routes import configured_handlers

#: how the configuration line reads (for messages that tell an admin what to add)
CONFIG_LINE = ("from hub_ext.handlers import xnat_hpc_handlers; "
               "c.JupyterHub.extra_handlers = xnat_hpc_handlers()")


def xnat_hpc_handlers() -> list[tuple]:
    """The hub's routes (relative to the hub prefix), a new list each call."""
    return [(BOOTSTRAP_ROUTE, BootstrapHandler), *forward_handlers(), *gateway_handlers()]


def missing_routes(config: Any, handlers: list[tuple] | None = None) -> list[str]:
    """The routes of *handlers* (default: all of ours) that *config* does not install."""
    installed = {(h[0], h[1]) for h in configured_handlers(config) if len(h) >= 2}
    return [h[0] for h in (handlers or xnat_hpc_handlers()) if (h[0], h[1]) not in installed]
