"""Audit trail benchmarks: the hub's ingestion under 50 servers at once, and the owner page on
100,000 events.

    python benchmarks/bench_audit.py [--rounds 3] [--servers 50] [--posts 20] [--batch 10]
                                     [--events 100000]

1. **Ingestion.** A real JupyterHub (with configurable-http-proxy) on 127.0.0.1 with the
   audit route and ``--servers`` users, each with a running server (a stand-in spawner
   whose "server" is a tiny HTTP responder: what is measured is the hub, not Jupyter) and so
   with the server's own hub token. Each of ``--servers`` threads posts ``--posts`` batches
   of ``--batch`` events (and, second mode, single events) with its server's token, all at
   once. Side by side, with the same threads, tokens and request count:

   Ours: the hub's address ``POST /hub/api/xnat-hpc/audit``, which the hub passes on to the
   governance service's process (a Unix socket), which asks the hub who the token is and
   which server it belongs to (two REST calls, cached a few seconds) and appends.

   * ``activity API``: JupyterHub's own ``POST /hub/api/users/{u}/activity`` (what every
     server already sends; the plain cost of an authenticated hub API call that writes);
   * ``jsonl+flock``: appending the same events to one hash-chained JSON-lines file under an
     ``flock`` (:class:`xnat_bridge.audit.JsonLinesSink`, the old hub log), no HTTP at all.

   Prints events/s and per-request p50 / p99 latency (medians over the rounds, spread).
2. **Owner page.** A store with ``--events`` events (3 owners' projects among 6, 40 users,
   all actions) and the owner page's data + HTML for the first page of one owner (the
   handler's own :func:`xnat_hpc_governance.owner.collect` and renderer; XNAT's member list left out),
   vs the old page: read the whole JSON-lines log, check its chain, filter, render.
   Goal: < 1 s for the first page.
3. **The hub's own events** (``--only hub-events``, ``--hub-events N``): what a login or a start
   waits for to record its event through the hub's outbox (delivered to the governance service
   in the background), against appending it to the store in the hub process as before; and how
   soon all of them are in the trail.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.server
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.benchlib import Stats, alternate, machine, ratio  # noqa: E402
from tests.fixtures.hub import start_hub  # noqa: E402

NULL_SPAWNER = '''
from jupyterhub.spawner import Spawner
class BenchNullSpawner(Spawner):
    """A server that is only a port answering HTTP: the hub's side of a server, nothing else."""
    running = False
    async def start(self):
        self.running = True
        return ("127.0.0.1", {responder_port})
    async def poll(self):
        return None if self.running else 0
    def get_state(self):
        from hub_ext.server_scopes import AUDIT, JOBS
        from xnat_bridge.scope import Scope
        from xnat_bridge.spawn_record import STATE_KEY, SpawnRecord, token_sha256
        state = {{**super().get_state(), "api_token": self.api_token}}  # the benchmark reads it back
        if self.api_token:  # the hub's record, as the XNAT spawners keep it: governance binds the token by it
            state[STATE_KEY] = SpawnRecord(scope=Scope.of(["BENCH"]), token_sha256=token_sha256(self.api_token),
                                           server_scopes=(AUDIT, JOBS)).to_state()
        return state
    async def stop(self, now=False):
        self.running = False
