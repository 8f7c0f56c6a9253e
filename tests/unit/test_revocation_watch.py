"""The revocation runner and re-check (xnat_hpc_governance.revocation_watch), in-process with fakes:
the hub's REST API as governance reads it (users whose servers' state holds the hub's
SpawnRecord, snapshots as ``hub_ext.hub_rest.HubUser``), a permissions source, a stop callable
and an audit log. No sleeping: hanging effects wait on events that the test sets; bounds are
small, and "within the bound" is asserted generously. tests/unit/test_hub_rest.py runs the
re-check against a real in-process hub's REST API."""

from __future__ import annotations

import asyncio
import json
import logging
import os

import pytest
from traitlets.config import Config

from hub_ext import revocation
from xnat_hpc_governance import revocation_watch
from hub_ext.hub_rest import HubServer, HubUser
from xnat_hpc_governance.revocation_watch import RevocationWatch
from xnat_bridge.errors import PermissionDenied, TokenExpired
from xnat_bridge.scope import Scope
from xnat_bridge.spawn_record import STATE_KEY, SpawnRecord

SHA = "c" * 64
#: seconds a round that must not wait for a stuck user may take on a loaded machine
GENEROUS = 5.0


class FakeSpawner:
    def __init__(self, projects, *, started="2026-01-01T00:00:00Z", active=True, pending=None):
        self.record = SpawnRecord(scope=Scope.of(sorted(projects)), profile="p", backend="local", started=started)
        self.active, self.pending = active, pending
        # what was asked, stored flat for XNAT's readers: never read as the scope
        self.user_options = {"projects": ",".join(sorted(projects))}

    def get_state(self):
        return {STATE_KEY: self.record.to_state()}


class FakeUser:
    def __init__(self, name, auth_state=None, **spawners):
        self.name = name
        self.spawners = dict(spawners)
        self.auth_state = auth_state

    def snapshot(self, *, with_auth_state=True) -> HubUser:
        """As the hub's REST API shows this user now (the list carries no auth_state)."""
        servers = {n: HubServer(n, True, True, s.pending, s.record.started, s.get_state())
                   for n, s in self.spawners.items() if s.active}
        return HubUser(self.name, servers, (self.auth_state or {}) if with_auth_state else None)


class FakeRest:
    """What :class:`xnat_hpc_governance.revocation_watch.HubSource` reads: the active users, one user."""

    def __init__(self, users):
        self.users = {u.name: u for u in users}
        #: (owner, server) -> guests, JupyterHub's shares
        self.shared: dict[tuple[str, str], list[str]] = {}

    async def shares(self, owner, name):
        from hub_ext.hub_rest import Share

        return [Share(owner, name, g) for g in self.shared.get((owner, name), [])]

    async def unshare(self, owner, name, guest):
        self.shared[(owner, name)] = [g for g in self.shared.get((owner, name), []) if g != guest]

    async def active_users(self):
        return [u.snapshot(with_auth_state=False) for u in self.users.values()
                if any(s.active for s in u.spawners.values())]

    async def user(self, name):
        return self.users[name].snapshot() if name in self.users else None

    async def stop(self, user, name):
        raise AssertionError("the tests' stop is Hub.stop")


class FakeAudit:
    """``HubAuditLog``'s ``query`` (newest first) and ``record``."""

    def __init__(self, events=()):
        self.events = list(events)
        self.records = []

    def query(self, user=None, actions=None, limit=100, **kw):
        hits = [e for e in self.events if (user is None or e["user"] == user)
                and (actions is None or e["action"] in actions)]
        return list(reversed(hits))[:limit]

    async def record(self, user, action, outcome, *, items=(), detail="", **kw):
        self.records.append((user, action, outcome, list(items), detail))


class FakeLedger:
    """``ReviewStore.ledger_jobs`` over rows given up front."""

    def __init__(self, rows=()):
        self.rows = list(rows)

    def add_notice(self, user, text, now=None, *, key=''):  # the user's hub pages: not shown here
        pass

    def ledger_jobs(self, *, user=None, projects=None, states=None, limit=500):
        return [r for r in self.rows if (user is None or r["user"] == user)
                and (projects is None or set(projects) & set(r["projects"]))][:limit]


