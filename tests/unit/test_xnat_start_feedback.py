"""A refused start, and XNAT's "open" link, without a hub process (issue 20, items 5 and 6).

* A refusal is audited, told to the user on the hub's home and spawn pages (XNAT's plugin shows
  only its generic failure text, and its users never see the spawn page) and names no secret:
  :meth:`~spawner.mixin.XnatScopedSpawner.checked_plan` against a stand-in XNAT on loopback
  that hangs, or stores a start whose compute environment sets a reserved variable.
* A hung XNAT refuses the start within ``xnat_user_options_timeout``, well under JupyterHub's
  ``slow_spawn_timeout`` (10 s), so the refusal is the answer to the plugin's ``POST``.
* The token of XNAT's link (``{url}?token=…``) never reaches the hub's log, in the lines
  JupyterHub's own request log writes (:mod:`hub_ext.log_scrub`).
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import os
import types
from urllib.parse import quote

import pytest
from traitlets.config import Config
from jupyterhub.spawner import LocalProcessSpawner
from tornado import web
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine

from devxnat import compute_services as cs
from devxnat import plugin_configs as pc
from hub_ext.audit_log import HubAuditLog
from hub_ext.log_scrub import TokenScrubber, scrub_token_params, scrub_tokens
from hub_ext.revocation import notice_board, user_notice
from spawner.mixin import XnatScopedSpawner, refusal_notice

SECRET_VALUE = "s3cr3t-value-never-shown"
PROFILES = """
profiles:
  - slug: local-plugin
    display_name: This machine
    backend: local
    default: true
    resources: {cpus: 2, memory: 8G}
"""


def xnat_start(*, xsi_type=pc.EXPERIMENT, item="XNAT_E00001", label="ECG_001", project="CARDIO_ECG") -> dict:
    """The body XNAT's plugin POSTs to the hub (``DefaultJupyterHubClient.startServer``)."""
    return pc.hub_start_body(user_id=7, xsi_type=xsi_type, item_id=item, item_label=label,
                             project_id=project, event_tracking_id="20261207T004607123Z")


# -- the notice ---------------------------------------------------------------------------------
def test_the_notice_names_the_start_and_the_reason():
    reason = "XNAT's hardware configuration asks for 4 CPUs; profile 'local-plugin' allows at most 2"
    assert refusal_notice(xnat_start(), "x1", reason) == (
        f"Your start of Jupyter from XNAT (experiment ECG_001 in project CARDIO_ECG) was refused: {reason}")
    assert refusal_notice(xnat_start(xsi_type=pc.SUBJECT, item="XNAT_S00001", label=""), "", reason) == (
        f"Your start of Jupyter from XNAT (subject XNAT_S00001 in project CARDIO_ECG) was refused: {reason}")
    assert refusal_notice(xnat_start(xsi_type=pc.PROJECT, item="CARDIO_ECG", label="Cardio"), "", reason) == (
        f"Your start of Jupyter from XNAT (project Cardio) was refused: {reason}")
    assert refusal_notice({"profile": "p", "projects": "A"}, "analysis", "no") == (
        "The start of server 'analysis' was refused: no")
    assert refusal_notice({"bogus": 1}, "", "no") == "The start of your default server was refused: no"
    assert refusal_notice(None, "", "no") == "The start of your default server was refused: no"


def test_a_keyed_notice_replaces_the_last_of_its_key_and_can_be_dropped(tmp_path):
    config = _config(tmp_path)
    board = notice_board(config)
    user = types.SimpleNamespace(name="notice-key-user", settings={"config": config})
    board.add_notice(user.name, "first <refusal>", key="spawn-refused:a")
    board.add_notice(user.name, "a revocation")
    board.add_notice(user.name, "second refusal", key="spawn-refused:a")
    board.add_notice(user.name, "other server's refusal", key="spawn-refused:b")
    shown = html.unescape(user_notice(user))
    assert "first <refusal>" not in shown
    assert shown.index("other server's refusal") < shown.index("second refusal") < shown.index("a revocation")
    board.drop_notice(user.name, "spawn-refused:a")
    shown = html.unescape(user_notice(user))
    assert "second refusal" not in shown and "a revocation" in shown and "other server's refusal" in shown
    board.drop_notice("nobody-at-all", "spawn-refused:a")  # nothing to drop: nothing happens


