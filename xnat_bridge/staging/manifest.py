"""The bundle's MANIFEST.json: entries, digests, validation (pure).

Imports :mod:`.common` only (a bottom layer of the package).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import BinaryIO

from ..errors import Conflict, InvalidRequest
from ..files import safe_relpath
from .common import DATA_PREFIX, FORMAT, FORMAT_VERSION, INFO_FORMAT, MANIFEST_NAME, SECRET_PREFIX

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclasses.dataclass(frozen=True)
class StagedFile:
    """One data file: archive-relative name, size, sha256, and how to read it.

    ``open`` returns a binary file object (a read-only mount, a REST download
    stream, ...); it is called once, read to the end and closed.
    """

    name: str
    size: int
    sha256: str
    open: Callable[[], BinaryIO] = dataclasses.field(repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class BundleInfo:
    """A complete bundle on the staging area (public facts only)."""

    path: Path
    bundle_id: str
    manifest_sha256: str
    recipient: str
    size: int
    created: str
    contents_sha256: str = ""
    file_count: int = 0
    total_size: int = 0

    def to_json(self) -> dict:
        return {"format": INFO_FORMAT, "format_version": FORMAT_VERSION,
                "bundle_id": self.bundle_id, "manifest_sha256": self.manifest_sha256,
                "contents_sha256": self.contents_sha256, "recipient": self.recipient,
                "size": self.size, "created": self.created, "file_count": self.file_count,
                "total_size": self.total_size}


def canonical_json(obj) -> bytes:
    """Sorted keys, no spaces, ASCII (the same canon as dataset manifests)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("ascii")


def _check_entry(name, size, sha256, what: str) -> dict:
    if not isinstance(name, str):
        raise InvalidRequest(f"{what} name must be a string, not {type(name).__name__}")
    safe_relpath(name)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidRequest(f"{what} {name!r}: size must be a non-negative integer", item=name)
    sha = sha256.lower() if isinstance(sha256, str) else ""
    if not _SHA_RE.match(sha):
        raise InvalidRequest(f"{what} {name!r}: sha256 must be 64 hex digits", item=name)
    return {"name": name, "size": size, "sha256": sha}


def file_entries(files: Iterable[StagedFile]) -> list[dict]:
    """Validated ``{"name", "size", "sha256"}`` entries, sorted by name (pure)."""
    entries = [_check_entry(f.name, f.size, f.sha256, "data file") for f in files]
    entries.sort(key=lambda e: e["name"])
    for a, b in zip(entries, entries[1:]):
        if a["name"] == b["name"]:
            raise InvalidRequest(f"data file {a['name']!r} is listed twice", item=a["name"])
    return entries


def manifest_sha256(files: Iterable[StagedFile] | Iterable[dict]) -> str:
    """sha256 (hex) of the canonical JSON of the file list — the bundle's reuse key."""
    files = list(files)
    if files and isinstance(files[0], StagedFile):
        entries = file_entries(files)
    else:
        entries = sorted(({"name": f["name"], "size": f["size"], "sha256": f["sha256"]}
                          for f in files), key=lambda e: e["name"])
    return hashlib.sha256(canonical_json(entries)).hexdigest()


def check_extras(extra_members: Mapping[str, bytes] | None) -> dict[str, bytes]:
    """Validated extra members, ``{name: bytes}`` sorted by name (pure)."""
    out: dict[str, bytes] = {}
    for name, content in sorted((extra_members or {}).items()):
        if not isinstance(name, str):
            raise InvalidRequest("extra member names must be strings")
        safe_relpath(name)
        if name == MANIFEST_NAME or name.startswith(DATA_PREFIX):
            raise InvalidRequest(f"extra member {name!r} clashes with the bundle's own names "
                                 f"({MANIFEST_NAME}, {DATA_PREFIX}...); use e.g. script/{name}",
                                 item=name)
        if not isinstance(content, (bytes, bytearray, memoryview)):
            raise InvalidRequest(f"extra member {name!r} must be bytes", item=name)
        out[name] = bytes(content)
    return out


def build_manifest(files: Iterable[StagedFile], metadata: Mapping | None = None,
                   extra_members: Mapping[str, bytes] | None = None) -> dict:
    """The MANIFEST.json document of a bundle (pure)."""
    entries = file_entries(files)
    extras = check_extras(extra_members)
    meta = dict(metadata or {})
    try:
        meta_json = canonical_json(meta)
    except (TypeError, ValueError) as e:
        raise InvalidRequest(f"bundle metadata must be JSON data: {e}") from None
    if SECRET_PREFIX.encode() in meta_json.upper():
        raise InvalidRequest("bundle metadata contains an age secret key; never put a key "
                             "into a bundle")
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "files": entries,
        "manifest_sha256": hashlib.sha256(canonical_json(entries)).hexdigest(),
        "extra": [{"name": n, "size": len(c), "sha256": hashlib.sha256(c).hexdigest()}
                  for n, c in extras.items()],
        "metadata": meta,
        "file_count": len(entries),
        "total_size": sum(e["size"] for e in entries),
    }


def contents_sha256(files: Iterable[StagedFile], metadata: Mapping | None = None,
                    extra_members: Mapping[str, bytes] | None = None) -> str:
    """sha256 of the MANIFEST.json a bundle of these inputs would carry."""
    return hashlib.sha256(canonical_json(build_manifest(files, metadata, extra_members))).hexdigest()


def parse_manifest(raw: bytes, label: str) -> dict:
    """A bundle's MANIFEST.json bytes, checked (InvalidRequest) and self-consistent (Conflict)."""
    try:
        doc = json.loads(raw)
        if doc.get("format") != FORMAT or doc.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"not an {FORMAT} v{FORMAT_VERSION} manifest")
        files = [_check_entry(f["name"], f["size"], f["sha256"], "data file") for f in doc["files"]]
        extra = [_check_entry(f["name"], f["size"], f["sha256"], "extra member")
                 for f in doc.get("extra", [])]
        stated = str(doc["manifest_sha256"])
    except InvalidRequest as e:
        raise InvalidRequest(f"{label}: {MANIFEST_NAME} is invalid: {e}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise InvalidRequest(f"{label}: {MANIFEST_NAME} is invalid: {e}") from None
    if manifest_sha256(files) != stated:
        raise Conflict(f"{label}: {MANIFEST_NAME} does not match its own digest", item=label)
    doc["files"], doc["extra"] = files, extra
    return doc


def norm_digest(value: str) -> str:
    """A sha256 digest as 64 lower-case hex digits (``sha256:`` prefix allowed), else InvalidRequest."""
    text = value.strip().lower() if isinstance(value, str) else ""
    text = text.removeprefix("sha256:")
    if not _SHA_RE.match(text):
        raise InvalidRequest(f"{value!r} is not a sha256 digest (64 hex digits)")
    return text
