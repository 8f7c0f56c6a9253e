"""What ``c.JupyterHub.extra_handlers`` installs, read from the hub's configuration (pure).

Kept apart from :mod:`hub_ext.handlers` (which imports every page) so that a page can ask
whether another page is installed without importing it.
"""

from __future__ import annotations

from typing import Any


def configured_handlers(config: Any) -> list:
    """``JupyterHub.extra_handlers`` as *config* (the hub's traitlets ``Config``) sets it."""
    section = config.get("JupyterHub") if config is not None else None
    value = section.get("extra_handlers", []) if section is not None else []
    if hasattr(value, "get_value"):  # c.JupyterHub.extra_handlers.extend(...): a lazy value
        value = value.get_value([])
    return list(value or ())


def installed(config: Any, route: str) -> bool:
    """Whether *config* installs a handler for *route* (relative to the hub prefix)."""
    return any(len(h) >= 2 and h[0] == route for h in configured_handlers(config))