def _config(tmp_path) -> Config:
    """The hub's configuration as far as notices go: the store in this test's directory."""
    c = Config()
    c.ReviewStore.path = str(tmp_path / "review" / "review.db")
    return c


# -- checked_plan against a stand-in XNAT --------------------------------------------------------
class _Audit(HubAuditLog):
    """The hub's audit log, kept in a list."""

    def __init__(self):
        super().__init__()
        self.events = []

    async def record(self, user, action, outcome, *, items=(), detail="", server="", **_):
        self.events.append({"user": user, "action": action, "outcome": outcome, "items": list(items),
                            "detail": detail, "server": server})


class _PluginSpawner(XnatScopedSpawner, LocalProcessSpawner):
    """The mixin over JupyterHub's local spawner: a refusal never reaches what a backend adds."""

    backends = ("local",)


class _StandInXnat:
    """XNAT on loopback, for the hub's user-options fetch only: it answers *doc* as JSON, or, with
    ``doc=None``, reads the request and never answers (a hung XNAT)."""

    def __init__(self, doc: dict | None):
        self.doc = doc
        self.paths: list[str] = []
        self.server: asyncio.AbstractServer | None = None
        self._release = asyncio.Event()

    async def _serve(self, reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        self.paths.append(head.split(b" ", 2)[1].decode())
        if self.doc is None:
            await self._release.wait()
        else:
            body = json.dumps(self.doc).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
            await writer.drain()
        writer.close()

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc):
        self._release.set()
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
def plugin_spawner(tmp_path):
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(PROFILES)
    password = tmp_path / "xnat-service-password"
    password.write_text("service-password\n")
    os.chmod(password, 0o600)

    def make(xnat_url: str, user: str, **traits) -> _PluginSpawner:
        config = _config(tmp_path)
        spawner = _PluginSpawner(
            config=config,
            user=types.SimpleNamespace(name=user, groups=[], url=f"/user/{user}/", settings={"config": config}),
            orm_spawner=types.SimpleNamespace(name="20261207t1", server=None, user_options=None),
            profiles_file=str(profiles), xnat_url=xnat_url, xnat_service_user="jupyterhub",
            xnat_service_password_file=str(password), **traits)
        spawner.hub_audit_log = _Audit()
        spawner.user_options = xnat_start()
        return spawner

    return make


def _stored_start(env: dict) -> dict:
    """What XNAT's ``storeUserOptions`` keeps for :func:`xnat_start`, the compute environment
    setting *env*."""
    compute = json.loads(json.dumps(cs.COMPUTE_ENVIRONMENT_CONFIGS[0]))
    compute["computeEnvironment"]["environmentVariables"] = [{"key": k, "value": v} for k, v in env.items()]
    return pc.user_options(
        user_id=7, login="bob", servername="20261207t1", xsi_type=pc.EXPERIMENT, item_id="XNAT_E00001",
        project_id="CARDIO_ECG", event_tracking_id="20261207T004607123Z",
        template=pc.task_template(compute, cs.HARDWARE_CONFIGS[0]),
        env=pc.default_env("bob", pc.EXPERIMENT, "XNAT_E00001", "http://xnat", "alias", SECRET_VALUE),
        workspace_source="/data/xnat/workspaces/users/bob", data={})


async def test_a_hung_xnat_refuses_within_the_user_options_timeout(plugin_spawner):
    xnat = _StandInXnat(None)
    async with xnat as url:
        spawner = plugin_spawner(url, "hung-xnat-user", xnat_user_options_timeout=0.3)
        with pytest.raises(web.HTTPError) as refused:
            # far less than xnat_timeout (15 s): the fetch waits its own, short timeout
            await asyncio.wait_for(spawner.checked_plan(), 5)
    assert xnat.paths == ["/xapi/jupyterhub/users/hung-xnat-user/server/20261207t1/user-options"]
    message = refused.value.jupyterhub_message
    assert refused.value.status_code == 503 and "did not answer" in message
    assert spawner.xnat_plan is None and spawner.xnat_record is None  # nothing half-made
    [event] = spawner.hub_audit_log.events
    assert (event["action"], event["outcome"], event["items"]) == ("spawn", "denied", ["CARDIO_ECG"])
    assert event["detail"] == message and event["server"] == "20261207t1"
    shown = html.unescape(user_notice(spawner.user))
    assert f"Your start of Jupyter from XNAT (experiment ECG_001 in project CARDIO_ECG) was refused: {message}" in shown


