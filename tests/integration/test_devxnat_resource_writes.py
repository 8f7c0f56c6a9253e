"""devxnat writes resources and files as XNAT does (issue 22's ground: results published back into
XNAT), driven by the real ``xnat`` client (xnatpy) and by raw HTTP where xnatpy hides the answer:
create, upload (raw and multipart, into sub-directories), list, download with its digest checked,
duplicates and overwrite, delete; and who may do what (Owners, Members, Collaborators, a user
who cannot read the project) — for experiments' and scans' resources and for projects' and
subjects' (a project-level resource is the project item's: Members may not write it). The
statuses are XNAT 1.8's (``devxnat/resource_write.py`` cites them)."""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import zipfile

import pytest
import requests
import xnat

from tests.fixtures.devxnat import PASSWORDS

pytestmark = [pytest.mark.devxnat]


def _experiment(devxnat, project: str, user: str) -> dict:
    rows = devxnat.get(f"/data/projects/{project}/experiments?format=json", user).json()["ResultSet"]["Result"]
    return sorted(rows, key=lambda r: r["ID"])[0]


@pytest.fixture
def label():
    return f"RESULTS_{secrets.token_hex(3).upper()}"


def _files(devxnat, base: str, user: str = "alice") -> dict[str, dict]:
    r = devxnat.get(f"{base}/files?format=json", user)
    assert r.status_code == 200, r.text
    return {row["URI"].split("/files/", 1)[1]: row for row in r.json()["ResultSet"]["Result"]}


def test_an_owner_publishes_with_xnatpy_and_a_second_client_downloads_it(devxnat, label, tmp_path):
    exp = _experiment(devxnat, "NEURO_MRI", "alice")
    payload = os.urandom(300_000)
    local = tmp_path / "model.bin"
    local.write_bytes(payload)
    with xnat.connect(devxnat.url, user="alice", password=PASSWORDS["alice"], loglevel="ERROR") as session:
        experiment = session.experiments[exp["ID"]]
        resource = experiment.create_resource(label, format="JSON")
        resource.upload(str(local), "run1/model.bin")
        resource.upload_data(b'{"accuracy": 0.9}', "run1/metrics.json")
    base = f"/data/experiments/{exp['ID']}/resources/{label}"
    try:
        files = _files(devxnat, base)
        assert set(files) == {"run1/model.bin", "run1/metrics.json"}
        row = files["run1/model.bin"]
        assert row["Size"] in (300_000, "300000") and row["collection"] == label
        assert row["digest"] == hashlib.md5(payload).hexdigest()
        listing = devxnat.get(f"/data/experiments/{exp['ID']}/resources?format=json", "alice").json()
        [res] = [r for r in listing["ResultSet"]["Result"] if r["label"] == label]
        assert res["format"] == "JSON" and int(res["file_count"]) == 2
        # a second client (bob, a Collaborator of NEURO_MRI: reads) downloads what alice published,
        # xnatpy checking the digest
        with xnat.connect(devxnat.url, user="bob", password=PASSWORDS["bob"], loglevel="ERROR") as session:
            got = session.experiments[exp["ID"]].resources[label].files["run1/model.bin"]
            out = tmp_path / "downloaded.bin"
            got.download(str(out), verbose=False)
        assert out.read_bytes() == payload
        # on disk where XNAT keeps a session's resources, no temporary file left
        on_disk = devxnat.archive / "NEURO_MRI" / "arc001" / exp["label"] / "RESOURCES" / label / "run1"
        assert sorted(p.name for p in on_disk.iterdir()) == ["metrics.json", "model.bin"]
    finally:
        r = devxnat.request("DELETE", base, "alice")
        assert r.status_code == 200, r.text
    assert label not in [r["label"] for r in devxnat.get(
        f"/data/experiments/{exp['ID']}/resources?format=json", "alice").json()["ResultSet"]["Result"]]
    assert not (devxnat.archive / "NEURO_MRI" / "arc001" / exp["label"] / "RESOURCES" / label).exists()


