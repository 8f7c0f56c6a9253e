"""Secure offload (xnat_bridge.offload) side by side with plain Slurm and plain age.

    python benchmarks/bench_offload.py [--rounds 5] [--decrypt-size 200MB]

Needs the local Slurm (``xnat-hpc-hub slurm up``); starts its own devxnat
(3 MB demo archive) in a temp dir. Measures in one run:

1. submit → RUNNING: ``OffloadManager.submit`` until the job is RUNNING (the
   worker is up on the secure partition, connected over TLS, and has claimed
   the dataset key), round 1 with staging, later rounds reusing the bundle;
   vs ``sbatch --wrap 'sleep 60'`` until squeue says RUNNING, same partition,
   same run. Both non-exclusive, and both start on an idle node (no job in the
   partition for 3 s: Slurm starts a job submitted right after another ended
   only at its next scheduling pass, 1-3 s later, whoever submits it).
   Ours' time is broken down by phase (:mod:`xnat_bridge.offload.phases`: checks,
   staging, scheduler, sbatch, Slurm's start, the worker's start, the key claim).
2. decrypt on the worker: ``extract_bundle`` as the worker calls it (against the digests
   the server staged: every size and sha256, O_NOFOLLOW writes) vs
   ``age -d -i KEY bundle | tar -x`` on the same bundle (random files).

Each section alternates the sides (the order rotates every round) and prints the
median, the spread (min–max) and the ratio. Removes its temp dir at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import alternate, machine, parse_size, ratio, timed_shell


def slurm_running(job_id: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                         check=False).stdout
    return out.strip() == "RUNNING"


SETTLE_S = 3.0


def wait_idle(timeout: float = 60) -> None:
    """Until no job is left on the secure partition, plus SETTLE_S: right after a job ends,
    slurmctld starts the next one only at its next scheduling pass (1-3 s here, for plain
    ``sbatch`` as much as for ours), so each measurement starts on an idle node."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-p", "secure", "-o", "%i"], capture_output=True, text=True,
                             check=False).stdout
        if not out.strip():
            break
        time.sleep(0.1)
    time.sleep(SETTLE_S)


def plain_sbatch_latency(work: Path) -> float:
    wait_idle()
    t0 = time.perf_counter()
    out = subprocess.run(["sbatch", "--parsable", "--partition=secure", "--mem=512M", "-o", str(work / "p.out"),
                          "--wrap", "sleep 60"], capture_output=True, text=True, check=True).stdout
    job = out.strip().split(";")[0]
    try:
        while not slurm_running(job):
            time.sleep(0.02)
        return time.perf_counter() - t0
    finally:
        subprocess.run(["scancel", job], check=False)


def offload_latency(manager, script: str) -> dict:
    from xnat_bridge.offload import JobState

    wait_idle()
    t0 = time.perf_counter()
    rec = manager.submit("bench", script, mem="512M")
    while True:
        now = manager.get(rec.id)
        if now.state == JobState.RUNNING:
            dt = time.perf_counter() - t0
            break
        if now.state.terminal:
            raise SystemExit(f"offload job ended {now.state.value}: {now.message}")
        time.sleep(0.02)
    manager.cancel(rec.id)
    manager.wait(rec.id, timeout=60)
    return {"seconds": dt, "phases": now.phases}


