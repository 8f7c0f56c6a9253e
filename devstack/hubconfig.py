"""Pure builders of ``jupyterhub_config.py`` text for the hubs this checkout starts.

``loopback_hub_config`` is the common part of the demo's hub and the test hubs (a hub
and its proxy on 127.0.0.1); ``xnat_hub_config`` adds the XNAT authenticator, the
profiles spawner and its files; ``governance_hub_config`` the service governance acts on the
hub's REST API as, and the custom scopes servers call governance with.
``devstack.demo.hub_config`` composes them for the demo.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hub_ext.hub_rest import GOVERNANCE_SCOPES  # noqa: F401 - re-exported beside the other services' scopes

from .slurm import SERVER_LOG_DIR


def xnat_hub_config(*, xnat_url: str, profiles: Path, archive: Path, audit_log: Path,
                    spawner: str = "xnat") -> str:
    """The XNAT part of a ``jupyterhub_config.py``: authenticator, spawner, profiles (pure)."""
    return f'''c.JupyterHub.authenticator_class = "xnat"
c.XnatAuthenticator.xnat_url = "{xnat_url}"
c.JupyterHub.spawner_class = "{spawner}"
c.JupyterHub.allow_named_servers = True
c.XnatScopedSpawner.profiles_file = "{profiles}"
c.XnatScopedSpawner.xnat_data_root = "{archive}"
c.HubAuditLog.path = "{audit_log}"
c.XnatSlurmSpawner.server_host = "127.0.0.1"
c.XnatSlurmSpawner.sandbox_log_dir = "{SERVER_LOG_DIR}"
c.Spawner.default_url = "/lab"
from hub_ext.audit_log import open_at_start
open_at_start(c)
'''


#: the scopes XNAT's plugin needs as the hub service ``xnat`` (docs/admin.md says which call
#: needs which; ``tokens`` only for the plugin's ``POST /users/{u}/tokens``)
XNAT_SERVICE_SCOPES = ("admin:users", "admin:servers", "read:hub", "tokens")


def xnat_plugin_hub_config(*, token_file: Path, password_file: Path, account: str = "jupyterhub") -> str:
    """The lines that let XNAT's JupyterHub plugin start servers on this hub (pure): the service
    ``xnat`` with its token read from *token_file* (0600; the same value as XNAT's
    ``jupyterHubToken`` preference), its role, and the XNAT account (site role ``JupyterHub``)
    whose password (*password_file*, 0600) the hub uses to read each start's settings back."""
    scopes = ", ".join(f'"{s}"' for s in XNAT_SERVICE_SCOPES)
    return f'''c.JupyterHub.services.append({{"name": "xnat", "api_token": open("{token_file}").read().strip()}})
c.JupyterHub.load_roles.append({{"name": "xnat", "services": ["xnat"], "scopes": [{scopes}]}})
c.XnatScopedSpawner.xnat_service_user = "{account}"
c.XnatScopedSpawner.xnat_service_password_file = "{password_file}"
'''


def port_free(port: int) -> bool:
    """Whether *port* of 127.0.0.1 can be bound now (another process may take it after)."""
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_privileged_port(preferred: int = 981, low: int = 600, high: int = 1000) -> int:
    """A port below 1024 free on 127.0.0.1 now (*preferred* when it is), for the governance
    service's owners' pages (``c.XnatGovernance.pages_url``: only root may take such a port, so
    no other account can squat it while the service restarts). Needs root, as the hub does."""
    import random

    candidates = [preferred, *random.sample(range(low, high), high - low)]
    for port in candidates:
        if port_free(port):
            return port
    raise RuntimeError(f"no free port between {low} and {high} on 127.0.0.1 for the owners' pages")


