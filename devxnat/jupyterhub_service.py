"""The XNAT JupyterHub plugin's service (``DefaultJupyterHubService`` start and stop,
``DefaultUserOptionsService.storeUserOptions``, ``DefaultPermissionsHelper.canRead``) and the
``jupyterhub`` service account (``JupyterHubUserInitializer``).

A start or stop is answered at once by the handler (:mod:`.jupyterhub_plugin`); the hub calls
run as a task on devxnat's loop and report through XNAT's event tracking
(:class:`.plugin_state.PluginState`), message for message as the plugin does.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from . import plugin_configs as pc
from . import stored_search
from .hub_client import HubClient, ResourceAlreadyExists, UserNotFound
from .plugin_state import PluginState

log = logging.getLogger(__name__)


# -- permissions (DefaultPermissionsHelper.canRead) ------------------------------

def can_read_item(store, access, project_id: str | None, item_id: str, xsi_type: str) -> bool:
    """Whether the user may read the item the start is for (project, subject, experiment; a stored
    search: :func:`.stored_search.plugin_can_read`)."""
    if xsi_type == pc.STORED_SEARCH:
        return stored_search.plugin_can_read(store, access, project_id, item_id)
    if not project_id:
        return False
    row = store.project(project_id)
    if row is None or not access.can_read(row):
        return False
    if xsi_type == pc.PROJECT:
        return True
    return (store.subject(project_id, item_id) is not None
            or store.experiment(item_id, project_id) is not None)


def service_account_enabled(store) -> bool:
    """``isJupyterHubServiceAccountEnabled``: an enabled account holds the JupyterHub role."""
    return any(u["enabled"] and pc.JUPYTERHUB_ROLE in store.roles(u["login"]) for u in store.users())


# -- the service ---------------------------------------------------------------------

class JupyterHubService:
    """``DefaultJupyterHubService``'s start and stop over :class:`HubClient`."""

    def __init__(self, settings):
        self.settings = settings
        self.store = settings["store"]
        self.state: PluginState = settings["plugin_state"]
        self.tasks: set[asyncio.Task] = settings.setdefault("plugin_tasks", set())

    def client(self) -> HubClient:
        return HubClient(self.state.pref("jupyterHubApiUrl"), self.state.pref("jupyterHubToken"))

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _event(self, key, uid, status, progress, message) -> None:
        self.state.track(key, uid, status, progress, message)

    def start(self, login: str, access, req: dict, xnat_host: str) -> None:
        """The synchronous part of ``startServer`` (events, permission, availability), then the
        rest as a background task."""
        user = self.store.user(login)
        uid = user["xdat_user_id"]
        key, xsi, item, project = (req["eventTrackingId"], req["xsiType"], req["itemId"], req["projectId"])
        app = "dashboard" if req.get("dashboardConfigId") is not None else "Jupyter notebook"
        self._event(key, uid, "InProgress", 0, f"Starting {app} for user {login}.")
        if not can_read_item(self.store, access, project, item, xsi):
            self._event(key, uid, "Failed", 100, f"Failed to launch {app}. Permission denied to read "
                                                f"{xsi} {item} in project {project}")
            return
        if req.get("dashboardConfigId") is not None:
            self._event(key, uid, "Failed", 100,
                        "Failed to start dashboard. The dashboard is not available to the user.")
            return
        scope = {"Project": project, "User": login, "DataType": xsi, "Site": "XNAT"}
        if not self.state.compute.is_available(as_int(req["computeEnvironmentConfigId"]),
                                               as_int(req["hardwareConfigId"]), scope):
            self._event(key, uid, "Failed", 100,
                        "Failed to launch Jupyter notebook server. The compute environment or hardware "
                        "configuration is not available to the user.")
            return
        self._spawn(self._start_async(login, uid, access, req, app, xnat_host))

    async def _start_async(self, login, uid, access, req, app, xnat_host) -> None:
        key = req["eventTrackingId"]
        servername = req.get("servername") or ""
        hub = self.client()
        fail = lambda msg: self._event(key, uid, "Failed", 100, msg)  # noqa: E731
        try:
            await hub.version()
        except Exception:
            fail("Failed to connect to JupyterHub. Please ensure the following:\n"
                 "(1) JupyterHub is running \n"
                 "(2) Verify the correct API URL is set in the plugin settings.")
            return
        try:
            await hub.info()
        except Exception:
            fail("Failed to connect to JupyterHub. Please check the following: \n"
                 "(1) Ensure that JupyterHub is running. \n"
                 "(2) Verify the correct API URL is set in the plugin settings. \n"
                 "(3) Confirm XNATs token for authenticating with JupyterHub is correctly set in "
                 "both the plugin settings and JupyterHub configuration.")
            return
        try:
            self._event(key, uid, "InProgress", 0, "Checking for existing Jupyter servers.")
            hub_user = await hub.get_user(login) or await hub.create_user(login)
            if len(hub_user.get("servers") or {}) >= int(self.state.num("maxNamedServers")):
                fail(f"Failed to launch {app}. Maximum number of running Jupyter servers reached.")
                return
            self._event(key, uid, "InProgress", 20, "Building container configuration.")
            await self.store_user_options(login, uid, access, req, xnat_host)
            self._event(key, uid, "InProgress", 30,
                        "Saved container configuration. Sending start request to JupyterHub.")
            body = pc.hub_start_body(user_id=uid, xsi_type=req["xsiType"], item_id=req["itemId"],
                                     item_label=req["itemLabel"], project_id=req["projectId"],
                                     event_tracking_id=key,
                                     dashboard_config_id=req.get("dashboardConfigId"))
            await hub.start_server(login, servername, body)
            self._event(key, uid, "InProgress", 40, "JupyterHub is spawning container.")
            timeout, interval = self.state.num("startTimeout"), self.state.num("startPollingInterval")
            waited = 0.0
            while waited < timeout:
                await asyncio.sleep(interval)
                server = await hub.get_server(login, servername)
                if server is not None:
                    if server.get("ready"):
                        log.info("%s started for user %s, %s %s", app, login, req["xsiType"], req["itemId"])
                        self._event(key, uid, "Completed", 100,
                                    f"{app[0].upper()}{app[1:]} is available at: {server.get('url')}")
                        return
                else:
                    self._event(key, uid, "InProgress", 45, "Waiting for JupyterHub to spawn server.")
                waited += interval
            fail(f"Failed to launch {app}.Timeout exceeded while waiting for JupyterHub to spawn server. "
                 "Check the XNAT and JupyterHub system logs for error messages.")
        except UserNotFound:
            fail(f"Failed to launch {app}. User not found.")
        except ResourceAlreadyExists:
            fail(f"Failed to launch {app}. A server with the same name is already running.")
        except asyncio.CancelledError:
            fail(f"Failed to launch {app}. Thread interrupted. Check the XNAT and JupyterHub system "
                 "logs for error messages.")
            raise
        except Exception as e:  # noqa: BLE001 - the plugin's catch-all
            msg = f"Failed to launch {app}. "
            if not service_account_enabled(self.store):
                msg += ("Make sure the JupyterHub service account user is enabled and provide the "
                        "credentials to JupyterHub (refer to the documentation for more details). ")
            msg += "Check the XNAT and JupyterHub system logs for error messages."
            log.error("%s (%s)", msg, e)
            fail(msg)

    async def store_user_options(self, login, uid, access, req, xnat_host) -> None:
        """``storeUserOptions``: the template of the chosen configs, the workspace and data
        mounts of the item, an alias token of the user in the env; stored per (user, server)."""
        project, item = req["projectId"], req["itemId"]
        xsi = req["xsiType"]
        if not can_read_item(self.store, access, project, item, xsi):
            return
        # resolve the job template (raises when the configs are no longer available: the
        # start's catch-all fails it); storeUserOptions' execution scope has no Site
        env_cfg, hw_cfg = self.state.compute.job_template(
            as_int(req["computeEnvironmentConfigId"]), as_int(req["hardwareConfigId"]),
            {"Project": project, "User": login, "DataType": xsi})
        template = pc.task_template(env_cfg, hw_cfg)
        general = pc.general_xsi_type(xsi)
        archive = Path(self.settings["archive"])
        data = self._data_paths(archive, general, project, item, access)
        workspace = await asyncio.get_running_loop().run_in_executor(
            None, make_workspace, self.state.pref("workspacePath"), login,
            self.store.user(login)["email"])
        tok = self.store.issue_token(login)
        env = pc.default_env(login, general, item, xnat_host, tok["alias"], tok["secret"])
        doc = pc.user_options(
            user_id=uid, login=login, servername=req.get("servername") or "", xsi_type=general,
            item_id=item, project_id=project, event_tracking_id=req["eventTrackingId"],
            template=template, env=env,
            workspace_source=pc.translate(str(workspace), self.state.pref("pathTranslationWorkspacePrefix"),
                                          self.state.pref("pathTranslationWorkspaceDockerPrefix")),
            data=data, archive_prefix=self.state.pref("pathTranslationArchivePrefix"),
            archive_docker_prefix=self.state.pref("pathTranslationArchiveDockerPrefix"),
            dashboard_config_id=req.get("dashboardConfigId"))
        self.state.store_options(uid, req.get("servername") or "", doc)

    def _data_paths(self, archive: Path, general: str, project: str, item: str, access=None) -> dict:
        if general == pc.PROJECT:
            return pc.data_paths(archive, "project", item)
        if general == pc.STORED_SEARCH:  # getStoredSearchPaths: the start's project, as the user reads it
            return stored_search.plugin_data_paths(self.store, access, archive, project)
        if general == pc.SUBJECT:
            sub = self.store.subject(project, item)
            if sub is None:
                return {}
            labels = [e["label"] for e in self.store.experiments(subject_id=sub["id"])]
            return pc.data_paths(archive, "subject", sub["project"], subject_label=sub["label"],
                                 experiment_labels=labels)
        if general == pc.EXPERIMENT:
            e = self.store.experiment(item, project)
            if e is None:
                return {}
            return pc.data_paths(archive, "experiment", e["project"], experiment_labels=[e["label"]])
        return {}

    def stop(self, login: str, servername: str, key: str) -> None:
        uid = self.store.user(login)["xdat_user_id"]
        self._event(key, uid, "InProgress", 0, "Stopping Jupyter Server.")
        self._spawn(self._stop_async(login, uid, servername, key))

    async def _stop_async(self, login, uid, servername, key) -> None:
        hub = self.client()
        try:
            self._event(key, uid, "InProgress", 50, "Sending stop request to JupyterHub.")
            await hub.get_server(login, servername)
            await hub.stop_server(login, servername)
            timeout, interval = self.state.num("stopTimeout"), self.state.num("stopPollingInterval")
            waited = 0.0
            while waited < timeout:
                await asyncio.sleep(interval)
                if await hub.get_server(login, servername) is None:
                    log.info("Jupyter server stopped for user %s", login)
                    self.state.remove_options(uid, servername)
                    self._event(key, uid, "Completed", 100, "Jupyter Server Stopped.")
                    return
                waited += interval
            self._event(key, uid, "Failed", 100, "Failed to stop Jupyter Server.")
        except Exception as e:  # noqa: BLE001
            log.error("Failed to stop jupyter server (%s)", e)
            self._event(key, uid, "Failed", 100, "Failed to stop Jupyter Server.")


def make_workspace(workspace_path: str, login: str, email: str) -> Path:
    """``getUserWorkspace``: ``{workspacePath}/users/{u}`` with a ``git/config`` when new."""
    path = Path(workspace_path) / "users" / login
    if not path.exists():
        path.mkdir(parents=True)
        (path / "git").mkdir()
        (path / "git" / "config").write_text(f"[user]\n    name = {login}\n    email = {email}")
    return path


def as_int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def ensure_service_account(store, password: str | None) -> None:
    """``JupyterHubUserInitializer``: the ``jupyterhub`` account with the ``JupyterHub`` role,
    enabled only when a password is given (the plugin creates it disabled by default)."""
    if store.user(pc.SERVICE_ACCOUNT) is None:
        store.add_user(pc.SERVICE_ACCOUNT, password or os.urandom(24).hex(), enabled=False,
                       firstname="jupyterhub", lastname="jupyterhub",
                       email="jupyterhub@jupyterhub.jupyterhub")
    if password:
        store.set_password(pc.SERVICE_ACCOUNT, password)
        store.set_enabled(pc.SERVICE_ACCOUNT, True)
    store.add_role(pc.SERVICE_ACCOUNT, pc.JUPYTERHUB_ROLE)
