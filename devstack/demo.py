"""``xnat-hpc-hub demo``: the whole stack on embedded defaults, on 127.0.0.1.

Starts the XNAT development server with its synthetic demo archive, the
single-node development Slurm and JupyterHub (configurable-http-proxy, the
``xnat`` authenticator, the ``xnat`` profiles spawner with a local and three Slurm
profiles from ``config/demo/profiles.yaml``, written to the run directory with its
archive's path as ``slurm-data``'s node path), prints what runs and how to reach
it, and stops what it started on Ctrl-C (Slurm is left running if it was
already up). It creates Unix accounts for the demo users (``useradd``) when
they are missing: the local and Slurm backends run each server as its user.

The run directory is 0700 and every log it writes (``devxnat.log``,
``jupyterhub.log``) 0600: logs name users, projects and requests, and are no
business of the demo users' accounts. The archive is closed to those accounts
too (root and the group ``xnat-archive``, under devxnat's 0700 data directory):
a local server reads its scope through the binds root makes in its sandbox, a
server of the Slurm profile ``slurm-data`` through the binds its job makes as root
in a sandbox on the node (this machine: the same archive), the other Slurm servers
and the offload jobs through XNAT's REST API. The staging area's root is root's
(0755); the hub makes each user's directory in it.
"""

from __future__ import annotations

import argparse
import dataclasses
import grp
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from xnat_bridge import procs
from xnat_bridge.errors import XnatHpcError

from .accounts import ensure_accounts, install_file
from .hubconfig import (governance_hub_config, idle_culler_hub_config, loopback_hub_config, xnat_hub_config,
                        xnat_plugin_hub_config)
from .slurm import SlurmDev, format_status

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
DEMO_PROFILES = CONFIG_DIR / "demo" / "profiles.yaml"
#: the archive of the default run directory: ``archive_node_path`` of DEMO_PROFILES' Slurm profile
#: ``slurm-data``, replaced by the run directory's own (:func:`demo_profiles`)
DEMO_ARCHIVE = Path("/var/lib/xnat-hpc-hub/demo/xnat/archive")
EXAMPLE_SCRIPT = CONFIG_DIR.parent / "examples" / "train_example.py"
STAGING_DIR = Path("/var/lib/xnat-hpc-hub/staging")
#: culling (docs/admin.md, "Culling idle servers"): the hub's idle culler stops servers idle for an
#: hour, checking every 5 minutes; devxnat runs XNAT's plugin culling on the plugin's 5 minutes
DEMO_CULL_TIMEOUT = 3600
DEMO_CULL_EVERY = 300
#: the Unix group that may read the archive (``c.XnatLocalSpawner.archive_group``)
ARCHIVE_GROUP = "xnat-archive"

DEMO_USERS = (
    ("admin", "site administrator (sees every project)"),
    ("alice", "Owner of NEURO_MRI, Member of SLEEP_EEG"),
    ("bob", "Collaborator on NEURO_MRI, Member of CARDIO_ECG"),
    ("carol", "in no project (sees nothing)"),
    ("dave", "Owner of SLEEP_EEG and CARDIO_ECG"),
)


def private_dir(path: Path) -> Path:
    """*path* created if missing and made 0700 (owner only); a symbolic link is refused."""
    path.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        raise XnatHpcError(f"{path} is a symbolic link; give the demo a real directory")
    os.chmod(path, 0o700)
    return path


def open_private_log(path: Path):
    """*path* opened for appending, created 0600 (an existing file is made 0600 too); a
    symbolic link is not followed."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab")


def start_devxnat(
    data_dir: Path, port: int, demo_size: str, log_path: Path, timeout: float = 300,
    extra_args: tuple[str, ...] = (),
) -> tuple[subprocess.Popen, str]:
    """Start devxnat with the demo archive; return (process, base URL) once it listens.
    Its log (*log_path*) is 0600: devxnat masks token secrets in it, but it still names
    users and requests."""
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    log_f = open_private_log(log_path)
    cmd = [
        # the interpreter of another environment where this one lacks the `demo` extra (the
        # oldest-JupyterHub test run: `make test` names the main venv's)
        os.environ.get("XNAT_HPC_DEVXNAT_PYTHON") or sys.executable, "-m", "devxnat",
        "--data", str(data_dir), "--port", str(port), "--demo", "--demo-size", demo_size,
        *extra_args,
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


def demo_profiles(archive: Path, text: str | None = None, staging: Path = STAGING_DIR) -> str:
    """The demo's profiles (*text*, default ``config/demo/profiles.yaml``) with *archive* as the
    node path of its Slurm profile ``slurm-data`` and *staging* as the offload's staging area
    (pure but for reading the default file): the demo's node is this machine, which "mounts"
    devxnat's archive where devxnat keeps it."""
    text = DEMO_PROFILES.read_text() if text is None else text
    for key, default, value in (("archive_node_path", DEMO_ARCHIVE, archive), ("staging_dir", STAGING_DIR, staging)):
        line = f"{key}: {default}\n"
        if text.count(line) != 1:
            raise XnatHpcError(f"{DEMO_PROFILES} must name {key}: {default} exactly once")
        text = text.replace(line, f"{key}: {json.dumps(os.path.abspath(value))}\n")
    return text


