"""The governance service's process (:mod:`xnat_hpc_governance`): the revocation re-check
and the servers' calls to governance (:mod:`xnat_hpc_governance.server_api`), served on the
Unix socket ``c.XnatGovernance.service_socket`` (:mod:`hub_ext.governance_socket`), where the hub
passes them on, under the prefix ``/services/xnat-hpc-governance/``.

The hub starts it as a managed service (``register_governance(c, config_file=__file__)``) with
``JUPYTERHUB_API_URL`` and ``JUPYTERHUB_API_TOKEN`` (the token of the service
``xnat-hpc-governance``, whose role :data:`hub_ext.hub_rest.GOVERNANCE_SCOPES` holds). Run by
hand (or by a site's supervisor, the service then unmanaged), it reads the token from
``c.XnatGovernance.token_file`` and the address from ``c.XnatGovernance.hub_api_url``.

It stops on SIGINT or SIGTERM (the hub's stop) within a second: the round in flight is
cancelled; a revocation's effects already begun are idempotent and the next start's round does
them again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import sys
import time

from tornado import web
from tornado.httpserver import HTTPServer
from traitlets import Unicode, default
from traitlets.config import Application

from hub_ext import governance_socket, hub_rest
from hub_ext.audit_log import HubAuditLog
from hub_ext.auth import XnatAuthenticator
from hub_ext.governance_forward import service_prefix
from hub_ext.results_signer import ResultsSigner
from hub_ext.review_store import ReviewStore
from xnat_bridge.errors import XnatHpcError

from .owner_pages import FreshHubOAuth, page_handlers
from .revocation_watch import HubSource, RevocationWatch
from .server_api import server_api_handlers

log = logging.getLogger(__name__)


class ServiceConfigError(XnatHpcError):
    """The service cannot start as configured; the message names the setting."""

    status = 500
    reason = "governance_service_config"


class GovernanceService(Application):
    """``python -m xnat_hpc_governance --config /etc/jupyterhub/jupyterhub_config.py``."""

    name = "xnat-hpc-governance"
    description = ("xnat-hpc-hub's governance service: the revocation re-check, beside the hub, "
                   "through the hub's REST API")

    config_file = Unicode(
        "",
        help="""The hub's ``jupyterhub_config.py``: the service reads its settings
        (``c.OwnerAccess``, ``c.XnatGovernance``, ``c.HubAuditLog``, ``c.ReviewStore``,
        ``c.XnatAuthenticator.xnat_url``, the spawners' XNAT service account and profiles
        file) from the same file as the hub. Required. Example:
        ``--config=/etc/jupyterhub/jupyterhub_config.py``.""",
    ).tag(config=True)

    hub_api_url = Unicode(
        help="""The hub's REST API. Default: ``JUPYTERHUB_API_URL`` (set by the hub for a managed
        service), else ``c.XnatGovernance.hub_api_url``.""",
    ).tag(config=True)

    service_prefix = Unicode(
        help="""The path the service's routes live under. Default: ``JUPYTERHUB_SERVICE_PREFIX``
        (set by the hub), else ``/services/xnat-hpc-governance/``.""",
    ).tag(config=True)

    aliases = {"config": "GovernanceService.config_file", "log-level": "Application.log_level"}

    @default("service_prefix")
    def _default_service_prefix(self):
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "") or service_prefix("/")

    @default("log_level")
    def _default_log_level(self):
        return logging.INFO

    @default("hub_api_url")
    def _default_hub_api_url(self):
        return os.environ.get("JUPYTERHUB_API_URL", "")

    #: every line of this process's log names it: the hub's log holds it beside the hub's own
    log_line = "[%(levelname)1.1s %(asctime)s.%(msecs)03d xnat-hpc-governance %(name)s] %(message)s"

    def initialize(self, argv=None) -> None:
        self.parse_command_line(argv)
        if not self.config_file:
            raise ServiceConfigError("xnat-hpc-governance needs the hub's configuration: "
                                     "--config=/path/to/jupyterhub_config.py")
        path = os.path.abspath(self.config_file)
        if not os.path.isfile(path):
            raise ServiceConfigError(f"--config={self.config_file}: no such file", item=path)
        self.load_config_file(os.path.basename(path), path=os.path.dirname(path))
        self.parse_command_line(argv)  # the command line wins over the file
        logging.basicConfig(stream=sys.stderr, level=self.log_level, format=self.log_line,
                            datefmt="%Y-%m-%d %H:%M:%S", force=True)

    async def hub_client(self) -> hub_rest.HubRestClient:
        """The hub's REST API as the service: the hub's token for it, else the token file."""
        settings = hub_rest.XnatGovernance(config=self.config)
        url = (self.hub_api_url or settings.hub_api_url).rstrip("/")
        if not url:
            raise ServiceConfigError("the hub's REST API address is unknown: run the service from the hub "
                                     "(register_governance(c, config_file=__file__)) or set "
                                     "c.XnatGovernance.hub_api_url")
        token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
        if not token:
            token = await asyncio.to_thread(hub_rest.read_token, settings.token_file)
        return hub_rest.HubRestClient(url, token, timeout=settings.timeout, stop_timeout=settings.stop_timeout,
                                      poll_interval=settings.poll_interval)

    def pages_address(self, governance: hub_rest.XnatGovernance) -> tuple[str, int]:
        """``(host, port)`` of the owners' pages: the service's URL the hub gives it
        (``JUPYTERHUB_SERVICE_URL``, which ``register_governance`` sets from
        ``c.XnatGovernance.pages_url``), else that setting. An unprivileged port is refused
        unless ``c.XnatGovernance.allow_unprivileged_pages_port`` (hub_rest.XnatGovernance.pages_url)."""
        url = os.environ.get("JUPYTERHUB_SERVICE_URL", "") or governance.pages_url
        try:
            host, port = hub_rest.check_pages_url(url.rstrip("/"))
        except ValueError as exc:
            raise ServiceConfigError(f"the owners' pages' address: {exc}; c.XnatGovernance.pages_url") from None
        host = governance.pages_ip or host
        start = hub_rest.unprivileged_port_start()
        if port >= start and not governance.allow_unprivileged_pages_port:
            raise ServiceConfigError(
                f"the owners' pages would listen on {host}:{port}, a port any account on this machine may take "
                f"(ports from {start} on) while the service restarts, and so receive owners' sessions: give "
                f"c.XnatGovernance.pages_url a port below {start} (the default is {hub_rest.DEFAULT_PAGES_URL}), or, "
                "where no other account shares the hub's network namespace (its Kubernetes pod), set "
                "c.XnatGovernance.allow_unprivileged_pages_port = True", item=f"{host}:{port}")
        return host, port

    def watch(self, client: hub_rest.HubRestClient) -> RevocationWatch:
        settings = {"config": self.config}
        return RevocationWatch(settings, hub=HubSource(settings, client))

    def pages_app(self, client: hub_rest.HubRestClient, watch: RevocationWatch, **oauth) -> web.Application:
        """The owners' pages (:mod:`xnat_hpc_governance.owner_pages`), owners logging in through
        the hub's OAuth as this service's client; *oauth* overrides what
        :class:`~jupyterhub.services.auth.HubOAuth` takes from the hub's environment (tests)."""
        prefix = "/" + self.service_prefix.strip("/") + "/"
        name = os.environ.get("JUPYTERHUB_SERVICE_NAME", "") or hub_rest.SERVICE_NAME
        kwargs = {"api_token": client.token, "api_url": client.api_url, "base_url": prefix,
                  "oauth_client_id": os.environ.get("JUPYTERHUB_CLIENT_ID", "") or f"service-{name}"}
        if not os.environ.get("JUPYTERHUB_OAUTH_ACCESS_SCOPES"):
            kwargs["access_scopes"] = {f"access:services!service={name}", "access:services"}
        kwargs.update(oauth)
        oauth_client = FreshHubOAuth(**kwargs)  # the hub is asked at every request
        auth = XnatAuthenticator(config=self.config)
        settings = {"config": self.config, "hub": client, "hub_oauth": oauth_client, "service_prefix": prefix,
                    "audit_log": watch.audit_log, "review_store": watch.ledger, "watch": watch,
                    "xnat_url": auth.xnat_url or os.environ.get("XNAT_HOST", ""),
                    "hub_name": auth.normalize_username,
                    "cookie_secret": secrets.token_bytes(32),  # sessions end with the process: owners log in again
                    "xsrf_cookies": True, "login_url": oauth_client.login_url}
        return web.Application(page_handlers(prefix), **settings)

    def web_app(self, client: hub_rest.HubRestClient, watch: RevocationWatch | None = None) -> web.Application:
        """The servers' calls (:mod:`xnat_hpc_governance.server_api`), identified through *client*'s
        hub with the service's token (:class:`~jupyterhub.services.auth.HubAuth`)."""
        from jupyterhub.services.auth import HubAuth

        auth = HubAuth(api_token=client.token, api_url=client.api_url)
        prefix = "/" + self.service_prefix.strip("/") + "/"
        settings = {"config": self.config, "hub": client, "hub_auth": auth, "service_token": client.token,
                    "audit_log": HubAuditLog(config=self.config), "review_store": ReviewStore(config=self.config),
                    "results_signer": ResultsSigner(config=self.config),
                    "watch": watch if watch is not None else self.watch(client),
                    "xnat_url": XnatAuthenticator(config=self.config).xnat_url or os.environ.get("XNAT_HOST", "")}
        return web.Application(server_api_handlers(prefix), **settings)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until *stop* is set (default: SIGINT or SIGTERM; started by the hub, also when
        the hub's process ends, whichever way: :func:`die_with_parent`)."""
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (ValueError, RuntimeError):  # not the main thread (tests): the caller sets stop
                pass
        if os.environ.get("JUPYTERHUB_SERVICE_NAME") and not die_with_parent():
            log.warning("xnat-hpc-governance: the hub that started it is gone; stopping")
            return
        client = await self.hub_client()
        watch = self.watch(client)
        governance = hub_rest.XnatGovernance(config=self.config)
        path = governance.service_socket
        host, port = self.pages_address(governance)
        server = HTTPServer(self.web_app(client, watch))
        pages = HTTPServer(self.pages_app(client, watch), xheaders=True)
        try:
            server.add_socket(governance_socket.listen(path))
        except OSError as exc:
            raise ServiceConfigError(f"cannot listen on {path} ({exc.strerror}); c.XnatGovernance.service_socket",
                                     item=path) from None
        try:
            pages.listen(port, host)
        except OSError as exc:
            server.stop()
            raise ServiceConfigError(f"cannot serve the owners' pages on {host}:{port} ({exc.strerror}): another "
                                     "process holds the port; c.XnatGovernance.pages_url", item=f"{host}:{port}") from None
        log.info("xnat-hpc-governance %s: servers' calls on %s, owners' pages on http://%s:%s%s; hub API %s, "
                 "as the service %s", os.getpid(), path, host, port, self.service_prefix, client.api_url,
                 os.environ.get("JUPYTERHUB_SERVICE_NAME", hub_rest.SERVICE_NAME))
        watch.start()
        try:
            await stop.wait()
        finally:
            watch.stop()
            server.stop()
            pages.stop()
            if os.path.exists(path):
                os.unlink(path)
            log.info("xnat-hpc-governance stopping (%d re-check rounds done)", watch.rounds)

    def start(self) -> None:
        asyncio.run(self.run())


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send *sig* to this process when its parent ends (``PR_SET_PDEATHSIG``): a
    service the hub started then never outlives the hub, even a hub killed before it could stop
    its services (JupyterHub starts them in sessions of their own). False when the parent is
    already gone (re-parented to init, or to a subreaper); True otherwise, also where the call
    is not available (not Linux: logged)."""
    parent = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, int(sig), 0, 0, 0) != 0:  # PR_SET_PDEATHSIG = 1
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    except (OSError, AttributeError) as exc:
        log.warning("xnat-hpc-governance will not stop by itself when the hub's process ends: %s", exc)
        return True
    return parent != 1 and os.getppid() == parent


#: seconds a service the hub started waits before it exits on an error of its configuration: the
#: hub starts a managed service again as soon as it exits, which must not spin
RESTART_PAUSE = 10.0


def main(argv=None) -> None:
    app = GovernanceService()
    try:
        app.initialize(argv)
        app.start()
    except XnatHpcError as exc:
        print(f"xnat-hpc-governance: {exc.message}", file=sys.stderr)
        if os.environ.get("JUPYTERHUB_SERVICE_NAME"):
            time.sleep(RESTART_PAUSE)
        sys.exit(2 if isinstance(exc, ServiceConfigError) else 1)
