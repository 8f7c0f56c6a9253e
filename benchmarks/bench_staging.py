"""Encrypted staging (xnat_bridge.staging) side by side with the plain tools, through XNAT's
REST API and from the read-only archive mount.

    python benchmarks/bench_staging.py [--size 1GB] [--files 200] [--rounds 5] [--rss-size 5GB]

Builds a throw-away devxnat data directory in a temp dir (``$TMPDIR`` or /tmp, never the
repo; ``HOME`` of the measured processes points there too, so nothing lands in yours) with
one session of ``--files`` random files of ``--size`` together (scans of 50 files), starts
devxnat on a free port of 127.0.0.1 and measures in one run, each section's sides
alternated (the order rotates every round), page cache warm for all:

1. **through XNAT REST**: ours = the product's path — ``Connection.create_dataset`` (not
   timed), then ``staging.stage_files`` of the manifest's files read through
   ``conn.access.open`` (REST streams: fetched concurrently, verified, hashed, tar, age,
   the bundle fsynced before its atomic rename) — vs ``curl`` of XNAT's own
   ``.../scans/ALL/files?format=zip`` of the same files piped into ``age -r`` (the by-hand
   way), timed without and with ``sync`` of its output (ours' durability). Goal ≥ 1.0.
   (devxnat builds a zip in a temp file before sending it; XNAT streams it. That part of
   the plain side's time is devxnat's, not the method's.)
2. **from the mount**: the same with ``data_root`` = devxnat's archive (``conn.access`` reads
   the read-only mount) vs ``tar -cf - FILES | age -r`` (goal ≥ 1.0; also with ``sync``) and
   vs ``cp -r SESSION DEST; sync`` (a plain durable copy, the disk's limit). Ours twice: a
   later staging of the dataset version (its files' sha256 recorded by the first: the
   goal's case) and its first staging, whose readers also check XNAT's md5 of every file
   (the mount's streams do not; once per file, where the worker used to check it in every
   job).
3. **unstaging**: ``extract_bundle`` as the worker runs it, against the two digests the
   server staged (verifies sizes, every sha256 and both digests, O_NOFOLLOW writes) vs
   ``age -d -i KEY bundle | tar -x`` on the same bundle.
4. **peak memory**: ours' peak RSS (VmHWM; ours runs in a child process, so it is its own)
   staging ``--size`` and ``--rss-size`` (its files are hard links of the first session's,
   repeated; no new bytes on disk), through REST and from the mount: flat in the size.

Prints for each side the MB/s at the median time, the spread (slowest–fastest round) and
the median (min–max) seconds of ``--rounds`` rounds (MB = 10**6 bytes of file data), and
the ratio of medians ours/plain as throughputs (> 1: ours is faster). ``--warmup``
untimed rounds of each side come first. Removes its temp dir at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import (
    BENCH_PASSWORD,
    BENCH_USER,
    REPO,
    DevXnat,
    Stats,
    alternate,
    build_project,
    curl_config,
    machine,
    parse_size,
    proc_status,
    ratio,
    timed_shell,
)

PROJECT, BIG = "STAGE", "STAGEBIG"
FILES_PER_SCAN = 50


# --------------------------------------------------------------------------- child (ours)


def child(args) -> None:
    """One measured run of ours; prints one JSON line (seconds, peak RSS, ...)."""
    work = args.work
    base = proc_status("VmRSS")
    if args.child == "extract":
        from xnat_bridge import staging

        identity = sys.stdin.read().strip()  # from the parent, never via argv
        t = time.perf_counter()
        # as the worker on the node does: against the digests the server staged
        manifest = staging.extract_bundle(args.bundle, identity, work / "x-ours", args.manifest_sha256,
                                          expected_contents_sha256=args.contents_sha256)
        took = time.perf_counter() - t
        result = {"files": manifest["file_count"]}
    else:
        import xnat_bridge
        from xnat_bridge import staging
        from xnat_bridge.audit import MemorySink
        from xnat_bridge.offload.bundles import reader_threads, staged_files
        from xnat_bridge.scope import Scope

        conf = json.loads((work / "bench.json").read_text())
        data_root = conf["archive"] if args.source == "mount" else ""
        conn = xnat_bridge.connect(conf["url"], BENCH_USER, BENCH_PASSWORD, workspace=work / "ws",
                                   sink=MemorySink(), ttl=600, scope=Scope.unrestricted(),
                                   data_root=data_root)
        if conn.access.mode != args.source:
            sys.exit(f"expected file access {args.source!r}, got {conn.access.mode!r}")
        manifest = conn.resolve("bench", [{"project": args.project}])
        files = staged_files(manifest, lambda f: conn.access.open(f.ref()))
        if args.known:  # a later staging of the dataset version: its sha256s are recorded
            known = json.loads((work / "sha256.json").read_text())
            files = [dataclasses.replace(f, sha256=known[f.name]) for f in files]
        t = time.perf_counter()
        # as the job's staging does (BundleCache): XNAT's md5 checked by the readers where the
        # source does not check it (the mount) and no sha256 is recorded yet
        info = staging.stage_files(files, staging_dir=work / "staging", user=BENCH_USER,
                                   recipient=conf["recipient"], verify_md5=not conn.access.checks_md5,
                                   threads=reader_threads(staging.FETCH_THREADS, conn.access.mode,
                                                          os.cpu_count()))
        took = time.perf_counter() - t
        conn.close()
        result = {"path": str(info.path), "size": info.size, "files": info.file_count,
                  "bytes": info.total_size, "manifest_sha256": info.manifest_sha256,
                  "contents_sha256": info.contents_sha256, "sha256": info.file_sha256}
    result.update(seconds=took, rss_base_mb=base, peak_rss_mb=proc_status("VmHWM"))
    print(json.dumps(result))


def run_child(work: Path, *extra: str, stdin: str | None = None) -> dict:
    env = {**os.environ, "HOME": str(work / "home")}
    out = subprocess.run([sys.executable, __file__, "--work", str(work), *extra], input=stdin,
                         capture_output=True, text=True, cwd=REPO, env=env)
    if out.returncode != 0:
        sys.exit(f"ours ({' '.join(extra)}) failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- parent


def remove_bundle(result: dict) -> None:
    path = Path(result["path"])
    path.unlink(missing_ok=True)
    path.with_name(path.name.replace(".tar.age", ".json")).unlink(missing_ok=True)


def report(title: str, mb: float, ours: Stats, plains: list[tuple[Stats, str]]) -> None:
    print(title)
    print(f"  ours   {ours.name:<34} {ours.rate(mb)}")
    for plain, goal in plains:
        print(f"  plain  {plain.name:<34} {plain.rate(mb)}   ratio ours/plain {ratio(plain, ours):.2f}"
              + (f" (goal >= {goal})" if goal else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=parse_size, default=parse_size("1GB"), help="total data (1GB)")
    ap.add_argument("--files", type=int, default=200, help="number of files (200)")
    ap.add_argument("--rounds", type=int, default=5, help="alternated rounds of each side (5)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds of each side first (1)")
    ap.add_argument("--rss-size", type=parse_size, default=parse_size("5GB"),
                    help="the larger dataset of the peak-memory check (5GB; 0: skip)")
    ap.add_argument("--child", choices=["stage", "extract"], help=argparse.SUPPRESS)
    ap.add_argument("--source", choices=["api", "mount"], help=argparse.SUPPRESS)
    ap.add_argument("--project", help=argparse.SUPPRESS)
    ap.add_argument("--known", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--bundle", help=argparse.SUPPRESS)
    ap.add_argument("--manifest-sha256", help=argparse.SUPPRESS)
    ap.add_argument("--contents-sha256", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    for tool in ("age", "tar", "curl"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found (Debian packages: age, tar, curl)")

    from xnat_bridge import staging

    work = Path(tempfile.mkdtemp(prefix="bench-staging-"))
    server = None
    try:
        os.chmod(work, 0o700)
        for d in ("staging", "home", "ws"):
            (work / d).mkdir()
        t = time.perf_counter()
        data = work / "data"
        (label,) = build_project(data, PROJECT, files=args.files, total=args.size,
                                 files_per_scan=FILES_PER_SCAN)
        archive = data / "archive"
        session = archive / PROJECT / "arc001" / label
        names = sorted(str(p.relative_to(archive)) for p in session.rglob("*") if p.is_file())
        (work / "files.lst").write_text("".join(n + "\0" for n in names))
        copies = -(-args.rss_size // args.size) if args.rss_size else 0
        if copies:
            link_session(data, copies)
        identity, recipient = staging.generate_keypair()
        key = work / "key.txt"  # for the age CLI only; removed with the temp dir
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(identity + "\n")
        server = DevXnat(data, work / "devxnat.log")
        (work / "bench.json").write_text(json.dumps({"url": server.url, "archive": str(archive),
                                                     "recipient": recipient}))
        cfg = curl_config(work / "curl.cfg")
        subprocess.run(["bash", "-c", f'tar -cf - -C "{archive}" --null -T "{work}/files.lst" > /dev/null'],
                       check=True)  # warm the page cache
        mb = args.size / 1e6
        print(f"setup: {args.files} files, {mb:.0f} MB in {work} ({time.perf_counter() - t:.1f} s); "
              f"{machine()}; {args.rounds} rounds + {args.warmup} warm-up, alternated")

        env = {"ARCHIVE": str(archive), "LIST": str(work / "files.lst"), "OUT": str(work / "plain.tar.age"),
               "RCPT": recipient, "SESSION": str(session), "DEST": str(work / "cp"), "CFG": str(cfg),
               "ZIP": f"{server.url}/data/projects/{PROJECT}/experiments/{label}/scans/ALL/files?format=zip"}
        ours_runs: list[dict] = []

        def ours(source: str, project: str = PROJECT, known: bool = False):
            def run() -> dict:
                r = run_child(work, "--child", "stage", "--source", source, "--project", project,
                              *(["--known"] if known else []))
                ours_runs.append(r)
                return r
            return run

        def cleanup(name: str, result) -> None:
            if isinstance(result, dict) and "path" in result:
                remove_bundle(result)
            Path(env["OUT"]).unlink(missing_ok=True)
            shutil.rmtree(env["DEST"], ignore_errors=True)

        curl_age = 'curl -sf -K "$CFG" "$ZIP" | age -r "$RCPT" > "$OUT"'
        tar_age = 'tar -cf - -C "$ARCHIVE" --null -T "$LIST" | age -r "$RCPT" > "$OUT"'
        # 1. through XNAT REST
        rest = alternate(args.rounds, {
            "stage_files via conn.access (REST)": ours("api"),
            "curl ?format=zip | age -r": lambda: timed_shell(curl_age, **env),
            "curl ?format=zip | age -r; sync": lambda: timed_shell(curl_age + '; sync "$OUT"', **env),
        }, after=cleanup, warmup=args.warmup)
        s = list(rest.values())
        check_sizes(ours_runs, args.files, args.size)
        report(f"stage {mb:.0f} MB in {args.files} files through XNAT REST:", mb, s[0],
               [(s[1], "1.0"), (s[2], "")])

        # 2. from the mount: a dataset version's first staging (XNAT's md5 checked by the readers)
        # and a later one (its sha256s recorded by the first)
        (work / "sha256.json").write_text(json.dumps(ours_runs[0]["sha256"]))
        ours_runs.clear()
        mount = alternate(args.rounds, {
            "stage_files (mount), sha256 recorded": ours("mount", known=True),
            "stage_files (mount), first, md5 too": ours("mount"),
            "tar -c | age -r": lambda: timed_shell(tar_age, **env),
            "tar -c | age -r; sync": lambda: timed_shell(tar_age + '; sync "$OUT"', **env),
            "cp -r; sync": lambda: timed_shell('cp -r "$SESSION" "$DEST"; sync', **env),
        }, after=cleanup, warmup=args.warmup)
        s = list(mount.values())
        check_sizes(ours_runs, args.files, args.size)
        report(f"stage {mb:.0f} MB in {args.files} files from the read-only mount:", mb, s[0],
               [(s[2], "1.0"), (s[3], ""), (s[4], "")])
        report("  the dataset version's first staging (checks XNAT's md5 of every file once):", mb, s[1],
               [(s[2], "")])
        rss = {"api": rest_peak(rest), "mount": rest_peak(mount)}

        # 3. unstaging, one bundle
        bundle = run_child(work, "--child", "stage", "--source", "mount", "--project", PROJECT)

        def plain_extract() -> float:
            (work / "x-plain").mkdir()
            return timed_shell('age -d -i "$KEY" "$BUNDLE" | tar -x -C "$DEST"', KEY=str(key),
                               BUNDLE=bundle["path"], DEST=str(work / "x-plain"))

        def clean_extract(name: str, result) -> None:
            shutil.rmtree(work / "x-ours", ignore_errors=True)
            shutil.rmtree(work / "x-plain", ignore_errors=True)

        unstage = alternate(args.rounds, {
            "extract_bundle": lambda: run_child(work, "--child", "extract", "--bundle", bundle["path"],
                                                "--manifest-sha256", bundle["manifest_sha256"],
                                                "--contents-sha256", bundle["contents_sha256"],
                                                stdin=identity),
            "age -d | tar -x": plain_extract,
        }, after=clean_extract, warmup=args.warmup)
        s = list(unstage.values())
        report(f"unstage the {bundle['size'] / 1e6:.0f} MB bundle:", mb, s[0], [(s[1], "")])
        rss["extract"] = max(f["peak_rss_mb"] for f in s[0].facts)
        remove_bundle(bundle)

        # 4. peak memory at the larger size
        base = max(f["rss_base_mb"] for f in s[0].facts)
        print(f"peak RSS of ours (interpreter + imports ≈ {base} MB):")
        print(f"  {mb:7.0f} MB: REST {rss['api']} MB, mount {rss['mount']} MB, extract {rss['extract']} MB")
        if copies:
            big = {src: run_child(work, "--child", "stage", "--source", src, "--project", BIG)
                   for src in ("api", "mount")}
            for r in big.values():
                remove_bundle(r)
            big_mb = big["api"]["bytes"] / 1e6
            print(f"  {big_mb:7.0f} MB: REST {big['api']['peak_rss_mb']} MB "
                  f"({big_mb / big['api']['seconds']:.0f} MB/s), mount {big['mount']['peak_rss_mb']} MB "
                  f"({big_mb / big['mount']['seconds']:.0f} MB/s); growth "
                  f"{big['api']['peak_rss_mb'] - rss['api']:+d} / {big['mount']['peak_rss_mb'] - rss['mount']:+d} MB "
                  "(goal: flat)")
    finally:
        if server:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


def rest_peak(stats: dict[str, Stats]) -> int:
    return max(f["peak_rss_mb"] for f in next(iter(stats.values())).facts)


def check_sizes(runs: list[dict], files: int, size: int) -> None:
    for r in runs:
        if r["files"] != files or r["bytes"] != size:
            sys.exit(f"ours staged {r['files']} files, {r['bytes']} bytes; expected {files}, {size}")


def link_session(data: Path, copies: int) -> None:
    """Project BIG: *copies* sessions whose files are hard links of PROJECT's session."""
    from devxnat import open_data_dir
    from devxnat.archive import resource_dir

    st, archive = open_data_dir(data)
    try:
        src_exp = st.experiments(project=PROJECT)[0]
        st.add_project(BIG, BIG)
        st.set_member(BIG, BENCH_USER, "Members")
        sub = st.add_subject(BIG, f"{BIG}_S1")
        for c in range(copies):
            label = f"{BIG}_E{c:04d}"
            eid = st.add_experiment(BIG, sub, label, "xnat:mrSessionData", date="2025-01-01")
            for scan in st.scans(src_exp["id"]):
                st.add_scan(eid, scan["scan_id"], scan["xsi_type"], type=scan["type"])
                for res in st.resources(src_exp["id"], scan["scan_id"]):
                    src = resource_dir(archive, PROJECT, src_exp["label"], scan["scan_id"], res["label"])
                    dst = resource_dir(archive, BIG, label, scan["scan_id"], res["label"])
                    dst.mkdir(parents=True)
                    entries = []
                    for f in st.files(res["id"]):
                        os.link(src / f["path"], dst / f["path"])
                        entries.append((f["path"], f["size"], f["md5"]))
                    st.add_resource(eid, scan["scan_id"], res["label"], format=res["format"], files=entries)
    finally:
        st.close()


if __name__ == "__main__":
    main()
