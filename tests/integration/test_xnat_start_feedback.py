"""XNAT's "Start Jupyter" when the hub says no, and the link XNAT opens (issue 20, items 5 and 6).

A real hub + CHP on devxnat, driven call by call as NrgXnat/xnat-jupyterhub-plugin drives it
(the helpers of :mod:`tests.integration.test_xnat_plugin_hub`). The spawner reaches XNAT through
a :class:`~tests.fixtures.faultproxy.FaultProxy`, so a test can make XNAT hang.

* **A refusal is visible and quick.** The plugin discards the hub's message
  (``DefaultJupyterHubService.startServer``: a failed ``POST`` lands in its catch-all, "Failed to
  launch Jupyter notebook. … Check the XNAT and JupyterHub system logs …") and only polls after a
  ``POST`` the hub accepted. So a refusal must be the answer to the ``POST`` — within JupyterHub's
  ``slow_spawn_timeout`` (10 s), after which the hub answers ``202`` and XNAT polls until its
  ``startTimeout`` — and its reason must reach the user elsewhere: the hub's home page, and the
  audit trail.
* **The link XNAT opens** is ``{jupyterHubHostUrl}{server url}?token=<a hub token XNAT created>``
  (``jupyterhub-servers.js``: ``goTo``). JupyterHub ≥ 5 does not accept it (``HubOAuth.
  allow_token_in_url``, off): the visitor meets the hub's login, then their server; the token
  is never a cookie and never in the hub's log.
"""

from __future__ import annotations

import html
import json
import re
import secrets
import time
from urllib.parse import parse_qs, urlparse

import pytest
import requests

from devxnat import compute_services as cs
from devxnat import plugin_configs as pc
from devxnat.plugin_state import PluginState
from tests.fixtures.faultproxy import FaultProxy
from hub_ext.names import hub_server_name
from tests.fixtures.plugin import generate_event_tracking_id, make_plugin_hub, xnat_points_at
from tests.fixtures.spawn import audit_events
from tests.integration.test_xnat_plugin_hub import (
    PluginClient,
    _failed_start,
    experiment_of,
    seed_start,
    start_as_the_plugin,
    stop_as_the_plugin,
)

pytestmark = [pytest.mark.devxnat]

SERVICE_ACCOUNT = "hubsvc-feedback"   # an XNAT account with the plugin's JupyterHub role
USER, PASSWORD, PROJECT = "bob", "bob-demo", "CARDIO_ECG"
#: what the hub must stay under for a refusal to be the answer to the plugin's POST: JupyterHub's
#: ``slow_spawn_timeout`` (``BaseHandler.slow_spawn_timeout``, 10 s)
SLOW_SPAWN_TIMEOUT = 10
#: XNAT's catch-all text for a start the hub refused (DefaultJupyterHubService.startServer, the
#: service account enabled)
XNAT_GENERIC = "Failed to launch Jupyter notebook. Check the XNAT and JupyterHub system logs for error messages."

PROFILES = """
profiles:
  - slug: local-plugin
    display_name: This machine
    backend: local
    default: true
    resources: {{cpus: 2, memory: 8G}}
offload:
  partition: secure
  staging_dir: {staging}
"""


@pytest.fixture(scope="module")
def xnat_proxy(shared_devxnat):
    proxy = FaultProxy(shared_devxnat.url)
    yield proxy
    proxy.close()


@pytest.fixture(scope="module")
def feedback_hub(shared_devxnat, unix_users, staging, tmp_path_factory, xnat_proxy):
    """The plugin's hub (service ``xnat``, the JupyterHub-role account), its spawner talking to
    XNAT through :func:`xnat_proxy`; users log in to the hub with XNAT directly."""
    hub = make_plugin_hub(tmp_path_factory.mktemp("feedback-hub"), shared_devxnat, SERVICE_ACCOUNT,
                          staging=staging, profiles_text=PROFILES,
                          extra=f'c.XnatScopedSpawner.xnat_url = "{xnat_proxy.url}"\n')
    yield hub
    hub.stop()


