"""devxnat's stored searches without a server: the definition XNAT writes, the search run as a
user, who sees which search, and the JupyterHub plugin's handling of a start from one.

Shapes follow xnat-web: ``SavedSearchListResource`` (the list: ``xdat_stored_search``'s columns and
``users``), ``SavedSearchResource`` (definition ``xdat:bundle``; results), ``SearchResource.
setColumnProperties`` (column keys) and ``JSONTableRepresentation`` (``Columns``, ``Result``,
``totalRecords``); the bundle's elements as xnat-web's own ``SearchXMLBuilder`` writes them."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from devxnat import jupyterhub_service as jhs
from devxnat import plugin_configs as pc
from devxnat import stored_search as ss
from devxnat.access import Access
from devxnat.errors import Forbidden, InternalError, NotFound
from devxnat.store import Store

X = "{http://nrg.wustl.edu/security}"


@pytest.fixture
def store(tmp_path):
    """Three projects with two subjects of two sessions each; alice owns NEURO_MRI, bob is a
    collaborator there and a member of CARDIO_ECG, carol is in no project; the demo's searches."""
    st = Store(tmp_path / "db.sqlite3")
    for login in ("alice", "bob", "carol"):
        st.add_user(login, "pw")
    for pid, mod, xsi in (("NEURO_MRI", "MR", "xnat:mrSessionData"), ("CARDIO_ECG", "ECG", "xnat:ecgSessionData"),
                          ("SLEEP_EEG", "EEG", "xnat:eegSessionData")):
        st.add_project(pid, pid)
        for n in (1, 2):
            sid = st.add_subject(pid, f"{pid}_S00{n}", gender="female")
            for visit in (1, 2):
                eid = st.add_experiment(pid, sid, f"{pid}_S00{n}_{mod}{visit}", xsi, date=f"2024-0{n}-0{visit}")
                st.add_scan(eid, "1", xsi.replace("Session", "Scan"), type="T1w" if visit == 1 else "T2w")
    st.set_member("NEURO_MRI", "alice", "Owners")
    st.set_member("NEURO_MRI", "bob", "Collaborators")
    st.set_member("CARDIO_ECG", "bob", "Members")
    ss.seed_demo(st)
    yield st
    st.close()


def labels(doc) -> list[str]:
    return [r["label"] for r in doc["ResultSet"]["Result"]]


# -- the definition --------------------------------------------------------------------------------
def test_the_definition_is_an_xdat_bundle_in_xnats_element_order():
    root = ET.fromstring(ss.definition_xml(ss.NEURO_FIRST_VISITS))
    assert root.tag == f"{X}bundle"
    assert {k: root.get(k) for k in ("ID", "allow-diff-columns", "secure", "brief-description", "tag")} == {
        "ID": "xs1700000000001", "allow-diff-columns": "0", "secure": "1",
        "brief-description": "NEURO_MRI first visits", "tag": "NEURO_MRI"}
    assert [c.tag[len(X):] for c in root] == ["root_element_name"] + ["search_field"] * 4 + [
        "search_where", "allowed_user", "allowed_user"]
    first = root.find(f"{X}search_field")
    assert [c.tag[len(X):] for c in first] == ["element_name", "field_ID", "sequence", "type", "header"]
    assert [c.text for c in first] == ["xnat:mrSessionData", "LABEL", "0", "string", "Session"]
    where = root.find(f"{X}search_where")
    assert where.get("method") == "AND"
    assert [c.text for c in where.find(f"{X}criteria")] == ["xnat:mrSessionData/label", "LIKE", "%_MR1"]
    assert [u.findtext(f"{X}login") for u in root.findall(f"{X}allowed_user")] == ["alice", "bob"]


def test_a_data_bundle_is_built_for_a_known_type_only():
    mr = ss.bundle("@xnat:mrSessionData")
    assert mr.root == "xnat:mrSessionData" and not mr.users and [f.field_id for f in mr.fields] == [
        "LABEL", "DATE", "PROJECT"]
    assert ss.bundle("@xnat:nothingData") is None


