"""A researcher's server shared with members of its projects, on the real stack (issue 22,
part 2): a real JupyterHub (+ CHP, XNAT authenticator on devxnat, the governance service it
starts), bob's real local server scoped to CARDIO_ECG; guests open it in their own hub login
through JupyterHub's OAuth (its confirmation form posted as a browser posts it).

* bob shares through his server's API; the hub's governance asks XNAT with the guest's own
  token: dave (Owner of CARDIO_ECG) is shared with, alice (no CARDIO_ECG) is refused by name;
* dave opens bob's server and works in it as bob (the server's scope); alice, never shared
  with, is refused by the hub; neither may manage the shares;
* carol, made a Member for the test and shared with, opens it; an owner removes her from
  CARDIO_ECG in XNAT: the hub's re-check ends her share, and her next request is refused (the
  server's authorizer asks the hub again after ``c.ShareAuthorizer.ttl``);
* the trail has every share and its end; dave's owner page lists the share and ends one.
"""

from __future__ import annotations

import html
import re
from urllib.parse import urljoin

import pytest
import requests

from tests.fixtures.spawn import audit_events, make_hub, stop_server, wait_for, wait_ready

pytestmark = [pytest.mark.devxnat, pytest.mark.timeout(600)]

SERVER = "shared"


@pytest.fixture(scope="module")
def sharing_hub(shared_devxnat, unix_users, staging, tmp_path_factory):
    h = make_hub(tmp_path_factory.mktemp("sharing-hub"), shared_devxnat, "xnat", staging=staging,
                 extra='c.OwnerAccess.recheck_interval = 2\n'
                       'c.Spawner.args = ["--ShareAuthorizer.ttl=1"]\n')
    yield h
    h.stop()


def login(hub, user: str) -> requests.Session:
    s, r = hub.login(user, f"{user}-demo")
    assert r.status_code == 302, f"login of {user}: {r.status_code} {r.text[:300]}"
    return s


def open_server(session: requests.Session, hub, owner: str, path: str) -> requests.Response:
    """*path* of *owner*'s server in *session*'s login, as a browser gets there: its lab page
    first, through JupyterHub's OAuth (the confirmation JupyterHub asks of a guest posted as its
    form is), then *path* with the server's cookie; the first refusal on the way is answered."""
    r = session.get(f"{hub.url}/user/{owner}/{SERVER}/lab", timeout=60)
    if r.status_code == 200 and 'name="scopes"' in r.text:
        fields = dict(re.findall(r'<input type="hidden" name="(_xsrf)" value="([^"]*)"', r.text))
        scopes = re.findall(r'<input type="hidden" name="scopes" value="([^"]*)"', r.text)
        data = [("_xsrf", html.unescape(fields["_xsrf"]))] + [("scopes", html.unescape(s)) for s in scopes]
        r = session.post(urljoin(r.url, ""), data=data, timeout=60)
    if r.status_code != 200:
        return r
    return session.get(f"{hub.url}/user/{owner}/{SERVER}/{path}", timeout=60)


def shares_api(hub, token: str, method: str, path: str = "shares", **kw) -> requests.Response:
    return requests.request(method, f"{hub.url}/user/bob/{SERVER}/xnat-hpc/api/{path}",
                            headers={"Authorization": f"token {token}"}, timeout=120, **kw)


def hub_shares(hub) -> list[str]:
    r = hub.api("GET", f"/shares/bob/{SERVER}")
    assert r.status_code == 200, r.text
    return sorted(s["user"]["name"] for s in r.json()["items"])