c.JupyterHub.spawner_class = BenchNullSpawner
c.JupyterHub.authenticator_class = "null"
c.Authenticator.allow_all = True
from hub_ext.handlers import xnat_hpc_handlers
c.JupyterHub.extra_handlers = xnat_hpc_handlers()
c.HubAuditLog.path = "{store}"
from hub_ext.hub_rest import register_governance
from hub_ext.server_scopes import register_server_scopes
c.XnatGovernance.token_file = "{token_file}"
c.XnatGovernance.service_socket = "{socket}"
register_governance(c, config_file=__file__)
register_server_scopes(c)
c.JupyterHub.load_roles.append({{"name": "bench-tokens", "scopes": ["admin:users", "admin:servers", "admin:server_state", "tokens"], "services": ["tests"]}})
'''


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class _Quiet(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


def server_tokens(hub, n: int) -> list[tuple[str, str]]:
    """(user, server token) of *n* users with a running stand-in server."""
    users = [f"bench{i:03d}" for i in range(n)]
    hub.api("POST", "/users", json={"usernames": users})
    for u in users:
        r = hub.api("POST", f"/users/{u}/server")
        assert r.status_code in (201, 202, 400), r.text
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        model = hub.api("GET", "/users", params={"state": "active"}).json()
        if sum(1 for m in model if m["name"] in users and m["servers"].get("", {}).get("ready")) == n:
            break
        time.sleep(0.5)
    return [(u, _server_token(hub, u)) for u in users]


def _server_token(hub, user: str) -> str:
    """A server's own token is only known to the spawner; the stand-in spawner's environment
    (JUPYTERHUB_API_TOKEN) is what a real server would get. It is published through the
    spawner's state for the benchmark (get_state), read with the admin API."""
    model = hub.api("GET", f"/users/{user}", params={"include_stopped_servers": "0"}).json()
    return model["servers"][""]["state"]["api_token"]


def post_batches(url: str, token: str, boot: str, posts: int, batch: int, user: str) -> list[float]:
    lat = []
    s = requests.Session()
    seq = 0
    for _ in range(posts):
        events = []
        for _ in range(batch):
            seq += 1
            events.append({"seq": seq, "action": "download", "outcome": "allowed",
                           "items": [f"P{seq % 6}/S{seq % 17}/E1"], "files": 3, "bytes": 12345,
                           "hashes": {"manifest": "0" * 64}, "detail": f"bench {user} {seq}"})
        t = time.perf_counter()
        r = s.post(url, json={"boot": boot, "events": events}, headers={"Authorization": f"token {token}"}, timeout=60)
        lat.append(time.perf_counter() - t)
        assert r.status_code == 200, r.text
    return lat


def post_activity(hub_url: str, token: str, posts: int, user: str) -> list[float]:
    lat = []
    s = requests.Session()
    for _ in range(posts):
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        t = time.perf_counter()
        r = s.post(f"{hub_url}/hub/api/users/{user}/activity", headers={"Authorization": f"token {token}"},
                   json={"last_activity": now, "servers": {"": {"last_activity": now}}}, timeout=60)
        lat.append(time.perf_counter() - t)
        assert r.status_code == 200, r.text
    return lat


def append_jsonl(path: Path, posts: int, batch: int, user: str) -> list[float]:
    from xnat_bridge.audit import JsonLinesSink, make_event

    sink = JsonLinesSink(path)
    lat = []
    for i in range(posts):
        t = time.perf_counter()
        for k in range(batch):
            sink.emit(make_event(user, "download", items=[f"P{k % 6}/S1/E1"], files=3, bytes=12345,
                                 hashes={"manifest": "0" * 64}, detail=f"bench {user} {i} {k}"))
        lat.append(time.perf_counter() - t)
    return lat


def concurrent_run(fn, tokens, *args) -> tuple[float, list[float]]:
    with concurrent.futures.ThreadPoolExecutor(len(tokens)) as pool:
        t = time.perf_counter()
        futs = [pool.submit(fn, *args_for(u, tok, args)) for u, tok in tokens]
        lat = [x for f in futs for x in f.result()]
        return time.perf_counter() - t, lat


def args_for(user, token, args):
    return [a(user, token) if callable(a) else a for a in args]


def ingestion(args, work: Path) -> None:
    responder = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    threading.Thread(target=responder.serve_forever, daemon=True).start()
    store = work / "audit" / "audit.db"
    from xnat_bridge.private import create_private_file

    (work / "hub").mkdir(parents=True, exist_ok=True)
    token_file = work / "hub" / "governance-token"
    create_private_file(token_file, os.urandom(32).hex().encode() + b"\n", replace=True)
    config = NULL_SPAWNER.format(responder_port=responder.server_address[1], store=store, token_file=token_file,
                                 socket=work / "hub" / "governance.sock")
    hub = start_hub(work / "hub", config)
    try:
        tokens = server_tokens(hub, args.servers)
        url = f"{hub.url}/hub/api/xnat-hpc/audit"
        modes = [("batches", args.batch), ("single events", 1)]
        print(f"\n1. ingestion: {args.servers} servers at once, {args.posts} requests each, {args.rounds} rounds "
              f"({machine()})", flush=True)
        for label, batch in modes:
            res: dict[str, Stats] = {n: Stats(n) for n in ("hub audit API", "activity API", "jsonl+flock")}
            p50s: dict[str, list[float]] = {n: [] for n in res}
            p99s: dict[str, list[float]] = {n: [] for n in res}
            for r in range(args.rounds):
                runs = [
                    ("hub audit API", lambda: concurrent_run(
                        post_batches, tokens, url, lambda u, t: t, lambda u, t: f"r{r}{batch}x{os.urandom(4).hex()}",
                        args.posts, batch, lambda u, t: u)),
                    ("activity API", lambda: concurrent_run(
                        post_activity, tokens, hub.url, lambda u, t: t, args.posts, lambda u, t: u)),
                    ("jsonl+flock", lambda: concurrent_run(
                        append_jsonl, tokens, work / f"plain-{r}-{batch}.jsonl", args.posts, batch, lambda u, t: u)),
                ]
                shift = r % len(runs)
                for name, fn in runs[shift:] + runs[:shift]:
                    wall, lat = fn()
                    res[name].seconds.append(wall)
                    p50s[name].append(pct(lat, .5))
                    p99s[name].append(pct(lat, .99))
            n_events = args.servers * args.posts * batch
            n_req = args.servers * args.posts
            print(f"  {label} ({batch} event(s) a request, {n_events} events, {n_req} requests a round):")
            for name, st in res.items():
                per = n_events if name != "activity API" else n_req
                unit = "events/s" if name != "activity API" else "requests/s"
                print(f"    {name:14s} {per / st.median:8.0f} {unit} ({per / max(st.seconds):.0f}–"
                      f"{per / min(st.seconds):.0f}); per request p50 {statistics.median(p50s[name]) * 1e3:.1f} ms, "
                      f"p99 {statistics.median(p99s[name]) * 1e3:.1f} ms (wall {st.spread()})", flush=True)
        from hub_ext.audit_store import load_key, verify_store

        v = verify_store(store, load_key(store.with_name("audit.key"), create=False))
        print(f"  trail after the runs: {v.sentence}")
    finally:
        hub.stop()
        responder.shutdown()


# -- owner page --------------------------------------------------------------------------------
ACTIONS = ["download", "dataset_create", "stage", "submit", "key_release", "result_retrieve", "spawn",
           "browse", "login", "permission_denied"]


def synthetic(n: int, seed: int = 7) -> list[dict]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        action = rnd.choice(ACTIONS)
        project = f"PROJ_{rnd.randrange(6)}"
        ev = {"user": f"user{rnd.randrange(40):02d}", "action": action, "outcome": rnd.choice(["allowed"] * 9 + ["denied"]),
              "items": [] if action == "login" else [f"{project}/S{rnd.randrange(50):03d}/E1"],
              "files": rnd.randrange(100), "bytes": rnd.randrange(10**9), "hashes": {"manifest": "%064x" % i},
              "detail": f"job j{i:012x} slurm {1000 + i}", "server": "", "source": "server"}
        if action in ("submit", "key_release", "result_retrieve"):
            ev["extra"] = {"job": f"j{i // 3:012x}", "slurm_job_id": str(1000 + i // 3)}
        out.append(ev)
    return out


def owner_page(args, work: Path) -> None:
    from traitlets.config import Config

    from xnat_hpc_governance import owner, owner_render as R
    from hub_ext.audit_log import HubAuditLog
    from xnat_bridge.audit import GENESIS, chain_hash, JsonLinesSink, verify_chain

    events = synthetic(args.events)
    c = Config()
    c.HubAuditLog.path = str(work / "page" / "audit.db")
    log = HubAuditLog(config=c)
    t = time.perf_counter()
    store = log.store()
    for i in range(0, len(events), 1000):
        store.append(events[i:i + 1000])
    store.checkpoint()
    build = time.perf_counter() - t
    # the old format: the same events as hash-chained JSON lines
    plain = work / "page" / "audit.jsonl"
    prev, lines = GENESIS, []
    for e in events:
        body = json.dumps({**e, "time": "2026-11-26T00:00:00.000Z"}, sort_keys=True, separators=(",", ":"))
        h = chain_hash(prev, body)
        lines.append(body[:-1] + f',"prev":"{prev}","hash":"{h}"}}')
        prev = h
    plain.write_text("\n".join(lines) + "\n")
    owned = {"PROJ_0", "PROJ_1", "PROJ_2"}
    print(f"\n2. owner page, {args.events} events in the store (built in {build:.1f} s), owner of 3 of 6 projects",
          flush=True)

    def ours() -> float:
        t = time.perf_counter()
        f = R.Filters()
        query = dict(projects=owned, user=None, actions=None, since=None, until=None)
        evs, total, views = owner.collect(log, owned, owned, f, query, [("user01", "", "")], lambda p: ([], ""))
        ok, sentence, checked = log.status()
        page = R.render_page(R.PageView("owner", sorted(owned), ok, sentence, checked, f, evs, total, views,
                                        [], "/hub/xnat-hpc/owner"))
        assert total > 0 and "<table" in page
        return time.perf_counter() - t

    def old() -> float:
        t = time.perf_counter()
        evs = JsonLinesSink(plain).read()
        count, problem = verify_chain(plain)
        shown = R.events_for(evs, owned, 500)
        page = R.simple_page("owner", owned, shown, problem or f"intact ({count})")
        assert shown and "<table" in page
        return time.perf_counter() - t

    res = {"ours (SQLite store)": Stats("ours"), "old (JSON-lines scan)": Stats("old")}
    for r in range(args.rounds):
        order = list(res.items()) if r % 2 == 0 else list(reversed(res.items()))
        for name, st in order:
            st.seconds.append(ours() if name.startswith("ours") else old())
    for name, st in res.items():
        print(f"  {name:24s} first page {st.spread('ms')}")
    t = time.perf_counter()
    ok, sentence = log.verify()
    print(f"  full verification of the keyed chain: {(time.perf_counter() - t) * 1e3:.0f} ms ({sentence})")
    log.close()


def hub_events(args, work: Path) -> None:
    """3. The hub's own events (logins, starts): what a login or a start waits for to record its
    event, and how soon the trail holds it. Ours: :class:`hub_ext.hub_events.HubEventLog` (the
    outbox line ``fsync``'d, then the sender thread delivers it to the governance service's
    ``/xnat-hpc-hub-events`` over its Unix socket, served here by the service's own handler on a
    loop of its own); plain: :meth:`hub_ext.audit_log.HubAuditLog.record`, the append into the
    store that the hub did itself before (one group-commit transaction per event)."""
    import asyncio

    from tornado import web
    from tornado.httpserver import HTTPServer
    from traitlets.config import Config

    from hub_ext import governance_socket
    from hub_ext.audit_log import HubAuditLog
    from hub_ext.hub_events import HubEventLog, outbox_of, sender_of, stop_senders
    from xnat_bridge.private import check_private_dir, create_private_file
    from xnat_hpc_governance.server_api import server_api_handlers

    n = args.hub_events
    print(f"\n3. the hub's own events: {n} logins recorded one after another", flush=True)
    secrets_dir = work / "hub-events-secrets"
    check_private_dir(str(secrets_dir), create=True)
    token = "t" * 64
    create_private_file(str(secrets_dir / "token"), (token + "\n").encode())

    def config(name: str) -> Config:
        c = Config()
        c.HubAuditLog.path = str(work / name / "audit.db")
        c.XnatGovernance.token_file = str(secrets_dir / "token")
        c.XnatGovernance.service_socket = str(secrets_dir / "g.sock")
        return c

    ours_c = config("ours")
    ready, loop_box = threading.Event(), {}

    def serve() -> None:  # the service's handler on its socket, on a loop of its own (its process)
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        app = web.Application(server_api_handlers("/services/xnat-hpc-governance/"), service_token=token,
                              audit_log=HubAuditLog(config=ours_c), hub_auth=None)
        server = HTTPServer(app)
        server.add_socket(governance_socket.listen(ours_c.XnatGovernance.service_socket))
        loop_box["loop"], loop_box["server"] = loop, server
        ready.set()
        loop.run_forever()

    threading.Thread(target=serve, daemon=True).start()
    ready.wait(30)
    store = HubAuditLog(config=ours_c)

    async def record_all(log) -> list[float]:
        waits = []
        for i in range(n):
            t = time.perf_counter()
            await log.record(f"user{i % 40:02d}", "login", "allowed", detail="benchmark")
            waits.append(time.perf_counter() - t)
        return waits

    def ours() -> dict:
        before = store.count(actions={"login"})
        t0 = time.perf_counter()
        waits = asyncio.run(record_all(HubEventLog(config=ours_c)))
        box = outbox_of(ours_c)
        while box.pending(1)[1]:
            sender_of(ours_c).wake.set()
            time.sleep(0.001)
        delivered = time.perf_counter() - t0
        assert store.count(actions={"login"}) == before + n, "not every event reached the trail once"
        return {"seconds": statistics.median(waits), "p99": pct(waits, 0.99), "delivered": delivered}

    plain_log = HubAuditLog(config=config("plain"))

    def plain() -> dict:
        t0 = time.perf_counter()
        waits = asyncio.run(record_all(plain_log))
        return {"seconds": statistics.median(waits), "p99": pct(waits, 0.99), "delivered": time.perf_counter() - t0}

    stats = alternate(args.rounds, {"ours (outbox → service)": ours, "plain (append to the store)": plain})
    for name, st in stats.items():
        p99 = statistics.median(f["p99"] for f in st.facts)
        delivered = statistics.median(f["delivered"] for f in st.facts)
        print(f"  {name:30s} wait per event p50 {st.median * 1e3:.2f} ms "
              f"({min(st.seconds) * 1e3:.2f}–{max(st.seconds) * 1e3:.2f}), p99 {p99 * 1e3:.2f} ms; "
              f"all {n} in the trail after {delivered:.2f} s ({n / delivered:.0f} events/s)")
    ours_s, plain_s = stats["ours (outbox → service)"], stats["plain (append to the store)"]
    print(f"  ratio (plain/ours wait, > 1: ours waits less): {ratio(plain_s, ours_s):.2f}")
    stop_senders(1.0)
    loop_box["loop"].call_soon_threadsafe(loop_box["loop"].stop)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--servers", type=int, default=50)
    p.add_argument("--posts", type=int, default=20)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--hub-events", type=int, default=500, help="logins recorded per round (mode 3)")
    p.add_argument("--only", choices=["ingestion", "page", "hub-events"], default=None)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-audit-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        if args.only in (None, "page"):
            owner_page(args, work)
        if args.only in (None, "ingestion"):
            ingestion(args, work)
        if args.only in (None, "hub-events"):
            hub_events(args, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
