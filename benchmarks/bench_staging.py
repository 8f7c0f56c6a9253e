"""Encrypted staging bundles (xnat_bridge.staging) side by side with plain tar + age.

    python benchmarks/bench_staging.py [--size 1GB] [--files 200]

Writes random files in a temp dir (``$TMPDIR`` or /tmp, never the repo) and
measures in one run, page cache warm for both sides:

1. staging: ``stage_files`` (hashes and verifies every file, fsyncs the bundle
   before its atomic rename) vs ``tar -cf - DIR | age -r RECIPIENT > out``,
   timed without and with ``sync out`` (the same durability as ours), and
   vs ``cp -r DIR DEST; sync`` (a plain durable copy of the same files);
2. unstaging: ``extract_bundle`` (verifies sizes and sha256 against the
   manifest, O_NOFOLLOW writes) vs ``age -d -i KEY bundle | tar -x``, on the
   same bundle.

Ours runs in a child process so that its peak RSS (VmHWM) is its own.
Prints MB/s (MB = 10**6 bytes of file data) and the ratio ours/plain of
throughputs (> 1: ours is faster); each figure is the best of ``--repeat``
runs (default 3: the machine may be shared). Removes its temp dir at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: use e.g. 1GB, 500MB or 2GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def proc_status(key: str) -> int:
    """A /proc/self/status value in MB (VmHWM = peak RSS, VmRSS = now)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) // 1024
    return -1


# --------------------------------------------------------------------------- child (ours)


def child(mode: str, work: Path) -> None:
    from xnat_bridge import staging

    base = proc_status("VmRSS")
    if mode == "stage":
        entries = json.loads((work / "files.json").read_text())
        files = [staging.StagedFile(e["name"], e["size"], e["sha256"],
                                    (lambda p=work / "src" / e["name"]: open(p, "rb", buffering=0)))
                 for e in entries]
        recipient = (work / "recipient.txt").read_text().strip()
        t = time.perf_counter()
        info = staging.stage_files(files, staging_dir=work / "staging", user="bench",
                                   recipient=recipient)
        took = time.perf_counter() - t
        result = {"path": str(info.path), "size": info.size}
    else:
        identity = sys.stdin.read().strip()  # from the parent, never via argv
        t = time.perf_counter()
        manifest = staging.extract_bundle(sys.argv[sys.argv.index("--bundle") + 1], identity,
                                          work / "x-ours")
        took = time.perf_counter() - t
        result = {"files": manifest["file_count"]}
    result.update(seconds=took, rss_base_mb=base, peak_rss_mb=proc_status("VmHWM"))
    print(json.dumps(result))


