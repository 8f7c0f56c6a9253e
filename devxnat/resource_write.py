"""Writing resources and their files, as XNAT's ``CatalogResource`` and ``FileList`` do.

Checked against XNAT 1.8's source (``org.nrg.xnat.restlet.resources.files``;
docs/xnat-resource-api.md cites the lines), for the resources of projects, subjects,
experiments and scans (:mod:`.resource_owner`):

``PUT|POST .../resources/{R}[?format=&content=]``
    creates the resource: **200, empty** (no id: clients list to find it); **409** "Specified
    resource already exists."; **403** "User account doesn't have permission to modify this
    session." for who may not edit.
``PUT|POST .../resources/{R}/files/{path}[?overwrite=true&format=&content=&inbody=true]``
    stores the body (with a ``Content-Length``: XNAT refuses a chunked one) — raw when ``Content-Type`` is one of XNAT's in-body types
    (``application/octet-stream``, ``text/plain``, …) or ``inbody=true``, else the file parts of
    ``multipart/form-data`` (the part's file name when the URL names no path) — creating the
    resource when missing: **200, empty**. A file that exists without ``overwrite``: **200**
    ``{"duplicates": [path]}`` and nothing written (not 409). No body: **400**; an empty raw
    body: **500**. Who may not edit gets **200 and nothing stored**: XNAT's ``FileList`` has no
    ``else`` there, and a client that must know lists the files afterwards.
``DELETE .../resources/{R}``
    **200** (also when there is none); **403** for who may not delete (only Owners may).
``DELETE .../resources/{R}/files/{path}``
    every file whose path starts with *path*: **200**; **404** "No matched files"; **400** when
    the resource is unknown; **403** for who may not delete.

Who may edit is XNAT's ``canEdit(user, security)`` (docs/xnat-resource-api.md §2, "Who may do
it"): for a project-level resource the project item itself, which only Owners edit (a Member's
create is 403, a Member's upload the silent no-op); for a subject's, an experiment's or a scan's
resource the project's data, which Owners and Members edit. Deleting is ``canDelete``: Owners
only, at every level. Site admins and ALL_DATA_ADMIN may do everything.

A file is written under a temporary name in its directory and renamed into place: a failure
leaves no half file, and an overwrite is atomic. Bodies arrive in chunks
(:meth:`Upload.feed`) and are hashed (md5, XNAT's ``digest``) as they come: a raw body is never
held in memory. As XNAT's ``XNATTemplate`` answers on these routes, a project that does not
exist or is not readable is **404** "Unable to identify project", a subject that is not in it
**404** "Unable to identify subject".
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from tornado import httputil

from . import archive as arc
from .errors import BadRequest, Conflict, Forbidden, InternalError, NotFound

#: ``RequestUtil``'s media types whose body is the file itself (besides ``inbody=true``)
IN_BODY_TYPES = frozenset({
    "application/octet-stream", "application/zip", "application/x-tar", "application/x-gtar",
    "application/x-gzip", "application/gzip", "text/plain", "text/xml", "text/csv", "application/dicom",
    "application/pdf", "image/jpeg", "image/png", "image/gif", "text/*", "application/*", "image/*",
})
NO_EDIT = "User account doesn't have permission to modify this session."


def flag(value: str | None) -> bool:
    """XNAT's boolean query parameters: present and not ``false``/``0`` (``overwrite=`` is true)."""
    return value is not None and value.strip().lower() not in ("false", "0")


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


