"""age key handling: identities never logged, written or pickled.

Imports :mod:`.common` only (a bottom layer of the package).
"""

from __future__ import annotations

from typing import Any

import pyrage

from ..errors import InvalidRequest
from .common import SECRET_PREFIX

class AgeIdentity:
    """An age X25519 identity (the dataset or result key), held in memory only.

    ``repr``/``str`` show the public recipient, never the secret; pickling is
    refused so the key cannot slip into a spill file or cache by accident.
    Call :meth:`secret` explicitly for the one channel allowed to carry it
    (the TLS connection to the job's worker).
    """

    __slots__ = ("_key", "recipient")

    def __init__(self, secret: str):
        self._key = _parse_identity(secret)
        self.recipient = str(self._key.to_public())

    @classmethod
    def generate(cls) -> "AgeIdentity":
        obj = cls.__new__(cls)
        obj._key = pyrage.x25519.Identity.generate()
        obj.recipient = str(obj._key.to_public())
        return obj

    def secret(self) -> str:
        """The ``AGE-SECRET-KEY-1...`` string. Never log it or write it to a file."""
        return str(self._key)

    def __repr__(self) -> str:
        return f"AgeIdentity(recipient={self.recipient!r}, secret=<hidden>)"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("AgeIdentity cannot be pickled; send identity.secret() explicitly "
                        "over the job's TLS channel")


def generate_keypair() -> tuple[str, str]:
    """A new X25519 key pair: ``(identity "AGE-SECRET-KEY-1...", recipient "age1...")``."""
    key = pyrage.x25519.Identity.generate()
    return str(key), str(key.to_public())


def _parse_identity(text: str):
    if not isinstance(text, str):
        raise TypeError("an age identity must be a string, an AgeIdentity or a pyrage identity")
    # accept an age key file's content too: "# created: ...", "# public key: ...", the key
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    keys = [ln for ln in lines if ln.upper().startswith(SECRET_PREFIX)]
    if len(keys) != 1:
        raise InvalidRequest("not an age X25519 identity: expected one line AGE-SECRET-KEY-1...")
    try:
        return pyrage.x25519.Identity.from_str(keys[0])
    except pyrage.IdentityError:
        raise InvalidRequest("the age identity is malformed (invalid Bech32 encoding)") from None


def as_identity(identity):
    """The pyrage identity of an :class:`AgeIdentity`, a pyrage identity or an ``AGE-SECRET-KEY-1...`` text."""
    if isinstance(identity, AgeIdentity):
        return identity._key
    if isinstance(identity, pyrage.x25519.Identity):
        return identity
    return _parse_identity(identity)


def as_recipient(recipient) -> tuple[Any, str]:
    """(pyrage recipient, its ``age1...`` string) of a recipient string, pyrage recipient or AgeIdentity."""
    if isinstance(recipient, AgeIdentity):
        recipient = recipient.recipient
    if isinstance(recipient, pyrage.x25519.Recipient):
        return recipient, str(recipient)
    if not isinstance(recipient, str):
        raise TypeError("a recipient must be an 'age1...' string or a pyrage recipient")
    text = recipient.strip()
    if text.upper().startswith(SECRET_PREFIX):
        raise InvalidRequest("that is an age secret key, not a recipient: pass its public "
                             "key (age1...) and keep the secret in memory")
    try:
        return pyrage.x25519.Recipient.from_str(text), text
    except pyrage.RecipientError:
        shown = text[:16] + ("..." if len(text) > 16 else "")
        raise InvalidRequest(f"{shown!r} is not an age X25519 recipient (age1...)",
                             item=shown) from None
