"""Optional dependencies: which extra of xnat-hpc-hub brings them, and the error that says so.

The wheel's base dependencies are what both roles import (``import xnat_bridge``); the rest
comes with the extra of a machine's role (pyproject.toml, docs/admin.md "Installing"):

``hub``     the JupyterHub process: jupyterhub, batchspawner, kubespawner, pyyaml
``server``  a researcher's server: jupyter-server, jupyterlab, ipywidgets, xnat, dask-jobqueue,
            distributed, tqdm (and jupyterhub for ``jupyterhub-singleuser``)

An import site that needs an extra wraps its import::

    with needs_extra("hub", "the Slurm backend (spawner.slurm)"):
        from batchspawner import SlurmSpawner

so that a machine installed for the other role fails with :class:`MissingExtra`, whose message
names the extra to install, instead of a bare ``No module named 'batchspawner'``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .errors import XnatHpcError

#: the distribution that provides a top-level module, where the two names differ
DISTRIBUTIONS = {
    "kubespawner": "jupyterhub-kubespawner",
    "kubernetes_asyncio": "kubernetes-asyncio",
    "yaml": "pyyaml",
    "jupyter_server": "jupyter-server",
    "dask_jobqueue": "dask-jobqueue",
    "sklearn": "scikit-learn",
}

#: this distribution's own top-level packages: a missing one of these is not a missing extra
_OWN = {"xnat_bridge", "hub_ext", "spawner", "xnat_hpc_governance", "devxnat", "devstack"}


class MissingExtra(XnatHpcError, ImportError):
    """A module of an optional dependency is not installed: the message names the extra."""

    reason = "missing_extra"

    def __init__(self, message: str, *, module: str | None = None):
        XnatHpcError.__init__(self, message)
        self.name = module  # ImportError's attribute: the module that was missing


def missing_extra_message(module: str, extra: str, feature: str) -> str:
    """The message of :class:`MissingExtra` (pure: a unit test checks it)."""
    top = module.split(".")[0]
    dist = DISTRIBUTIONS.get(top, top)
    return (f"xnat-hpc-hub: {feature} needs {dist}, which is not installed here; "
            f"install xnat-hpc-hub[{extra}] (pip install 'xnat-hpc-hub[{extra}]')")


@contextmanager
def needs_extra(extra: str, feature: str) -> Iterator[None]:
    """Turn a ``ModuleNotFoundError`` of a third-party module into :class:`MissingExtra`.

    *extra* is the extra that brings the module ("hub", "server", "demo"); *feature* says in a
    few words what needs it ("the Slurm backend (spawner.slurm)"). A missing module of this
    distribution itself is re-raised unchanged (a broken install, not a missing extra).
    """
    try:
        yield
    except ModuleNotFoundError as e:
        module = e.name or ""
        if not module or module.split(".")[0] in _OWN:
            raise
        raise MissingExtra(missing_extra_message(module, extra, feature), module=module) from e
