# Example JupyterHub configuration for a site running xnat-hpc-hub.
# `xnat-hpc-hub demo` writes its own variant of this file (devstack/demo.py: hub_config).
# Every option below is documented in docs/admin.md; check the profiles with
#   xnat-hpc-hub check-config /etc/xnat-hpc-hub/profiles.yaml
from hub_ext.handlers import xnat_hpc_handlers

c = get_config()  # noqa

# The hub's own pages and APIs: /hub/xnat-hpc/owner (project owners' audit page) and
# /hub/api/xnat-hpc/bootstrap (Slurm servers fetch their secrets; Slurm starts fail without it).
c.JupyterHub.extra_handlers = xnat_hpc_handlers()

# Log in with XNAT credentials (or an XNAT alias token); the hub keeps an alias token per
# user in encrypted auth_state: set JUPYTERHUB_CRYPT_KEY (openssl rand -hex 32) for the hub.
c.JupyterHub.authenticator_class = "xnat"
c.XnatAuthenticator.xnat_url = "https://xnat.example.org"
# c.XnatAuthenticator.required_role = "Jupyter"   # XNAT site role needed to log in

# One form with the admin's profiles of every backend (local, slurm, kubernetes).
c.JupyterHub.spawner_class = "xnat"
c.JupyterHub.allow_named_servers = True            # one server per scope is natural
c.XnatScopedSpawner.profiles_file = "/etc/xnat-hpc-hub/profiles.yaml"
c.XnatScopedSpawner.xnat_data_root = "/data/xnat/archive"   # XNAT's archivePath as the hub sees it
# Local backend (the hub runs as root): the archive is closed to users' accounts — group
# xnat-archive, dirs 0750 / files 0640, under a directory only root can traverse (0700) —
# and a local server gets this group only inside its sandbox, where only its scope exists.
c.XnatLocalSpawner.archive_group = "xnat-archive"
c.HubAuditLog.path = "/var/lib/xnat-hpc-hub/audit/audit.db"  # the site's audit trail (SQLite, keyed chain)
c.HubAuditLog.key_file = "/etc/xnat-hpc-hub/audit.key"          # created 0600 at first start; back it up apart
from hub_ext.audit_log import open_at_start  # noqa: E402
open_at_start(c)  # the hub refuses to start on a store or key others can read or write (after the lines above)
c.ReviewStore.path = "/var/lib/xnat-hpc-hub/review/review.db"             # results review: marks, held jobs, decisions
c.ReviewStore.identity_file = "/var/lib/xnat-hpc-hub/review/review-key.txt"  # the hub's review key; back it up with the db
c.ResultsSigner.key_path = "/var/lib/xnat-hpc-hub/review/results-signing-key"  # signs published results; back it up too

# Owners grant and revoke access on /hub/xnat-hpc/owner/access (docs/owner.md). A revoked
# user's servers on the project are stopped ("narrow": left to the server's permission TTL,
# permission_ttl s), their offload jobs cancelled (the hub runs scancel: root, or SlurmUser/an operator)
# and bundles removed; revocations done in XNAT's UI are found every recheck_interval s.
c.OwnerAccess.on_revoke = "stop"
c.OwnerAccess.recheck_interval = 300
c.OwnerAccess.permission_ttl = 60
# what a revocation did, and why a start was refused (XNAT's "Start Jupyter" shows only its generic
# failure text), shown to the user on the hub's home and spawn pages
from hub_ext.revocation import user_notice  # noqa: E402
c.JupyterHub.template_vars = {"announcement_home": user_notice, "announcement_spawn": user_notice}
# XNAT opens servers at {url}?token=…: keep that token out of the hub's log (docs/admin.md)
from hub_ext.log_scrub import scrub_token_params  # noqa: E402
scrub_token_params()

# Slurm backend: node names must be reachable from the hub's proxy, or set an address.
# c.XnatSlurmSpawner.server_host = ""
# c.XnatSlurmSpawner.python = "/opt/xnat-hpc-hub/venv/bin/python"   # on the compute nodes
# c.XnatSlurmSpawner.extra_directives = ["--nice=10"]

