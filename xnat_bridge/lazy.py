"""Names of a package imported on first use (PEP 562), for the package ``__init__`` modules.

The processes on a Slurm node (the node guard, the worker's task) import one module of
``xnat_bridge`` each; a package ``__init__`` that imported its public names eagerly would make
each of them pay for the client, ``requests`` and the rest (about 0.12 s per process start).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_names(package: str, names: Mapping[str, str], namespace: dict) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for *package*: each of *names* (name → its submodule) is
    imported from ``package.submodule`` when first asked for and kept in *namespace*."""

    def __getattr__(name: str):
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted([*namespace, *names])

    return __getattr__, __dir__
