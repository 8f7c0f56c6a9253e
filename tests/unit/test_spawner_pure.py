"""The spawners' pure builders: request parsing, form, decisions, bwrap and setpriv
arguments, the per-user directory decisions, the sbatch script and the bootstrap
registry — no hub, no XNAT, no Slurm."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat

import pytest

from hub_ext.bootstrap import BootstrapRegistry, NotBoundYet
from hub_ext.profiles import load_profiles
from spawner.decide import (
    Session,
    XnatFacts,
    build_plan,
    check_readable,
    choose_profile,
    scope_mounts,
    server_env,
)
from spawner.form import render_form
from spawner import slurm_script
from spawner.plan import DATA_MOUNT, SECRET_NAME, DataMount, ScopeMount, SpawnPlan
from spawner.request import flat_options, parse_form, parse_request, selected_projects
from spawner.sandbox import RunAs, SandboxSpec, bwrap_args, closed_to_users, setpriv_args
from spawner.slurm_script import SlurmSettings, batch_script, split_env
from spawner.userdirs import root_problem, staging_name, user_dir_problem
from xnat_bridge.errors import InvalidRequest, NotFound, PermissionDenied
from xnat_bridge.offload.policy import OffloadPolicy
from xnat_bridge.scope import Scope
from xnat_bridge.server_env import ServerEnv

CONFIG = load_profiles("""
profiles:
  - slug: small
    backend: local
    default: true
  - slug: owners
    backend: slurm
    resources: {cpus: 4, memory: 8G, walltime: "2:00:00", partition: interactive, gpus: 1}
    allow: {roles: [Owner]}
  - slug: jupyter-role
    backend: local
    allow: {site_roles: [Jupyter]}
xnat_hardware:
  2: owners
""")

ALICE = XnatFacts("alice", {"NEURO_MRI": "Owner", "SLEEP_EEG": "Member"}, ("Jupyter",),
                  {"SLEEP_EEG": (Session("E1", "EEG_S001_01", "S1", "SLEEP_EEG_S001"),
                                 Session("E2", "EEG_S002_01", "S2", "SLEEP_EEG_S002"))})
BOB = XnatFacts("bob", {"NEURO_MRI": "Collaborator"})


# -- requests ---------------------------------------------------------------
def test_form_data_becomes_flat_rest_options():
    options = parse_form({"profile": ["small"], "project": ["NEURO_MRI", "SLEEP_EEG"], "_xsrf": ["x"]})
    assert options == {"profile": "small", "projects": "NEURO_MRI,SLEEP_EEG"}
    assert parse_request(options).projects == ["NEURO_MRI", "SLEEP_EEG"]
    assert selected_projects(options) == ["NEURO_MRI", "SLEEP_EEG"]
    assert selected_projects({"nonsense": 1}) == []


@pytest.mark.parametrize("form, words", [
    ({"profile": ["small"], "project": ["../x"]}, "not a valid XNAT identifier"),
    ({"profile": ["small"], "image": ["evil"]}, "unexpected form fields: image"),
    ({"profile": ["x" * 41]}, "too long"),
])
def test_bad_form_data_is_refused(form, words):
    with pytest.raises(InvalidRequest, match=words):
        parse_form(form)


def test_rest_request_shapes():
    r = parse_request({"profile": "small", "projects": {"SLEEP_EEG": {"subjects": ["S1"]}}})
    assert r.profile == "small" and r.source == "rest" and r.projects == ["SLEEP_EEG"]
    assert r.scope.projects["SLEEP_EEG"].subjects == frozenset({"S1"})
    with pytest.raises(InvalidRequest, match="no options given"):
        parse_request({})
    with pytest.raises(InvalidRequest, match="unknown options: cmd"):
        parse_request({"projects": ["P"], "cmd": "sh"})
    with pytest.raises(InvalidRequest, match="at most 50 projects"):
        parse_request({"projects": [f"P{i}" for i in range(51)]})
    with pytest.raises(InvalidRequest, match="must be text"):
        parse_request({"projects": ["P"], "profile": {"a": 1}})


def plugin_body(xsi_type="xnat:mrSessionData", item="XNAT_E00001", project="NEURO_MRI", **over):
    """The body XNAT's plugin POSTs (XnatUserOptions, every key, nulls included)."""
    body = {"userId": 12, "servername": "", "xsiType": xsi_type, "itemId": item, "itemLabel": "MR_1",
            "projectId": project, "eventTrackingId": "1700000000000", "dashboardConfigId": None,
            "task_template": None}
    return {**body, **over}