def run_child(mode: str, work: Path, *extra: str, stdin: str | None = None) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--work", str(work), *extra],
                         input=stdin, capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        sys.exit(f"{mode} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- parent


def make_files(src: Path, total: int, count: int) -> list[dict]:
    entries = []
    per = total // count
    block = 1 << 20
    for i in range(count):
        name = f"S{i // 50:02d}/E{i // 10:03d}/scan_{i:04d}.nii"
        path = src / name
        path.parent.mkdir(parents=True, exist_ok=True)
        size = per + (total - per * count if i == count - 1 else 0)
        digest = hashlib.sha256()
        with open(path, "wb") as f:
            left = size
            while left:
                chunk = os.urandom(min(block, left))
                digest.update(chunk)
                f.write(chunk)
                left -= len(chunk)
        entries.append({"name": name, "size": size, "sha256": digest.hexdigest()})
    return entries


def timed_shell(script: str, **env: str) -> float:
    os.sync()
    t = time.perf_counter()
    subprocess.run(["bash", "-c", "set -euo pipefail; " + script], check=True,
                   env={**os.environ, **env})
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=parse_size, default=parse_size("1GB"), help="total data (1GB)")
    ap.add_argument("--files", type=int, default=200, help="number of files (200)")
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs of each (3)")
    ap.add_argument("--child", choices=["stage", "extract"], help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--bundle", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.work)
        return
    for tool in ("age", "age-keygen", "tar"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found (Debian packages: age, tar)")

    from xnat_bridge import staging

    work = Path(tempfile.mkdtemp(prefix="bench-staging-"))
    try:
        os.chmod(work, 0o700)
        (work / "staging").mkdir()
        t = time.perf_counter()
        entries = make_files(work / "src", args.size, args.files)
        (work / "files.json").write_text(json.dumps(entries))
        identity, recipient = staging.generate_keypair()
        (work / "recipient.txt").write_text(recipient)
        key = work / "key.txt"  # for the age CLI only; removed with the temp dir
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(identity + "\n")
        subprocess.run(["bash", "-c", f"cat {work}/src/*/*/* > /dev/null"], check=True)  # warm cache
        mb = args.size / 1e6
        print(f"setup: {args.files} files, {mb:.0f} MB in {work} ({time.perf_counter() - t:.1f} s); "
              f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}")

        # 1. staging
        plain_out = work / "plain.tar.age"
        env = {"SRC": str(work / "src"), "OUT": str(plain_out), "RCPT": recipient,
               "DEST": str(work / "cp")}
        runs, plain, plain_sync, cp = [], [], [], []
        for _ in range(args.repeat):
            os.sync()
            runs.append(run_child("stage", work))
            plain.append(timed_shell('tar -cf - -C "$SRC" . | age -r "$RCPT" > "$OUT"', **env))
            plain_out.unlink()
            plain_sync.append(timed_shell('tar -cf - -C "$SRC" . | age -r "$RCPT" > "$OUT"; '
                                          'sync "$OUT"', **env))
            plain_out.unlink()
            cp.append(timed_shell('cp -r "$SRC" "$DEST"; sync', **env))
            shutil.rmtree(work / "cp")
        ours = min(runs, key=lambda r: r["seconds"])
        plain, plain_sync, cp = min(plain), min(plain_sync), min(cp)
        for r in runs:
            if r is not ours:
                os.unlink(r["path"])
        bundle = ours["path"]
        s = ours["seconds"]
        print(f"stage   : ours {mb / s:7.0f} MB/s ({s:.2f} s, verified + fsync)  |  "
              f"tar | age {mb / plain:7.0f} MB/s ({plain:.2f} s), + sync {mb / plain_sync:7.0f} MB/s "
              f"({plain_sync:.2f} s)")
        print(f"          ratio ours/plain = {plain / s:.2f} (vs plain + sync: {plain_sync / s:.2f}); "
              f"peak RSS {ours['peak_rss_mb']} MB (interpreter + imports {ours['rss_base_mb']} MB); "
              f"bundle {ours['size'] / 1e6:.0f} MB")
        print(f"          cp -r + sync {mb / cp:7.0f} MB/s ({cp:.2f} s): ratio ours/cp = {cp / s:.2f} "
              "(goal >= 0.85)")

        # 2. unstaging, same bundle
        xruns, plain_xs = [], []
        for _ in range(args.repeat):
            os.sync()
            xruns.append(run_child("extract", work, "--bundle", bundle, stdin=identity))
            shutil.rmtree(work / "x-ours")
            (work / "x-plain").mkdir()
            plain_xs.append(timed_shell('age -d -i "$KEY" "$BUNDLE" | tar -x -C "$DEST"', KEY=str(key),
                                        BUNDLE=bundle, DEST=str(work / "x-plain")))
            shutil.rmtree(work / "x-plain")
        ours_x = min(xruns, key=lambda r: r["seconds"])
        plain_x = min(plain_xs)
        s = ours_x["seconds"]
        print(f"extract : ours {mb / s:7.0f} MB/s ({s:.2f} s, sha256-verified)  |  "
              f"age -d | tar -x {mb / plain_x:7.0f} MB/s ({plain_x:.2f} s)")
        print(f"          ratio ours/plain = {plain_x / s:.2f}; peak RSS {ours_x['peak_rss_mb']} MB "
              f"(interpreter + imports {ours_x['rss_base_mb']} MB)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
