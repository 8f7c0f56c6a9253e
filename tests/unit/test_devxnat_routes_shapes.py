"""Pure parts of devxnat: path parsing and XNAT JSON shapes."""

import pytest

from devxnat import routes, shapes
from devxnat.errors import BadRequest, NotFound


@pytest.mark.parametrize("path, expected", [
    ("/data/projects", routes.Route("projects")),
    ("/data/archive/projects/P", routes.Route("project", project="P")),
    ("/REST/projects/P/subjects", routes.Route("subjects", project="P")),
    ("/data/projects/P/subjects/S/experiments/E",
     routes.Route("experiment", project="P", subject="S", experiment="E")),
    ("/data/projects/P/experiments/E/scans/1/resources/NIFTI/files/a/b.nii",
     routes.Route("file", project="P", experiment="E", scan="1", resource="NIFTI", file="a/b.nii")),
    ("/data/experiments/E/scans/1,2/files", routes.Route("files", experiment="E", scan="1,2")),
    ("/data/experiments/E/resources/R/files", routes.Route("files", experiment="E", resource="R")),
    ("/data/experiments", routes.Route("experiments")),
    ("/data/subjects/S", routes.Route("subject", subject="S")),
    ("/data/projects/P/resources/R", routes.Route("resource", project="P", resource="R")),
    ("/data/projects/P/subjects/S/resources/R/files/a/b.txt",
     routes.Route("file", project="P", subject="S", resource="R", file="a/b.txt")),
    ("/data/subjects/S/resources", routes.Route("resources", subject="S")),
    ("/data/subjects/S/resources/R/files", routes.Route("files", subject="S", resource="R")),
    ("/data/projects/P/users/Owners/alice", routes.Route("user", project="P", group="Owners", user="alice")),
    ("/data/projects/P/users", routes.Route("users", project="P")),
])
def test_parse(path, expected):
    assert routes.parse(path) == expected


@pytest.mark.parametrize("path", [
    "/data/projects/P/../x", "/data/projects/P/%2E%2E/x", "/data/projects//x",
    "/data/experiments/E/resources/R/files/a/%2F/b", "/data/projects/P\\x", "/data/projects/P/./x"])
def test_bad_segments_refused(path):
    with pytest.raises(BadRequest):
        routes.parse(path)


@pytest.mark.parametrize("path", ["/data/foo", "/other/projects", "/data/projects/P/bogus",
                                  "/data/experiments/E/scans/1/bogus", "/data/subjects/S/experiments"])
def test_unknown_paths(path):
    with pytest.raises(NotFound):
        routes.parse(path)


def test_result_set_strings_and_columns():
    rows = [{"ID": "A", "n": 3, "ok": True, "none": None, "URI": "/x/A", "xsiType": "t"}]
    full = shapes.result_set(rows)["ResultSet"]
    assert full == {"Result": [{"ID": "A", "n": "3", "ok": "true", "none": "", "URI": "/x/A",
                                "xsiType": "t"}], "totalRecords": "1"}
    some = shapes.result_set(rows, "ID,n,missing")["ResultSet"]["Result"][0]
    assert some == {"ID": "A", "n": "3", "URI": "/x/A", "xsiType": "t"}
    assert shapes.result_set(rows, "DEFAULT")["ResultSet"]["Result"][0]["n"] == "3"


def test_item_drops_empty_fields():
    it = shapes.item("xnat:projectData", {"ID": "P", "description": ""})
    assert it == {"children": [], "meta": {"create_event_id": 1, "xsi:type": "xnat:projectData",
                                           "isHistory": False, "start_date": ""},
                  "data_fields": {"ID": "P"}}


def test_resource_and_file_rows_name_their_owner_as_xnat_does():
    """``cat_id`` is the scan's or experiment's ID, empty for a project's or subject's resource;
    ``cat_desc`` one space or the scan's type; a file's ``cat_ID`` is its resource's id."""
    base = {"id": 7, "label": "R", "format": "", "content": "", "file_count": 1, "file_size": 3}
    project = {**base, "project": "P", "subject_id": None, "experiment_id": None, "scan_id": ""}
    scan = {**base, "project": None, "subject_id": None, "experiment_id": "E", "scan_id": "2"}
    row = shapes.resource_row(project)
    assert (row["category"], row["cat_id"], row["cat_desc"]) == ("resources", "", " ")
    row = shapes.resource_row(scan, "T1w")
    assert (row["category"], row["cat_id"], row["cat_desc"]) == ("scans", "2", "T1w")
    assert shapes.result_set([shapes.resource_row(project)])["ResultSet"]["Result"][0]["cat_id"] == ""
    f = {"path": "a/b.txt", "size": 3, "format": "", "content": "", "md5": "m"}
    row = shapes.file_row("/data/projects/P/resources/7", f, project)
    assert (row["Name"], row["URI"], row["collection"], row["cat_ID"]) == (
        "b.txt", "/data/projects/P/resources/7/files/a/b.txt", "R", 7)
