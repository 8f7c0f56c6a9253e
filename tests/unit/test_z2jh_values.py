"""The Zero-to-JupyterHub values (config/z2jh-values.yaml) serve XNAT's "Start Jupyter": named
servers, the ``xnat`` service (token from the site's Secret, never in the file) and its role,
the account the hub reads each start's settings as (password file from a Secret), the hub's
pages, notices and log scrubbing, and the plugin's ``/workspace/{user}``; and governance acts on
the hub through its REST API as the service ``xnat-hpc-governance`` (least-scope role, token from
the Secret copied into the hub's private file ``c.XnatGovernance.token_file``); and every
server's token carries the custom scopes it calls governance with, filtered to itself.

Helm is not installed here: the values are checked structurally, then "rendered" the way the
chart's own ``jupyterhub_config.py`` (chart 4.x, ``jupyterhub/files/hub/jupyterhub_config.py``
and ``z2jh.py``) turns them into the hub's config — chart defaults merged under the values,
``hub.services`` with each ``apiToken`` read by ``get_secret_value`` (``hub.existingSecret``
first, then the chart's Secret), ``hub.loadRoles``, the pass-through ``hub.config``, then each
``hub.extraConfig`` value ``exec``-ed in the config file's namespace in sorted key order — and
the resulting ``c`` is checked."""

from __future__ import annotations

import copy
import logging
import os
import re
import stat
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml
from traitlets.config import Config

from devstack.hubconfig import GOVERNANCE_SCOPES, IDLE_CULLER_SCOPES, XNAT_SERVICE_SCOPES
from hub_ext.handlers import xnat_hpc_handlers
from hub_ext.hub_rest import SERVICE_NAME as GOVERNANCE, XnatGovernance, read_token
from hub_ext.log_scrub import HUB_LOGGERS, TokenScrubber
from hub_ext.revocation import user_notice
from xnat_hpc_governance.revocation_watch import read_service_password
from hub_ext.server_scopes import AUDIT, JOBS, SERVER_SCOPES
from spawner.plan import workspace_dir

ROOT = Path(__file__).resolve().parents[2]
VALUES = ROOT / "config" / "z2jh-values.yaml"

#: the subset of the chart's own values.yaml (4.x) that the rendering below reads
CHART_DEFAULTS = {
    "hub": {
        "allowNamedServers": False, "namedServerLimitPerUser": None, "templateVars": {},
        "services": {}, "loadRoles": {}, "config": {}, "extraConfig": {}, "existingSecret": None,
        "extraEnv": {}, "extraVolumes": [], "extraVolumeMounts": [],
        "podSecurityContext": {"runAsNonRoot": True, "fsGroup": 1000},
        "containerSecurityContext": {"runAsUser": 1000, "runAsGroup": 1000},
    },
    "singleuser": {"storage": {
        "type": "dynamic", "capacity": "10Gi", "homeMountPath": "/home/jovyan",
        "static": {"pvcName": None, "subPath": "{username}"},
        "dynamic": {"storageClass": None, "pvcNameTemplate": None,
                    "volumeNameTemplate": "volume-{user_server}", "storageAccessModes": ["ReadWriteOnce"],
                    "subPath": None}}},
    "cull": {"enabled": True, "users": False, "adminUsers": True, "removeNamedServers": False,
             "timeout": 3600, "every": 600, "concurrency": 10, "maxAge": 0},
    "custom": {},
}
FAKE_TOKEN = "0123456789abcdef" * 4          # the site's Secret (hub.existingSecret)
CHART_TOKEN = "fedcba9876543210" * 4         # what the chart's own Secret would generate
GOVERNANCE_TOKEN = "00112233445566778899aabbccddeeff" * 2   # the site's Secret, governance's key
FAKE_PASSWORD = "not-a-real-password"


def merge(a: Mapping, b: Mapping) -> dict:
    """Helm's merge of values over the chart's defaults: maps merge, anything else replaces."""
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(out.get(k), Mapping) and isinstance(v, Mapping) else v
    return out


def load_values() -> dict:
    return yaml.safe_load(VALUES.read_text())


