"""The governance service's process (:mod:`xnat_hpc_governance`, issue 19): the revocation
re-check runs beside the hub, reading the hub's configuration file and acting on the hub only
through its REST API (the in-process ``MockHub`` of :mod:`tests.fixtures.mockhub`).
``tests/integration/test_owner_access.py`` has a real hub start it as a managed service."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys

import pytest
import pytest_asyncio
from tornado.httpclient import AsyncHTTPClient
from traitlets.config import Config

from hub_ext.hub_rest import SERVICE_NAME, managed_service, register_governance
from tests.fixtures.hub import free_privileged_port
from tests.fixtures.mockhub import mock_hub
from xnat_hpc_governance.app import GovernanceService, ServiceConfigError, main

in_process = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture
def tmp_path(short_tmp_path):  # its sockets' paths must stay short (tests/conftest.py)
    return short_tmp_path


DEADLINE = 30.0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub():
    async with mock_hub(Config()) as h:
        yield h


def config_file(hub, tmp_path, extra: str = "") -> str:
    """A hub configuration as a site writes it: the governance token file, XNAT's address."""
    path = tmp_path / "jupyterhub_config.py"
    path.write_text(f'''c = get_config()  # noqa
c.XnatGovernance.token_file = "{hub.config.XnatGovernance.token_file}"
c.XnatAuthenticator.xnat_url = "http://xnat.invalid"
c.OwnerAccess.recheck_interval = 3600
c.XnatGovernance.service_socket = "{tmp_path}/g.sock"
c.XnatGovernance.pages_url = "http://127.0.0.1:{free_privileged_port()}"
{extra}''')
    return str(path)


def test_without_the_hubs_configuration_it_says_what_to_pass(capsys, tmp_path):
    for argv, says in (([], "--config=/path/to/jupyterhub_config.py"),
                       ([f"--config={tmp_path / 'absent.py'}"], "no such file")):
        with pytest.raises(SystemExit) as ended:
            main(argv)
        assert ended.value.code == 2 and says in capsys.readouterr().err


def services(c) -> list:
    value = c.JupyterHub.services
    return value.get_value([]) if hasattr(value, "get_value") else value


def test_registered_with_its_config_file_the_hub_starts_it(tmp_path):
    token = tmp_path / "token"
    token.write_text("t" * 64 + "\n")
    os.chmod(token, 0o600)
    hub_config = tmp_path / "jupyterhub_config.py"
    hub_config.write_text("")
    c = Config()
    register_governance(c, str(token), config_file=str(hub_config))
    [service] = [s for s in services(c) if s["name"] == SERVICE_NAME]
    assert service["command"] == [sys.executable, "-m", "xnat_hpc_governance", f"--config={hub_config}"]
    assert service["api_token"] == "t" * 64
    # the servers' calls reach it on a socket; the owners' pages through the proxy, on a privileged port
    assert service["url"] == "http://127.0.0.1:981" and service["oauth_no_confirm"] is True
    assert set(service["environment"]) <= {"XNAT_HOST", "PYTHONPATH"}
    assert managed_service("rel/cfg.py", "python3")["command"][-1] == f"--config={os.path.abspath('rel/cfg.py')}"
    c = Config()
    register_governance(c, str(token))  # unmanaged: the site runs the process itself
    assert "command" not in services(c)[0]
    from hub_ext.hub_rest import GovernanceNotConfigured

    with pytest.raises(GovernanceNotConfigured, match="config_file=__file__"):
        register_governance(Config(), str(token), config_file=str(tmp_path / "absent.py"))


