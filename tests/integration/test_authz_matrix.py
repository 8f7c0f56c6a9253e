"""The authorization matrix (issue 12): every hub page and API of ours and every route of
the researcher's server API, asked by each kind of caller, on real components — a real
JupyterHub with configurable-http-proxy, devxnat, two local-profile servers, a real
offload job on the local Slurm.

Who is who (devxnat's demo): alice owns NEURO_MRI and was a Member of SLEEP_EEG until
its owner dave removes her through XNAT's REST API (the fixture does, as XNAT would);
bob is a Collaborator of NEURO_MRI and a Member of CARDIO_ECG; carol is in no project;
``admin`` is XNAT's site administrator (an ordinary hub user: XNAT rights give nothing
on the hub). alice's server ``authz`` is scoped to NEURO_MRI + SLEEP_EEG, bob's to
CARDIO_ECG.

Callers: ``no auth``; ``other user`` (bob's token or cookie on alice's things);
``token without access scope`` (alice's token with ``read:users!user=alice`` only);
``deleted token`` (a token of alice's deleted on the hub); ``site admin`` (admin's token
or cookie); ``no project access`` (a project outside the server's scope and unreadable
in XNAT, or a user in no project); ``revoked`` (alice on SLEEP_EEG after dave removed
her, or carol after dave granted and took back ownership of CARDIO_ECG);
``out of scope`` (bob on NEURO_MRI, which XNAT lets him read but his server's scope
does not hold); ``owner`` (alice on her project, or dave on his); ``server's own token``
(the ``JUPYTERHUB_API_TOKEN`` the hub gave alice's running server).

The hub's routes (``hub_ext.handlers.xnat_hpc_handlers``) and the governance service's owners'
pages (``/services/xnat-hpc-governance/…``, where owners come through the hub's OAuth; a token
reads them and changes nothing; the hub's old addresses redirect there): the owners' audit page
(HTML and JSON); the bootstrap API; the spawn REST API and form; the owners' access page
(``…/owner/access``: the page, ``?project=``, grant and revoke forms — a refused
change leaves XNAT's user list of the project as it was, asked as XNAT's admin); results
review (``…/review``: the page, the mark and decide forms — a refused one
leaves the marked projects, read from the hub's review store, and the held job as they
were — and the servers' API ``…/review/jobs/{job}``: held results only for a job the
ledger entered, sealed to that job's own review key, from its server's own token; a job
and its key share only to its own user's token; ``…/review/policy`` is gone, 410); the
job ledger (``/hub/api/xnat-hpc/jobs/{job}``: only a running server's own token enters or
reports a job, whose projects are that server's scope and never the body's claim; a job
is read only by its own user's token); the audit ingest (``/hub/api/xnat-hpc/audit``: only
a running server's own token; a refused batch appends nothing to the hub's trail). For
the review cells the fixture has alice mark NEURO_MRI and dave CARDIO_ECG for review,
enters jobs of bob (scope CARDIO_ECG: review by CARDIO_ECG) and alice (scope NEURO_MRI +
SLEEP_EEG: review by NEURO_MRI) in the ledger with their servers' tokens, holds their
results sealed to each job's own recipient (alice then approves hers), and carries
previews whose markers must not reach another owner's page.
XNAT's own plugin starting servers as the ``xnat`` service is tested in
``test_xnat_plugin_hub.py``.

What every cell asserts (docs/security.md, docs/architecture.md): XNAT decides; the
status is exactly the expected one (a denial is 401/403/404, never 500, and a JSON
denial carries a message); the body holds nothing the caller must not see — other
projects' subjects and sessions, alice's datasets and jobs — except what the request
itself named; and a refused change changed nothing (no server, dataset or job appeared,
none was deleted or cancelled). A cell that shows a product gap not fixed yet carries
``finding`` and is an expected failure (``xfail(strict=True)``) naming it.

The revoked cells of the server API come last and wait (once) until the servers'
permission cache (60 s) has expired since the revocation: XNAT's revocation takes effect
within that TTL by design. One run takes about one and a half minutes: 283 cells (143 on
the hub's routes, 140 on the server API), none of them an open finding.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from devstack.accounts import install_file
from hub_ext.review_store import JOB_ID_RE, ReviewStore
from tests.fixtures.accounts import unix_name
from tests.fixtures.spawn import audit_events, make_hub, process_environ, server_process, stop_server, wait_ready
from xnat_bridge.offload import review as rv
from xnat_bridge.staging import AgeIdentity

pytestmark = [pytest.mark.devxnat, pytest.mark.slurm]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "train_example.py"
SCRIPT = "examples/train_example.py"  # where the demo puts it in each home (install_file)
SERVER = "authz"
#: devxnat's permission answers are cached this long in a server (xnat_bridge.permissions)
#: how long this module's servers trust an answer: XNAT's about projects (c.OwnerAccess.permission_ttl,
#: the servers' XNAT_HPC_PERMISSION_TTL) and the hub's about a token (hub_auth_cache_max_age); both
#: 60 s by default, short here so that the revocation cells wait seconds, not minutes
PERMISSION_TTL = 3
DEMO_PROJECTS = ("NEURO_MRI", "SLEEP_EEG", "CARDIO_ECG")
#: names this module creates in alice's workspace; removed again at the end
ALICE_DATASETS = ("authz-mri", "authz-sleep", "authz-doomed", "authz-cell")


# -- the callers ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Who:
    label: str
    user: str | None = None
    cred: str = "token"  # none | token | limited | deleted | used | server | activity | cookie


NOBODY = Who("no auth", cred="none")
OTHER = Who("other user", "bob")
OTHER_COOKIE = Who("other user", "bob", "cookie")
NO_SCOPE = Who("token without access scope", "alice", "limited")
DELETED = Who("deleted token", "alice", "deleted")
DELETED_AFTER_USE = Who("token deleted after use", "alice", "used")
ADMIN = Who("site admin", "admin")
ADMIN_COOKIE = Who("site admin", "admin", "cookie")
OWNER = Who("owner", "alice")
OWNER_COOKIE = Who("owner", "alice", "cookie")
DAVE_COOKIE = Who("owner (dave)", "dave", "cookie")
NO_ACCESS = Who("no project access", "alice")
NO_ACCESS_COOKIE = Who("no project access", "carol", "cookie")
NO_ACCESS_ALICE_COOKIE = Who("no project access", "alice", "cookie")
REVOKED = Who("revoked", "alice")
REVOKED_COOKIE = Who("revoked", "alice", "cookie")
REVOKED_OWNER_COOKIE = Who("revoked", "carol", "cookie")
OUT_OF_SCOPE = Who("out of scope", "bob")
TOKEN_ON_PAGE = Who("API token (owners' pages: reads, never a form)", "alice")
#: a personal token of alice's limited to reporting her activity: the scope a server's token
#: holds, but no server's token (only a server enters jobs in the hub's ledger)
ACTIVITY_TOKEN = Who("personal token with users:activity", "alice", "activity")


# -- the world the cells run in ------------------------------------------------------------

@dataclasses.dataclass
class World:
    hub: object
    devxnat: object
    sessions: dict[str, requests.Session]
    tokens: dict[str, str]
    experiments: dict[str, list[tuple[str, str]]]  # project -> [(id, label)]
    job_id: str
    revoked_at: float
    jobs: set[str] = dataclasses.field(default_factory=set)  # alice's job ids once the fixture is done
    values: dict[str, str] = dataclasses.field(default_factory=dict)
    members: dict[str, set] = dataclasses.field(default_factory=dict)  # XNAT's users of each project
    ledger: dict[str, dict] = dataclasses.field(default_factory=dict)  # alice's ledger rows after set-up

    def fmt(self, text: str) -> str:
        return text.format(**self.values)

    def expand(self, text: str) -> list[str]:
        """A hide entry: ``@exp:P`` is every session id of project P (``@exp:*``: of all)."""
        if text.startswith("@exp:"):
            projects = DEMO_PROJECTS if text == "@exp:*" else (text[5:],)
            return [e for p in projects for e, _ in self.experiments[p]]
        return [self.fmt(text)]

    def server_api(self, user: str, method: str, path: str, token: str | None = None, **kw):
        headers = {"Authorization": f"token {token or self.tokens[user]}"}
        return requests.request(method, f"{self.hub.url}/user/{user}/{SERVER}/xnat-hpc/api/{path}",
                                headers=headers, timeout=60, **kw)

    def alice(self, method: str, path: str, **kw):
        """alice's own server as alice (for set-up and after-checks)."""
        return self.server_api("alice", method, path, **kw)

    def review_api(self, user: str, method: str, path: str, **kw):
        """The hub's review API with *user*'s own token (set-up and after-checks)."""
        return requests.request(method, f"{self.hub.url}/hub/api/xnat-hpc/review/{path}",
                                headers={"Authorization": f"token {self.tokens[user]}"}, timeout=60, **kw)

    def ledger_api(self, user: str, method: str, job: str, **kw):
        """The hub's job ledger (``/hub/api/xnat-hpc/jobs/{job}``) with the token ``tokens[user]``
        (``alice-server``: her server's own token)."""
        return requests.request(method, f"{self.hub.url}/hub/api/xnat-hpc/jobs/{job}",
                                headers={"Authorization": f"token {self.tokens[user]}"}, timeout=60, **kw)

    def marked(self) -> list[str]:
        """The projects marked for review, read from the hub's review store (hub_ext.review_store,
        at its default path under the hub's working directory) as the hub reads them."""
        path = Path(self.hub.log_path).parent / "xnat-hpc-review" / "review.db"
        assert path.exists(), f"no review store at {path}"
        return sorted(ReviewStore(path=str(path)).marked())

    def post_form(self, user: str, path: str, **data) -> requests.Response:
        """A form of the hub's or the governance service's pages posted by *user* (logged in),
        with their _xsrf of that side."""
        session = self.sessions[user]
        data["_xsrf"] = xsrf_for(session, path)
        return session.post(f"{self.hub.url}{path}", data=data, allow_redirects=False, timeout=60)

    def wait_for_revocation(self) -> None:
        """A server trusts XNAT's answer for PERMISSION_TTL s: revocation holds after that."""
        left = self.revoked_at + PERMISSION_TTL + 1 - time.monotonic()
        if left > 0:
            time.sleep(left)