def test_xnat_launch_requests_scope_to_the_item():
    exp = parse_request(plugin_body())
    assert exp.source == "xnat" and exp.hardware is None and exp.xnat_item.kind == "experiment"
    assert exp.xnat_item.user_id == "12" and exp.xnat_item.label == "MR_1"
    generic = parse_request(plugin_body("xnat:experimentData"))
    assert generic.xnat_item.kind == "experiment" and generic.scope == exp.scope
    assert json.loads(exp.scope.to_json()) == {"projects": {"NEURO_MRI": {"experiments": ["XNAT_E00001"]}}}
    subj = parse_request({"xsiType": "xnat:subjectData", "itemId": "S1", "projectId": "P"})
    assert subj.scope.projects["P"].subjects == frozenset({"S1"})
    proj = parse_request({"xsiType": "xnat:projectData", "itemId": "P", "projectId": "P"})
    assert proj.scope.projects["P"].whole
    for bad, words in [({"xsiType": "xnat:projectData", "itemId": "Q", "projectId": "P"}, "must equal"),
                       ({"xsiType": "xnat:mrScanData", "itemId": "1", "projectId": "P"}, "not supported"),
                       ({"xsiType": "xnat:mrSessionData", "itemId": "E"}, "lacks projectId"),
                       ({"xsiType": "<script>", "itemId": "E", "projectId": "P"}, "not an XNAT data type"),
                       ({"xsiType": "xnat:mrSessionData", "itemId": "E", "projectId": "P", "x": 1}, "unknown"),
                       (plugin_body(hardwareConfigId=2), "unknown options in XNAT launch request: hardwareConfigId"),
                       (plugin_body(profile="small"), "unknown options in XNAT launch request: profile"),
                       (plugin_body(dashboardConfigId=3), "dashboards are not supported on this hub"),
                       (plugin_body("xdat:stored_search", "xs 1/.."), "not an XNAT stored search id"),
                       (plugin_body(userId="12; rm"), "numeric user id"),
                       (plugin_body(task_template={"container_spec": {}}), "fetches it from XNAT")]:
        with pytest.raises(InvalidRequest, match=words):
            parse_request(bad)


@pytest.mark.parametrize("options", [
    {"profile": "small", "projects": ["NEURO_MRI", "SLEEP_EEG"]},
    {"projects": "NEURO_MRI"},
    {"profile": "small", "projects": {"SLEEP_EEG": {"subjects": ["S1"]}, "NEURO_MRI": {}}},
    plugin_body(), plugin_body("xnat:subjectData", "S1"), plugin_body("xnat:projectData", "NEURO_MRI"),
])
def test_stored_user_options_are_flat_and_read_back(options):
    request = parse_request(options)
    flat = flat_options(request)
    assert all(v is None or isinstance(v, str) for v in flat.values()), flat
    assert parse_request(flat) == request
    assert flat_options(parse_request(flat)) == flat


def test_flat_scope_text_is_checked():
    with pytest.raises(InvalidRequest, match="either projects or scope"):
        parse_request({"projects": "P", "scope": '{"projects": {"P": {}}}'})
    with pytest.raises(InvalidRequest, match="JSON string"):
        parse_request({"scope": {"projects": {}}})
    with pytest.raises(InvalidRequest, match="at least one"):
        parse_request({"projects": " , "})