#: where the chart's image keeps the jupyterhub_config.py that runs the extraConfig snippets
CHART_CONFIG_FILE = "/usr/local/etc/jupyterhub/jupyterhub_config.py"


def render(values: Mapping, secret_dirs: tuple[Path, Path]) -> tuple[Config, dict]:
    """The hub's config as the chart's jupyterhub_config.py builds it from *values* (the parts
    that concern this file), and the namespace the extraConfig snippets ran in."""
    cfg = merge(CHART_DEFAULTS, copy.deepcopy(values))
    existing, chart = secret_dirs

    def get_config(key, default=None):  # z2jh.get_config
        value = cfg
        for level in key.split("."):
            if not isinstance(value, dict) or level not in value:
                return default
            value = value[level]
        return value

    def get_secret_value(key, default="never-explicitly-set"):  # z2jh.get_secret_value
        for folder in (existing, chart):
            if (folder / key).exists():
                return (folder / key).read_text()
        if default != "never-explicitly-set":
            return default
        raise Exception(f"{key} not found in either k8s Secret!")

    def set_config_if_not_none(cparent, name, key):
        data = get_config(key)
        if data is not None:
            setattr(cparent, name, data)

    def camelCaseify(s):
        return re.sub(r"_([a-z])", lambda m: m.group(1).upper(), s)

    c = Config()
    for trait in ("allow_named_servers", "named_server_limit_per_user", "template_vars"):
        set_config_if_not_none(c.JupyterHub, trait, "hub." + camelCaseify(trait))

    storage = get_config("singleuser.storage")
    assert storage["type"] == "dynamic", "this rendering knows the chart's dynamic storage only"
    c.KubeSpawner.pvc_name_template = storage["dynamic"]["pvcNameTemplate"]
    name = storage["dynamic"]["volumeNameTemplate"]
    c.KubeSpawner.volumes = {name: {"name": name, "persistentVolumeClaim": {"claimName": "{pvc_name}"}}}
    c.KubeSpawner.volume_mounts = {name: {"mountPath": storage["homeMountPath"], "name": name,
                                          "subPath": storage["dynamic"]["subPath"]}}

    c.JupyterHub.services = []
    c.JupyterHub.load_roles = []
    if get_config("cull.enabled", False):
        c.JupyterHub.services.append({"name": "jupyterhub-idle-culler",
                                      "command": ["python3", "-m", "jupyterhub_idle_culler"]})
        c.JupyterHub.load_roles.append({"name": "jupyterhub-idle-culler", "services": ["jupyterhub-idle-culler"],
                                        "scopes": ["list:users", "read:users:activity", "read:servers",
                                                   "delete:servers"]})
    for key, service in get_config("hub.services", {}).items():
        service.setdefault("name", key)
        service.pop("apiToken", None)
        service["api_token"] = get_secret_value(f"hub.services.{key}.apiToken")
        c.JupyterHub.services.append(service)
    for key, role in get_config("hub.loadRoles", {}).items():
        role.setdefault("name", key)
        c.JupyterHub.load_roles.append(role)

    for section, sect_cfg in get_config("hub.config", {}).items():
        if section == "JupyterHub":
            for k in ("proxy_auth_token", "cookie_secret", "services"):
                sect_cfg.pop(k, None)
        assert section[:1].isupper(), f"hub.config.{section}: the chart exits on it"
        c[section].update(sect_cfg)

    namespace = {"c": c, "get_config": get_config, "get_secret_value": get_secret_value,
                 "set_config_if_not_none": set_config_if_not_none, "camelCaseify": camelCaseify,
                 "os": os, "re": re, "sys": sys, "__name__": "__main__",
                 "__file__": CHART_CONFIG_FILE}
    for key, config_py in sorted(get_config("hub.extraConfig", {}).items()):
        exec(compile(config_py, f"<hub.extraConfig.{key}>", "exec"), namespace)
    return c, namespace