#: the owners' pages, on the governance service (the hub's old addresses redirect there)
SERVICE = "/services/xnat-hpc-governance/"


def _login(hub, user: str) -> requests.Session:
    """*user* logged in to the hub, and through the hub's OAuth to the governance service's pages
    (the browser's two sessions: the hub's cookie and the service's)."""
    s, r = hub.login(user, f"{user}-demo")
    assert r.status_code == 302, f"login of {user}: {r.status_code} {r.text[:300]}"
    r = s.get(f"{hub.url}{SERVICE}owner", timeout=60)
    assert r.url == f"{hub.url}{SERVICE}owner" and s.cookies.get("service-xnat-hpc-governance"), r.url
    return s


def xsrf_for(session: requests.Session, path: str) -> str:
    """The session's ``_xsrf`` cookie of the side *path* is on: the service's or the hub's (a
    browser sends each only to its own path)."""
    side = SERVICE if path.startswith(SERVICE) else "/hub/"
    return session.cookies.get("_xsrf", path=side) or ''


def _token(hub, user: str, note: str = "authz matrix", **body) -> str:
    r = hub.api("POST", f"/users/{user}/tokens", json={"note": note, "expires_in": 3600, **body})
    assert r.status_code in (200, 201), r.text
    return r.json()["token"]


def _spawn(hub, user: str, server: str, projects: list[str]) -> None:
    r = hub.api("POST", f"/users/{user}/servers/{server}",
                json={"profile": "local-small", "projects": projects})
    assert r.status_code in (201, 202), r.text
    wait_ready(hub, user, server, timeout=120)


def _experiments(devxnat, project: str) -> list[tuple[str, str]]:
    rows = devxnat.get(f"/data/projects/{project}/experiments?format=json&columns=ID,label",
                       "admin").json()["ResultSet"]["Result"]
    return sorted((r["ID"], r["label"]) for r in rows)


def _owner_page(session: requests.Session, hub) -> dict:
    r = session.get(f"{hub.url}/hub/xnat-hpc/owner?format=json", timeout=60)
    assert r.status_code == 200, r.text[:500]
    return r.json()


@pytest.fixture(scope="module")
def staging(public_dir):
    path = public_dir / "staging-authz"
    path.mkdir(exist_ok=True)
    os.chmod(path, 0o1777)
    return path


@pytest.fixture(scope="module")
def world(shared_devxnat, unix_users, staging, slurm, tmp_path_factory):
    xnat = shared_devxnat
    hub = make_hub(tmp_path_factory.mktemp("authz-hub"), xnat, "xnat", staging=staging,
                   extra=f"c.OwnerAccess.permission_ttl = {PERMISSION_TTL}\n"
                         f"c.XnatScopedSpawner.hub_auth_cache_max_age = {PERMISSION_TTL}\n")
    started: list[tuple[str, str]] = []
    restore: list[tuple[str, str, str]] = []  # (method, path, as user): undoes an XNAT change
    world = None
    try:
        sessions = {u: _login(hub, u) for u in ("alice", "bob", "carol", "dave", "admin")}
        tokens = {u: _token(hub, u) for u in ("alice", "bob", "admin")}
        tokens["alice-limited"] = _token(hub, "alice", scopes=["read:users!user=alice"])
        tokens["alice-activity"] = _token(hub, "alice", note="authz matrix: activity",
                                          scopes=["users:activity!user"])
        tokens["alice-deleted"] = _token(hub, "alice", note="authz matrix: deleted")
        tokens["alice-used"] = _token(hub, "alice", note="authz matrix: used")
        install_file(unix_name("alice"), EXAMPLE, SCRIPT)

        _spawn(hub, "alice", SERVER, ["NEURO_MRI", "SLEEP_EEG"])
        started.append(("alice", SERVER))
        _spawn(hub, "bob", SERVER, ["CARDIO_ECG"])
        started.append(("bob", SERVER))

        experiments = {p: _experiments(xnat, p) for p in DEMO_PROJECTS}
        world = World(hub, xnat, sessions, tokens, experiments, job_id="", revoked_at=0.0)
        world.values = {"mri_exp": experiments["NEURO_MRI"][0][0],
                        "sleep_exp": experiments["SLEEP_EEG"][0][0],
                        "cardio_exp": experiments["CARDIO_ECG"][0][0]}
        # alice's workspace: datasets of both projects (before the revocation), a job
        for name, project, exp in (("authz-mri", "NEURO_MRI", "mri_exp"),
                                   ("authz-sleep", "SLEEP_EEG", "sleep_exp"),
                                   ("authz-doomed", "NEURO_MRI", "mri_exp")):
            world.alice("DELETE", f"datasets/{name}")
            r = world.alice("POST", "datasets", json={"name": name, "selection": [
                {"project": project, "experiment": world.values[exp]}]})
            assert r.status_code == 201, r.text
        world.alice("DELETE", "datasets/authz-cell")
        r = world.server_api("bob", "POST", "datasets", json={
            "name": "authz-cardio", "selection": [{"project": "CARDIO_ECG", "experiment": world.values["cardio_exp"]}]})
        assert r.status_code in (200, 201), r.text
        r = world.alice("POST", "jobs", json={"dataset": "authz-mri", "script": SCRIPT, "cpus": 1,
                                              "memory": "512M", "walltime": "0:05:00",
                                              "client_token": f"authz-{time.time_ns()}"})
        assert r.status_code == 202, r.text
        world.job_id = world.values["job"] = r.json()["id"]
        world.values["job_token"] = r.json()["client_token"]
        world.jobs = {j["id"] for j in world.alice("GET", "jobs").json()["items"]}

        # the deleted token: deleted on the hub before it was ever used
        _delete_token(hub, "alice", "authz matrix: deleted")
        # and one deleted after alice's server accepted it
        r = world.server_api("alice", "GET", "scope", token=tokens["alice-used"])
        assert r.status_code == 200, r.text
        _delete_token(hub, "alice", "authz matrix: used")

        # carol: made an Owner of CARDIO_ECG by dave, sees it, then dave takes it back
        r = xnat.request("PUT", "/data/projects/CARDIO_ECG/users/Owners/carol", "dave")
        assert r.status_code == 200, r.text
        restore.append(("DELETE", "/data/projects/CARDIO_ECG/users/Owners/carol", "dave"))
        assert _owner_page(sessions["carol"], hub)["owned"] == ["CARDIO_ECG"]
        r = xnat.request("DELETE", "/data/projects/CARDIO_ECG/users/Owners/carol", "dave")
        assert r.status_code == 200, r.text
        restore.pop()

        # alice: removed from SLEEP_EEG by its owner, through XNAT's REST API
        r = xnat.request("DELETE", "/data/projects/SLEEP_EEG/users/Members/alice", "dave")
        assert r.status_code == 200, r.text
        restore.append(("PUT", "/data/projects/SLEEP_EEG/users/Members/alice", "dave"))
        world.revoked_at = time.monotonic()
        # for the owners' grant/revoke cells: XNAT's user lists as they are now
        restore.append(("DELETE", f"/data/projects/NEURO_MRI/users/{GRANT_GROUP}/carol", "alice"))
        world.members = {p: project_members(xnat, p) for p in DEMO_PROJECTS}
        _review_setup(world)
        yield world
    finally:
        for method, path, as_user in reversed(restore):
            xnat.request(method, path, as_user)
        if world is not None:
            if world.job_id:
                world.alice("POST", f"jobs/{world.job_id}/cancel")
            for name in ALICE_DATASETS:
                world.alice("DELETE", f"datasets/{name}")
            world.server_api("bob", "DELETE", "datasets/authz-cardio")
        for user, server in started:
            stop_server(hub, user, server)
        hub.stop()