def _home_notices(hub) -> str:
    """The user's hub home page, as text (they log in with their XNAT password)."""
    s, r = hub.login(USER, PASSWORD)
    assert r.status_code == 302, r.text[-2000:]
    page = s.get(f"{hub.url}/hub/home", timeout=30)
    assert page.status_code == 200
    return html.unescape(page.text)


def _timed_refusal(hub, client, server: str, body: dict) -> requests.Response:
    """The plugin's POST of a start the hub refuses: answered with the refusal (not ``202``), so
    within ``slow_spawn_timeout``; the plugin's first poll finds no server (:func:`_failed_start`)."""
    started = time.monotonic()
    r = _failed_start(hub, client, USER, server, body)
    elapsed = time.monotonic() - started
    assert elapsed < SLOW_SPAWN_TIMEOUT, f"refused after {elapsed:.1f} s"  # the 4xx/5xx already says so
    return r


def _denied(hub, server: str) -> list[dict]:
    return [e for e in audit_events(hub) if e["user"] == USER and e["action"] == "spawn"
            and e["outcome"] == "denied" and e.get("server") == server]


# -- item 5: refusals are visible and quick ------------------------------------------------------
def test_a_refused_start_fails_at_once_and_its_reason_is_on_the_users_home_page(feedback_hub, shared_devxnat):
    server = "xnat-refused"
    exp = experiment_of(shared_devxnat, USER, PROJECT)
    xlarge = next(h for h in cs.HARDWARE_CONFIGS if h["hardware"]["name"] == "XLarge")
    body = seed_start(shared_devxnat, USER, server, xsi_type=pc.EXPERIMENT, item=exp["ID"], project=PROJECT,
                      hardware=xlarge)
    r = _timed_refusal(feedback_hub, PluginClient(feedback_hub), server, body)
    assert r.status_code == 403
    reason = r.json()["message"]
    assert "asks for 4 CPUs" in reason and "choose a smaller hardware configuration in XNAT" in reason
    [event] = _denied(feedback_hub, server)
    assert event["detail"] == reason and PROJECT in event["items"]
    home = _home_notices(feedback_hub)
    assert f"Your start of Jupyter from XNAT (experiment {exp['label']} in project {PROJECT}) " \
           f"was refused: {reason}" in home


def test_xnat_shows_its_generic_failure_at_once_and_the_reason_is_on_the_hub(feedback_hub, shared_devxnat):
    """The whole loop through devxnat's plugin endpoints (its ``startServer`` follows the Java):
    the failure reaches XNAT's activity tab at once, as XNAT's own text; the hub's reason does not."""
    key = generate_event_tracking_id()  # as the UI names it
    server = hub_server_name(key)
    with xnat_points_at(shared_devxnat, feedback_hub, startTimeout="120"):
        exp = experiment_of(shared_devxnat, USER, PROJECT)
        req = {"username": USER, "servername": key, "xsiType": "xnat:ecgSessionData", "itemId": exp["ID"],
               "itemLabel": exp["label"], "projectId": PROJECT, "eventTrackingId": key,
               "computeEnvironmentConfigId": 1, "hardwareConfigId": 4}  # XLarge: 4 CPUs, the profile 2
        started = time.monotonic()
        r = shared_devxnat.request("POST", f"/xapi/jupyterhub/users/{USER}/server/{key}", USER, json=req)
        assert r.status_code == 200, r.text
        data = {}
        while time.monotonic() - started < 60:  # XNAT would report a 202 only after startTimeout (120 s)
            t = shared_devxnat.get(f"/xapi/event_tracking/{key}", USER)
            data = t.json() if t.status_code == 200 else {}
            if data.get("succeeded") is not None:
                break
            time.sleep(0.25)
        elapsed = time.monotonic() - started
        assert data.get("succeeded") in (False, "false"), (data, feedback_hub.log()[-3000:])
        assert elapsed < SLOW_SPAWN_TIMEOUT, f"XNAT reported the failure after {elapsed:.1f} s"
        assert data["finalMessage"] == XNAT_GENERIC
        assert "CPUs" not in json.dumps(data)  # the hub's reason never reaches XNAT's UI ...
    [event] = _denied(feedback_hub, server)  # ... it is in the audit trail and on the hub
    assert "asks for 4 CPUs" in event["detail"]
    home = _home_notices(feedback_hub)
    assert f"Your start of Jupyter from XNAT (experiment {exp['label']} in project {PROJECT}) " \
           f"was refused: {event['detail']}" in home