async def test_a_reserved_variable_refuses_naming_it_and_shows_no_secret(plugin_spawner, caplog):
    doc = _stored_start({"JUPYTERHUB_API_TOKEN": SECRET_VALUE, "MY_SETTING": "1"})
    caplog.set_level(logging.DEBUG)
    xnat = _StandInXnat(doc)
    async with xnat as url:
        spawner = plugin_spawner(url, "reserved-env-user")
        with pytest.raises(web.HTTPError) as refused:
            await spawner.checked_plan()
    assert len(xnat.paths) == 1  # refused on XNAT's answer: nothing else asked, nothing started
    message = refused.value.jupyterhub_message
    assert refused.value.status_code == 400
    assert "sets JUPYTERHUB_API_TOKEN, a name reserved on this hub" in message
    shown = user_notice(spawner.user)
    assert "JUPYTERHUB_API_TOKEN" in shown
    for text in (message, shown, json.dumps(spawner.hub_audit_log.events), caplog.text):
        assert SECRET_VALUE not in text


async def test_a_start_that_succeeds_later_drops_its_refusal(plugin_spawner, monkeypatch):
    from tests.unit.test_kube_objects import make_plan

    spawner = plugin_spawner("http://127.0.0.1:9", "refused-then-started")
    board = notice_board(spawner.config)
    board.add_notice(spawner.user.name, "an earlier refusal", key="spawn-refused:20261207t1")
    board.add_notice(spawner.user.name, "another server's refusal", key="spawn-refused:other")

    async def plan():
        return make_plan(user=spawner.user.name)

    monkeypatch.setattr(spawner, "make_plan", plan)
    await spawner.checked_plan()
    shown = user_notice(spawner.user)
    assert "an earlier refusal" not in shown and "another server&#x27;s refusal" in shown


def test_the_user_options_timeout_keeps_a_refusal_inside_the_plugins_post():
    """JupyterHub answers a start's POST with the spawn's failure only when it fails within
    ``slow_spawn_timeout`` (10 s, ``BaseHandler.slow_spawn_timeout``); later, the POST is answered
    202 and XNAT polls until its ``startTimeout``. The fetch's default leaves room for the rest."""
    trait = XnatScopedSpawner.class_traits()["xnat_user_options_timeout"]
    assert trait.default_value <= 5 and trait.metadata.get("config")
    assert "slow_spawn_timeout" in trait.help and "Example" in trait.help


# -- the token of XNAT's link, in the hub's log ------------------------------------------------
TOKEN = "0123456789abcdef0123456789abcdef"
LINK = f"/user/bob/20261207t1/?token={TOKEN}"


@pytest.mark.parametrize("line", [
    f"302 GET /hub{LINK} -> /hub/login?next={quote('/hub' + LINK, safe='')}",
    f"200 GET /hub/login?next={quote('/hub' + LINK, safe='')}",
    f"/hub/login?next={quote('/hub/api/oauth2/authorize?next=' + quote(LINK + '&x=1', safe=''), safe='')}",
    f"GET {LINK}#frag",
    f"access_token={TOKEN}&code=1",
    f"Referer: https://hub{LINK}",
])
def test_token_values_are_scrubbed_plain_and_url_encoded(line):
    scrubbed = scrub_tokens(line)
    assert TOKEN not in scrubbed and "[secret]" in scrubbed
    assert scrub_tokens(scrubbed) == scrubbed


