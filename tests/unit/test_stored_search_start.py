"""A start from an XNAT stored search (issue 20, item 9), the hub's pure parts: the plugin's body
parsed, the search resolved to the items the user may read (or refused with the reason), the
plugin layout's mounts of those items, and the one step that asks XNAT, over a fake client."""

from __future__ import annotations

import asyncio
import json

import pytest

from hub_ext.profiles import load_profiles
from spawner.decide import Session, build_plan, scope_mounts
from spawner.plan import DataLayout, DataMount, ScopeMount
from spawner.request import STORED_SEARCH_KIND, UNRESOLVED, flat_options, parse_request
from spawner.stored_search import (
    MAX_SEARCH_ITEMS,
    StoredSearch,
    check_search_readable,
    parse_search_xml,
    resolve_scope,
    resolve_stored_search,
    result_ids,
    root_kind,
)
from spawner.xnat_launch import LaunchMount, XnatLaunch, item_type, parse_launch, within_listed
from xnat_bridge.errors import InvalidRequest, NotFound, PermissionDenied, XnatUnavailable
from xnat_bridge.offload.policy import OffloadPolicy
from xnat_bridge.scope import Scope

NS = 'xmlns:xdat="http://nrg.wustl.edu/security"'
P = "NEURO_MRI"


def body(item="xs1700000000001", project=P, label="NEURO_MRI first visits", **over):
    """What the plugin POSTs for a stored search (``startServerForStoredSearch`` → ``startServer``)."""
    doc = {"userId": 12, "servername": None, "xsiType": "xdat:stored_search", "itemId": item,
           "itemLabel": label, "projectId": project, "eventTrackingId": "20261207T004607123Z",
           "dashboardConfigId": None, "task_template": None}
    return {**doc, **over}


def xml(search_id="xs1700000000001", root="xnat:mrSessionData", users=("alice", "bob"), extra=""):
    """A definition as XNAT writes it (``<xdat:bundle …>``, xnat-web's SearchXMLBuilder order)."""
    logins = "".join(f"<xdat:allowed_user><xdat:login>{u}</xdat:login></xdat:allowed_user>" for u in users)
    return (f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<xdat:bundle ID="{search_id}" '
            f'allow-diff-columns="0" secure="1" brief-description="NEURO_MRI first visits" tag="{P}" {NS}>'
            f"<xdat:root_element_name>{root}</xdat:root_element_name>"
            f"<xdat:search_field><xdat:element_name>{root}</xdat:element_name><xdat:field_ID>LABEL"
            f"</xdat:field_ID><xdat:sequence>0</xdat:sequence><xdat:type>string</xdat:type>"
            f"<xdat:header>Session</xdat:header></xdat:search_field>{extra}{logins}</xdat:bundle>")


def results(rows, key="session_id"):
    """XNAT's ``…/results?format=json`` (JSONTableRepresentation: Columns, Result, totalRecords)."""
    return {"ResultSet": {"Columns": [{"key": "label", "header": "Session"},
                                      {"key": key, "header": "Session", "visible": "false"}],
                          "Result": [{"label": f"L_{i}", key: i} for i in rows], "totalRecords": str(len(rows))}}


SEARCH = StoredSearch("xs1700000000001", "xnat:mrSessionData", "NEURO_MRI first visits", P,
                      frozenset({"alice", "bob"}))


# -- the plugin's body ----------------------------------------------------------------------------
def test_a_stored_search_start_is_parsed_unresolved_and_stored_flat_as_posted():
    request = parse_request(body())
    item = request.xnat_item
    assert request.source == "xnat" and item.kind == STORED_SEARCH_KIND
    assert (item.item_id, item.project, item.label) == ("xs1700000000001", P, "NEURO_MRI first visits")
    assert request.scope == UNRESOLVED and request.scope.projects == {}  # nothing until XNAT is asked
    assert item_type(item) == "xdat:stored_search"  # XNAT_XSI_TYPE as the plugin sets it
    flat = flat_options(request)
    assert flat["xsiType"] == "xdat:stored_search" and flat["itemLabel"] == "NEURO_MRI first visits"
    assert parse_request(flat).xnat_item == item
    bundle = parse_request(body("@xnat:mrSessionData", label="MR Sessions"))
    assert bundle.xnat_item.item_id == "@xnat:mrSessionData"