# -- decisions ----------------------------------------------------------------
def test_profile_choice_follows_visibility_roles_and_hardware_map():
    req = parse_request({"projects": ["NEURO_MRI"]})
    assert choose_profile(CONFIG, req, ALICE).slug == "small"
    assert choose_profile(CONFIG, parse_request({"profile": "owners", "projects": ["NEURO_MRI"]}), ALICE).slug \
        == "owners"
    with pytest.raises(PermissionDenied, match="needs role Owner in project 'SLEEP_EEG'"):
        choose_profile(CONFIG, parse_request({"profile": "owners", "projects": ["SLEEP_EEG"]}), ALICE)
    with pytest.raises(PermissionDenied, match="not available to you"):
        choose_profile(CONFIG, parse_request({"profile": "jupyter-role", "projects": ["NEURO_MRI"]}), BOB)
    start = parse_request(plugin_body("xnat:projectData", "NEURO_MRI"))
    assert choose_profile(CONFIG, start, ALICE).slug == "small"  # no XNAT_HPC_HARDWARE: the default
    launch = dataclasses.replace(start, hardware="2")
    assert choose_profile(CONFIG, launch, ALICE).slug == "owners"
    unmapped = dataclasses.replace(start, hardware="9")
    with pytest.raises(InvalidRequest, match="not mapped"):
        choose_profile(CONFIG, unmapped, ALICE)
    with pytest.raises(PermissionDenied):
        choose_profile(CONFIG, req, ALICE, backends=["kubernetes"])


def test_unreadable_projects_are_refused_by_name():
    assert check_readable(Scope.of(["NEURO_MRI"]), ALICE.project_roles) == {"NEURO_MRI": "Owner"}
    with pytest.raises(PermissionDenied, match="CARDIO_ECG"):
        check_readable(Scope.of(["NEURO_MRI", "CARDIO_ECG"]), ALICE.project_roles)


def test_mounts_cover_whole_projects_or_the_selected_sessions():
    scope = Scope.of({"NEURO_MRI": {}, "SLEEP_EEG": {"subjects": ["SLEEP_EEG_S002"]}})
    assert scope_mounts(scope, ALICE.sessions) == (
        ScopeMount("NEURO_MRI", "NEURO_MRI", f"{DATA_MOUNT}/NEURO_MRI"),
        ScopeMount("SLEEP_EEG", "SLEEP_EEG/arc001/EEG_S002_01", f"{DATA_MOUNT}/SLEEP_EEG/arc001/EEG_S002_01"))
    by_label = Scope.of({"SLEEP_EEG": {"experiments": ["EEG_S001_01"]}})
    assert [m.source for m in scope_mounts(by_label, ALICE.sessions)] == ["SLEEP_EEG/arc001/EEG_S001_01"]
    with pytest.raises(NotFound, match="matches no experiment"):
        scope_mounts(Scope.of({"SLEEP_EEG": {"experiments": ["NOPE"]}}), ALICE.sessions)


def test_environment_follows_the_xnat_convention_and_keeps_the_secret_out():
    req = parse_request({"xsiType": "xnat:subjectData", "itemId": "S1", "projectId": "P"})
    env = server_env(xnat_url="http://x", alias="uuid-alias", scope=req.scope, profile=CONFIG.profiles[0],
                     offload=OffloadPolicy(partition="secure"), with_data=True, request=req).to_env()
    assert env["XNAT_HOST"] == "http://x" and env["XNAT_USER"] == "uuid-alias"
    assert env["XNAT_DATA"] == DATA_MOUNT and env["XNAT_ITEM_ID"] == "S1"
    assert "XNAT_PASS" not in env