def test_xnat_not_answering_the_user_options_fetch_refuses_inside_the_post(feedback_hub, shared_devxnat,
                                                                          xnat_proxy):
    server = "xnat-hung"
    exp = experiment_of(shared_devxnat, USER, PROJECT)
    body = seed_start(shared_devxnat, USER, server, xsi_type=pc.EXPERIMENT, item=exp["ID"], project=PROJECT)
    xnat_proxy.stall(r"/user-options", after=0, times=1)  # XNAT takes the request and never answers
    seen = len(xnat_proxy.requests_seen)
    r = _timed_refusal(feedback_hub, PluginClient(feedback_hub), server, body)
    assert [p for _, p, _ in xnat_proxy.requests_seen[seen:]] == \
        [f"/xapi/jupyterhub/users/{USER}/server/{server}/user-options"]  # nothing asked after it
    assert r.status_code == 503
    reason = r.json()["message"]
    assert "did not answer (the plugin's user options)" in reason
    # nothing half-made: no server, no state (no process, no job) on the hub
    model = feedback_hub.api("GET", f"/users/{USER}?include_stopped_servers=1").json()
    stopped = model["servers"].get(server)
    assert stopped is None or (not stopped["ready"] and not stopped["pending"] and not stopped.get("state"))
    assert "did not answer" in _denied(feedback_hub, server)[0]["detail"]
    assert f"was refused: {reason}" in _home_notices(feedback_hub)


def test_a_compute_environment_setting_a_reserved_variable_is_refused_by_name(feedback_hub, shared_devxnat):
    server, value = "xnat-reserved", f"not-for-the-log-{secrets.token_hex(8)}"
    exp = experiment_of(shared_devxnat, USER, PROJECT)
    body = seed_start(shared_devxnat, USER, server, xsi_type=pc.EXPERIMENT, item=exp["ID"], project=PROJECT)
    st = shared_devxnat.store()
    try:  # the site's compute environment in XNAT sets JupyterHub's own token variable
        uid = st.user(USER)["xdat_user_id"]
        doc = PluginState(st).options(uid, server)
        doc["task_template"]["container_spec"]["env"]["JUPYTERHUB_API_TOKEN"] = value
        PluginState(st).store_options(uid, server, doc)
    finally:
        st.close()
    r = _timed_refusal(feedback_hub, PluginClient(feedback_hub), server, body)
    assert r.status_code == 400
    reason = r.json()["message"]
    assert "sets JUPYTERHUB_API_TOKEN, a name reserved on this hub" in reason
    home = _home_notices(feedback_hub)
    assert f"was refused: {reason}" in home
    for text in (reason, home, json.dumps(_denied(feedback_hub, server)), feedback_hub.log()):
        assert value not in text