@pytest.mark.parametrize("over, words", [
    ({"itemId": "xs1/../x"}, "not an XNAT stored search id"),
    ({"itemId": "@<script>"}, "not an XNAT stored search id"),
    ({"itemLabel": "two\nlines"}, "one line of text"),
    ({"projectId": None}, "lacks projectId"),   # the plugin refuses a blank project too
    ({"projectId": "P Q"}, "not a valid XNAT identifier"),
])
def test_bad_stored_search_bodies_are_refused_naming_the_problem(over, words):
    with pytest.raises(InvalidRequest, match=words):
        parse_request(body(**over))


def test_xnats_stored_start_must_be_the_search_posted():
    request = parse_request(body())
    stored = {"xsiType": "xdat:stored_search", "itemId": "xs1700000000001", "projectId": P,
              "task_template": {"container_spec": {"env": {}, "mounts": []}}}
    assert parse_launch(stored, request).xsi_type == "xdat:stored_search"
    with pytest.raises(PermissionDenied, match="is not the one requested"):
        parse_launch({**stored, "itemId": "xs9"}, request)


# -- reading XNAT's answers ----------------------------------------------------------------------
def test_the_definition_gives_the_type_and_the_allowed_users():
    search = parse_search_xml(xml(), "xs1700000000001")
    assert search == SEARCH and not search.bundle
    for text, words in [(xml(search_id="xs2"), "definition of 'xs2'"), ("<x/>", "not an xdat:bundle"),
                        ("not xml", "is not XML"), (xml(root="nothing"), "names no data type"),
                        ('<!DOCTYPE x [<!ENTITY a "b">]>' + xml(), "document type")]:
        with pytest.raises(XnatUnavailable, match=words):
            parse_search_xml(text, "xs1700000000001")


def test_a_search_of_another_user_not_shared_is_refused():
    check_search_readable(SEARCH, "bob")
    with pytest.raises(PermissionDenied, match="is not shared with you in XNAT") as refused:
        check_search_readable(SEARCH, "carol")
    assert "carol" not in refused.value.message and "alice" not in refused.value.message  # no names told
    check_search_readable(StoredSearch("@xnat:mrSessionData", "xnat:mrSessionData"), "carol")  # a bundle


@pytest.mark.parametrize("root, kind", [
    ("xnat:subjectData", "subject"), ("xnat:mrSessionData", "experiment"), ("xnat:experimentData", "experiment"),
    ("xnat:imageSessionData", "experiment"), ("xnat:qcAssessmentData", "experiment"),
    ("icr:roiCollectionData", "experiment"), ("xnat:projectData", "project")])
def test_the_kind_of_rows(root, kind):
    assert root_kind(StoredSearch("xs1", root)) == kind


@pytest.mark.parametrize("root, words", [
    ("xnat:mrScanData", "lists scans"), ("xnat:imageScanData", "lists scans"),
    ("xdat:user", "no data a server can be scoped to"), ("wrk:workflowData", "no data"),
    ("xnat:investigatorData", "no data")])
def test_types_without_a_place_in_a_scope_are_refused(root, words):
    with pytest.raises(InvalidRequest, match=words):
        root_kind(StoredSearch("xs1", root, "Things"))


def test_result_ids_come_from_the_types_id_column():
    assert result_ids(results(["E1", "E2", "E1"]), SEARCH, "experiment") == ["E1", "E2"]
    subjects = StoredSearch("xs1", "xnat:subjectData")
    assert result_ids(results(["S1"], key="subjectid"), subjects, "subject") == ["S1"]
    assessors = StoredSearch("xs1", "xnat:qcAssessmentData")  # SESSION_ID is the assessed session there
    assert result_ids(results(["A1"], key="expt_id"), assessors, "experiment") == ["A1"]
    with pytest.raises(InvalidRequest, match="add the field EXPT_ID of xnat:qcAssessmentData"):
        result_ids(results(["E1"]), assessors, "experiment")
    assert result_ids({"ResultSet": {"Columns": [], "Result": [], "totalRecords": "0"}}, SEARCH,
                      "experiment") == []
    with pytest.raises(XnatUnavailable, match="no ResultSet"):
        result_ids({"items": []}, SEARCH, "experiment")


