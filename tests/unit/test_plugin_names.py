"""XNAT's names on this hub (issue 20, items 1 and 4), pure: logins → hub users and the
plugin's server names → hub server names (:mod:`hub_ext.names`), and what the plugin API does
to a call's path, a start's body and an answer (:mod:`hub_ext.plugin_gateway`)."""

from __future__ import annotations

import datetime as _dt
import json
import re

import pytest

from hub_ext.names import (DEFAULT_NAME_PATTERN, derived_name, hub_name, hub_server_name, is_derived,
                           xnat_login, xnat_server_name)
from hub_ext.plugin_gateway import LOGIN_KEY, map_path, start_body, xnat_user_model
from tests.fixtures.plugin import generate_event_tracking_id
from xnat_bridge.errors import InvalidRequest


ETID = generate_event_tracking_id(_dt.datetime(2026, 12, 7, 0, 46, 7, 123000, tzinfo=_dt.timezone.utc))


def test_the_uis_event_tracking_ids_become_valid_hub_names_and_back():
    assert ETID == "20261207T004607123Z"
    assert hub_server_name(ETID) == "xnat-20261207t004607123z"
    assert xnat_server_name("xnat-20261207t004607123z") == ETID
    try:  # JupyterHub 6's own rule (jupyterhub.slugs, new in 6); 5 takes any name without "/"
        from jupyterhub.slugs import is_valid_safe_slug
    except ImportError:  # on JupyterHub 5: the rule as JupyterHub 6's slugs.py states it
        def is_valid_safe_slug(name):
            return len(name) <= 30 and bool(re.fullmatch(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*", name))

    for minute in range(0, 60, 7):  # every instant maps to a name JupyterHub accepts, and back
        etid = generate_event_tracking_id(_dt.datetime(2026, 1, 2, 3, minute, 59, 999000, tzinfo=_dt.timezone.utc))
        assert is_valid_safe_slug(hub_server_name(etid)) and xnat_server_name(hub_server_name(etid)) == etid
    assert not is_valid_safe_slug(ETID)  # why a mapping is needed at all


@pytest.mark.parametrize("name", ["", "ui", "a" * 30, "my-server-2"])
def test_names_jupyterhub_accepts_and_the_default_server_are_kept(name):
    assert hub_server_name(name) == name and xnat_server_name(name) == name


@pytest.mark.parametrize("name, says", [
    ("a" * 31, "neither an XNAT event-tracking id"),             # 31 characters
    ("serveur-été", "neither"),                                  # non-ASCII
    ("Server", "neither"),                                       # capitals
    ("a--b", "neither"),                                         # JupyterHub's double hyphen
    ("20261207T004607123", "neither"),                           # almost an id
    ("xnat-20261207t004607123z", "reserved"),                    # only the mapping makes these
])
def test_names_that_cannot_be_mapped_are_refused_with_the_reason(name, says):
    with pytest.raises(InvalidRequest, match=says):
        hub_server_name(name)


def test_logins_map_to_one_hub_user_each_never_folded():
    mapping = {"J.Doe": "jdoe"}
    assert hub_name("alice", mapping) == "alice"
    assert hub_name("jane.doe", mapping) == "jane.doe"
    assert hub_name("J.Doe", mapping) == "jdoe"
    for login in ("Jane.Doe", "CaRoL", "a@b.org", "ÉLODIE", "1abc", "x" * 40, "jdoe", "a--b"):
        name = hub_name(login, mapping)
        assert is_derived(name) and re.fullmatch(DEFAULT_NAME_PATTERN, name), (login, name)
        assert name == derived_name(login)
    assert hub_name("Jane.Doe").startswith("jane.doe--")
    assert hub_name("CaRoL") != hub_name("carol") == "carol"
    assert hub_name("Carol") != hub_name("CaRoL")
    # a login that is somebody's derived name is derived again
    assert hub_name(hub_name("CaRoL")) != hub_name("CaRoL")
    # where the name says the login, it can be read back; a derived one cannot
    assert xnat_login("jdoe", mapping) == "J.Doe" and xnat_login("carol") == "carol"
    assert xnat_login(hub_name("CaRoL")) is None


def test_plugin_paths_are_passed_on_in_hub_names():
    to_hub = lambda login: hub_name(login)  # noqa: E731
    jane = hub_name("Jane.Doe")
    assert map_path("/", to_hub) == ("/", None, None)
    assert map_path("/info", to_hub) == ("/info", None, None)
    assert map_path("/users/Jane.Doe", to_hub) == (f"/users/{jane}", "Jane.Doe", None)
    assert map_path(f"/users/Jane.Doe/servers/{ETID}", to_hub) == (
        f"/users/{jane}/servers/xnat-20261207t004607123z", "Jane.Doe", ETID)
    assert map_path(f"/users/Jane.Doe/servers/{ETID}/progress", to_hub)[0].endswith("xnat-20261207t004607123z/progress")
    assert map_path("/users/Jane.Doe/tokens", to_hub) == (f"/users/{jane}/tokens", "Jane.Doe", None)
    assert map_path("/users/a@b/server", to_hub)[0] == f"/users/{hub_name('a@b')}/server"
    with pytest.raises(InvalidRequest):
        map_path("/users/bob/servers/" + "a" * 31, to_hub)


def test_a_start_body_gets_xnats_names_and_a_contradiction_is_refused():
    body = {"userId": "7", "servername": None, "xsiType": "xnat:projectData", "itemId": "P", "projectId": "P",
            "eventTrackingId": ETID}
    out = json.loads(start_body(json.dumps(body).encode(), "Jane.Doe", ETID))
    assert out["servername"] == ETID and out[LOGIN_KEY] == "Jane.Doe"
    wrapped = json.loads(start_body(json.dumps({"user_options": body}).encode(), "Jane.Doe", ETID))
    assert wrapped["user_options"][LOGIN_KEY] == "Jane.Doe"
    with pytest.raises(InvalidRequest, match="names the server 'other'"):
        start_body(json.dumps({**body, "servername": "other"}).encode(), "Jane.Doe", ETID)
    with pytest.raises(InvalidRequest, match="not JSON"):
        start_body(b"{", "Jane.Doe", ETID)
    # a body that is not the plugin's is passed on as it came
    assert start_body(b'{"profile": "x"}', "bob", "") == b'{"profile": "x"}'


def test_answers_name_the_user_and_servers_as_xnat_does():
    jane = hub_name("Jane.Doe")
    model = {"name": jane, "admin": False, "servers": {
        "xnat-20261207t004607123z": {"name": "xnat-20261207t004607123z", "ready": True,
                                     "url": f"/user/{jane}/xnat-20261207t004607123z/",
                                     "user_options": {LOGIN_KEY: "Jane.Doe"}}}}
    out = xnat_user_model(model, "Jane.Doe")
    assert out["name"] == "Jane.Doe" and list(out["servers"]) == [ETID]
    assert out["servers"][ETID]["name"] == ETID
    assert out["servers"][ETID]["url"] == f"/user/{jane}/xnat-20261207t004607123z/"  # the hub's own
    # in a list, a derived user is named by the login its servers were started for
    assert xnat_user_model(model, None)["name"] == "Jane.Doe"
    assert xnat_user_model({"name": "bob", "servers": {}}, None)["name"] == "bob"
