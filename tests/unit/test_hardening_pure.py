"""The pure parts of the hardening (issue 12, findings 1, 3, 4, 7): what devxnat may log,
which XNAT logins may become which hub names, the uid floor, which channels the
launcher accepts, and what an owner sees of an event about several projects."""

from __future__ import annotations

import types

import pytest
from traitlets import TraitError
from traitlets.config import Config

from xnat_bridge.errors import PermissionDenied


# -- devxnat's log ----------------------------------------------------------------------

@pytest.mark.parametrize("uri, shown", [
    ("/data/services/tokens/validate/a1b2/s3cr3t", "/data/services/tokens/validate/a1b2/[redacted]"),
    ("/data/services/tokens/invalidate/a1b2/s3cr3t?x=1", "/data/services/tokens/invalidate/a1b2/[redacted]?x=1"),
    ("/xapi/services/tokens/VALIDATE/a1b2/s3cr3t/", "/xapi/services/tokens/VALIDATE/a1b2/[redacted]"),
    ("/data/services/tokens/validate/a1b2%2Fs3cr3t", "/data/services/tokens/validate/a1b2/[redacted]"),
    ("/data/services/tokens/invalidate/a1b2", "/data/services/tokens/invalidate/a1b2"),
    ("/data/services/auth?username=bob&password=s3cr3t", "/data/services/auth?username=bob&password=[redacted]"),
    ("/data/projects?format=json&XNAT_PASS=s3cr3t&alias_token=s3cr3t",
     "/data/projects?format=json&XNAT_PASS=[redacted]&alias_token=[redacted]"),
    ("/data/projects/P1/subjects?columns=ID", "/data/projects/P1/subjects?columns=ID"),
])
def test_devxnat_log_lines_never_show_a_secret(uri, shown):
    from devxnat.redact import redact_uri

    assert redact_uri(uri) == shown
    assert "s3cr3t" not in redact_uri(uri)


# -- names ---------------------------------------------------------------------------------

def test_hub_names_are_never_folded_and_collide_with_no_other_login():
    from hub_ext.auth import DEFAULT_NAME_PATTERN, XnatAuthenticator, hub_name_problem
    from hub_ext.names import derived_name

    a = XnatAuthenticator(config=Config({"XnatAuthenticator": {"username_map": {"J.Doe": "jdoe"}}}))
    # JupyterHub's default would say "alice" for both: two XNAT accounts, one hub user
    assert a.normalize_username("alice") == "alice"
    assert a.normalize_username("ALICE") == derived_name("ALICE") != "alice"
    assert a.normalize_username("ALICE").startswith("alice--")
    assert a.normalize_username("J.Doe") == "jdoe"
    # the XNAT account "jdoe" is not J.Doe's hub user: the map reserved that name
    assert a.normalize_username("jdoe") == derived_name("jdoe") != "jdoe"
    # a login shaped like a derived name is derived again, never taken as it is
    assert a.normalize_username(derived_name("ALICE")) != derived_name("ALICE")
    # the same rule for names made through the REST API and allowed_users/admin_users
    assert a.validate_username("alice") and not a.validate_username("ALICE")
    assert a.validate_username(a.normalize_username("a@b.org"))
    ok = dict(pattern=DEFAULT_NAME_PATTERN, mapping=a.username_map)
    assert hub_name_problem("alice", "alice", **ok) == ""
    assert hub_name_problem("j.doe", "j.doe", **ok) == ""
    assert hub_name_problem("J.Doe", "jdoe", **ok) == ""
    assert hub_name_problem("ALICE", a.normalize_username("ALICE"), **ok) == ""
    problem = hub_name_problem("ALICE", "ALICE", **ok)  # a mapping that breaks the pattern
    assert problem.startswith("The XNAT account 'ALICE' cannot log in here because 'ALICE' is not a valid")
    assert "username_map" in problem and problem.count(". ") == 0  # one sentence
    # the hub user of a derived name already belongs to another XNAT account: refused
    held = hub_name_problem("ALICE", "alice--e7dcee3cc63d170b", holder="Alice", **ok)
    assert "already belongs to the XNAT account 'Alice'" in held
    assert hub_name_problem("x" * 33, "x" * 33, **ok)  # longer than a Unix name may be