@in_process
async def test_it_reads_the_hubs_file_and_its_re_check_stops_a_lost_server_through_the_api(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_API_URL", hub.base + "api")
    monkeypatch.delenv("JUPYTERHUB_API_TOKEN", raising=False)  # run by hand: the token file
    app = GovernanceService()
    app.initialize([f"--config={config_file(hub, tmp_path)}"])
    assert app.config.OwnerAccess.recheck_interval == 3600
    client = await app.hub_client()
    assert client.api_url == hub.base.rstrip("/") + "/api"
    watch = app.watch(client)
    assert watch.interval == 3600 and watch._xnat_url() == "http://xnat.invalid"

    token = hub.personal_token("svc-lost")
    code, _, r = await hub.request("POST", "api/users/svc-lost/servers/w", token=token, body={"projects": ["GONE"]})
    assert code in (201, 202), r.body
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not hub.app.users["svc-lost"].spawners["w"].ready:
        assert loop.time() < deadline
        await asyncio.sleep(0.05)

    async def readable(user):  # XNAT's answer: svc-lost reads nothing now; others unknown
        return set() if user.name == "svc-lost" else None

    class Audit:
        records: list = []

        async def record(self, user, action, outcome, **kw):
            self.records.append((user, action))

    class Ledger:
        def add_notice(self, user, text, now=None, *, key=''):  # the user's hub pages: not shown here
            pass

        def ledger_jobs(self, **kw):
            return []

    watch.permissions, watch._audit_log, watch.ledger = readable, Audit(), Ledger()
    [(who, project, report)] = await watch.check_once()
    assert (who, project, report.stopped) == ("svc-lost", "GONE", ["w"])
    assert ("svc-lost", "revoke") in Audit.records
    assert not hub.app.users["svc-lost"].spawners["w"].active


@in_process
async def test_the_hubs_token_wins_and_a_stop_ends_it(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_API_URL", hub.base + "api")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", hub.governance_token)
    app = GovernanceService()
    path = config_file(hub, tmp_path, "c.XnatGovernance.token_file = ''")
    app.initialize([f"--config={path}"])
    assert (await app.hub_client()).running_servers  # no token file needed: the hub gave one
    stop = asyncio.Event()
    stop.set()
    await asyncio.wait_for(app.run(stop), DEADLINE)  # starts the loop, ends it, returns


@in_process
async def test_the_process_stops_on_the_hubs_sigterm_and_names_itself_in_the_log(hub, tmp_path):
    env = {**os.environ, "JUPYTERHUB_API_URL": hub.base + "api", "JUPYTERHUB_API_TOKEN": hub.governance_token,
           "JUPYTERHUB_SERVICE_NAME": SERVICE_NAME, "PYTHONPATH": os.getcwd()}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "xnat_hpc_governance", f"--config={config_file(hub, tmp_path)}",
        stderr=asyncio.subprocess.PIPE, env=env)
    lines = []
    try:
        while True:  # until it says the re-check runs
            line = (await asyncio.wait_for(proc.stderr.readline(), DEADLINE)).decode()
            assert line, "".join(lines)
            lines.append(line)
            if "revocation re-check every 3600 s" in line:
                break
        assert "xnat-hpc-governance xnat_hpc_governance.revocation_watch]" in line
        # the owners' pages answer on their privileged port: a stranger is sent to the hub's OAuth
        [port] = re.findall(r"owners' pages on http://127\.0\.0\.1:(\d+)/", "".join(lines))
        assert int(port) < 1024
        r = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/services/{SERVICE_NAME}/owner",
                                          follow_redirects=False, raise_error=False)
        assert r.code == 302 and "/hub/api/oauth2/authorize?" in r.headers["Location"]
        proc.send_signal(signal.SIGTERM)
        rest = (await asyncio.wait_for(proc.stderr.read(), DEADLINE)).decode()
        assert await asyncio.wait_for(proc.wait(), DEADLINE) == 0, rest
        assert "stopping (0 re-check rounds done)" in rest
        assert hub.governance_token not in "".join(lines) + rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_the_owners_pages_refuse_a_port_any_account_could_take(monkeypatch):
    """The proxy routes owners' browsers (with their session cookie for the service) to the
    pages' port: a port any account may bind could be taken while the service restarts."""
    from hub_ext.hub_rest import XnatGovernance, unprivileged_port_start

    monkeypatch.delenv("JUPYTERHUB_SERVICE_URL", raising=False)
    app = GovernanceService()
    assert app.pages_address(XnatGovernance()) == ("127.0.0.1", 981)  # the default: privileged
    with pytest.raises(ServiceConfigError) as refused:
        app.pages_address(XnatGovernance(pages_url="http://127.0.0.1:10101"))
    assert "any account on this machine may take" in refused.value.message
    start = unprivileged_port_start()  # 1024 unless the machine changed it
    assert "allow_unprivileged_pages_port" in refused.value.message and f"below {start}" in refused.value.message
    # Kubernetes: the proxy reaches the hub's Service name; the pod's own namespace
    pod = XnatGovernance(pages_url="http://hub:10101", pages_ip="0.0.0.0", allow_unprivileged_pages_port=True)
    assert app.pages_address(pod) == ("0.0.0.0", 10101)
    # the hub's word for the service's URL (register_governance set it from the same setting) wins
    monkeypatch.setenv("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:982")
    assert app.pages_address(XnatGovernance(pages_url="http://127.0.0.1:10101")) == ("127.0.0.1", 982)
    from traitlets import TraitError

    for bad in ("https://127.0.0.1:981", "http://127.0.0.1", "http://127.0.0.1:981/pages", "unix:///x"):
        with pytest.raises(TraitError, match="c.XnatGovernance.pages_url"):
            XnatGovernance(pages_url=bad)


