"""XnatAuthenticator in a real JupyterHub (with configurable-http-proxy)
against devxnat: login with password or alias token, refusal, role gate,
token kept in encrypted auth_state, forced re-login when XNAT says no."""

import time

import pytest
import requests

from tests.fixtures.hub import start_hub

pytestmark = pytest.mark.devxnat

CONFIG = '''
c.JupyterHub.authenticator_class = "xnat"
c.XnatAuthenticator.xnat_url = "{url}"
c.XnatAuthenticator.auth_refresh_age = 1
c.XnatAuthenticator.required_role = "{role}"
c.JupyterHub.load_roles.append({{"name": "tests-auth-state", "scopes": ["admin:auth_state", "admin:users"], "services": ["tests"]}})
'''


@pytest.fixture
def hub(devxnat, tmp_path, request):
    role = getattr(request, "param", "")
    h = start_hub(tmp_path / "hub", CONFIG.format(url=devxnat.url, role=role))
    yield h
    h.stop()


def logged_in(session: requests.Session, hub) -> bool:
    r = session.get(f"{hub.url}/hub/api/user", timeout=10)
    return r.status_code == 200


def test_password_login_keeps_alias_token_in_auth_state(hub, devxnat):
    s, r = hub.login("alice", "alice-demo")
    assert r.status_code == 302, hub.log()[-2000:]
    model = hub.api("GET", "/users/alice").json()
    state = model["auth_state"]
    assert state["xnat_user"] == "alice" and "Jupyter" in state["xnat_roles"]
    tok = state["xnat_token"]
    assert devxnat.get("/xapi/users/username", tok["alias"], tok["secret"]).text == "alice"
    assert "alice-demo" not in hub.log()  # the password is never logged


def test_bad_password_and_unknown_user_refused(hub):
    for user, pw in (("alice", "wrong"), ("nobody", "x"), ("../etc", "x")):
        s, r = hub.login(user, pw)
        assert r.status_code == 403, (user, r.status_code)
        assert not s.cookies.get("jupyterhub-session-id") or not logged_in(s, hub)


def test_alias_token_login_is_the_token_owner(hub, devxnat):
    alias, secret = devxnat.token("bob")
    s, r = hub.login(alias, secret)
    assert r.status_code == 302
    assert hub.api("GET", "/users/bob").status_code == 200


@pytest.mark.parametrize("hub", ["Jupyter"], indirect=True)
def test_required_role_gate(hub):
    s, r = hub.login("carol", "carol-demo")  # carol lacks the Jupyter role
    assert r.status_code == 403
    assert "Jupyter" in r.text
    s, r = hub.login("alice", "alice-demo")
    assert r.status_code == 302


def test_invalidated_token_forces_login_again(hub, devxnat):
    s, r = hub.login("dave", "dave-demo")
    assert r.status_code == 302 and logged_in(s, hub)
    tok = hub.api("GET", "/users/dave").json()["auth_state"]["xnat_token"]
    assert devxnat.get(f"/data/services/tokens/invalidate/{tok['alias']}", "dave").json() == {"result": "OK"}
    time.sleep(1.5)  # auth_refresh_age = 1
    assert not logged_in(s, hub)
