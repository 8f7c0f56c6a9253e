"""``/data/...``: projects, project users, subjects, experiments, scans,
resources and files, with XNAT's permissions (see :mod:`.access`).

Resources belong to projects, subjects, experiments or scans (:mod:`.resource_owner`);
they are listed, read and downloaded the same way at every level, and written by
:mod:`.resource_write`. Files are served from the archive directory only after their
real path (all symlinks followed) is checked to lie inside the archive; single files
honour HTTP ``Range`` (resumable downloads); ``.../files?format=zip`` streams a zip in
XNAT's layout (``{session}/scans/{id}-{type}/resources/{label}/files/{path}``,
``{session}/resources/…``, ``{subject label}/resources/…``, ``{project}/resources/…``).
As in XNAT, ``/experiments/{E1},{E2},…/scans/ALL/files`` lists the scan files of
several image sessions in one answer.
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import os
import re
import tempfile
import zipfile
from pathlib import Path

from tornado.iostream import StreamClosedError
from tornado.web import stream_request_body

from . import archive as arc
from . import listing_formats, routes, shapes
from .access import ROLE_OF_GROUP
from .errors import BadRequest, Forbidden, MethodNotAllowed, NotFound
from .handler import BaseHandler
from .resource_owner import Owner
from .resource_write import ResourceWrites, Upload, flag
from .store import GROUP_SUFFIX, GROUPS

CHUNK = 1 << 20
#: the largest body a write takes (a result file; XNAT's own limit is the servlet container's)
MAX_UPLOAD = 64 << 30
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


def group_name(project: str, group: str) -> str | None:
    """XNAT's project group named by display name or group id → the display name."""
    for g in GROUPS:
        if group in (g, GROUP_SUFFIX[g], f"{project}_{GROUP_SUFFIX[g]}"):
            return g
    return None


