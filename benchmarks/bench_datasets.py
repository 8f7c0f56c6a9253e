"""Dataset creation (xnat_bridge) side by side with listing the same files with ``curl``.

    python benchmarks/bench_datasets.py [--files 10000] [--experiments 100] [--rounds 5]

Builds a throw-away devxnat data directory in a temp dir (``$TMPDIR`` or /tmp, never the
repo; ``HOME`` points there too, so nothing lands in yours) with one project of ``--files`` small random files (1 KiB each, ``--experiments``
sessions, scans of 50 files), starts devxnat on a free port of 127.0.0.1, and measures in
one run, ours and plain alternated (the order rotates every round):

* ours: ``Connection.create_dataset(name, [{"project": P}])`` — the manifest of every file
  (URI, archive path, size, XNAT's digest) saved as a new dataset version, with a fresh
  connection, workspace and cache directory each round (a first creation: nothing cached);
* plain: what a person does by hand with XNAT's REST API — log in once (``/data/JSESSION``,
  then the session cookie), ``curl`` the project's session list, then ``curl --parallel``
  every session's file listing (``/data/projects/P/experiments/E/scans/ALL/files?format=json``)
  into files.

``--warmup`` untimed rounds of each come first (imports, connection pools, page cache).

Prints the median and the spread (min–max) of ``--rounds`` rounds of each, and the ratio
plain/ours of the medians (> 1: ours is faster). Goal (issue 11): ours < 2 s for 10,000
files. Removes its temp dir at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import BENCH_PASSWORD, BENCH_USER, DevXnat, alternate, build_project, curl_config, machine, ratio

PROJECT = "FILES"
FILE_SIZE = 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=10000, help="files in the dataset (10000)")
    ap.add_argument("--experiments", type=int, default=100, help="sessions they are spread over (100)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of each, alternated (5)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds of each first (1)")
    ap.add_argument("--curl-parallel", type=int, default=8, help="curl --parallel-max (8)")
    args = ap.parse_args()
    if not shutil.which("curl"):
        sys.exit("curl not found (Debian package: curl)")

    import xnat_bridge
    from xnat_bridge.audit import MemorySink
    from xnat_bridge.scope import Scope

    work = Path(tempfile.mkdtemp(prefix="bench-datasets-"))
    os.environ["HOME"] = str(work / "home")  # nothing of a run lands in your home
    server = None
    try:
        t = time.perf_counter()
        labels = build_project(work / "data", PROJECT, files=args.files, total=args.files * FILE_SIZE,
                               experiments=args.experiments)
        server = DevXnat(work / "data", work / "devxnat.log")
        url = server.url
        print(f"setup: {args.files} files of {FILE_SIZE} B in {len(labels)} sessions "
              f"({time.perf_counter() - t:.1f} s); {machine()}")

        counter = iter(range(10**9))
        found: list[int] = []

        def ours() -> dict:
            r = next(counter)
            conn = xnat_bridge.connect(url, BENCH_USER, BENCH_PASSWORD, workspace=work / f"ws{r}",
                                       sink=MemorySink(), ttl=60, data_root="",
                                       scope=Scope.unrestricted())
            try:
                t = time.perf_counter()
                m = conn.create_dataset(f"bench {r}", [{"project": PROJECT}])
                took = time.perf_counter() - t
            finally:
                conn.close()
            found.append(len(m.files))
            return {"seconds": took, "files": len(m.files)}

        login = curl_config(work / "login.cfg")

        def plain() -> float:
            r = next(counter)
            out, jar = work / f"curl{r}", work / f"jar{r}"
            out.mkdir()
            t = time.perf_counter()
            # one login (XNAT's JSESSION), then the session cookie, as XNAT's docs advise for scripts
            subprocess.run(["curl", "-sf", "-K", str(login), "-c", str(jar), "-o", "/dev/null",
                            f"{url}/data/JSESSION"], check=True)
            body = subprocess.run(["curl", "-sf", "-b", str(jar),
                                   f"{url}/data/projects/{PROJECT}/experiments?format=json&columns=ID,label"],
                                  check=True, capture_output=True).stdout
            rows = json.loads(body)["ResultSet"]["Result"]
            cfg = work / f"files{r}.cfg"
            cfg.write_text("".join(
                f'url = "{url}/data/projects/{PROJECT}/experiments/{row["label"]}/scans/ALL/files?format=json"\n'
                f'output = "{out}/{i}.json"\n' for i, row in enumerate(rows)))
            subprocess.run(["curl", "-sf", "--no-progress-meter", "-b", str(jar), "--parallel",
                            "--parallel-max", str(args.curl_parallel), "-K", str(cfg)], check=True)
            took = time.perf_counter() - t
            listed = sum(len(json.loads(p.read_bytes())["ResultSet"]["Result"]) for p in out.iterdir())
            if listed != args.files:
                sys.exit(f"curl listed {listed} files, expected {args.files}")
            return took

        def cleanup(name, _result) -> None:
            for pattern in ("ws*", "cache*", "curl*", "jar*", "files*.cfg"):
                for p in work.glob(pattern):
                    shutil.rmtree(p) if p.is_dir() else p.unlink()

        stats = alternate(args.rounds, {"ours": ours, "curl": plain}, after=cleanup, warmup=args.warmup)
        if any(n != args.files for n in found):
            sys.exit(f"create_dataset found {sorted(set(found))} files, expected {args.files}")
        o, c = stats["ours"], stats["curl"]
        print(f"dataset of {args.files} files, median (min–max) of {args.rounds} alternated rounds:")
        print(f"  ours  create_dataset            {o.spread()}   goal < 2 s "
              f"{'(met)' if o.median < 2 else '(NOT met)'}")
        print(f"  plain curl listings (parallel {args.curl_parallel}) {c.spread()}")
        print(f"  ratio curl/ours = {ratio(c, o):.2f} (> 1: ours is faster)")
    finally:
        if server:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
