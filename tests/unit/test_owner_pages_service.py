"""The owners' pages as the governance service serves them (:mod:`xnat_hpc_governance.owner_pages`),
in this process against JupyterHub's own ``MockHub`` (its OAuth provider, tokens, logout) and
devxnat (what XNAT says each visitor owns): how owners get in (the hub's OAuth, or a token for
``?format=json``), who is kept out (no login, a token without access to the service, a token
deleted by a logout, a forged form without the service's ``_xsrf``), and the hub's old addresses
redirecting here. What each page shows and does on the real stack (a real hub with its proxy,
XNAT's answers, revocations, review) is in ``tests/integration`` (test_hub_audit,
test_owner_access, test_results_review, test_authz_matrix) and the browser flows of ``tests/e2e``.
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.parse

import pytest
import pytest_asyncio
from traitlets.config import Config

from hub_ext.hub_rest import SERVICE_NAME
from hub_ext.xnat_api import XnatHubClient
from tests.fixtures.devxnat import start_devxnat
from tests.fixtures.mockhub import mock_hub

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def xnat(tmp_path_factory):
    server = start_devxnat(tmp_path_factory.mktemp("pages-devxnat") / "data")
    yield server
    server.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub(xnat):
    from jupyterhub.crypto import CryptKeeper

    c = Config()
    c.XnatAuthenticator.xnat_url = xnat.url  # where the service asks XNAT, as the hub's authenticator does
    keeper = CryptKeeper.instance()
    saved = keeper.keys
    keeper.keys = [os.urandom(32)]  # auth_state encrypted, as on a site (JUPYTERHUB_CRYPT_KEY)
    try:
        async with mock_hub(c) as h:
            h.app.authenticator.enable_auth_state = True
            yield h
    finally:
        keeper.keys = saved


async def xnat_login(hub, xnat, name: str) -> None:
    """*name*'s ``auth_state`` as the hub's authenticator leaves it after an XNAT login: their
    alias token and login (after the mock login, which keeps none)."""
    token = await XnatHubClient(xnat.url).issue_token(name, f"{name}-demo")
    await hub.user(name).save_auth_state({"xnat_token": token.to_state(), "xnat_user": name})


async def owner_session(hub, xnat, name: str):
    """A browser of *name*, logged in to the hub (with XNAT) and to the service's pages."""
    session = await hub.service_login(name)
    await xnat_login(hub, xnat, name)
    return session


async def test_an_owner_gets_in_through_the_hubs_oauth_and_sees_only_what_xnat_says_they_own(hub, xnat):
    dave = await owner_session(hub, xnat, "dave")
    r = await dave.get("owner")
    assert r.code == 200 and r.headers["Content-Type"].startswith("text/html"), r.body.decode()[-200:-60]
    page = r.body.decode()
    assert "CARDIO_ECG" in page and "SLEEP_EEG" in page and "NEURO_MRI" not in page
    r = await dave.get("owner?format=json")
    doc = json.loads(r.body)
    assert doc["owned"] == ["CARDIO_ECG", "SLEEP_EEG"] and r.headers["Cache-Control"] == "no-store"
    # the page's links stay on the service
    prefix = urllib.parse.urlsplit(hub.pages_base).path
    assert f'href="{prefix}owner/access?project=CARDIO_ECG"' in page and f'href="{prefix}review"' in page


async def test_nobody_gets_in_without_the_hubs_word(hub, xnat):
    anonymous = await hub.service_session()
    r = await anonymous.get("owner")
    assert r.code == 302 and "/hub/api/oauth2/authorize?" in r.headers["Location"]
    assert "client_id=service-xnat-hpc-governance" in r.headers["Location"]
    r = await anonymous.post("review/projects", {"project": "CARDIO_ECG", "review": "on"}, xsrf=False)
    assert r.code == 403
    # a token: with access to the service it reads the JSON export; without, a JSON refusal
    await xnat_login(hub, xnat, "dave")
    token = hub.personal_token("dave")
    r = await anonymous.get("owner?format=json", headers={"Authorization": f"token {token}"})
    assert r.code == 200 and json.loads(r.body)["owned"] == ["CARDIO_ECG", "SLEEP_EEG"]
    narrow = hub.personal_token("dave", scopes=["read:users:name!user=dave"])
    r = await anonymous.get("owner?format=json", headers={"Authorization": f"token {narrow}"})
    assert r.code == 403 and "json" in r.headers["Content-Type"]
    assert json.loads(r.body)["message"]