@pytest.fixture
def rendered(tmp_path):
    """The values rendered with fake Secrets; the mounted paths moved under *tmp_path*."""
    values = load_values()
    existing, chart = tmp_path / "existing-secret", tmp_path / "secret"
    existing.mkdir()
    chart.mkdir()
    (existing / "hub.services.xnat.apiToken").write_text(FAKE_TOKEN)
    (chart / "hub.services.xnat.apiToken").write_text(CHART_TOKEN)
    (existing / f"hub.services.{GOVERNANCE}.apiToken").write_text(GOVERNANCE_TOKEN + "\n")
    (chart / f"hub.services.{GOVERNANCE}.apiToken").write_text(CHART_TOKEN)
    secret_file = tmp_path / "xnat-account" / "password"
    secret_file.parent.mkdir()
    secret_file.write_text(FAKE_PASSWORD + "\n")
    secret_file.chmod(0o440)  # a Secret volume's file with the pod's fsGroup
    run = tmp_path / "run"
    run.mkdir()
    values["custom"]["xnatHpcHub"]["xnatAccountPasswordSecretFile"] = str(secret_file)
    values["hub"]["config"]["XnatScopedSpawner"]["xnat_service_password_file"] = str(run / "xnat-service-password")
    values["hub"]["config"]["XnatGovernance"]["token_file"] = str(run / "governance-token")
    before = {name: list(logging.getLogger(name).filters) for name in HUB_LOGGERS}
    try:
        c, namespace = render(values, (existing, chart))
        yield c, run / "xnat-service-password"
    finally:
        for name, filters in before.items():
            logging.getLogger(name).filters[:] = filters


def walk(node, path=()):
    """Every (path, key, value) of a YAML tree."""
    if isinstance(node, Mapping):
        for k, v in node.items():
            yield path, k, v
            yield from walk(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, path + (i,))


# -- the file as written ------------------------------------------------------------------

def test_named_servers_for_xnat_button():
    hub = load_values()["hub"]
    assert hub["config"]["JupyterHub"]["allow_named_servers"] is True


def test_xnat_service_token_comes_from_the_sites_secret():
    hub = load_values()["hub"]
    assert hub["services"]["xnat"] == {"name": "xnat"}  # no token, no url, no command: external
    assert isinstance(hub["existingSecret"], str) and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?",
                                                                   hub["existingSecret"])


def test_xnat_role_has_exactly_the_plugins_scopes():
    roles = load_values()["hub"]["loadRoles"]
    assert roles["xnat"]["services"] == ["xnat"]
    assert roles["xnat"]["scopes"] == list(XNAT_SERVICE_SCOPES)
    assert [r for r in roles.values() if "xnat" in r.get("services", ())] == [roles["xnat"]]


def test_no_secret_inline():
    text = VALUES.read_text()
    assert not re.search(r"(?<![0-9a-fA-F])[0-9a-fA-F]{32,}(?![0-9a-fA-F])", text)
    assert not re.search(r"\b(api_?token|apiToken|secretToken|auth_token|cookie_secret|password)\s*:", text,
                         re.IGNORECASE)
    for path, key, value in walk(load_values()):
        assert not re.search(r"token|password|secret_?key|keys$", str(key), re.IGNORECASE) \
            or key in ("existingSecret", "xnat_service_password_file", "xnatAccountPasswordSecretFile",
                       "token_file"), \
            (path, key)
    # the only inline data is the profiles file
    assert [p for p, k, _ in walk(load_values()) if k in ("stringData", "data", "binaryData")] \
        == [("hub", "extraFiles", "xnat-profiles")]


def test_governance_service_token_from_the_secret_and_a_role_of_least_scopes():
    hub = load_values()["hub"]
    # no token, no command; the owners' pages: the hub's Service, port 10101, open to the proxy pod only
    assert hub["services"][GOVERNANCE] == {"name": GOVERNANCE, "url": "http://hub:10101", "oauth_no_confirm": True}
    assert hub["service"]["extraPorts"] == [{"name": "governance", "port": 10101, "targetPort": 10101}]
    [rule] = hub["networkPolicy"]["ingress"]
    assert rule["ports"] == [{"port": 10101}]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"hub.jupyter.org/network-access-hub": "true"}}}]
    pages = hub["config"]["XnatGovernance"]
    assert (pages["pages_url"], pages["pages_ip"], pages["allow_unprivileged_pages_port"]) == (
        "http://hub:10101", "0.0.0.0", True)
    role = hub["loadRoles"][GOVERNANCE]
    assert role["services"] == [GOVERNANCE] and role["scopes"] == list(GOVERNANCE_SCOPES)
    assert [r for r in hub["loadRoles"].values() if GOVERNANCE in r.get("services", ())] == [role]
    # the hub's private copy of the token: in memory, in the directory mounted for it; loopback API
    governance = hub["config"]["XnatGovernance"]
    mounts = {m["name"]: m for m in hub["extraVolumeMounts"]}
    volumes = {v["name"]: v for v in hub["extraVolumes"]}
    assert volumes["xnat-hpc-run"]["emptyDir"]["medium"] == "Memory"
    assert governance["token_file"].startswith(mounts["xnat-hpc-run"]["mountPath"] + "/")
    assert governance["hub_api_url"].startswith("http://127.0.0.1:")