def test_other_parameters_stay_as_they_are():
    line = "302 GET /hub/login?next=%2Fhub%2Fhome&x=1 -> /hub/spawn/bob/x?profile=a%26b"
    assert scrub_tokens(line) == line
    assert scrub_tokens(f"GET /x?token={TOKEN}%26next%3D%2Fy") == "GET /x?token=[secret]%26next%3D%2Fy"


def test_jupyterhubs_request_log_line_of_xnats_link_holds_no_token(caplog):
    """The line JupyterHub's own ``log_request`` writes for the hub's redirect of XNAT's link to the
    login page: JupyterHub scrubs the link's ``token=``, not the one inside ``next=``."""
    from jupyterhub.log import _scrub_uri, log_request

    location = f"/hub/login?next={quote('/hub' + LINK, safe='')}"
    assert TOKEN in _scrub_uri(location)  # why the filter is needed
    request = HTTPServerRequest(start_line=RequestStartLine("GET", f"/hub{LINK}", "HTTP/1.1"),
                                 headers=HTTPHeaders({"Host": "hub.example.org"}))
    request._finish_time = request._start_time
    handler = types.SimpleNamespace(get_status=lambda: 302, request=request, current_user=None,
                                    _headers={"Location": location})
    access, app = logging.getLogger("tornado.access"), logging.getLogger("JupyterHub")
    before = list(access.filters), list(app.filters)
    try:
        scrub_token_params()
        scrub_token_params()  # again: one filter
        assert sum(isinstance(f, TokenScrubber) for f in access.filters) == 1
        assert any(isinstance(f, TokenScrubber) for f in app.filters)
        with caplog.at_level(logging.INFO, logger="tornado.access"):
            log_request(handler)
    finally:
        access.filters[:], app.filters[:] = before
    # (the record's name is the hub's once a hub in this process set up its logging)
    [record] = [r for r in caplog.records if "302 GET /hub/user/bob/" in r.getMessage()]
    assert "-> /hub/login?next=" in record.getMessage() and TOKEN not in record.getMessage()


def test_a_record_with_arguments_is_scrubbed_once_formatted():
    record = logging.LogRecord("JupyterHub", logging.INFO, __file__, 1, "redirect %s -> %s (%d)",
                               (LINK, "/hub/login", 3), None)
    assert TokenScrubber().filter(record) is True
    assert record.getMessage() == "redirect /user/bob/20261207t1/?token=[secret] -> /hub/login (3)"
    plain = logging.LogRecord("JupyterHub", logging.INFO, __file__, 1, "100%% %s", ("done",), None)
    assert TokenScrubber().filter(plain) and plain.getMessage() == "100% done" and plain.args == ("done",)


def test_a_pod_kubespawner_dumps_when_the_api_refuses_it_holds_no_token():
    """kubespawner logs ``Failed for %s`` with ``pod.to_str()`` when the API server refuses the
    pod (a quota, seen on the development cluster): the server's JupyterHub token was in the
    hub's log. The value of every secret-named variable is scrubbed; the others stay."""
    from kubernetes_asyncio.client import V1Container, V1EnvVar, V1ObjectMeta, V1Pod, V1PodSpec

    token = "37e79eb5812d4fb9a6257516af21506e"
    env = [V1EnvVar(name="JUPYTERHUB_API_TOKEN", value=token), V1EnvVar(name="JPY_API_TOKEN", value=token),
           V1EnvVar(name="JUPYTERHUB_API_URL", value="http://10.244.0.1:8081/hub/api")]
    pod = V1Pod(metadata=V1ObjectMeta(name="jupyter-alice"),
                spec=V1PodSpec(containers=[V1Container(name="notebook", image="x", env=env)]))
    record = logging.LogRecord("JupyterHub", logging.ERROR, __file__, 1, "Failed for %s", (pod.to_str(),), None)
    assert TokenScrubber().filter(record) is True
    message = record.getMessage()
    assert token not in message and message.count("'value': '[secret]'") == 2
    assert "'value': 'http://10.244.0.1:8081/hub/api'" in message
    assert scrub_tokens('{"name": "XNAT_PASS", "value": "s3cret"}') == '{"name": "XNAT_PASS", "value": "[secret]"}'
