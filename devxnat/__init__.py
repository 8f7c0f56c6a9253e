"""``devxnat``: a development stand-in for XNAT's REST API.

Real XNAT (Java + PostgreSQL) cannot run on the machines this project is
developed and tested on, so this server answers the XNAT 1.8 REST paths the
bundle and xnatpy use, with XNAT's JSON shapes, authentication (password,
alias tokens, JSESSIONID) and permission rules, over a real archive directory
in XNAT's layout. Production points the bundle at a real XNAT by URL.

    xnat-hpc-hub devxnat --data DIR --port N [--demo] [--demo-size 30MB] [--seed 0]
        [--jupyterhub-api-url URL] [--jupyterhub-host-url URL]
        [--jupyterhub-token-file FILE] [--jupyterhub-password-file FILE] [--site-url URL]
        [--jupyterhub-cull-every SECONDS]
    python -m devxnat --data DIR ...          (the same, without the hub's command)

It is its own package, not part of what a site installs: it imports nothing
from ``xnat_bridge``, ``hub_ext`` or ``spawner``, and its HTTP errors
(:mod:`devxnat.errors`) are XNAT's wire protocol, not the client's error classes.

State (users, roles, memberships, tokens, sessions, catalog) lives in
``DIR/devxnat.sqlite3``; files in ``DIR/archive``. See docs/devxnat.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import stat
import sys
from pathlib import Path

from .app import make_app
from .culling import PluginCuller
from .jupyterhub_service import ensure_service_account
from .plugin_state import PluginState
from .store import Store, make_private

__all__ = ["main", "make_app", "Store", "open_data_dir"]

log = logging.getLogger(__name__)


def open_data_dir(data: Path) -> tuple[Store, Path]:
    """The store and archive directory of a devxnat data directory (created if new): the
    directory 0700, ``devxnat.sqlite3`` 0600."""
    data = Path(data)
    data.mkdir(parents=True, exist_ok=True)
    os.chmod(data, 0o700)
    archive = data / "archive"
    archive.mkdir(exist_ok=True)
    make_private(data / "devxnat.sqlite3")  # 0600, before the first connection
    return Store(data / "devxnat.sqlite3"), archive


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="xnat-hpc-hub devxnat",
        description="XNAT development server: XNAT's REST API over a local archive "
        "(for demos and tests; production uses a real XNAT).",
    )
    p.add_argument("--data", type=Path, required=True, help="data directory (state + archive)")
    p.add_argument("--port", type=int, default=8080, help="TCP port (0 = any free port; default 8080)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--demo", action="store_true", help="create the demo users and archive if missing")
    p.add_argument("--demo-size", default="30MB", help="size of the demo archive (default 30MB)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the demo archive (default 0)")
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    g = p.add_argument_group("XNAT JupyterHub plugin (see docs/devxnat.md)")
    g.add_argument("--jupyterhub-api-url", help="the plugin's jupyterHubApiUrl preference "
                   "(the hub's REST API, e.g. http://127.0.0.1:8000/hub/api)")
    g.add_argument("--jupyterhub-host-url", help="the plugin's jupyterHubHostUrl preference "
                   "(the hub's address users open)")
    g.add_argument("--jupyterhub-token-file", type=Path, help="file holding the plugin's jupyterHubToken "
                   "(XNAT's API token at the hub); must be 0600 and yours")
    g.add_argument("--jupyterhub-password-file", type=Path, help="file holding the password of the "
                   "`jupyterhub` account (JupyterHub role; enabled only when given); 0600 and yours")
    g.add_argument("--site-url", help="XNAT's address handed to notebooks as XNAT_HOST "
                   "(default: the address the start request came to)")
    g.add_argument("--jupyterhub-cull-every", type=float, default=0.0, metavar="SECONDS",
                   help="run the plugin's culling tasks (inactivityTimeout, maxServerLifetime) every "
                   "SECONDS; the plugin's is 300 (default 0: devxnat does not cull)")
    return p


def read_secret_file(path: Path, what: str) -> str:
    """The stripped first line of a secret file that is a regular file owned by this user
    and readable by nobody else (0600 or stricter); ValueError naming the fix otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise ValueError(f"{what}: cannot open {path}: {e.strerror}") from None
    with os.fdopen(fd, "r", encoding="utf-8") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{what}: {path} is not a regular file")
        if st.st_uid != os.getuid():
            raise ValueError(f"{what}: {path} is not owned by the user running devxnat; "
                             f"chown it to that user")
        if st.st_mode & 0o077:
            raise ValueError(f"{what}: {path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}); "
                             f"chmod 600 {path}")
        value = f.read().strip()
    if not value:
        raise ValueError(f"{what}: {path} is empty")
    return value


def plugin_settings(store: Store, args: argparse.Namespace) -> PluginState:
    """Apply the plugin's start-up options: preferences, and the `jupyterhub` account."""
    state = PluginState(store, defaults={"workspacePath": str(Path(args.data).resolve() / "workspaces")})
    if args.jupyterhub_api_url:
        state.set_pref("jupyterHubApiUrl", args.jupyterhub_api_url)
    if args.jupyterhub_host_url:
        state.set_pref("jupyterHubHostUrl", args.jupyterhub_host_url)
    if args.jupyterhub_token_file:
        state.set_pref("jupyterHubToken", read_secret_file(args.jupyterhub_token_file, "--jupyterhub-token-file"))
    password = (read_secret_file(args.jupyterhub_password_file, "--jupyterhub-password-file")
                if args.jupyterhub_password_file else None)
    ensure_service_account(store, password)
    return state


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="[devxnat %(levelname)s] %(message)s", stream=sys.stderr)
    store, archive = open_data_dir(args.data)
    try:
        state = plugin_settings(store, args)
    except ValueError as e:
        print(f"devxnat: {e}", file=sys.stderr)
        return 2
    if args.demo:
        try:
            from .demo import generate_demo, parse_size
        except ImportError as e:  # numpy: the `demo` extra
            print(f"devxnat: --demo needs the `demo` extra (pip install -e '.[demo]'): {e}", file=sys.stderr)
            return 1
        summary = generate_demo(store, archive, parse_size(args.demo_size), seed=args.seed)
        log.info("demo archive: %s", summary)
    return asyncio.run(_serve(store, archive, args.host, args.port, state, args.site_url,
                              cull_every=args.jupyterhub_cull_every))


async def _serve(store: Store, archive: Path, host: str, port: int, state: PluginState | None = None,
                 site_url: str | None = None, *, cull_every: float = 0.0) -> int:
    app = make_app(store, archive, plugin_state=state, site_url=site_url)
    culler = PluginCuller(app.settings)
    if cull_every > 0:  # the plugin's culling tasks (devxnat.culling)
        culler.start(cull_every)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    from tornado.httpserver import HTTPServer

    server = HTTPServer(app, max_buffer_size=64 << 20)
    server.add_sockets([sock])
    real_port = sock.getsockname()[1]
    print(f"devxnat listening on http://{host}:{real_port} (data {archive.parent})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    culler.stop()
    server.stop()
    store.close()
    return 0