def test_duplicates_overwrite_multipart_and_the_errors_xnat_gives(devxnat, label):
    exp = _experiment(devxnat, "NEURO_MRI", "alice")
    base = f"/data/experiments/{exp['ID']}/resources/{label}"
    raw = {"Content-Type": "application/octet-stream"}
    try:
        assert devxnat.request("PUT", f"{base}?format=TXT&content=RESULTS", "alice").status_code == 200
        again = devxnat.request("PUT", base, "alice")
        assert again.status_code == 409 and "Specified resource already exists." in again.text
        assert devxnat.request("PUT", f"{base}/files/a.txt", "alice", data=b"one", headers=raw).status_code == 200
        # exists, no overwrite: 200 with the duplicates, nothing written (XNAT, not 409)
        dup = devxnat.request("PUT", f"{base}/files/a.txt", "alice", data=b"two", headers=raw)
        assert dup.status_code == 200 and dup.json() == {"duplicates": ["a.txt"]}
        assert devxnat.get(f"{base}/files/a.txt", "alice").content == b"one"
        over = devxnat.request("PUT", f"{base}/files/a.txt?overwrite=true", "alice", data=b"two", headers=raw)
        assert over.status_code == 200 and devxnat.get(f"{base}/files/a.txt", "alice").content == b"two"
        assert _files(devxnat, base)["a.txt"]["digest"] == hashlib.md5(b"two").hexdigest()
        # multipart: the part's file name when the URL names none
        r = requests.put(devxnat.url + f"{base}/files", auth=("alice", PASSWORDS["alice"]), timeout=30,
                         files={"whatever": ("notes.csv", b"a,b\n1,2\n")})
        assert r.status_code == 200, r.text
        assert devxnat.get(f"{base}/files/notes.csv", "alice").content == b"a,b\n1,2\n"
        # a resource is made by the first upload into it
        implicit = f"/data/experiments/{exp['ID']}/resources/{label}_B"
        assert devxnat.request("PUT", f"{implicit}/files/x/y.txt?inbody=true", "alice", data=b"y",
                               headers={"Content-Type": "application/json"}).status_code == 200
        assert set(_files(devxnat, implicit)) == {"x/y.txt"}
        # what XNAT refuses, and how
        assert devxnat.request("PUT", f"{base}/files/b.txt", "alice", data=b"",
                               headers=raw).status_code == 500  # an empty in-body file
        assert devxnat.request("PUT", f"{base}/files/b.txt", "alice", data=b"x",
                               headers={"Content-Type": "application/json"}).status_code == 400  # not a body kind
        assert devxnat.request("PUT", f"{base}/files/{label}_catalog.xml", "alice", data=b"x",
                               headers=raw).status_code == 500
        bad = requests.put(devxnat.url + f"{base}/files/a/%2E%2E/escape.txt", data=b"x", headers=raw,
                           auth=("alice", PASSWORDS["alice"]), timeout=30)
        assert bad.status_code == 400
        # deletes: a prefix match, 404 when none, 400 for an unknown resource
        assert devxnat.request("DELETE", f"{base}/files/nothing-like-this", "alice").status_code == 404
        assert devxnat.request("DELETE", f"{base}_NONE/files/a.txt", "alice").status_code == 400
        assert devxnat.request("DELETE", f"{base}/files/a", "alice").status_code == 200  # a.txt
        assert set(_files(devxnat, base)) == {"notes.csv"}
        assert devxnat.request("DELETE", implicit, "alice").status_code == 200
    finally:
        devxnat.request("DELETE", base, "alice")
        devxnat.request("DELETE", f"/data/experiments/{exp['ID']}/resources/{label}_B", "alice")
    assert devxnat.request("DELETE", base, "alice").status_code == 200  # none: still 200