def test_account_password_mounted_from_a_secret_read_only():
    values = load_values()
    hub = values["hub"]
    spawner = hub["config"]["XnatScopedSpawner"]
    assert spawner["xnat_service_user"] == "jupyterhub"
    volumes = {v["name"]: v for v in hub["extraVolumes"]}
    mounts = {m["name"]: m for m in hub["extraVolumeMounts"]}
    secret = volumes["xnat-account"]["secret"]
    assert isinstance(secret["secretName"], str) and secret["secretName"] != hub["existingSecret"]
    assert secret["defaultMode"] in (0o400, 0o600)
    assert all(item.get("mode", secret["defaultMode"]) in (0o400, 0o600) for item in secret["items"])
    assert mounts["xnat-account"]["readOnly"] is True
    key_path = {i["path"]: i["key"] for i in secret["items"]}
    source = values["custom"]["xnatHpcHub"]["xnatAccountPasswordSecretFile"]
    folder, _, file = source.rpartition("/")
    assert folder == mounts["xnat-account"]["mountPath"] and key_path[file] == "password"
    # the hub's private copy: in memory, in a directory mounted for it
    run = volumes["xnat-hpc-run"]["emptyDir"]
    assert run["medium"] == "Memory"
    assert spawner["xnat_service_password_file"].startswith(mounts["xnat-hpc-run"]["mountPath"] + "/")


def test_workspace_storage_as_the_plugins_chart():
    storage = load_values()["singleuser"]["storage"]
    assert storage["homeMountPath"] == "/workspace/{unescaped_username}"
    assert storage["homeMountPath"].format(unescaped_username="jane") == workspace_dir("jane")
    # one claim per user, whatever the server's name (XNAT names a new server at every click)
    assert storage["type"] == "dynamic"
    assert "{servername}" not in storage["dynamic"]["pvcNameTemplate"]
    assert "{user_server}" not in storage["dynamic"]["pvcNameTemplate"]


def test_what_was_there_is_kept():
    values = load_values()
    assert values["cull"]["enabled"] is True and values["cull"]["users"] is False
    assert values["hub"]["image"]["name"] and values["singleuser"]["image"]["name"]
    profiles = yaml.safe_load(values["hub"]["extraFiles"]["xnat-profiles"]["stringData"])["profiles"]
    assert [p["slug"] for p in profiles] == ["k8s-standard", "k8s-gpu"]
    assert values["hub"]["config"]["JupyterHub"]["spawner_class"] == "xnat-kube"


# -- the file as the chart's jupyterhub_config.py runs it ---------------------------------

def test_rendered_named_servers_and_workspace(rendered):
    c, _ = rendered
    assert c.JupyterHub.allow_named_servers is True  # hub.config wins over hub.allowNamedServers
    mounts = list(c.KubeSpawner.volume_mounts.values())
    assert [m["mountPath"] for m in mounts] == ["/workspace/{unescaped_username}"]
    assert c.KubeSpawner.pvc_name_template == "claim-{username}"


def test_rendered_xnat_service_and_role(rendered):
    c, _ = rendered
    services = {s["name"]: s for s in c.JupyterHub.services}
    assert services["xnat"] == {"name": "xnat", "api_token": FAKE_TOKEN}  # the site's, not the chart's
    assert "jupyterhub-idle-culler" in services
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles["xnat"]["services"] == ["xnat"] and roles["xnat"]["scopes"] == list(XNAT_SERVICE_SCOPES)
    assert set(roles["jupyterhub-idle-culler"]["scopes"]) == set(IDLE_CULLER_SCOPES)
    from jupyterhub.scopes import scope_definitions
    assert all(s.split("!")[0] in scope_definitions for s in roles["xnat"]["scopes"])


