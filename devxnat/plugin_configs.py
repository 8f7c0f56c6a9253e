"""The XNAT JupyterHub plugin's configuration and the user options it builds (pure; unit-tested).

Everything here follows NrgXnat/xnat-jupyterhub-plugin's Java source:

* :data:`PREFERENCES`: ``JupyterHubPreferences`` (name → default, as the plugin's
  ``@NrgPreference(defaultValue=…)``; devxnat's ``workspacePath`` default is under its
  data directory instead of ``/data/xnat/workspaces``);
* XNAT's compute services (hardware and compute environments) are :mod:`devxnat.compute_services`;
* :func:`validate_start_request`: ``DefaultJupyterHubService.validateServerStartRequest``;
* :func:`task_template`, :func:`default_env`, :func:`data_paths`, :func:`user_options`:
  ``DefaultUserOptionsService.storeUserOptions`` (mounts, env, resources, placement);
* :func:`hub_start_body`: the body ``DefaultJupyterHubClient.startServer`` POSTs to the
  hub (the builder's nulls included, as ``RestTemplate``'s Jackson writes them);
* :func:`general_xsi_type`: the plugin's "specific xsi type → general xsi type".
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

#: the plugin's preferences and their defaults (``JupyterHubPreferences.java``), as stored strings
PREFERENCES: dict[str, str] = {
    "jupyterHubHostUrl": "",
    "jupyterHubApiUrl": "http://172.17.0.1/jupyterhub/hub/api",
    "jupyterHubToken": "secret-token",
    "dockerImages": '[{"image": "jupyter/scipy-notebook:hub-3.0.0", "enabled": "true"}]',
    "startTimeout": "180",
    "stopTimeout": "60",
    "startPollingInterval": "8",
    "stopPollingInterval": "2",
    "pathTranslationArchivePrefix": "",
    "pathTranslationArchiveDockerPrefix": "",
    "pathTranslationWorkspacePrefix": "",
    "pathTranslationWorkspaceDockerPrefix": "",
    "workspacePath": "/data/xnat/workspaces",
    "containerSpecLabels": "{}",
    "placementSpecConstraints": "[]",
    "resourceSpecCpuLimit": "0",
    "resourceSpecCpuReservation": "0",
    "resourceSpecMemLimit": "",
    "resourceSpecMemReservation": "",
    "inactivityTimeout": "60",
    "maxServerLifetime": "48",
    "maxNamedServers": "1",
    "allUsersCanStartJupyter": "false",
}
#: preferences ``GET /xapi/jupyterhub/preferences/{name}`` answers typed (the plugin's switch)
TYPED_PREFERENCES = {"inactivityTimeout": int, "maxServerLifetime": int, "maxNamedServers": int,
                     "allUsersCanStartJupyter": bool}
#: the only preference non-privileged users see in ``GET /xapi/jupyterhub/preferences``
PUBLIC_PREFERENCES = ("allUsersCanStartJupyter",)
SECRET_PREFERENCES = ("jupyterHubToken",)

JUPYTER_ROLE = "Jupyter"          # RoleUtils.JUPYTER_ROLE_NAME: may start notebooks
JUPYTERHUB_ROLE = "JupyterHub"    # RoleUtils.JUPYTERHUB_ROLE_NAME: the hub's service account
SERVICE_ACCOUNT = "jupyterhub"    # JupyterHubUserInitializer's default JH_XNAT_USERNAME

PROJECT = "xnat:projectData"
SUBJECT = "xnat:subjectData"
EXPERIMENT = "xnat:experimentData"
IMAGE_SCAN = "xnat:imageScanData"
STORED_SEARCH = "xdat:stored_search"

def validate_start_request(login: str, req: Mapping) -> list[str]:
    """``validateServerStartRequest``: the messages (joined with ", " into the 400's text)."""
    errors = []
    blank = lambda k: not str(req.get(k) or "").strip()  # noqa: E731
    if login != req.get("username"):
        errors.append("Usernames do not match")
    if blank("username"):
        errors.append("Username cannot be blank")
    if blank("xsiType"):
        errors.append("XSI type cannot be blank")
    if blank("itemId"):
        errors.append("Item ID cannot be blank")
    if blank("itemLabel"):
        errors.append("Item label cannot be blank")
    if blank("projectId"):
        errors.append("Project ID cannot be blank")
    if blank("eventTrackingId"):
        errors.append("Event tracking ID cannot be blank")
    if req.get("computeEnvironmentConfigId") is None:
        errors.append("Compute environment config ID cannot be null")
    if req.get("hardwareConfigId") is None:
        errors.append("hardware config id cannot be null")
    return errors


def general_xsi_type(xsi_type: str) -> str:
    """Experiment types → ``xnat:experimentData``, scan types → ``xnat:imageScanData``
    (the plugin asks XFT whether the type is an instance of those)."""
    if xsi_type in (PROJECT, SUBJECT, STORED_SEARCH, EXPERIMENT, IMAGE_SCAN):
        return xsi_type
    if xsi_type.startswith("xnat:") and xsi_type.endswith("ScanData"):
        return IMAGE_SCAN
    if xsi_type.startswith("xnat:") and (xsi_type.endswith("SessionData")
                                          or xsi_type.endswith("AssessorData")):
        return EXPERIMENT
    return xsi_type


def task_template(compute_env: Mapping, hardware: Mapping) -> dict:
    """``toTaskTemplate(jobTemplate)``: container spec, resources and placement from the
    compute environment and hardware (every field present: ``@JsonInclude(ALWAYS)``)."""
    ce, hw = compute_env["computeEnvironment"], hardware["hardware"]
    env = {e["key"]: e["value"] for e in ce.get("environmentVariables", [])}
    env.update({e["key"]: e["value"] for e in hw.get("environmentVariables", [])})
    mounts = [{"target": m["containerPath"], "source": m["localPath"],
               "type": "volume" if m.get("volumeName") else "bind",
               "read_only": bool(m.get("readOnly"))} for m in ce.get("mounts", [])]
    constraints = []
    for c in hw.get("constraints", []):
        op = "==" if c.get("operator", "IN") == "IN" else "!="
        constraints.extend(f"{c['key']}{op}{v}" for v in c.get("values", []))
    return {
        "container_spec": {"image": ce["image"], "command": ce.get("command"), "env": env,
                           "labels": {}, "mounts": mounts},
        "resources": {"cpu_limit": hw.get("cpuLimit"), "cpu_reservation": hw.get("cpuReservation"),
                      "mem_limit": hw.get("memoryLimit"), "mem_reservation": hw.get("memoryReservation"),
                      "generic_resources": {g["name"]: g["value"] for g in hw.get("genericResources", [])}},
        "placement": {"constraints": constraints},
    }


def default_env(login: str, xsi_type: str, item_id: str, xnat_host: str, alias: str, secret: str) -> dict:
    """``getDefaultEnvironmentVariables``: XNAT's address, an alias token of the user, the data
    and workspace locations, and the item."""
    home = f"/workspace/{login}"
    return {"XNAT_HOST": xnat_host, "XNAT_USER": alias, "XNAT_PASS": secret, "XNAT_DATA": "/data",
            "XNAT_XSI_TYPE": xsi_type, "XNAT_ITEM_ID": item_id,
            "JUPYTERHUB_ROOT_DIR": home, "XDG_CONFIG_HOME": home}


def translate(path: str, prefix: str, docker_prefix: str) -> str:
    """``translateArchivePath`` / ``translateWorkspacePath``: Java's ``String.replace``, every
    occurrence of *prefix*, when both prefixes are set (choose prefixes that occur once)."""
    return path.replace(prefix, docker_prefix) if prefix.strip() and docker_prefix.strip() else path


def data_paths(archive: Path, kind: str, project: str, *, subject_label: str = "",
               experiment_labels: list[str] = (), exists=Path.exists) -> dict[str, str]:
    """Container path → archive path of the plugin's data layout under ``/data`` (only those
    that exist, as the plugin checks): ``kind`` is ``project``, ``subject`` or ``experiment``."""
    root = Path(archive) / project
    arc = root / "arc001"
    out: dict[str, str] = {}
    if kind == "project":
        for target, src in (("experiments", arc), ("resources", root / "resources"),
                            ("subjects", root / "subjects")):
            if exists(src):
                out[f"/data/projects/{project}/{target}"] = str(src)
        return out
    if kind == "subject":
        src = root / "subjects" / subject_label
        if exists(src):
            out[f"/data/projects/{project}/subject-resources/{subject_label}"] = str(src)
    for label in experiment_labels:
        src = arc / label
        if exists(src):
            out[f"/data/projects/{project}/experiments/{label}"] = str(src)
    return out


def user_options(*, user_id: int, login: str, servername: str, xsi_type: str, item_id: str,
                 project_id: str, event_tracking_id: str, template: dict, env: Mapping[str, str],
                 workspace_source: str, data: Mapping[str, str], archive_prefix: str = "",
                 archive_docker_prefix: str = "", dashboard_config_id: int | None = None) -> dict:
    """The stored ``XnatUserOptions`` (``UserOptionsEntity.toPojo``, written by XNAT's Jackson
    without nulls: no ``itemLabel``): the template plus the workspace mount (read-write), the
    item's data mounts (read-only, sources after path translation) and the default env."""
    t = json.loads(json.dumps(template))
    spec = t["container_spec"]
    spec["mounts"].append({"target": f"/workspace/{login}", "source": workspace_source,
                           "type": "bind", "read_only": False})
    for target in sorted(data):
        spec["mounts"].append({"target": target, "type": "bind", "read_only": True,
                               "source": translate(data[target], archive_prefix, archive_docker_prefix)})
    spec["env"].update(env)
    doc = {"userId": user_id, "servername": servername, "xsiType": xsi_type, "itemId": item_id,
           "projectId": project_id, "eventTrackingId": event_tracking_id,
           "dashboardConfigId": dashboard_config_id, "task_template": t}
    return {k: v for k, v in doc.items() if v is not None}


def hub_start_body(*, user_id: int, xsi_type: str, item_id: str, item_label: str, project_id: str,
                   event_tracking_id: str, dashboard_config_id: int | None = None) -> dict:
    """What the plugin POSTs to ``{api}/users/{u}/servers/{name}``: the builder sets no
    ``servername`` and no ``task_template`` and RestTemplate's Jackson keeps the nulls."""
    return {"userId": user_id, "servername": None, "xsiType": xsi_type, "itemId": item_id,
            "itemLabel": item_label, "projectId": project_id, "eventTrackingId": event_tracking_id,
            "dashboardConfigId": dashboard_config_id, "task_template": None}


def hub_server_view(server: Mapping | None) -> dict | None:
    """The plugin's ``Server`` model of one hub server, as XNAT writes it (no nulls)."""
    if server is None:
        return None
    keys = ("name", "ready", "pending", "url", "progress_url", "user_options", "started", "last_activity")
    return {k: server.get(k) for k in keys if server.get(k) is not None}


def hub_user_view(user: Mapping) -> dict:
    """The plugin's ``User`` model of a hub user (``admin`` always; no nulls otherwise)."""
    out = {"name": user.get("name"), "admin": bool(user.get("admin"))}
    for k in ("roles", "groups", "server", "pending", "last_activity"):
        if user.get(k) is not None:
            out[k] = user[k]
    out["servers"] = {n: hub_server_view(s) for n, s in (user.get("servers") or {}).items()}
    return out


def tracking_payload(entries: list[dict]) -> str:
    """``JupyterServerEventTrackingLog`` as JSON: ``{"entryList": [{status, eventTime, message}]}``
    sorted by time."""
    return json.dumps({"entryList": sorted(entries, key=lambda e: e["eventTime"])})