def make_bundle(work: Path, size: int, nfiles: int = 50):
    """A bundle of *nfiles* random files as a job's staging makes it; its identity."""
    import hashlib

    from xnat_bridge.staging import AgeIdentity, StagedFile, stage_files

    src = work / "src"
    src.mkdir()
    files = []
    per = size // nfiles
    for i in range(nfiles):
        data = os.urandom(per)
        p = src / f"f{i:03d}.bin"
        p.write_bytes(data)
        files.append(StagedFile(f"d/f{i:03d}.bin", per, hashlib.sha256(data).hexdigest(),
                                lambda p=p: open(p, "rb"), md5=hashlib.md5(data).hexdigest()))  # noqa: SIM115
    ident = AgeIdentity.generate()
    stage = work / "staging-decrypt"
    stage.mkdir()
    info = stage_files(files, staging_dir=stage, user="bench", recipient=ident.recipient)
    shutil.rmtree(src)
    subprocess.run(["cat", str(info.path)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
    return info, ident


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="alternated rounds of each side (5)")
    ap.add_argument("--decrypt-size", type=parse_size, default=parse_size("200MB"),
                    help="the bundle decrypted on the worker (200MB)")
    args = ap.parse_args()

    import xnat_bridge
    from devstack.demo import start_devxnat
    from xnat_bridge.audit import MemorySink
    from xnat_bridge.offload import OffloadManager, OffloadPolicy
    from xnat_bridge.offload.phases import PHASES
    from xnat_bridge.scope import Scope
    from xnat_bridge.staging import extract_bundle

    # not under /tmp: the development Slurm gives every job a private /tmp (job_container/tmpfs),
    # and the job must see this directory's staging area and node base
    work = Path(tempfile.mkdtemp(prefix="bench-offload-", dir="/var/tmp"))
    proc = None
    try:
        proc, url = start_devxnat(work / "xnat", 0, "3MB", work / "xnat.log")
        conn = xnat_bridge.connect(url, "alice", "alice-demo", workspace=work / "ws", data_root="",
                                   sink=MemorySink(), scope=Scope.unrestricted())
        conn.create_dataset("bench", [{"project": "NEURO_MRI"}])
        (work / "staging").mkdir()
        (work / "ws" / "sleep.py").write_text("import time\nprint('up', flush=True)\ntime.sleep(60)\n")
        os.environ["XNAT_HPC_NODE_TMPDIR"] = str(work / "node")
        (work / "node").mkdir(mode=0o700)
        m = OffloadManager(conn, workspace=work / "ws", sink=MemorySink(),
                           policy=OffloadPolicy(staging_dir=str(work / "staging"), exclusive=False))
        print(f"{machine()}; {args.rounds} rounds, alternated")
        try:
            start = alternate(args.rounds, {
                "OffloadManager.submit -> RUNNING": lambda: offload_latency(m, "sleep.py"),
                "sbatch --wrap -> RUNNING": lambda: plain_sbatch_latency(work),
            })
        finally:
            m.close()
            conn.close()
        ours, plain = start.values()
        print("submit -> RUNNING (ours: the worker on the node holds the dataset key):")
        print(f"  ours   {ours.name:<36} {ours.spread()}")
        print(f"  plain  {plain.name:<36} {plain.spread()}   ratio ours/plain {ours.median / plain.median:.2f}x "
              "(goal <= 2)")
        print("  ours, per phase (median of the rounds; the first round also staged):")
        for phase in PHASES:
            values = [f["phases"][phase] for f in ours.facts if phase in f["phases"]]
            if values:
                print(f"    {phase:<14} {statistics.median(values):6.3f} s ({min(values):.3f}-{max(values):.3f})")

        info, ident = make_bundle(work, args.decrypt_size)
        key = work / "key.txt"  # a throw-away key for random data, for the age CLI only
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, (ident.secret() + "\n").encode())
        os.close(fd)

        def ours_extract() -> float:
            t = time.perf_counter()  # as the worker does: against the digests the server staged
            extract_bundle(info.path, ident, work / "ours", info.manifest_sha256,
                           expected_contents_sha256=info.contents_sha256)
            return time.perf_counter() - t

        def plain_extract() -> float:
            (work / "plain").mkdir()
            return timed_shell('age -d -i "$KEY" "$BUNDLE" | tar -x -C "$DEST"', KEY=str(key),
                               BUNDLE=str(info.path), DEST=str(work / "plain"))

        def clean(name: str, result) -> None:
            shutil.rmtree(work / "ours", ignore_errors=True)
            shutil.rmtree(work / "plain", ignore_errors=True)

        dec = alternate(args.rounds, {"extract_bundle": ours_extract, "age -d | tar -x": plain_extract},
                        after=clean, warmup=1)
        d_ours, d_plain = dec.values()
        mb = args.decrypt_size / 1e6
        print(f"decrypt + verify + extract {mb:.0f} MB on the worker:")
        print(f"  ours   {d_ours.name:<36} {d_ours.rate(mb)}")
        print(f"  plain  {d_plain.name:<36} {d_plain.rate(mb)}   ratio ours/plain {ratio(d_plain, d_ours):.2f} "
              "(goal >= 0.95)")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