#: the role alice grants carol on NEURO_MRI in the grant cell (revoked again in the next cell)
GRANT_GROUP = "Collaborators"
#: held jobs registered for the review cells: bob's on CARDIO_ECG (dave reviews, still held),
#: alice's on NEURO_MRI (she owns it and approved it: its share is released to her token only).
#: Each is first entered in the hub's job ledger by its server's own token; its projects are
#: that server's scope (bob: CARDIO_ECG; alice: NEURO_MRI + SLEEP_EEG), of which the marked
#: ones need review (bob's: CARDIO_ECG, marked by dave; alice's: NEURO_MRI, marked by her).
BOB_REVIEW, ALICE_REVIEW = "jb0b000000001", "ja11ce0000001"
BOB_REVIEW_ADMIN = "jb0b000000002"  # another of bob's, for the site admin's decision cell only
#: alice's ledger job that needs review but holds nothing: bob's server posts under its id, a
#: share sealed to another key (another job's, a stranger's) is refused for it
ALICE_LEDGER = "ja11ce0000002"
#: alice's ledger job entered before NEURO_MRI was marked: it needs no review, has no key
ALICE_PLAIN = "ja11ce0000003"
#: ids no ledger knows: refused entries and registrations, and the server's entry cell
UNKNOWN_JOB, REFUSED_JOB, NEW_JOB = "j0000000dead1", "j0000000dead2", "j0000000e0001"
assert all(JOB_ID_RE.match(j) for j in (BOB_REVIEW, ALICE_REVIEW, BOB_REVIEW_ADMIN, ALICE_LEDGER, ALICE_PLAIN,
                                        UNKNOWN_JOB, REFUSED_JOB, NEW_JOB))
BOB_RESULT, ALICE_RESULT = "bob-held-result.csv", "alice-held-result.csv"
BOB_PREVIEW, ALICE_PREVIEW = "BOB-PREVIEW-7c1e", "ALICE-PREVIEW-5d2f"
#: what the review cells find marked: CARDIO_ECG (dave) and NEURO_MRI (alice), both in set-up
MARKED = ("CARDIO_ECG", "NEURO_MRI")


def entry(user: str, script: str = "b") -> dict:
    """What a server says about a job it enters in the ledger (the digests are the demo's)."""
    return {"dataset": f"authz-{user}", "dataset_version": 1, "manifest_sha256": "a" * 64,
            "script_sha256": script * 64}


def project_members(devxnat, project: str) -> set[tuple[str, str]]:
    """XNAT's users of *project*, ``{(login, group)}``, asked as the site admin."""
    r = devxnat.get(f"/data/projects/{project}/users?format=json", "admin")
    assert r.status_code == 200, r.text
    return {(row["login"], row["displayname"]) for row in r.json()["ResultSet"]["Result"]}


def _review_setup(world: World) -> None:
    """Servers' tokens; alice marks NEURO_MRI and dave CARDIO_ECG for review; the servers enter
    bob's and alice's jobs in the hub's ledger (each gets its own review recipient) and hold
    their results sealed to it; alice approves hers (her own project) through the hub's form."""
    for user in ("alice", "bob"):
        srv = world.hub.api("GET", f"/users/{user}").json()["servers"][SERVER]
        world.tokens[f"{user}-server"] = process_environ(server_process(user, srv))["JUPYTERHUB_API_TOKEN"]
    r = world.post_form("dave", SERVICE + "review/projects", project="CARDIO_ECG", review="on")
    assert r.status_code == 302, r.text
    # entered while none of its server's scope was marked: no review, no key
    r = world.ledger_api("alice-server", "POST", ALICE_PLAIN, json=entry("alice"))
    assert r.status_code == 201, r.text
    assert (r.json()["projects"], r.json()["review"], r.json()["recipient"]) == (
        ["NEURO_MRI", "SLEEP_EEG"], [], None), r.text
    r = world.post_form("alice", SERVICE + "review/projects", project="NEURO_MRI", review="on")
    assert r.status_code == 302, r.text
    assert world.marked() == sorted(MARKED)
    recipients = {}
    for user, job, scope, review in (("bob", BOB_REVIEW, ["CARDIO_ECG"], ["CARDIO_ECG"]),
                                     ("bob", BOB_REVIEW_ADMIN, ["CARDIO_ECG"], ["CARDIO_ECG"]),
                                     ("alice", ALICE_REVIEW, ["NEURO_MRI", "SLEEP_EEG"], ["NEURO_MRI"]),
                                     ("alice", ALICE_LEDGER, ["NEURO_MRI", "SLEEP_EEG"], ["NEURO_MRI"])):
        r = world.ledger_api(f"{user}-server", "POST", job, json=entry(user))
        assert r.status_code == 201, r.text
        got = r.json()
        assert (got["user"], got["server"], got["projects"], got["review"]) == (user, SERVER, scope, review), got
        assert got["recipient"].startswith("age1"), got
        recipients[job] = got["recipient"]
        r = world.ledger_api(f"{user}-server", "PATCH", job, json={"slurm_job_id": "4242", "state": "running"})
        assert r.status_code == 200 and r.json()["slurm_job_id"] == "4242", r.text
    for user, job, result, preview in (("bob", BOB_REVIEW, BOB_RESULT, BOB_PREVIEW),
                                       ("bob", BOB_REVIEW_ADMIN, BOB_RESULT, BOB_PREVIEW),
                                       ("alice", ALICE_REVIEW, ALICE_RESULT, ALICE_PREVIEW)):
        recipient = recipients[job]
        r = world.review_api(f"{user}-server", "POST", f"jobs/{job}", json={
            "results": [{"name": result, "size": len(preview), "sha256": "0" * 64}],
            "share": rv.wrap(os.urandom(32), recipient), "previews": {result: rv.wrap(preview.encode(), recipient)}})
        assert r.status_code == 201, r.text
        assert (r.json()["state"], r.json()["pending"]) == ("held", r.json()["projects"]), r.text
    r = world.post_form("alice", f"{SERVICE}review/jobs/alice/{ALICE_REVIEW}", decision="approve")
    assert r.status_code == 302, r.text
    assert world.review_api("alice", "GET", f"jobs/{ALICE_REVIEW}").json()["state"] == "approved"
    for job in (ALICE_REVIEW, ALICE_LEDGER, ALICE_PLAIN):
        r = world.ledger_api("alice-server", "GET", job)
        assert r.status_code == 200, r.text
        world.ledger[job] = r.json()
    world.values.update(alice_review=ALICE_REVIEW, bob_review=BOB_REVIEW, bob_review_admin=BOB_REVIEW_ADMIN,
                        alice_ledger=ALICE_LEDGER, alice_plain=ALICE_PLAIN,
                        alice_recipient=recipients[ALICE_REVIEW], alice_ledger_recipient=recipients[ALICE_LEDGER],
                        # alice's approved job's share replayed for another of her jobs
                        replayed_share=rv.wrap(os.urandom(32), recipients[ALICE_REVIEW]),
                        alice_server_token=world.tokens["alice-server"],
                        bob_server_token=world.tokens["bob-server"])


def _delete_token(hub, user: str, note: str) -> None:
    """Delete *user*'s token with *note* on the hub."""
    tokens = hub.api("GET", f"/users/{user}/tokens").json()["api_tokens"]
    (token_id,) = [t["id"] for t in tokens if t["note"] == note]
    r = hub.api("DELETE", f"/users/{user}/tokens/{token_id}")
    assert r.status_code == 204, r.text


# -- cells ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Cell:
    method: str
    path: str                    # under the hub's URL; {placeholders} from World.values
    who: Who
    expect: tuple[int, ...]
    json: object = None          # request body (JSON), placeholders resolved
    form: dict | None = None     # request body (form; the caller's _xsrf is added)
    hide: tuple[str, ...] = ()   # must not be in the body, unless the request named it
    show: tuple[str, ...] = ()   # must be in the body
    check: Callable | None = None   # check(world, response) for what a string test cannot say
    after: Callable | None = None   # after(world): the refused request changed nothing, or undo it
    before: Callable | None = None  # before(world): the state the cell needs, whatever ran before it
    revoked: bool = False        # needs the revocation to be in force in the servers
    finding: str = ""            # a known product gap: the cell is expected to fail (xfail, strict)
    xsrf: bool = True            # a form post carries the caller's _xsrf (False: a forged post)
    redirect: str = ""           # a 302 goes here (default: the login page)
    note: str = ""               # tells apart cells of one route, caller and status

    @property
    def id(self) -> str:
        shown = self.path
        if self.json is not None and isinstance(self.json, dict) and "projects" in self.json:
            shown += f" {{projects: {self.json['projects']}}}"
        if self.note:
            shown += f" [{self.note}]"
        if self.form is not None and not self.xsrf:
            shown += " (no _xsrf)"
        return f"{self.method} {shown} as {self.who.label} -> {'/'.join(map(str, self.expect))}"


def _render(world: World, value):
    if isinstance(value, str):
        return world.fmt(value)
    if isinstance(value, dict):
        return {k: _render(world, v) for k, v in value.items()}
    if isinstance(value, list):
        return [_render(world, v) for v in value]
    return value


def perform(world: World, cell: Cell) -> tuple[requests.Response, str]:
    """Send the cell's request as its caller; (response, the request's own text)."""
    url = world.hub.url + world.fmt(cell.path)
    kw: dict = {"timeout": 60, "allow_redirects": False}
    headers: dict[str, str] = {}
    session = requests.Session()
    who = cell.who
    if who.cred == "cookie":
        session = world.sessions[who.user]
    elif who.cred == "token":
        headers["Authorization"] = f"token {world.tokens[who.user]}"
    elif who.cred in ("limited", "deleted", "used", "server", "activity"):
        headers["Authorization"] = f"token {world.tokens[f'{who.user}-{who.cred}']}"
    body = _render(world, cell.json)
    if body is not None:
        kw["json"] = body
    if cell.form is not None:
        form = _render(world, cell.form)
        if cell.xsrf:
            form = {**form, "_xsrf": xsrf_for(session, world.fmt(cell.path))}
        kw["data"] = form
        body = form
    r = session.request(cell.method, url, headers=headers, **kw)
    return r, url + " " + json.dumps(body)