class Hub:
    """A watch over fake users: readable projects per user, stops recorded (or held)."""

    def __init__(self, users, *, readable, on_revoke="stop", timeout=1.0, staging="", events=(), jobs=()):
        self.config = Config()
        self.config.OwnerAccess.on_revoke = on_revoke
        self.config.OwnerAccess.revoke_timeout = timeout
        self.config.OwnerAccess.staging_dir = staging
        self.settings = {"config": self.config}
        self.rest = FakeRest(users)
        self.readable = readable
        self.stopped = []
        self.hold: dict[str, asyncio.Event] = {}
        self.audit = FakeAudit(events)
        self.watch = RevocationWatch(self.settings, permissions=self.permissions, stop=self.stop,
                                     audit_log=self.audit, ledger=FakeLedger(jobs), hub=self.rest)

    async def permissions(self, user):
        value = self.readable[user.name]
        if value is None:  # XNAT could not tell
            return None
        if isinstance(value, BaseException):
            raise value
        if isinstance(value, asyncio.Event):
            await value.wait()
            return None
        return set(value)

    async def stop(self, user, name):
        if user.name in self.hold:
            await self.hold[user.name].wait()
        self.stopped.append((user.name, name))
        self.rest.users[user.name].spawners[name].active = False


async def timed(awaitable):
    loop = asyncio.get_running_loop()
    began = loop.time()
    result = await awaitable
    return result, loop.time() - began


def test_a_fifo_in_the_staging_directory_blocks_nothing_and_the_real_bundle_goes(tmp_path, monkeypatch):
    """Issue 19: bob plants a FIFO under a sidecar's name; the revocation still finishes
    within its bound, removes the real bundle and stops the server."""
    name = "rvw-fifo-no-account"  # no Unix account: the staging directory is the hub's own
    root = tmp_path / "staging"
    udir = root / name
    udir.mkdir(parents=True)
    fifo = udir / "000000000000-000000000000.json"
    os.mkfifo(fifo)
    (udir / "0123456789ab-0123456789ab.json").write_text(json.dumps({"manifest_sha256": SHA}))
    (udir / "0123456789ab-0123456789ab.tar.age").write_bytes(b"age")
    # the ledger's job on A (its projects: the server's scope); a fake `submit` event posted by
    # the server is no job here: the ledger is written by the hub
    jobs = [{"user": name, "job": "j000000000001", "server": "s", "projects": ["A"], "slurm_job_id": "4242",
             "manifest_sha256": SHA, "created": "t1", "state": "running"}]

    async def squeue(ids):
        return {}  # Slurm forgot them: ended

    monkeypatch.setattr(revocation, "squeue", squeue)
    user = FakeUser(name, s=FakeSpawner({"A"}))
    hub = Hub([user], readable={name: set()}, timeout=GENEROUS, staging=str(root), jobs=jobs)

    async def main():
        try:
            return await timed(hub.watch.check_once())
        finally:  # a regression blocked in open(): release it, or asyncio.run waits for its thread
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass  # no reader waiting: nothing blocked

    done, elapsed = asyncio.run(main())
    assert elapsed < GENEROUS
    [(who, project, report)] = done
    assert (who, project) == (name, "A") and report.pending == []
    assert sorted(report.wiped) == ["0123456789ab-0123456789ab.json", "0123456789ab-0123456789ab.tar.age"]
    assert [p.name for p in udir.iterdir()] == [fifo.name]
    assert report.stopped == ["s"] and hub.stopped == [(name, "s")]
    assert [j for j, _ in report.jobs] == ["4242"]  # a fake submit event on the trail is no job


def test_a_user_whose_effects_hang_delays_no_one_and_is_reported_pending():
    stuck, bob = FakeUser("stuck", s=FakeSpawner({"A"})), FakeUser("bob", s=FakeSpawner({"A"}))
    hub = Hub([stuck, bob], readable={"stuck": set(), "bob": set()}, timeout=1.0)

    async def main():
        hub.hold["stuck"] = asyncio.Event()  # never set until the round is over
        done, elapsed = await timed(hub.watch.check_once())
        assert elapsed < GENEROUS
        reports = {who: report for who, _, report in done}
        assert reports["stuck"].pending == ["stopping server s"] and reports["stuck"].stopped == []
        assert "still pending" in reports["stuck"].summary()
        assert reports["bob"].stopped == ["s"] and reports["bob"].pending == []
        assert hub.stopped == [("bob", "s")]
        assert len(hub.watch.background) == 1
        # the next round does not start the same revocation again while it runs
        assert await hub.watch.check_once() == []
        hub.hold["stuck"].set()
        await asyncio.gather(*hub.watch.background)
        assert hub.stopped == [("bob", "s"), ("stuck", "s")] and reports["stuck"].stopped == []
        assert not hub.watch.in_flight and not hub.watch.background

    asyncio.run(main())