def governance_hub_config(*, token_file: Path, pages_port: int | None = None) -> str:
    """The hub service ``xnat-hpc-governance`` through which governance lists and stops servers
    (pure): ``c.XnatGovernance.token_file`` and the service with that file's token (0600, read
    and checked when the hub loads its configuration) and its least-scope role
    (:data:`GOVERNANCE_SCOPES`), by :func:`hub_ext.hub_rest.register_governance`, managed: the hub
    starts the service's process (:mod:`xnat_hpc_governance`: the re-check, and the servers' calls
    to governance, which the hub passes on to it through the Unix socket ``governance.sock`` beside
    *token_file*, in that 0700 directory of the hub's account) with this file; and the custom
    scopes each server's token carries for itself to call governance (``custom:xnat-hpc:audit``,
    ``custom:xnat-hpc:jobs``), by :func:`hub_ext.server_scopes.register_server_scopes` (last: it
    merges with the roles and ``server_token_scopes`` set before it). The caller writes the file
    (``tests.fixtures.spawn.governance_token_file``, ``devstack.demo``). The owners' pages on
    127.0.0.1:*pages_port* (default: :func:`free_privileged_port`), behind the hub's proxy at
    ``/services/xnat-hpc-governance/``."""
    port = pages_port or free_privileged_port()
    sock = token_file.parent / "governance.sock"
    if len(os.fsencode(str(sock))) > 100:  # a Unix socket's limit: a deep directory (pytest's) gets a short one
        sock = Path(tempfile.mkdtemp(prefix="xnat-hpc-gov-")) / "governance.sock"  # 0700, this account's
    return f'''from hub_ext.hub_rest import register_governance  # noqa: E402
from hub_ext.server_scopes import register_server_scopes  # noqa: E402
c.XnatGovernance.token_file = "{token_file}"
c.XnatGovernance.service_socket = "{sock}"
c.XnatGovernance.pages_url = "http://127.0.0.1:{port}"
register_governance(c, config_file=__file__)
register_server_scopes(c)
'''


#: what jupyterhub-idle-culler needs to stop idle servers (its README; ``admin:users`` only to
#: cull users too, which this hub does not: users are XNAT accounts)
IDLE_CULLER_SCOPES = ("list:users", "read:users:activity", "read:servers", "delete:servers")


def idle_culler_hub_config(*, timeout: int = 3600, every: int = 300, max_age: int = 0) -> str:
    """``jupyterhub-idle-culler`` as a hub-managed service ``idle-culler`` with its role (pure):
    every *every* seconds it stops servers idle for *timeout* seconds (and, when *max_age* > 0,
    servers started *max_age* seconds ago however active). Whoever started them: the form,
    the REST API, XNAT's plugin. docs/admin.md, "Culling idle servers"."""
    scopes = ", ".join(f'"{s}"' for s in IDLE_CULLER_SCOPES)
    return f'''import sys  # noqa: E402
c.JupyterHub.services.append({{"name": "idle-culler", "command": [sys.executable, "-m", "jupyterhub_idle_culler", "--timeout={timeout}", "--cull-every={every}", "--max-age={max_age}"]}})
c.JupyterHub.load_roles.append({{"name": "idle-culler", "services": ["idle-culler"], "scopes": [{scopes}]}})
'''


def loopback_hub_config(*, hub_dir: Path, port: int, hub_port: int, proxy_api_port: int) -> str:
    """A hub and its proxy on 127.0.0.1, state in *hub_dir*, with the hub's own pages and APIs
    (pure; the demo's and the tests')."""
    return f'''c = get_config()  # noqa
from hub_ext.handlers import xnat_hpc_handlers  # noqa: E402
from hub_ext.revocation import user_notice  # noqa: E402
from hub_ext.log_scrub import scrub_token_params  # noqa: E402
c.JupyterHub.extra_handlers = xnat_hpc_handlers()
c.JupyterHub.template_vars = {{"announcement_home": user_notice, "announcement_spawn": user_notice}}
scrub_token_params()  # XNAT opens servers at {{url}}?token=…: no token in the hub's log
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.should_start = True
c.JupyterHub.db_url = "sqlite:///{hub_dir}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{hub_dir}/cookie_secret"
c.JupyterHub.pid_file = "{hub_dir}/jupyterhub.pid"
c.JupyterHub.cleanup_servers = True
'''


