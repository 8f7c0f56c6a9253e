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
c.HubAuditLog.path = "/var/log/xnat-hpc-hub/audit.jsonl"   # every spawn, allowed or denied

# Slurm backend: node names must be reachable from the hub's proxy, or set an address.
# c.XnatSlurmSpawner.server_host = ""
# c.XnatSlurmSpawner.python = "/opt/xnat-hpc-hub/venv/bin/python"   # on the compute nodes
# c.XnatSlurmSpawner.extra_directives = ["--nice=10"]

# Kubernetes backend: where the archive is in the cluster (read-only, subPath per scope item).
# c.XnatKubeSpawner.xnat_archive_volume = {"claim_name": "xnat-archive"}

c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 300          # Slurm queues can be slow
c.Spawner.http_timeout = 120
