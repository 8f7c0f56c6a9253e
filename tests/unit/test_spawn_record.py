"""What the hub decided at a server's start is kept in the spawner's state (issue 19, finding 3;
issue 25): the scope of a multi-project server is read back as its projects, never from the
flat ``user_options`` (``projects: "A,B"``), and survives a hub restart (``load_state``)."""

from __future__ import annotations

import json

import pytest
from traitlets.config import Config

from spawner.dispatch import XnatProfilesSpawner
from spawner.slurm import XnatSlurmSpawner
from xnat_bridge.errors import InvalidRequest
from xnat_bridge.scope import Scope
from xnat_bridge.spawn_record import STATE_KEY, SpawnRecord, record_of, server_of_token, token_sha256

TWO = Scope.of({"CARDIO_ECG": {}, "NEURO_MRI": {"experiments": ["XNAT_E00001"]}})


def test_record_round_trip_through_json_state():
    rec = SpawnRecord(scope=TWO, profile="local-small", backend="local", started="2026-12-07T02:00:00Z")
    state = json.loads(json.dumps({"pid": 7, STATE_KEY: rec.to_state()}))  # as JupyterHub stores it
    back = SpawnRecord.from_state(state)
    assert back == rec and back.projects == {"CARDIO_ECG", "NEURO_MRI"}
    assert SpawnRecord.from_state({"pid": 7}) is None and SpawnRecord.from_state(None) is None


@pytest.mark.parametrize("doc", [
    "x", {"v": 2, "scope": TWO.to_json()}, {"v": 1}, {"v": 1, "scope": ""}, {"v": 1, "scope": "{]"},
])
def test_a_damaged_record_is_an_error_not_an_empty_scope(doc):
    with pytest.raises(InvalidRequest):
        SpawnRecord.from_state({STATE_KEY: doc})


def test_the_dispatcher_keeps_the_record_in_its_state_and_reads_it_back():
    rec = SpawnRecord(scope=TWO, profile="slurm-small", backend="slurm")
    parent = XnatProfilesSpawner(config=Config())
    parent.user_options = {"profile": "slurm-small", "projects": "CARDIO_ECG,NEURO_MRI"}  # flat, as stored
    parent.xnat_record = rec
    parent._make_child("slurm")
    state = parent.get_state()
    assert state[STATE_KEY] == rec.to_state() and state["backend"] == "slurm"
    assert record_of(parent).projects == {"CARDIO_ECG", "NEURO_MRI"}
    # after a hub restart: a new spawner object, the state from the hub's database
    again = XnatProfilesSpawner(config=Config())
    again.load_state(json.loads(json.dumps(state)))
    assert again.xnat_record == rec and isinstance(again.child, XnatSlurmSpawner)
    again.clear_state()
    assert again.xnat_record is None and record_of(again) is None


def test_a_state_without_a_usable_record_loads_as_none():
    sp = XnatSlurmSpawner(config=Config())
    sp.load_state({STATE_KEY: {"v": 9}})
    assert sp.xnat_record is None


def test_the_record_knows_its_servers_token_and_no_other():
    token, personal = "s3rv3r-t0ken", "p3rs0nal"
    rec = SpawnRecord(scope=TWO, token_sha256=token_sha256(token))
    back = SpawnRecord.from_state(json.loads(json.dumps({STATE_KEY: rec.to_state()})))
    assert back.issued(token) and not back.issued(personal) and not back.issued("")
    assert token not in json.dumps(rec.to_state())  # the digest only, never the token
    records = {"a": SpawnRecord(scope=TWO), "b": back, "c": None}
    assert server_of_token(records, token) == "b"
    assert server_of_token(records, personal) is None
    assert server_of_token({"old": SpawnRecord(scope=TWO)}, "") is None  # no digest: nothing matches


def test_the_hub_knows_a_servers_token_exactly_also_after_a_restart():
    """Governance binds a token to a server by the digest in the server's record, read through
    the hub's REST API (the server's state): also after a hub restart, nothing in memory."""
    from xnat_hpc_governance.audit_api import server_for_token
    from hub_ext.hub_rest import HubServer, HubUser

    def server(name, record, active=True):
        return HubServer(name, active, True, None, "", {STATE_KEY: record.to_state()} if record else {})

    token = "t0ken-of-the-ecg-server"
    ecg = SpawnRecord(scope=TWO, token_sha256=token_sha256(token))
    other = SpawnRecord(scope=TWO, token_sha256=token_sha256("x"))
    user = HubUser("bob", {"ecg": server("ecg", ecg), "other": server("other", other)})
    assert server_for_token(user, token) == "ecg"
    assert server_for_token(user, "a-personal-token") is None
    stopped = HubUser("bob", {"ecg": server("ecg", ecg, active=False)})
    assert server_for_token(stopped, token) is None  # a stopped server's token is no server's
    # a server whose record keeps no digest (started before the hub kept one) matches nothing
    assert server_for_token(HubUser("bob", {"old": server("old", None)}), token) is None
    broken = HubUser("bob", {"bad": HubServer("bad", True, True, None, "", {STATE_KEY: {"v": 99}})})
    assert server_for_token(broken, token) is None


