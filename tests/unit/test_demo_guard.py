"""The check that a test session left a developer's demo alone (tests/fixtures/demo_guard.py):
it must see every kind of change, and nothing that is not one."""

from __future__ import annotations

import os

from tests.fixtures.demo_guard import changes, snapshot


def _tree(root):
    (root / "home" / "xnat-hpc").mkdir(parents=True)
    (root / "home" / "xnat-hpc" / "jobs.json").write_text("{}")
    (root / "home" / "notes.txt").write_text("mine")
    return root / "home"


def test_an_untouched_tree_reads_the_same_even_when_its_files_are_read(tmp_path):
    home = _tree(tmp_path)
    before = snapshot([home])
    (home / "notes.txt").read_text()
    assert changes(before, snapshot([home])) == []


def test_a_write_a_new_file_a_removal_and_a_chmod_are_each_named(tmp_path):
    home = _tree(tmp_path)
    before = snapshot([home])
    with open(home / "notes.txt", "a") as f:  # same name, one more byte
        f.write("!")
    (home / "xnat-hpc" / "lost-job").mkdir()
    os.unlink(home / "xnat-hpc" / "jobs.json")
    os.chmod(home, 0o750)
    found = changes(before, snapshot([home]))
    assert f"changed {home}/notes.txt" in found
    assert f"created {home}/xnat-hpc/lost-job" in found
    assert f"removed {home}/xnat-hpc/jobs.json" in found
    assert f"changed {home}" in found


def test_a_rewrite_with_the_same_size_and_mtime_is_still_seen(tmp_path):
    """Content put back with its old mtime (``touch -r``) still changed the ctime."""
    home = _tree(tmp_path)
    path = home / "notes.txt"
    st = os.stat(path)
    before = snapshot([home])
    path.write_text("MINE")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert changes(before, snapshot([home])) == [f"changed {path}"]


def test_a_link_is_recorded_never_followed(tmp_path):
    home = _tree(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, home / "link")
    before = snapshot([home])
    (outside / "new").write_text("x")  # behind the link: not the home's
    assert changes(before, snapshot([home])) == []
    assert not any(p.startswith(str(outside)) for p in before)