async def test_a_hub_login_without_xnat_is_told_to_log_in_with_xnat(hub):
    stranger = await hub.service_login("mallory")  # the hub knows them; no XNAT token in auth_state
    await hub.user("mallory").save_auth_state({"note": "a login without XNAT"})
    r = await stranger.get("owner")
    assert r.code == 403 and "log in with your XNAT account" in r.body.decode()
    r = await stranger.get("review?format=json")
    assert r.code == 403 and "log in with your XNAT account" in json.loads(r.body)["message"]


async def test_a_forged_form_is_refused_before_anything_changes(hub, xnat):
    dave = await owner_session(hub, xnat, "dave")
    store = hub.pages_app.settings["review_store"]
    before = await asyncio.to_thread(store.marked)
    r = await dave.post("review/projects", {"project": "CARDIO_ECG", "review": "on"}, xsrf=False)
    assert r.code == 403 and "_xsrf" in r.body.decode()
    assert await asyncio.to_thread(store.marked) == before
    r = await dave.post("review/projects", {"project": "CARDIO_ECG", "review": "on"})
    assert r.code == 302 and r.headers["Location"].endswith("review?notice=marked")
    assert "CARDIO_ECG" in await asyncio.to_thread(store.marked)
    r = await dave.post("review/projects", {"project": "CARDIO_ECG", "review": "off"})
    assert r.code == 302 and "CARDIO_ECG" not in await asyncio.to_thread(store.marked)


async def test_an_owner_of_another_project_cannot_mark_this_one_and_the_refusal_is_on_the_trail(hub, xnat):
    alice = await owner_session(hub, xnat, "alice")
    r = await alice.post("review/projects", {"project": "CARDIO_ECG", "review": "on"})
    assert r.code == 403 and "only an owner of CARDIO_ECG" in r.body.decode()
    trail = hub.pages_app.settings["audit_log"]
    [last] = await asyncio.to_thread(trail.query, user={"alice"}, actions={"review_policy"}, limit=1)
    assert last["outcome"] == "denied" and last["items"] == ["CARDIO_ECG"]


async def test_a_logout_on_the_hub_ends_the_session_on_the_service_at_once(hub, xnat):
    dave = await owner_session(hub, xnat, "dave")
    assert (await dave.get("owner?format=json")).code == 200
    r = await dave.get(hub.base + "logout")
    assert r.code in (200, 302)
    r = await dave.get("owner")
    assert r.code == 302 and "/hub/api/oauth2/authorize?" in r.headers["Location"]  # asked again, not cached


@pytest.mark.parametrize("old, new", [("xnat-hpc/owner", "owner"), ("xnat-hpc/owner/access", "owner/access"),
                                      ("xnat-hpc/review", "review")])
async def test_the_old_addresses_on_the_hub_redirect_to_the_service_with_their_query(hub, old, new):
    query = "format=json&project=CARDIO_ECG&since=2026-01-01"
    code, _, r = await hub.request("GET", f"{old}?{query}")
    prefix = urllib.parse.urlsplit(hub.pages_base).path
    assert code == 302 and r.headers["Location"] == f"{prefix}{new}?{query}"
    code, _, r = await hub.request("GET", old)
    assert code == 302 and r.headers["Location"] == f"{prefix}{new}"


async def test_the_service_root_leads_to_the_audit_page(hub):
    anonymous = await hub.service_session()
    r = await anonymous.get("")
    assert r.code == 302 and r.headers["Location"].endswith(f"/services/{SERVICE_NAME}/owner")


async def test_a_token_reads_but_never_posts_a_form(hub, xnat):
    """A token (a script's, or one a page in the owner's browser got hold of) reads the pages;
    a change takes the browser's session and the form's _xsrf, whatever the token may do."""
    await xnat_login(hub, xnat, "dave")
    token = hub.personal_token("dave")
    anonymous = await hub.service_session()
    store = hub.pages_app.settings["review_store"]
    before = await asyncio.to_thread(store.marked)
    r = await anonymous.fetch("POST", "review/projects", body=b"project=CARDIO_ECG&review=on",
                              headers={"Authorization": f"token {token}",
                                       "Content-Type": "application/x-www-form-urlencoded"})
    assert r.code == 403 and "not an API token" in r.body.decode()
    assert await asyncio.to_thread(store.marked) == before
