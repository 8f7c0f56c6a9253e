"""devxnat's store opens a database made before it kept project and subject resources (its
``resources`` table then had ``experiment_id NOT NULL`` and ``UNIQUE (experiment_id, scan_id,
label)``) and rebuilds that table in place: rows, ids, files and the id counter kept, foreign
keys still enforced, the old callers' API unchanged, project and subject resources storable.
A database whose rows break a foreign key is left as it was, with an error that says why."""

from __future__ import annotations

import sqlite3

import pytest

from devxnat.store import ResourceOwner, Store

#: the catalog tables as devxnat created them before project and subject resources were kept
OLD_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE projects (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, description TEXT NOT NULL DEFAULT '',
    secondary_id TEXT NOT NULL DEFAULT '', pi_firstname TEXT NOT NULL DEFAULT '',
    pi_lastname TEXT NOT NULL DEFAULT '', accessibility TEXT NOT NULL DEFAULT 'private',
    insert_date TEXT NOT NULL
);
CREATE TABLE subjects (
    id TEXT PRIMARY KEY, project TEXT NOT NULL REFERENCES projects(id), label TEXT NOT NULL,
    gender TEXT NOT NULL DEFAULT '', yob TEXT NOT NULL DEFAULT '', insert_date TEXT NOT NULL,
    insert_user TEXT NOT NULL DEFAULT 'admin', UNIQUE (project, label)
);
CREATE TABLE experiments (
    id TEXT PRIMARY KEY, project TEXT NOT NULL REFERENCES projects(id),
    subject_id TEXT NOT NULL REFERENCES subjects(id), label TEXT NOT NULL, xsi_type TEXT NOT NULL,
    date TEXT NOT NULL DEFAULT '', modality TEXT NOT NULL DEFAULT '', insert_date TEXT NOT NULL,
    insert_user TEXT NOT NULL DEFAULT 'admin', UNIQUE (project, label)
);
CREATE TABLE resources (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    experiment_id TEXT NOT NULL REFERENCES experiments(id),
    scan_id TEXT NOT NULL DEFAULT '',
    label TEXT NOT NULL,
    format TEXT NOT NULL DEFAULT '',
    content TEXT NOT NULL DEFAULT '',
    UNIQUE (experiment_id, scan_id, label)
);
CREATE TABLE files (
    resource_id INTEGER NOT NULL REFERENCES resources(id),
    path TEXT NOT NULL, size INTEGER NOT NULL, md5 TEXT NOT NULL,
    format TEXT NOT NULL DEFAULT '', content TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (resource_id, path)
);
"""


def old_database(path, *, foreign_keys: bool = True) -> None:
    """A database as the old devxnat left it: a session resource, a scan resource with two
    files, and a third resource deleted again (so the id counter is ahead of the rows)."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
    db.executescript(OLD_SCHEMA)
    db.execute("INSERT INTO projects(id, name, insert_date) VALUES ('P', 'Project', 'now')")
    db.execute("INSERT INTO subjects(id, project, label, insert_date) VALUES ('XNAT_S00001', 'P', 'S1', 'now')")
    db.execute("INSERT INTO experiments(id, project, subject_id, label, xsi_type, insert_date)"
               " VALUES ('XNAT_E00001', 'P', 'XNAT_S00001', 'S1_MR1', 'xnat:mrSessionData', 'now')")
    db.executemany("INSERT INTO resources(experiment_id, scan_id, label, format) VALUES ('XNAT_E00001', ?, ?, ?)",
                   [("", "NOTES", "TXT"), ("1", "NIFTI", "NIFTI"), ("", "GONE", "")])
    db.execute("DELETE FROM resources WHERE label='GONE'")
    db.executemany("INSERT INTO files(resource_id, path, size, md5) VALUES (?,?,?,?)",
                   [(1, "README.txt", 5, "m1"), (2, "a.nii", 10, "m2"), (2, "a.json", 3, "m3")])
    db.close()


def test_an_old_database_is_migrated_and_keeps_its_rows(tmp_path):
    path = tmp_path / "devxnat.sqlite3"
    old_database(path)
    store = Store(path)
    columns = [r["name"] for r in store.db.execute("PRAGMA table_info(resources)")]
    assert columns == ["id", "project", "subject_id", "experiment_id", "scan_id", "label", "format", "content"]
    # the old callers' API answers as before, with the same ids and files
    [notes] = store.resources("XNAT_E00001", "")
    assert (notes["id"], notes["label"], notes["format"], notes["file_count"]) == (1, "NOTES", "TXT", 1)
    nifti = store.resource("XNAT_E00001", "1", "NIFTI")
    assert (nifti["id"], nifti["file_count"], nifti["file_size"]) == (2, 2, 13)
    assert store.resource("XNAT_E00001", "1", "2")["label"] == "NIFTI"
    assert [f["path"] for f in store.files(2)] == ["a.json", "a.nii"]
    # project and subject resources can be kept now; ids go on after the deleted one (3)
    pid = store.add_resource_to(ResourceOwner(project="P"), "NOTES", files=[("p.txt", 1, "m4")])
    sid = store.add_resource_to(ResourceOwner(subject_id="XNAT_S00001"), "NOTES")
    assert (pid, sid) == (4, 5)
    assert [r["label"] for r in store.resources_of(ResourceOwner(project="P"))] == ["NOTES"]
    assert store.resource_of(ResourceOwner(subject_id="XNAT_S00001"), "NOTES")["id"] == 5
    assert store.resources("XNAT_E00001", "") == [notes]  # the others are not the session's
    # one label per owner; foreign keys and the owner rule still hold
    with pytest.raises(sqlite3.IntegrityError):
        store.add_resource("XNAT_E00001", "1", "NIFTI")
    with pytest.raises(sqlite3.IntegrityError):
        store.add_resource_to(ResourceOwner(project="NOPE"), "X")
    with pytest.raises(sqlite3.IntegrityError):
        store.put_file(99, "x", 1, "m")
    with pytest.raises(sqlite3.IntegrityError):
        store.db.execute("INSERT INTO resources(project, experiment_id, label) VALUES ('P', 'XNAT_E00001', 'TWO')")
    store.close()
    # opening it again changes nothing
    again = Store(path)
    assert [r["id"] for r in again.db.execute("SELECT id FROM resources ORDER BY id")] == [1, 2, 4, 5]
    assert again.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    again.close()


def test_a_database_whose_rows_break_a_foreign_key_is_left_as_it_was(tmp_path):
    path = tmp_path / "devxnat.sqlite3"
    old_database(path, foreign_keys=False)
    db = sqlite3.connect(path, isolation_level=None)  # a resource of an experiment that does not exist
    db.execute("INSERT INTO resources(experiment_id, label) VALUES ('XNAT_E99999', 'ORPHAN')")
    db.close()
    with pytest.raises(sqlite3.IntegrityError, match=r"cannot migrate the resources table.*"
                                                     r"\('resources', 4, 'experiments', 0\)"):
        Store(path)
    db = sqlite3.connect(path)
    columns = [r[1] for r in db.execute("PRAGMA table_info(resources)")]
    assert "project" not in columns and db.execute("SELECT COUNT(*) FROM resources").fetchone()[0] == 3
    db.close()


def test_a_new_database_has_the_new_table(tmp_path):
    store = Store(tmp_path / "devxnat.sqlite3")
    assert "project" in {r["name"] for r in store.db.execute("PRAGMA table_info(resources)")}
    with pytest.raises(ValueError, match="exactly one"):
        ResourceOwner(project="P", subject_id="S")
    with pytest.raises(ValueError, match="scan"):
        ResourceOwner(project="P", scan_id="1")
