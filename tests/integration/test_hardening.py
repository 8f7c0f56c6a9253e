"""Hardening for a multi-user site (issue 12, findings 1, 3, 4 and 7), tried as an
attacker would, on real components: a real JupyterHub against a real devxnat,
another Unix account through ``runuser``, the real launcher of Slurm servers.

* token secrets never travel in a URL the hub sends, never reach devxnat's log,
  and devxnat's log, state and data directory are closed to other accounts;
* an XNAT account differing only in case never becomes another hub user, names are
  mapped only explicitly, system accounts are refused;
* the demo's account helper never follows a link a user planted in their home;
* the launcher refuses plain HTTP to a hub that is not on loopback and verifies TLS
  against JupyterHub's internal CA;
* the owners' page shows an owner only their part of a start spanning projects of
  different owners.
"""

from __future__ import annotations

import datetime
import html
import http.server
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from devstack.accounts import ensure_accounts, install_file
from tests.fixtures.hub import free_privileged_port, start_hub
from devstack.hubconfig import governance_hub_config
from tests.fixtures.spawn import governance_token_file, make_hub
from xnat_bridge.errors import PermissionDenied

pytestmark = pytest.mark.devxnat

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "train_example.py"
#: a normal (uid >= 1000) account with a home, playing the other researcher
MALLORY = "xnathpc-mallory"

AUTH_CONFIG = '''
c.JupyterHub.authenticator_class = "xnat"
c.XnatAuthenticator.xnat_url = "{url}"
c.XnatAuthenticator.auth_refresh_age = 1
c.JupyterHub.load_roles.append({{"name": "tests-auth-state", "scopes": ["admin:auth_state", "admin:users"], "services": ["tests"]}})
'''


def as_other(*argv: str, user: str = MALLORY) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", user, "--", *argv], capture_output=True, text=True,
                          check=False, timeout=30)


@pytest.fixture(scope="module")
def mallory():
    ensure_accounts([MALLORY])
    return MALLORY


