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
                                  "/data/experiments/E/scans/1/bogus"])
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