def test_a_member_opens_a_shared_server_a_non_member_cannot_and_a_lost_project_ends_the_share(
        sharing_hub, shared_devxnat):
    hub, xnat = sharing_hub, shared_devxnat
    sessions = {u: login(hub, u) for u in ("bob", "dave", "alice", "carol")}
    r = hub.api("POST", "/users/bob/tokens", json={"note": "sharing test", "expires_in": 3600})
    bob = r.json()["token"]
    try:
        r = hub.api("POST", f"/users/bob/servers/{SERVER}", json={"profile": "local-small", "projects": ["CARDIO_ECG"]})
        assert r.status_code in (201, 202), r.text
        wait_ready(hub, "bob", SERVER, timeout=120)

        # 1. bob shares: XNAT decides through the guest's own rights
        r = shares_api(hub, bob, "POST", json={"user": "alice"})
        assert r.status_code == 403 and "alice may not read CARDIO_ECG in XNAT" in r.json()["message"], r.text
        r = shares_api(hub, bob, "POST", json={"user": "dave"})
        assert r.status_code == 201, r.text
        assert r.json()["projects"] == ["CARDIO_ECG"]
        assert hub_shares(hub) == ["dave"]
        assert [s["user"] for s in shares_api(hub, bob, "GET").json()["shares"]] == ["dave"]

        # 2. dave opens it and works as bob, in bob's scope; alice cannot open it at all
        r = open_server(sessions["dave"], hub, "bob", "xnat-hpc/api/scope")
        assert r.status_code == 200, (r.status_code, r.url, r.text[:500])
        assert "CARDIO_ECG" in r.text
        r = open_server(sessions["alice"], hub, "bob", "xnat-hpc/api/scope")
        assert r.status_code == 403 and "CARDIO_ECG" not in r.text, (r.status_code, r.text[:300])
        # a guest does not manage the shares (the owner's only)
        xsrf = sessions["dave"].cookies.get("_xsrf", path=f"/user/bob/{SERVER}/") or ""
        r = sessions["dave"].post(f"{hub.url}/user/bob/{SERVER}/xnat-hpc/api/shares", json={"user": "alice"},
                                  headers={"X-XSRFToken": xsrf}, timeout=60)
        assert r.status_code == 403, r.text[:300]

        # 3. carol, a Member for now: shared with, opens it; removed in XNAT, she loses it
        with xnat.membership("CARDIO_ECG", "carol", "Members"):
            assert shares_api(hub, bob, "POST", json={"user": "carol"}).status_code == 201
            r = open_server(sessions["carol"], hub, "bob", "api/status")
            assert r.status_code == 200, (r.status_code, r.text[:300])
        wait_for(lambda: "carol" not in hub_shares(hub), 60, "the re-check to end carol's share")
        wait_for(lambda: sessions["carol"].get(f"{hub.url}/user/bob/{SERVER}/api/status", timeout=60).status_code
                 == 403, 30, "carol's next request to be refused")
        assert hub_shares(hub) == ["dave"]

        # 4. the owner page: alice owns NEURO_MRI, not CARDIO_ECG: she ends nothing of bob's server
        apage = sessions["alice"].get(f"{hub.url}/services/xnat-hpc-governance/owner", timeout=60)
        assert apage.status_code == 200 and "shares-CARDIO_ECG" not in apage.text  # not her project: not shown
        # her page has no share of hers to end: the service's _xsrf cookie, as a browser's script sends it
        axsrf = sessions["alice"].cookies.get("_xsrf", path="/services/xnat-hpc-governance/")
        for project, code in (("CARDIO_ECG", 403), ("NEURO_MRI", 404)):
            r = sessions["alice"].post(f"{hub.url}/services/xnat-hpc-governance/owner/shares",
                                       data={"_xsrf": axsrf, "owner": "bob", "server": SERVER, "guest": "dave",
                                             "project": project}, allow_redirects=False, timeout=60)
            assert r.status_code == code, (project, r.status_code, r.text[:300])
        assert hub_shares(hub) == ["dave"]
        # dave owns CARDIO_ECG: he sees the share and ends it
        page = sessions["dave"].get(f"{hub.url}/services/xnat-hpc-governance/owner?project=CARDIO_ECG", timeout=60)
        assert page.status_code == 200
        assert re.search(r"<td>bob</td><td>shared</td><td>dave</td>", page.text), page.text[:3000]
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1)
        r = sessions["dave"].post(f"{hub.url}/services/xnat-hpc-governance/owner/shares",
                                  data={"_xsrf": html.unescape(xsrf), "owner": "bob", "server": SERVER,
                                        "guest": "dave", "project": "CARDIO_ECG"}, allow_redirects=False, timeout=60)
        assert r.status_code in (200, 302), r.text[:500]
        assert hub_shares(hub) == []
    finally:
        stop_server(hub, "bob", SERVER)
    events = [e for e in audit_events(hub) if e["action"] in ("share", "unshare")]
    said = [(e["user"], e["action"], e["outcome"], (e.get("extra") or {}).get("guest"), (e.get("extra") or {}).get("by"))
            for e in events]
    assert ("bob", "share", "denied", "alice", None) in said
    assert ("bob", "share", "allowed", "dave", None) in said
    assert ("bob", "unshare", "allowed", "carol", "re-check") in said
    assert ("bob", "unshare", "allowed", "dave", "dave") in said  # ended by the project's owner, on his page
