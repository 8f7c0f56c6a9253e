"""``xnat-hpc-hub demo``: the whole stack on embedded defaults, on 127.0.0.1.

Starts the XNAT development server with its synthetic demo archive and the
single-node development Slurm, prints what runs and how to reach it, and stops
what it started on Ctrl-C (Slurm is left running if it was already up).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from xnat_bridge.errors import XnatHpcError

from . import slurmdev

DEMO_USERS = (
    ("admin", "site administrator (sees every project)"),
    ("alice", "Owner of NEURO_MRI, Member of SLEEP_EEG"),
    ("bob", "Collaborator on NEURO_MRI, Member of CARDIO_ECG"),
    ("carol", "in no project (sees nothing)"),
    ("dave", "Owner of SLEEP_EEG and CARDIO_ECG"),
)


def start_devxnat(
    data_dir: Path, port: int, demo_size: str, log_path: Path, timeout: float = 300
) -> tuple[subprocess.Popen, str]:
    """Start devxnat with the demo archive; return (process, base URL) once it listens."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log_f = open(log_path, "ab")
    cmd = [
        sys.executable, "-m", "xnat_bridge.devserver",
        "--data", str(data_dir), "--port", str(port), "--demo", "--demo-size", demo_size,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log_f)
    url_box: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            log_f.write(raw)
            log_f.flush()
            line = raw.decode(errors="replace")
            if "listening on " in line and not url_box:
                url_box.append(line.split("listening on ", 1)[1].split()[0])
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.2):
        if time.monotonic() > deadline:
            proc.kill()
            raise XnatHpcError(f"devxnat did not start within {timeout:.0f} s; see {log_path}")
    if not url_box:
        raise XnatHpcError(f"devxnat exited with code {proc.wait()}; see {log_path}")
    return proc, url_box[0]


def summary(xnat_url: str, slurm_text: str, run_dir: Path, slurm_dir: Path) -> str:
    users = "\n".join(f"    {u:<6} password {u}-demo   {what}" for u, what in DEMO_USERS)
    return f"""
xnat-hpc-hub demo is running (everything on 127.0.0.1; run directory {run_dir})

  XNAT development server   {xnat_url}
    try: curl -u alice:alice-demo {xnat_url}/data/projects?format=json
    Python: xnat.connect("{xnat_url}", user="alice", password="alice-demo")
  demo users (development server only — fixed passwords):
{users}

{slurm_text}
    try: sbatch -p secure --wrap 'hostname'; squeue

Logs: {run_dir}/devxnat.log, {slurm_dir}/log/
Press Ctrl-C to stop.
"""


def run_demo(args: argparse.Namespace) -> int:
    run_dir: Path = args.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    slurm = slurmdev.SlurmDev(args.slurm_run_dir)
    slurm_was_up = slurm.is_up() if not slurm.missing_programs() else False
    print("starting the local Slurm ...", flush=True)
    statuses = slurm.up()
    print("starting the XNAT development server (first run generates the demo archive) ...",
          flush=True)
    xnat_proc, xnat_url = start_devxnat(
        run_dir / "xnat", args.xnat_port, args.demo_size, run_dir / "devxnat.log"
    )
    try:
        text = slurmdev.format_status(statuses, slurm.cfg.run_dir)
        print(summary(xnat_url, text, run_dir, slurm.cfg.run_dir),
              flush=True)
        if not args.exit_when_ready:
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            try:
                while not stop.wait(1):
                    if xnat_proc.poll() is not None:
                        print(f"devxnat exited (code {xnat_proc.returncode}); stopping",
                              file=sys.stderr)
                        return 1
            except KeyboardInterrupt:
                pass
    finally:
        print("stopping ...", flush=True)
        xnat_proc.terminate()
        try:
            xnat_proc.wait(10)
        except subprocess.TimeoutExpired:
            xnat_proc.kill()
        if not slurm_was_up:
            slurm.down(stop_munge=False)
    return 0
