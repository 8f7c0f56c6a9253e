"""``devxnat``: a development stand-in for XNAT's REST API.

Real XNAT (Java + PostgreSQL) cannot run on the machines this project is
developed and tested on, so this server answers the XNAT 1.8 REST paths the
bundle and xnatpy use, with XNAT's JSON shapes, authentication (password,
alias tokens, JSESSIONID) and permission rules, over a real archive directory
in XNAT's layout. Production points the bundle at a real XNAT by URL.

    xnat-hpc-hub devxnat --data DIR --port N [--demo] [--demo-size 30MB] [--seed 0]
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
import sys
from pathlib import Path

from .app import make_app
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="[devxnat %(levelname)s] %(message)s", stream=sys.stderr)
    store, archive = open_data_dir(args.data)
    if args.demo:
        try:
            from .demo import generate_demo, parse_size
        except ImportError as e:  # numpy: the `demo` extra
            print(f"devxnat: --demo needs the `demo` extra (pip install -e '.[demo]'): {e}", file=sys.stderr)
            return 1
        summary = generate_demo(store, archive, parse_size(args.demo_size), seed=args.seed)
        log.info("demo archive: %s", summary)
    return asyncio.run(_serve(store, archive, args.host, args.port))


async def _serve(store: Store, archive: Path, host: str, port: int) -> int:
    app = make_app(store, archive)
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
    server.stop()
    store.close()
    return 0