def hub_config(*, xnat_url: str, hub_dir: Path, port: int, proxy_api_port: int, hub_port: int,
               profiles: Path, archive: Path, audit_log: Path, plugin: PluginSecrets | None = None,
               governance_token_file: Path | None = None, unix_accounts: str = "{name}") -> str:
    """The demo's ``jupyterhub_config.py`` (pure; config/jupyterhub_config.py is the site example);
    with *plugin*, XNAT's "Start Jupyter" (devxnat's plugin endpoints) drives this hub; with
    *governance_token_file* (:func:`governance_secret`), the owners' page lists running servers
    and revocations stop them through the hub's REST API (service ``xnat-hpc-governance``);
    *unix_accounts*: ``c.UnixAccounts.name_template`` (the tests' throwaway accounts)."""
    text = ("# written by `xnat-hpc-hub demo`; see config/jupyterhub_config.py for a site configuration\n"
            + loopback_hub_config(hub_dir=hub_dir, port=port, hub_port=hub_port, proxy_api_port=proxy_api_port)
            + "c.Spawner.start_timeout = 120\nc.Spawner.http_timeout = 90\n"
            # one machine whose accounts the demo owns: an XNAT account added later gets its own
            + "c.UnixAccounts.create_missing = True\n"
            + (f"c.UnixAccounts.name_template = {unix_accounts!r}\n" if unix_accounts != "{name}" else "")
            + xnat_hub_config(xnat_url=xnat_url, profiles=profiles, archive=archive, audit_log=audit_log)
            + idle_culler_hub_config(timeout=DEMO_CULL_TIMEOUT, every=DEMO_CULL_EVERY))
    if governance_token_file is not None:
        text += governance_hub_config(token_file=governance_token_file)
    if plugin is not None:
        text += xnat_plugin_hub_config(token_file=plugin.token_file, password_file=plugin.password_file,
                                       account=plugin.account)
    return text


@dataclasses.dataclass(frozen=True)
class PluginSecrets:
    """The two secrets shared by devxnat's JupyterHub plugin and the demo hub, each in a 0600
    file of the run directory (never on a command line): the hub's API token of the service
    ``xnat`` (XNAT's ``jupyterHubToken``) and the password of XNAT's ``jupyterhub`` account."""

    token_file: Path
    password_file: Path
    account: str = "jupyterhub"

    def devxnat_args(self, hub_url: str) -> tuple[str, ...]:
        """devxnat's options that point its plugin at the hub at *hub_url*."""
        return ("--jupyterhub-api-url", f"{hub_url}/hub/xnat-plugin/api", "--jupyterhub-host-url", hub_url,
                "--jupyterhub-token-file", str(self.token_file),
                "--jupyterhub-password-file", str(self.password_file))


def write_secret(path: Path, value: str) -> None:
    """Write *value* to *path* as a new 0600 file (an old one is replaced; a link is not followed)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, (value + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def plugin_secrets(run_dir: Path) -> PluginSecrets:
    """Fresh plugin secrets for this run, in ``RUN_DIR/secrets`` (0700, files 0600)."""
    directory = private_dir(run_dir / "secrets")
    found = PluginSecrets(directory / "xnat-service-token", directory / "jupyterhub-password")
    write_secret(found.token_file, secrets.token_hex(32))
    write_secret(found.password_file, secrets.token_urlsafe(24))
    return found


def governance_secret(run_dir: Path) -> Path:
    """A fresh token of the hub service ``xnat-hpc-governance`` for this run, in
    ``RUN_DIR/secrets/governance-token`` (0700 directory, 0600 file); only the hub reads it."""
    path = private_dir(run_dir / "secrets") / "governance-token"
    write_secret(path, secrets.token_hex(32))
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float, what: str, log_path: Path) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise XnatHpcError(f"{what} exited with code {proc.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    raise XnatHpcError(f"{what} did not answer within {timeout:.0f} s; see {log_path}")


def ensure_group(name: str) -> int:
    """The gid of the Unix group *name*, created as a system group (``groupadd --system``,
    no members) when missing."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        procs.run(["groupadd", "--system", name])
        return grp.getgrnam(name).gr_gid