DENIALS = (401, 403, 404)


def check_cell(world: World, cell: Cell) -> None:
    if cell.revoked:
        world.wait_for_revocation()
    if cell.before is not None:
        cell.before(world)
    r, request_text = perform(world, cell)
    text = r.text
    if os.environ.get("AUTHZ_DUMP"):
        print(f"\nDUMP {cell.id} :: {r.status_code} {r.headers.get('Location', '')} {text[:300]!r}")
    where = f"{cell.id}: got {r.status_code} {text[:600]!r}"
    assert r.status_code < 500, where
    assert r.status_code in cell.expect, where
    if r.status_code in DENIALS and r.headers.get("Content-Type", "").startswith("application/json"):
        message = r.json().get("message", "")
        assert isinstance(message, str) and message.strip(), f"{where}: a denial without a message"
    if r.status_code == 302:
        assert (cell.redirect or "/hub/login") in r.headers.get("Location", ""), where
    for secret in (x for s in cell.hide for x in world.expand(s)):
        if secret in request_text:
            continue  # the caller named it: echoing it back tells them nothing
        assert secret not in text, f"{where}: {secret!r} must not be in the body"
    for wanted in (world.fmt(s) for s in cell.show):
        assert wanted in text, f"{where}: {wanted!r} missing from the body"
    if cell.check is not None:
        cell.check(world, r)
    if cell.after is not None:
        cell.after(world)


# -- what must not show --------------------------------------------------------------------

def data_of(project: str) -> tuple[str, ...]:
    """A project's subject and session labels all start with its id (demo archive)."""
    return (f"{project}_S",)


#: alice's things in her server: datasets, job, script, her projects' data
ALICE_PRIVATE = ("authz-mri", "authz-sleep", "authz-doomed", "{job}", "train_example",
                 *data_of("NEURO_MRI"), *data_of("SLEEP_EEG"), "@exp:*")
ALL_PROJECTS = DEMO_PROJECTS


# -- after-checks: a refused request changed nothing ------------------------------------------

def dataset_still_there(name: str):
    def after(world: World) -> None:
        assert world.alice("GET", f"datasets/{name}").status_code == 200, f"dataset {name} is gone"
    return after


def no_dataset(name: str):
    def after(world: World) -> None:
        assert world.alice("GET", f"datasets/{name}").status_code == 404, f"dataset {name} was created"
    return after


def job_not_cancelled(world: World) -> None:
    job = world.alice("GET", f"jobs/{world.job_id}").json()
    assert job["state"] != "cancelled", job


def no_new_job(world: World) -> None:
    jobs = {j["id"] for j in world.alice("GET", "jobs").json()["items"]}
    assert jobs == world.jobs, jobs - world.jobs


def no_server(user: str, server: str):
    def after(world: World) -> None:
        servers = world.hub.api("GET", f"/users/{user}").json()["servers"]
        assert server not in servers, f"server {user}/{server} exists: {servers[server]}"
    return after


# -- hub pages and APIs ---------------------------------------------------------------------

OWNER_PAGE = SERVICE + "owner"
OWNER_JSON = SERVICE + "owner?format=json"
#: where the service sends a visitor the hub has not identified: the hub's OAuth
TO_OAUTH = "/hub/api/oauth2/authorize"


def owned(*projects: str):
    def check(world: World, r) -> None:
        page = r.json()
        assert page["owned"] == sorted(projects), page["owned"]
        # an item is a project or a path under one (a server's events: PROJECT/EXPERIMENT)
        bad = [e for e in page["events"]
               if not (e["items"] and {str(i).split("/")[0] for i in e["items"]} <= set(projects))]
        assert not bad, [(e["action"], e["items"]) for e in bad]
    return check


def alice_sees_her_part(world: World, r) -> None:
    """Her server's start spans SLEEP_EEG (dave's): she sees her project only, detail withheld."""
    owned("NEURO_MRI")(world, r)
    starts = [e for e in r.json()["events"] if e["user"] == "alice" and e["action"] == "spawn"
              and e["outcome"] == "allowed"]
    assert starts and all(e["items"] == ["NEURO_MRI"] for e in starts), starts
    assert any("withheld" in e["detail"] for e in starts), starts


HUB_CELLS: list[Cell] = []
for page, is_json in ((OWNER_JSON, True), (OWNER_PAGE, False)):
    HUB_CELLS += [
        Cell("GET", page, NOBODY, (302,), hide=ALL_PROJECTS, redirect=TO_OAUTH),
        Cell("GET", page, DELETED, (302,), hide=ALL_PROJECTS, redirect=TO_OAUTH),
        Cell("GET", page, NO_SCOPE, (403,), hide=ALL_PROJECTS),
        # a token of alice's reads what her browser reads (the exports are for scripts)
        Cell("GET", page, TOKEN_ON_PAGE, (200,), hide=("SLEEP_EEG", "CARDIO_ECG"),
             show=() if is_json else ('<strong id="owned">NEURO_MRI</strong>',),
             check=alice_sees_her_part if is_json else None),
        Cell("GET", page, OTHER_COOKIE, (200,), hide=ALL_PROJECTS,
             check=owned() if is_json else None),
        Cell("GET", page, NO_ACCESS_COOKIE, (200,), hide=ALL_PROJECTS,
             check=owned() if is_json else None),
        Cell("GET", page, REVOKED_OWNER_COOKIE, (200,), hide=ALL_PROJECTS,
             check=owned() if is_json else None),
        Cell("GET", page, OWNER_COOKIE, (200,), hide=("SLEEP_EEG", "CARDIO_ECG"),
             show=() if is_json else ('<strong id="owned">NEURO_MRI</strong>',),
             check=alice_sees_her_part if is_json else None),
        Cell("GET", page, DAVE_COOKIE, (200,), hide=("NEURO_MRI",),
             check=owned("CARDIO_ECG", "SLEEP_EEG") if is_json else None),
        Cell("GET", page, ADMIN_COOKIE, (200,),
             show=() if is_json else ('<strong id="owned">CARDIO_ECG, NEURO_MRI, SLEEP_EEG</strong>',),
             check=owned(*DEMO_PROJECTS) if is_json else None),
    ]

BOOTSTRAP = "/hub/api/xnat-hpc/bootstrap"
FORGED = {"code": "forged-code", "job_id": "1", "port": 40000}
NO_SECRETS = ("XNAT_PASS", "JUPYTERHUB_API_TOKEN", '"env"')
HUB_CELLS += [
    Cell("POST", BOOTSTRAP, NOBODY, (403,), json=FORGED, hide=NO_SECRETS, show=("bootstrap refused",)),
    Cell("POST", BOOTSTRAP, NOBODY, (400,), json={"job_id": "1"}, hide=NO_SECRETS),
    Cell("POST", BOOTSTRAP, OTHER, (403,), json=FORGED, hide=NO_SECRETS, show=("bootstrap refused",)),
    Cell("POST", BOOTSTRAP, NO_SCOPE, (403,), json=FORGED, hide=NO_SECRETS, show=("bootstrap refused",)),
    Cell("POST", BOOTSTRAP, OWNER, (403,), json=FORGED, hide=NO_SECRETS, show=("bootstrap refused",)),
    Cell("POST", BOOTSTRAP, ADMIN, (403,), json=FORGED, hide=NO_SECRETS, show=("bootstrap refused",)),
]

SPAWN = "/hub/api/users/alice/servers/cell"
HIDE_ON_SPAWN = (*data_of("NEURO_MRI"), *data_of("SLEEP_EEG"), *data_of("CARDIO_ECG"), "@exp:*")


def spawned_then_stopped(world: World, r) -> None:
    wait_ready(world.hub, "alice", "cell", timeout=120)
    stop_server(world.hub, "alice", "cell")


HUB_CELLS += [
    Cell("POST", SPAWN, who, expect, json={"profile": "local-small", "projects": ["NEURO_MRI"]},
         hide=HIDE_ON_SPAWN, after=no_server("alice", "cell"))
    for who, expect in ((NOBODY, (403,)), (OTHER, (403, 404)), (NO_SCOPE, (403,)),
                        (DELETED, (403,)), (ADMIN, (403, 404)))
] + [
    Cell("POST", SPAWN, NO_ACCESS, (403,), json={"profile": "local-small", "projects": ["CARDIO_ECG"]},
         hide=HIDE_ON_SPAWN, show=("CARDIO_ECG",), after=no_server("alice", "cell")),
    Cell("POST", SPAWN, REVOKED, (403,), json={"profile": "local-small", "projects": ["SLEEP_EEG"]},
         hide=HIDE_ON_SPAWN, show=("SLEEP_EEG",), after=no_server("alice", "cell")),
    Cell("POST", SPAWN, OWNER, (201, 202), json={"profile": "local-small", "projects": ["NEURO_MRI"]},
         hide=HIDE_ON_SPAWN, check=spawned_then_stopped),
]

PROJECT_INPUT = re.compile(r'name="project" id="[^"]+" value="([^"]+)".*?data-role="([^"]+)"')


