"""Benchmarks of devxnat and xnat_bridge, side by side with plain tools.

    python benchmarks/bench_bridge.py [--download-size 1GB] [--rounds 5]

Builds a throw-away devxnat data directory in a temp dir (nothing in the repo),
starts devxnat on a free port of 127.0.0.1, and measures in one run (ours and
plain alternated, medians and spread (min–max) of ``--rounds`` rounds):

1. devxnat latency of a 1,000-experiment project listing (ours vs the same
   request through ``curl``);
2. permission lookup for a user in 1,000 projects: cold (asks XNAT) and warm
   (cached), goal < 300 ms / < 5 ms;
3. the researcher's explicit download (``Connection.download(ds, DIR)``, REST
   streams verified against size and XNAT's md5, sha256 computed, 4 workers)
   of ~1 GB in 5 MB files vs ``curl --parallel`` (4) of the same URLs; prints
   the ratio curl_time / ours_time (goal ≥ 0.9).

Dataset creation (the manifest of 10,000 files) is measured by
``bench_datasets.py``, staging by ``bench_staging.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchlib import alternate  # noqa: E402
from devxnat import open_data_dir  # noqa: E402
from devxnat.archive import resource_dir  # noqa: E402
from devxnat.demo import parse_size  # noqa: E402


def build(data: Path, download_bytes: int) -> None:
    st, archive = open_data_dir(data)
    st.add_user("bench", "bench-pass")
    with st.tx() as db:
        for i in range(1000):
            pid = f"P{i:04d}"
            db.execute("INSERT INTO projects(id, name, insert_date) VALUES (?,?,?)", (pid, pid, "2026-01-01"))
            db.execute("INSERT INTO members VALUES (?,?,?)", (pid, "bench", "Members"))
    # one project with 1,000 experiments (listing latency)
    st.add_project("BIG", "1000 experiments")
    st.set_member("BIG", "bench", "Owners")
    sid = st.add_subject("BIG", "BIG_S1")
    for i in range(1000):
        st.add_experiment("BIG", sid, f"BIG_E{i:04d}", "xnat:mrSessionData", date="2025-01-01")
    # ~download_bytes in 5 MB files (download)
    for pid, count, size in (("DL", max(1, download_bytes // (5 << 20)), 5 << 20),):
        st.add_project(pid, pid)
        st.set_member(pid, "bench", "Members")
        sub = st.add_subject(pid, f"{pid}_S1")
        per_exp = 100
        for e in range(0, count, per_exp):
            label = f"{pid}_E{e // per_exp:04d}"
            eid = st.add_experiment(pid, sub, label, "xnat:mrSessionData")
            st.add_scan(eid, "1", "xnat:mrScanData", type="T1w")
            d = resource_dir(archive, pid, label, "1", "RAW")
            d.mkdir(parents=True)
            entries = []
            for k in range(min(per_exp, count - e)):
                blob = os.urandom(size)
                (d / f"f{k:03d}.bin").write_bytes(blob)
                entries.append((f"f{k:03d}.bin", size, hashlib.md5(blob).hexdigest()))
            st.add_resource(eid, "1", "RAW", files=entries)
    st.close()


def start(data: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "devxnat", "--data", str(data),
                             "--port", "0", "--log-level", "WARNING"], stdout=subprocess.PIPE, cwd=REPO)
    line = proc.stdout.readline().decode()
    url = line.split("listening on ", 1)[1].split()[0]
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return proc, url


def best_of(fn, n=5) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--download-size", default="1GB")
    ap.add_argument("--rounds", type=int, default=5, help="alternated rounds of ours and curl (5)")
    args = ap.parse_args()
    import xnat_bridge
    from xnat_bridge.audit import MemorySink
    from xnat_bridge.client import XnatClient
    from xnat_bridge.permissions import fetch_permissions
    from xnat_bridge.scope import Scope

    tmp = Path(tempfile.mkdtemp(prefix="xnat-hpc-bench-"))
    try:
        t = time.perf_counter()
        build(tmp / "data", parse_size(args.download_size))
        print(f"setup: {time.perf_counter() - t:.1f} s")
        proc, url = start(tmp / "data")
        try:
            client = XnatClient(url, "bench", "bench-pass")
            alias = client.get_json("/data/services/tokens/issue")
            auth = f"{alias['alias']}:{alias['secret']}"

            # 1. listing latency (curl with the alias token from a 0600 config, not the command line)
            auth_cfg = tmp / "auth.cfg"
            with open(os.open(auth_cfg, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
                f.write(f'user = "{auth}"\n')
            listing = alternate(max(args.rounds, 5), {
                "ours": lambda: timed(lambda: client.result("/data/projects/BIG/experiments")),
                "curl": lambda: timed(lambda: subprocess.run(
                    ["curl", "-sf", "-K", str(auth_cfg), "-o", "/dev/null",
                     f"{url}/data/projects/BIG/experiments?format=json"], check=True)),
            }, warmup=1)
            print(f"1,000-experiment listing: bridge {listing['ours'].spread('ms')}, "
                  f"curl {listing['curl'].spread('ms')} (curl includes process start)")

            # 2. permissions
            cold = best_of(lambda: fetch_permissions(client))
            from xnat_bridge.permissions import PermissionCache

            cache = PermissionCache(60)
            cache.get(client)
            warm = best_of(lambda: cache.get(client), 1000)
            n = len(fetch_permissions(client).roles)
            print(f"permissions, user in {n} projects: cold {cold * 1000:.1f} ms (goal < 300), "
                  f"warm {warm * 1e6:.1f} µs (goal < 5 ms)")

            conn = xnat_bridge.connect(url, alias["alias"], alias["secret"], sink=MemorySink(),
                                       workspace=tmp / "ws", scope=Scope.unrestricted(), data_root="")
            # 3. explicit download vs curl
            dl = conn.resolve("bench dl", [{"project": "DL"}])
            cfg = tmp / "curl.cfg"
            out = tmp / "out"
            with open(os.open(cfg, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
                f.write(f'user = "{auth}"\n')
                for i, mf in enumerate(dl.files):
                    f.write(f'url = "{url}{mf.uri}"\noutput = "{out}/{i}.bin"\n')

            def curl_download() -> float:
                out.mkdir()
                return timed(lambda: subprocess.run(["curl", "-sf", "--no-progress-meter", "--parallel",
                                                     "--parallel-max", "4", "-K", str(cfg)], check=True))

            dl_stats = alternate(args.rounds, {
                "ours": lambda: timed(lambda: conn.download(dl, out, workers=4, progress=False, check=False)),
                "curl": curl_download,
            }, after=lambda name, result: shutil.rmtree(out, ignore_errors=True), warmup=1)
            mb = dl.total_size / 1e6
            o, c = dl_stats["ours"], dl_stats["curl"]
            print(f"api download {mb:.0f} MB in {len(dl.files)} files: bridge {o.rate(mb)} "
                  f"(verified, atomic); curl --parallel {c.rate(mb)}; "
                  f"ratio bridge/curl throughput = {c.median / o.median:.2f} (goal ≥ 0.9)")
            conn.close()
            client.close()
        finally:
            proc.terminate()
            proc.wait(10)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
