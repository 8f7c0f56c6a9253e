"""The hub's own pages and APIs, for ``c.JupyterHub.extra_handlers``.

JupyterHub puts each route under its hub prefix, so with the default base URL::

    /hub/xnat-hpc/owner            the project owners' audit page (hub_ext.owner)
    /hub/api/xnat-hpc/bootstrap    Slurm jobs fetch their secrets (hub_ext.bootstrap)
    /hub/xnat-hpc/owner/access     owners grant and revoke access (hub_ext.owner_access)
    /hub/xnat-hpc/review           owners review held results (hub_ext.review)
    /hub/api/xnat-hpc/audit        servers send their audit events, enter their jobs in the
    /hub/api/xnat-hpc/jobs/...     ledger and hold results for review: passed on to the
    /hub/api/xnat-hpc/review/...   governance service's process (hub_ext.governance_forward)
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
from .owner import ROUTE as OWNER_ROUTE
from .owner import OwnerAuditHandler
from .owner_access import ROUTE as ACCESS_ROUTE
from .owner_access import OwnerAccessHandler
from .plugin_gateway import gateway_handlers
from .routes import configured_handlers
from .review import review_handlers

#: how the configuration line reads (for messages that tell an admin what to add)
CONFIG_LINE = ("from hub_ext.handlers import xnat_hpc_handlers; "
               "c.JupyterHub.extra_handlers = xnat_hpc_handlers()")


def xnat_hpc_handlers() -> list[tuple[str, type]]:
    """The hub's routes (relative to the hub prefix), a new list each call."""
    return [(OWNER_ROUTE, OwnerAuditHandler), (BOOTSTRAP_ROUTE, BootstrapHandler),
            (ACCESS_ROUTE, OwnerAccessHandler), *review_handlers(), *forward_handlers(), *gateway_handlers()]


def missing_routes(config: Any, handlers: list[tuple[str, type]] | None = None) -> list[str]:
    """The routes of *handlers* (default: all of ours) that *config* does not install."""
    installed = {(h[0], h[1]) for h in configured_handlers(config) if len(h) >= 2}
    return [route for route, klass in (handlers or xnat_hpc_handlers()) if (route, klass) not in installed]