@stream_request_body
class DataHandler(BaseHandler):
    """One handler for the whole ``/data`` tree; :func:`routes.parse` says what is meant."""

    async def get(self):
        route = routes.parse(self.request.path)
        fmt = self.get_argument("format", "json").lower()
        if route.kind == "file":
            await self._send_file(*self._file(route))
            return
        if route.kind == "files" and fmt == "zip":
            await self._send_zip(route)
            return
        if fmt not in ("json", "", "csv", "xml"):
            raise BadRequest(f"format={fmt} is not supported by the development server; "
                             "use json, csv or xml")
        doc = getattr(self, f"_get_{route.kind}")(route)
        if fmt in ("csv", "xml"):
            if "ResultSet" not in doc:
                raise BadRequest(f"format={fmt} is answered for listings only by the development "
                                 "server; use json for single items")
            self.set_header("Content-Type", listing_formats.CONTENT_TYPES[fmt])
            self.finish(listing_formats.render(doc, fmt))
            return
        self.write_json(doc)

    async def head(self):
        route = routes.parse(self.request.path)
        if route.kind != "file":
            raise MethodNotAllowed("HEAD is answered for single files only")
        await self._send_file(*self._file(route), body=False)

    # -- writes: project members, resources and files (devxnat.resource_write) -----------------
    _upload: Upload | None = None

    async def prepare(self):
        await super().prepare()
        if self.request.method in ("PUT", "POST") and routes.parse(self.request.path).kind in ("file", "files"):
            # only an upload's body is spooled (a member's or a resource's PUT has none to keep)
            self.request.connection.set_max_body_size(MAX_UPLOAD)
            self._upload = Upload(Path(self.archive).parent / "spool")

    def data_received(self, chunk: bytes) -> None:
        if self._upload is not None:
            self._upload.feed(chunk)

    def on_finish(self):
        if self._upload is not None:
            self._upload.discard()

    def on_connection_close(self):
        if self._upload is not None:
            self._upload.discard()

    def _writes(self) -> ResourceWrites:
        return ResourceWrites(self.store, self.archive, self.access(), self._owner)

    def put(self):
        route = routes.parse(self.request.path)
        if route.kind == "user":
            self._change_member(route, add=True)
        elif route.kind == "resource":
            self._writes().create_resource(route, format=self.get_argument("format", ""),
                                           content=self.get_argument("content", ""))
            self.finish()
        elif route.kind in ("file", "files") and route.resource is not None:
            duplicates = self._writes().upload(
                route, self._upload, self.request.headers.get("Content-Type", ""),
                inbody=flag(self.get_argument("inbody", None)), overwrite=flag(self.get_argument("overwrite", None)),
                format=self.get_argument("format", ""), content=self.get_argument("content", ""),
                length_known="Content-Length" in self.request.headers)
            if duplicates:
                self.set_header("Content-Type", "text/html")
                self.finish(json.dumps(duplicates))
            else:
                self.set_header("Content-Type", "text/plain")
                self.finish()
        else:
            raise MethodNotAllowed("the development server writes project members, and resources and "
                                   "files of projects, subjects, experiments and scans; nothing else "
                                   "of the archive")

    post = put  # XNAT: handlePut() { handlePost(); }

    def delete(self):
        route = routes.parse(self.request.path)
        if route.kind == "user":
            self._change_member(route, add=False)
        elif route.kind == "resource":
            self._writes().delete_resource(route)
            self.finish()
        elif route.kind in ("file", "files") and route.resource is not None:
            self._writes().delete_files(route, remove_files=self.get_argument("removeFiles", "true").lower()
                                        not in ("false", "0"))
            self.finish()
        else:
            raise MethodNotAllowed("the development server deletes project members, and resources and "
                                   "files of projects, subjects, experiments and scans; nothing else "
                                   "of the archive")

    # -- projects and users ---------------------------------------------------
    def _get_projects(self, route):
        flag = lambda name: self.get_argument(name, "").lower() == "true"  # noqa: E731
        rows = self.access().listed_projects(
            accessible=flag("accessible"), owner=flag("owner"), member=flag("member"),
            collaborator=flag("collaborator"),
        )
        return shapes.result_set((shapes.project_row(p) for p in rows),
                                 self.get_argument("columns", None), "Projects")

    def _get_project(self, route):
        return shapes.items_doc(shapes.project_item(self.access().readable_project(route.project)))

    def _get_users(self, route):
        acc = self.access()
        row = acc.readable_project(route.project)
        if not acc.can_manage(row):  # ProjectUserListResource: owners and site admins only
            raise Forbidden(f"User {self.login} may not list the users of project {route.project}: "
                            "only its owners and site administrators may")
        rows = []
        for m in self.store.project_members(route.project):
            rows.append({
                "login": m["login"], "firstname": m["firstname"], "lastname": m["lastname"],
                "email": m["email"], "displayname": m["grp"],
                "GROUP_ID": f"{route.project}_{GROUP_SUFFIX[m['grp']]}",
                "role": ROLE_OF_GROUP[m["grp"]],
                "xdat_user_id": m["xdat_user_id"], "enabled": bool(m["enabled"]),
            })
        return shapes.result_set(rows, self.get_argument("columns", None), "Users")

    def _get_groups(self, route):
        self.access().readable_project(route.project)
        rows = [{"id": f"{route.project}_{GROUP_SUFFIX[g]}", "displayname": g, "tag": route.project}
                for g in GROUPS]
        return shapes.result_set(rows, self.get_argument("columns", None), "Groups")

    def _get_user(self, route):
        raise NotFound(self.request.path)

    def _change_member(self, route, *, add: bool) -> None:
        """``ProjectMemberResource``: the group by id (``{P}_owner``), short id (``owner``) or
        display name (``Owners``); users (comma-separated) by login, xdat_user_id or email;
        who may ``canDelete`` the project (owners, ALL_DATA_ADMIN, site admins). 404 when the
        group is unknown or none of the users is known; unknown users among known ones are left
        out (XNAT e-mails them an invitation; devxnat sends no mail)."""
        acc = self.access()
        acc.managed_project(route.project)
        group = group_name(route.project, route.group)
        if group is None:
            raise NotFound(f"Unable to identify group {route.group} of project {route.project}; use "
                           f"{', '.join(GROUPS)} or "
                           f"{', '.join(route.project + '_' + GROUP_SUFFIX[g] for g in GROUPS)}")
        logins = [lg for lg in (self._find_user(u.strip()) for u in route.user.split(",") if u.strip())
                  if lg is not None]
        if not logins:
            raise NotFound(f"Unable to find user {route.user}")
        for login in logins:
            if add:
                self.store.set_member(route.project, login, group)
            elif self.store.group_of(route.project, login) == group:
                self.store.remove_member(route.project, login)
        self.write_json({})

    def _find_user(self, ident: str) -> str | None:
        if ident.isdigit():
            row = next((u for u in self.store.users() if u["xdat_user_id"] == int(ident)), None)
            return row["login"] if row else None
        if self.store.user(ident) is not None:
            return ident
        row = next((u for u in self.store.users() if u["email"] == ident), None)
        return row["login"] if row else None

    # -- subjects and experiments ---------------------------------------------
    def _subject(self, route):
        acc = self.access()
        if route.project is not None:
            acc.readable_project(route.project)
            sub = self.store.subject(route.project, route.subject)
        else:
            sub = self.store.subject_by_id(route.subject)
            if sub is not None:
                acc.readable_project(sub["project"])
        if sub is None:
            raise NotFound(f"Unable to find subject {route.subject}")
        return sub

    def _get_subjects(self, route):
        self.access().readable_project(route.project)
        rows = (shapes.subject_row(s) for s in self.store.subjects(route.project))
        return shapes.result_set(rows, self.get_argument("columns", None), "Subjects")

    def _get_subject(self, route):
        return shapes.items_doc(shapes.subject_item(self._subject(route)))

    def _experiment(self, route):
        acc = self.access()
        if route.project is not None:
            acc.readable_project(route.project)
            e = self.store.experiment(route.experiment, route.project)
            if e is not None and route.subject is not None:
                sub = self._subject(route)
                if e["subject_id"] != sub["id"]:
                    e = None
        else:
            e = self.store.experiment(route.experiment)
            if e is not None:
                acc.readable_project(e["project"])
        if e is None:
            raise NotFound(f"Unable to find experiment {route.experiment}")
        return e

    def _get_experiments(self, route):
        acc = self.access()
        if route.subject is not None:
            sub = self._subject(route)
            rows = self.store.experiments(subject_id=sub["id"])
        elif route.project is not None:
            acc.readable_project(route.project)
            rows = self.store.experiments(project=route.project)
        else:
            wanted = self.get_argument("project", None)
            readable = [p["id"] for p in acc.listed_projects(accessible=True)]
            if wanted is not None:
                readable = [p for p in readable if p == wanted]
            rows = self.store.experiments(projects=readable)
        xsi = self.get_argument("xsiType", None)
        if xsi:
            rows = [r for r in rows if r["xsi_type"] == xsi]
        columns = self.get_argument("columns", None)
        extra = bool(columns and re.search(r"subject_|modality|insert_user", columns))
        return shapes.result_set((shapes.experiment_row(r, extra=extra) for r in rows),
                                 columns, "Experiments")

    def _get_experiment(self, route):
        e = self._experiment(route)
        scans = [(sc, self.store.resources(e["id"], sc["scan_id"])) for sc in self.store.scans(e["id"])]
        return shapes.items_doc(shapes.experiment_item(e, scans, self.store.resources(e["id"], "")))

    # -- scans and resources -------------------------------------------------
    def _scan(self, route):
        e = self._experiment(route)
        sc = self.store.scan(e["id"], route.scan)
        if sc is None:
            raise NotFound(f"Unable to find scan {route.scan} of {e['label']}")
        return e, sc

    def _get_scans(self, route):
        e = self._experiment(route)
        rows = (shapes.scan_row(e["id"], sc) for sc in self.store.scans(e["id"]))
        # like XNAT, scan, resource and file listings ignore ``columns``
        return shapes.result_set(rows, None, "Scans")

    def _get_scan(self, route):
        e, sc = self._scan(route)
        return shapes.items_doc(shapes.scan_item(e, sc, self.store.resources(e["id"], sc["scan_id"])))

    def _owner(self, route) -> Owner:
        """The item that owns the route's resources (XNAT's ``XNATTemplate`` resolves it the
        same way for every method), readable by the user. A project or subject that does not
        exist: 404 "Unable to identify project" / "Unable to identify subject", XNAT's messages
        (docs/xnat-resource-api.md §1); a project that may not be read: 403 here, which
        :class:`.resource_write.ResourceWrites` answers as XNAT does (404)."""
        if route.experiment is not None:
            if route.scan is not None:
                e, sc = self._scan(route)
            else:
                e, sc = self._experiment(route), None
            return Owner(self.store.project(e["project"]), experiment=e, scan=sc)
        acc = self.access()
        if route.project is not None:
            project = self.store.project(route.project)
            if project is None:
                raise NotFound("Unable to identify project")
            acc.readable_project(route.project)
            if route.subject is None:
                return Owner(project)
            sub = self.store.subject(route.project, route.subject)
        else:  # /data/subjects/{ID}/resources
            sub = self.store.subject_by_id(route.subject)
        if sub is None:
            raise NotFound("Unable to identify subject")
        acc.readable_project(sub["project"])
        return Owner(self.store.project(sub["project"]), subject=sub)

    def _get_resources(self, route):
        owner = self._owner(route)
        rows = (shapes.resource_row(r, owner.cat_desc) for r in self.store.resources_of(owner.key))
        return shapes.result_set(rows, None, "Resources")

    def _resource(self, route):
        """(owner, resource row) of a ``.../resources/{R}`` route, by id or label."""
        owner = self._owner(route)
        r = self.store.resource_of(owner.key, route.resource)
        if r is None:
            raise NotFound(f"Unable to find resource {route.resource}")
        return owner, r

    def _get_resource(self, route):
        owner, r = self._resource(route)
        return shapes.items_doc(shapes.resource_item(r, owner.resource_uri(r["id"])))

    def _resources_for_files(self, route):
        """[(owner, resource)] a ``.../files`` route covers (scan lists and ALL too)."""
        if route.experiment is not None and "," in route.experiment and route.scan is not None \
                and route.resource is None:
            return self._sessions_scan_resources(route)
        if route.resource is not None:
            return [self._resource(route)]
        if route.scan is None:
            owner = self._owner(route)
            return [(owner, r) for r in self.store.resources_of(owner.key)]
        e = self._experiment(route)
        scans = self.store.scans(e["id"])
        if route.scan.upper() != "ALL":
            wanted = route.scan.split(",")
            known = {sc["scan_id"] for sc in scans}
            missing = [w for w in wanted if w not in known]
            if missing:
                raise NotFound(f"Unable to find scan {missing[0]} of {e['label']}")
            scans = [sc for sc in scans if sc["scan_id"] in wanted]
        return self._scan_resources(e, scans)

    def _scan_resources(self, e, scans):
        """[(owner, resource)] of the scans *scans* of the session *e*."""
        project = self.store.project(e["project"])
        owners = [Owner(project, experiment=e, scan=sc) for sc in scans]
        return [(owner, r) for owner in owners for r in self.store.resources_of(owner.key)]

    def _sessions_scan_resources(self, route):
        """``/experiments/{E1},{E2},…/scans/{ALL|ids}/files``: XNAT's FileList takes a
        comma-separated list of image sessions and lists the scan files of those the
        user may read (sessions not found or not readable are left out, as XNAT's
        ``XNATTemplate`` does); 404 when none is left."""
        acc = self.access()
        sessions = []
        for part in route.experiment.split(","):
            e = self.store.experiment(part, route.project)
            if e is None:
                continue
            try:
                acc.readable_project(e["project"])
            except (NotFound, Forbidden):
                continue
            sessions.append(e)
        if not sessions:
            raise NotFound(f"Unable to find experiment {route.experiment}")
        everything = route.scan.upper() == "ALL"
        wanted = set(route.scan.split(","))
        return [pair for e in sessions for pair in self._scan_resources(
            e, [sc for sc in self.store.scans(e["id"]) if everything or sc["scan_id"] in wanted])]

    def _get_files(self, route):
        rows = []
        for owner, r in self._resources_for_files(route):
            uri = owner.resource_uri(r["id"])
            rows.extend(shapes.file_row(uri, f, r) for f in self.store.files(r["id"]))
        return shapes.result_set(rows, None, "Files")

    # -- file contents ---------------------------------------------------------
    def _disk_path(self, owner: Owner, r, relpath: str) -> Path:
        base = owner.directory(self.archive, r["label"])
        return arc.resolve_inside(self.archive, arc.safe_join(base, relpath))

    def _file(self, route):
        arc.check_relpath(route.file)
        owner, r = self._resource(route)
        row = self.store.file(r["id"], route.file)
        if row is None:
            raise NotFound(f"Unable to find file {route.file}")
        return self._disk_path(owner, r, route.file), row

    async def _send_file(self, real: Path, row, body: bool = True) -> None:
        size = real.stat().st_size
        start, end = 0, size - 1
        rng = self.request.headers.get("Range")
        if rng:
            m = _RANGE_RE.match(rng.strip())
            if not m or (not m.group(1) and not m.group(2)):
                self._unsatisfiable(size)
                return
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:  # suffix range: the last N bytes
                start = max(0, size - int(m.group(2)))
            if start >= size or start > end:
                self._unsatisfiable(size)
                return
            self.set_status(206)
            self.set_header("Content-Range", f"bytes {start}-{end}/{size}")
        ctype = mimetypes.guess_type(real.name)[0] or "application/octet-stream"
        self.set_header("Content-Type", ctype)
        self.set_header("Content-Length", str(end - start + 1))
        self.set_header("Accept-Ranges", "bytes")
        self.set_header("ETag", f'"{row["md5"]}"')
        if not body:
            self.finish()
            return
        await self._stream(real, start, end - start + 1)

    def _unsatisfiable(self, size: int) -> None:
        self.set_status(416)
        self.set_header("Content-Range", f"bytes */{size}")
        self.finish()

    async def _stream(self, path: Path, offset: int, length: int) -> None:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                while length > 0:
                    chunk = f.read(min(CHUNK, length))
                    if not chunk:
                        break
                    length -= len(chunk)
                    self.write(chunk)
                    await self.flush()
        except StreamClosedError:
            return
        self.finish()

    async def _send_zip(self, route) -> None:
        members = []
        for owner, r in self._resources_for_files(route):
            folder = owner.zip_folder()
            for f in self.store.files(r["id"]):
                real = self._disk_path(owner, r, f["path"])
                members.append((real, f"{folder}/resources/{r['label']}/files/{f['path']}"))
        if not members:
            raise NotFound("no files to download")
        fd, tmp = tempfile.mkstemp(prefix="devxnat-zip-")
        os.close(fd)
        try:
            await asyncio.get_running_loop().run_in_executor(None, _write_zip, tmp, members)
            self.set_header("Content-Type", "application/zip")
            self.set_header("Content-Disposition", 'attachment; filename="download.zip"')
            size = os.path.getsize(tmp)
            self.set_header("Content-Length", str(size))
            await self._stream(Path(tmp), 0, size)
        finally:
            os.unlink(tmp)


def _write_zip(path: str, members: list[tuple[Path, str]]) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
        for real, name in members:
            z.write(real, name)