def test_username_map_must_be_one_to_one():
    from hub_ext.auth import XnatAuthenticator

    with pytest.raises(TraitError, match="gives the hub name 'alice' to both"):
        XnatAuthenticator(username_map={"ALICE": "alice", "Alice": "alice"})
    with pytest.raises(TraitError, match="not a regular expression"):
        XnatAuthenticator(name_pattern="[a-z")


# -- system accounts -----------------------------------------------------------------------

def test_uid_floor_refuses_system_accounts():
    from hub_ext.unix_accounts import UnixAccounts, unix_account

    with pytest.raises(PermissionDenied, match=r"'root' is refused .* system account \(uid 0, below "
                                               r"this hub's minimum 1000\)"):
        UnixAccounts().lookup("root")
    with pytest.raises(PermissionDenied, match="uid 1,"):
        unix_account("daemon")
    assert UnixAccounts().lookup("no-such-account-xnathpc") is None  # login without a Unix account: fine
    with pytest.raises(PermissionDenied, match="There is no Unix account 'no-such-account-xnathpc'"):
        unix_account("no-such-account-xnathpc")
    c = Config()
    c.UnixAccounts.min_uid = 0  # the admin's choice, in one place
    assert unix_account("root", c).pw_uid == 0


def test_local_and_slurm_spawners_refuse_system_accounts():
    from spawner.local import XnatLocalSpawner
    from spawner.slurm import XnatSlurmSpawner

    daemon = types.SimpleNamespace(name="daemon", url="/user/daemon/")
    with pytest.raises(PermissionDenied, match="system account"):
        XnatSlurmSpawner(config=Config(), user=daemon)._home()
    with pytest.raises(PermissionDenied, match="system account"):
        XnatLocalSpawner(config=Config(), user=daemon).sandbox_spec(None)


# -- the launcher's channel -----------------------------------------------------------------

@pytest.mark.parametrize("url, allowed", [
    ("https://hub.example.org:8081/hub/api", True),
    ("http://127.0.0.1:8081/hub/api", True),
    ("http://127.3.4.5:8081/hub/api", True),
    ("http://localhost:8081/hub/api", True),
    ("http://[::1]:8081/hub/api", True),
    ("http://10.0.0.5:8081/hub/api", False),
    ("http://hub.example.org:8081/hub/api", False),
    ("http://localhost.example.org/hub/api", False),
    ("ftp://127.0.0.1/hub/api", False),
])
def test_launch_accepts_only_https_or_loopback(url, allowed):
    from xnat_bridge.launch import channel_problem

    problem = channel_problem(url)
    assert (problem == "") is allowed
    if not allowed:
        assert "not https and not a loopback address" in problem and "internal_ssl" in problem


def test_launch_tls_context_verifies():
    import ssl

    from xnat_bridge.launch import tls_context

    ctx = tls_context({})
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


# -- the owners' page -------------------------------------------------------------------------

def test_owner_sees_only_their_part_of_an_event_about_several_projects():
    from xnat_hpc_governance.owner_render import WITHHELD, events_for, simple_page, visible_part

    spanning = {"user": "u", "items": ["PROJ_A", "PROJ_B"],
                "detail": 'profile p; scope {"projects": {"PROJ_A": {}, "PROJ_B": {}}}',
                "hashes": {"PROJ_A/arc001/x.nii": "ab"}}
    own = {"user": "v", "items": ["PROJ_A"], "detail": "profile p; scope PROJ_A", "hashes": {}}
    assert visible_part(own, {"PROJ_A"}) is own
    part = visible_part(spanning, {"PROJ_B"})
    assert part["items"] == ["PROJ_B"] and part["detail"] == WITHHELD and part["hashes"] == {}
    assert visible_part(spanning, {"PROJ_A", "PROJ_B"}) is spanning  # owner of both, site admin: all
    shown = events_for([own, spanning], {"PROJ_B"})
    assert [e["items"] for e in shown] == [["PROJ_B"]]
    assert "PROJ_A" not in simple_page("dave", {"PROJ_B"}, shown, "intact")
