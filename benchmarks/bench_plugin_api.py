"""XNAT's plugin API (``/hub/xnat-plugin/api``) against the hub's own REST API, side by side.

    python benchmarks/bench_plugin_api.py [--rounds 5] [--polls 200] [--starts 10]

A real JupyterHub with configurable-http-proxy on 127.0.0.1 (``tests.fixtures.hub.start_hub``),
the ``xnat`` service with the plugin's scopes, and a stand-in spawner whose "server" is a port
answering HTTP (what is measured is the hub, not Jupyter). Alternating, the order rotated each
round (``benchlib.alternate``):

* **poll** — what XNAT sends every ``startPollingInterval`` while a server starts and whenever
  its UI lists servers: ``GET …/users/{u}`` for the XNAT account ``Jane.Doe``. Ours: through the
  plugin API (the login mapped, the caller checked, the answer renamed); plain: the hub's
  ``GET /hub/api/users/{hub name}``. ``--polls`` sequential requests per round; the per-request
  median of each round, then the median and spread over the rounds.
* **start+stop** — the plugin's ``POST …/users/{u}/servers/{name}`` (flat body) until the hub
  lists the server ready, then ``DELETE`` with ``{"remove": true}`` until it is gone. Ours: the
  event-tracking name ``20261207T…Z`` through the plugin API; plain: the same through
  ``/hub/api`` with a name JupyterHub 6 accepts. ``--starts`` cycles per round.

Prints the medians, spreads and ratios (plain / ours: > 1 means ours is faster).
"""

from __future__ import annotations

import argparse
import http.server
import secrets
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.benchlib import alternate, machine, ratio  # noqa: E402
from hub_ext.names import hub_name  # noqa: E402
from tests.fixtures.hub import start_hub  # noqa: E402
from tests.fixtures.plugin import PLUGIN_API, generate_event_tracking_id  # noqa: E402

XNAT_SCOPES = '["admin:users", "admin:servers", "read:hub", "tokens"]'
CONFIG = '''
from jupyterhub.spawner import Spawner
class BenchNullSpawner(Spawner):
    """A server that is only a port answering HTTP."""
    running = False
    async def start(self):
        self.running = True
        return ("127.0.0.1", {responder_port})
    async def poll(self):
        return None if self.running else 0
    async def stop(self, now=False):
        self.running = False
c.JupyterHub.spawner_class = BenchNullSpawner
c.JupyterHub.authenticator_class = "null"
c.JupyterHub.allow_named_servers = True
c.Authenticator.allow_all = True
c.JupyterHub.services.append({{"name": "xnat", "api_token": "{token}"}})
c.JupyterHub.load_roles.append({{"name": "xnat", "services": ["xnat"], "scopes": {scopes}}})
'''
LOGIN = "Jane.Doe"


class _Quiet(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


def plugin_body(etid: str) -> dict:
    return {"userId": 12, "servername": None, "xsiType": "xnat:projectData", "itemId": "P", "itemLabel": "P",
            "projectId": "P", "eventTrackingId": etid, "dashboardConfigId": None, "task_template": None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--polls", type=int, default=200)
    ap.add_argument("--starts", type=int, default=10)
    args = ap.parse_args()

    responder = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    threading.Thread(target=responder.serve_forever, daemon=True).start()
    token = secrets.token_hex(32)
    with tempfile.TemporaryDirectory(prefix="bench-plugin-api-", dir="/var/tmp") as tmp:
        hub = start_hub(Path(tmp) / "hub", CONFIG.format(responder_port=responder.server_address[1],
                                                          token=token, scopes=XNAT_SCOPES))
        try:
            run(hub, token, args)
        finally:
            hub.stop()
            responder.shutdown()


def run(hub, token: str, args) -> None:
    s = requests.Session()
    s.headers["Authorization"] = f"token {token}"
    ours, plain = f"{hub.url}{PLUGIN_API}", f"{hub.url}/hub/api"
    user = hub_name(LOGIN)
    r = s.post(f"{ours}/users/{LOGIN}", timeout=30)
    assert r.status_code == 201, r.text

    def polls(url: str) -> float:
        lat = []
        for _ in range(args.polls):
            t = time.perf_counter()
            r = s.get(url, timeout=30)
            lat.append(time.perf_counter() - t)
            assert r.status_code == 200, r.text
        return statistics.median(lat)

    def cycles(api: str, who: str, name_of) -> float:
        total = 0.0
        for _ in range(args.starts):
            etid = generate_event_tracking_id()
            name = name_of(etid)
            t = time.perf_counter()
            r = s.post(f"{api}/users/{who}/servers/{name}", json=plugin_body(etid), timeout=60)
            assert r.status_code in (201, 202), r.text
            while not (s.get(f"{api}/users/{who}", timeout=30).json()["servers"].get(name) or {}).get("ready"):
                time.sleep(0.01)
            r = s.delete(f"{api}/users/{who}/servers/{name}", json={"remove": True}, timeout=60)
            assert r.status_code in (202, 204), r.text
            while name in s.get(f"{api}/users/{who}", timeout=30).json()["servers"]:
                time.sleep(0.01)
            total += time.perf_counter() - t
            time.sleep(0.002)  # a new millisecond: a new event-tracking id
        return total / args.starts

    poll = alternate(args.rounds, {"plugin API": lambda: polls(f"{ours}/users/{LOGIN}"),
                                   "hub API": lambda: polls(f"{plain}/users/{user}")}, warmup=1)
    cycle = alternate(args.rounds, {
        "plugin API": lambda: cycles(ours, LOGIN, lambda etid: etid),
        "hub API": lambda: cycles(plain, user, lambda etid: "p" + etid.lower())}, warmup=1)
    print(f"machine: {machine()}; {args.rounds} rounds (+1 warm-up), alternating")
    print(f"poll GET users/{{u}}, per request ({args.polls} a round):")
    for name, st in poll.items():
        print(f"  {name:<11} {st.spread('ms').replace(' ms', ' ms')}  [{st.median * 1e3:.2f} ms]")
    print(f"  ratio hub/plugin API: {ratio(poll['hub API'], poll['plugin API']):.2f}x")
    print(f"start + ready + stop, per cycle ({args.starts} a round):")
    for name, st in cycle.items():
        print(f"  {name:<11} {st.spread('ms')}")
    print(f"  ratio hub/plugin API: {ratio(cycle['hub API'], cycle['plugin API']):.2f}x")


if __name__ == "__main__":
    main()