def close_archive(archive: Path, group: str = ARCHIVE_GROUP) -> None:
    """The archive closed to the users' accounts, as a site keeps it (docs/admin.md): its
    parent directory root's alone (0700), so nobody else can look up anything beneath it;
    the archive owned by root and *group* (created without members), directories 0750,
    files 0640. Only root (devxnat; the hub's ``bwrap``, which binds a server's scope into
    its sandbox and grants *group* there only) reads it. Symbolic links are not followed."""
    gid = ensure_group(group)
    parent = archive.parent
    os.chown(parent, 0, 0, follow_symlinks=False)
    os.chmod(parent, 0o700)  # first: nothing beneath is reachable while the modes change
    for root, _dirs, files in os.walk(archive):
        os.chown(root, 0, gid, follow_symlinks=False)
        os.chmod(root, 0o750)
        for name in files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            os.chown(path, 0, gid, follow_symlinks=False)
            os.chmod(path, 0o640)


def prepare_staging_root(staging: Path = STAGING_DIR) -> None:
    """The staging area's root: root's, 0755 — no user can create a directory in it (nor
    another user's first); the hub makes each user's 0700 directory when their server starts
    (:mod:`spawner.userdirs`). A symbolic link is refused."""
    staging.mkdir(parents=True, exist_ok=True)
    if staging.is_symlink():
        raise XnatHpcError(f"{staging} is a symbolic link; give the demo a real directory")
    os.chown(staging, 0, 0)
    os.chmod(staging, 0o755)


def prepare_shared_dirs(archive: Path, staging: Path = STAGING_DIR, group: str = ARCHIVE_GROUP) -> None:
    """The archive closed to the demo users' accounts (:func:`close_archive`) and the staging
    area's root not writable by them (:func:`prepare_staging_root`)."""
    close_archive(archive, group)
    prepare_staging_root(staging)


def descendants(pid: int) -> list[int]:
    """Every live process below *pid* (children, their children, ...), from ``/proc``: the proxy,
    the managed services and the servers JupyterHub starts in sessions of their own."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            out.append(child)
            todo.append(child)
    return out


def stop_tree(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM *proc* and give it *grace* seconds to stop what it started; then SIGKILL it and
    everything still below it, so that nothing it started outlives it (a proxy answering on a
    port nobody serves, a culler calling a hub that is gone)."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
        return
    except subprocess.TimeoutExpired:
        pass
    below = descendants(proc.pid)
    proc.kill()
    proc.wait()
    for pid in below:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


#: seconds JupyterHub may take to stop after SIGTERM. It stops its proxy and each managed service
#: (the idle culler) itself — each is in a session of its own, so killing the hub would orphan
#: them, the proxy still answering on the hub's port — with SIGINT, then SIGTERM after
#: ``interrupt_timeout`` (10 s), then SIGKILL after ``term_timeout`` (5 s) and ``kill_timeout``
#: (5 s): a service that ignores SIGINT (one stopped while it starts) takes 20 s alone.
HUB_STOP_GRACE = 60


def start_hub(run_dir: Path, xnat_url: str, archive: Path, port: int,
              plugin: PluginSecrets | None = None, *, staging: Path = STAGING_DIR,
              unix_accounts: str = "{name}") -> tuple[subprocess.Popen, str]:
    """JupyterHub + configurable-http-proxy with the demo profiles; (process, URL) once it answers."""
    hub_dir = run_dir / "hub"
    hub_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(hub_dir, 0o700)
    config = hub_dir / "jupyterhub_config.py"
    profiles = hub_dir / "profiles.yaml"
    profiles.write_text(demo_profiles(archive, staging=staging))
    config.write_text(hub_config(xnat_url=xnat_url, hub_dir=hub_dir, port=port, proxy_api_port=_free_port(),
                                 hub_port=_free_port(), profiles=profiles, archive=archive,
                                 audit_log=run_dir / "audit" / "audit.db", plugin=plugin,
                                 governance_token_file=governance_secret(run_dir), unix_accounts=unix_accounts))
    if not shutil.which("configurable-http-proxy"):
        raise XnatHpcError("configurable-http-proxy is not installed; run `make demo` (it installs it)")
    env = {**os.environ, "JUPYTERHUB_CRYPT_KEY": secrets.token_hex(32),
           "CONFIGPROXY_AUTH_TOKEN": secrets.token_hex(16),
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    log_path = run_dir / "jupyterhub.log"
    with open_private_log(log_path) as log_f:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "jupyterhub"), "-f", str(config)],
                                cwd=hub_dir, stdout=log_f, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    _wait_http(f"{url}/hub/api", proc, 90, "JupyterHub", log_path)
    return proc, url


def summary(xnat_url: str, slurm_text: str, run_dir: Path, slurm_dir: Path, hub_url: str = "") -> str:
    users = "\n".join(f"    {u:<6} password {u}-demo   {what}" for u, what in DEMO_USERS)
    hub = (f"""
  JupyterHub                {hub_url}/hub/login
    log in as alice / alice-demo, pick a profile and projects, start; JupyterLab's XNAT
    panel browses the scope, "Train on secure HPC..." submits examples/train_example.py
    (profile "Slurm, 1 CPU, data mounted": a Slurm job that sees the scope under XNAT_DATA)
    project owners (e.g. dave / dave-demo): {hub_url}/services/xnat-hpc-governance/owner
    XNAT's "Start Jupyter" (the JupyterHub plugin's API, as XNAT's UI calls it):
      curl -u bob:bob-demo -H 'Content-Type: application/json' -X POST \\
        {xnat_url}/xapi/jupyterhub/users/bob/server/ecg -d '{{"username": "bob",
        "servername": "ecg", "xsiType": "xnat:projectData", "itemId": "CARDIO_ECG",
        "itemLabel": "CARDIO_ECG", "projectId": "CARDIO_ECG", "eventTrackingId": "demo-1",
        "computeEnvironmentConfigId": 1, "hardwareConfigId": 1}}'
      then {xnat_url}/xapi/event_tracking/demo-1 and {hub_url}/hub/home
