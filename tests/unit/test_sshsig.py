""":mod:`xnat_bridge.sshsig` against OpenSSH's own ``ssh-keygen -Y`` (Debian's openssh-client,
installed by scripts/bootstrap.sh): a signature made here verifies with the standard tool, one
made by the tool verifies here, and a changed byte, another key or another namespace fails."""

from __future__ import annotations

import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from xnat_bridge import sshsig

MESSAGE = b'{"@context": "https://w3id.org/ro/crate/1.1/context"}\n'


def _raw(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _ssh_keygen_verify(tmp_path, key, signature: str, message: bytes, namespace: str) -> subprocess.CompletedProcess:
    (tmp_path / "allowed_signers").write_text(f"xnat-hpc-hub {sshsig.public_key_line(_raw(key))}\n")
    (tmp_path / "msg.sig").write_text(signature)
    return subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(tmp_path / "allowed_signers"), "-I",
                           "xnat-hpc-hub", "-n", namespace, "-s", str(tmp_path / "msg.sig")],
                          input=message, capture_output=True)


def test_a_signature_made_here_verifies_with_ssh_keygen(tmp_path):
    key = Ed25519PrivateKey.generate()
    signature = sshsig.sign(MESSAGE, key)
    r = _ssh_keygen_verify(tmp_path, key, signature, MESSAGE, sshsig.RESULTS_NAMESPACE)
    assert r.returncode == 0, r.stderr
    assert b"Good \"xnat-hpc-results\" signature for xnat-hpc-hub" in r.stdout + r.stderr
    # the tool agrees on what fails: a changed byte, another namespace
    assert _ssh_keygen_verify(tmp_path, key, signature, MESSAGE + b" ", sshsig.RESULTS_NAMESPACE).returncode != 0
    assert _ssh_keygen_verify(tmp_path, key, signature, MESSAGE, "file").returncode != 0


def test_a_signature_made_by_ssh_keygen_verifies_here(tmp_path):
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                            serialization.NoEncryption())
    key_file = tmp_path / "hub_ed25519"
    key_file.write_bytes(pem)
    key_file.chmod(0o600)
    (tmp_path / "msg").write_bytes(MESSAGE)
    r = subprocess.run(["ssh-keygen", "-Y", "sign", "-f", str(key_file), "-n", sshsig.RESULTS_NAMESPACE,
                        str(tmp_path / "msg")], capture_output=True)
    assert r.returncode == 0, r.stderr
    signature = (tmp_path / "msg.sig").read_text()
    sshsig.verify(MESSAGE, signature, _raw(key))
    assert sshsig.sign(MESSAGE, key) == signature  # Ed25519 is deterministic: the same bytes


def test_what_fails_here_and_says_why():
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    signature = sshsig.sign(MESSAGE, key)
    with pytest.raises(sshsig.BadSignature, match="changed after signing"):
        sshsig.verify(MESSAGE.replace(b"1.1", b"1.2"), signature, _raw(key))
    with pytest.raises(sshsig.BadSignature, match="another key"):
        sshsig.verify(MESSAGE, signature, _raw(other))
    with pytest.raises(sshsig.BadSignature, match="signed for 'xnat-hpc-results', not 'file'"):
        sshsig.verify(MESSAGE, signature, _raw(key), namespace="file")
    with pytest.raises(sshsig.BadSignature, match="BEGIN/END"):
        sshsig.verify(MESSAGE, "hello", _raw(key))
    lines = signature.splitlines()
    truncated = "\n".join([lines[0], lines[1][:20], lines[-1]])
    with pytest.raises(sshsig.BadSignature):
        sshsig.verify(MESSAGE, truncated, _raw(key))


def test_public_key_lines_round_trip_and_bad_ones_are_refused():
    raw = _raw(Ed25519PrivateKey.generate())
    line = sshsig.public_key_line(raw, "hub@example.org")
    assert line.startswith("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5") and line.endswith(" hub@example.org")
    assert sshsig.parse_public_key_line(line) == raw
    assert sshsig.parse_public_key_line(f"xnat-hpc-hub {line}") == raw  # an allowed_signers entry
    from xnat_bridge.errors import InvalidRequest
    for bad in ("ssh-rsa AAAAB3NzaC1yc2E", "ssh-ed25519 !!!", "ssh-ed25519"):
        with pytest.raises(InvalidRequest):
            sshsig.parse_public_key_line(bad)