# Kubernetes backend: where the archive is in the cluster (read-only, subPath per scope item).
# c.XnatKubeSpawner.xnat_archive_volume = {"claim_name": "xnat-archive"}

# XNAT's own "Start Jupyter" (XNAT's JupyterHub plugin, docs/admin.md): XNAT calls the hub as the
# service "xnat" with this token (the same value as XNAT's jupyterHubToken preference), from a
# file only root reads (chmod 0600; `openssl rand -hex 32`), never written inline here.
# Scopes: the least the plugin's calls need (docs/admin.md says which call needs which).
c.JupyterHub.services = [{
    "name": "xnat",
    "api_token": open("/etc/xnat-hpc-hub/xnat-service-token").read().strip(),
}]
c.JupyterHub.load_roles = [{
    "name": "xnat",
    "services": ["xnat"],
    "scopes": ["admin:users", "admin:servers", "read:hub", "tokens"],
}]
# Governance (the owners' page's list of running servers; revocations, from the access page or the
# re-check, stop servers) acts on the hub only through its REST API, as the hub service
# "xnat-hpc-governance" with a role of the least scopes (docs/admin.md: list:users, read:servers,
# delete:servers, admin:server_state, admin:auth_state). Its token: a file of the hub's account,
# mode 0600 (`openssl rand -hex 32 > FILE; chmod 600 FILE`), read and checked here at each start;
# register_governance adds the service and its role (after the `c.JupyterHub.services = [...]`
# above, which would replace them). config_file=__file__: the hub starts the service's own process
# (`python -m xnat_hpc_governance`, the revocation re-check), which reads this same file.
from hub_ext.hub_rest import register_governance  # noqa: E402
c.XnatGovernance.token_file = "/etc/xnat-hpc-hub/governance-token"
# c.XnatGovernance.hub_api_url = "http://127.0.0.1:8081/hub/api"   # default: the hub's own api_url
register_governance(c, config_file=__file__)
# The hub reads each start's settings back from XNAT as XNAT's "jupyterhub" account (site role
# JupyterHub): its password in a 0600 file owned by the hub's user.
c.XnatScopedSpawner.xnat_service_user = "jupyterhub"
c.XnatScopedSpawner.xnat_service_password_file = "/etc/xnat-hpc-hub/xnat-service-password"

# Culling idle servers (docs/admin.md, "Culling idle servers"): jupyterhub-idle-culler (the hub
# extra installs it) as a service the hub starts. Every 300 s it stops every server idle for
# 3600 s, whoever started it (the form, the REST API, XNAT's button). A server whose offload jobs
# run reports activity (XnatHpcExtension.activity_interval, relayed every
# JUPYTERHUB_ACTIVITY_INTERVAL = 300 s): keep --timeout well above both. --max-age=0: no hard age
# limit (one would stop servers, and their jobs' dask scheduler, however active).
# Its role: exactly what the culler needs to stop servers (its README); no admin:users, it culls
# no users (users are XNAT accounts).
import sys  # noqa: E402
c.JupyterHub.services.append({
    "name": "idle-culler",
    "command": [sys.executable, "-m", "jupyterhub_idle_culler",
                "--timeout=3600", "--cull-every=300", "--max-age=0"],
})
c.JupyterHub.load_roles.append({
    "name": "idle-culler",
    "services": ["idle-culler"],
    "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
})

# What a researcher's server may tell governance, named by its own hub token's scopes
# (docs/admin.md, "Servers' scopes"): custom:xnat-hpc:audit (post its audit events) and
# custom:xnat-hpc:jobs (its jobs in the ledger, held results, the key share of approved ones),
# each filtered to the server itself, beside what the token had (access:servers!server,
# users:activity!user). Call it after every load_roles and server_token_scopes line: it adds to them.
from hub_ext.server_scopes import register_server_scopes  # noqa: E402
register_server_scopes(c)

c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 300          # Slurm queues can be slow; keep XNAT's startTimeout longer
c.Spawner.http_timeout = 120
