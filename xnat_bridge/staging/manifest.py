"""The bundle's two inner documents, MANIFEST.json and HASHES.json: entries, digests, checks (pure).

Bundle format 2 writes what is known before the data is read first and what is
learnt while streaming last:

* ``MANIFEST.json`` (the first member, the *head*): every data file's name,
  size and XNAT md5 (``""`` where XNAT has none), the extra members with their
  sha256, the caller's metadata. Its sha256 is the bundle's ``contents_sha256``
  (the reuse key of a bundle: it is known before staging);
* ``HASHES.json`` (the last member, the *trailer*): the sha256 of every data
  file, computed while the file streamed into the bundle, the head's digest
  and ``manifest_sha256``.

The *final manifest* is the head with every file's sha256 filled in from the
trailer; ``manifest_sha256`` is the sha256 of the canonical JSON of its file
list (``name``, ``size``, ``sha256``; the data's identity, as in format 1).

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
from .common import (
    DATA_PREFIX,
    FORMAT,
    FORMAT_VERSION,
    HASHES_FORMAT,
    HASHES_NAME,
    INFO_FORMAT,
    MANIFEST_NAME,
    SECRET_PREFIX,
)

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_MD5_RE = re.compile(r"^[0-9a-f]{32}$")


@dataclasses.dataclass(frozen=True)
class StagedFile:
    """One data file: archive-relative name, size, sha256, how to read it, XNAT's md5.

    ``sha256`` is ``""`` when it is not known yet (a dataset's first staging):
    it is computed while the file streams into the bundle; a known one is
    verified. ``md5`` is XNAT's digest of the file (``""`` where XNAT has
    none); it goes into the bundle's MANIFEST.json, and is verified where
    the file is first read (by its source, or the staging's readers). ``open`` returns a binary file object (a read-only mount, a REST
    stream, ...); it is called once, read to its end and closed.
    """

    name: str
    size: int
    sha256: str
    open: Callable[[], BinaryIO] = dataclasses.field(repr=False, compare=False)
    md5: str = ""


@dataclasses.dataclass(frozen=True)
class BundleInfo:
    """A complete bundle on the staging area (public facts), and the sha256 of every data file.

    ``file_sha256`` (name → sha256) is filled by :func:`~.area.stage_files`
    only: the sidecar on the staging area holds no per-file digest, so a
    bundle found by :func:`~.area.find_bundle` has an empty mapping.
    """

    path: Path
    bundle_id: str
    manifest_sha256: str
    recipient: str
    size: int
    created: str
    contents_sha256: str = ""
    file_count: int = 0
    total_size: int = 0
    file_sha256: Mapping[str, str] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def to_json(self) -> dict:
        return {"format": INFO_FORMAT, "format_version": FORMAT_VERSION,
                "bundle_id": self.bundle_id, "manifest_sha256": self.manifest_sha256,
                "contents_sha256": self.contents_sha256, "recipient": self.recipient,
                "size": self.size, "created": self.created, "file_count": self.file_count,
                "total_size": self.total_size}


def canonical_json(obj) -> bytes:
    """Sorted keys, no spaces, ASCII (the same canon as dataset manifests)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("ascii")


def _check_name_size(name, size, what: str) -> None:
    if not isinstance(name, str):
        raise InvalidRequest(f"{what} name must be a string, not {type(name).__name__}")
    safe_relpath(name)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidRequest(f"{what} {name!r}: size must be a non-negative integer", item=name)


def _check_sha(name: str, sha256, what: str, *, required: bool) -> str:
    sha = sha256.lower() if isinstance(sha256, str) else None
    if sha == "" and not required:
        return ""
    if sha is None or not _SHA_RE.match(sha):
        raise InvalidRequest(f"{what} {name!r}: sha256 must be 64 hex digits"
                             + ("" if required else " (or empty: not known yet)"), item=name)
    return sha


def _check_md5(name: str, md5, what: str) -> str:
    text = md5.lower() if isinstance(md5, str) else None
    if text is None or (text and not _MD5_RE.match(text)):
        raise InvalidRequest(f"{what} {name!r}: XNAT's md5 must be 32 hex digits or empty", item=name)
    return text