def form_projects(*projects: str):
    def check(world: World, r) -> None:
        assert sorted(dict(PROJECT_INPUT.findall(r.text))) == sorted(projects), r.text[-2000:]
    return check


HUB_CELLS += [
    Cell("GET", "/hub/spawn/alice", NOBODY, (302,), hide=ALL_PROJECTS),
    Cell("GET", "/hub/spawn/alice", OTHER_COOKIE, (403, 404), hide=('name="project"', "SLEEP_EEG")),
    Cell("GET", "/hub/spawn/alice", ADMIN_COOKIE, (403, 404), hide=('name="project"', "SLEEP_EEG")),
    Cell("GET", "/hub/spawn/carol", NO_ACCESS_COOKIE, (200,), hide=('name="project"',),
         show=("cannot read any XNAT project",)),
    # offered: her one project left (a notice of a start she was refused may name what she asked for)
    Cell("GET", "/hub/spawn/alice", REVOKED_COOKIE, (200,), hide=('value="SLEEP_EEG"', 'value="CARDIO_ECG"'),
         check=form_projects("NEURO_MRI")),
    Cell("GET", "/hub/spawn/dave", DAVE_COOKIE, (200,), hide=("NEURO_MRI",),
         check=form_projects("CARDIO_ECG", "SLEEP_EEG")),
    Cell("GET", "/hub/spawn/admin", ADMIN_COOKIE, (200,), check=form_projects(*DEMO_PROJECTS)),
    Cell("POST", "/hub/spawn/alice/formcell", NOBODY, (302, 403),
         form={"profile": "local-small", "project": "NEURO_MRI"}, after=no_server("alice", "formcell")),
    Cell("POST", "/hub/spawn/alice/formcell", OTHER_COOKIE, (403, 404),
         form={"profile": "local-small", "project": "NEURO_MRI"}, after=no_server("alice", "formcell")),
    Cell("POST", "/hub/spawn/alice/formcell", NO_ACCESS_ALICE_COOKIE,
         (403,), form={"profile": "local-small", "project": "CARDIO_ECG"}, hide=HIDE_ON_SPAWN,
         show=("CARDIO_ECG",), after=no_server("alice", "formcell")),
    Cell("POST", "/hub/spawn/alice/formcell", REVOKED_COOKIE, (403,),
         form={"profile": "local-small", "project": "SLEEP_EEG"}, hide=HIDE_ON_SPAWN,
         show=("SLEEP_EEG",), after=no_server("alice", "formcell")),
]


# -- the owners' access page (xnat_hpc_governance/owner_access.py) -------------------------------------------

ACCESS = SERVICE + "owner/access"


def members_unchanged(*projects: str):
    """after: XNAT's user lists of *projects* are what they were before the cells (asked as admin)."""
    def after(world: World) -> None:
        for p in projects:
            assert project_members(world.devxnat, p) == world.members[p], p
    return after


def carol_granted(world: World, r) -> None:
    assert ("carol", GRANT_GROUP) in project_members(world.devxnat, "NEURO_MRI")


def carol_membership(method: str):
    """before/after: carol made one of NEURO_MRI's GRANT_GROUP (PUT) or taken out (DELETE) in XNAT,
    by its owner alice; DELETE then checks every project's list is as before the cells."""
    def change(world: World) -> None:
        r = world.devxnat.request(method, f"/data/projects/NEURO_MRI/users/{GRANT_GROUP}/carol", "alice")
        assert r.status_code == 200, r.text
        if method == "DELETE":
            members_unchanged(*DEMO_PROJECTS)(world)
    return change


GRANT = {"action": "grant", "user": "carol", "group": GRANT_GROUP}
HUB_CELLS += [
    Cell("GET", ACCESS, NOBODY, (302,), hide=ALL_PROJECTS, redirect=TO_OAUTH),
    Cell("GET", ACCESS, TOKEN_ON_PAGE, (200,), hide=('id="members-SLEEP_EEG"', 'id="members-CARDIO_ECG"', "dave"),
         show=('id="members-NEURO_MRI"',)),
    # bob is a Member/Collaborator, not an owner: no project's user list
    Cell("GET", ACCESS, OTHER_COOKIE, (200,), hide=('id="members-', "dave"), show=('id="owned">none<',)),
    Cell("GET", ACCESS + "?project=NEURO_MRI", OTHER_COOKIE, (200,), hide=('id="members-', "dave"),
         show=('id="owned">none<',)),
    Cell("GET", ACCESS, NO_ACCESS_COOKIE, (200,), hide=('id="members-', *ALL_PROJECTS)),
    Cell("GET", ACCESS, REVOKED_OWNER_COOKIE, (200,), hide=('id="members-', *ALL_PROJECTS)),
    Cell("GET", ACCESS, OWNER_COOKIE, (200,), hide=('id="members-SLEEP_EEG"', 'id="members-CARDIO_ECG"', "dave"),
         show=('id="members-NEURO_MRI"', 'id="owned">NEURO_MRI<')),
    # another owner's project named in the query: still only her own (here: none shown)
    Cell("GET", ACCESS + "?project=CARDIO_ECG", OWNER_COOKIE, (200,), hide=('id="members-', "dave")),
    Cell("GET", ACCESS, DAVE_COOKIE, (200,), hide=('id="members-NEURO_MRI"',),
         show=('id="members-CARDIO_ECG"', 'id="members-SLEEP_EEG"')),
    Cell("GET", ACCESS, ADMIN_COOKIE, (200,),
         show=('id="members-CARDIO_ECG"', 'id="members-NEURO_MRI"', 'id="members-SLEEP_EEG"')),
    # refused changes: XNAT's user lists stay as they were
    Cell("POST", ACCESS, NOBODY, (403,), form={**GRANT, "project": "NEURO_MRI"},
         after=members_unchanged("NEURO_MRI")),
    # her own project, with her token: a change takes the browser's session, never a token
    Cell("POST", ACCESS, TOKEN_ON_PAGE, (403,), form={**GRANT, "project": "NEURO_MRI"}, show=("not an API token",),
         after=members_unchanged("NEURO_MRI")),
    Cell("POST", ACCESS, OWNER_COOKIE, (403,), form={**GRANT, "project": "NEURO_MRI"}, xsrf=False, show=("_xsrf",),
         after=members_unchanged("NEURO_MRI")),
    Cell("POST", ACCESS, OTHER_COOKIE, (403,), form={**GRANT, "project": "NEURO_MRI"}, note="grant",
         hide=("dave",), show=("only an owner of NEURO_MRI",), after=members_unchanged("NEURO_MRI")),
    Cell("POST", ACCESS, OTHER_COOKIE, (403,), note="revoke the owner",
         form={"action": "revoke", "project": "NEURO_MRI", "user": "alice", "group": "Owners"},
         hide=("dave",), show=("only an owner of NEURO_MRI",), after=members_unchanged("NEURO_MRI")),
    Cell("POST", ACCESS, DAVE_COOKIE, (403,), form={**GRANT, "project": "NEURO_MRI"},
         show=("only an owner of NEURO_MRI",), after=members_unchanged("NEURO_MRI")),
    Cell("POST", ACCESS, NO_ACCESS_COOKIE, (403,), form={**GRANT, "user": "carol", "project": "SLEEP_EEG"},
         hide=('id="members-',), show=("only an owner of SLEEP_EEG",), after=members_unchanged("SLEEP_EEG")),
    Cell("POST", ACCESS, REVOKED_OWNER_COOKIE, (403,), form={**GRANT, "project": "CARDIO_ECG"},
         hide=('id="members-',), show=("only an owner of CARDIO_ECG",), after=members_unchanged("CARDIO_ECG")),
    Cell("POST", ACCESS, OWNER_COOKIE, (400,), form={**GRANT, "project": "NEURO_MRI", "group": "Admins"},
         note="unknown role", show=("choose a role",), after=members_unchanged("NEURO_MRI")),
    # the owner grants carol (undone in XNAT after), and revokes her (granted in XNAT before): each
    # in any order of the cells, XNAT's lists back as they were
    Cell("POST", ACCESS, OWNER_COOKIE, (200,), form={**GRANT, "project": "NEURO_MRI"}, note="grant",
         show=(f"carol now has access to NEURO_MRI as one of its {GRANT_GROUP}",), check=carol_granted,
         after=carol_membership("DELETE")),
    Cell("POST", ACCESS, OWNER_COOKIE, (200,), note="revoke", before=carol_membership("PUT"),
         form={"action": "revoke", "project": "NEURO_MRI", "user": "carol"},
         show=("carol no longer has access to NEURO_MRI",), after=members_unchanged(*DEMO_PROJECTS)),
]


# -- results review: the owners' page and forms, the servers' API (hub_ext/review.py) -----------

REVIEW = SERVICE + "review"
REVIEW_API = "/hub/api/xnat-hpc/review/"
#: the hub's review key and the key shares never show; nor another job's results and previews
REVIEW_SECRETS = ("AGE-SECRET-KEY", '"share"')
#: a well-formed registration whose share is sealed to a stranger's key (no job's)
REGISTRATION = {"results": [{"name": "intruder.csv", "size": 1, "sha256": "0" * 64}],
                "share": rv.wrap(b"x" * 32, AgeIdentity.generate().recipient)}