def test_a_multi_project_server_is_left_alone_while_both_projects_are_readable():
    """Finding 3: the scope is the spawn record's {A, B}, not user_options' "A,B"."""
    user = FakeUser("bob", s=FakeSpawner({"A", "B"}))
    hub = Hub([user], readable={"bob": {"A", "B"}})

    async def main():
        assert await hub.watch.check_once() == []
        assert hub.stopped == [] and hub.audit.records == []
        hub.readable["bob"] = {"A"}
        [(who, project, report)] = await hub.watch.check_once()
        assert (who, project, report.stopped) == ("bob", "B", ["s"])
        assert hub.stopped == [("bob", "s")]

    asyncio.run(main())


def test_the_re_check_ends_the_shares_whose_guest_lost_a_project_of_the_scope():
    """Issue 22: bob's server on A and B is shared with dave (reads both), erin (lost B), carol
    (XNAT could not tell: kept until it can) and ghost (no hub user any more)."""
    users = [FakeUser("bob", s=FakeSpawner({"A", "B"})), FakeUser("dave"), FakeUser("erin"), FakeUser("carol")]
    hub = Hub(users, readable={"bob": {"A", "B"}, "dave": {"A", "B", "C"}, "erin": {"A"}, "carol": None})
    hub.rest.shared[("bob", "s")] = ["dave", "erin", "carol", "ghost"]

    async def main():
        assert await hub.watch.check_once() == []  # bob keeps his server
        assert hub.rest.shared[("bob", "s")] == ["dave", "carol"]
        ended = [(r[0], r[1], r[2], r[3]) for r in hub.audit.records if r[1] == "unshare"]
        assert ended == [("bob", "unshare", "allowed", ["A", "B"])] * 2
        details = [r[4] for r in hub.audit.records if r[1] == "unshare"]
        assert "erin's share ended by the hub's re-check: erin may no longer read B in XNAT" in details[0]
        assert "ghost's share ended by the hub's re-check: ghost is no hub user any more" in details[1]
        hub.readable["carol"] = {"B"}
        await hub.watch.check_once()
        assert hub.rest.shared[("bob", "s")] == ["dave"]

    asyncio.run(main())


def test_a_server_restarted_after_being_handled_is_handled_again():
    spawner = FakeSpawner({"A"}, started="t1")
    user = FakeUser("bob", s=spawner)
    hub = Hub([user], readable={"bob": set()}, on_revoke="narrow")

    async def main():
        [(_, _, report)] = await hub.watch.check_once()
        assert report.left_running == ["s"]
        assert await hub.watch.check_once() == []  # handled while it runs
        spawner.record = SpawnRecord(scope=Scope.of(["A"]), started="t2")  # restarted
        [(_, _, report)] = await hub.watch.check_once()
        assert report.left_running == ["s"]
        spawner.active = False  # stopped: forgotten ...
        assert await hub.watch.check_once() == [] and hub.watch.handled == set()
        spawner.active = True  # ... so its next start is looked at again
        assert len(await hub.watch.check_once()) == 1

    asyncio.run(main())


def test_one_users_error_or_silence_does_not_end_the_round(caplog):
    users = [FakeUser(n, s=FakeSpawner({"A"})) for n in ("broken", "silent", "bob")]
    hub = Hub(users, readable={"broken": RuntimeError("boom"), "silent": asyncio.Event(), "bob": set()})
    hub.watch.question_timeout = 0.2

    async def main():
        with caplog.at_level(logging.WARNING, logger="xnat_hpc_governance.revocation_watch"):
            done, elapsed = await timed(hub.watch.check_once())
        assert elapsed < GENEROUS
        assert [(who, project) for who, project, _ in done] == [("bob", "A")]
        assert "re-check of broken failed" in caplog.text
        assert "re-check of silent skipped this round" in caplog.text

    asyncio.run(main())


def test_a_runner_starts_one_re_check_loop_and_none_when_turned_off():
    """The re-check loop runs in the governance service's process only (xnat_hpc_governance;
    tests/unit/test_governance_service.py), one per runner; ``recheck_interval = 0`` starts none."""
    config = Config()
    config.OwnerAccess.recheck_interval = 3600.0

    def loops():
        return [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "RevocationWatch._loop"]

    async def main():
        watch = RevocationWatch({"config": config})
        assert loops() == []
        watch.start()  # what the service does
        assert len(loops()) == 1
        watch.start()
        assert len(loops()) == 1
        watch.stop()
        off = Config()
        off.OwnerAccess.recheck_interval = 0
        other = RevocationWatch({"config": off})
        other.start()
        await asyncio.sleep(0)
        assert loops() == []

    asyncio.run(main())


# -- asking XNAT: own token, else the service account ------------------------------------------

