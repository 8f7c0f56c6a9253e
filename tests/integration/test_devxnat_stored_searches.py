"""devxnat's stored searches over real HTTP, as XNAT answers them (xnat-web's
``SavedSearchListResource`` and ``SavedSearchResource``): paths, shapes, formats, status codes,
and who may see which search. The demo's searches are shared with alice and bob."""

from __future__ import annotations

import csv
import io
import xml.etree.ElementTree as ET

import pytest

from devxnat import stored_search as ss

pytestmark = pytest.mark.devxnat

X = "{http://nrg.wustl.edu/security}"
MR, ALL = "xs1700000000001", "xs1700000000002"


@pytest.fixture
def private_search(devxnat):
    """A search of carol's alone (put back after the test)."""
    st = devxnat.store()
    search = ss.SearchDef("xs1700000000099", "xnat:subjectData", "carol's subjects",
                          fields=(ss.Field("xnat:subjectData", "SUBJECT_LABEL", "Subject"),), users=("carol",))
    ss.add_search(st, search)
    try:
        yield search
    finally:
        ss.remove_search(st, search.id)
        st.close()


def test_the_list_is_a_result_set_of_the_callers_searches(devxnat):
    r = devxnat.get("/data/search/saved", "bob")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    rs = r.json()["ResultSet"]
    assert rs["title"] == "Stored Searches" and "totalRecords" not in rs
    assert [row["id"] for row in rs["Result"]] == [ALL]                   # tagged ones only when asked
    row = rs["Result"][0]
    assert row["root_element_name"] == "xnat:imageSessionData" and row["users"] == "{alice,bob}"
    assert all(isinstance(v, str) for v in row.values())
    tagged = devxnat.get("/data/search/saved?includeTag=NEURO_MRI", "bob").json()["ResultSet"]["Result"]
    assert [row["id"] for row in tagged] == [MR]
    assert devxnat.get("/REST/search/saved?includeTag=true&format=json", "alice").json()["ResultSet"]["Result"]
    assert devxnat.get("/data/search/saved", "carol").json()["ResultSet"]["Result"] == []
    assert devxnat.get("/data/search/saved?includeTag=NO_SUCH", "bob").status_code == 400
    assert devxnat.get("/data/search/saved", None).status_code == 401
    every = devxnat.get("/data/search/saved?all=true", "admin").json()["ResultSet"]["Result"]
    assert {MR, ALL} <= {row["id"] for row in every}
    text = devxnat.get("/data/search/saved?format=csv", "bob").text
    assert next(csv.reader(io.StringIO(text)))[0] == "id"


def test_the_definition_is_xml_only(devxnat):
    r = devxnat.get(f"/data/search/saved/{MR}", "bob")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/xml")
    root = ET.fromstring(r.content)
    assert root.tag == f"{X}bundle" and root.get("ID") == MR
    assert root.findtext(f"{X}root_element_name") == "xnat:mrSessionData"
    assert devxnat.get(f"/data/search/saved/{MR}?format=xml", "bob").content == r.content
    assert devxnat.get(f"/data/search/saved/{MR}?format=json", "bob").status_code == 404  # as XNAT: no JSON
    assert devxnat.get("/data/search/saved/xs404", "bob").status_code == 404
    bundle = ET.fromstring(devxnat.get("/data/search/saved/@xnat:mrSessionData", "bob").content)
    assert bundle.get("ID") == "@xnat:mrSessionData"


def test_who_may_read_a_definition(devxnat, private_search):
    # carol reads no project, so she may not query MR sessions: 403; her own search she reads
    assert devxnat.get(f"/data/search/saved/{MR}", "carol").status_code == 403
    assert devxnat.get(f"/data/search/saved/{MR}/results?format=json", "carol").status_code == 403
    assert devxnat.get(f"/data/search/saved/{private_search.id}", "carol").status_code == 200
    # XNAT lets a user who may query subjects read any search of subjects: what they see is theirs
    assert devxnat.get(f"/data/search/saved/{private_search.id}", "bob").status_code == 200
    mine = devxnat.get("/data/search/saved", "carol").json()["ResultSet"]["Result"]
    assert [row["id"] for row in mine] == [private_search.id]


def test_results_are_run_as_the_caller(devxnat):
    bob = devxnat.get(f"/data/search/saved/{ALL}/results?format=json", "bob").json()["ResultSet"]
    alice = devxnat.get(f"/data/search/saved/{ALL}/results?format=json", "alice").json()["ResultSet"]
    assert {r["project"] for r in bob["Result"]} == {"NEURO_MRI", "CARDIO_ECG"}   # not SLEEP_EEG
    assert {r["project"] for r in alice["Result"]} == {"NEURO_MRI", "SLEEP_EEG"}
    assert bob["totalRecords"] == str(len(bob["Result"]))
    assert all(r["label"].endswith(("_MR1", "_EEG1", "_ECG1")) for r in bob["Result"] + alice["Result"])
    columns = {c["key"]: c for c in bob["Columns"]}
    assert columns["session_id"]["visible"] == "false" and "visible" not in columns["label"]
    ids = {r["session_id"] for r in bob["Result"]}
    listed = {e["ID"] for p in ("NEURO_MRI", "CARDIO_ECG")
              for e in devxnat.get(f"/data/projects/{p}/experiments?format=json", "bob").json()["ResultSet"]["Result"]}
    assert ids <= listed


def test_results_in_csv_and_xml(devxnat):
    r = devxnat.get(f"/data/search/saved/{MR}/results?format=csv", "bob")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/csv")
    assert r.headers["Content-Disposition"] == 'attachment; filename="results.csv"'
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["label"] for row in rows] and all(row["label"].endswith("_MR1") for row in rows)
    default = devxnat.get(f"/data/search/saved/{MR}/results", "bob")   # the resource's only variant: XML
    assert default.headers["Content-Type"].startswith("text/xml")
    table = ET.fromstring(default.content)
    assert table.tag == "ResultSet" and table.get("totalRecords") == str(len(rows))