class Upload:
    """A request body spooled to a private file in *spool_dir* as it arrives, hashed on the way."""

    def __init__(self, spool_dir: Path):
        spool_dir.mkdir(mode=0o700, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="upload-", dir=spool_dir)
        self.path = Path(name)
        self.parts: list[Path] = []  # a multipart body's files, spooled beside it
        self._file = os.fdopen(fd, "wb")
        self._md5 = hashlib.md5(usedforsecurity=False)
        self.size = 0

    def feed(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self._md5.update(chunk)
        self.size += len(chunk)

    def finish(self) -> str:
        """Close the spool file; the body's md5 (hex)."""
        if not self._file.closed:
            self._file.close()
        return self._md5.hexdigest()

    def part_path(self) -> Path:
        self.parts.append(self.path.with_name(f"{self.path.name}.part{len(self.parts)}"))
        return self.parts[-1]

    def discard(self) -> None:
        self.finish()
        for path in (self.path, *self.parts):
            path.unlink(missing_ok=True)


class ResourceWrites:
    """The writes of one request, as the user *access* stands for."""

    def __init__(self, store, archive: Path, access, resolve_owner):
        self.store, self.archive, self.access = store, archive, access
        self._resolve_owner = resolve_owner  # route -> resource_owner.Owner, readable or raising

    # -- who and where -------------------------------------------------------------------------
    def _owner(self, route):
        try:
            return self._resolve_owner(route)
        except Forbidden:
            raise NotFound("Unable to identify project") from None

    def _may_edit(self, owner) -> bool:
        """``canEdit(user, security)``: the project item itself for a project-level resource,
        the project's data below it."""
        if owner.level == "project":
            return self.access.can_edit_project(owner.project)
        return self.access.can_edit(owner.project)

    # -- resources ---------------------------------------------------------------------------------
    def create_resource(self, route, *, format: str, content: str) -> None:
        owner = self._owner(route)
        if not self._may_edit(owner):
            raise Forbidden(NO_EDIT)
        if self.store.resource_of(owner.key, route.resource) is not None:
            raise Conflict("Specified resource already exists.")
        if route.resource.isdigit():
            raise NotFound(f"Unable to find resource {route.resource}")
        arc.check_relpath(route.resource)
        owner.directory(self.archive, route.resource).mkdir(parents=True, exist_ok=True)
        self.store.add_resource_to(owner.key, route.resource, format=format, content=content)

    def delete_resource(self, route) -> None:
        owner = self._owner(route)
        r = self.store.resource_of(owner.key, route.resource)
        if r is None:
            return  # XNAT: 200, nothing to do
        if not self.access.can_manage(owner.project):
            raise Forbidden(NO_EDIT)
        shutil.rmtree(owner.directory(self.archive, r["label"]), ignore_errors=True)  # never follows links
        self.store.delete_resource(r["id"])

    # -- files ---------------------------------------------------------------------------------------
    def upload(self, route, body: Upload | None, content_type: str, *, inbody: bool, overwrite: bool,
               format: str, content: str, length_known: bool = True) -> dict | None:
        """Store the request's file(s); ``{"duplicates": [...]}`` when some existed, else None."""
        owner = self._owner(route)
        if not self._may_edit(owner):
            return None  # XNAT's FileList: no else branch, 200 and nothing stored
        parts = self._parts(route, body, content_type, inbody, length_known)
        r = self.store.resource_of(owner.key, route.resource)
        if r is None:
            if route.resource.isdigit():
                raise NotFound(f"Unable to find resource {route.resource}")
            self.store.add_resource_to(owner.key, route.resource, format=format, content=content)
            r = self.store.resource_of(owner.key, route.resource)
        elif format or content:
            self.store.update_resource(r["id"], format=format or r["format"], content=content or r["content"])
        root = owner.directory(self.archive, r["label"])
        duplicates = []
        for rel, source, md5, size in parts:
            if self.store.file(r["id"], rel) is not None and not overwrite:
                duplicates.append(rel)
                continue
            target = arc.safe_join(root, rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=target.parent)
            os.close(fd)
            try:
                try:
                    os.replace(source, tmp)  # the spooled body itself: no copy
                except OSError:
                    shutil.copyfile(source, tmp)  # another file system
                os.chmod(tmp, 0o640)
                os.chown(tmp, -1, target.parent.stat().st_gid)  # the archive's group, as its other files
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            self.store.put_file(r["id"], rel, size, md5, format=format, content=content)
        return {"duplicates": duplicates} if duplicates else None

    def _parts(self, route, body: Upload | None, content_type: str, inbody: bool, length_known: bool):
        """``[(relative path, source file, md5, size)]`` of the request's file(s). A raw body sent
        without a length (chunked) is refused as XNAT refuses it (its entity size is -1 there)."""
        kind = media_type(content_type)
        if body is None or (body.size == 0 and not kind):
            raise BadRequest("You tried to PUT to this service, but didn't provide any data (found request "
                             "entity size of 0). Please check the format of your service request.")
        md5 = body.finish()
        if inbody or kind in IN_BODY_TYPES:
            if kind.startswith("multipart/"):
                raise BadRequest("In-body File posts must include the file directly as the body of the "
                                 "message (not as part of multi-part form data).")
            if (body.size == 0 or not length_known) and kind != "application/zip":
                raise InternalError("In-body File posts must include the file directly as the body of the "
                                  "message. In this case, the request entity size is 0 but the media type "
                                  "is not application/zip (i.e. streaming compressed upload).")
            rel = route.file or "upload"
            return [(self._checked(rel), body.path, md5, body.size)]
        if kind in ("multipart/form-data", "multipart/mixed"):
            return self._multipart(route, body, content_type)
        raise BadRequest(f"You tried to PUT a payload of {body.size} to this service, but didn't provide "
                         "any data. If you think you sent data to upload, you can try to PUT with the "
                         "query-string parameter inbody=true or use multipart/form-data encoding.")

    def _multipart(self, route, body: Upload, content_type: str):
        """The file parts (parsed in memory: the development server's limit), each spooled beside
        the body; the URL's path wins over a part's file name, as in XNAT."""
        args: dict = {}
        files: dict = {}
        httputil.parse_body_arguments(content_type, body.path.read_bytes(), args, files)
        parts = []
        for field in files.values():
            for f in field:
                name = (f.get("filename") or "").rsplit("\\", 1)[-1]
                if not name:
                    raise InternalError("multi-part form posts must contain the file name of the uploaded file.")
                rel = self._checked(route.file or name)
                spooled = body.part_path()
                spooled.write_bytes(f["body"])
                parts.append((rel, spooled, hashlib.md5(f["body"], usedforsecurity=False).hexdigest(),
                              len(f["body"])))
        if not parts:
            raise BadRequest("You tried to PUT to this service, but didn't provide any data.")
        return parts

    @staticmethod
    def _checked(rel: str) -> str:
        arc.check_relpath(rel)
        if rel.endswith("_catalog.xml"):
            raise InternalError(f"XNAT cannot catalog {rel}: the name is reserved for its own catalog files")
        return rel

    def delete_files(self, route, *, remove_files: bool) -> None:
        try:
            owner = self._owner(route)
            r = self.store.resource_of(owner.key, route.resource)
        except NotFound:
            r = None
        if r is None:
            raise BadRequest("Unable to determine resource, parent, or security.")
        if not self.access.can_manage(owner.project):
            raise Forbidden(NO_EDIT)
        prefix = route.file or ""
        matched = [f["path"] for f in self.store.files(r["id"]) if f["path"].startswith(prefix)]
        if not matched:
            raise NotFound("No matched files")
        root = owner.directory(self.archive, r["label"])
        if remove_files:
            for rel in matched:
                target = arc.safe_join(root, rel)
                if target.is_file() and not target.is_symlink():
                    target.unlink()
        self.store.delete_files(r["id"], matched)