BOB_HELD = (BOB_REVIEW, BOB_RESULT, BOB_PREVIEW)
ALICE_HELD = (ALICE_REVIEW, ALICE_RESULT, ALICE_PREVIEW)


def review_marked(*projects: str):
    """after: the projects marked for review are still exactly *projects* (the hub's store)."""
    def after(world: World) -> None:
        assert world.marked() == sorted(projects)
    return after


def ledger_unchanged(job: str):
    """after: alice's ledger row of *job* is what it was after set-up (her server's token)."""
    def after(world: World) -> None:
        r = world.ledger_api("alice-server", "GET", job)
        assert r.status_code == 200 and r.json() == world.ledger[job], r.text
    return after


def not_in_ledger(job: str):
    """after: alice has no ledger job *job* (her own token)."""
    def after(world: World) -> None:
        r = world.ledger_api("alice", "GET", job)
        assert r.status_code == 404, f"job {job} was entered: {r.text}"
    return after


def entered_from_scope(user: str, scope: list[str], review: list[str], claimed: str):
    """check: the ledger entered the job as *user*'s server's, with that server's scope and
    never the body's ``projects`` claim (*claimed*)."""
    def check(world: World, r) -> None:
        got = r.json()
        assert (got["user"], got["server"], got["projects"], got["review"]) == (user, SERVER, scope, review), got
        assert got["recipient"].startswith("age1") and claimed not in r.text, r.text
    return check


def held(job: str):
    def after(world: World) -> None:
        r = world.review_api("bob", "GET", f"jobs/{job}")
        assert r.status_code == 200 and r.json()["state"] == "held" and r.json()["pending"] == ["CARDIO_ECG"], r.text
    return after


bob_job_held = held(BOB_REVIEW)


def not_registered(job: str):
    def after(world: World) -> None:
        assert world.review_api("alice", "GET", f"jobs/{job}").status_code == 404, f"job {job} was registered"
    return after


MARK_OFF = {"project": "CARDIO_ECG", "review": "off"}
SERVER_TOKEN = Who("server's own token", "alice", "server")
OTHER_SERVER = Who("other user's server", "bob", "server")
HUB_CELLS += [
    Cell("GET", REVIEW, NOBODY, (302,), hide=(*BOB_HELD, *ALICE_HELD), redirect=TO_OAUTH),
    Cell("GET", REVIEW, TOKEN_ON_PAGE, (200,), hide=(*BOB_HELD, *REVIEW_SECRETS, "CARDIO_ECG", "SLEEP_EEG"),
         show=(ALICE_REVIEW,)),
    Cell("GET", REVIEW, OTHER_COOKIE, (200,), hide=(*BOB_HELD, *ALICE_HELD, *REVIEW_SECRETS, *ALL_PROJECTS)),
    Cell("GET", REVIEW, NO_ACCESS_COOKIE, (200,), hide=(*BOB_HELD, *ALICE_HELD, *REVIEW_SECRETS, *ALL_PROJECTS)),
    Cell("GET", REVIEW, REVOKED_OWNER_COOKIE, (200,), hide=(*BOB_HELD, *ALICE_HELD, *REVIEW_SECRETS,
                                                           *ALL_PROJECTS)),
    Cell("GET", REVIEW, OWNER_COOKIE, (200,), hide=(*BOB_HELD, *REVIEW_SECRETS, "CARDIO_ECG", "SLEEP_EEG"),
         show=(ALICE_REVIEW,)),
    Cell("GET", REVIEW, DAVE_COOKIE, (200,), hide=(*ALICE_HELD, *REVIEW_SECRETS, "NEURO_MRI"),
         show=(BOB_REVIEW, BOB_RESULT, BOB_PREVIEW)),
    # review.py: "site admins are not owners" — XNAT's site admin reviews nothing
    Cell("GET", REVIEW, ADMIN_COOKIE, (200,), hide=(*BOB_HELD, *ALICE_HELD, *REVIEW_SECRETS)),
    # marking: only an owner of the project, XSRF-checked; a refusal leaves the policy as it was
    Cell("POST", REVIEW + "/projects", NOBODY, (403,), form=MARK_OFF, after=review_marked(*MARKED)),
    Cell("POST", REVIEW + "/projects", TOKEN_ON_PAGE, (403,), form={"project": "NEURO_MRI", "review": "off"},
         show=("not an API token",), after=review_marked(*MARKED)),
    Cell("POST", REVIEW + "/projects", DAVE_COOKIE, (403,), form=MARK_OFF, xsrf=False, show=("_xsrf",),
         after=review_marked(*MARKED)),
    Cell("POST", REVIEW + "/projects", OWNER_COOKIE, (403,), form=MARK_OFF,
         show=("only an owner of CARDIO_ECG",), after=review_marked(*MARKED)),
    Cell("POST", REVIEW + "/projects", OTHER_COOKIE, (403,), form={"project": "NEURO_MRI", "review": "off"},
         show=("only an owner of NEURO_MRI",), after=review_marked(*MARKED)),
    Cell("POST", REVIEW + "/projects", REVOKED_OWNER_COOKIE, (403,), form=MARK_OFF,
         show=("only an owner of CARDIO_ECG",), after=review_marked(*MARKED)),
    Cell("POST", REVIEW + "/projects", ADMIN_COOKIE, (403,), form=MARK_OFF,
         show=("only an owner of CARDIO_ECG",), after=review_marked(*MARKED)),
    Cell("POST", REVIEW + "/projects", DAVE_COOKIE, (302,), form={"project": "CARDIO_ECG", "review": "on"},
         redirect=REVIEW + "?notice=marked", after=review_marked(*MARKED)),
    # the hub's old addresses: GET redirects to the service's page, the old forms are gone
    *[Cell("GET", old + query, who, (302,), redirect=SERVICE + new + query, hide=ALL_PROJECTS)
      for old, new, query in (("/hub/xnat-hpc/owner", "owner", "?format=json&project=NEURO_MRI"),
                              ("/hub/xnat-hpc/owner/access", "owner/access", "?project=NEURO_MRI"),
                              ("/hub/xnat-hpc/review", "review", ""))
      for who in (NOBODY, OWNER_COOKIE)],
    Cell("POST", "/hub/xnat-hpc/review/projects", DAVE_COOKIE, (404, 405), form=MARK_OFF, note="old address",
         after=review_marked(*MARKED)),
    # deciding: only an owner of the job's projects; bob's job stays held
    Cell("POST", REVIEW + "/jobs/bob/{bob_review}", NOBODY, (403,), form={"decision": "approve"},
         hide=BOB_HELD[1:], after=bob_job_held),
    Cell("POST", REVIEW + "/jobs/bob/{bob_review}", DAVE_COOKIE, (403,), form={"decision": "approve"},
         xsrf=False, show=("_xsrf",), after=bob_job_held),
    # a visitor who owns none of the job's projects gets the answer for a job that does not
    # exist: neither that it is held nor which projects it is about
    Cell("POST", REVIEW + "/jobs/bob/{bob_review}", OWNER_COOKIE, (404,), form={"decision": "approve"},
         hide=(*BOB_HELD[1:], "CARDIO_ECG"), after=bob_job_held),
    Cell("POST", REVIEW + "/jobs/bob/{bob_review}", OTHER_COOKIE, (404,), form={"decision": "approve"},
         hide=(*BOB_HELD[1:], "CARDIO_ECG"), after=bob_job_held),  # bob's own job: he is no owner of CARDIO_ECG
    Cell("POST", REVIEW + "/jobs/bob/{bob_review_admin}", ADMIN_COOKIE, (404,), form={"decision": "approve"},
         hide=(*BOB_HELD[1:], "CARDIO_ECG"), after=held(BOB_REVIEW_ADMIN)),  # site admins are no owners
    Cell("POST", REVIEW + "/jobs/bob/{bob_review}", REVOKED_OWNER_COOKIE, (404,), form={"decision": "approve"},
         hide=(*BOB_HELD[1:], "CARDIO_ECG"), after=bob_job_held),
    Cell("POST", REVIEW + "/jobs/bob/{bob_review}", DAVE_COOKIE, (400,), form={"decision": "reject"},
         note="reject without a reason", show=("say why",), after=bob_job_held),
    Cell("POST", REVIEW + "/jobs/bob/j0000000dead0", OWNER_COOKIE, (404,), form={"decision": "approve"},
         after=bob_job_held),
    # the servers' API: a user's token, in the header; a job only to its own user
    # the review policy is gone: a job learns its review (and its own recipient) from the ledger
    Cell("GET", REVIEW_API + "policy?projects=CARDIO_ECG,NEURO_MRI", NOBODY, (403,), hide=("age1",)),
    Cell("GET", REVIEW_API + "policy?projects=CARDIO_ECG,NEURO_MRI", DELETED, (403,), hide=("age1",)),
    Cell("GET", REVIEW_API + "policy?projects=CARDIO_ECG,NEURO_MRI", OWNER_COOKIE, (403,), hide=("age1",)),
    Cell("GET", REVIEW_API + "policy?projects=CARDIO_ECG,NEURO_MRI", NO_SCOPE, (403,), hide=("age1",),
         show=("scope users:activity",)),
    Cell("GET", REVIEW_API + "policy?projects=CARDIO_ECG,NEURO_MRI", SERVER_TOKEN, (410,), hide=("age1",),
         show=("/hub/api/xnat-hpc/jobs/",)),
    Cell("GET", REVIEW_API + "policy?projects=CARDIO_ECG,NEURO_MRI", OWNER, (410,), hide=("age1",),
         show=("/hub/api/xnat-hpc/jobs/",)),
    Cell("GET", REVIEW_API + "jobs/{alice_review}", NOBODY, (403,), hide=(*ALICE_HELD[1:], *REVIEW_SECRETS)),
    Cell("GET", REVIEW_API + "jobs/{alice_review}?share=1", DELETED, (403,), hide=REVIEW_SECRETS),
    Cell("GET", REVIEW_API + "jobs/{alice_review}?share=1", OWNER_COOKIE, (403,), hide=REVIEW_SECRETS),
    Cell("GET", REVIEW_API + "jobs/{alice_review}?share=1", OTHER, (404,), hide=(*REVIEW_SECRETS, "NEURO_MRI")),
    Cell("GET", REVIEW_API + "jobs/{alice_review}?share=1", OTHER_SERVER, (404,),
         hide=(*REVIEW_SECRETS, "NEURO_MRI")),
    Cell("GET", REVIEW_API + "jobs/{alice_review}?share=1", ADMIN, (404,), hide=(*REVIEW_SECRETS, "NEURO_MRI")),
    # a token that may not even report her activity gets nothing (a server's token may)
    Cell("GET", REVIEW_API + "jobs/{alice_review}?share=1", NO_SCOPE, (403,), hide=REVIEW_SECRETS,
         show=("scope users:activity",)),
    Cell("GET", REVIEW_API + "jobs/{alice_review}?share=1", SERVER_TOKEN, (200,), hide=("AGE-SECRET-KEY",),
         show=('"state": "approved"', '"share": "')),
    Cell("GET", REVIEW_API + "jobs/{bob_review}?share=1", OTHER_SERVER, (200,),
         note="held: no share", hide=REVIEW_SECRETS, show=('"state": "held"',)),
    # registering held results: a running server's own token, for a job the ledger entered
    *[Cell("POST", REVIEW_API + "jobs/" + UNKNOWN_JOB, who, (403,), json=REGISTRATION, note=who.cred,
           hide=REVIEW_SECRETS, show=show, after=not_registered(UNKNOWN_JOB))
      for who, show in ((NOBODY, ()), (DELETED, ()), (OWNER_COOKIE, ()), (NO_SCOPE, ("scope users:activity",)),
                        (OWNER, ("running server's own hub token",)),
                        (ACTIVITY_TOKEN, ("running server's own hub token",)))],
    # finding 1 (issue 19): a registration of a job the ledger never entered holds nothing
    Cell("POST", REVIEW_API + "jobs/" + UNKNOWN_JOB, SERVER_TOKEN, (404,), json=REGISTRATION,
         note="not in the ledger", show=("not in the hub's ledger",), after=not_registered(UNKNOWN_JOB)),
    # a share sealed to another key than the job's own review key is refused: a stranger's, or
    # alice's approved job's (a registration replayed under another job id)
    Cell("POST", REVIEW_API + "jobs/{alice_ledger}", SERVER_TOKEN, (403,), json=REGISTRATION, note="foreign key",
         show=("not sealed to this key",), after=not_registered(ALICE_LEDGER)),
    Cell("POST", REVIEW_API + "jobs/{alice_ledger}", SERVER_TOKEN, (403,), note="another job's key",
         json={"results": [], "share": "{replayed_share}"}, show=("not sealed to this key",),
         after=not_registered(ALICE_LEDGER)),
    # a job that needed no review when it was entered has no key: nothing to hold
    Cell("POST", REVIEW_API + "jobs/{alice_plain}", SERVER_TOKEN, (403,), json=REGISTRATION,
         show=("did not need review",), after=not_registered(ALICE_PLAIN)),
]


