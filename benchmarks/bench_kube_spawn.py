"""Spawn benchmark on the development Kubernetes: ``xnat-kube`` vs plain kubespawner ``KubeSpawner``.

    python benchmarks/bench_kube_spawn.py [--rounds 5] [--quick] [--keep-logs DIR]

Starts the project's single-node cluster (``xnat-hpc-hub kube up``; stopped again at the end
only when this script started it), builds the researcher's server image from this checkout and
imports it into the node (``tests.fixtures.kube.build_server_image``), then two JupyterHubs
outside the cluster, their APIs on the pods' bridge (10.244.0.1), as the hub's restricted
account (``RUN/hub.kubeconfig``), servers in the namespace ``xnat-hpc``:

* hub A (``tests.fixtures.kube.open_kube_site``): the XNAT authenticator and the ``xnat-kube``
  spawner, profile ``k8s-small`` (1 CPU, 256M, limit 1G) — XNAT permission check, audit,
  the scope's archive folders read-only (``subPath`` of the archive claim), the XNAT token in a
  per-server Secret; user ``alice``, pod ``jupyter-alice``;
* hub B: plain ``kubespawner.KubeSpawner`` (dummy authenticator) with the same image, command,
  account, resources and workspace claim arrangement (``devstack.hubconfig.kube_hub_config``);
  user ``bob``, pod ``jupyter-bob``.

Spawn → ready (``POST /users/{u}/servers/`` until ``GET /users/{u}`` says ready, polled every
0.1 s) on each hub, one warm-up each (not counted), then ``--rounds`` rounds, the order rotated
every round (``benchlib.alternate``). Each server is stopped and its pod gone before the next
spawn: one pod requesting a CPU fits on the 2-core node at a time. Prints every round, the
medians, the spread (min–max) and the ratio ours / plain (goal ≤ 1.2). ``--quick``: one round,
a check that it runs (no goal verdict).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.benchlib import Stats, alternate, machine  # noqa: E402
from devstack import kube  # noqa: E402
from devstack.demo import prepare_staging_root  # noqa: E402
from devstack.hubconfig import kube_hub_config  # noqa: E402
from tests.fixtures import accounts  # noqa: E402
from tests.fixtures.devxnat import PASSWORDS  # noqa: E402
from tests.fixtures.hub import start_hub  # noqa: E402
from tests.fixtures.kube import KubeCluster, build_server_image, open_kube_site  # noqa: E402
from tests.fixtures.spawn import stop_server  # noqa: E402

OURS, PLAIN = "xnat-kube", "KubeSpawner"
OURS_USER, PLAIN_USER = "alice", "bob"
OURS_OPTIONS = {"profile": "k8s-small", "projects": ["NEURO_MRI"]}
GOAL = 1.2

#: hub B: what differs from kube_hub_config (appended to it); the timeouts and polling as
#: tests.fixtures.spawn.HUB_TIMEOUTS and open_kube_site give hub A
PLAIN_CONFIG = """
c.JupyterHub.authenticator_class = "dummy"
c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
c.KubeSpawner.image = "{image}"
c.KubeSpawner.cpu_guarantee = 1
c.KubeSpawner.mem_guarantee = "256M"
c.KubeSpawner.mem_limit = "1G"
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 90
c.Spawner.http_timeout = 60
c.Spawner.poll_interval = 2
"""


def plain_hub_config(image: str, cfg: kube.KubeDevConfig, workspaces: Path) -> str:
    """Hub B's settings: the same pod arrangement as hub A's (namespace, image, command, the
    user's Unix account as uid/gid, no service account token, the workspace claim at the same
    path), without the archive and the Slurm client (XNAT and offload features)."""
    account = accounts.unix_entry(PLAIN_USER)
    shared = kube_hub_config(namespace=kube.HUB_NAMESPACE, hub_ip=cfg.node_ip, uid=account.pw_uid,
                             gid=account.pw_gid, workspace_path=f"{workspaces}/{{username}}",
                             unix_accounts=True)  # HOME the workspace; the c.XnatKubeSpawner lines go
    shared = "".join(line for line in shared.splitlines(keepends=True) if not line.startswith("c.XnatKubeSpawner."))
    return shared + PLAIN_CONFIG.format(image=image)


def spawn_ready(hub, user: str, options: dict, timeout: float = 180) -> float:
    """Seconds from ``POST /users/{user}/servers/`` until ``GET /users/{user}`` lists it ready."""
    t0 = time.perf_counter()
    r = hub.api("POST", f"/users/{user}/servers/", json=options, timeout=timeout)
    if r.status_code not in (201, 202):
        raise RuntimeError(f"spawn {user}: {r.status_code} {r.text[:300]}\n{hub.log()[-3000:]}")
    while True:
        srv = hub.api("GET", f"/users/{user}").json()["servers"].get("")
        if srv and srv.get("ready"):
            return time.perf_counter() - t0
        if srv is None:
            raise RuntimeError(f"spawn {user} failed:\n{hub.log()[-3000:]}")
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"spawn {user}: not ready after {timeout:.0f} s:\n{hub.log()[-3000:]}")
        time.sleep(0.1)


def stop_and_wait(site, hub, user: str, timeout: float = 120) -> None:
    """Stop *user*'s server and wait until its pod is gone from the cluster too."""
    stop_server(hub, user, "", timeout=timeout)
    pod, deadline = f"jupyter-{user}", time.monotonic() + timeout
    while site.pod(pod) is not None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"pod {pod} still there {timeout:.0f} s after its server stopped")
        time.sleep(0.2)


