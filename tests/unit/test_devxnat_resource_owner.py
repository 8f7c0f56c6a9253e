"""What a resource's item means in devxnat, as in XNAT (docs/xnat-resource-api.md §2, §5): the
store key, the directory in the archive, the URI its files are listed under, the folder in a
zip, and who may edit it (the project item itself: Owners; the project's data: Owners and
Members; deletes: Owners)."""

from __future__ import annotations

from pathlib import Path

import pytest

from devxnat.access import Access
from devxnat.errors import BadRequest
from devxnat.resource_owner import Owner
from devxnat.store import ResourceOwner, Store

PROJECT = {"id": "P"}
SUBJECT = {"id": "XNAT_S00001", "label": "S1", "project": "P"}
SESSION = {"id": "XNAT_E00001", "label": "S1_MR1", "project": "P"}
SCAN = {"scan_id": "2", "type": "T2w"}
ARCHIVE = Path("/archive")


@pytest.mark.parametrize("owner, level, key, directory, uri, folder, cat_desc", [
    (Owner(PROJECT), "project", ResourceOwner(project="P"),
     "P/resources/R", "/data/projects/P/resources/7", "P", " "),
    (Owner(PROJECT, subject=SUBJECT), "subject", ResourceOwner(subject_id="XNAT_S00001"),
     "P/subjects/S1/R", "/data/projects/P/subjects/XNAT_S00001/resources/7", "S1", " "),
    (Owner(PROJECT, experiment=SESSION), "experiment", ResourceOwner(experiment_id="XNAT_E00001"),
     "P/arc001/S1_MR1/RESOURCES/R", "/data/experiments/XNAT_E00001/resources/7", "S1_MR1", " "),
    (Owner(PROJECT, experiment=SESSION, scan=SCAN), "scan", ResourceOwner(experiment_id="XNAT_E00001", scan_id="2"),
     "P/arc001/S1_MR1/SCANS/2/R", "/data/experiments/XNAT_E00001/scans/2/resources/7", "S1_MR1/scans/2-T2w", "T2w"),
])
def test_owner_levels(owner, level, key, directory, uri, folder, cat_desc):
    assert owner.level == level and owner.key == key
    assert owner.directory(ARCHIVE, "R") == ARCHIVE / directory
    assert owner.resource_uri(7) == uri
    assert owner.zip_folder() == folder and owner.cat_desc == cat_desc


def test_a_label_that_climbs_out_is_refused():
    with pytest.raises(BadRequest):
        Owner(PROJECT).directory(ARCHIVE, "..")
    with pytest.raises(BadRequest):
        Owner(PROJECT, subject={**SUBJECT, "label": "a/../b"}).directory(ARCHIVE, "R")


@pytest.fixture
def store(tmp_path):
    st = Store(tmp_path / "devxnat.sqlite3")
    st.add_project("P", "Project")
    for login, group in (("owner", "Owners"), ("member", "Members"), ("collaborator", "Collaborators")):
        st.add_user(login, "x")
        st.set_member("P", login, group)
    for login in ("admin", "data_admin", "outsider"):
        st.add_user(login, "x", admin=login == "admin")
    st.add_site_group("data_admin", "ALL_DATA_ADMIN")
    yield st
    st.close()


@pytest.mark.parametrize("login, edit_data, edit_project, delete", [
    ("owner", True, True, True),
    ("member", True, False, False),
    ("collaborator", False, False, False),
    ("outsider", False, False, False),
    ("admin", True, True, True),
    ("data_admin", True, True, True),
])
def test_who_may_edit_the_project_item_and_its_data(store, login, edit_data, edit_project, delete):
    acc = Access(store, login)
    project = store.project("P")
    assert (acc.can_edit(project), acc.can_edit_project(project), acc.can_manage(project)) == (
        edit_data, edit_project, delete)