def test_a_config_error_is_a_clear_refusal(tmp_path, monkeypatch):
    monkeypatch.delenv("JUPYTERHUB_API_URL", raising=False)
    monkeypatch.delenv("JUPYTERHUB_API_TOKEN", raising=False)
    path = tmp_path / "c.py"
    path.write_text("c = get_config()  # noqa\n")
    app = GovernanceService()
    app.initialize([f"--config={path}"])
    with pytest.raises(ServiceConfigError, match="c.XnatGovernance.hub_api_url"):
        asyncio.run(app.hub_client())


def test_a_service_the_hub_started_never_outlives_the_hub(hub, tmp_path):
    """JupyterHub starts managed services in sessions of their own: a hub killed before it could
    stop them (SIGKILL, a crash) used to leave them running. The service asks Linux for a
    signal when its parent ends and stops on it. Here a stand-in parent starts it as the hub
    does and is killed with SIGKILL."""
    import subprocess
    import time

    env = {**os.environ, "JUPYTERHUB_API_URL": hub.base + "api", "JUPYTERHUB_API_TOKEN": hub.governance_token,
           "JUPYTERHUB_SERVICE_NAME": SERVICE_NAME, "PYTHONPATH": os.getcwd()}
    log = tmp_path / "service.log"
    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time; "
        f"p = subprocess.Popen([sys.executable, '-m', 'xnat_hpc_governance', '--config={config_file(hub, tmp_path)}'], "
        f"stderr=open({str(log)!r}, 'w'), start_new_session=True); print(p.pid, flush=True); time.sleep(600)")],
        env=env, stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        deadline = time.monotonic() + DEADLINE
        while "revocation re-check every" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        parent.kill()
        parent.wait()
        while os.path.exists(f"/proc/{child}") and "zombie" not in _state(child):
            assert time.monotonic() < deadline + DEADLINE, f"the service {child} outlived its parent"
            time.sleep(0.05)
        assert "stopping (0 re-check rounds done)" in log.read_text()
    finally:
        if os.path.exists(f"/proc/{child}"):
            os.kill(child, signal.SIGKILL)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((line for line in f if line.startswith("State:")), "")
    except OSError:
        return ""


@in_process
async def test_a_token_is_bound_to_its_server_once_and_asked_of_the_hub_at_every_call(hub, tmp_path):
    """Which server a token belongs to is read once per token (its record never changes while
    the token lives: one REST call saved per batch); whether the hub still knows the token is
    asked at every call, so a server stopped a moment ago posts, enters and fetches nothing."""
    from tornado.httpserver import HTTPServer

    from hub_ext import governance_socket
    from hub_ext.governance_forward import service_prefix
    from hub_ext.hub_rest import HubRestClient

    asked = []

    class Counting(HubRestClient):
        async def user(self, name, **kw):
            asked.append(name)
            return await super().user(name, **kw)

    service = GovernanceService(config=hub.config, service_prefix=service_prefix(hub.app.base_url))
    http = HTTPServer(service.web_app(Counting(hub.base + "api", hub.governance_token)))
    sock = str(tmp_path / "counting.sock")
    http.add_socket(governance_socket.listen(sock))
    before = hub.config.XnatGovernance.service_socket
    hub.config.XnatGovernance.service_socket = sock

    def batch(seq):
        return {"boot": "b1", "events": [{"seq": seq, "time": "2026-12-07T00:00:00.000Z", "action": "browse",
                                          "outcome": "allowed", "items": ["CARDIO_ECG"]}]}

    try:
        token = await hub.start_server("bindy", ["CARDIO_ECG"])
        for seq in (1, 2, 3):
            code, doc, _ = await hub.request("POST", "api/xnat-hpc/audit", token=token, body=batch(seq))
            assert code == 200, doc
        facts = {"dataset": "d", "dataset_version": 1, "script_sha256": "c" * 64}
        code, doc, _ = await hub.request("POST", "api/xnat-hpc/jobs/j0000000b0001", token=token, body=facts)
        assert code == 201, doc
        assert asked == ["bindy"]  # one look at the server for four calls
        await hub.app.users["bindy"].stop("")  # JupyterHub deletes the server's token
        code, doc, _ = await hub.request("POST", "api/xnat-hpc/audit", token=token, body=batch(4))
        assert code == 403 and "does not know this token" in doc["message"]
        code, doc, _ = await hub.request("POST", "api/xnat-hpc/jobs/j0000000b0002", token=token, body=facts)
        assert code == 403
        # its next start has another token, bound afresh
        token = await hub.start_server("bindy", ["CARDIO_ECG"])
        code, doc, _ = await hub.request("POST", "api/xnat-hpc/audit", token=token,
                                         body={**batch(1), "boot": "b2"})
        assert code == 200 and asked == ["bindy", "bindy"], doc
    finally:
        hub.config.XnatGovernance.service_socket = before
        http.stop()