""" if hub_url else "")
    return f"""
xnat-hpc-hub demo is running (everything on 127.0.0.1; run directory {run_dir})
{hub}
  XNAT development server   {xnat_url}
    try: curl -u alice:alice-demo {xnat_url}/data/projects?format=json
    Python: xnat.connect("{xnat_url}", user="alice", password="alice-demo")
  demo users (development server only — fixed passwords):
{users}

{slurm_text}
    try: sbatch -p secure --wrap 'hostname'; squeue

Logs: {run_dir}/devxnat.log, {run_dir}/jupyterhub.log, {slurm_dir}/log/; audit trail: {run_dir}/audit/audit.db (check: xnat-hpc-hub audit verify --store {run_dir}/audit/audit.db)
Press Ctrl-C to stop.
"""


def run_demo(args: argparse.Namespace) -> int:
    run_dir: Path = private_dir(args.run_dir)
    slurm = SlurmDev(args.slurm_run_dir)
    slurm_was_up = slurm.is_up() if not slurm.missing_programs() else False
    print("starting the local Slurm ...", flush=True)
    statuses = slurm.up()
    print("starting the XNAT development server (first run generates the demo archive) ...",
          flush=True)
    plugin = plugin_secrets(run_dir)
    hub_url = f"http://127.0.0.1:{args.hub_port}"
    xnat_proc, xnat_url = start_devxnat(
        run_dir / "xnat", args.xnat_port, args.demo_size, run_dir / "devxnat.log",
        extra_args=plugin.devxnat_args(hub_url) + ("--jupyterhub-cull-every", str(DEMO_CULL_EVERY)),
    )
    hub_proc = None
    try:
        unix_users = [args.unix_accounts.replace("{name}", u) for u, _ in DEMO_USERS if u != "admin"]
        created = ensure_accounts(unix_users)
        if created:
            print(f"created Unix accounts for the demo users: {', '.join(created)}", flush=True)
        for user in unix_users:  # the bundled example training script, in each demo home
            try:
                install_file(user, EXAMPLE_SCRIPT, "examples/train_example.py")
            except XnatHpcError as e:  # e.g. a symbolic link where the script goes: left alone
                print(f"warning: {e.message}", file=sys.stderr, flush=True)
        archive = run_dir / "xnat" / "archive"
        prepare_shared_dirs(archive, args.staging_dir)
        print("starting JupyterHub ...", flush=True)
        hub_proc, hub_url = start_hub(run_dir, xnat_url, archive, args.hub_port, plugin,
                                      staging=args.staging_dir, unix_accounts=args.unix_accounts)
        text = format_status(statuses, slurm.cfg.run_dir)
        print(summary(xnat_url, text, run_dir, slurm.cfg.run_dir, hub_url), flush=True)
        if not args.exit_when_ready:
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            try:
                while not stop.wait(1):
                    for name, proc in (("devxnat", xnat_proc), ("JupyterHub", hub_proc)):
                        if proc.poll() is not None:
                            print(f"{name} exited (code {proc.returncode}); stopping", file=sys.stderr)
                            return 1
            except KeyboardInterrupt:
                pass
    finally:
        print("stopping ...", flush=True)
        for proc, grace in ((hub_proc, HUB_STOP_GRACE), (xnat_proc, 20)):
            if proc is not None:
                stop_tree(proc, grace)
        if not slurm_was_up:
            slurm.down(stop_munge=False)
    return 0