def test_who_may_write_and_delete(devxnat, label):
    raw = {"Content-Type": "application/octet-stream"}
    neuro = _experiment(devxnat, "NEURO_MRI", "alice")   # alice Owner, bob Collaborator, carol nothing
    sleep = _experiment(devxnat, "SLEEP_EEG", "alice")   # alice Member, dave Owner
    base = f"/data/experiments/{neuro['ID']}/resources/{label}"
    member_base = f"/data/experiments/{sleep['ID']}/resources/{label}"
    try:
        # a Collaborator: the resource refused (403); a file upload answers 200 and stores nothing
        r = devxnat.request("PUT", base, "bob")
        assert r.status_code == 403 and "permission to modify this session" in r.text
        assert devxnat.request("PUT", f"{base}/files/a.txt", "bob", data=b"x", headers=raw).status_code == 200
        assert label not in [r["label"] for r in devxnat.get(
            f"/data/experiments/{neuro['ID']}/resources?format=json", "alice").json()["ResultSet"]["Result"]]
        # a user who cannot read the project: 404, as XNAT's XNATTemplate answers
        r = devxnat.request("PUT", f"/data/projects/NEURO_MRI/experiments/{neuro['ID']}/resources/{label}", "carol")
        assert r.status_code == 404
        # a Member writes, but may not delete
        assert devxnat.request("PUT", f"{member_base}/files/m.txt", "alice", data=b"m", headers=raw).status_code == 200
        assert devxnat.request("DELETE", f"{member_base}/files/m.txt", "alice").status_code == 403
        assert devxnat.request("DELETE", member_base, "alice").status_code == 403
        assert devxnat.request("DELETE", member_base, "dave").status_code == 200  # the Owner
    finally:
        devxnat.request("DELETE", base, "alice")
        devxnat.request("DELETE", member_base, "dave")


def test_a_large_body_streams_to_disk_and_a_chunked_one_is_refused_as_xnat_does(devxnat, label, tmp_path):
    """A 64 MiB file sent from disk (requests streams a file object, with its Content-Length):
    stored whole, its md5 the listing's digest. The same bytes sent chunked, without a length:
    refused (500), as XNAT refuses an in-body upload whose entity size it does not know."""
    exp = _experiment(devxnat, "NEURO_MRI", "alice")
    base = f"/data/experiments/{exp['ID']}/resources/{label}"
    chunk, count = os.urandom(1 << 20), 64
    big, digest = tmp_path / "big.bin", hashlib.md5()
    with open(big, "wb") as f:
        for _ in range(count):
            f.write(chunk)
            digest.update(chunk)
    headers = {"Content-Type": "application/octet-stream"}
    auth = ("alice", PASSWORDS["alice"])
    try:
        with open(big, "rb") as f:
            r = requests.put(devxnat.url + f"{base}/files/big.bin", data=f, timeout=120, headers=headers, auth=auth)
        assert r.status_code == 200, r.text
        row = _files(devxnat, base)["big.bin"]
        assert int(row["Size"]) == count << 20 and row["digest"] == digest.hexdigest()
        r = requests.put(devxnat.url + f"{base}/files/chunked.bin", data=(chunk for _ in range(2)), timeout=120,
                         headers=headers, auth=auth)
        assert r.status_code == 500 and "request entity size" in r.text
        assert "chunked.bin" not in _files(devxnat, base)
    finally:
        devxnat.request("DELETE", base, "alice")


# -- project- and subject-level resources ------------------------------------------------------

RAW = {"Content-Type": "application/octet-stream"}


def _subject(devxnat, project: str, user: str) -> dict:
    rows = devxnat.get(f"/data/projects/{project}/subjects?format=json", user).json()["ResultSet"]["Result"]
    return sorted(rows, key=lambda r: r["label"])[0]


def _resources(devxnat, parent: str, user: str = "alice") -> dict[str, dict]:
    r = devxnat.get(f"{parent}/resources?format=json", user)
    assert r.status_code == 200, r.text
    return {row["label"]: row for row in r.json()["ResultSet"]["Result"]}