# -- the job ledger (hub_ext/review.py: LedgerJobAPIHandler) ----------------------------------------

LEDGER = "/hub/api/xnat-hpc/jobs/"
#: an entry that claims bob's project: the ledger takes the projects from the server's scope
CLAIMING = {**entry("alice"), "projects": ["CARDIO_ECG"]}
#: alice's job seen by anyone but her: neither its projects nor its review recipient
ALICE_LEDGER_HIDDEN = ("NEURO_MRI", "SLEEP_EEG", "{alice_recipient}", "{alice_ledger_recipient}", "AGE-SECRET-KEY")
HUB_CELLS += [
    # only a running server's own token enters a job; a refused entry enters nothing
    *[Cell("POST", LEDGER + REFUSED_JOB, who, (403,), json=CLAIMING, note=who.cred, hide=("age1",),
           show=show, after=not_in_ledger(REFUSED_JOB))
      for who, show in ((NOBODY, ()), (DELETED, ()), (OWNER_COOKIE, ()), (NO_SCOPE, ("scope users:activity",)),
                        (OWNER, ("running server's own hub token",)),
                        (ACTIVITY_TOKEN, ("running server's own hub token",)),
                        (OTHER, ("running server's own hub token",)),
                        (ADMIN, ("running server's own hub token",)))],
    # the server's own token: the job's projects are the server's scope, never the body's claim
    Cell("POST", LEDGER + NEW_JOB, SERVER_TOKEN, (201,), json=CLAIMING, hide=("AGE-SECRET-KEY",),
         check=entered_from_scope("alice", ["NEURO_MRI", "SLEEP_EEG"], ["NEURO_MRI"], "CARDIO_ECG")),
    # bob's server under alice's job id: bob's own row (rows are per user), of bob's scope; hers unchanged
    Cell("POST", LEDGER + "{alice_ledger}", OTHER_SERVER, (201,), hide=ALICE_LEDGER_HIDDEN,
         json={**entry("bob", script="c"), "projects": ["NEURO_MRI"]},
         check=entered_from_scope("bob", ["CARDIO_ECG"], ["CARDIO_ECG"], "NEURO_MRI"),
         after=ledger_unchanged(ALICE_LEDGER)),
    # reports on a job: only the job's own user's server; bob's has no such job
    *[Cell("PATCH", LEDGER + "{alice_review}", who, (403,), json={"state": "cancelled"}, note=who.cred,
           hide=ALICE_LEDGER_HIDDEN, after=ledger_unchanged(ALICE_REVIEW))
      for who in (NOBODY, OWNER_COOKIE, OWNER, ACTIVITY_TOKEN)],
    Cell("PATCH", LEDGER + "{alice_review}", OTHER_SERVER, (404,), hide=ALICE_LEDGER_HIDDEN,
         json={"slurm_job_id": "999", "state": "cancelled"}, after=ledger_unchanged(ALICE_REVIEW)),
    # reading a job: any token of its own user that may report her activity
    Cell("GET", LEDGER + "{alice_review}", NOBODY, (403,), hide=ALICE_LEDGER_HIDDEN),
    Cell("GET", LEDGER + "{alice_review}", OWNER_COOKIE, (403,), hide=ALICE_LEDGER_HIDDEN),
    Cell("GET", LEDGER + "{alice_review}", NO_SCOPE, (403,), hide=ALICE_LEDGER_HIDDEN,
         show=("scope users:activity",)),
    Cell("GET", LEDGER + "{alice_review}", OTHER, (404,), hide=ALICE_LEDGER_HIDDEN),
    Cell("GET", LEDGER + "{alice_review}", OTHER_SERVER, (404,), hide=ALICE_LEDGER_HIDDEN),
    Cell("GET", LEDGER + "{alice_review}", ADMIN, (404,), hide=ALICE_LEDGER_HIDDEN),
    *[Cell("GET", LEDGER + "{alice_review}", who, (200,), hide=("AGE-SECRET-KEY", '"share"'), note=who.cred,
           show=('"projects": ["NEURO_MRI", "SLEEP_EEG"]', '"review": ["NEURO_MRI"]',
                 '"recipient": "{alice_recipient}"'))
      for who in (OWNER, ACTIVITY_TOKEN, SERVER_TOKEN)],
]


# -- the servers' audit events (xnat_hpc_governance/audit_api.py): only a running server's own token ----------

AUDIT = "/hub/api/xnat-hpc/audit"


def audit_batch(boot: str) -> dict:
    return {"boot": boot, "events": [{"seq": 1, "action": "download", "outcome": "allowed",
                                      "items": ["NEURO_MRI"], "detail": f"authz matrix {boot}"}]}


def no_audit_stream(boot: str):
    def after(world: World) -> None:
        got = [e for e in audit_events(world.hub) if str(e.get("stream", "")).endswith(f"/{boot}")]
        assert not got, got
    return after


def appended_as_alice(world: World, r) -> None:
    assert r.json()["appended"] == 1, r.text
    got = [e for e in audit_events(world.hub) if e.get("stream") == f"alice/{SERVER}/authz-ok"]
    assert [(e["user"], e["server"], e["source"]) for e in got] == [("alice", SERVER, "server")], got


HUB_CELLS += [
    Cell("POST", AUDIT, who, (403,), json=audit_batch("authz-refused"), after=no_audit_stream("authz-refused"),
         hide=("{alice_server_token}", "{bob_server_token}"), note=who.cred)
    for who in (NOBODY, OWNER, OTHER, NO_SCOPE, DELETED, ADMIN, OWNER_COOKIE)
] + [
    Cell("POST", AUDIT, SERVER_TOKEN, (200,), json=audit_batch("authz-ok"), check=appended_as_alice),
]


