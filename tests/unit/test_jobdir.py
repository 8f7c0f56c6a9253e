"""The node-local job directory without Slurm: the prologue in a real bash, the checks of
:class:`xnat_bridge.offload.jobdir.JobDir` on real directories (another owner is
simulated with the ``uid`` the check expects), the wipe through descriptors, extraction
relative to a directory descriptor, and the sealed copy the script runs from."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
from pathlib import Path

import pytest

from xnat_bridge.offload.jobdir import JobDir, UnsafeJobDir, mount_fs_type
from xnat_bridge.offload.jobscript import ClusterSpec, prologue
from xnat_bridge.offload.policy import ResourceRequest
from xnat_bridge.offload.worker import script_command, sealed_copy
from xnat_bridge.staging import AgeIdentity, StagedFile, extract_bundle, stage_files

UID = os.getuid()


def run_prologue(base: Path, job_id: str = "77", tail: str = 'echo "$XNAT_HPC_JOB_DIR"') -> subprocess.CompletedProcess:
    spec = ClusterSpec("j1", ResourceRequest("secure", 1, 2**30, 0, 60), True, "/t", "/l", node_tmpdir=str(base))
    script = "\n".join([*prologue(spec), tail]) + "\n"
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                          env={"PATH": os.environ["PATH"], "SLURM_JOB_ID": job_id}, timeout=30)


@pytest.fixture
def base(tmp_path) -> Path:
    b = tmp_path / "node"
    b.mkdir()
    os.chmod(b, 0o1777)
    return b


def test_prologue_makes_a_fresh_private_directory_and_never_an_existing_one(base):
    squat = base / "xnat-hpc-slurm-77"
    squat.mkdir(mode=0o777)
    (base / "xnat-hpc-slurm-77.link").symlink_to(squat)
    seen = set()
    for _ in range(3):
        r = run_prologue(base, tail='echo "$XNAT_HPC_JOB_DIR"; stat -c "%a %U" "$XNAT_HPC_JOB_DIR"; trap - EXIT')
        assert r.returncode == 0, r.stderr
        path, facts = r.stdout.splitlines()
        name = Path(path).name
        assert Path(path).parent == base and name.startswith("xnat-hpc-slurm-77.")
        assert len(name.split(".", 1)[1]) == 12 and facts == "700 root"
        seen.add(name)
    assert len(seen) == 3 and list(squat.iterdir()) == []


def test_prologue_traps_wipe_on_exit_and_term(base):
    r = run_prologue(base, tail='mkdir "$XNAT_HPC_JOB_DIR/d"; ln -s /etc "$XNAT_HPC_JOB_DIR/l"; exit 0')
    assert r.returncode == 0 and list(base.iterdir()) == [] and Path("/etc/hostname").exists()
    r = run_prologue(base, tail='touch "$XNAT_HPC_JOB_DIR/f"; kill -TERM $$; sleep 5')
    assert r.returncode == 143 and list(base.iterdir()) == []


def test_prologue_without_its_base_fails_saying_what_to_set(tmp_path):
    r = run_prologue(tmp_path / "missing")
    assert r.returncode == 1 and "set XNAT_HPC_NODE_TMPDIR" in r.stderr


def test_open_accepts_only_the_jobs_own_private_directory(base):
    good = base / "job"
    good.mkdir(mode=0o700)
    jd = JobDir.open(str(good))
    try:
        assert jd.path == str(good) and jd.name == "job"
        jd.check_same(jd.ident)
        with pytest.raises(UnsafeJobDir, match="replaced"):
            jd.check_same("1:2")
    finally:
        jd.close()
    with pytest.raises(UnsafeJobDir, match=r"owner uid %d, mode 0700; expected owner uid %d" % (UID, UID + 4242)):
        JobDir.open(str(good), uid=UID + 4242)  # made by someone else
    wide = base / "wide"
    wide.mkdir(mode=0o755)
    with pytest.raises(UnsafeJobDir, match="mode 0755"):
        JobDir.open(str(wide))
    link = base / "link"
    link.symlink_to(good)
    with pytest.raises(UnsafeJobDir, match="symbolic link"):
        JobDir.open(str(link))
    with pytest.raises(UnsafeJobDir, match="not an absolute path"):
        JobDir.open("relative/job")


def test_open_refuses_a_directory_above_that_others_could_change(base, tmp_path):
    open_base = base / "open"
    open_base.mkdir()
    os.chmod(open_base, 0o777)  # writable by all, no sticky bit
    (open_base / "job").mkdir(mode=0o700)
    with pytest.raises(UnsafeJobDir, match="writable by others without the sticky bit"):
        JobDir.open(str(open_base / "job"))
    if UID == 0:  # a parent of another account's (a uid without an account will do)
        other = base / "others"
        other.mkdir(mode=0o755)
        (other / "job").mkdir(mode=0o700)
        os.chown(other, 4242, 4242)
        with pytest.raises(UnsafeJobDir, match="belongs to uid 4242 .not root, not this job's uid 0."):
            JobDir.open(str(other / "job"))
    # a symbolic link above is resolved first, then walked without following anything
    (tmp_path / "alias").symlink_to(base)
    (base / "j2").mkdir(mode=0o700)
    jd = JobDir.open(str(tmp_path / "alias" / "j2"))
    assert jd.path == str(base / "j2")
    jd.close()


def test_a_local_file_system_is_recognised(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        fs = mount_fs_type(fd)
    finally:
        os.close(fd)
    assert fs and fs not in ("nfs", "nfs4", "lustre")


def test_a_job_directory_on_a_network_file_system_is_refused(base, monkeypatch):
    """The decision (the detection itself is the kernel's, checked above on a local disk)."""
    from xnat_bridge.offload import jobdir

    (base / "job").mkdir(mode=0o700)
    monkeypatch.setattr(jobdir, "mount_fs_type", lambda fd: "nfs4")
    with pytest.raises(UnsafeJobDir, match=r"on a shared file system \(nfs4\): plaintext would leave the node"):
        JobDir.open(str(base / "job"))
    monkeypatch.setattr(jobdir, "mount_fs_type", lambda fd: "ext4")
    JobDir.open(str(base / "job")).close()


def test_wipe_follows_no_link_and_spares_what_took_the_name(base, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    job = base / "job"
    job.mkdir(mode=0o700)
    jd = JobDir.open(str(job))
    (job / "a" / "b").mkdir(parents=True)
    (job / "a" / "b" / "f").write_text("x")
    (job / "a" / "out").symlink_to(outside)
    (job / "top").symlink_to(outside)
    jd.wipe()
    assert not job.exists() and (outside / "keep.txt").read_text() == "keep"
    jd.wipe()  # twice is fine
    jd.close()
    # the directory renamed away and another one put under its name: the wipe empties the
    # one it opened and leaves the newcomer alone
    job.mkdir(mode=0o700)
    jd = JobDir.open(str(job))
    (job / "data").write_text("plain")
    os.rename(job, base / "moved")
    job.mkdir(mode=0o700)
    (job / "other").write_text("other")
    jd.wipe()
    jd.close()
    assert list((base / "moved").iterdir()) == [] and (job / "other").read_text() == "other"


def test_create_and_make_private_use_unpredictable_names(base):
    a, b = JobDir.create(str(base)), JobDir.create(str(base))
    try:
        assert a.path != b.path and os.stat(a.path).st_mode & 0o7777 == 0o700
        name, fd = a.make_private("run-")
        os.close(fd)
        assert len(name) == len("run-") + 16 and (Path(a.path) / name).is_dir()
        a.remove(name)
        assert not (Path(a.path) / name).exists()
    finally:
        for jd in (a, b):
            jd.wipe()
            jd.close()
    assert list(base.iterdir()) == []


def test_sealed_copy_cannot_change_and_runs_as_the_named_script(tmp_path):
    code = b"import sys\nprint(__name__, __file__, sys.argv, sorted(k for k in globals() if not k.startswith('__')))\n"
    fd = sealed_copy(code)
    try:
        with pytest.raises(OSError):
            os.write(fd, b"print('changed')")
        with pytest.raises(OSError):
            os.ftruncate(fd, 0)
        r = subprocess.run(script_command(fd, str(tmp_path / "train.py")), pass_fds=(fd,), capture_output=True,
                           text=True, timeout=60)
    finally:
        os.close(fd)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"__main__ {tmp_path / 'train.py'} {[str(tmp_path / 'train.py')]} ['sys']"


def test_extract_relative_to_a_descriptor_holds_the_verified_script(tmp_path):
    identity = AgeIdentity.generate()
    data = b"voxels" * 1000
    script = b"print('train')\n"
    files = [StagedFile(name="P/S/E/scans/1/r/f.nii", size=len(data), sha256="", open=lambda: io.BytesIO(data),
                        md5=hashlib.md5(data).hexdigest())]
    staging_dir = tmp_path / "staging"
    staging_dir.mkdir(mode=0o700)
    info = stage_files(files, staging_dir=staging_dir, user="alice", recipient=identity.recipient,
                       extra_members={"script/train.py": script})
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
    try:
        held = {"script/train.py": b"", "script/absent.py": b""}
        extract_bundle(info.path, identity, "bundle", info.manifest_sha256, dir_fd=fd, hold=held)
        assert held == {"script/train.py": script}
        assert (work / "bundle" / "data" / "P/S/E/scans/1/r/f.nii").read_bytes() == data
        with pytest.raises(Exception, match="one name"):
            extract_bundle(info.path, identity, "a/b", dir_fd=fd)
        (work / "link").symlink_to(tmp_path)
        with pytest.raises(Exception, match="symbolic link"):
            extract_bundle(info.path, identity, "link", dir_fd=fd)
    finally:
        os.close(fd)