class FakeClient:
    """``XnatClient`` as a context manager; an alias token in *dead* is refused."""

    calls: list = []
    dead: set = set()
    refuse_service = False

    def __init__(self, url, user, password, **kw):
        FakeClient.calls.append((url, user, password))
        if user in FakeClient.dead:
            raise TokenExpired("XNAT no longer accepts this alias token")
        self.user = user

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _fake_permissions(client, login):
    if client.user == "hubsvc" and FakeClient.refuse_service:
        raise PermissionDenied(f"XNAT does not let hubsvc read the groups of {login}")

    class P:
        roles = {"A": "Member"}

    return P()


@pytest.fixture
def xnat(monkeypatch):
    FakeClient.calls, FakeClient.dead, FakeClient.refuse_service = [], set(), False
    monkeypatch.setattr(revocation_watch, "XnatClient", FakeClient)
    monkeypatch.setattr(revocation_watch, "fetch_permissions", _fake_permissions)
    return FakeClient


def _watch_for(state, tmp_path, service=True):
    config = Config()
    if service:
        pw = tmp_path / "pw"
        pw.write_text("svc-secret\n")
        os.chmod(pw, 0o600)
        config.XnatScopedSpawner.xnat_service_user = "hubsvc"
        config.XnatScopedSpawner.xnat_service_password_file = str(pw)

    class Authenticator:
        xnat_url = "http://xnat.test"

    rest = FakeRest([FakeUser("bob", state, s=FakeSpawner({"A"}))])
    return RevocationWatch({"config": config, "authenticator": Authenticator()}, hub=rest), \
        rest.users["bob"].snapshot(with_auth_state=False)


def test_the_re_check_asks_with_the_users_own_token(xnat, tmp_path):
    watch, user = _watch_for({"xnat_user": "bob", "xnat_token": {"alias": "al1", "secret": "s1"}}, tmp_path)
    assert asyncio.run(watch._readable(user)) == {"A"}
    assert xnat.calls == [("http://xnat.test", "al1", "s1")]


@pytest.mark.parametrize("state", [{}, {"xnat_user": "bob", "xnat_token": {"alias": "dead", "secret": "s"}}])
def test_a_dead_or_missing_token_is_re_checked_as_the_service_account(xnat, tmp_path, state):
    xnat.dead = {"dead"}
    watch, user = _watch_for(state, tmp_path)
    assert asyncio.run(watch._readable(user)) == {"A"}
    assert xnat.calls[-1] == ("http://xnat.test", "hubsvc", "svc-secret")


def test_without_a_service_account_or_its_rights_the_user_is_skipped_and_said(xnat, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="xnat_hpc_governance.revocation_watch"):
        watch, user = _watch_for({}, tmp_path, service=False)
        assert asyncio.run(watch._readable(user)) is None
        assert "no service account" in caplog.text and xnat.calls == []
        xnat.refuse_service = True
        watch, user = _watch_for({}, tmp_path)
        assert asyncio.run(watch._readable(user)) is None
        assert "Administrator role" in caplog.text


# -- stopping: the hub's REST API, as the governance service -------------------------------------

def test_the_watchs_own_reads_and_stops_are_the_hub_rest_api_and_unconfigured_they_say_what_to_add(caplog):
    """No JupyterHub object is read: without ``c.XnatGovernance.token_file`` (and outside the
    service's process, which has the hub's token) the round fails naming the setting, and a
    revocation whose user was read reports the stop that could not be made
    (tests/unit/test_hub_rest.py stops real servers of an in-process hub this way)."""
    from hub_ext.hub_rest import GovernanceNotConfigured
    from xnat_hpc_governance.revocation_watch import HubSource

    config = Config()
    config.OwnerAccess.recheck_interval = 3600.0
    spawner = FakeSpawner({"A"})
    rest = FakeRest([FakeUser("bob", s=spawner)])

    class ReadsFaked(HubSource):  # the users from the fake, the stop the real one
        active_users, user = rest.active_users, rest.user

    async def main():
        unconfigured = RevocationWatch({"config": config}, permissions=lambda u: asyncio.sleep(0, set()),
                                       audit_log=FakeAudit(), ledger=FakeLedger())
        with pytest.raises(GovernanceNotConfigured, match="c.XnatGovernance.token_file is not set"):
            await unconfigured.check_once()
        settings = {"config": config}
        watch = RevocationWatch(settings, permissions=lambda u: asyncio.sleep(0, set()),
                                audit_log=FakeAudit(), ledger=FakeLedger(), hub=ReadsFaked(settings))
        [(_, _, report)] = await watch.check_once()
        assert report.stopped == [] and "c.XnatGovernance.token_file" in report.problems[0]
        assert "register_governance" in report.problems[0] and spawner.active

    asyncio.run(main())
