"""The hub's key for published results (issue 22): ``c.ResultsSigner``.

The governance service signs the RO-Crate of every publication (:mod:`hub_ext.publication`)
with an Ed25519 key only the hub's account reads: made at first use, 0600, in a directory
made 0700 (:mod:`xnat_bridge.private`: no link followed, a file others can read refused).
The signature is OpenSSH's SSHSIG (:mod:`xnat_bridge.sshsig`), so a site checks it with
``ssh-keygen -Y verify`` and the ``allowed_signers`` line :meth:`ResultsSigner.allowed_signers`
prints (``xnat-hpc-hub results-key``), or with ``xnat-hpc-hub verify-results``.

A researcher's server never holds the key: it asks the service, which signs only what it
checked against its own records (the ledger, the owners' approvals, the trail).
"""

from __future__ import annotations

import os
import threading

from traitlets import Unicode
from traitlets.config import LoggingConfigurable

from xnat_bridge.private import check_private_dir, create_private_file, read_private_file
from xnat_bridge.sshsig import RESULTS_NAMESPACE, public_key_line, sign


class ResultsSigner(LoggingConfigurable):
    """The hub's signing key of published results (see the module docstring)."""

    key_path = Unicode(
        "xnat-hpc-review/results-signing-key",
        help="""The hub's Ed25519 key that signs published results (OpenSSH private key format).
        Made at the governance service's first publication, 0600, in a directory made 0700;
        a file readable by others, or a link, is refused. Back it up with the review store:
        results signed by a lost key still verify against its public line, but nothing new is
        signed by it. A relative path is relative to the hub's working directory. Example:
        "/var/lib/xnat-hpc-hub/review/results-signing-key".""",
    ).tag(config=True)

    principal = Unicode(
        "xnat-hpc-hub",
        help="""The signer's name in the ``allowed_signers`` line (``ssh-keygen -Y verify -I``).
        Example: "xnat-hpc-hub@hospital.example".""",
    ).tag(config=True)

    _lock = threading.Lock()

    def _load(self):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        path = os.path.abspath(self.key_path)
        with self._lock:
            check_private_dir(os.path.dirname(path), create=True)
            if not os.path.lexists(path):
                key = Ed25519PrivateKey.generate()
                pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                        serialization.NoEncryption())
                try:
                    create_private_file(path, pem)
                    self.log.info("made the hub's results signing key %s", path)
                    return key
                except FileExistsError:  # the other process made it first: read that one
                    pass
            pem = read_private_file(path, what="c.ResultsSigner.key_path")
        key = serialization.load_ssh_private_key(pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            from xnat_bridge.errors import InvalidRequest

            raise InvalidRequest(f"{path} is not an Ed25519 key (c.ResultsSigner.key_path)")
        return key

    def public_raw(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self._load().public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def allowed_signers(self) -> str:
        """The ``allowed_signers`` line a site verifies published results with."""
        return f'{self.principal} namespaces="{RESULTS_NAMESPACE}" {public_key_line(self.public_raw())}\n'

    def sign(self, data: bytes) -> str:
        """The armoured SSHSIG of *data* (namespace ``xnat-hpc-results``)."""
        return sign(data, self._load(), RESULTS_NAMESPACE)
