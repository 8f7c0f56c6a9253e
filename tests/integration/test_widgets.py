"""ipywidgets headless: build the widgets, set values, call the click handlers, assert.

The widgets drive the real Python API: a Connection to devxnat as alice and a
real OffloadManager (its one real job goes to the local Slurm)."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

import xnat_bridge
from xnat_bridge.audit import MemorySink
from xnat_bridge.scope import Scope
from xnat_bridge.widgets import DatasetPicker, OffloadForm, elapsed, human_size

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_example.py"


def test_pure_helpers():
    assert human_size(512) == "512 B"
    assert human_size(1536) == "1.5 KiB"
    assert human_size(3 * 2**30) == "3.0 GiB"
    rec = SimpleNamespace(created="2026-11-23T10:00:00Z", ended=None)
    now = dt.datetime(2026, 11, 23, 11, 2, 3, tzinfo=dt.timezone.utc)
    assert elapsed(rec, now) == "1:02:03"
    rec.ended = "2026-11-23T10:00:42Z"
    assert elapsed(rec, now) == "0:00:42"


@pytest.fixture
def conn(devxnat, tmp_path):
    c = xnat_bridge.connect(devxnat.url, "alice", "alice-demo", workspace=tmp_path / "ws",
                            sink=MemorySink(), ttl=60, scope=Scope.of(["NEURO_MRI", "CARDIO_ECG"]))
    yield c
    c.close()


@pytest.mark.devxnat
def test_dataset_picker_browse_select_create(conn):
    picker = DatasetPicker(conn)
    # the scope holds CARDIO_ECG too, but alice may not read it: only NEURO_MRI is offered
    assert [v for _, v in picker.project.options] == ["NEURO_MRI"]
    assert picker.project.value == "NEURO_MRI"
    assert len(picker.subjects.options) >= 3  # loaded lazily when the project was chosen
    subject = picker.subjects.options[0][1]
    picker.subjects.value = (subject,)
    assert picker.experiments.options
    exp = picker.experiments.options[0][1]
    picker.experiments.value = (exp,)
    assert picker.scans.options and "files" in picker.scans.options[0][0]
    scan = picker.scans.options[0][1]
    picker.scans.value = (scan,)
    picker.on_add()
    picker.on_add()  # the same item twice is kept once
    assert picker.items == [{"project": "NEURO_MRI", "experiment": exp, "scan": scan}]
    picker.scans.value = ()
    picker.on_add()
    assert picker.items[-1] == {"project": "NEURO_MRI", "experiment": exp}
    picker.selection.value = (1,)
    picker.on_remove()
    assert len(picker.items) == 1 and len(picker.selection.options) == 1

    picker.name.value = "../bad"
    assert picker.on_create() is None and picker.manifest is None
    assert "not allowed" in picker.status.value and "#b00020" in picker.status.value
    picker.name.value = "one scan"
    m = picker.on_create()
    assert m is not None and picker.manifest is m and m.files
    assert all(f.archive_path.startswith(f"NEURO_MRI/arc001/{exp}/SCANS/{scan}/") for f in m.files)
    assert "dataset one scan v1" in picker.status.value
    assert conn.datasets.names() == ["one scan"]
    assert not picker.create.disabled


@pytest.mark.devxnat
def test_dataset_picker_shows_refusals(conn, devxnat):
    picker = DatasetPicker(conn)
    with devxnat.membership("NEURO_MRI", "alice", None):
        conn.invalidate_permissions()
        picker.project.value = None
        picker.project.options = [("NEURO_MRI", "NEURO_MRI")]
        picker.project.value = "NEURO_MRI"
        assert "may not read" in picker.status.value
    conn.invalidate_permissions()


@pytest.fixture
def offload(conn, tmp_path, monkeypatch):
    from xnat_bridge.offload import OffloadManager, OffloadPolicy

    staging = tmp_path / "staging"
    staging.mkdir(mode=0o755)
    node_tmp = tmp_path / "node"
    node_tmp.mkdir(mode=0o700)
    monkeypatch.setenv("XNAT_HPC_NODE_TMPDIR", str(node_tmp))
    monkeypatch.setenv("XNAT_HPC_DEATH_TIMEOUT", "20")
    root = tmp_path / "root"
    root.mkdir()
    shutil.copyfile(EXAMPLE, root / "train.py")
    conn.create_dataset("mri", [{"project": "NEURO_MRI"}])
    policy = OffloadPolicy(staging_dir=str(staging), exclusive=False, max_cpus=2, max_walltime=600,
                           default_memory=512 * 2**20, default_walltime=300)
    manager = OffloadManager(conn, workspace=tmp_path / "ws", policy=policy, sink=MemorySink(),
                             root_dir=root)
    yield manager
    manager.close()


@pytest.mark.devxnat
def test_offload_form_refuses_bad_input_before_submission(offload):
    form = OffloadForm(offload, monitor=False)
    assert form.dataset.options == ("mri",) and form.script.options == ("train.py",)
    assert form.cpus.max == 2 and form.walltime.value == "0:05:00"
    form.dataset.value = "mri"
    form.script.value = "../train.py"
    assert form.on_submit() is None and "'..'" in form.status.value
    form.script.value = "train.py"
    form.walltime.value = "9:00:00"
    assert form.on_submit() is None
    assert "walltime 09:00:00 is above the maximum 00:10:00" in form.status.value
    form.walltime.value = "soon"
    assert form.on_submit() is None and "not a duration" in form.status.value
    assert offload.list() == [] and form.job is None and not form.submit.disabled


@pytest.mark.devxnat
@pytest.mark.slurm
def test_offload_form_submit_monitor_cancel(slurm, offload):
    form = OffloadForm(offload, interval=0.3)
    form.dataset.value = "mri"
    form.script.value = "train.py"
    rec = form.on_submit()
    assert rec is not None and rec.state.value == "staging", form.status.value
    assert form.on_submit().id == rec.id  # a second click on an unchanged form: the same job
    assert len(offload.list()) == 1
    form._thread.join(180)
    assert form.job.state.value == "done", form.job.message
    assert "done" in form.state.value and form.cancel.disabled
    assert form.log_tail.value.strip()
    assert "metrics.json" in form.results.value

    form.cpus.value = 2  # a changed form is a new job
    second = form.on_submit()
    assert second.id != rec.id and len(offload.list()) == 2
    cancelled = form.on_cancel()
    assert cancelled.state.value == "cancelled" and "cancelled" in form.state.value
    form._thread.join(60)
    assert not form._thread.is_alive()
