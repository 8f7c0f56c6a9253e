"""Start a batch-spawned single-user server: fetch its secrets from the hub, then exec it.

Run by the Slurm backend's batch script::

    python -m xnat_bridge.launch -- jupyterhub-singleuser [ARGS...]

The job's environment holds no token: only a one-time code
(``XNAT_HPC_BOOTSTRAP``). This picks a free port, posts ``{code, job_id,
port}`` to the hub (``$JUPYTERHUB_API_URL/xnat-hpc/bootstrap``), puts the
answered secrets (hub API token, XNAT alias token) into its own environment
only, sets the port in ``JUPYTERHUB_SERVICE_URL`` and replaces itself with the
server command. Nothing is written to disk.

The code and the secrets travel only over a channel nobody else can read:
``https`` with the certificate verified — against JupyterHub's internal CA when
the hub gives one (``JUPYTERHUB_SSL_CLIENT_CA``, with ``JUPYTERHUB_SSL_CERTFILE``
/ ``JUPYTERHUB_SSL_KEYFILE`` as the client certificate, ``c.JupyterHub.internal_ssl``),
else the system's CAs — or plain ``http`` to a loopback address only (a
one-node development cluster). Plain ``http`` to any other host is refused
before anything is sent, saying how to fix it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

CODE_ENV = "XNAT_HPC_BOOTSTRAP"
#: JupyterHub's internal_ssl files, as it hands them to a single-user server
SSL_CA_ENV, SSL_CERT_ENV, SSL_KEY_ENV = ("JUPYTERHUB_SSL_CLIENT_CA", "JUPYTERHUB_SSL_CERTFILE",
                                         "JUPYTERHUB_SSL_KEYFILE")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def channel_problem(api_url: str) -> str:
    """Why secrets may not be fetched from *api_url*; "" when they may (pure)."""
    parts = urlsplit(api_url)
    if parts.scheme == "https":
        return ""
    if parts.scheme == "http" and is_loopback(parts.hostname or ""):
        return ""
    return (f"xnat-hpc launch: refusing to fetch this server's secrets from {api_url} because it is "
            "not https and not a loopback address, so anyone on the network could read them; give "
            "the hub an https API URL (c.JupyterHub.internal_ssl = True, or an https "
            "c.JupyterHub.hub_connect_url)")


def tls_context(env: Mapping[str, str]) -> ssl.SSLContext:
    """A verifying TLS context: JupyterHub's internal CA (and client certificate) when the
    environment names them, else the system's CAs. Hostnames are checked either way."""
    ca = env.get(SSL_CA_ENV) or None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    cert, key = env.get(SSL_CERT_ENV), env.get(SSL_KEY_ENV)
    if cert and key:
        ctx.load_cert_chain(cert, key)
    return ctx


def free_port(host: str = "") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    return urlunsplit(parts._replace(netloc=f"{host}:{port}"))


def claim(api_url: str, code: str, job_id: str, port: int, timeout: float = 30,
          env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Trade the one-time *code* for the server's secrets (see the module docstring for
    which channels are accepted); *env*: where the internal_ssl file names are read."""
    problem = channel_problem(api_url)
    if problem:
        raise SystemExit(problem)
    try:
        context = tls_context(os.environ if env is None else env)
    except (OSError, ssl.SSLError) as exc:
        raise SystemExit(f"xnat-hpc launch: cannot load the hub's TLS files ({SSL_CA_ENV}, "
                         f"{SSL_CERT_ENV}, {SSL_KEY_ENV}): {exc}") from None
    req = urllib.request.Request(
        api_url.rstrip("/") + "/xnat-hpc/bootstrap",
        data=json.dumps({"code": code, "job_id": job_id, "port": port}).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    # no redirects (one could carry the code elsewhere, and off https); no proxy for
    # loopback http (a proxy would take it off this host)
    handlers = [urllib.request.HTTPSHandler(context=context), _NoRedirect]
    if urlsplit(api_url).scheme == "http":
        handlers.append(urllib.request.ProxyHandler({}))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(req, timeout=timeout) as resp:
            env_out = json.load(resp).get("env", {})
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"xnat-hpc launch: the hub refused this job's bootstrap (HTTP {exc.code}); "
                         "was the server already started, or did the spawn time out?") from None
    except (OSError, ValueError) as exc:
        raise SystemExit(f"xnat-hpc launch: cannot reach the hub at {api_url}: {exc}") from None
    return {str(k): str(v) for k, v in env_out.items()}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


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