def kube_hub_config(*, namespace: str, hub_ip: str, archive_claim: str | None = None,
                    archive_gid: int | None = None, workspace_claim: str = "workspace-{username}",
                    uid: int = 1000, gid: int = 1000, unix_accounts: bool = False,
                    slurm_client: str | None = None, staging_dir: Path | None = None,
                    workspace_path: str = "/workspace") -> str:
    """The Kubernetes backend's part of a hub outside the cluster (pure; the tests' and a site's
    hub that is not in a pod): the hub's API on *hub_ip* (an address the pods reach: the
    development cluster's bridge), the servers in *namespace* as the image's account
    (*uid*/*gid*), their scope's folders of the archive claim *archive_claim* read-only, with
    *archive_gid* (the group the archive is readable by) added to the pod's groups, and each
    user's workspace (*workspace_path*, a template: ``{username}``) on their claim *workspace_claim*
    (made by the hub when missing, bound
    to a volume the admin made for it: no provisioner; no storage class). Images are local to
    the node (``imagePullPolicy: Never``): the kubelet never looks for a registry. The command is
    given (kubespawner's default is the image's, and the server image's entry point is ``tini``
    alone, as Zero to JupyterHub's ``singleuser.cmd`` gives it too).

    The pods as clients of a Slurm partition (the EMCP setup): *unix_accounts* runs each pod as
    the user's Unix account (``c.XnatKubeSpawner.xnat_unix_accounts``; ``HOME`` the workspace);
    *slurm_client* names the ConfigMap holding the ``slurm.conf`` the pods read (the controller at
    an address they reach; optional: without it, pods start and their offload is refused), mounted
    at ``/etc/slurm`` with the node's munge socket directory (``hostPath /run/munge``); the
    workers reach the job's scheduler in the pod at the pod's address
    (``XNAT_HPC_SCHEDULER_HOST`` from ``status.podIP``); *staging_dir*, the offload staging area
    shared with the nodes, is mounted at the same path. The jobs' logs and results go to the
    workspace (``XNAT_HPC_WORKSPACE``), which the nodes write too: give *workspace_path* the path
    the nodes see it at (a shared home's), as on a Slurm site."""
    archive = f'{{"claim_name": "{archive_claim}"}}' if archive_claim else "{}"
    groups = f"[{archive_gid}]" if archive_gid is not None else "[]"
    volumes = [{"name": "workspace", "persistentVolumeClaim": {"claimName": "{pvc_name}"}}]
    mounts = [{"name": "workspace", "mountPath": workspace_path}]
    env: dict = {"XNAT_HPC_WORKSPACE": f"{workspace_path}/xnat-hpc"}
    if unix_accounts:
        env["HOME"] = workspace_path
    if slurm_client:
        volumes += [{"name": "slurm-conf", "configMap": {"name": slurm_client, "optional": True}},
                    {"name": "munge", "hostPath": {"path": "/run/munge", "type": "Directory"}}]
        mounts += [{"name": "slurm-conf", "mountPath": "/etc/slurm", "readOnly": True},
                   {"name": "munge", "mountPath": "/run/munge"}]
        env["XNAT_HPC_SCHEDULER_HOST"] = {"name": "XNAT_HPC_SCHEDULER_HOST",
                                          "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
    if staging_dir is not None:
        volumes.append({"name": "staging", "hostPath": {"path": str(staging_dir), "type": "Directory"}})
        mounts.append({"name": "staging", "mountPath": str(staging_dir)})
    return f'''c.JupyterHub.hub_ip = "{hub_ip}"
c.KubeSpawner.namespace = "{namespace}"
c.KubeSpawner.image_pull_policy = "Never"
c.KubeSpawner.cmd = ["jupyterhub-singleuser"]
c.KubeSpawner.uid = {uid}
c.KubeSpawner.gid = {gid}
c.KubeSpawner.supplemental_gids = {groups}
c.KubeSpawner.automount_service_account_token = False
c.KubeSpawner.pvc_name_template = "{workspace_claim}"
c.KubeSpawner.storage_pvc_ensure = True
c.KubeSpawner.storage_class = ""
c.KubeSpawner.storage_capacity = "1Gi"
c.KubeSpawner.storage_access_modes = ["ReadWriteOnce"]
c.KubeSpawner.volumes = {volumes!r}
c.KubeSpawner.volume_mounts = {mounts!r}
c.KubeSpawner.working_dir = "{workspace_path}"
c.KubeSpawner.environment = {env!r}
c.XnatKubeSpawner.xnat_archive_volume = {archive}
c.XnatKubeSpawner.xnat_unix_accounts = {unix_accounts!r}
'''
