"""Browsing XNAT lazily: projects → subjects → experiments → scans → resources → files.

Each level is one XNAT request (scans come with their resources' file counts
and sizes in the experiment document), filtered by the server's scope, and
listings that can be long (subjects, experiments) are paginated with
``offset``/``limit``. The records carry what a researcher needs to choose:
labels, dates, xsiType, scan type, file counts and sizes.

Every path is built from validated identifiers (see :func:`scope.check_id`),
so a user-supplied value can never reach another XNAT path.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Generic, TypeVar

from .client import XnatClient
from .errors import InvalidRequest, OutOfScope
from .permissions import Permissions
from .scope import Scope, check_id

T = TypeVar("T")
MAX_LIMIT = 1000
#: the most characters of experiment IDs in one batched file listing (URLs stay well below 8 KB)
MAX_IDS_CHARS = 3000
_EXPERIMENT_IN_URI = re.compile(r"/experiments/([^/]+)/")


@dataclasses.dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    total: int
    offset: int
    limit: int

    @property
    def has_more(self) -> bool:
        return self.offset + len(self.items) < self.total


@dataclasses.dataclass(frozen=True)
class ProjectInfo:
    id: str
    name: str
    description: str
    role: str | None


@dataclasses.dataclass(frozen=True)
class SubjectInfo:
    id: str
    label: str
    project: str
    gender: str = ""
    yob: str = ""


@dataclasses.dataclass(frozen=True)
class ExperimentInfo:
    id: str
    label: str
    project: str
    subject_id: str
    subject_label: str
    date: str
    xsi_type: str
    modality: str = ""


@dataclasses.dataclass(frozen=True)
class ResourceInfo:
    id: str
    label: str
    format: str
    file_count: int
    size: int
    scan: str = ""


@dataclasses.dataclass(frozen=True)
class ScanInfo:
    id: str
    type: str
    series_description: str
    quality: str
    xsi_type: str
    frames: str
    resources: tuple[ResourceInfo, ...] = ()

    @property
    def file_count(self) -> int:
        return sum(r.file_count for r in self.resources)

    @property
    def size(self) -> int:
        return sum(r.size for r in self.resources)


@dataclasses.dataclass(frozen=True)
class FileInfo:
    """One file in XNAT: its REST URI, resource-relative path, size and XNAT digest (md5)."""

    uri: str
    path: str
    size: int
    md5: str
    resource: str


def _int(value) -> int:
    try:
        return int(str(value).strip() or 0)
    except ValueError:
        return 0


def paginate(items: list[T], offset: int, limit: int) -> Page[T]:
    if offset < 0 or limit < 1 or limit > MAX_LIMIT:
        raise InvalidRequest(f"offset must be ≥ 0 and limit between 1 and {MAX_LIMIT}")
    return Page(items[offset:offset + limit], len(items), offset, limit)


class Browser:
    """Scope-filtered browsing for one client."""

    def __init__(self, client: XnatClient, scope: Scope, permissions):
        self.client = client
        self.scope = scope
        self._permissions = permissions  # callable → Permissions (cached)

    def _perms(self) -> Permissions:
        return self._permissions()

    def _readable_project(self, project: str) -> None:
        check_id(project, "project")
        self.scope.check_project(project)
        self._perms().require_read(project)

    def projects(self) -> list[ProjectInfo]:
        perms = self._perms()
        wanted = set(self.scope.project_ids(list(perms.roles)))
        rows = self.client.result("/data/projects", params={"accessible": "true"}, what="projects")
        out = [ProjectInfo(r["ID"], r.get("name", ""), r.get("description", ""), perms.role(r["ID"]))
               for r in rows if r["ID"] in wanted and perms.can_read(r["ID"])]
        return sorted(out, key=lambda p: p.id)

    def subjects(self, project: str, offset: int = 0, limit: int = 100) -> Page[SubjectInfo]:
        self._readable_project(project)
        rows = self.client.result(f"/data/projects/{project}/subjects",
                                  params={"columns": "ID,label,project,gender,yob"},
                                  what=f"subjects of {project}")
        subs = [SubjectInfo(r["ID"], r.get("label", ""), project, r.get("gender", ""), r.get("yob", ""))
                for r in rows if self.scope.subject_visible(project, (r["ID"], r.get("label", "")))]
        return paginate(sorted(subs, key=lambda s: s.label), offset, limit)

    def all_experiments(self, project: str, subject: str | None = None) -> list[ExperimentInfo]:
        self._readable_project(project)
        if subject is not None:
            check_id(subject, "subject")
            path = f"/data/projects/{project}/subjects/{subject}/experiments"
        else:
            path = f"/data/projects/{project}/experiments"
        rows = self.client.result(path, params={
            "columns": "ID,label,project,date,xsiType,subject_ID,subject_label,modality"},
            what=f"experiments of {project}")
        out = []
        for r in rows:
            e = ExperimentInfo(r["ID"], r.get("label", ""), project, r.get("subject_ID", ""),
                               r.get("subject_label", ""), r.get("date", ""), r.get("xsiType", ""),
                               r.get("modality", ""))
            if self._in_scope(e):
                out.append(e)
        return sorted(out, key=lambda e: (e.subject_label, e.label))

    def experiments(self, project: str, subject: str | None = None, offset: int = 0,
                    limit: int = 100) -> Page[ExperimentInfo]:
        return paginate(self.all_experiments(project, subject), offset, limit)

    def _in_scope(self, e: ExperimentInfo) -> bool:
        try:
            self.scope.check_experiment(e.project, (e.id, e.label), (e.subject_id, e.subject_label))
            return True
        except OutOfScope:
            return False

    def experiment(self, project: str, experiment: str) -> ExperimentInfo:
        """One experiment by ID or label, scope-checked."""
        return self._experiment_doc(project, experiment)[0]

    def _experiment_doc(self, project: str, experiment: str) -> tuple[ExperimentInfo, dict]:
        self._readable_project(project)
        check_id(experiment, "experiment")
        doc = self.client.get_json(f"/data/projects/{project}/experiments/{experiment}",
                                   what=f"experiment {experiment} of {project}")
        item = doc["items"][0]
        f = item["data_fields"]
        subject_label = ""
        if self.scope.restricted and not self.scope.projects[project].whole:
            sub = self.client.get_json(f"/data/projects/{project}/subjects/{f['subject_ID']}",
                                       what=f"subject of {experiment}")
            subject_label = sub["items"][0]["data_fields"].get("label", "")
        e = ExperimentInfo(f["ID"], f.get("label", ""), project, f.get("subject_ID", ""), subject_label,
                           f.get("date", ""), item["meta"]["xsi:type"], f.get("modality", ""))
        self.scope.check_experiment(project, (e.id, e.label), (e.subject_id, e.subject_label))
        return e, item

    def scans(self, project: str, experiment: str) -> list[ScanInfo]:
        _, item = self._experiment_doc(project, experiment)
        scans = []
        for ch in item.get("children", []):
            if ch.get("field") != "scans/scan":
                continue
            for sc in ch.get("items", []):
                f = sc["data_fields"]
                res = tuple(
                    ResourceInfo(str(r["data_fields"].get("xnat_abstractresource_id", "")),
                                 r["data_fields"].get("label", ""), r["data_fields"].get("format", ""),
                                 _int(r["data_fields"].get("file_count")),
                                 _int(r["data_fields"].get("file_size")), str(f.get("ID", "")))
                    for c in sc.get("children", []) if c.get("field") == "file"
                    for r in c.get("items", []))
                scans.append(ScanInfo(str(f.get("ID", "")), f.get("type", ""),
                                      f.get("series_description", ""), f.get("quality", ""),
                                      sc["meta"]["xsi:type"], str(f.get("frames", "")), res))
        return scans

    def resources(self, project: str, experiment: str, scan: str | None = None) -> list[ResourceInfo]:
        e = self.experiment(project, experiment)
        base = f"/data/projects/{project}/experiments/{e.id}"
        if scan is not None:
            check_id(scan, "scan")
            base += f"/scans/{scan}"
        rows = self.client.result(base + "/resources", what=f"resources of {e.label}")
        return [ResourceInfo(str(r.get("xnat_abstractresource_id", "")), r.get("label", ""),
                             r.get("format", ""), _int(r.get("file_count")), _int(r.get("file_size")),
                             scan or "") for r in rows]

    def files(self, project: str, experiment: str, scan: str | None = None,
              resource: str | None = None) -> list[FileInfo]:
        """Files of one resource, of a scan (all its resources), or of an experiment's scans."""
        return self.experiment_files(self.experiment(project, experiment), scan, resource)

    def experiment_files(self, e: ExperimentInfo, scan: str | None = None,
                         resource: str | None = None) -> list[FileInfo]:
        """:meth:`files` of an experiment already looked up (and scope-checked) with :meth:`experiment`."""
        base = f"/data/projects/{e.project}/experiments/{e.id}"
        if scan is not None:
            check_id(scan, "scan")
            base += f"/scans/{scan}"
        elif resource is None:
            base += "/scans/ALL"
        if resource is not None:
            check_id(resource, "resource")
            base += f"/resources/{resource}"
        rows = self.client.result(base + "/files", what=f"files of {e.label}")
        return [_file_info(r) for r in rows]

    def scan_files(self, experiments: list[ExperimentInfo]) -> dict[str, list[FileInfo]]:
        """The files of every scan of *experiments* (from :meth:`all_experiments`, so
        readable and in scope), by experiment ID.

        One request per batch of experiments, as XNAT lists them:
        ``/data/experiments/{ID},{ID},…/scans/ALL/files`` (a comma-separated list of
        image sessions, see XNAT's ``XNATTemplate``), instead of one request per
        experiment; batches keep the URL below :data:`MAX_IDS_CHARS`.
        """
        wanted = {e.id: e for e in experiments}
        out: dict[str, list[FileInfo]] = {e.id: [] for e in experiments}
        for batch in _batches([check_id(e.id, "experiment") for e in experiments]):
            rows = self.client.result(f"/data/experiments/{','.join(batch)}/scans/ALL/files",
                                      what=f"files of {len(batch)} experiments")
            for r in rows:
                f = _file_info(r)
                m = _EXPERIMENT_IN_URI.search(f.uri)
                if m is None or m.group(1) not in wanted:
                    continue  # never anything we did not ask for
                out[m.group(1)].append(f)
        return out


def _file_info(r: dict) -> FileInfo:
    uri = r["URI"]
    path = uri.split("/files/", 1)[1] if "/files/" in uri else r.get("Name", "")
    return FileInfo(uri, path, _int(r.get("Size")), r.get("digest", ""), r.get("collection", ""))


def _batches(ids: list[str]) -> list[list[str]]:
    out: list[list[str]] = []
    size = MAX_IDS_CHARS + 1
    for i in ids:
        if size + len(i) + 1 > MAX_IDS_CHARS:
            out.append([])
            size = 0
        out[-1].append(i)
        size += len(i) + 1
    return out