@pytest.fixture
def open_dir():
    """A directory every account may traverse (pytest's own are root-only, which would
    make an attacker test pass for the wrong reason)."""
    path = Path(tempfile.mkdtemp(prefix="xnat-hpc-hardening-", dir="/var/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# -- tokens -----------------------------------------------------------------------------

class RecordingProxy:
    """A TCP proxy in front of devxnat that keeps every byte the hub sends to it."""

    def __init__(self, target: str):
        self.target = ("127.0.0.1", int(target.rsplit(":", 1)[1]))
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.sent: list[bytearray] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            buf = bytearray()
            self.sent.append(buf)
            threading.Thread(target=self._pipe, args=(client, upstream, buf), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, None), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, record: bytearray | None) -> None:
        try:
            while chunk := src.recv(65536):
                if record is not None:
                    record.extend(chunk)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def request_lines(self) -> list[str]:
        lines = []
        for buf in list(self.sent):
            lines += [m.decode(errors="replace") for m in
                      re.findall(rb"(?:GET|POST|PUT|DELETE|HEAD|PATCH) \S+ HTTP/1\.[01]", bytes(buf))]
        return lines

    def close(self) -> None:
        self._stop = True
        self.server.close()


def test_hub_never_sends_a_token_secret_in_a_url_and_devxnat_never_logs_one(devxnat, tmp_path):
    proxy = RecordingProxy(devxnat.url)
    hub = start_hub(tmp_path / "hub", AUTH_CONFIG.format(url=proxy.url)
                    + "c.XnatAuthenticator.token_renew_margin = 1e9\n")  # renew at every refresh
    try:
        s, r = hub.login("alice", "alice-demo")
        assert r.status_code == 302, hub.log()[-2000:]
        secrets_seen = {hub.api("GET", "/users/alice").json()["auth_state"]["xnat_token"]["secret"]}
        for _ in range(3):  # refreshes: validate, renew (issue with the old token), invalidate the old
            time.sleep(1.3)
            assert s.get(f"{hub.url}/hub/api/user", timeout=30).status_code == 200
            secrets_seen.add(hub.api("GET", "/users/alice").json()["auth_state"]["xnat_token"]["secret"])
        assert len(secrets_seen) >= 2, "the token was never renewed"
    finally:
        hub.stop()
        proxy.close()
    lines = proxy.request_lines()
    raw = b"".join(bytes(b) for b in proxy.sent)
    log = devxnat.log()
    for secret in secrets_seen:
        assert not [line for line in lines if secret in line], "a token secret in a request line"
        assert secret.encode() not in raw, "a token secret sent in clear (path, query or body)"
        assert secret not in log, "a token secret in devxnat's log"
    # checked by authenticating with the token, ended by its alias (XNAT's own API)
    assert any(line.startswith("GET /xapi/users/username ") for line in lines), lines
    assert any("/data/services/tokens/invalidate/" in line for line in lines), lines


def test_devxnat_log_masks_secrets_of_clients_that_put_them_in_urls(devxnat):
    alias, secret = devxnat.token("bob")
    assert devxnat.get(f"/data/services/tokens/validate/{alias}/{secret}", None).json() == {"valid": "bob"}
    devxnat.get(f"/data/services/tokens/validate/{alias}/{secret}x", None)
    devxnat.get(f"/data/services/tokens/invalidate/{alias}/{secret}", alias, secret)
    devxnat.get("/data/projects?format=json&password=pw-in-a-query-1234", None)
    time.sleep(0.3)
    log = devxnat.log()
    assert secret not in log and "pw-in-a-query-1234" not in log
    assert f"/data/services/tokens/validate/{alias}/[redacted]" in log  # still useful for debugging


def test_devxnat_log_state_and_data_dir_closed_to_other_accounts(devxnat_factory, open_dir, mallory):
    server = devxnat_factory(open_dir / "data")
    server.token("alice")  # something in the log and the database
    time.sleep(0.3)
    db = server.data_dir / "devxnat.sqlite3"
    assert server.log_path.stat().st_mode & 0o777 == 0o600
    assert server.data_dir.stat().st_mode & 0o777 == 0o700
    for f in server.data_dir.glob("devxnat.sqlite3*"):
        assert f.stat().st_mode & 0o777 == 0o600, f
    for argv in (["cat", str(server.log_path)], ["cat", str(db)], ["ls", str(server.data_dir)]):
        denied = as_other(*argv)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, argv


# -- names --------------------------------------------------------------------------------

# logins only, no server: the hub names the machine's own accounts (a login named like the system
# account ``daemon`` must meet ``daemon``, not this session's throwaway ``x…-daemon``)
NAMES_CONFIG = (AUTH_CONFIG + 'c.XnatAuthenticator.username_map = {{"Bob": "robert"}}\n'
                + 'c.UnixAccounts.name_template = "{{name}}"\n')


@pytest.fixture(scope="module")
def names_hub(tmp_path_factory):
    """A private devxnat with accounts a real site could have (``ALICE`` beside ``alice``,
    ``Bob`` mapped to ``robert``, an account ``robert``, one named like a system account)
    and a hub in front of it."""
    from tests.fixtures.devxnat import start_devxnat

    server = start_devxnat(tmp_path_factory.mktemp("names") / "data")
    for name in ("ALICE", "Bob", "robert", "daemon"):
        r = server.request("POST", "/xapi/users", "admin", json={"username": name, "password": f"{name}-pw"})
        assert r.status_code == 201, r.text
    directory = tmp_path_factory.mktemp("names-hub")
    # the owners' pages: the governance service, which asks XNAT about the visitor's XNAT login
    governance = governance_hub_config(token_file=governance_token_file(directory), pages_port=free_privileged_port())
    hub = start_hub(directory, NAMES_CONFIG.format(url=server.url) + governance)
    yield hub, server
    hub.stop()
    server.stop()


def test_xnat_account_differing_only_in_case_cannot_become_alice(names_hub):
    from hub_ext.names import hub_name

    hub, _ = names_hub
    s, r = hub.login("alice", "alice-demo")
    assert r.status_code == 302
    s2, r = hub.login("ALICE", "ALICE-pw")  # logs in, but as a hub user of its own
    assert r.status_code == 302, hub.log()[-2000:]
    me = s2.get(f"{hub.url}/hub/api/user", timeout=10, headers={"Referer": f"{hub.url}/hub/home"}).json()
    assert me["name"] == hub_name("ALICE") != "alice" and me["name"].startswith("alice--")
    assert hub.api("GET", f"/users/{me['name']}").json()["auth_state"]["xnat_user"] == "ALICE"
    assert hub.api("GET", "/users/ALICE").status_code == 404  # never the raw login
    # the real alice is still alice, her auth_state untouched
    assert hub.api("GET", "/users/alice").json()["auth_state"]["xnat_user"] == "alice"


def test_names_are_mapped_one_to_one_and_a_mapped_name_is_never_taken(names_hub):
    from hub_ext.names import hub_name

    hub, _ = names_hub
    s, r = hub.login("Bob", "Bob-pw")  # mapped by the admin
    assert r.status_code == 302, hub.log()[-2000:]
    assert hub.api("GET", "/users/robert").json()["auth_state"]["xnat_user"] == "Bob"
    s, r = hub.login("robert", "robert-pw")  # the XNAT account robert may not take Bob's hub name
    assert r.status_code == 302, hub.log()[-2000:]
    derived = hub_name("robert", {"Bob": "robert"})
    assert derived.startswith("robert--")
    assert hub.api("GET", f"/users/{derived}").json()["auth_state"]["xnat_user"] == "robert"
    assert hub.api("GET", "/users/robert").json()["auth_state"]["xnat_user"] == "Bob"


def test_a_mapped_owner_sees_their_projects_under_their_xnat_login(names_hub):
    """The owners' page asks XNAT about the visitor's XNAT login (``Bob``), not their hub name
    (``robert``, another XNAT account): Bob owns CARDIO_ECG, robert owns nothing."""
    hub, server = names_hub
    st = server.store()
    try:
        st.set_member("CARDIO_ECG", "Bob", "Owners")
        s, r = hub.login("Bob", "Bob-pw")
        assert r.status_code == 302, hub.log()[-2000:]
        page = s.get(f"{hub.url}/hub/xnat-hpc/owner?format=json", timeout=60)
        assert page.status_code == 200, page.text[:1000]
        assert "CARDIO_ECG" in page.json()["owned"]
    finally:
        st.remove_member("CARDIO_ECG", "Bob")
        st.close()


def test_a_system_account_name_is_refused_at_login(names_hub):
    hub, _ = names_hub
    s, r = hub.login("daemon", "daemon-pw")  # Unix uid 1
    assert r.status_code == 403
    assert "system account (uid 1," in html.unescape(r.text)
    assert hub.api("GET", "/users/daemon").status_code == 404


# -- the demo's account helper -----------------------------------------------------------

def test_demo_helper_never_follows_a_link_planted_in_a_home(mallory, open_dir):
    target_dir = open_dir / "root-only"
    target_dir.mkdir(mode=0o755)
    target = target_dir / "made-by-root"
    home = Path(os.path.expanduser(f"~{mallory}"))
    remove(home / "examples")
    # mallory plants a dangling link where the demo puts the example script
    assert as_other("mkdir", "-p", str(home / "examples")).returncode == 0
    assert as_other("ln", "-s", str(target), str(home / "examples" / "train_example.py")).returncode == 0
    with pytest.raises(PermissionDenied) as refused:
        install_file(mallory, EXAMPLE, "examples/train_example.py")
    assert f"~{mallory}/examples/train_example.py is a symbolic link" in refused.value.message
    assert not os.path.lexists(target), "the helper created a file at the link's target"
    assert (home / "examples" / "train_example.py").is_symlink()  # left as it was
    # a link in place of the directory is not followed either
    shutil.rmtree(home / "examples")
    assert as_other("ln", "-s", str(target_dir), str(home / "examples")).returncode == 0
    with pytest.raises(PermissionDenied, match=f"~{mallory}/examples is a symbolic link"):
        install_file(mallory, EXAMPLE, "examples/train_example.py")
    assert list(target_dir.iterdir()) == []
    # without links: installed, the user's, and not replaced the next time
    (home / "examples").unlink()
    assert install_file(mallory, EXAMPLE, "examples/train_example.py") is True
    st = (home / "examples" / "train_example.py").stat()
    assert (st.st_uid, st.st_mode & 0o777) == (os.stat(home).st_uid, 0o644)
    assert (home / "examples").stat().st_uid == os.stat(home).st_uid
    assert install_file(mallory, EXAMPLE, "examples/train_example.py") is False
    remove(home / "examples")


def remove(path: Path) -> None:
    if path.is_symlink():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


# -- the launcher of Slurm servers ---------------------------------------------------------

class Recorder(http.server.BaseHTTPRequestHandler):
    """Answers the bootstrap API and remembers every request."""

    seen: list[str] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        type(self).seen.append(f"{self.path} {body.decode(errors='replace')}")
        answer = json.dumps({"env": {"LAUNCH_MARK": "secrets-arrived"}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


def serve(host: str, context: ssl.SSLContext | None = None):
    handler = type("Rec", (Recorder,), {"seen": []})
    httpd = http.server.ThreadingHTTPServer((host, 0), handler)
    if context is not None:
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, handler


def launch(api_url: str, **env) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB_SSL")}
    full.update({"XNAT_HPC_BOOTSTRAP": "one-time-code-123", "SLURM_JOB_ID": "42",
                 "JUPYTERHUB_API_URL": api_url, "JUPYTERHUB_SERVICE_URL": "http://127.0.0.1:8888/",
                 **env})
    return subprocess.run([sys.executable, "-m", "xnat_bridge.launch", "--", "sh", "-c",
                           'echo "mark=$LAUNCH_MARK"'], env=full, capture_output=True, text=True,
                          timeout=60, check=False)


def non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.123", 9))  # no packet is sent: only picks the outgoing address
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


def test_launch_refuses_plain_http_to_a_hub_off_loopback():
    addr = non_loopback_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    httpd, handler = serve(addr)
    try:
        done = launch(f"http://{addr}:{httpd.server_address[1]}/hub/api")
        assert done.returncode != 0
        assert "not https" in done.stderr and "internal_ssl" in done.stderr, done.stderr
        assert handler.seen == [], "the one-time code was sent over plain HTTP"
        local, local_handler = serve("127.0.0.1")  # loopback (one-node cluster) stays allowed
        try:
            ok = launch(f"http://127.0.0.1:{local.server_address[1]}/hub/api")
            assert ok.returncode == 0 and "mark=secrets-arrived" in ok.stdout, ok.stderr
            assert local_handler.seen and "one-time-code-123" in local_handler.seen[0]
        finally:
            local.shutdown()
    finally:
        httpd.shutdown()


def _ca_and_server_cert(tmp: Path) -> tuple[Path, Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(subject, issuer, key, sign_key, *, ca: bool):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            import ipaddress

            b = b.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return b.sign(sign_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test internal CA")])
    ca = cert(ca_name, ca_name, ca_key, ca_key, ca=True)
    srv = cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hub")]), ca_name, key, ca_key, ca=False)
    paths = tmp / "ca.pem", tmp / "hub.pem", tmp / "hub.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(srv.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def test_launch_verifies_tls_against_the_hubs_internal_ca(tmp_path):
    ca, cert, key = _ca_and_server_cert(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    httpd, handler = serve("127.0.0.1", context)
    url = f"https://127.0.0.1:{httpd.server_address[1]}/hub/api"
    try:
        unknown = launch(url)  # a certificate no trusted CA signed: nothing is sent
        assert unknown.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in unknown.stderr, unknown.stderr
        assert handler.seen == []
        trusted = launch(url, JUPYTERHUB_SSL_CLIENT_CA=str(ca))  # JupyterHub's internal_ssl CA
        assert trusted.returncode == 0 and "mark=secrets-arrived" in trusted.stdout, trusted.stderr
        assert len(handler.seen) == 1 and handler.seen[0].startswith("/hub/api/xnat-hpc/bootstrap ")
    finally:
        httpd.shutdown()


# -- the owners' page -------------------------------------------------------------------------

def test_owner_page_shows_only_the_owners_part_of_a_multi_project_start(shared_devxnat, public_dir,
                                                                        tmp_path):
    staging = public_dir / "staging-owner"
    staging.mkdir(exist_ok=True)
    hub = make_hub(tmp_path / "hub", shared_devxnat, "xnat", staging=staging)
    try:
        hub.login("alice", "alice-demo")  # Owner of NEURO_MRI, Member of SLEEP_EEG (dave owns it)
        r = hub.api("POST", "/users/alice/servers/",
                    json={"profile": "local-owners", "projects": ["NEURO_MRI", "SLEEP_EEG"]})
        assert r.status_code == 403, r.text  # refused (owners-only profile), audited with both projects
        s, _ = hub.login("dave", "dave-demo")
        page = s.get(f"{hub.url}/hub/xnat-hpc/owner?format=json", timeout=30)
        mine = [e for e in page.json()["events"] if e["user"] == "alice"]
        assert mine and all(e["items"] == ["SLEEP_EEG"] for e in mine), mine
        assert "NEURO_MRI" not in page.text
        assert "NEURO_MRI" not in s.get(f"{hub.url}/hub/xnat-hpc/owner", timeout=30).text
        s, _ = hub.login("alice", "alice-demo")  # and alice sees her project's part only
        alice = s.get(f"{hub.url}/hub/xnat-hpc/owner?format=json", timeout=30)
        mine = [e for e in alice.json()["events"] if e["user"] == "alice"]
        assert mine and all(e["items"] == ["NEURO_MRI"] for e in mine), mine
        assert "SLEEP_EEG" not in alice.text
    finally:
        hub.stop()
