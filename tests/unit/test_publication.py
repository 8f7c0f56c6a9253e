"""Publishing results to XNAT (issue 22), the pure parts and the upload's order against a
recording XNAT: where results go (:func:`choose_target`), what the server reports, that the
signature is written last and a failure leaves no signed half, XNAT's silent refusal found,
a retry left alone; the signing key's file; the owner page's table of publications."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest

from hub_ext.results_signer import ResultsSigner
from xnat_bridge.errors import Conflict, InvalidRequest, PermissionDenied
from xnat_bridge.offload import publish as pub
from xnat_bridge.private import UnsafePath
from xnat_bridge.results_crate import METADATA, SIGNATURE, FileEntry, digest_files
from xnat_hpc_governance import owner_render as R


# -- where the results go -------------------------------------------------------------------------
def names(*items):
    return [f"{p}/{s}/{e}/SCANS/1/DICOM/{i}.dcm" for i, (p, s, e) in enumerate(items)]


def test_the_target_is_the_one_experiment_else_the_one_subject_else_the_project():
    one = names(("CARDIO_ECG", "S01", "E01"), ("CARDIO_ECG", "S01", "E01"))
    assert pub.choose_target(one) == pub.Target("CARDIO_ECG", experiment="E01")
    subject = names(("CARDIO_ECG", "S01", "E01"), ("CARDIO_ECG", "S01", "E02"))
    assert pub.choose_target(subject) == pub.Target("CARDIO_ECG", subject="S01")
    project = names(("CARDIO_ECG", "S01", "E01"), ("CARDIO_ECG", "S02", "E03"))
    assert pub.choose_target(project) == pub.Target("CARDIO_ECG")
    # a subject the manifest could not name ("_") is no target: the project is
    assert pub.choose_target(names(("P", "_", "E1"), ("P", "_", "E2"))) == pub.Target("P")


def test_a_dataset_of_several_projects_needs_the_project_named():
    both = names(("CARDIO_ECG", "S01", "E01"), ("NEURO_MRI", "S09", "M01"))
    with pytest.raises(InvalidRequest, match="covers CARDIO_ECG, NEURO_MRI: name the project"):
        pub.choose_target(both)
    assert pub.choose_target(both, "NEURO_MRI") == pub.Target("NEURO_MRI", experiment="M01")
    with pytest.raises(InvalidRequest, match="no data of project SLEEP_EEG"):
        pub.choose_target(both, "SLEEP_EEG")


def test_paths_quote_xnat_names():
    t = pub.Target("P", experiment="E 1")
    assert pub.resource_path(t, "j0123456789ab") == "/data/projects/P/experiments/E%201/resources/xnat-hpc-results-j0123456789ab"
    assert pub.item_path(pub.Target("P", subject="S1")) == "/data/projects/P/subjects/S1"


def test_the_servers_report_names_the_run_and_the_software():
    claims = pub.run_claims({"script": "train.py", "node": "n1", "partition": "secure",
                             "started": "2026-12-07T10:00:00Z", "ended": "2026-12-07T10:05:30Z",
                             "resources": {"cpus": 2, "gpus": None}},
                            environ={"JUPYTER_IMAGE_SPEC": "xnat-hpc-server:1"})
    assert claims["resources"] == {"cpus": "2"} and claims["software"]["image"] == "xnat-hpc-server:1"
    assert claims["used"] == {"walltime_seconds": "330"}
    assert pub.run_claims({"started": None, "ended": "x"})["used"] == {}
    assert "xnat-hpc-hub" in claims["software"] and claims["software"]["python"].count(".") == 2


# -- the upload's order, against a recording XNAT ----------------------------------------------------
class FakeXnat:
    """XNAT's resource API as :class:`pub.XnatResourceWriter` uses it; *keep* False plays a
    Collaborator on an existing resource (200 and nothing kept); *fail_on* fails that upload."""

    def __init__(self, *, exists=False, keep=True, fail_on=None, can_delete=True):
        self.files: dict[str, bytes] = {}
        self.exists, self.keep, self.fail_on, self.can_delete = exists, keep, fail_on, can_delete
        self.calls: list[str] = []
        self.username = "bob"


class Writer(pub.XnatResourceWriter):
    def __init__(self, xnat: FakeXnat):
        super().__init__(xnat, "/data/projects/P/experiments/E/resources/xnat-hpc-results-j1", "P")
        self.x = xnat

    def create(self):
        self.x.calls.append("create")
        made, self.x.exists = not self.x.exists, True
        return made

    def listing(self):
        return {k: len(v) for k, v in self.x.files.items()}

    def read(self, name):
        return self.x.files[name]

    def put(self, name, body, size):
        self.x.calls.append(f"put {name}")
        data = body if isinstance(body, bytes) else body.read()
        assert len(data) == size
        if name == self.x.fail_on:
            raise Conflict("XNAT failed")
        if self.x.keep:
            self.x.files[name] = data

    def delete(self):
        self.x.calls.append("delete")
        if self.x.can_delete:
            self.x.files.clear()
            self.x.exists = False
        return self.x.can_delete


@pytest.fixture
def results(tmp_path):
    out = tmp_path / "results"
    (out / "model").mkdir(parents=True)
    (out / "metrics.json").write_text('{"acc": 0.9}')
    (out / "model" / "w.bin").write_bytes(b"W" * 1000)
    return out, digest_files(out)


def test_files_then_the_crate_then_the_signature_last(results):
    out, files = results
    x = FakeXnat()
    assert pub.upload(Writer(x), out, files, b"{crate}", "SIG") == "published"
    assert x.calls == ["create", "put metrics.json", "put model/w.bin", f"put {METADATA}", f"put {SIGNATURE}"]
    assert x.files["model/w.bin"] == b"W" * 1000 and x.files[SIGNATURE] == b"SIG"


def test_a_failure_in_the_middle_deletes_the_resource_or_leaves_it_unsigned(results):
    out, files = results
    x = FakeXnat(fail_on="model/w.bin")
    with pytest.raises(Conflict):
        pub.upload(Writer(x), out, files, b"{crate}", "SIG")
    assert x.calls[-1] == "delete" and x.files == {} and not x.exists
    # a Member may not delete: what is left has no signature (verify-results refuses it)
    x = FakeXnat(fail_on=METADATA, can_delete=False)
    with pytest.raises(Conflict):
        pub.upload(Writer(x), out, files, b"{crate}", "SIG")
    assert SIGNATURE not in x.files and METADATA not in x.files
    # and publishing again completes it
    x.fail_on = None
    assert pub.upload(Writer(x), out, files, b"{crate}", "SIG") == "published"
    assert x.files[SIGNATURE] == b"SIG"


def test_a_result_changed_since_the_job_fails_the_upload_by_name(results):
    out, files = results
    (out / "model" / "w.bin").write_bytes(b"X" * 1000)  # same size, other bytes
    x = FakeXnat()
    with pytest.raises(Conflict, match=r"model/w.bin changed since the job ended \(sha256"):
        pub.upload(Writer(x), out, files, b"{crate}", "SIG")
    assert x.calls[-1] == "delete" and SIGNATURE not in x.files
    (out / "model" / "w.bin").write_bytes(b"W" * 999)
    with pytest.raises(Conflict, match="999 bytes, the job's 1000"):
        pub.upload(Writer(FakeXnat()), out, files, b"{crate}", "SIG")


def test_the_hash_starts_again_when_the_client_rewinds_for_a_retry(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"abc" * 1000)
    with open(f, "rb") as raw:
        r = pub.HashingReader(raw)
        r.read(100)
        r.seek(0)
        while r.read(64):
            pass
    import hashlib
    assert r.hash.hexdigest() == hashlib.sha256(b"abc" * 1000).hexdigest()


def test_xnats_silent_refusal_is_found_by_the_listing(results):
    out, files = results
    x = FakeXnat(exists=True, keep=False)  # a Collaborator, on a resource someone else made
    with pytest.raises(PermissionDenied, match="XNAT did not keep metrics.json"):
        pub.upload(Writer(x), out, files, b"{crate}", "SIG")
    assert SIGNATURE not in x.calls and "delete" not in x.calls  # not made here: not removed here


def test_a_published_resource_is_left_as_it_is_and_another_publication_refused(results):
    out, files = results
    x = FakeXnat()
    pub.upload(Writer(x), out, files, b"{crate}", "SIG")
    x.calls.clear()
    assert pub.upload(Writer(x), out, files, b"{crate}", "SIG") == "unchanged"
    assert x.calls == ["create"]
    with pytest.raises(Conflict, match="already holds another signed publication"):
        pub.upload(Writer(x), out, files, b"{other crate}", "SIG2")


def test_a_result_replaced_by_a_link_is_not_followed(results, tmp_path):
    out, files = results
    secret = tmp_path / "secret"
    secret.write_text("x" * 1000)
    os.unlink(out / "model" / "w.bin")
    os.symlink(secret, out / "model" / "w.bin")
    x = FakeXnat()
    with pytest.raises(OSError):
        pub.upload(Writer(x), out, files, b"{crate}", "SIG")
    assert "x" * 10 not in json.dumps({k: v.decode(errors="replace") for k, v in x.files.items()})
    assert x.calls[-1] == "delete"


# -- the hub's key ------------------------------------------------------------------------------------
def test_the_signing_key_is_private_and_ssh_keygen_verifies_its_signature(tmp_path):
    signer = ResultsSigner(key_path=str(tmp_path / "keys" / "results-signing-key"), principal="hub@site")
    sig = signer.sign(b"the crate\n")
    key = tmp_path / "keys" / "results-signing-key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert ResultsSigner(key_path=str(key)).public_raw() == signer.public_raw()  # made once, then read
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(signer.allowed_signers())
    (tmp_path / "sig").write_text(sig)
    ok = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", "hub@site", "-n",
                         "xnat-hpc-results", "-s", str(tmp_path / "sig")], input=b"the crate\n", capture_output=True)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", "hub@site", "-n",
                          "xnat-hpc-results", "-s", str(tmp_path / "sig")], input=b"the crate!\n", capture_output=True)
    assert bad.returncode != 0


def test_a_key_others_can_read_is_refused(tmp_path):
    signer = ResultsSigner(key_path=str(tmp_path / "k" / "key"))
    signer.sign(b"x")
    os.chmod(tmp_path / "k" / "key", 0o644)
    with pytest.raises(UnsafePath, match="c.ResultsSigner.key_path"):
        ResultsSigner(key_path=str(tmp_path / "k" / "key")).sign(b"x")


# -- the owner page ---------------------------------------------------------------------------------------
def test_the_owner_page_links_each_publication_and_escapes_what_it_shows():
    pubs = [{"signed": "2026-12-07T10:00:00Z", "user": "bob", "job": "j1", "files": [["a", 1, "0" * 64]],
             "state": "published", "message": "", "url": "http://xnat:8080/data/projects/P/resources/r",
             "resource": "/data/projects/P/resources/r"},
            {"signed": "2026-12-07T11:00:00Z", "user": "<b>eve</b>", "job": "j2", "files": [], "state": "failed",
             "message": "disk full", "url": "javascript:alert(1)", "resource": "/data/projects/P/resources/q"}]
    html = R.project_section(R.ProjectView("P", [], "", [], [], [], pubs))
    assert '<a href="http://xnat:8080/data/projects/P/resources/r">/data/projects/P/resources/r</a>' in html
    assert 'href="javascript' not in html and "&lt;b&gt;eve&lt;/b&gt;" in html and "failed: disk full" in html


def test_results_key_prints_the_allowed_signers_line_and_never_makes_a_key(tmp_path, capsys):
    from hub_ext.cli import main

    config = tmp_path / "jupyterhub_config.py"
    config.write_text('c.ResultsSigner.key_path = "state/results-signing-key"\n'
                      'c.ResultsSigner.principal = "hub@hospital.example"\n')
    assert main(["results-key", "--config", str(config)]) == 1
    assert "no results key at" in capsys.readouterr().err and not (tmp_path / "state").exists()
    signer = ResultsSigner(key_path=str(tmp_path / "state" / "results-signing-key"))
    signer.sign(b"x")
    assert main(["results-key", "--config", str(config)]) == 0
    line = capsys.readouterr().out
    assert line == f'hub@hospital.example namespaces="xnat-hpc-results" ssh-ed25519 ' + line.split()[3] + "\n"
    assert line.split()[2:4] == signer.allowed_signers().split()[2:4]


# -- who the server's authorizer asks the hub about ------------------------------------------------------
def test_only_a_shares_guest_is_asked_about_at_the_hub():
    from xnat_bridge.serverext.sharing import is_guest

    share = {"kind": "user", "name": "dave", "scopes": ["access:servers!server=bob/shared", "read:users:name!user=dave"]}
    assert is_guest(share, "bob")
    assert not is_guest({"kind": "service", "name": "culler", "scopes": ["access:servers"]}, "bob")
    assert not is_guest({"kind": "user", "name": "admin", "scopes": ["access:servers"]}, "bob")
    assert not is_guest({"kind": "user", "name": "ops", "scopes": ["access:servers!user=bob"]}, "bob")
    assert is_guest({"kind": "user", "name": "eve", "scopes": ["access:servers!user=eve"]}, "bob")  # her own only