def test_project_and_subject_resources_published_with_xnatpy_and_downloaded_by_another_user(
        devxnat, label, tmp_path):
    """alice (Owner of NEURO_MRI) makes a project resource and a subject resource with xnatpy and
    uploads into them; bob (a Collaborator: reads) finds and downloads them with xnatpy, the
    digests checked, single files and zips; on disk they lie where XNAT keeps them."""
    subject = _subject(devxnat, "NEURO_MRI", "alice")
    model, summary = os.urandom(200_000), os.urandom(50_000)
    local = tmp_path / "model.bin"
    local.write_bytes(model)
    with xnat.connect(devxnat.url, user="alice", password=PASSWORDS["alice"], loglevel="ERROR") as session:
        project = session.projects["NEURO_MRI"]
        project.create_resource(label, format="JSON").upload(str(local), "run1/model.bin")
        project.subjects[subject["label"]].create_resource(label).upload_data(summary, "stats/summary.bin")
    project_parent = "/data/projects/NEURO_MRI"
    subject_parent = f"/data/projects/NEURO_MRI/subjects/{subject['label']}"
    project_dir = devxnat.archive / "NEURO_MRI" / "resources" / label
    subject_dir = devxnat.archive / "NEURO_MRI" / "subjects" / subject["label"] / label
    try:
        # listed as XNAT lists them: no owner in cat_id, one space in cat_desc
        row = _resources(devxnat, project_parent)[label]
        assert (row["category"], row["cat_id"], row["cat_desc"], row["format"], row["file_count"]) == (
            "resources", "", " ", "JSON", "1")
        rid = row["xnat_abstractresource_id"]
        [file_row] = devxnat.get(f"{project_parent}/resources/{label}/files?format=json",
                                 "bob").json()["ResultSet"]["Result"]
        assert file_row["URI"] == f"/data/projects/NEURO_MRI/resources/{rid}/files/run1/model.bin"
        assert (file_row["Name"], file_row["Size"], file_row["collection"], file_row["cat_ID"]) == (
            "model.bin", "200000", label, rid)
        assert file_row["digest"] == hashlib.md5(model).hexdigest()
        srow = _resources(devxnat, subject_parent)[label]
        assert (srow["cat_id"], srow["cat_desc"], srow["file_count"]) == ("", " ", "1")
        files = _files(devxnat, f"/data/subjects/{subject['ID']}/resources/{label}")  # by the subject's ID too
        assert list(files) == ["stats/summary.bin"]
        assert files["stats/summary.bin"]["URI"].startswith(
            f"/data/projects/NEURO_MRI/subjects/{subject['ID']}/resources/{srow['xnat_abstractresource_id']}/files/")
        with xnat.connect(devxnat.url, user="bob", password=PASSWORDS["bob"], loglevel="ERROR") as session:
            project = session.projects["NEURO_MRI"]
            project.resources[label].files["run1/model.bin"].download(str(tmp_path / "model.out"), verbose=False)
            subject_resource = project.subjects[subject["label"]].resources[label]
            subject_resource.files["stats/summary.bin"].download(str(tmp_path / "summary.out"), verbose=False)
            project.resources[label].download(str(tmp_path / "project.zip"), verbose=False)
            subject_resource.download(str(tmp_path / "subject.zip"), verbose=False)
        assert (tmp_path / "model.out").read_bytes() == model
        assert (tmp_path / "summary.out").read_bytes() == summary
        with zipfile.ZipFile(tmp_path / "project.zip") as z:
            assert z.namelist() == [f"NEURO_MRI/resources/{label}/files/run1/model.bin"]
        with zipfile.ZipFile(tmp_path / "subject.zip") as z:
            assert z.namelist() == [f"{subject['label']}/resources/{label}/files/stats/summary.bin"]
            assert z.read(z.namelist()[0]) == summary
        # on disk as XNAT lays them out, no temporary file left
        assert [p.name for p in (project_dir / "run1").iterdir()] == ["model.bin"]
        assert [p.name for p in (subject_dir / "stats").iterdir()] == ["summary.bin"]
    finally:
        assert devxnat.request("DELETE", f"{project_parent}/resources/{label}", "alice").status_code == 200
        assert devxnat.request("DELETE", f"{subject_parent}/resources/{label}", "alice").status_code == 200
    assert label not in _resources(devxnat, project_parent) and label not in _resources(devxnat, subject_parent)
    assert not project_dir.exists() and not subject_dir.exists()