# -- item 6: the link XNAT opens -----------------------------------------------------------------
def create_token_as_xnats_ui(client: PluginClient, user: str) -> str:
    """``XNAT.plugin.jupyterhub.users.tokens.create()`` (note and 2 days, as the UI's defaults) →
    ``DefaultJupyterHubService.createToken`` (scope ``access:servers!user={u}``) →
    ``DefaultJupyterHubClient.createToken`` (the plugin's ``Token``, nulls included)."""
    token = {"token": None, "id": None, "user": None, "kind": None, "service": None,
             "scopes": [f"access:servers!user={user}"], "note": "XNAT.plugin.jupyterhub.users.tokens.create",
             "oauth_client": None, "session_id": None, "expires_at": None, "expires_in": 172800,
             "created": None, "last_activity": None}
    r = requests.post(f"{client.api}/users/{user}/tokens", data=json.dumps(token), headers=client.json, timeout=30)
    assert r.status_code in (200, 201), r.text
    return r.json()["token"]


def xnats_link(hub, client: PluginClient, user: str, server: str, token: str) -> str:
    """``goTo(server['url'])``: ``${jupyterHubHostUrl}${server_url}?token=${token['token']}``, the
    host URL without its trailing slash, the server's ``url`` from the hub's user model."""
    server_url = client.get_user(user).json()["servers"][server]["url"]
    return f"{hub.url.rstrip('/')}{server_url}?token={token}"


def _assert_login_page(r: requests.Response, session: requests.Session, token: str) -> None:
    assert r.status_code == 200 and urlparse(r.url).path == "/hub/login", (r.status_code, r.url)
    assert re.search(r'<input[^>]+name="username"', r.text)  # the login form
    assert all(token not in (c.value or "") for c in session.cookies)  # the token is no cookie


def _log_in_from(r: requests.Response, session: requests.Session) -> requests.Response:
    """Submit the login page *r* (its ``next`` kept) as the user, following the redirects."""
    xsrf = session.cookies.get("_xsrf", path="/hub/") or re.search(r'name="_xsrf" value="([^"]+)"', r.text).group(1)
    nxt = parse_qs(urlparse(r.url).query).get("next", [""])[0]
    return session.post(r.url.split("?", 1)[0], params={"next": nxt},
                        data={"username": USER, "password": PASSWORD, "_xsrf": xsrf}, timeout=90)


def test_the_link_xnat_opens_leads_through_the_hubs_login_to_the_server(feedback_hub, shared_devxnat):
    server = "xnat-link"
    client = PluginClient(feedback_hub)
    exp = experiment_of(shared_devxnat, USER, PROJECT)
    body = seed_start(shared_devxnat, USER, server, xsi_type=pc.EXPERIMENT, item=exp["ID"], project=PROJECT)
    srv = start_as_the_plugin(feedback_hub, client, USER, server, body)
    token = create_token_as_xnats_ui(client, USER)
    link = xnats_link(feedback_hub, client, USER, server, token)
    assert link == f"{feedback_hub.url}{srv['url']}?token={token}"
    try:
        # no session: the server does not take the token; it sends the visitor to the hub's login
        s = requests.Session()
        r = s.get(link, timeout=60)
        to_hub = [h for h in r.history if urlparse(h.headers["Location"]).path == "/hub/api/oauth2/authorize"]
        assert to_hub and urlparse(to_hub[0].url).path.startswith(srv["url"])  # the server sent it
        _assert_login_page(r, s, token)
        assert not [c.name for c in s.cookies if c.path.startswith(srv["url"].rstrip("/"))
                    and not c.name.endswith("-oauth-state")]  # no session of the server's
        # logged in as that user (XNAT's credentials): the server
        r = _log_in_from(r, s)
        assert r.status_code == 200 and urlparse(r.url).path.startswith(srv["url"]), (r.url, r.status_code)
        assert any("/oauth_callback" in h.url for h in r.history)
        # the token XNAT put into the link still opens nothing by itself
        assert requests.get(link, timeout=60, allow_redirects=False).status_code == 302
    finally:
        stop_as_the_plugin(client, USER, server)
    # the server stopped (XNAT's "open" after a cull): the link reaches the hub itself, whose login
    # redirect carries the link in next= — the hub's log must not
    s = requests.Session()
    _assert_login_page(s.get(link, timeout=60), s, token)
    log = feedback_hub.log()
    assert "next=" in log and token not in log