@pytest.mark.parametrize("data_mount", list(DataMount))
def test_one_place_decides_the_data_mount_and_xnat_data(data_mount):
    req = parse_request({"profile": "small", "projects": ["NEURO_MRI"]})
    mounts = scope_mounts(req.scope, ALICE.sessions)
    plan = build_plan(user="alice", server_name="", request=req, profile=CONFIG.profiles[0],
                      roles={"NEURO_MRI": "Owner"}, mounts=mounts, data_mount=data_mount,
                      xnat_url="http://x", alias="uuid-alias", secret="s3cret",
                      offload=OffloadPolicy(staging_dir="/srv/staging"))
    env = plan.server_env.to_env()
    if data_mount is DataMount.NONE:  # e.g. Slurm, or local/kube without an archive: REST only
        assert plan.mounts == () and "XNAT_DATA" not in env
        assert "--ro-bind" not in bwrap_args(plan, SandboxSpec("", "/home/alice"))
    else:
        assert plan.mounts == mounts and env["XNAT_DATA"] == DATA_MOUNT
    assert plan.secret_env == {"XNAT_PASS": "s3cret"} and "s3cret" not in json.dumps(env)
    assert json.loads(env["XNAT_HPC_OFFLOAD"])["staging_dir"] == "/srv/staging"
    assert (plan.scope, env["XNAT_HPC_PROFILE"]) == (req.scope, "small")


def test_form_and_rest_starts_get_the_environment_they_always_had():
    """What issue 20's plugin environment adds (workspace, compute environment, general type) is for
    starts from XNAT in the plugin's layout only: a form or REST start's variables are unchanged."""
    req = parse_request({"profile": "small", "projects": ["NEURO_MRI"]})
    plan = build_plan(user="alice", server_name="", request=req, profile=CONFIG.profiles[0],
                      roles={"NEURO_MRI": "Owner"}, mounts=scope_mounts(req.scope, ALICE.sessions),
                      data_mount=DataMount.HOST_PATH, xnat_url="http://x", alias="uuid-alias", secret="s3cret",
                      offload=OffloadPolicy())
    assert set(plan.server_env.to_env()) == {"XNAT_HOST", "XNAT_USER", "XNAT_HPC_SCOPE", "XNAT_HPC_PROFILE",
                                             "XNAT_HPC_OFFLOAD", "XNAT_DATA"}
    assert plan.secret_env == {"XNAT_PASS": "s3cret"} and plan.server_env.workspace is None
    assert "/workspace" not in " ".join(bwrap_args(plan, SandboxSpec("/srv/archive", "/home/alice")))
    # the hub's layout keeps its arc001 paths for a narrowed scope, whatever XNAT says
    assert [m.source for m in scope_mounts(Scope.of({"SLEEP_EEG": {"experiments": ["E1"]}}), ALICE.sessions)] \
        == ["SLEEP_EEG/arc001/EEG_S001_01"]
    assert SECRET_NAME is slurm_script.SECRET_NAME  # one rule for what is a secret


def test_a_plan_whose_xnat_data_disagrees_with_its_mounts_is_refused():
    mount = ScopeMount("NEURO_MRI", "NEURO_MRI", f"{DATA_MOUNT}/NEURO_MRI")
    with pytest.raises(InvalidRequest, match="XNAT_DATA is None but 1 directories are mounted"):
        SpawnPlan("alice", "", CONFIG.profiles[0], {}, (mount,), ServerEnv("http://x", "a", Scope.of(["P"])))
    with pytest.raises(InvalidRequest, match="XNAT_DATA is '/xnat/data' but 0"):
        SpawnPlan("alice", "", CONFIG.profiles[0], {}, (), ServerEnv("http://x", "a", data_dir=DATA_MOUNT))
    with pytest.raises(InvalidRequest, match="archive root"):  # a plan with mounts needs the archive
        bwrap_args(_plan([mount]), SandboxSpec("", "/home/alice"))


# -- form -------------------------------------------------------------------------
def test_form_lists_profiles_and_projects_escaped_and_labelled():
    html = render_form(CONFIG.profiles[:2], {"NEURO_MRI": "Owner", "X<y": "Member"},
                       selected_projects=["NEURO_MRI"], project_names={"NEURO_MRI": 'Neuro "MRI"'})
    assert 'value="small" checked' in html and 'value="owners"' in html
    assert 'value="NEURO_MRI" checked' in html and "Neuro &quot;MRI&quot;" in html
    assert "X&lt;y" in html and "X<y" not in html
    for input_id in re.findall(r'<input [^>]*id="([^"]+)"', html):
        assert f'<label for="{input_id}">' in html
    assert "<legend>Server profile</legend>" in html
    assert "4 CPUs, 8G, 1 GPU, up to 2:00:00, partition interactive" in html
    assert "No server profile is available" in render_form([], {"P": "Owner"})
    assert "cannot read any XNAT project" in render_form(CONFIG.profiles, {})