# -- the scope -------------------------------------------------------------------------------------
def test_the_scope_is_the_readable_items_of_the_starts_project():
    # XNAT's rows already leave out what the user may not read; E9 is in another project
    scope = resolve_scope(SEARCH, ["E1", "E3", "E9"], P, ["E1", "E2", "E3"], "experiment")
    assert json.loads(scope.to_json()) == {"projects": {P: {"experiments": ["E1", "E3"]}}}
    subjects = resolve_scope(SEARCH, ["S2"], P, ["S1", "S2"], "subject")
    assert subjects.projects[P].subjects == frozenset({"S2"}) and not subjects.projects[P].experiments
    assert resolve_scope(SEARCH, [P, "OTHER"], P, [], "project") == Scope.of([P])


def test_mixed_experiment_types_are_one_scope():
    generic = StoredSearch("xs2", "xnat:imageSessionData", "First visits")
    ids = result_ids(results(["E_MR", "E_EEG", "E_ECG"]), generic, root_kind(generic))
    scope = resolve_scope(generic, ids, P, ["E_MR", "E_EEG", "E_ECG", "E_X"], "experiment")
    assert scope.projects[P].experiments == frozenset({"E_MR", "E_EEG", "E_ECG"})


def test_nothing_readable_refuses_with_the_reason():
    with pytest.raises(NotFound, match=r"stored search xs1700000000001 \(NEURO_MRI first visits\) finds no "
                                       r"experiments in project CARDIO_ECG that you can read \(it finds 2 items "
                                       r"elsewhere\)"):
        resolve_scope(SEARCH, ["E1", "E2"], "CARDIO_ECG", ["E7"], "experiment")
    with pytest.raises(NotFound, match="finds no experiments in project NEURO_MRI that you can read;"):
        resolve_scope(SEARCH, [], P, ["E1"], "experiment")
    with pytest.raises(NotFound, match="does not find project NEURO_MRI"):
        resolve_scope(SEARCH, ["OTHER"], P, [], "project")


def test_more_items_than_the_limit_refuses():
    ids = [f"E{i}" for i in range(MAX_SEARCH_ITEMS + 1)]
    with pytest.raises(InvalidRequest, match=f"finds {MAX_SEARCH_ITEMS + 1} experiments .* at most "
                                             f"{MAX_SEARCH_ITEMS}: narrow the search"):
        resolve_scope(SEARCH, ids, P, ids, "experiment")
    assert len(resolve_scope(SEARCH, ids[:3], P, ids, "experiment", limit=3).projects[P].experiments) == 3


# -- mounts in the plugin's layout -----------------------------------------------------------------
D = f"/data/projects/{P}"
SESSIONS = {P: (Session("E1", "MR_S001_1", "S1", "NEURO_MRI_S001"), Session("E2", "MR_S001_2", "S1",
                                                                             "NEURO_MRI_S001"),
                Session("E3", "MR_S002_1", "S2", "NEURO_MRI_S002"))}


def launch_for(*mounts) -> XnatLaunch:
    """What the plugin stores for a stored search: the project's folders that exist
    (getStoredSearchPaths → getProjectPaths), read-only, and the workspace."""
    return XnatLaunch("xdat:stored_search", "xs1700000000001", P,
                      mounts=(LaunchMount("/workspace/bob", "/w/users/bob", False),
                              *(LaunchMount(t, s, True) for t, s in mounts)))


def test_within_listed_places_an_item_in_the_projects_folder_xnat_lists():
    listed = {f"{D}/experiments": f"{P}/arc002", f"{D}/subjects": None}
    assert within_listed(listed, f"{D}/experiments/MR_S001_1") == (True, f"{P}/arc002/MR_S001_1")
    assert within_listed(listed, f"{D}/subject-resources/NEURO_MRI_S001") == (True, None)
    assert within_listed(listed, "/data/projects/OTHER/experiments/MR_S001_1") == (False, None)
    assert within_listed({}, f"{D}/experiments/MR_S001_1") == (False, None)


