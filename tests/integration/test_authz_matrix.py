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
does not hold); ``owner`` (alice on her project, or dave on his).

What every cell asserts (docs/security.md, docs/architecture.md): XNAT decides; the
status is exactly the expected one (a denial is 401/403/404, never 500, and a JSON
denial carries a message); the body holds nothing the caller must not see — other
projects' subjects and sessions, alice's datasets and jobs — except what the request
itself named; and a refused change changed nothing (no server, dataset or job appeared,
none was deleted or cancelled). A cell that shows a product gap not fixed yet carries
``finding`` and is an expected failure (``xfail(strict=True)``) naming it.

The revoked cells of the server API come last and wait (once) until the servers'
permission cache (60 s) has expired since the revocation: XNAT's revocation takes effect
within that TTL by design. One run takes about two minutes.
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
from tests.fixtures.spawn import make_hub

pytestmark = [pytest.mark.devxnat, pytest.mark.slurm]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "train_example.py"
SCRIPT = "examples/train_example.py"  # where the demo puts it in each home (install_file)
SERVER = "authz"
#: devxnat's permission answers are cached this long in a server (xnat_bridge.permissions)
PERMISSION_TTL = 60
DEMO_PROJECTS = ("NEURO_MRI", "SLEEP_EEG", "CARDIO_ECG")
#: names this module creates in alice's workspace; removed again at the end
ALICE_DATASETS = ("authz-mri", "authz-sleep", "authz-doomed", "authz-cell")


# -- the callers ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Who:
    label: str
    user: str | None = None
    cred: str = "token"  # none | token | limited | deleted | used | cookie


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
TOKEN_ON_PAGE = Who("API token (pages take the login cookie only)", "alice")


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

    def wait_for_revocation(self) -> None:
        """A server trusts XNAT's answer for PERMISSION_TTL s: revocation holds after that."""
        left = self.revoked_at + PERMISSION_TTL + 1 - time.monotonic()
        if left > 0:
            time.sleep(left)


def _login(hub, user: str) -> requests.Session:
    s, r = hub.login(user, f"{user}-demo")
    assert r.status_code == 302, f"login of {user}: {r.status_code} {r.text[:300]}"
    return s


def _token(hub, user: str, note: str = "authz matrix", **body) -> str:
    r = hub.api("POST", f"/users/{user}/tokens", json={"note": note, "expires_in": 3600, **body})
    assert r.status_code in (200, 201), r.text
    return r.json()["token"]


def _wait_ready(hub, user: str, server: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        srv = hub.api("GET", f"/users/{user}").json()["servers"].get(server)
        if srv and srv.get("ready"):
            return
        if srv is None:
            raise AssertionError(f"server {user}/{server} went away:\n{hub.log()[-3000:]}")
        time.sleep(0.3)
    raise AssertionError(f"server {user}/{server} not ready in {timeout} s:\n{hub.log()[-3000:]}")


def _stop(hub, user: str, server: str) -> None:
    if server not in hub.api("GET", f"/users/{user}").json()["servers"]:
        return
    hub.api("DELETE", f"/users/{user}/servers/{server}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server not in hub.api("GET", f"/users/{user}").json()["servers"]:
            return
        time.sleep(0.3)


def _spawn(hub, user: str, server: str, projects: list[str]) -> None:
    r = hub.api("POST", f"/users/{user}/servers/{server}",
                json={"profile": "local-small", "projects": projects})
    assert r.status_code in (201, 202), r.text
    _wait_ready(hub, user, server)


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
    hub = make_hub(tmp_path_factory.mktemp("authz-hub"), xnat, "xnat", staging=staging)
    started: list[tuple[str, str]] = []
    restore: list[tuple[str, str, str]] = []  # (method, path, as user): undoes an XNAT change
    world = None
    try:
        sessions = {u: _login(hub, u) for u in ("alice", "bob", "carol", "dave", "admin")}
        tokens = {u: _token(hub, u) for u in ("alice", "bob", "admin")}
        tokens["alice-limited"] = _token(hub, "alice", scopes=["read:users!user=alice"])
        tokens["alice-deleted"] = _token(hub, "alice", note="authz matrix: deleted")
        tokens["alice-used"] = _token(hub, "alice", note="authz matrix: used")
        install_file("alice", EXAMPLE, SCRIPT)  # left alone when the demo put it there already

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
            _stop(hub, user, server)
        hub.stop()


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
    after: Callable | None = None   # after(world): the refused request changed nothing
    revoked: bool = False        # needs the revocation to be in force in the servers
    finding: str = ""            # a known product gap: the cell is expected to fail (xfail, strict)

    @property
    def id(self) -> str:
        shown = self.path
        if self.json is not None and isinstance(self.json, dict) and "projects" in self.json:
            shown += f" {{projects: {self.json['projects']}}}"
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
    elif who.cred in ("limited", "deleted", "used"):
        headers["Authorization"] = f"token {world.tokens[f'{who.user}-{who.cred}']}"
    body = _render(world, cell.json)
    if body is not None:
        kw["json"] = body
    if cell.form is not None:
        form = _render(world, cell.form)
        xsrf = session.cookies.get("_xsrf") or ""
        form = {**form, "_xsrf": xsrf}
        kw["data"] = form
        body = form
    r = session.request(cell.method, url, headers=headers, **kw)
    return r, url + " " + json.dumps(body)


DENIALS = (401, 403, 404)


def check_cell(world: World, cell: Cell) -> None:
    if cell.revoked:
        world.wait_for_revocation()
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
        assert "/hub/login" in r.headers.get("Location", ""), where
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

OWNER_PAGE = "/hub/xnat-hpc/owner"
OWNER_JSON = "/hub/xnat-hpc/owner?format=json"


def owned(*projects: str):
    def check(world: World, r) -> None:
        page = r.json()
        assert page["owned"] == sorted(projects), page["owned"]
        assert all(set(e["items"]) <= set(projects) and e["items"] for e in page["events"]), page["events"]
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
        Cell("GET", page, NOBODY, (302,), hide=ALL_PROJECTS),
        Cell("GET", page, TOKEN_ON_PAGE, (302,), hide=ALL_PROJECTS),
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
    _wait_ready(world.hub, "alice", "cell")
    _stop(world.hub, "alice", "cell")


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
    Cell("GET", "/hub/spawn/alice", REVOKED_COOKIE, (200,), hide=("SLEEP_EEG", "CARDIO_ECG"),
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
    # (c.XnatScopedSpawner.hub_auth_cache_max_age, 60 s, waited for with the revocation cells)
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
