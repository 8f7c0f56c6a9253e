"""Pure helpers of the REST API: request parsing and JSON shapes.

Everything here is a plain function of its inputs (no XNAT, no Slurm, no
tornado), so the shapes of ``rest.md``/``openapi.yaml`` and the validation of
client input are tested without infrastructure. The handlers only wire these
to the :class:`~xnat_bridge.connection.Connection` and the offload manager.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from ..errors import InvalidRequest, NotFound
from ..scope import check_id

#: the most subjects/experiments one page may hold
MAX_PAGE = 500
DEFAULT_PAGE = 100
#: ``GET scripts``: how deep below the root dir, how many at most
SCRIPT_DEPTH = 3
SCRIPT_LIMIT = 500
_SKIP_DIRS = {"__pycache__", "node_modules", "site-packages"}

JOB_ID_RE = re.compile(r"^j[0-9a-f]{12}$")
_JOB_FIELDS = {"dataset": str, "dataset_version": int, "script": str, "partition": str,
               "cpus": int, "memory": (str, int), "gpus": int, "walltime": (str, int),
               "client_token": str}


# -- query arguments ----------------------------------------------------------

def int_arg(value: str | None, name: str, default: int, lo: int, hi: int | None = None) -> int:
    """Parse a query argument as an integer within [lo, hi]; InvalidRequest naming it otherwise."""
    if value is None or value == "":
        return default
    try:
        n = int(value)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer, got {value!r}", item=name) from None
    if n < lo or (hi is not None and n > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise InvalidRequest(f"{name} must be {bound}, got {n}", item=name)
    return n


def page_args(offset: str | None, limit: str | None) -> tuple[int, int]:
    return (int_arg(offset, "offset", 0, 0),
            int_arg(limit, "limit", DEFAULT_PAGE, 1, MAX_PAGE))


def check_job_id(job_id: str) -> str:
    if not JOB_ID_RE.match(job_id or ""):
        raise NotFound(f"no job {job_id[:40]!r}: job ids look like j3fa94c0d12ab", item=job_id[:40])
    return job_id


# -- browsing shapes ------------------------------------------------------------

def item_json(obj) -> dict:
    return dataclasses.asdict(obj)


def page_json(page) -> dict:
    return {"items": [item_json(i) for i in page.items], "total": page.total,
            "offset": page.offset, "limit": page.limit}


def scan_json(scan) -> dict:
    return {"id": scan.id, "type": scan.type, "series_description": scan.series_description,
            "quality": scan.quality, "xsi_type": scan.xsi_type, "frames": scan.frames,
            "file_count": scan.file_count, "size": scan.size,
            "resources": [item_json(r) for r in scan.resources]}


def scope_json(user: str, host: str, scope, data_mode: str) -> dict:
    projects = None
    if scope.projects is not None:
        projects = {p: {"subjects": sorted(ps.subjects), "experiments": sorted(ps.experiments)}
                    for p, ps in sorted(scope.projects.items())}
    return {"user": user, "xnat_host": host, "scope": projects, "data_mode": data_mode}


# -- datasets -----------------------------------------------------------------

def manifest_sha256(manifest) -> str:
    """The dataset's content hash as the offload layer records it (``JobRecord.manifest_sha256``):
    sha256 hex of the canonical list of file names, sizes and sha256s — "" until every file's
    sha256 is known (a dataset is metadata until its first staging records them)."""
    from ..staging import manifest_sha256 as digest

    if not all(f.sha256 for f in manifest.files):
        return ""
    return digest([{"name": f.name, "size": f.size, "sha256": f.sha256} for f in manifest.files])


def dataset_summary(manifest, versions: list[int]) -> dict:
    return {"name": manifest.name, "version": manifest.version, "versions": list(versions),
            "file_count": len(manifest.files), "total_size": manifest.total_size,
            "created": manifest.created, "manifest_sha256": manifest_sha256(manifest),
            "selection": manifest.selection}


def dataset_detail(manifest, versions: list[int]) -> dict:
    out = dataset_summary(manifest, versions)
    out["files"] = [{"name": f.name, "uri": f.uri, "size": f.size, "sha256": f.sha256}
                    for f in manifest.files]
    return out


def parse_dataset_body(body) -> tuple[str, list]:
    if not isinstance(body, dict):
        raise InvalidRequest('the body must be a JSON object {"name": ..., "selection": [...]}')
    unknown = set(body) - {"name", "selection"}
    if unknown:
        raise InvalidRequest(f"unknown fields {sorted(unknown)}; expected name and selection")
    if "name" not in body:
        raise InvalidRequest("a dataset needs a name", item="name")
    return body["name"], body.get("selection")


# -- scripts --------------------------------------------------------------------

def list_scripts(root_dir: str | Path, *, depth: int = SCRIPT_DEPTH, limit: int = SCRIPT_LIMIT,
                 skip: tuple[str | Path, ...] = ()) -> list[dict]:
    """``.py`` files under *root_dir* (in directories at most *depth* levels down), sorted.

    Hidden files and directories, ``__pycache__``/``node_modules``/``site-packages``,
    the directories in *skip* and links leading outside the root are left out;
    at most *limit* entries.
    """
    root = Path(os.path.realpath(root_dir))
    skipped = {os.path.realpath(s) for s in skip}
    found: list[dict] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = os.path.relpath(dirpath, root)
        level = 0 if rel_dir == "." else rel_dir.count(os.sep) + 1
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in _SKIP_DIRS
                             and os.path.join(dirpath, d) not in skipped and level < depth)
        for name in sorted(filenames):
            if name.startswith(".") or not name.endswith(".py"):
                continue
            full = os.path.join(dirpath, name)
            real = os.path.realpath(full)
            if not real.startswith(str(root) + os.sep) or not os.path.isfile(real):
                continue
            rel = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
            found.append({"path": rel, "size": os.path.getsize(real)})
            if len(found) >= limit:
                return sorted(found, key=lambda s: s["path"])
    return sorted(found, key=lambda s: s["path"])


# -- jobs ---------------------------------------------------------------------

def parse_job_body(body) -> dict:
    """Validate the shape of ``POST jobs``: a JSON object, known fields, JSON types.

    Values are the manager's to check (:meth:`OffloadManager.submit_once`): the
    resources against the policy, the script with the one resolver
    (:func:`xnat_bridge.offload.inputs.resolve_script`), the client_token's syntax
    and whether it names a job already.
    """
    if not isinstance(body, dict):
        raise InvalidRequest('the body must be a JSON object {"dataset": ..., "script": ...}')
    unknown = set(body) - set(_JOB_FIELDS)
    if unknown:
        raise InvalidRequest(f"unknown fields {sorted(unknown)}; expected some of {sorted(_JOB_FIELDS)}")
    for key in ("dataset", "script"):
        if not body.get(key):
            raise InvalidRequest(f"a job needs a {key}", item=key)
    out = {}
    for key, kind in _JOB_FIELDS.items():
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, kind):
            names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            want = names.replace("str", "a string").replace("int", "an integer")
            raise InvalidRequest(f"{key} must be {want}, got {value!r}", item=key)
        out[key] = value
    return out


def job_json(record, progress: dict | None = None) -> dict:
    """A job as the REST API shows it: the registry's record plus ``progress``, the live staging
    progress (:meth:`OffloadManager.progress`) while the job is staging, else null."""
    out = record.to_json()
    out["progress"] = progress if out.get("state") == "staging" and progress else None
    return out


def jobs_json(records, progress_of) -> dict:
    """``GET jobs``: every record, ``progress_of(job_id)`` asked only for staging jobs."""
    return {"items": [job_json(r, progress_of(r.id) if getattr(r.state, "value", r.state) == "staging"
                               else None) for r in records]}


def display_path(path: str | Path, root_dir: str | Path) -> str:
    """*path* relative to *root_dir* when inside it, else absolute."""
    real = os.path.realpath(path)
    root = os.path.realpath(root_dir)
    if real == root:
        return "."
    if real.startswith(root + os.sep):
        return os.path.relpath(real, root).replace(os.sep, "/")
    return real


def results_json(results: dict, root_dir: str | Path) -> dict:
    out = dict(results)
    out["path"] = display_path(results["path"], root_dir)
    return out


def parse_publish_body(body) -> str | None:
    """The project to publish to, from ``{"project": …}`` or no body (pure)."""
    if body is None:
        return None
    if not isinstance(body, dict) or set(body) - {"project"}:
        raise InvalidRequest("the body may name only 'project' (the project to publish the results to)")
    project = body.get("project")
    return None if project in (None, "") else check_id(project, "project")


def publication_json(done: dict) -> dict:
    """What the API answers for a publication (pure)."""
    return {k: done[k] for k in ("resource", "url", "files", "bytes", "allowed_signers")}


def parse_share_body(body) -> str:
    """The guest of ``{"user": NAME}`` (pure): a hub user's name."""
    if not isinstance(body, dict) or set(body) != {"user"} or not isinstance(body["user"], str) \
            or not body["user"] or "/" in body["user"] or len(body["user"]) > 255:
        raise InvalidRequest('the body must be {"user": NAME}: the hub user to share this server with')
    return body["user"]