def test_a_stored_search_mounts_its_items_from_the_folders_xnat_lists():
    scope = Scope.of({P: {"experiments": ["E1", "E3"]}})
    launch = launch_for((f"{D}/experiments", f"/archive/{P}/arc002"), (f"{D}/subjects", f"/archive/{P}/subjects"))
    mounts = scope_mounts(scope, SESSIONS, DataLayout.PLUGIN, launch=launch)
    assert mounts == (ScopeMount(P, f"{P}/arc002/MR_S001_1", f"{D}/experiments/MR_S001_1", True, True),
                      ScopeMount(P, f"{P}/arc002/MR_S002_1", f"{D}/experiments/MR_S002_1", True, True))
    by_subject = scope_mounts(Scope.of({P: {"subjects": ["S2"]}}), SESSIONS, DataLayout.PLUGIN, launch=launch)
    assert [m.target for m in by_subject] == [f"{D}/experiments/MR_S002_1", f"{D}/subject-resources/NEURO_MRI_S002"]
    # XNAT listed no experiments folder (the project has none in the archive): nothing mounted
    assert scope_mounts(scope, SESSIONS, DataLayout.PLUGIN, launch=launch_for()) == ()


PROFILE = load_profiles("profiles:\n  - slug: auto\n    backend: local\n").profiles[0]


def _plan(request, mounts=(), launch=None):
    return build_plan(user="bob", server_name="s", request=request, profile=PROFILE, roles={P: "Collaborator"},
                      mounts=mounts, data_mount=DataMount.HOST_PATH, xnat_url="http://x", alias="a", secret="s",
                      offload=OffloadPolicy(), layout=DataLayout.PLUGIN, launch=launch)


def test_an_unresolved_stored_search_never_becomes_a_plan():
    request = parse_request(body())
    with pytest.raises(InvalidRequest, match="was not resolved to the search's items"):
        _plan(request)
    resolved = resolve_scope(SEARCH, ["E1"], P, ["E1"], "experiment")
    plan = _plan(request.__class__(None, resolved, "xnat", request.xnat_item))
    env = plan.server_env.to_env()
    assert json.loads(env["XNAT_HPC_SCOPE"]) == {"projects": {P: {"experiments": ["E1"]}}}
    assert env["XNAT_XSI_TYPE"] == "xdat:stored_search" and env["XNAT_ITEM_ID"] == "xs1700000000001"


# -- the step that asks XNAT -----------------------------------------------------------------------
class FakeResponse:
    def __init__(self, text):
        self.text = text


class FakeClient:
    """The calls :func:`resolve_stored_search` makes of :class:`XnatClient`, answered as XNAT."""

    def __init__(self, definition, found, listing, *, refuse_listing=False):
        self.definition, self.found, self.listing = definition, found, listing
        self.refuse_listing = refuse_listing
        self.calls, self.closed = [], False

    def request(self, method, path, *, params=None, what=""):
        self.calls.append((method, path, params))
        return FakeResponse(self.definition)

    def get_json(self, path, *, params=None, what=""):
        self.calls.append(("GET", path, {"format": "json", **(params or {})}))
        return self.found

    def result(self, path, *, params=None, what=""):
        self.calls.append(("GET", path, params))
        if self.refuse_listing:
            raise PermissionDenied(f"XNAT does not let bob read {what}", item=what)
        return [{"ID": i} for i in self.listing]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.closed = True


def test_resolving_asks_xnat_as_the_user_and_narrows_the_request():
    client = FakeClient(xml(), results(["E1", "E3", "E9"]), ["E1", "E2", "E3"])
    request = parse_request(body())
    resolved = asyncio.run(resolve_stored_search(request, lambda: client, "bob"))
    assert resolved.scope.projects[P].experiments == frozenset({"E1", "E3"})
    assert resolved.xnat_item == request.xnat_item and client.closed
    assert client.calls == [
        ("GET", "/data/search/saved/xs1700000000001", {"format": "xml"}),
        ("GET", "/data/search/saved/xs1700000000001/results", {"format": "json"}),
        ("GET", f"/data/projects/{P}/experiments", {"columns": "ID"})]
    other = parse_request({"profile": None, "projects": [P]})  # not a stored search: untouched, no call
    assert asyncio.run(resolve_stored_search(other, lambda: pytest.fail("asked XNAT"), "bob")) is other


def test_resolving_refuses_what_xnat_says_no_to():
    request = parse_request(body())
    with pytest.raises(PermissionDenied, match="not shared with you"):
        asyncio.run(resolve_stored_search(request, lambda: FakeClient(xml(users=("alice",)), results([]), []),
                                          "bob"))
    unreadable = FakeClient(xml(), results(["E1"]), [], refuse_listing=True)
    with pytest.raises(PermissionDenied, match="does not let bob read the experiments of project NEURO_MRI"):
        asyncio.run(resolve_stored_search(request, lambda: unreadable, "bob"))
