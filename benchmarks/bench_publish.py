"""Publishing results (issue 22) side by side with xnatpy's own upload of the same files.

    python benchmarks/bench_publish.py [--size 1GB] [--files 100] [--rounds 5] [--warmup 1]

Starts devxnat with the demo archive (3 MB; users ``<user>``/``<user>-demo``) on a free port
of 127.0.0.1 in a temp dir (``$TMPDIR`` or /tmp, never the repo; ``HOME`` points there too),
writes one results directory of ``--files`` random files of ``--size`` together, and
measures in one run, ours and plain alternated (the order flips every round), as ``dave``
(an Owner of CARDIO_ECG) on one CARDIO_ECG session:

* ours: the publish path of :mod:`xnat_bridge.offload.publish` without the hub's round trip —
  ``crate_metadata`` + ``dumps`` and ``ResultsSigner.sign`` (the hub's SSHSIG, its Ed25519 key
  read from its 0600 file each time, as the hub does) over the files' sizes and sha256s as
  the job's decryption recorded them (``provenance.json``; here ``digest_files`` once at setup,
  untimed, as decryption hashes anyway), then ``upload(XnatResourceWriter(…))``: the resource
  ``xnat-hpc-results-{job}`` created, every file streamed (``PUT …?inbody=true``) and hashed as
  it is sent (checked against the crate), the crate, the listing check, the signature last. A
  fresh job id each round. ``--rehash`` adds a separate ``digest_files`` pass to ours (the
  first version's way), to show what hashing on the way saves.
* plain: xnatpy (``xnat.connect``), ``experiment.create_resource(label)`` and
  ``resource.upload_dir(dir, overwrite=True, method="per_file", verbose=False)``: one
  ``PUT …/files/{path}?overwrite=true`` per file, streamed, nothing hashed on the client
  (XNAT computes its md5). Not xnatpy's default method, ``tgz_file``: that gzips the whole
  directory into a temp file (CPU-bound on results that do not compress) and uploads it with
  ``extract=true``, which devxnat does not unpack (it would keep ``upload.tar.gz`` as one
  file), so it would not be the same result. ``verbose=False``: no progress bar (its
  callback runs for every 8 KiB block and it writes to the terminal), the faster plain.

Then, untimed against the ratio, the researcher's check of what was published:
``verify_results`` on a hard-linked copy of the results laid out as downloaded (plus
``ro-crate-metadata.json`` and its ``.sig``; the copy not counted) — the SSHSIG of the crate
and the sha256 of every file — and, alone, ``sshsig.verify`` of the crate bytes.

Prints the median and the spread (min–max) of ``--rounds`` rounds of each, throughput, the
ratio ours/plain of throughput (goal ≥ 0.9), the parts of ours, and signing + verification
as a share of ours' total (goal < 2 %). Every round's XNAT resource is deleted (DELETE as
dave), and the temp dir is removed at the end.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchlib import alternate, machine, parse_size, random_file

PROJECT = "CARDIO_ECG"
USER, PASSWORD = "dave", "dave-demo"  # the demo users' passwords are "<user>-demo"


def write_results(root: Path, files: int, total: int) -> None:
    """*files* random files of *total* bytes together, in two levels (as a job's results)."""
    for n in range(files):
        size = total // files + (total % files if n == files - 1 else 0)
        sub = root / ("model" if n % 2 else "metrics") / f"part{n // 10:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        random_file(sub / f"out{n:04d}.bin", size)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=parse_size, default=parse_size("1GB"),
                    help="the results' total size, e.g. 1GB, 200MB, 2GiB (1GB)")
    ap.add_argument("--files", type=int, default=100, help="files the results are split into (100)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of each, alternated (5)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds of each first (1)")
    ap.add_argument("--rehash", action="store_true",
                    help="ours hashes every file in a separate pass first (the first version's way)")
    args = ap.parse_args()
    if args.files < 1 or args.size < args.files:
        sys.exit("--size must be at least one byte per file (--files)")

    import xnat
    from devstack.demo import start_devxnat
    from hub_ext.results_signer import ResultsSigner
    from xnat_bridge import sshsig
    from xnat_bridge.client import XnatClient
    from xnat_bridge.offload.publish import Target, XnatResourceWriter, resource_path, upload
    from xnat_bridge.results_crate import (METADATA, SIGNATURE, RunRecord, crate_metadata, digest_files,
                                           dumps, verify_results)

    work = Path(tempfile.mkdtemp(prefix="bench-publish-"))
    os.environ["HOME"] = str(work / "home")  # nothing of a run lands in your home
    proc = client = session = None
    try:
        t = time.perf_counter()
        results = work / "results"
        write_results(results, args.files, args.size)
        proc, url = start_devxnat(work / "xnat", 0, "3MB", work / "devxnat.log")
        client = XnatClient(url, USER, PASSWORD)
        experiment = sorted(r["label"] for r in client.result(f"/data/projects/{PROJECT}/experiments"))[0]
        session = xnat.connect(url, user=USER, password=PASSWORD, loglevel="ERROR")
        logging.getLogger("xnat").setLevel(logging.ERROR)
        xnat_experiment = session.projects[PROJECT].experiments[experiment]
        signer = ResultsSigner(key_path=str(work / "hub" / "results-signing-key"))
        public_raw = signer.public_raw()  # the key made once, as the hub's first publication does
        mb = args.size / 1e6
        recorded = digest_files(results)  # what the job's decryption records in provenance.json
        print(f"setup: {args.files} files, {mb:.0f} MB, published to {PROJECT}/{experiment} as {USER} "
              f"({time.perf_counter() - t:.1f} s); {machine()}")

        made: list[str] = []  # this round's resource path, deleted after the round

        def ours() -> dict:
            job = "j" + os.urandom(6).hex()
            target = Target(PROJECT, experiment=experiment)
            path = resource_path(target, job)
            made.append(path)
            t0 = time.perf_counter()
            files = digest_files(results) if args.rehash else recorded
            t1 = time.perf_counter()
            run = RunRecord(job_id=job, user=USER, xnat_host=url, dataset="bench", manifest_sha256="0" * 64,
                            script="train.py", script_sha256="1" * 64, slurm_job_id="1", partition="secure",
                            node="node1", start="2026-01-01T00:00:00Z", end="2026-01-01T01:00:00Z",
                            resources_asked={"mem": "4G", "cpus": "4"}, software={"python": "3.11"},
                            xnat_item=f"{url}/data/projects/{PROJECT}/experiments/{experiment}")
            crate = dumps(crate_metadata(run, files))
            signature = signer.sign(crate)
            t2 = time.perf_counter()
            outcome = upload(XnatResourceWriter(client, path, PROJECT), results, files, crate, signature)
            t3 = time.perf_counter()
            if outcome != "published" or len(files) != args.files:
                sys.exit(f"ours: {outcome}, {len(files)} files")
            # the researcher's check, on a copy laid out as downloaded (hard links: not counted)
            copy = work / "downloaded"
            shutil.copytree(results, copy, copy_function=os.link)
            (copy / METADATA).write_bytes(crate)
            (copy / SIGNATURE).write_text(signature)
            t4 = time.perf_counter()
            sshsig.verify((copy / METADATA).read_bytes(), (copy / SIGNATURE).read_text(), public_raw)
            t5 = time.perf_counter()
            problems = verify_results(copy, public_raw)
            t6 = time.perf_counter()
            shutil.rmtree(copy)
            if problems:
                sys.exit(f"verify_results: {problems[:3]}")
            return {"seconds": t3 - t0, "digest": t1 - t0, "sign": t2 - t1, "upload": t3 - t2,
                    "verify_sig": t5 - t4, "verify_full": t6 - t5}

        def plain() -> float:
            label = "plain-" + os.urandom(6).hex()
            made.append(f"/data/projects/{PROJECT}/experiments/{experiment}/resources/{label}")
            t0 = time.perf_counter()
            resource = xnat_experiment.create_resource(label)
            resource.upload_dir(results, overwrite=True, method="per_file", verbose=False)
            return time.perf_counter() - t0

        def cleanup(name, _result) -> None:
            path = made.pop()
            listed = len(client.result(f"{path}/files"))
            want = args.files + (2 if name == "ours" else 0)
            if listed != want:
                sys.exit(f"{name}: XNAT lists {listed} files in {path}, expected {want}")
            client.request("DELETE", path, params={"removeFiles": "true"}, what=path).close()

        stats = alternate(args.rounds, {"ours": ours, "plain": plain}, after=cleanup, warmup=args.warmup)
    finally:
        if session is not None:
            session.disconnect()
        if client is not None:
            client.close()
        if proc is not None:
            proc.terminate()
            proc.wait(15)
        shutil.rmtree(work, ignore_errors=True)

    import statistics

    o, p = stats["ours"], stats["plain"]

    def part(key: str) -> list[float]:
        return [f[key] for f in o.facts]

    def show(key: str) -> str:
        v = part(key)
        return f"{statistics.median(v) * 1e3:8.1f} ms ({min(v) * 1e3:.1f}–{max(v) * 1e3:.1f})"

    sign_share = [(f["sign"] + f["verify_sig"]) / f["seconds"] * 100 for f in o.facts]
    full_share = [(f["sign"] + f["verify_full"]) / f["seconds"] * 100 for f in o.facts]
    upload_ratio = p.median / statistics.median(part("upload"))
    print(f"publishing {mb:.0f} MB in {args.files} files, median (min–max) of {args.rounds} alternated rounds:")
    print(f"  (plain: xnatpy {xnat.__version__} upload_dir(method='per_file', verbose=False), one streamed PUT "
          "per file, no client digest; its default 'tgz_file' gzips everything into one upload.tar.gz "
          "sent with extract=true, which devxnat does not unpack)")
    print(f"  ours  {'digest+' if args.rehash else ''}crate+sign+upload (hashed on the way) {o.rate(mb)}")
    print(f"  plain xnatpy upload_dir per_file {p.rate(mb)}")
    print(f"  ratio ours/plain throughput = {p.median / o.median:.2f} (goal ≥ 0.9: "
          f"{'met' if p.median / o.median >= 0.9 else 'NOT met'}); upload alone {upload_ratio:.2f}")
    print("  ours, its parts:")
    if args.rehash:
        print(f"    digest (sha256 of every file)  {show('digest')}")
    print(f"    crate + sign                   {show('sign')}")
    print(f"    upload (files hashed as sent, crate, sig) {show('upload')}")
    print("  verification (after, not in ours' total):")
    print(f"    sshsig.verify of the crate     {show('verify_sig')}")
    print(f"    verify_results (sig + sha256)  {show('verify_full')}")
    share = statistics.median(sign_share)
    print(f"  signing + signature check = {share:.2f} % of ours' total (goal < 2 %: "
          f"{'met' if share < 2 else 'NOT met'}); signing + full verify_results (re-hashing every "
          f"file) = {statistics.median(full_share):.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
