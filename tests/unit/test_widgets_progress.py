"""The notebook form (xnat_bridge.widgets.OffloadForm) shows a staging job's live progress,
like the lab: the words in its state line and a progress bar, hidden in every other state."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("ipywidgets")

from xnat_bridge.offload.policy import OffloadPolicy  # noqa: E402
from xnat_bridge.offload.progress import progress_json  # noqa: E402
from xnat_bridge.widgets import OffloadForm  # noqa: E402

MIB = 2**20


class Manager:
    """The three calls the form's refresh makes, with a job whose state the test sets."""

    def __init__(self, root):
        self.policy, self.connection, self.root_dir = OffloadPolicy(), None, root
        self.state = "staging"
        self.live = progress_json(412 * MIB, 1024 * MIB, 37, 120, 85 * MIB, 7.2)

    def get(self, job_id):
        return SimpleNamespace(id=job_id, state=self.state, created="2026-11-26T00:00:00.000Z", ended=None,
                               slurm_job_id=None, message="staging 120 files")

    def logs(self, job_id, offset):
        return "", offset

    def progress(self, job_id):
        return self.live if self.state == "staging" else None


def test_form_shows_staging_progress_then_hides_it(tmp_path):
    m = Manager(tmp_path)
    form = OffloadForm(m, monitor=False)
    form.job = m.get("j000000000001")
    assert form.refresh() == "staging"
    assert "Staging 412 MiB / 1.0 GiB · 37/120 files · 85 MiB/s · 8s left" in form.state.value
    assert form.progress.value == 40 and form.progress.layout.display is None
    m.state = "queued"
    assert form.refresh() == "queued"
    assert "Staging" not in form.state.value and form.progress.layout.display == "none"
