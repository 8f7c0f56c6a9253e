"""Spawn benchmarks: ``xnat-slurm`` vs plain batchspawner, and many ``xnat-local`` at once.

    python benchmarks/bench_spawn.py [--rounds 5] [--concurrent 50]

Starts (on 127.0.0.1) devxnat with a small demo archive, the local Slurm
(``xnat-hpc-hub slurm up``) and two JupyterHubs with configurable-http-proxy:

* hub A: the ``xnat`` profiles spawner (XNAT permission check, scope, bootstrap
  of secrets, Slurm job on the ``interactive`` partition);
* hub B: plain batchspawner ``SlurmSpawner`` with its defaults except what this
  machine needs (no sudo: ``runuser``; no ``srun`` step), same partition,
  same resources, same single-user command.

1. Spawn → ready, A and B alternated for ``--rounds`` rounds (the order rotates every
   round); prints the medians, the spread and the ratio ours / batchspawner (goal ≤ 0.8),
   and ours' time by phase (:data:`spawner.progress.SPAWN_PHASES`, from the hub's log).
2. ``--concurrent`` named servers of one user started at once on ``xnat-local``
   (bubblewrap sandbox each): failures (goal 0), p50 / p95 / max spawn → ready.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchlib import alternate
from devstack.demo import close_archive, prepare_staging_root
from tests.fixtures import accounts
from tests.fixtures.devxnat import start_devxnat
from tests.fixtures.hub import start_hub
from tests.fixtures.spawn import make_hub

PLAIN = """
c.JupyterHub.authenticator_class = "dummy"
c.JupyterHub.spawner_class = "batchspawner.SlurmSpawner"
c.SlurmSpawner.exec_prefix = "/usr/sbin/runuser -u {username} --"   # users named as their accounts
c.SlurmSpawner.req_srun = ""
c.SlurmSpawner.state_exechost_exp = "127.0.0.1"   # the dev node's name does not resolve (ours: server_host)
c.SlurmSpawner.req_prologue = "export PATH={bindir}:$PATH"
c.SlurmSpawner.req_partition = "interactive"
c.SlurmSpawner.req_nprocs = "1"
c.SlurmSpawner.req_memory = "1G"
c.SlurmSpawner.req_runtime = "0:30:00"
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 90
c.JupyterHub.allow_named_servers = True
"""

MANY = """
c.JupyterHub.named_server_limit_per_user = 0
c.JupyterHub.concurrent_spawn_limit = 0
c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}
c.Spawner.start_timeout = 600
c.Spawner.http_timeout = 600
"""


def spawn_ready(hub, user: str, server: str, options: dict | None, timeout: float = 180) -> float:
    t0 = time.perf_counter()
    r = hub.api("POST", f"/users/{user}/servers/{server}", json=options or {}, timeout=timeout)
    if r.status_code not in (201, 202):
        raise RuntimeError(f"spawn {user}/{server}: {r.status_code} {r.text[:300]}")
    while r.status_code != 201:
        srv = hub.api("GET", f"/users/{user}").json()["servers"].get(server)
        if srv and srv.get("ready"):
            break
        if srv is None or time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"spawn {user}/{server} failed or timed out")
        time.sleep(0.05)
    return time.perf_counter() - t0


def spawn_many(hub, user: str, n: int, options: dict, timeout: float = 900):
    """Start *n* named servers at once; one poller (not n) watches them become ready.

    Returns (spawn->ready seconds of the ready ones, failure descriptions, wall seconds)."""
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        posts = list(pool.map(lambda i: hub.api("POST", f"/users/{user}/servers/s{i}", json=options,
                                                timeout=timeout), range(n)))
    pending = {f"s{i}" for i, r in enumerate(posts) if r.status_code in (201, 202)}
    failures = [f"s{i}: POST {r.status_code} {r.text[:200]}" for i, r in enumerate(posts)
                if r.status_code not in (201, 202)]
    ready: dict[str, float] = {}
    while pending and time.perf_counter() - t0 < timeout:
        time.sleep(0.5)
        try:
            servers = hub.api("GET", f"/users/{user}", timeout=120).json()["servers"]
        except requests.RequestException:
            continue  # the hub is busy starting servers; ask again
        for name in list(pending):
            srv = servers.get(name)
            if srv is None:
                failures.append(f"{name}: spawn failed (see the hub log)")
                pending.discard(name)
            elif srv.get("ready"):
                ready[name] = time.perf_counter() - t0
                pending.discard(name)
    failures += [f"{name}: not ready after {timeout:.0f} s" for name in sorted(pending)]
    return list(ready.values()), failures, time.perf_counter() - t0


def stop(hub, user: str, server: str) -> None:
    hub.api("DELETE", f"/users/{user}/servers/{server}", timeout=120)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and server in hub.api("GET", f"/users/{user}").json()["servers"]:
        time.sleep(0.1)


def spawn_phases(hub_log: str) -> dict[str, list[float]]:
    """The phases of every start the hub logged (``... started: checks 0.20 s · ...``)."""
    out: dict[str, list[float]] = {}
    for line in hub_log.splitlines():
        if " started: " in line:
            for part in line.split(" started: ", 1)[1].split(" (total")[0].split(" · "):
                m = re.fullmatch(r"(.+) ([0-9.]+) s", part.strip())
                if m:
                    out.setdefault(m.group(1), []).append(float(m.group(2)))
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--concurrent", type=int, default=50)
    args = ap.parse_args()

    subprocess.run([sys.executable, "-m", "hub_ext.cli", "slurm", "up"], check=True, capture_output=True)
    # throwaway accounts (x<3 hex>-alice, ...), removed at the end: never the demo users' homes
    names = accounts.create(["alice", "bob"])
    alice = accounts.unix_name("alice")
    work = Path(tempfile.mkdtemp(prefix="xnat-hpc-bench-", dir="/var/tmp"))
    os.chmod(work, 0o755)
    staging = work / "staging"
    prepare_staging_root(staging)  # root's 0755: the hub makes each user's directory
    dx = start_devxnat(work / "devxnat", demo_size="3MB")
    close_archive(dx.archive)  # as a site keeps it: only the hub's sandbox grants the scope
    hubs = []
    try:
        ours = make_hub(work / "hub-ours", dx, "xnat", staging=staging)
        hubs.append(ours)
        plain = start_hub(work / "hub-plain", PLAIN.replace("{bindir}", str(Path(sys.executable).parent)))
        hubs.append(plain)
        ours.login("alice", "alice-demo")
        plain.api("POST", f"/users/{alice}")  # batchspawner runs a hub user as the account of its name
        print(f"spawn -> ready on the local Slurm, {args.rounds} rounds each, alternated", flush=True)
        counter = iter(range(10**6))

        def one(hub, user, options):
            def run() -> float:
                name = f"r{next(counter)}"
                took = spawn_ready(hub, user, name, options)
                stop(hub, user, name)
                return took
            return run

        res = alternate(args.rounds, {
            "xnat-slurm (XnatSlurmSpawner)": one(ours, "alice", {"profile": "slurm-cpu", "projects": ["NEURO_MRI"]}),
            "batchspawner SlurmSpawner": one(plain, alice, None),
        })
        s_ours, s_plain = res.values()
        print(f"  ours   {s_ours.name:<32} {s_ours.spread()}")
        print(f"  plain  {s_plain.name:<32} {s_plain.spread()}   ratio ours/plain "
              f"{s_ours.median / s_plain.median:.2f} (goal <= 0.8)")
        phases = spawn_phases(ours.log_path.read_text(errors="replace"))
        if phases:
            print("  ours, per phase (median of the rounds, from the hub's log):")
            for name, values in phases.items():
                print(f"    {name:<14} {statistics.median(values):6.3f} s ({min(values):.3f}-{max(values):.3f})")
        ours.stop()
        hubs.remove(ours)

        many = make_hub(work / "hub-many", dx, "xnat-local", staging=staging, extra=MANY)
        hubs.append(many)
        many.login("bob", "bob-demo")
        n = args.concurrent
        print(f"\n{n} simultaneous xnat-local spawns (one user, named servers, bubblewrap each)", flush=True)
        options = {"profile": "local-small", "projects": ["NEURO_MRI"]}
        times, failures, wall = spawn_many(many, "bob", n, options)
        print(f"  ready: {len(times)}/{n}, failures: {len(failures)} (goal 0), wall {wall:.1f} s")
        if times:
            print(f"  spawn->ready p50 {pct(times, .5):.1f} s, p95 {pct(times, .95):.1f} s, max {max(times):.1f} s")
        for f in failures[:3]:
            print(f"  failure: {f}")
        if failures:  # the hub's own words on them, before the temp dir goes
            errors = [ln for ln in many.log_path.read_text(errors="replace").splitlines()
                      if " E " in ln[:40] or "Error" in ln or "failed" in ln.lower()]
            print("  the hub's log on it:\n    " + "\n    ".join(errors[-8:]))
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: stop(many, "bob", f"s{i}"), range(n)))
        return 0 if not failures else 1
    finally:
        for hub in hubs:
            hub.stop()
        dx.stop()
        shutil.rmtree(work, ignore_errors=True)
        accounts.remove(names)


if __name__ == "__main__":
    sys.exit(main())