# -- sandbox and batch script --------------------------------------------------------
def _plan(mounts=(), server="", profile=0) -> SpawnPlan:
    env = ServerEnv("http://x", "alice", Scope.of(["NEURO_MRI"]), data_dir=DATA_MOUNT if mounts else None)
    return SpawnPlan("alice", server, CONFIG.profiles[profile], {"NEURO_MRI": "Owner"},
                     tuple(mounts), env, {"XNAT_PASS": "s3cret"})


def test_bwrap_binds_only_the_scope_read_only():
    plan = _plan([ScopeMount("NEURO_MRI", "NEURO_MRI/arc001/MR_1", f"{DATA_MOUNT}/NEURO_MRI/arc001/MR_1")])
    args = bwrap_args(plan, SandboxSpec("/srv/archive", "/home/alice", ("/opt/venv",), ("/srv/staging",)))
    joined = " ".join(args)
    assert "--ro-bind /srv/archive/NEURO_MRI/arc001/MR_1 /xnat/data/NEURO_MRI/arc001/MR_1" in joined
    assert "/srv/archive " not in joined + " "  # the archive root is never bound
    assert "--bind /home/alice /home/alice" in joined and "--die-with-parent" in args
    assert args[-1] == "--" and "s3cret" not in joined
    # extra binds come after the private /run, so e.g. the munge socket stays visible
    munge = bwrap_args(plan, SandboxSpec("/srv/archive", "/home/alice", ("/run/munge",)))
    tmpfs_run = next(i for i, a in enumerate(munge) if a == "--tmpfs" and munge[i + 1] == "/run")
    assert munge.index("/run/munge") > tmpfs_run
    for bad in (ScopeMount("P", "../etc", f"{DATA_MOUNT}/../etc"), ScopeMount("P", "/etc", "/etc")):
        with pytest.raises(InvalidRequest):
            bwrap_args(_plan([bad]), SandboxSpec("/srv/archive", "/home/alice"))
    with pytest.raises(InvalidRequest, match="may not be bound"):
        bwrap_args(plan, SandboxSpec("/srv/archive", "/home/alice", ("/",)))


def test_bwrap_run_as_root_makes_the_parents_of_binds_traversable():
    """bwrap as root makes missing parents 0700; the user could not reach home or the scope."""
    plan = _plan([ScopeMount("NEURO_MRI", "NEURO_MRI/arc001/MR_1", f"{DATA_MOUNT}/NEURO_MRI/arc001/MR_1")])
    args = bwrap_args(plan, SandboxSpec("/srv/archive", "/home/alice", ("/opt/venv", "/usr/share/x"),
                                        ("/srv/staging",)))
    joined = " ".join(args)
    assert "--dir /opt --ro-bind-try /opt/venv /opt/venv" in joined
    assert "--dir /srv --bind-try /srv/staging" in joined and "--dir /home --bind /home/alice" in joined
    assert ("--dir /xnat/data/NEURO_MRI --dir /xnat/data/NEURO_MRI/arc001 --ro-bind "
            "/srv/archive/NEURO_MRI/arc001/MR_1 /xnat/data/NEURO_MRI/arc001/MR_1") in joined
    assert "--dir /usr" not in joined and args.count("--dir") == 6  # inside a bind: from the host