def cluster_running() -> bool:
    r = subprocess.run([sys.executable, "-m", "hub_ext.cli", "kube", "status"], capture_output=True, text=True)
    return r.returncode == 0


def kube_cli(action: str, timeout: float) -> None:
    r = subprocess.run([sys.executable, "-m", "hub_ext.cli", "kube", action], capture_output=True, text=True,
                       timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"xnat-hpc-hub kube {action} exited {r.returncode}:\n{r.stdout}{r.stderr}")


def report(stats: dict[str, Stats], rounds: int, quick: bool) -> None:
    ours, plain = stats[OURS], stats[PLAIN]
    print(f"\n{'spawn -> ready (s)':20s} {OURS:>14s} {PLAIN:>14s}")
    for i in range(rounds):
        print(f"{'  round ' + str(i + 1):20s} {ours.seconds[i]:14.2f} {plain.seconds[i]:14.2f}")
    print(f"{'median':20s} {ours.median:14.2f} {plain.median:14.2f}")
    spread = [f"{min(st.seconds):.2f}-{max(st.seconds):.2f}" for st in (ours, plain)]
    print(f"{'spread (min-max)':20s} {spread[0]:>14s} {spread[1]:>14s}")
    r = ours.median / plain.median
    if quick:
        print(f"ratio {OURS} / {PLAIN}: {r:.2f} (--quick: one round, no verdict)")
    else:
        print(f"ratio {OURS} / {PLAIN}: {r:.2f} (goal <= {GOAL}: {'met' if r <= GOAL else 'NOT met'})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="one round: checks that it runs, no verdict")
    ap.add_argument("--keep-logs", type=Path, metavar="DIR",
                    help="copy both hubs' logs into DIR before the temp dir is removed")
    args = ap.parse_args()
    rounds = 1 if args.quick else args.rounds

    started_cluster = not cluster_running()
    kube_cli("up", timeout=600)
    cfg = kube.KubeDevConfig()
    cluster = KubeCluster(cfg.run_dir, cfg.admin_kubeconfig, cfg.bin_dir / "kubectl")
    # throwaway accounts (x<3 hex>-alice, ...; removed at the end): never the demo users'
    names = accounts.create([OURS_USER, PLAIN_USER])
    work = Path(tempfile.mkdtemp(prefix="xnat-hpc-bench-kube-", dir="/var/tmp"))
    os.chmod(work, 0o755)
    try:
        staging = work / "staging"
        prepare_staging_root(staging)  # root's 0755: the hub makes each user's directory
        (work / "wheel").mkdir()
        t = time.perf_counter()
        image = build_server_image(work / "wheel")
        print(f"server image {image} built and imported in {time.perf_counter() - t:.0f} s", flush=True)
        with open_kube_site(cluster, image, work, staging, work / "hub-ours") as site:
            plain = None
            try:
                site.workspace(OURS_USER)
                site.workspace(PLAIN_USER)
                plain = start_hub(work / "hub-plain", plain_hub_config(image, cfg, site.workspaces),
                                  env={"KUBECONFIG": str(cfg.kubeconfig("hub"))})
                ours = site.hub
                _, r = ours.login(OURS_USER, PASSWORDS[OURS_USER])
                if r.status_code != 302:
                    raise RuntimeError(f"login of {OURS_USER} on hub A: {r.status_code}")
                r = plain.api("POST", f"/users/{PLAIN_USER}")
                if r.status_code != 201:
                    raise RuntimeError(f"creating {PLAIN_USER} on hub B: {r.status_code} {r.text[:300]}")

                print(f"spawn -> ready on the development Kubernetes ({machine()}), {rounds} round(s) "
                      f"(+1 warm-up each), alternating", flush=True)
                hubs = {OURS: (ours, OURS_USER, OURS_OPTIONS), PLAIN: (plain, PLAIN_USER, {})}
                done = {OURS: 0, PLAIN: 0}

                def after(name: str, seconds: float) -> None:
                    hub, user, _ = hubs[name]
                    label = "warm-up" if done[name] == 0 else f"round {done[name]}"
                    done[name] += 1
                    print(f"  {label:8s} {name:12s} {seconds:6.2f} s", flush=True)
                    stop_and_wait(site, hub, user)

                stats = alternate(rounds, {name: (lambda h=h, u=u, o=o: spawn_ready(h, u, o))
                                           for name, (h, u, o) in hubs.items()}, after=after, warmup=1)
                report(stats, rounds, args.quick)
            finally:
                if args.keep_logs:
                    args.keep_logs.mkdir(parents=True, exist_ok=True)
                    for name in ("hub-ours", "hub-plain"):
                        log = work / name / "jupyterhub.log"
                        if log.exists():
                            shutil.copy(log, args.keep_logs / f"{name}.log")
                if plain is not None:
                    plain.stop()
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)
        accounts.remove(names)
        if started_cluster:
            kube_cli("down", timeout=300)


if __name__ == "__main__":
    sys.exit(main())