# -- running it ------------------------------------------------------------------------------------
def test_results_are_the_rows_the_user_may_read_with_xnats_column_keys(store):
    doc = ss.run_search(store, Access(store, "bob"), ss.get_search(store, "xs1700000000001"))
    rs = doc["ResultSet"]
    assert labels(doc) == ["NEURO_MRI_S001_MR1", "NEURO_MRI_S002_MR1"]
    assert rs["totalRecords"] == "2"
    keys = [c["key"] for c in rs["Columns"]]
    # root fields: the field id in lower case; another type's: {sql name}_{field id}; LABEL's link adds
    # SESSION_ID, INSERT_DATE and INSERT_USER, hidden
    assert keys == ["label", "session_id", "insert_date", "insert_user", "xnat_subjectdata_subject_label",
                    "date", "project"]
    hidden = {c["key"] for c in rs["Columns"] if c.get("visible") == "false"}
    assert hidden == {"session_id", "insert_date", "insert_user"}
    first = rs["Columns"][0]
    assert first == {"key": "label", "element_name": "xnat:mrSessionData", "header": "Session", "id": "LABEL",
                     "type": "string", "xPATH": "xnat:mrSessionData.LABEL"}
    row = rs["Result"][0]
    assert set(row) == set(keys) and all(isinstance(v, str) for v in row.values())
    assert row["xnat_subjectdata_subject_label"] == "NEURO_MRI_S001" and row["session_id"].startswith("XNAT_E")


def test_a_search_over_several_types_and_projects_leaves_out_what_the_user_cannot_read(store):
    search = ss.get_search(store, "xs1700000000002")
    assert labels(ss.run_search(store, Access(store, "bob"), search)) == [
        "NEURO_MRI_S001_MR1", "NEURO_MRI_S002_MR1", "CARDIO_ECG_S001_ECG1", "CARDIO_ECG_S002_ECG1"]
    assert len(labels(ss.run_search(store, Access(store, "alice"), search))) == 2
    assert labels(ss.run_search(store, Access(store, "carol"), search)) == []


def test_criteria_child_sets_scans_and_what_devxnat_does_not_know(store):
    search = ss.SearchDef("xs9", "xnat:subjectData", fields=(ss.Field("xnat:subjectData", "SUBJECT_LABEL"),),
                          where=ss.Where("AND", (("xnat:subjectData/project", "=", "NEURO_MRI"),),
                                         (ss.Where("OR", (("xnat:subjectData/label", "LIKE", "%1"),
                                                          ("xnat:subjectData.GENDER_TEXT", "=", "M"))),)))
    doc = ss.run_search(store, Access(store, "alice"), search)
    assert [r["subject_label"] for r in doc["ResultSet"]["Result"]] == ["NEURO_MRI_S001"]
    assert {c["key"] for c in doc["ResultSet"]["Columns"]} == {"subject_label", "subjectid", "insert_date",
                                                                  "insert_user"}
    scans = ss.SearchDef("xs8", "xnat:mrScanData", fields=(ss.Field("xnat:mrScanData", "TYPE"),),
                         where=ss.Where("AND", (("xnat:mrScanData/type", "=", "T1w"),)))
    assert [r["type"] for r in ss.run_search(store, Access(store, "alice"), scans)["ResultSet"]["Result"]] == [
        "T1w", "T1w"]
    for bad in (ss.SearchDef("xs7", "xnat:mrSessionData", fields=(ss.Field("xnat:mrSessionData", "NOPE"),)),
                ss.SearchDef("xs6", "xnat:mrSessionData", where=ss.Where("AND", (("xnat:mrSessionData/x", "=", ""),))),
                ss.SearchDef("xs5", "icr:roiCollectionData")):
        with pytest.raises(InternalError):
            ss.run_search(store, Access(store, "alice"), bad)


# -- who sees which search -------------------------------------------------------------------------
def test_the_list_follows_xnats_rules(store):
    ss.add_search(store, ss.SearchDef("xs3", "xnat:subjectData", "team", tag="NEURO_MRI",
                                      groups=("NEURO_MRI_owner",)))
    ss.add_search(store, ss.SearchDef("xs4", "xnat:subjectData", "open", secure=False))
    ss.add_search(store, ss.SearchDef("xs5", "xnat:subjectData", "carol's", users=("carol",)))

    def ids(login, **kw):
        return [s.id for s in ss.listed_for(store, login, **kw)]

    assert ids("bob") == ["xs1700000000002", "xs4"]               # no project tag, unless asked
    assert ids("bob", include_tag="true") == ["xs1700000000001"]
    assert ids("alice", include_tag="NEURO_MRI") == ["xs1700000000001", "xs3"]  # xs3: her group's
    assert ids("carol") == ["xs4", "xs5"]
    assert len(ids("carol", every=True)) == 5


