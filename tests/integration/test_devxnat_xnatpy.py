"""The real xnatpy client (object model built from devxnat's schemas, not
``no_parse_model``) against devxnat: connect, browse, download, permissions."""

import io

import pytest
import xnat
import xnat.exceptions

pytestmark = pytest.mark.devxnat


def connect(devxnat, user, password=None):
    return xnat.connect(devxnat.url, user=user, password=password or f"{user}-demo", loglevel="ERROR")


def test_password_login_builds_the_model_and_browses(devxnat, tmp_path):
    with connect(devxnat, "alice") as s:
        assert s.logged_in_user == "alice"
        assert set(s.projects.keys()) == {"NEURO_MRI", "SLEEP_EEG"}
        project = s.projects["NEURO_MRI"]
        subject = next(iter(project.subjects.values()))
        assert subject.label.startswith("NEURO_MRI_")
        experiment = next(iter(subject.experiments.values()))
        assert type(experiment).__name__ == "MrSessionData" and experiment.project == "NEURO_MRI"
        scan = next(iter(experiment.scans.values()))
        assert type(scan).__name__ == "MrScanData"
        resource = next(iter(scan.resources.values()))
        assert resource.file_count >= 1 and resource.file_size > 0
        f = next(iter(resource.files.values()))
        buf = io.BytesIO()
        f.download_stream(buf)
        assert len(buf.getvalue()) == int(f.size) > 0
        resource.download(str(tmp_path / "r.zip"))
        assert (tmp_path / "r.zip").stat().st_size > 0
        eeg = s.projects["SLEEP_EEG"].experiments
        assert {type(e).__name__ for e in eeg.values()} == {"EegSessionData"}


def test_alias_token_login(devxnat):
    alias, secret = devxnat.token("bob")
    with connect(devxnat, alias, secret) as s:
        assert s.logged_in_user == "bob"
        assert set(s.projects.keys()) == {"NEURO_MRI", "CARDIO_ECG"}


def test_bad_password_raises_login_error(devxnat):
    with pytest.raises(xnat.exceptions.XNATLoginFailedError):
        connect(devxnat, "alice", "wrong")


def test_outsider_sees_nothing_and_is_refused(devxnat):
    with connect(devxnat, "carol") as s:
        assert len(s.projects) == 0
        with pytest.raises(xnat.exceptions.XNATResponseError, match="403"):
            s.get_json("/data/projects/NEURO_MRI")


def test_admin_sees_everything(devxnat):
    with connect(devxnat, "admin") as s:
        assert set(s.projects.keys()) == {"NEURO_MRI", "SLEEP_EEG", "CARDIO_ECG"}
        assert len(s.experiments) >= 6