def _sorted_unique(entries: list[dict], what: str) -> list[dict]:
    entries.sort(key=lambda e: e["name"])
    for a, b in zip(entries, entries[1:]):
        if a["name"] == b["name"]:
            raise InvalidRequest(f"{what} {a['name']!r} is listed twice", item=a["name"])
    return entries


def file_entries(files: Iterable[StagedFile]) -> list[dict]:
    """The head's ``{"name", "size", "md5"}`` entries, validated and sorted by name (pure).

    A known sha256 is validated too (64 hex digits, or ``""``); it is not part of the head.
    """
    entries = []
    for f in files:
        _check_name_size(f.name, f.size, "data file")
        _check_sha(f.name, f.sha256, "data file", required=False)
        entries.append({"name": f.name, "size": f.size, "md5": _check_md5(f.name, f.md5, "data file")})
    return _sorted_unique(entries, "data file")


def manifest_sha256(files: Iterable[StagedFile] | Iterable[dict]) -> str:
    """sha256 (hex) of the canonical JSON of ``[{"name", "size", "sha256"}]`` sorted by name.

    The data's identity (the key of :func:`~.area.find_bundle`); every file's
    sha256 must be known (InvalidRequest otherwise).
    """
    entries = []
    for f in files:
        name, size, sha = ((f.name, f.size, f.sha256) if isinstance(f, StagedFile)
                           else (f["name"], f["size"], f["sha256"]))
        _check_name_size(name, size, "data file")
        entries.append({"name": name, "size": size, "sha256": _check_sha(name, sha, "data file",
                                                                          required=True)})
    return hashlib.sha256(canonical_json(_sorted_unique(entries, "data file"))).hexdigest()


def check_extras(extra_members: Mapping[str, bytes] | None) -> dict[str, bytes]:
    """Validated extra members, ``{name: bytes}`` sorted by name (pure)."""
    out: dict[str, bytes] = {}
    for name, content in sorted((extra_members or {}).items()):
        if not isinstance(name, str):
            raise InvalidRequest("extra member names must be strings")
        safe_relpath(name)
        if name in (MANIFEST_NAME, HASHES_NAME) or name.startswith(DATA_PREFIX):
            raise InvalidRequest(f"extra member {name!r} clashes with the bundle's own names "
                                 f"({MANIFEST_NAME}, {HASHES_NAME}, {DATA_PREFIX}...); use e.g. "
                                 f"script/{name}", item=name)
        if not isinstance(content, (bytes, bytearray, memoryview)):
            raise InvalidRequest(f"extra member {name!r} must be bytes", item=name)
        out[name] = bytes(content)
    return out


def build_manifest(files: Iterable[StagedFile], metadata: Mapping | None = None,
                   extra_members: Mapping[str, bytes] | None = None) -> dict:
    """The bundle's MANIFEST.json (the head): everything known before the data is read (pure)."""
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
        "extra": [{"name": n, "size": len(c), "sha256": hashlib.sha256(c).hexdigest()}
                  for n, c in extras.items()],
        "metadata": meta,
        "file_count": len(entries),
        "total_size": sum(e["size"] for e in entries),
    }


def contents_sha256(files: Iterable[StagedFile], metadata: Mapping | None = None,
                    extra_members: Mapping[str, bytes] | None = None) -> str:
    """sha256 of the MANIFEST.json a bundle of these inputs carries: known before staging."""
    return hashlib.sha256(canonical_json(build_manifest(files, metadata, extra_members))).hexdigest()


def final_manifest(head: dict, contents: str, sha256_by_name: Mapping[str, str]) -> dict:
    """The head with every data file's sha256 filled in, plus both digests (pure)."""
    files = [{**e, "sha256": sha256_by_name[e["name"]]} for e in head["files"]]
    return {**head, "files": files, "contents_sha256": contents,
            "manifest_sha256": manifest_sha256(files)}


