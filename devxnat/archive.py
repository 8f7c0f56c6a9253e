"""The archive directory in XNAT's layout, and safe path resolution in it.

Layout (as XNAT's default ``arc001`` archive; project and subject resources as XNAT's
``DefaultCatalogService`` places them, docs/xnat-resource-api.md §2 step 6)::

    {archive}/{PROJECT}/arc001/{session_label}/SCANS/{scan_id}/{resource_label}/{file path}
    {archive}/{PROJECT}/arc001/{session_label}/RESOURCES/{resource_label}/{file path}
    {archive}/{PROJECT}/resources/{resource_label}/{file path}
    {archive}/{PROJECT}/subjects/{subject_label}/{resource_label}/{file path}

Nothing outside ``archive`` is ever served: every relative path is checked
segment by segment (no empty, ``.`` or ``..`` segments, no absolute paths, no
backslashes or NUL bytes), and the resolved real path (symlinks followed) must
still lie inside the archive's real path.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import BadRequest, NotFound

ARC = "arc001"


def check_relpath(rel: str) -> list[str]:
    """Split a client-supplied relative path into safe segments or raise BadRequest."""
    if not rel:
        raise BadRequest("empty path")
    if "\x00" in rel or "\\" in rel:
        raise BadRequest("invalid character in path")
    if rel.startswith("/") or (len(rel) > 1 and rel[1] == ":"):
        raise BadRequest("absolute paths are not allowed")
    parts = rel.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise BadRequest("path segments '', '.' and '..' are not allowed")
    return parts


def safe_join(root: Path, *segments: str) -> Path:
    """``root/segments...`` after checking every segment; raises BadRequest."""
    for seg in segments:
        check_relpath(seg)
    return root.joinpath(*segments)


def resource_dir(archive: Path, project: str, session_label: str, scan_id: str, resource_label: str) -> Path:
    """Directory of a scan resource (scan_id set) or a session resource (scan_id '')."""
    if scan_id:
        return safe_join(archive, project, ARC, session_label, "SCANS", scan_id, resource_label)
    return safe_join(archive, project, ARC, session_label, "RESOURCES", resource_label)


def project_resource_dir(archive: Path, project: str, resource_label: str) -> Path:
    """Directory of a project's resource."""
    return safe_join(archive, project, "resources", resource_label)


def subject_resource_dir(archive: Path, project: str, subject_label: str, resource_label: str) -> Path:
    """Directory of a subject's resource: below the subject's label (XNAT's
    ``getArchiveDirectoryName``), in its project's archive."""
    return safe_join(archive, project, "subjects", subject_label, resource_label)


def resolve_inside(archive: Path, path: Path) -> Path:
    """Real path of ``path`` if it exists as a regular file inside the archive.

    Raises NotFound when it is missing or not a regular file, BadRequest
    when it (through a symlink anywhere on the way) leads outside the archive.
    """
    root = Path(os.path.realpath(archive))
    real = Path(os.path.realpath(path))
    if real != root and root not in real.parents:
        raise BadRequest("path leads outside the archive")
    if not real.is_file():
        raise NotFound("file not found")
    return real
