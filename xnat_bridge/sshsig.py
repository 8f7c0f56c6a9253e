"""OpenSSH signatures (SSHSIG) of published results, made and checked without ``ssh-keygen``,
readable by it (issue 22).

Why SSHSIG: every site has OpenSSH; a signature is checked with the standard tool and one file
naming the hub's public key —

    ssh-keygen -Y verify -f allowed_signers -I xnat-hpc-hub -n xnat-hpc-results \\
        -s ro-crate-metadata.json.sig < ro-crate-metadata.json

— with no other tooling (an in-toto/DSSE envelope needs a verifier sites do not have), and the
format is small and specified (OpenSSH's ``PROTOCOL.sshsig``): the signed data is

    "SSHSIG" || string(namespace) || string("") || string(hash algorithm) || string(H(message))

and the signature blob ``"SSHSIG" || uint32(1) || string(public key) || string(namespace) ||
string("") || string(hash algorithm) || string(signature)``, armoured in base64 between
``-----BEGIN SSH SIGNATURE-----`` lines. Keys here are Ed25519; the message hash is SHA-512.
The namespace binds a signature to its use: one made for results never verifies as another kind.
"""

from __future__ import annotations

import base64
import hashlib
import struct

from .errors import InvalidRequest, XnatHpcError

MAGIC = b"SSHSIG"
VERSION = 1
KEY_TYPE = b"ssh-ed25519"
HASH = "sha512"
#: the namespace of the hub's signatures of published results
RESULTS_NAMESPACE = "xnat-hpc-results"
BEGIN, END = "-----BEGIN SSH SIGNATURE-----", "-----END SSH SIGNATURE-----"


class BadSignature(XnatHpcError):
    """The signature does not verify, or is not one: the message says which."""

    status = 422
    reason = "bad_signature"


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _read_string(buf: bytes, at: int) -> tuple[bytes, int]:
    if at + 4 > len(buf):
        raise BadSignature("the signature is truncated")
    (n,) = struct.unpack(">I", buf[at:at + 4])
    end = at + 4 + n
    if end > len(buf):
        raise BadSignature("the signature is truncated")
    return buf[at + 4:end], end


def public_key_blob(raw: bytes) -> bytes:
    """OpenSSH's wire form of an Ed25519 public key (*raw*: its 32 bytes)."""
    return _string(KEY_TYPE) + _string(raw)


def public_key_line(raw: bytes, comment: str = "") -> str:
    """``ssh-ed25519 AAAA… comment``, as in ``authorized_keys`` and ``allowed_signers``."""
    line = f"ssh-ed25519 {base64.b64encode(public_key_blob(raw)).decode()}"
    return f"{line} {comment}" if comment else line


def parse_public_key_line(line: str) -> bytes:
    """The raw 32 bytes of an ``ssh-ed25519`` public key line (an ``allowed_signers`` entry's
    key part, ``principal ssh-ed25519 AAAA…``, also accepted)."""
    fields = line.split()
    if "ssh-ed25519" not in fields or fields.index("ssh-ed25519") + 1 >= len(fields):
        raise InvalidRequest("not an ssh-ed25519 public key line")
    try:
        blob = base64.b64decode(fields[fields.index("ssh-ed25519") + 1], validate=True)
    except ValueError:
        raise InvalidRequest("the public key is not base64") from None
    kind, at = _read_string(blob, 0)
    raw, at = _read_string(blob, at)
    if kind != KEY_TYPE or len(raw) != 32 or at != len(blob):
        raise InvalidRequest("not an ssh-ed25519 public key")
    return raw


def _signed_data(message: bytes, namespace: str) -> bytes:
    return (MAGIC + _string(namespace.encode()) + _string(b"") + _string(HASH.encode())
            + _string(hashlib.sha512(message).digest()))


def sign(message: bytes, private_key, namespace: str = RESULTS_NAMESPACE) -> str:
    """The armoured SSHSIG of *message* with *private_key* (``cryptography``'s
    ``Ed25519PrivateKey``)."""
    from cryptography.hazmat.primitives import serialization

    raw_pub = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    signature = private_key.sign(_signed_data(message, namespace))
    blob = (MAGIC + struct.pack(">I", VERSION) + _string(public_key_blob(raw_pub)) + _string(namespace.encode())
            + _string(b"") + _string(HASH.encode()) + _string(_string(KEY_TYPE) + _string(signature)))
    text = base64.b64encode(blob).decode()
    return "\n".join([BEGIN, *(text[i:i + 70] for i in range(0, len(text), 70)), END]) + "\n"


def verify(message: bytes, armoured: str, public_key: bytes, namespace: str = RESULTS_NAMESPACE) -> None:
    """Return when *armoured* is a valid SSHSIG of *message* by *public_key* (raw Ed25519) in
    *namespace*; else :class:`BadSignature` naming what is wrong."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    lines = [ln.strip() for ln in armoured.strip().splitlines()]
    if len(lines) < 3 or lines[0] != BEGIN or lines[-1] != END:
        raise BadSignature("not an SSH signature (no BEGIN/END SSH SIGNATURE lines)")
    try:
        blob = base64.b64decode("".join(lines[1:-1]), validate=True)
    except ValueError:
        raise BadSignature("the signature is not base64") from None
    if blob[:6] != MAGIC or blob[6:10] != struct.pack(">I", VERSION):
        raise BadSignature("not an SSHSIG version 1 signature")
    key, at = _read_string(blob, 10)
    ns, at = _read_string(blob, at)
    _reserved, at = _read_string(blob, at)
    hash_alg, at = _read_string(blob, at)
    sig, at = _read_string(blob, at)
    if key != public_key_blob(public_key):
        raise BadSignature("signed by another key than the hub's")
    if ns.decode(errors="replace") != namespace:
        raise BadSignature(f"signed for {ns.decode(errors='replace')!r}, not {namespace!r}")
    if hash_alg.decode(errors="replace") != HASH:
        raise BadSignature(f"hash algorithm {hash_alg.decode(errors='replace')!r} is not {HASH}")
    kind, i = _read_string(sig, 0)
    raw_sig, i = _read_string(sig, i)
    if kind != KEY_TYPE:
        raise BadSignature(f"signature type {kind.decode(errors='replace')!r} is not ssh-ed25519")
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(raw_sig, _signed_data(message, namespace))
    except InvalidSignature:
        raise BadSignature("the signature does not match the signed file: it was changed after signing") from None
