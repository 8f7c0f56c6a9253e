"""Start a batch-spawned single-user server: fetch its secrets from the hub, then exec it.

Run by the Slurm backend's batch script::

    python -m xnat_bridge.launch -- jupyterhub-singleuser [ARGS...]

The job's environment holds no token: only a one-time code
(``XNAT_HPC_BOOTSTRAP``). This picks a free port, posts ``{code, job_id,
port}`` to the hub (``$JUPYTERHUB_API_URL/xnat-hpc/bootstrap``), puts the
answered secrets (hub API token, XNAT alias token) into its own environment
only, sets the port in ``JUPYTERHUB_SERVICE_URL`` and replaces itself with the
server command. Nothing is written to disk.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import urllib.error
import urllib.request
from urllib.parse import urlsplit, urlunsplit

CODE_ENV = "XNAT_HPC_BOOTSTRAP"


def free_port(host: str = "") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    return urlunsplit(parts._replace(netloc=f"{host}:{port}"))


def claim(api_url: str, code: str, job_id: str, port: int, timeout: float = 30) -> dict[str, str]:
    req = urllib.request.Request(
        api_url.rstrip("/") + "/xnat-hpc/bootstrap",
        data=json.dumps({"code": code, "job_id": job_id, "port": port}).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            env = json.load(resp).get("env", {})
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"xnat-hpc launch: the hub refused this job's bootstrap (HTTP {exc.code}); "
                         "was the server already started, or did the spawn time out?") from None
    except (OSError, ValueError) as exc:
        raise SystemExit(f"xnat-hpc launch: cannot reach the hub at {api_url}: {exc}") from None
    return {str(k): str(v) for k, v in env.items()}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise SystemExit("usage: python -m xnat_bridge.launch -- COMMAND [ARGS...]")
    code = os.environ.pop(CODE_ENV, "")
    job_id = os.environ.get("SLURM_JOB_ID", "")
    api_url = os.environ.get("JUPYTERHUB_API_URL", "")
    if not (code and job_id and api_url):
        raise SystemExit(f"xnat-hpc launch: needs {CODE_ENV}, SLURM_JOB_ID and JUPYTERHUB_API_URL")
    service_url = os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:8888/")
    bind_host = urlsplit(service_url).hostname or ""
    port = free_port("" if bind_host in ("0.0.0.0", "") else bind_host)
    os.environ.update(claim(api_url, code, job_id, port))
    os.environ["JUPYTERHUB_SERVICE_URL"] = with_port(service_url, port)
    exe = shutil.which(argv[0]) or argv[0]
    os.execv(exe, argv)


if __name__ == "__main__":
    main()