@pytest.mark.parametrize("level", ["project", "subject"])
def test_project_and_subject_uploads_duplicates_and_deletes(devxnat, label, level):
    subject = _subject(devxnat, "NEURO_MRI", "alice")
    parent = "/data/projects/NEURO_MRI" + (f"/subjects/{subject['label']}" if level == "subject" else "")
    folder = "NEURO_MRI" if level == "project" else subject["label"]
    base = f"{parent}/resources/{label}"
    try:
        assert devxnat.request("PUT", f"{base}?format=TXT&content=RESULTS", "alice").status_code == 200
        again = devxnat.request("PUT", base, "alice")
        assert again.status_code == 409 and "Specified resource already exists." in again.text
        assert devxnat.request("PUT", f"{base}/files/a.txt", "alice", data=b"one", headers=RAW).status_code == 200
        dup = devxnat.request("PUT", f"{base}/files/a.txt", "alice", data=b"two", headers=RAW)
        assert dup.status_code == 200 and dup.json() == {"duplicates": ["a.txt"]}
        assert devxnat.get(f"{base}/files/a.txt", "alice").content == b"one"
        over = devxnat.request("PUT", f"{base}/files/a.txt?overwrite=true", "alice", data=b"two", headers=RAW)
        assert over.status_code == 200 and devxnat.get(f"{base}/files/a.txt", "alice").content == b"two"
        r = requests.put(devxnat.url + f"{base}/files", auth=("alice", PASSWORDS["alice"]), timeout=30,
                         files={"whatever": ("notes.csv", b"a,b\n1,2\n")})
        assert r.status_code == 200, r.text
        files = _files(devxnat, base)
        assert set(files) == {"a.txt", "notes.csv"}
        assert files["a.txt"]["digest"] == hashlib.md5(b"two").hexdigest()
        assert devxnat.get(f"{base}/files/notes.csv", "alice", headers={"Range": "bytes=2-2"}).content == b"b"
        row = _resources(devxnat, parent)[label]
        assert (row["format"], row["content"], row["file_count"], row["file_size"]) == ("TXT", "RESULTS", "2", "11")
        # the resource item, and every file of the item's resources as one zip
        item = devxnat.get(base + "?format=json", "alice").json()["items"][0]["data_fields"]
        assert item["label"] == label and item["URI"].endswith(f"/resources/{row['xnat_abstractresource_id']}")
        z = zipfile.ZipFile(io.BytesIO(devxnat.get(f"{base}/files?format=zip", "alice").content))
        assert sorted(z.namelist()) == [f"{folder}/resources/{label}/files/a.txt",
                                        f"{folder}/resources/{label}/files/notes.csv"]
        # a resource is made by the first upload into it
        assert devxnat.request("PUT", f"{base}_B/files/x/y.txt", "alice", data=b"y", headers=RAW).status_code == 200
        assert set(_files(devxnat, f"{base}_B")) == {"x/y.txt"}
        assert devxnat.request("PUT", f"{base}/files/b.txt", "alice", data=b"x",
                               headers={"Content-Type": "application/json"}).status_code == 400
        # deletes: a prefix match, 404 when none, 400 for an unknown resource
        assert devxnat.request("DELETE", f"{base}/files/nothing-like-this", "alice").status_code == 404
        assert devxnat.request("DELETE", f"{base}_NONE/files/a.txt", "alice").status_code == 400
        assert devxnat.request("DELETE", f"{base}/files/a", "alice").status_code == 200
        assert set(_files(devxnat, base)) == {"notes.csv"}
    finally:
        for b in (base, f"{base}_B"):
            assert devxnat.request("DELETE", b, "alice").status_code == 200
    assert devxnat.request("DELETE", base, "alice").status_code == 200  # none: still 200


