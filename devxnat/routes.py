"""Parse XNAT REST paths into a :class:`Route` (pure; unit-tested).

XNAT addresses the same item through several paths; all of these are accepted,
as XNAT does::

    /data/projects/{P}/subjects/{S}/experiments/{E}/scans/{scan}/resources/{R}/files/{path}
    /data/projects/{P}/experiments/{E}/...
    /data/experiments/{E}/...
    /data/projects/{P}/resources/{R}/files/{path}
    /data/projects/{P}/subjects/{S}/resources/{R}/files/{path}
    /data/subjects/{S}[/resources/{R}/files/{path}]
    /data/archive/...   and   /REST/...   (aliases of /data/...)

``{scan}`` may be a comma-separated list or ``ALL`` for file listings and zip
downloads; ``{path}`` may contain slashes. Every segment is checked: empty,
``.`` and ``..`` segments, NUL bytes and backslashes are refused.
"""

from __future__ import annotations

import dataclasses
from urllib.parse import unquote

from .errors import BadRequest, NotFound


@dataclasses.dataclass(frozen=True)
class Route:
    """What a ``/data/...`` path addresses.

    ``kind`` is the last level named (``projects``, ``project``, ``subjects``,
    ``subject``, ``experiments``, ``experiment``, ``scans``, ``scan``,
    ``resources``, ``resource``, ``files``, ``file``, ``users``, ``user``,
    ``groups``); the other fields are the identifiers on the way (labels or IDs,
    as the client wrote them).
    """

    kind: str
    project: str | None = None
    subject: str | None = None
    experiment: str | None = None
    scan: str | None = None
    resource: str | None = None
    file: str | None = None
    group: str | None = None
    user: str | None = None


_PREFIXES = (("data", "archive"), ("REST", "archive"), ("data",), ("REST",))


def split_path(path: str) -> list[str]:
    """URL path → decoded segments, with the ``/data[/archive]`` prefix removed."""
    if "\x00" in path or "\\" in path:
        raise BadRequest("invalid character in path")
    raw = path.strip("/").split("/")
    for prefix in _PREFIXES:
        if tuple(raw[: len(prefix)]) == prefix:
            raw = raw[len(prefix):]
            break
    else:
        raise NotFound(f"no such resource: {path}")
    segments = [unquote(s) for s in raw]
    for seg in segments:
        if seg in ("", ".", "..") or "/" in seg or "\x00" in seg or "\\" in seg:
            raise BadRequest(f"invalid path segment {seg!r} in {path}")
    return segments


def parse(path: str) -> Route:
    """Parse a ``/data/...`` path; NotFound for paths XNAT does not have."""
    seg = split_path(path)
    fields: dict[str, str] = {}
    if not seg:
        raise NotFound(f"no such resource: {path}")
    head, rest = seg[0], seg[1:]
    if head == "projects":
        if not rest:
            return Route("projects")
        fields["project"], rest = rest[0], rest[1:]
        if not rest:
            return Route("project", **fields)
        if rest[0] == "users":
            return _users(rest[1:], fields, path)
        if rest[0] == "groups" and len(rest) == 1:
            return Route("groups", **fields)
        if rest[0] == "subjects":
            if len(rest) == 1:
                return Route("subjects", **fields)
            fields["subject"], rest = rest[1], rest[2:]
            if not rest:
                return Route("subject", **fields)
            if rest[0] != "experiments":
                return _resources(rest, fields, "subject", path)
        if rest[0] == "experiments":
            return _experiment(rest[1:], fields, path)
        return _resources(rest, fields, "project", path)
    if head == "subjects" and len(rest) == 1:
        return Route("subject", subject=rest[0])
    if head == "subjects" and len(rest) > 1:  # a subject's resources by its ID
        return _resources(rest[1:], {"subject": rest[0]}, "subject", path)
    if head == "experiments":
        return _experiment(rest, fields, path)
    raise NotFound(f"no such resource: {path}")


def _users(rest: list[str], fields: dict, path: str) -> Route:
    if not rest:
        return Route("users", **fields)
    if len(rest) == 2:
        return Route("user", group=rest[0], user=rest[1], **fields)
    raise NotFound(f"no such resource: {path}")


def _experiment(rest: list[str], fields: dict, path: str) -> Route:
    if not rest:
        return Route("experiments", **fields)
    fields["experiment"], rest = rest[0], rest[1:]
    if not rest:
        return Route("experiment", **fields)
    if rest[0] == "scans":
        if len(rest) == 1:
            return Route("scans", **fields)
        fields["scan"], rest = rest[1], rest[2:]
        if not rest:
            return Route("scan", **fields)
        return _resources(rest, fields, "scan", path)
    return _resources(rest, fields, "experiment", path)


def _resources(rest: list[str], fields: dict, owner: str, path: str) -> Route:
    """``resources[/{R}[/files[/{path}]]]`` or ``files`` below an owner item."""
    if rest == ["files"] and owner in ("scan", "experiment", "subject", "project"):
        return Route("files", **fields)
    if rest[0] != "resources":
        raise NotFound(f"no such resource: {path}")
    if len(rest) == 1:
        return Route("resources", **fields)
    fields["resource"], rest = rest[1], rest[2:]
    if not rest:
        return Route("resource", **fields)
    if rest[0] != "files":
        raise NotFound(f"no such resource: {path}")
    if len(rest) == 1:
        return Route("files", **fields)
    return Route("file", file="/".join(rest[1:]), **fields)
