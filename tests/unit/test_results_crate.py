"""The provenance record of published results (:mod:`xnat_bridge.results_crate`) and
``xnat-hpc-hub verify-results``: the crate names every file with its sha256 and the run's
facts; signed with the hub's key it verifies — with this command and with ``ssh-keygen -Y
verify`` — and a changed byte, a removed or an added file, another key or a changed crate fails,
naming the file."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from xnat_bridge import results_crate as rc
from xnat_bridge import sshsig
from xnat_bridge.errors import InvalidRequest

RUN = rc.RunRecord(
    job_id="j0123456789ab", user="alice", xnat_host="https://xnat.example.org", dataset="t1",
    manifest_sha256="a" * 64, script="train_example.py", script_sha256="b" * 64, slurm_job_id="1207",
    partition="secure", node="xnat-node1", start="2026-12-07T18:00:00Z", end="2026-12-07T18:05:00Z",
    resources_asked={"cpus": "2", "memory": "4G", "walltime": "1:00:00"}, resources_used={"elapsed": "0:04:51"},
    software={"xnat-hpc-hub": "0.1.0", "numpy": "2.1.0"},
    approvals=(rc.Approval("dave", "2026-12-07T18:10:00Z"),), audit_ids=("4711", "4712"),
    xnat_item="https://xnat.example.org/data/experiments/XNAT_E00001")


def _publish(root, key) -> None:
    """What the hub will do: the crate of the directory, signed."""
    metadata = rc.crate_metadata(RUN, rc.digest_files(root))
    body = rc.dumps(metadata)
    (root / rc.METADATA).write_bytes(body)
    (root / rc.SIGNATURE).write_text(sshsig.sign(body, key))


@pytest.fixture
def published(tmp_path):
    root = tmp_path / "results"
    (root / "run1").mkdir(parents=True)
    (root / "metrics.json").write_text('{"accuracy": 0.91}\n')
    (root / "run1" / "model.pkl").write_bytes(b"\x80\x04" + bytes(range(256)) * 100)
    key = Ed25519PrivateKey.generate()
    _publish(root, key)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    (tmp_path / "hub.pub").write_text(sshsig.public_key_line(raw, "xnat-hpc-hub") + "\n")
    return root, raw, tmp_path / "hub.pub"


def _graph(metadata) -> dict[str, dict]:
    return {n["@id"]: n for n in metadata["@graph"]}


def test_the_crate_names_every_file_and_the_runs_facts(published):
    root, _raw, _ = published
    metadata = json.loads((root / rc.METADATA).read_text())
    assert metadata["@context"] == rc.CONTEXT
    graph = _graph(metadata)
    assert {"@id": rc.RO_CRATE} in graph[rc.METADATA]["conformsTo"]
    assert graph["./"]["conformsTo"] == {"@id": rc.PROCESS_RUN_CRATE}
    assert [p["@id"] for p in graph["./"]["hasPart"]] == ["metrics.json", "run1/model.pkl"]
    model = graph["run1/model.pkl"]
    assert model["@type"] == "File" and model["contentSize"] == str(2 + 25600) and len(model["sha256"]) == 64
    [action] = [n for n in metadata["@graph"] if n["@type"] == "CreateAction"]
    assert action["agent"] == {"@id": "#user-alice"} and action["startTime"] < action["endTime"]
    assert graph[action["instrument"]["@id"]]["sha256"] == "b" * 64
    assert graph[action["object"][0]["@id"]]["sha256"] == "a" * 64
    assert {"@id": "#slurm-1207"} in action["identifier"] and {"@id": "#audit-4712"} in action["identifier"]
    assert graph["#node-xnat-node1"]["name"] == "node xnat-node1, partition secure"
    [review] = [n for n in metadata["@graph"] if n["@type"] == "AssessAction"]
    assert review["agent"] == {"@id": "#user-dave"} and review["endTime"] == "2026-12-07T18:10:00Z"
    assert graph["#asked-cpus"]["value"] == "2" and graph["#used-elapsed"]["value"] == "0:04:51"
    # every @id referenced is in the graph (a well-formed crate)
    ids = set(graph)
    refs = [v["@id"] for n in metadata["@graph"] for v in n.values() if isinstance(v, dict) and "@id" in v] + \
        [x["@id"] for n in metadata["@graph"] for v in n.values() if isinstance(v, list)
         for x in v if isinstance(x, dict) and "@id" in x]
    assert set(refs) - ids <= {rc.RO_CRATE}


def test_verify_results_accepts_what_the_hub_signed_and_names_what_changed(published):
    root, raw, key_file = published
    assert rc.verify_results(root, raw) == []
    ok = subprocess.run([sys.executable, "-m", "hub_ext.cli", "verify-results", str(root), "--key", str(key_file)],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "verified" in ok.stdout, ok.stderr
    # one byte of one result
    model = root / "run1" / "model.pkl"
    data = bytearray(model.read_bytes())
    data[100] ^= 1
    model.write_bytes(bytes(data))
    bad = subprocess.run([sys.executable, "-m", "hub_ext.cli", "verify-results", str(root), "--key", str(key_file)],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "run1/model.pkl: changed after publishing" in bad.stderr, bad.stderr
    data[100] ^= 1
    model.write_bytes(bytes(data))
    # a file added, a file removed
    (root / "extra.txt").write_text("x")
    assert rc.verify_results(root, raw) == ["extra.txt: not in the signed record (added after publishing)"]
    (root / "extra.txt").unlink()
    (root / "metrics.json").unlink()
    assert rc.verify_results(root, raw) == ["metrics.json: missing"]


def test_a_changed_crate_another_key_or_a_link_fails(published, tmp_path):
    root, raw, _ = published
    body = (root / rc.METADATA).read_bytes()
    (root / rc.METADATA).write_bytes(body.replace(b'"1207"', b'"9999"'))
    [problem] = rc.verify_results(root, raw)
    assert problem.startswith(rc.METADATA) and "changed after signing" in problem
    (root / rc.METADATA).write_bytes(body)
    other = Ed25519PrivateKey.generate().public_key().public_bytes(serialization.Encoding.Raw,
                                                                  serialization.PublicFormat.Raw)
    assert "another key" in rc.verify_results(root, other)[0]
    (root / "link").symlink_to(tmp_path / "hub.pub")
    assert rc.verify_results(root, raw) == ["link is not a plain file (a link or a device): results are plain files"]
    with pytest.raises(InvalidRequest, match="crate's own file"):
        rc.crate_metadata(RUN, [rc.FileEntry(rc.METADATA, 1, "c" * 64)])


def test_ssh_keygen_verifies_the_published_crate(published):
    root, _raw, key_file = published
    signers = key_file.with_name("allowed_signers")
    signers.write_text("xnat-hpc-hub " + key_file.read_text())
    r = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(signers), "-I", "xnat-hpc-hub", "-n",
                        sshsig.RESULTS_NAMESPACE, "-s", str(root / rc.SIGNATURE)],
                       stdin=open(root / rc.METADATA, "rb"), capture_output=True)
    assert r.returncode == 0, r.stderr