def build_hashes(final: dict) -> dict:
    """The bundle's HASHES.json (the trailer) for a :func:`final_manifest` (pure)."""
    return {"format": HASHES_FORMAT, "format_version": FORMAT_VERSION,
            "contents_sha256": final["contents_sha256"], "manifest_sha256": final["manifest_sha256"],
            "files": [{"name": e["name"], "sha256": e["sha256"]} for e in final["files"]]}


def parse_manifest(raw: bytes, label: str) -> dict:
    """A bundle's MANIFEST.json (head) bytes, checked (InvalidRequest)."""
    try:
        doc = json.loads(raw)
        if doc.get("format") != FORMAT or doc.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"not an {FORMAT} v{FORMAT_VERSION} manifest (format "
                             f"{doc.get('format')!r} v{doc.get('format_version')!r})")
        files = []
        for f in doc["files"]:
            _check_name_size(f["name"], f["size"], "data file")
            files.append({"name": f["name"], "size": f["size"],
                          "md5": _check_md5(f["name"], f.get("md5", ""), "data file")})
        extra = []
        for f in doc.get("extra", []):
            _check_name_size(f["name"], f["size"], "extra member")
            if f["name"] in (MANIFEST_NAME, HASHES_NAME) or f["name"].startswith(DATA_PREFIX):
                raise ValueError(f"extra member {f['name']!r} clashes with the bundle's own names")
            extra.append({"name": f["name"], "size": f["size"],
                          "sha256": _check_sha(f["name"], f["sha256"], "extra member", required=True)})
        if not isinstance(doc.get("metadata", {}), dict):
            raise ValueError("metadata must be an object")
        names = [f["name"] for f in files]
        if names != sorted(names):
            raise ValueError("its files are not sorted by name")
        _sorted_unique(files, "data file")
        _sorted_unique(list(extra), "extra member")
    except InvalidRequest as e:
        raise InvalidRequest(f"{label}: {MANIFEST_NAME} is invalid: {e}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise InvalidRequest(f"{label}: {MANIFEST_NAME} is invalid: {e}") from None
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "files": files, "extra": extra,
            "metadata": doc.get("metadata", {}), "file_count": len(files),
            "total_size": sum(f["size"] for f in files)}


def parse_hashes(raw: bytes, label: str, head: dict, contents: str) -> dict[str, str]:
    """The bundle's HASHES.json (trailer): name → sha256, consistent with the head (else Conflict)."""
    try:
        doc = json.loads(raw)
        if doc.get("format") != HASHES_FORMAT or doc.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"not an {HASHES_FORMAT} v{FORMAT_VERSION} document")
        names = [f["name"] for f in doc["files"]]
        shas = {f["name"]: _check_sha(f["name"], f["sha256"], "data file", required=True)
                for f in doc["files"]}
        stated_contents, stated = str(doc["contents_sha256"]), str(doc["manifest_sha256"])
    except InvalidRequest as e:
        raise InvalidRequest(f"{label}: {HASHES_NAME} is invalid: {e}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise InvalidRequest(f"{label}: {HASHES_NAME} is invalid: {e}") from None
    if stated_contents != contents:
        raise Conflict(f"{label}: {HASHES_NAME} belongs to another {MANIFEST_NAME}", item=label)
    if names != [f["name"] for f in head["files"]]:
        raise Conflict(f"{label}: {HASHES_NAME} does not list the files of {MANIFEST_NAME}", item=label)
    if manifest_sha256([{**f, "sha256": shas[f["name"]]} for f in head["files"]]) != stated:
        raise Conflict(f"{label}: {HASHES_NAME} does not match its own digest", item=label)
    return shas


def norm_digest(value: str) -> str:
    """A sha256 digest as 64 lower-case hex digits (``sha256:`` prefix allowed), else InvalidRequest."""
    text = value.strip().lower() if isinstance(value, str) else ""
    text = text.removeprefix("sha256:")
    if not _SHA_RE.match(text):
        raise InvalidRequest(f"{value!r} is not a sha256 digest (64 hex digits)")
    return text
