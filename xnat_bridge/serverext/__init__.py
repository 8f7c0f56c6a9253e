"""jupyter-server extension of xnat-hpc-hub: the REST API the JupyterLab panel uses.

Enabled by ``etc/jupyter/jupyter_server_config.d/xnat_hpc_hub.json`` (shipped in
the wheel); routes and shapes: ``openapi.yaml`` beside this file.
"""

from __future__ import annotations

from pathlib import Path

OPENAPI_PATH = Path(__file__).with_name("openapi.yaml")


def _jupyter_server_extension_points():
    from .app import XnatHpcExtension

    return [{"module": "xnat_bridge.serverext.app", "app": XnatHpcExtension}]