def test_rendered_governance_service_role_and_private_token_file(rendered):
    c, password_file = rendered
    services = {s["name"]: s for s in c.JupyterHub.services}
    # the site's (its newline off), the same value governance reads from its private copy
    # the hub starts its process with the chart's own config file (the re-check runs there)
    assert services[GOVERNANCE] == {"name": GOVERNANCE, "api_token": GOVERNANCE_TOKEN,
                                    "command": ["python3", "-m", "xnat_hpc_governance",
                                                f"--config={CHART_CONFIG_FILE}"],
                                    "environment": services[GOVERNANCE]["environment"],
                                    "url": "http://hub:10101", "oauth_no_confirm": True}
    assert set(services[GOVERNANCE]["environment"]) <= {"XNAT_HOST", "PYTHONPATH"}
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles[GOVERNANCE]["services"] == [GOVERNANCE] and roles[GOVERNANCE]["scopes"] == list(GOVERNANCE_SCOPES)
    from jupyterhub.scopes import scope_definitions
    assert all(s in scope_definitions for s in roles[GOVERNANCE]["scopes"])
    governance = XnatGovernance(config=c)  # the settings validate
    token_file = Path(governance.token_file)
    assert token_file == password_file.parent / "governance-token"
    st = token_file.lstat()
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    assert read_token(str(token_file)) == GOVERNANCE_TOKEN  # governance's own reader
    assert governance.hub_api_url == "http://127.0.0.1:8081/hub/api"


def test_rendered_handlers_notices_and_scrubbing(rendered):
    c, _ = rendered
    assert [(h[0], h[1]) for h in c.JupyterHub.extra_handlers] == [(h[0], h[1]) for h in xnat_hpc_handlers()]
    assert c.JupyterHub.template_vars == {"announcement_home": user_notice, "announcement_spawn": user_notice}
    for name in HUB_LOGGERS:
        assert sum(isinstance(f, TokenScrubber) for f in logging.getLogger(name).filters) == 1


def test_rendered_account_password_file_is_what_the_spawner_accepts(rendered):
    c, password_file = rendered
    assert c.XnatScopedSpawner.xnat_service_user == "jupyterhub"
    assert c.XnatScopedSpawner.xnat_service_password_file == str(password_file)
    st = password_file.lstat()
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    assert read_service_password(str(password_file)) == FAKE_PASSWORD  # the spawner's own reader


def test_rendered_servers_tokens_carry_the_governance_scopes(rendered):
    c, _ = rendered
    assert {k: c.JupyterHub.custom_scopes[k] for k in SERVER_SCOPES} == SERVER_SCOPES
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    # the user role: what users had (self), the scopes their servers' tokens are given, and the
    # owners' pages (JupyterHub >= 5 gives users no access:services by default)
    assert roles["user"]["scopes"] == ["self", f"{AUDIT}!user", f"{JOBS}!user",
                                       "access:services!service=xnat-hpc-governance"]
    assert not roles["user"].get("users") and not roles["user"].get("groups")
    # the chart's and the values' roles unchanged
    assert roles["xnat"]["scopes"] == list(XNAT_SERVICE_SCOPES)
    assert roles[GOVERNANCE]["scopes"] == list(GOVERNANCE_SCOPES)
    # each server's token: what it had (its own login, activity) and the two, for itself only
    assert c.Spawner.server_token_scopes == ["users:activity!user", "access:servers!server",
                                             f"{AUDIT}!server", f"{JOBS}!server"]
    assert "server_token_scopes" not in c.KubeSpawner and "server_token_scopes" not in c.XnatKubeSpawner


def test_rendered_hub_accepts_the_config(rendered):
    from jupyterhub.app import JupyterHub
    c, _ = rendered
    hub = JupyterHub(config=c)
    assert hub.allow_named_servers is True
    assert {s["name"] for s in hub.services} >= {"xnat", "jupyterhub-idle-culler", GOVERNANCE}