def test_who_may_write_project_and_subject_resources(devxnat, label):
    """A project-level resource belongs to the project item, which only its Owners edit (a
    Member: 403 on create, 200 and nothing stored on upload); a subject's belongs to the
    project's data, which Owners and Members edit; only Owners delete; Collaborators read."""
    sleep = _subject(devxnat, "SLEEP_EEG", "dave")    # dave Owner, alice Member
    neuro = _subject(devxnat, "NEURO_MRI", "alice")   # alice Owner, bob Collaborator, carol nothing
    member_project = f"/data/projects/SLEEP_EEG/resources/{label}"
    member_subject = f"/data/projects/SLEEP_EEG/subjects/{sleep['label']}/resources/{label}"
    collab_project = f"/data/projects/NEURO_MRI/resources/{label}"
    collab_subject = f"/data/projects/NEURO_MRI/subjects/{neuro['label']}/resources/{label}"
    try:
        # a Member and the project's own resources
        r = devxnat.request("PUT", member_project, "alice")
        assert r.status_code == 403 and "permission to modify this session" in r.text
        r = devxnat.request("PUT", f"{member_project}/files/m.txt", "alice", data=b"m", headers=RAW)
        assert r.status_code == 200 and r.content == b""
        assert label not in _resources(devxnat, "/data/projects/SLEEP_EEG", "dave")
        assert not (devxnat.archive / "SLEEP_EEG" / "resources" / label).exists()
        assert devxnat.request("PUT", member_project, "dave").status_code == 200  # the Owner
        assert devxnat.request("PUT", f"{member_project}/files/m.txt", "alice", data=b"m",
                               headers=RAW).status_code == 200
        assert _files(devxnat, member_project, "dave") == {}
        # a Member and a subject's resources
        assert devxnat.request("PUT", member_subject, "alice").status_code == 200
        assert devxnat.request("PUT", f"{member_subject}/files/m.txt", "alice", data=b"m",
                               headers=RAW).status_code == 200
        r = requests.put(devxnat.url + f"{member_subject}/files", auth=("alice", PASSWORDS["alice"]), timeout=30,
                         files={"f": ("part.txt", b"p")})
        assert r.status_code == 200, r.text
        assert set(_files(devxnat, member_subject, "dave")) == {"m.txt", "part.txt"}
        # deletes: Owners only
        for path in (f"{member_subject}/files/m.txt", member_subject, member_project):
            r = devxnat.request("DELETE", path, "alice")
            assert r.status_code == 403 and "permission to modify this session" in r.text, path
        assert set(_files(devxnat, member_subject, "dave")) == {"m.txt", "part.txt"}
        assert devxnat.request("DELETE", f"{member_subject}/files/m.txt", "dave").status_code == 200
        assert devxnat.request("DELETE", member_subject, "dave").status_code == 200
        assert devxnat.request("DELETE", member_project, "dave").status_code == 200
        assert label not in _resources(devxnat, f"/data/projects/SLEEP_EEG/subjects/{sleep['label']}", "dave")
        # a Collaborator: both refused, an upload stores nothing
        for path in (collab_project, collab_subject):
            assert devxnat.request("PUT", path, "bob").status_code == 403, path
            assert devxnat.request("PUT", f"{path}/files/c.txt", "bob", data=b"c", headers=RAW).status_code == 200
        assert label not in _resources(devxnat, "/data/projects/NEURO_MRI")
        assert label not in _resources(devxnat, f"/data/projects/NEURO_MRI/subjects/{neuro['label']}")
        # not readable, not there: XNAT's XNATTemplate answers 404
        for path in (collab_project, collab_subject, f"{collab_subject}/files/c.txt"):
            r = devxnat.request("PUT", path, "carol", data=b"c", headers=RAW)
            assert r.status_code == 404 and "Unable to identify project" in r.text, path
        r = devxnat.request("PUT", f"/data/projects/NEURO_MRI/subjects/NOPE/resources/{label}", "alice")
        assert r.status_code == 404 and "Unable to identify subject" in r.text
        r = devxnat.request("PUT", f"/data/projects/NOPE/resources/{label}", "admin")
        assert r.status_code == 404 and "Unable to identify project" in r.text
        assert devxnat.get("/data/subjects/XNAT_S99999/resources", "admin").status_code == 404
    finally:
        for path, user in ((member_project, "dave"), (member_subject, "dave"), (collab_project, "alice"),
                           (collab_subject, "alice")):
            devxnat.request("DELETE", path, user)