def test_setpriv_drops_to_the_user_for_good():
    args = setpriv_args(RunAs(1001, 1001, (1001, 998, 27, 998), "/usr/bin/setpriv"))
    assert args == ["/usr/bin/setpriv", "--reuid=1001", "--regid=1001", "--groups=27,998,1001",
                    "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
    assert setpriv_args(RunAs(1001, 1001))[3] == "--clear-groups"
    for bad in (RunAs(0, 1001), RunAs(1001, 0), RunAs(1001, 1001, (0,)), RunAs(-1, 1001)):
        with pytest.raises(InvalidRequest, match="may not run as root"):
            setpriv_args(bad)
    # the sandbox and the drop compose: bwrap's "--" then setpriv's "--" then the server
    plan = _plan([ScopeMount("NEURO_MRI", "NEURO_MRI", f"{DATA_MOUNT}/NEURO_MRI")])
    cmd = bwrap_args(plan, SandboxSpec("/srv/archive", "/home/alice")) + args + ["jupyterhub-singleuser"]
    assert cmd.index("/usr/bin/setpriv") == cmd.index("--") + 1 and cmd[-2:] == ["--", "jupyterhub-singleuser"]


def _st(mode: int, uid: int = 0) -> os.stat_result:
    return os.stat_result((mode, 1, 1, 1, uid, 0, 0, 0, 0, 0))


def test_archive_is_closed_only_below_a_root_only_directory():
    site = [_st(stat.S_IFDIR | 0o750), _st(stat.S_IFDIR | 0o700), _st(stat.S_IFDIR | 0o755)]
    assert closed_to_users(site)  # archive 0750 root:xnat-archive under a 0700 root directory
    assert not closed_to_users([_st(stat.S_IFDIR | 0o750), _st(stat.S_IFDIR | 0o755)])
    assert not closed_to_users([_st(stat.S_IFDIR | 0o700, uid=1001)])  # a user's 0700 is theirs
    assert not closed_to_users([_st(stat.S_IFDIR | 0o710)])  # group may traverse


@pytest.mark.parametrize("st, problem", [
    (_st(stat.S_IFDIR | 0o700, 1003), ""),
    (_st(stat.S_IFDIR | 0o700, 1002), "belongs to uid 1002, not to the user (uid 1003)"),
    (_st(stat.S_IFDIR | 0o755, 1003), "has mode 0755, not 0700"),
    (_st(stat.S_IFDIR | 0o1700, 1003), "has mode 1700, not 0700"),
    (_st(stat.S_IFLNK | 0o777, 1003), "is a symbolic link"),
    (_st(stat.S_IFREG | 0o700, 1003), "is not a directory"),
])
def test_only_the_users_own_private_directory_is_accepted(st, problem):
    assert user_dir_problem(st, 1003) == problem


def test_staging_root_writable_by_others_is_named():
    assert root_problem(_st(stat.S_IFDIR | 0o755)) == root_problem(_st(stat.S_IFDIR | 0o711)) == ""
    assert "mode 1777" in root_problem(_st(stat.S_IFDIR | 0o1777))
    assert "another user's name" in root_problem(_st(stat.S_IFDIR | 0o775))


def test_staging_directory_is_named_by_the_xnat_login():
    assert staging_name({"xnat_user": "J.Doe"}, "jdoe") == "J.Doe"  # what the server's connection uses
    assert staging_name(None, "alice") == staging_name({}, "alice") == "alice"


def test_batch_script_has_profile_resources_and_no_secret():
    settings = SlurmSettings(("/opt/venv/bin/python", "-m", "xnat_bridge.launch"),
                             ("/opt/venv/bin/jupyterhub-singleuser", "--debug"), "/home/alice")
    public, secret = split_env({"XNAT_HOST": "h", "XNAT_PASS": "s3cret", "JUPYTERHUB_API_TOKEN": "t0k",
                                "JPY_API_TOKEN": "t0k", "PATH": "/usr/bin", "XNAT_HPC_SCOPE": "{}"})
    assert set(secret) == {"XNAT_PASS", "JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN"}
    script = batch_script(_plan(server="neuro", profile=1), settings, list(public))
    assert "#SBATCH --cpus-per-task=4" in script and "#SBATCH --mem=8G" in script
    assert "#SBATCH --time=2:00:00" in script and "#SBATCH --gres=gpu:1" in script
    assert "#SBATCH --partition=interactive" in script
    # the job's environment is sbatch's, which the backend gives exactly the public names
    assert "#SBATCH --export=ALL" in script and "# environment: PATH,XNAT_HOST,XNAT_HPC_SCOPE" in script
    assert "#SBATCH --job-name=jupyter-alice-neuro" in script
    assert "exec /opt/venv/bin/python -m xnat_bridge.launch -- /opt/venv/bin/jupyterhub-singleuser --debug" \
        in script
    assert "s3cret" not in script and "t0k" not in script
    with pytest.raises(InvalidRequest, match="may not be exported"):
        batch_script(_plan(), settings, ["XNAT_PASS"])
    with pytest.raises(InvalidRequest, match="characters sbatch"):
        batch_script(_plan(server="x\n#SBATCH --uid=0"), settings, [])


# -- bootstrap codes -------------------------------------------------------------------
def test_bootstrap_code_is_one_time_and_bound_to_the_job():
    clock = [0.0]
    reg = BootstrapRegistry(clock=lambda: clock[0])
    owner = object()
    code = reg.issue(owner, {"XNAT_PASS": "s"}, ttl=60)
    with pytest.raises(NotBoundYet):
        reg.claim(code, "7")
    reg.bind(code, "7")
    assert reg.claim(code, "7") == (owner, {"XNAT_PASS": "s"})
    with pytest.raises(PermissionError, match="already used"):
        reg.claim(code, "7")
    wrong = reg.issue(owner, {}, ttl=60)
    reg.bind(wrong, "8")
    with pytest.raises(PermissionError, match="issued for Slurm job 8"):
        reg.claim(wrong, "9")
    with pytest.raises(PermissionError):  # a wrong claim spends the code
        reg.claim(wrong, "8")
    late = reg.issue(owner, {}, ttl=60)
    reg.bind(late, "10")
    clock[0] = 61
    with pytest.raises(PermissionError, match="expired"):
        reg.claim(late, "10")


def test_owner_page_filters_by_owned_projects_and_escapes():
    from xnat_hpc_governance.owner_render import events_for, owned_projects, simple_page

    assert owned_projects({"A": "Owner", "B": "Member"}, False) == {"A"}
    assert owned_projects({"A": "Owner", "B": "Member"}, True) == {"A", "B"}
    events = [{"items": ["A"], "user": "u1"}, {"items": ["B"], "user": "u2"}, {"items": ["A", "B"], "user": "u3"}]
    assert [e["user"] for e in events_for(events, {"A"})] == ["u3", "u1"]
    assert events_for(events, set()) == []
    page = simple_page("alice", {"A"}, [{"items": ["A"], "user": "<script>", "detail": "x&y"}], "intact")
    assert "&lt;script&gt;" in page and "<script>" not in page and "x&amp;y" in page


def test_the_spawners_events_reach_the_trail_the_admin_configured():
    """One setting (``c.HubAuditLog.path``) for the trail the governance service keeps and the
    hub's outbox beside it, where every spawner class records its starts."""
    from pathlib import Path

    from traitlets.config import Config

    from hub_ext.audit_log import HubAuditLog
    from hub_ext.hub_events import HubEventLog, outbox_of
    from spawner.dispatch import XnatProfilesSpawner
    from spawner.slurm import XnatSlurmSpawner

    c = Config()
    assert HubAuditLog(config=c).path == "xnat-hpc-audit/audit.db"
    c.HubAuditLog.path = "/var/log/xnat/audit.db"
    events = XnatProfilesSpawner(config=c).hub_audit_log
    assert isinstance(events, HubEventLog)
    assert outbox_of(events.config).path == Path("/var/log/xnat/hub-outbox/audit-outbox-hub.jsonl")
    c.HubAuditLog.path = "/var/log/slurm/audit.db"  # one setting for the service and every spawner class
    assert outbox_of(XnatSlurmSpawner(config=c).hub_audit_log.config).dir == Path("/var/log/slurm/hub-outbox")