def test_a_list_row_has_the_tables_columns_and_the_users(store):
    row = ss.list_row(store, ss.get_search(store, "xs1700000000001"))
    assert set(row) == {"id", "root_element_name", "brief_description", "description", "secure", "users", "tag",
                        "sort_by_element_name", "sort_by_field_id", "allow_diff_columns", "layeredsequence",
                        "extension", "stored_search_info"}
    assert row["users"] == "{alice,bob}" and row["secure"] == "1" and row["tag"] == "NEURO_MRI"
    assert all(isinstance(v, str) for v in row.values())
    ss.add_search(store, ss.SearchDef("xs4", "xnat:subjectData", secure=False))
    assert ss.list_row(store, ss.get_search(store, "xs4"))["users"] == "{NULL}"  # array_agg of no user


def test_reading_a_definition_needs_an_allowed_user_or_a_queryable_type(store):
    ss.add_search(store, ss.SearchDef("xs5", "xnat:subjectData", "carol's", users=("carol",)))
    assert ss.readable_definition(store, Access(store, "bob"), "xs5").id == "xs5"  # bob may query subjects
    assert ss.readable_definition(store, Access(store, "carol"), "xs5").id == "xs5"
    with pytest.raises(Forbidden):   # carol reads no project: she may not query MR sessions
        ss.readable_definition(store, Access(store, "carol"), "xs1700000000001")
    with pytest.raises(NotFound):
        ss.readable_definition(store, Access(store, "bob"), "xs404")
    assert ss.readable_definition(store, Access(store, "bob"), "@xnat:subjectData").bundle


# -- the JupyterHub plugin -------------------------------------------------------------------------
def test_the_plugin_lets_only_the_searchs_users_start_from_it(store):
    can = lambda login, project, item: jhs.can_read_item(store, Access(store, login), project, item,  # noqa: E731
                                                         pc.STORED_SEARCH)
    assert can("bob", "CARDIO_ECG", "xs1700000000001")    # the project is not checked for a search
    assert can("bob", "NEURO_MRI", "XS1700000000001")     # ids compared ignoring case (XDATUser)
    assert not can("carol", "NEURO_MRI", "xs1700000000001")
    ss.add_search(store, ss.SearchDef("xs3", "xnat:subjectData", groups=("NEURO_MRI_owner",)))
    assert not can("alice", "NEURO_MRI", "xs3")           # a group's search: not by getSearchForUser
    assert can("carol", None, "@xnat:mrSessionData")      # a site bundle: anyone's
    assert can("bob", "CARDIO_ECG", "@xnat:ecgSessionData") and not can("bob", "SLEEP_EEG", "@xnat:eegSessionData")


def test_the_plugin_mounts_the_starts_project_for_a_search(store, tmp_path: Path):
    archive = tmp_path / "archive"
    for folder in ("NEURO_MRI/arc001", "NEURO_MRI/resources", "CARDIO_ECG/arc001"):
        (archive / folder).mkdir(parents=True)
    paths = ss.plugin_data_paths(store, Access(store, "bob"), archive, "NEURO_MRI")
    assert paths == {"/data/projects/NEURO_MRI/experiments": str(archive / "NEURO_MRI/arc001"),
                     "/data/projects/NEURO_MRI/resources": str(archive / "NEURO_MRI/resources")}
    assert ss.plugin_data_paths(store, Access(store, "bob"), archive, "SLEEP_EEG") == {}  # not readable
    everything = ss.plugin_data_paths(store, Access(store, "bob"), archive, None)      # no project: all read
    assert set(everything) == {"/data/projects/NEURO_MRI/experiments", "/data/projects/NEURO_MRI/resources",
                               "/data/projects/CARDIO_ECG/experiments"}
