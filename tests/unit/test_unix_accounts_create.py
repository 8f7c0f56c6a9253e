"""``c.UnixAccounts.create_missing`` (issue 20, item 4: a login with no Unix account): the hub
creates the account of a hub user who has none when their server starts, on a machine whose
accounts it owns; off by default (a start is refused, saying what to do). Real ``useradd``
(the tests run as root), a throwaway account removed afterwards."""

from __future__ import annotations

import os
import pwd
import secrets
import stat
import subprocess

import pytest
from traitlets.config import Config

from hub_ext.names import hub_name
from hub_ext.unix_accounts import UnixAccounts
from xnat_bridge.errors import PermissionDenied, XnatHpcError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creating accounts needs root")


@pytest.fixture
def throwaway():
    """A name no account has yet, as the hub derives it from an odd XNAT login; removed after."""
    name = hub_name(f"Tmp.User{secrets.token_hex(3)}")
    yield name
    subprocess.run(["userdel", "--remove", name], capture_output=True)


def _accounts(**traits) -> UnixAccounts:
    return UnixAccounts(config=Config({"UnixAccounts": traits}))


def test_off_by_default_a_missing_account_refuses_the_start_saying_what_to_do(throwaway):
    with pytest.raises(PermissionDenied, match=f"There is no Unix account '{throwaway}'.*map your XNAT login"):
        _accounts().entry(throwaway)
    with pytest.raises(KeyError):
        pwd.getpwnam(throwaway)


def test_on_the_account_is_made_once_with_a_private_home(throwaway):
    accounts = _accounts(create_missing=True)
    entry = accounts.entry(throwaway)
    assert entry.pw_name == throwaway and entry.pw_uid >= accounts.min_uid
    home = os.stat(entry.pw_dir)
    assert home.st_uid == entry.pw_uid and stat.S_IMODE(home.st_mode) == 0o700
    assert accounts.entry(throwaway).pw_uid == entry.pw_uid  # found, not made again


@pytest.mark.parametrize("name", ["Jane.Doe", "a b", "root;id", "x" * 33])
def test_only_lower_case_unix_names_are_created(name):
    with pytest.raises(PermissionDenied, match="does not create a Unix account"):
        _accounts(create_missing=True).entry(name)


def test_a_failing_command_refuses_the_start_and_leaves_no_account(throwaway):
    with pytest.raises(XnatHpcError, match="could not be created"):
        _accounts(create_missing=True, add_user_cmd=["false"]).entry(throwaway)
    with pytest.raises(KeyError):
        pwd.getpwnam(throwaway)


# -- c.UnixAccounts.name_template: the hub's accounts apart from people's own ----------------
@pytest.mark.parametrize("template", ["xnat-{name}", "{name}-hpc", "{name}"])
def test_the_template_names_the_account(template):
    assert _accounts(name_template=template).account_name("alice") == template.replace("{name}", "alice")


@pytest.mark.parametrize("template", ["xnat", "{name}{name}", "{user}-{name}", "{name}/x", "{}{name}"])
def test_a_template_without_exactly_one_name_field_is_refused_naming_it(template):
    from traitlets import TraitError

    with pytest.raises(TraitError, match="name_template must hold"):
        UnixAccounts(name_template=template)


def test_with_a_template_the_hub_user_runs_as_the_templated_account_never_the_plain_one(throwaway):
    """With a template the hub looks up, creates and names only the templated account of a hub
    user; an account of the plain name is never made or used."""
    prefix = throwaway.replace("--", "-")[:12].rstrip("-.") + "-"
    hub = "zq" + secrets.token_hex(3)
    try:
        accounts = _accounts(name_template=prefix + "{name}", create_missing=True)
        with pytest.raises(PermissionDenied, match=f"There is no Unix account '{prefix}{hub}'"):
            _accounts(name_template=prefix + "{name}").entry(hub)
        entry = accounts.entry(hub)
        assert entry.pw_name == prefix + hub
        with pytest.raises(KeyError):
            pwd.getpwnam(hub)
        assert accounts.lookup(hub).pw_uid == entry.pw_uid
    finally:
        subprocess.run(["userdel", "--remove", prefix + hub], capture_output=True)


def test_a_system_account_behind_the_template_is_refused_naming_the_hub_user():
    """``dae{name}`` makes the hub user ``mon`` the system account ``daemon``: refused."""
    with pytest.raises(PermissionDenied, match="The hub user 'mon' is refused because its Unix account is a system"):
        _accounts(name_template="dae{name}").lookup("mon")