# -- the researcher's server API ---------------------------------------------------------------

API = f"/user/alice/{SERVER}/xnat-hpc/api/"
BOB_API = f"/user/bob/{SERVER}/xnat-hpc/api/"
EXP = "projects/NEURO_MRI/experiments/{mri_exp}"

#: every route of openapi.yaml, with a real item of alice's where it takes one
ENDPOINTS: list[tuple[str, str, object, Callable | None]] = [
    ("GET", "scope", None, None),
    ("GET", "projects", None, None),
    ("GET", "projects/NEURO_MRI/subjects", None, None),
    ("GET", "projects/NEURO_MRI/experiments", None, None),
    ("GET", f"{EXP}/scans", None, None),
    ("GET", f"{EXP}/resources", None, None),
    ("GET", f"{EXP}/files", None, None),
    ("GET", "datasets", None, None),
    ("POST", "datasets", {"name": "authz-intruder", "selection": [{"project": "NEURO_MRI"}]},
     no_dataset("authz-intruder")),
    ("GET", "datasets/authz-mri", None, None),
    ("DELETE", "datasets/authz-mri", None, dataset_still_there("authz-mri")),
    ("GET", "limits", None, None),
    ("GET", "scripts", None, None),
    ("GET", "jobs", None, None),
    ("POST", "jobs", {"dataset": "authz-mri", "script": SCRIPT, "cpus": 1, "memory": "512M",
                      "walltime": "0:05:00"}, no_new_job),
    ("GET", "jobs/{job}", None, None),
    ("GET", "jobs/{job}/logs", None, None),
    ("POST", "jobs/{job}/cancel", None, job_not_cancelled),
    ("GET", "jobs/{job}/results", None, None),
]

#: what the server says to a request without a token or login that gives access to it
REFUSED = "access to this server refused"

SERVER_CELLS: list[Cell] = [
    Cell(method, API + path, who, (403,), json=body, hide=ALICE_PRIVATE, show=(REFUSED,), after=after)
    for who in (NOBODY, OTHER, NO_SCOPE, DELETED, ADMIN)
    for method, path, body, after in ENDPOINTS
]


def items(*wanted: str, key: str = "id"):
    def check(world: World, r) -> None:
        got = [i[key] for i in r.json()["items"]]
        assert got == [world.fmt(w) for w in wanted], got
    return check


OWNER_HIDE = ("CARDIO_ECG", "authz-cardio", "@exp:CARDIO_ECG")  # bob's project, bob's dataset
SERVER_CELLS += [
    # the server trusted the hub's answer for the token once: refused once that answer expired
    # (c.XnatScopedSpawner.hub_auth_cache_max_age, PERMISSION_TTL here, waited for with the revocation cells)
    Cell("GET", API + path, DELETED_AFTER_USE, (403,), hide=ALICE_PRIVATE, show=(REFUSED,),
         revoked=True)
    for path in ("scope", "datasets")
]
SERVER_CELLS += [
    Cell("GET", API + "scope", OWNER, (200,), hide=OWNER_HIDE, show=('"NEURO_MRI"', '"SLEEP_EEG"')),
    Cell("GET", API + "projects", OWNER, (200,), hide=OWNER_HIDE, show=('"NEURO_MRI"',)),
    Cell("GET", API + "projects/NEURO_MRI/subjects", OWNER, (200,), hide=OWNER_HIDE,
         show=("NEURO_MRI_S001",)),
    Cell("GET", API + "projects/NEURO_MRI/experiments", OWNER, (200,), hide=OWNER_HIDE, show=("{mri_exp}",)),
    Cell("GET", API + f"{EXP}/scans", OWNER, (200,), hide=OWNER_HIDE),
    Cell("GET", API + f"{EXP}/resources", OWNER, (200,), hide=OWNER_HIDE),
    Cell("GET", API + f"{EXP}/files", OWNER, (200,), hide=OWNER_HIDE, show=("NEURO_MRI_S001",)),
    Cell("GET", API + "datasets", OWNER, (200,), hide=OWNER_HIDE, show=("authz-mri",)),
    Cell("POST", API + "datasets", OWNER, (201,), json={"name": "authz-cell", "selection": [
        {"project": "NEURO_MRI", "experiment": "{mri_exp}"}]}, hide=OWNER_HIDE),
    Cell("GET", API + "datasets/authz-mri", OWNER, (200,), hide=OWNER_HIDE, show=("NEURO_MRI",)),
    Cell("DELETE", API + "datasets/authz-doomed", OWNER, (204,), after=no_dataset("authz-doomed")),
    Cell("GET", API + "limits", OWNER, (200,), hide=OWNER_HIDE),
    Cell("GET", API + "scripts", OWNER, (200,), hide=OWNER_HIDE, show=(SCRIPT,)),
    Cell("GET", API + "jobs", OWNER, (200,), hide=OWNER_HIDE, show=("{job}",)),
    Cell("POST", API + "jobs", OWNER, (200,), hide=OWNER_HIDE, show=("{job}",),
         json={"dataset": "authz-mri", "script": SCRIPT, "cpus": 1, "memory": "512M",
               "walltime": "0:05:00", "client_token": "{job_token}"}),  # the same submission again
    Cell("GET", API + "jobs/{job}", OWNER, (200,), hide=OWNER_HIDE, show=("{job}",)),
    Cell("GET", API + "jobs/{job}/logs", OWNER, (200,), hide=OWNER_HIDE),
    Cell("GET", API + "jobs/{job}/results", OWNER, (200, 409), hide=OWNER_HIDE),
    # another project's session under her own project: XNAT does not find it there
    Cell("GET", API + "projects/NEURO_MRI/experiments/{cardio_exp}/scans", OWNER, (403, 404),
         hide=(*data_of("CARDIO_ECG"),)),
    Cell("GET", API + "projects/NEURO_MRI/experiments/{cardio_exp}/files", OWNER, (403, 404),
         hide=(*data_of("CARDIO_ECG"),)),
    # the other direction: alice on bob's server
    Cell("GET", BOB_API + "datasets", Who("other user", "alice"), (403,), hide=("authz-cardio", "CARDIO_ECG"),
         show=(REFUSED,)),
    Cell("GET", BOB_API + "projects/CARDIO_ECG/subjects", Who("other user", "alice"), (403,),
         hide=data_of("CARDIO_ECG"), show=(REFUSED,)),
]


def project_cells(api: str, who: Who, project: str, exp: str, expect: tuple[int, ...], reason: str,
                  *, revoked: bool = False) -> list[Cell]:
    """The five project routes and a dataset over *project*: all refused with *reason*."""
    hide = (*data_of(project), "@exp:*")
    is_reason = lambda w, r: _reason(r, reason)  # noqa: E731
    base = f"projects/{project}"
    cells = [Cell("GET", api + path, who, expect, hide=hide, check=is_reason, revoked=revoked)
             for path in (f"{base}/subjects", f"{base}/experiments", f"{base}/experiments/{exp}/scans",
                          f"{base}/experiments/{exp}/resources", f"{base}/experiments/{exp}/files")]
    cells.append(Cell("POST", api + "datasets", who, expect, hide=hide, check=is_reason, revoked=revoked,
                      json={"name": "authz-refused", "selection": [{"project": project}]},
                      after=no_dataset("authz-refused") if api == API else None))
    return cells


def _reason(r, reason: str) -> None:
    body = r.json()
    assert body["error"] == reason, body


SERVER_CELLS += project_cells(API, NO_ACCESS, "CARDIO_ECG", "{cardio_exp}", (403,), "out_of_scope")
SERVER_CELLS += project_cells(BOB_API, OUT_OF_SCOPE, "NEURO_MRI", "{mri_exp}", (403,), "out_of_scope")
SERVER_CELLS += [
    Cell("GET", BOB_API + "projects", Who("owner", "bob"), (200,), hide=("NEURO_MRI", "SLEEP_EEG"),
         check=items("CARDIO_ECG")),
]
# last: these wait (once) until the servers' permission cache has expired since the revocation
SERVER_CELLS += project_cells(API, REVOKED, "SLEEP_EEG", "{sleep_exp}", (403,), "permission_denied",
                              revoked=True)
SERVER_CELLS += [
    Cell("GET", API + "projects", REVOKED, (200,), hide=("SLEEP_EEG", "CARDIO_ECG"),
         check=items("NEURO_MRI"), revoked=True),
    Cell("POST", API + "jobs", REVOKED, (403,), revoked=True, hide=data_of("SLEEP_EEG"),
         json={"dataset": "authz-sleep", "script": SCRIPT, "cpus": 1, "memory": "512M", "walltime": "0:05:00"},
         check=lambda w, r: _reason(r, "permission_denied")),
]

CELLS = HUB_CELLS + SERVER_CELLS


def test_cells_have_unique_ids():
    ids = [c.id for c in CELLS]
    assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1]


@pytest.mark.parametrize("cell", [
    pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=c.finding)) if c.finding else c
    for c in CELLS], ids=[c.id for c in CELLS])
def test_authz(world, cell):
    check_cell(world, cell)
