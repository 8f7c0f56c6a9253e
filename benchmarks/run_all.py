"""Run the benchmark scripts in this folder (``make bench``), one after the other.

    python benchmarks/run_all.py            # every bench_*.py with its defaults (the issues' sizes)
    python benchmarks/run_all.py --quick    # small sizes, one round: checks that each script runs
    python benchmarks/run_all.py bench_staging bench_datasets   # only these

The defaults are the sizes the figures are quoted at (dataset creation of 10,000 files,
staging 1 GB and 5 GB, ...) and take a while; run them on a quiet machine. Each script
starts what it needs (devxnat; the local Slurm or the development Kubernetes where it needs
one) and removes its temp dir.
Exits 1 when a script failed (the others still run).
"""

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: --quick: arguments that make each script a smoke run (seconds, not minutes)
QUICK = {
    "bench_audit.py": ["--rounds", "1", "--servers", "4", "--posts", "5", "--batch", "5", "--events", "2000",
                       "--hub-events", "20"],
    "bench_bridge.py": ["--download-size", "20MB", "--rounds", "1"],
    "bench_datasets.py": ["--files", "200", "--experiments", "4", "--rounds", "1", "--warmup", "0"],
    "bench_kube_spawn.py": ["--quick"],
    "bench_offload.py": ["--rounds", "1", "--decrypt-size", "20MB"],
    "bench_plugin_api.py": ["--rounds", "1", "--polls", "20", "--starts", "2"],
    "bench_publish.py": ["--size", "20MB", "--files", "20", "--rounds", "1", "--warmup", "0"],
    "bench_spawn.py": ["--rounds", "1", "--concurrent", "3"],
    "bench_staging.py": ["--size", "20MB", "--files", "200", "--rounds", "1", "--warmup", "0",
                         "--rss-size", "60MB"],
}

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, one round (a smoke run; make test)")
    ap.add_argument("names", nargs="*", help="scripts to run (default: every bench_*.py)")
    args = ap.parse_args()

    scripts = sorted(HERE.glob("bench_*.py"))
    if args.names:
        wanted = {n if n.endswith(".py") else n + ".py" for n in args.names}
        unknown = wanted - {s.name for s in scripts}
        if unknown:
            sys.exit(f"no such benchmark: {', '.join(sorted(unknown))}")
        scripts = [s for s in scripts if s.name in wanted]

    failed = []
    for script in scripts:
        extra = QUICK.get(script.name, []) if args.quick else []
        print(f"\n== {script.name} {' '.join(extra)} ==", flush=True)
        if subprocess.run([sys.executable, str(script), *extra]).returncode != 0:
            failed.append(script.name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
