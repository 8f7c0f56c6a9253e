"""Admin profiles: schema, line-numbered problems, visibility rules, hot reload, check-config."""

from __future__ import annotations

import io
import logging
import os
import textwrap
from pathlib import Path

import pytest

from hub_ext.profiles import (
    Allow,
    OffloadPolicy,
    Problem,
    ProfileConfigError,
    ProfileWatcher,
    check_config_main,
    format_memory,
    format_walltime,
    load_profiles,
    load_profiles_file,
    parse_memory,
    parse_walltime,
    profile_allows_projects,
    visible_profiles,
)
from xnat_bridge.errors import InvalidRequest, NotFound, PermissionDenied

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "profiles.yaml"
GiB = 1 << 30


def yml(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def problems(text: str) -> list[str]:
    """Every problem of *text* as the admin reads it."""
    with pytest.raises(ProfileConfigError) as info:
        load_profiles(yml(text), "p.yaml")
    return [str(p) for p in info.value.problems]


def one_problem(text: str) -> str:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


# --------------------------------------------------------------------------
# good files
# --------------------------------------------------------------------------


def test_example_file_loads_clean():
    config = load_profiles_file(EXAMPLE)
    assert config.slugs == ["local-small", "slurm-cpu", "slurm-gpu", "k8s-standard"]
    assert config.default_profile.slug == "local-small"
    assert config.by_slug("local-small").backend == "local"

    cpu = config.by_slug("slurm-cpu")
    assert (cpu.backend, cpu.resources.partition, cpu.resources.cpus) == ("slurm", "interactive", 2)
    assert cpu.resources.memory == 4 * GiB
    assert cpu.resources.walltime == 8 * 3600  # written unquoted: YAML alone would read 28800 anyway

    gpu = config.by_slug("slurm-gpu")
    assert gpu.allow.site_roles == ("Jupyter",)
    assert gpu.allow.roles == ("Owner", "Member")
    assert gpu.resources.gpus == 1

    k8s = config.by_slug("k8s-standard")
    assert k8s.backend == "kubernetes" and k8s.resources.image
    assert k8s.resources.tolerations[0]["operator"] == "Equal"

    assert config.offload == OffloadPolicy(partition="secure", max_cpus=8, max_memory=32 * GiB, max_gpus=1,
                                           max_walltime=24 * 3600, exclusive=True,
                                           staging_dir="/var/lib/xnat-hpc-hub/staging")
    assert config.hardware_map
    assert all(slug in config.slugs for slug in config.hardware_map.values())
    assert config.profile_for_hardware("small").slug == "slurm-cpu"
    assert config.profile_for_hardware("unknown") is None


def test_good_file_values_and_defaults_of_the_schema():
    config = load_profiles(yml("""
        profiles:
          - slug: a
            backend: slurm
            resources:
              memory: 1.5G
              walltime: 1-12:00:00
              account: radiology
          - slug: "2024"
            display_name: Twenty
            backend: kubernetes
            resources:
              mem_limit: 512M
              node_selector: {disk: ssd}
    """))
    a, b = config.profiles
    assert a.display_name == "a" and a.description == "" and a.default is False
    assert a.resources.memory == int(1.5 * GiB) and a.resources.walltime == 36 * 3600
    assert a.resources.cpus == 1 and a.resources.gpus == 0 and a.resources.account == "radiology"
    assert a.allow == Allow() and a.allow.everyone
    assert config.default_profile is a  # none marked: the first
    assert b.slug == "2024" and b.resources.mem_limit == 512 << 20
    assert b.resources.node_selector == {"disk": "ssd"}
    assert config.offload == OffloadPolicy()  # no offload block: the documented defaults
    with pytest.raises(NotFound, match="no profile 'zzz'; known profiles: a, 2024"):
        config.by_slug("zzz")


def test_parse_and_format_helpers():
    assert parse_memory("4G") == 4 * GiB and parse_memory("512m") == 512 << 20
    assert format_memory(4 * GiB) == "4G" and format_memory(int(1.5 * GiB)) == "1536M"
    assert parse_walltime("8:00:00") == 28800 and parse_walltime("2-00:30:00") == 2 * 86400 + 1800
    assert format_walltime(28800) == "8:00:00" and format_walltime(129600) == "1-12:00:00"
    for bad in ("0:00:00", "1-24:00:00", "8:60:00", "480", "8h"):
        with pytest.raises(ValueError, match="is not a walltime"):
            parse_walltime(bad)
    for bad in ("0G", "4 gigs", "4GiB", "4096"):
        with pytest.raises(ValueError, match="is not a memory size"):
            parse_memory(bad)


# --------------------------------------------------------------------------
# every kind of error, with its line
# --------------------------------------------------------------------------


def test_error_is_invalid_request_with_problem_list():
    with pytest.raises(ProfileConfigError) as info:
        load_profiles("profiles: []\n", "p.yaml")
    assert isinstance(info.value, InvalidRequest) and info.value.status == 400
    assert info.value.problems == [
        Problem("p.yaml", 1, "profiles", "the list is empty; add at least one profile")]
    assert str(info.value) == "p.yaml:1: profiles: the list is empty; add at least one profile"


def test_memory_message_in_the_documented_form():
    assert one_problem("""
        profiles:
          - {slug: a, backend: local}
          - {slug: b, backend: local}
          - slug: c
            backend: slurm
            resources:
              memory: 4 gigs
    """) == "p.yaml:7: profiles[2].resources.memory: '4 gigs' is not a memory size; write e.g. 4G or 512M"


def test_unknown_key_with_suggestion():
    assert one_problem("""
        profiles:
          - slug: a
            backend: slurm
            resources:
              partiton: gpu
    """) == ("p.yaml:5: profiles[0].resources.partiton: unknown key 'partiton'; did you mean 'partition'? "
             "allowed here: cpus, memory, gpus, partition, account, qos, walltime, constraint")
    assert problems("""
        profile:
          - slug: a
    """) == [
        "p.yaml:1: missing required key 'profiles'; add a 'profiles:' list (see config/profiles.yaml)",
        "p.yaml:1: profile: unknown key 'profile'; did you mean 'profiles'? "
        "allowed here: defaults, profiles, offload, xnat_hardware",
    ]


def test_unknown_key_at_every_level():
    found = problems("""
        profiles:
          - slug: a
            backend: local
            displayname: A
            allow:
              user: [alice]
        offload:
          max_cpu: 4
        colour: blue
    """)
    assert [p.split(": ")[1] for p in found] == [
        "profiles[0].displayname", "profiles[0].allow.user", "offload.max_cpu", "colour"]
    assert "did you mean 'display_name'?" in found[0]
    assert "did you mean 'users'?" in found[1]
    assert "did you mean 'max_cpus'?" in found[2]
    assert found[3].startswith("p.yaml:9: colour: unknown key 'colour'; allowed here: defaults, profiles")


def test_bad_slug():
    assert one_problem("""
        profiles:
          - slug: GPU_Large
            backend: local
    """) == ("p.yaml:2: profiles[0].slug: 'GPU_Large' is not a valid slug: use 1-40 lowercase letters, "
             "digits and dashes, starting with a letter or digit, e.g. gpu-large")
    assert "is not a valid slug" in one_problem(f"profiles:\n  - {{slug: {'a' * 41}, backend: local}}\n")


def test_duplicate_slug_names_both_lines():
    assert one_problem("""
        profiles:
          - slug: same
            backend: local
          - slug: other
            backend: local
          - slug: same
            backend: slurm
    """) == ("p.yaml:6: profiles[2].slug: duplicate slug 'same', already used on line 2; "
             "slugs must be unique, rename one")


def test_two_defaults():
    assert one_problem("""
        profiles:
          - slug: a
            backend: local
            default: true
          - slug: b
            backend: local
            default: true
    """) == ("p.yaml:7: profiles[1].default: 'b' is a second default profile; 'a' (line 4) "
             "is already default: true, keep at most one")


def test_bad_walltime_written_plain_or_quoted():
    found = problems("""
        profiles:
          - slug: a
            backend: slurm
            resources:
              walltime: 8h
          - slug: b
            backend: slurm
            resources:
              walltime: "1-25:00:00"
    """)
    assert found == [
        "p.yaml:5: profiles[0].resources.walltime: '8h' is not a walltime; write HH:MM:SS (e.g. 8:00:00) "
        "or D-HH:MM:SS (e.g. 1-12:00:00)",
        "p.yaml:9: profiles[1].resources.walltime: '1-25:00:00' is not a walltime; write HH:MM:SS "
        "(e.g. 8:00:00) or D-HH:MM:SS (e.g. 1-12:00:00)",
    ]


def test_bad_backend_and_missing_required_keys():
    assert one_problem("""
        profiles:
          - slug: a
            backend: slurmm
    """) == ("p.yaml:3: profiles[0].backend: unknown backend 'slurmm'; did you mean 'slurm'? "
             "use one of local, slurm, kubernetes")
    assert problems("""
        profiles:
          - display_name: nameless
    """) == [
        "p.yaml:2: profiles[0]: missing required key 'slug'; add e.g. 'slug: gpu-large'",
        "p.yaml:2: profiles[0]: missing required key 'backend'; "
        "add 'backend: local', 'slurm' or 'kubernetes'",
    ]


def test_kubernetes_key_on_a_slurm_profile():
    assert one_problem("""
        profiles:
          - slug: a
            backend: slurm
            resources:
              cpus: 2
              image: jupyter/scipy-notebook
    """) == ("p.yaml:6: profiles[0].resources.image: 'image' is a kubernetes setting, but this profile "
             "uses backend slurm; remove it or set backend: kubernetes")
    assert "'walltime' is a slurm setting, but this profile uses backend local" in one_problem("""
        profiles:
          - slug: a
            backend: local
            resources: {walltime: "1:00:00"}
    """)


@pytest.mark.parametrize("line, expected", [
    ("cpus: two", "resources.cpus: expected a whole number >= 1 (e.g. 2), got 'two'"),
    ("cpus: 0", "resources.cpus: expected a whole number >= 1 (e.g. 2), got the number 0"),
    ("cpus: yes", "resources.cpus: expected a whole number >= 1 (e.g. 2), "
                  "got yes (which YAML reads as true)"),
    ("gpus: -1", "resources.gpus: expected a whole number >= 0 (e.g. 2), got the number -1"),
    ("memory: [4G]", "resources.memory: expected a value like 4G, got a list"),
    ("partition: [a, b]", "resources.partition: expected text, got a list"),
    ("account: 1234", 'resources.account: expected text, got the number 1234; write it in quotes: "1234"'),
])
def test_wrong_types_in_resources(line, expected):
    text = f"profiles:\n  - slug: a\n    backend: slurm\n    resources:\n      {line}\n"
    assert one_problem(text) == f"p.yaml:5: profiles[0].{expected}"


def test_wrong_types_elsewhere():
    found = problems("""
        profiles:
          - slug: a
            backend: kubernetes
            default: maybe
            display_name: [A]
            resources: 4
            allow:
              users: alice
              roles: [owner, Boss]
          - just a string
        xnat_hardware: [a]
    """)
    assert found == [
        "p.yaml:4: profiles[0].default: expected true or false, got 'maybe'",
        "p.yaml:5: profiles[0].display_name: expected text, got a list",
        "p.yaml:6: profiles[0].resources: expected a mapping (indented key: value lines), got the number 4",
        "p.yaml:8: profiles[0].allow.users: expected a list, e.g. [alice, bob], got 'alice'",
        "p.yaml:9: profiles[0].allow.roles[0]: unknown project role 'owner'; did you mean 'Owner'? "
        "use one of Owner, Member, Collaborator",
        "p.yaml:9: profiles[0].allow.roles[1]: unknown project role 'Boss'; "
        "use one of Owner, Member, Collaborator",
        "p.yaml:10: profiles[1]: expected a profile (a mapping with slug, display_name, backend, ...), "
        "got 'just a string'",
        "p.yaml:11: xnat_hardware: expected a mapping (indented key: value lines), got a list",
    ]


def test_kubernetes_resources_checked():
    found = problems("""
        profiles:
          - slug: k
            backend: kubernetes
            resources:
              cpus: 4
              memory: 8G
              cpu_limit: 2
              mem_limit: 4G
              node_selector: {gpu: true}
              tolerations:
                - key: gpu
                  operatr: Exists
                  effect: Sometimes
    """)
    assert found == [
        "p.yaml:7: profiles[0].resources.cpu_limit: cpu_limit 2 is below cpus 4; "
        "raise cpu_limit or lower cpus",
        "p.yaml:8: profiles[0].resources.mem_limit: mem_limit 4G is below memory 8G; "
        "raise mem_limit or lower memory",
        "p.yaml:9: profiles[0].resources.node_selector.gpu: expected text, "
        'got true (which YAML reads as true); write it in quotes: "true"',
        "p.yaml:12: profiles[0].resources.tolerations[0].operatr: unknown key 'operatr'; did you mean "
        "'operator'? allowed here: key, operator, value, effect, tolerationSeconds",
        "p.yaml:13: profiles[0].resources.tolerations[0].effect: unknown effect 'Sometimes'; use one of "
        "NoSchedule, PreferNoSchedule, NoExecute",
    ]


def test_offload_and_hardware_checked():
    found = problems("""
        profiles:
          - {slug: slurm-gpu, backend: slurm}
        offload:
          max_cpus: 0
          max_memory: lots
          max_walltime: forever
          exclusive: "no"
          staging_dir: staging
        xnat_hardware:
          1: slurm-gpx
          "GPU (large)": slurm-gpu
    """)
    assert found == [
        "p.yaml:4: offload.max_cpus: expected a whole number >= 1 (e.g. 2), got the number 0",
        "p.yaml:5: offload.max_memory: 'lots' is not a memory size; write e.g. 4G or 512M",
        "p.yaml:6: offload.max_walltime: 'forever' is not a walltime; write HH:MM:SS (e.g. 8:00:00) "
        "or D-HH:MM:SS (e.g. 1-12:00:00)",
        "p.yaml:7: offload.exclusive: expected true or false, got 'no'",
        "p.yaml:8: offload.staging_dir: 'staging' is not an absolute path; write it from the root, "
        "e.g. /var/lib/xnat-hpc-hub/staging",
        "p.yaml:10: xnat_hardware['1']: unknown profile 'slurm-gpx'; did you mean 'slurm-gpu'? "
        "map to one of: slurm-gpu",
    ]


def test_yaml_level_problems():
    assert problems("profiles:\n  - slug: a\n\tbackend: local\n")[0].startswith(
        "p.yaml:3: YAML syntax error: found character '\\t' that cannot start any token")
    assert problems("") == ["p.yaml:1: the file is empty; add a 'profiles:' list (see config/profiles.yaml)"]
    assert problems("profiles: []\n---\nprofiles: []\n") == [
        "p.yaml:2: YAML syntax error: expected a single document in the stream, but found another document; "
        "check indentation (spaces, not tabs), colons and quotes around this line"]
    assert problems('profiles:\n  - slug: "\x00"\n') == [
        "p.yaml:2: character '\\x00' is not allowed in YAML; remove it"]
    assert problems("- a\n") == ["p.yaml:1: the file must be a mapping with a 'profiles:' list; "
                                 "see config/profiles.yaml"]
    assert problems("offload: {}\n") == [
        "p.yaml:1: missing required key 'profiles'; add a 'profiles:' list (see config/profiles.yaml)"]
    assert one_problem("""
        profiles:
          - slug: a
            backend: local
            slug: b
    """) == "p.yaml:4: profiles[0].slug: key 'slug' appears twice (first on line 2); keep only one"
    assert problems("""
        profiles:
          - &base {slug: a, backend: local}
          - <<: *base
            slug: b
            backend: local
    """) == ["p.yaml:3: profiles[1]['<<']: YAML merge keys (<<) are not supported; "
             "put shared values under the top-level defaults:"]


def test_several_errors_reported_at_once_in_line_order():
    found = problems("""
        defaults:
          resources:
            memroy: 2G
        profiles:
          - slug: Bad
            backend: local
          - slug: ok
            backend: dask
            resources:
              memory: 4 gigs
              walltime: 8h
          - slug: ok
            backend: local
    """)
    assert [p.split(": ")[1] for p in found] == [
        "defaults.resources.memroy",
        "profiles[0].slug",
        "profiles[1].backend",
        "profiles[1].resources.memory",
        "profiles[1].resources.walltime",  # checked although the backend is unknown
        "profiles[2].slug",  # a duplicate of a profile that is itself invalid
    ]
    assert [int(p.split(":")[1]) for p in found] == [3, 5, 8, 10, 11, 12]


# --------------------------------------------------------------------------
# defaults
# --------------------------------------------------------------------------


def test_defaults_are_inherited_deeply_and_the_profile_wins():
    config = load_profiles(yml("""
        defaults:
          description: shared
          backend: slurm
          resources:
            cpus: 2
            memory: 4G
            partition: interactive
            image: shared/image:1
          allow:
            site_roles: [Jupyter]
        profiles:
          - slug: a
          - slug: b
            description: own
            resources:
              memory: 8G
          - slug: k
            backend: kubernetes
            allow:
              users: [alice]
    """))
    a, b, k = config.profiles
    assert (a.backend, a.description, a.resources.cpus, a.resources.memory) == ("slurm", "shared", 2, 4 * GiB)
    assert a.resources.partition == "interactive" and a.resources.image is None  # other backend's key dropped
    assert (b.description, b.resources.cpus, b.resources.memory) == ("own", 2, 8 * GiB)
    assert b.allow.site_roles == ("Jupyter",)
    assert (k.backend, k.resources.image, k.resources.partition) == ("kubernetes", "shared/image:1", None)
    assert k.allow == Allow(site_roles=("Jupyter",), users=("alice",))


def test_a_bad_default_is_reported_once_at_its_own_line():
    found = problems("""
        defaults:
          slug: everyone
          resources:
            memory: 4 gigs
            memroy: 4G
        profiles:
          - {slug: a, backend: local}
          - {slug: b, backend: slurm}
          - {slug: c, backend: kubernetes}
    """)
    assert found == [
        "p.yaml:2: defaults.slug: slug cannot be inherited; set it on each profile instead of under defaults",
        "p.yaml:4: defaults.resources.memory: '4 gigs' is not a memory size; write e.g. 4G or 512M",
        "p.yaml:5: defaults.resources.memroy: unknown key 'memroy'; did you mean 'memory'? allowed here: "
        "cpus, memory, gpus, partition, account, qos, walltime, constraint, image, cpu_limit, mem_limit, "
        "node_selector, tolerations",
    ]


# --------------------------------------------------------------------------
# who sees what
# --------------------------------------------------------------------------

RULES = yml("""
    defaults: {backend: local}
    profiles:
      - {slug: open}
      - {slug: owners, allow: {roles: [Owner]}}
      - {slug: members, allow: {roles: [Owner, Member]}}
      - {slug: neuro, allow: {projects: ["NEURO_*"]}}
      - {slug: neuro-owner, allow: {projects: ["NEURO_*"], roles: [Owner]}}
      - {slug: jupyter, allow: {site_roles: [Jupyter]}}
      - {slug: jupyter-members, allow: {site_roles: [Jupyter], roles: [Owner, Member]}}
      - {slug: alice-only, allow: {users: [alice]}}
      - {slug: gpu-group, allow: {groups: [gpu]}}
""")


def visible(username="zoe", groups=(), site_roles=(), **project_roles):
    config = load_profiles(RULES)
    return [p.slug for p in visible_profiles(config, username=username, groups=list(groups),
                                             site_roles=list(site_roles), project_roles=project_roles)]


def test_visible_for_owner_member_collaborator_outsider():
    assert visible(site_roles=["Jupyter"], NEURO_MRI="Owner") == [
        "open", "owners", "members", "neuro", "neuro-owner", "jupyter", "jupyter-members"]
    assert visible(SLEEP_EEG="Member") == ["open", "members"]
    assert visible(NEURO_MRI="Collaborator") == ["open", "neuro"]
    assert visible() == ["open"]
    # one project must match both rules: owner elsewhere, collaborator in NEURO_*
    assert visible(SLEEP_EEG="Owner", NEURO_MRI="Collaborator") == ["open", "owners", "members", "neuro"]


def test_visible_for_admin_users_and_groups():
    all_slugs = load_profiles(RULES).slugs
    assert visible(site_roles=["Administrator"]) == all_slugs
    assert visible(username="alice") == ["open", "alice-only"]
    assert visible(groups=["gpu", "other"]) == ["open", "gpu-group"]
    assert visible(site_roles=["jupyter"]) == ["open", "jupyter"]  # XNAT site roles compare case-blind


def test_profile_allows_projects():
    config = load_profiles(RULES)
    roles = {"NEURO_MRI": "Owner", "NEURO_DTI": "Collaborator", "SLEEP_EEG": "Member"}
    profile_allows_projects(config.by_slug("open"), roles, ["NEURO_MRI", "SLEEP_EEG"])
    profile_allows_projects(config.by_slug("open"), roles, [])
    profile_allows_projects(config.by_slug("neuro-owner"), roles, ["NEURO_MRI"])

    with pytest.raises(PermissionDenied, match="profile 'neuro' cannot be used with project 'SLEEP_EEG' "
                                               r"\(it is limited to NEURO_\*\)") as info:
        profile_allows_projects(config.by_slug("neuro"), roles, ["NEURO_MRI", "SLEEP_EEG"])
    assert info.value.item == "SLEEP_EEG"
    with pytest.raises(PermissionDenied, match="profile 'members' needs role Owner or Member in project "
                                               "'NEURO_DTI', you are Collaborator there"):
        profile_allows_projects(config.by_slug("members"), roles, ["NEURO_DTI"])
    with pytest.raises(PermissionDenied, match="you have no role in XNAT project 'SECRET'"):
        profile_allows_projects(config.by_slug("open"), roles, ["SECRET"])
    with pytest.raises(PermissionDenied, match="select at least one project"):
        profile_allows_projects(config.by_slug("owners"), roles, [])


def test_offload_limits_check_request():
    limits = load_profiles_file(EXAMPLE).offload
    limits.check_request(cpus=8, memory=32 * GiB, gpus=1, walltime=24 * 3600)
    assert limits.violations(cpus=16, memory=64 * GiB, gpus=1, walltime=3600) == [
        "cpus 16 is above the limit 8 of partition 'secure'; ask for at most 8",
        "memory 64G is above the limit 32G of partition 'secure'; ask for at most 32G",
    ]
    with pytest.raises(InvalidRequest, match="walltime 1-00:00:01 is above the limit 1-00:00:00 "
                                                 "of partition 'secure'; ask for at most 1-00:00:00"):
        limits.check_request(walltime=86401)


# --------------------------------------------------------------------------
# hot reload
# --------------------------------------------------------------------------

ONE = "profiles:\n  - {slug: one, backend: local}\n"
TWO = "profiles:\n  - {slug: one, backend: local}\n  - {slug: two, backend: slurm}\n"
BROKEN = "profiles:\n  - {slug: one, backend: local}\n  - {slug: Two, backend: slurm}\n"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rewrite(path: Path, text: str) -> None:
    """Write *text* and move the mtime forward, so even coarse file systems see a change."""
    previous = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    os.utime(path, ns=(previous + 10**9, previous + 10**9))


def test_watcher_hot_reload(tmp_path, caplog):
    path = tmp_path / "profiles.yaml"
    rewrite(path, ONE)
    clock = Clock()
    watcher = ProfileWatcher(path, interval=2, clock=clock)
    assert watcher.current().slugs == ["one"]

    rewrite(path, TWO)
    clock.now += 1
    assert watcher.current().slugs == ["one"]  # not looked at within the interval
    clock.now += 1
    assert watcher.current().slugs == ["one", "two"]

    caplog.set_level(logging.INFO, logger="hub_ext.profiles")
    caplog.clear()
    rewrite(path, BROKEN)
    for _ in range(3):
        clock.now += 2
        assert watcher.current().slugs == ["one", "two"]  # the last good one
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"{path}:3: profiles[1].slug: 'Two' is not a valid slug" in warnings[0].getMessage()

    rewrite(path, ONE)
    clock.now += 2
    assert watcher.current().slugs == ["one"]

    path.unlink()
    clock.now += 2
    assert watcher.current().slugs == ["one"]  # a vanished file keeps the last good one, too


def test_watcher_refuses_an_invalid_first_file(tmp_path):
    path = tmp_path / "profiles.yaml"
    path.write_text(BROKEN)
    with pytest.raises(ProfileConfigError, match="is not a valid slug"):
        ProfileWatcher(path)
    with pytest.raises(ProfileConfigError, match="cannot read the file"):
        ProfileWatcher(tmp_path / "missing.yaml")


# --------------------------------------------------------------------------
# check-config
# --------------------------------------------------------------------------


def test_check_config_main(tmp_path):
    good, bad, syntax = tmp_path / "good.yaml", tmp_path / "bad.yaml", tmp_path / "syntax.yaml"
    good.write_text(TWO)
    bad.write_text(BROKEN.replace("local}", "local, default: maybe}"))
    syntax.write_text("profiles:\n  - slug: [a\n")
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("profiles:\n  - {slug: a, backend: local, description: M\u00fcller}\n"
                       .encode("latin-1"))

    out = io.StringIO()
    assert check_config_main([str(good), str(EXAMPLE)], out) == 0
    assert out.getvalue().splitlines() == [
        f"{good}: OK (2 profiles: one, two)",
        f"{EXAMPLE}: OK (4 profiles: local-small, slurm-cpu, slurm-gpu, k8s-standard)",
    ]

    out = io.StringIO()
    files = [good, bad, syntax, tmp_path / "nope.yaml", latin1]
    assert check_config_main([str(f) for f in files], out) == 1
    lines = out.getvalue().splitlines()
    assert lines[0] == f"{good}: OK (2 profiles: one, two)"
    assert lines[1] == f"{bad}:2: profiles[0].default: expected true or false, got 'maybe'"
    assert lines[2].startswith(f"{bad}:3: profiles[1].slug: 'Two' is not a valid slug")
    assert lines[3].startswith(f"{syntax}:3: YAML syntax error: ")
    assert lines[4] == f"{tmp_path / 'nope.yaml'}: cannot read the file (No such file or directory); " \
                       "check the path and its permissions"
    assert lines[5] == (f"{latin1}: the file is not UTF-8 text (invalid start byte at byte 54); "
                        "save it as UTF-8")
    assert len(lines) == 6


def test_cli_check_config_command(tmp_path):
    import subprocess
    import sys

    good = Path(__file__).resolve().parents[2] / "config" / "profiles.yaml"
    ok = subprocess.run([sys.executable, "-m", "hub_ext.cli", "check-config", str(good)],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "OK" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("profiles:\n  - slug: Bad Slug\n    backend: local\n")
    r = subprocess.run([sys.executable, "-m", "hub_ext.cli", "check-config", str(bad)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and f"{bad}:2:" in r.stdout


# --------------------------------------------------------------------------
# archive_node_path: where a Slurm partition's nodes mount the archive (issue 20, item 3)
# --------------------------------------------------------------------------


def test_archive_node_path_is_a_slurm_setting_kept_as_written():
    config = load_profiles(yml("""
        defaults:
          archive_node_path: /mnt/xnat/archive
        profiles:
          - {slug: mounted, backend: slurm}
          - {slug: own, backend: slurm, archive_node_path: /srv/archive}
          - {slug: here, backend: local}
        """))
    mounted, own, here = config.profiles
    assert (mounted.archive_node_path, own.archive_node_path) == ("/mnt/xnat/archive", "/srv/archive")
    assert here.archive_node_path is None  # inherited only by the backend it belongs to
    plain = load_profiles(yml("profiles:\n  - {slug: s, backend: slurm}\n"))
    assert plain.profiles[0].archive_node_path is None  # unset: nothing is mounted


@pytest.mark.parametrize("value, words", [
    ("mnt/xnat/archive", "'mnt/xnat/archive' is not an absolute path; write where the nodes mount the "
                         "archive from the root, e.g. /mnt/xnat/archive"),
    ("/mnt/xnat/../archive", "'/mnt/xnat/../archive' is not a clean path (it means '/mnt/archive'); write it "
                             "without '.', '..', '//' or a trailing '/', e.g. /mnt/xnat/archive"),
    ("/mnt/xnat/archive/", "is not a clean path (it means '/mnt/xnat/archive')"),
    ("//mnt/archive", "is not a clean path (it means '/mnt/archive')"),
    ("/mnt/./archive", "is not a clean path (it means '/mnt/archive')"),
    ("/", "'/' is the whole file system; name the directory the nodes mount the archive at"),
    ("/xnat/data", "'/xnat/data' cannot hold the archive: the server's sandbox has its own /xnat/data"),
    ('"/mnt/a\\nb"', "contains a control character; write the path on one line"),
    ("42", "expected text, got the number 42"),
])
def test_a_bad_archive_node_path_is_refused_saying_why(value, words):
    problem = one_problem(f"""
        profiles:
          - slug: s
            backend: slurm
            archive_node_path: {value}
        """)
    assert problem.startswith("p.yaml:4: profiles[0].archive_node_path: ") and words in problem


def test_archive_node_path_on_another_backend_is_refused():
    assert one_problem("""
        profiles:
          - slug: here
            backend: local
            archive_node_path: /mnt/xnat/archive
        """) == ("p.yaml:4: profiles[0].archive_node_path: 'archive_node_path' is a slurm "
                 "setting, but this profile uses backend local; remove it or set backend: slurm")
