"""The item a resource belongs to — a project, a subject, an experiment or a scan — and what
follows from it in XNAT (pure; unit-tested). docs/xnat-resource-api.md gives the references:

* where the resource's files lie (§2 step 6): ``{archive}/{P}/resources/{label}/``,
  ``{archive}/{P}/subjects/{subject label}/{label}/``, a session's ``RESOURCES/{label}/`` and a
  scan's ``SCANS/{scan}/{label}/`` (:mod:`.archive`);
* the URI its files are listed under (§5, ``getBaseURI``): ``/data/projects/{P}``,
  ``/data/projects/{P}/subjects/{subject ID}``, ``/data/experiments/{E}`` and
  ``/data/experiments/{E}/scans/{scan}``, then ``/resources/{id}``;
* its folder in a zip download (``FileList.buildZipRepresentation`` with XNAT's default
  ``structure``: the URI relative to the project, subject or session, IDs replaced by labels,
  a scan as ``{id}-{type}``): ``{P}``, ``{subject label}``, ``{session}``,
  ``{session}/scans/{id}-{type}``, then ``/resources/{label}/files/{path}``;
* the listing's ``cat_desc`` (§5): one space, a scan's type for a scan's resource.

Who may write a resource depends on its :attr:`Owner.level` (:mod:`.resource_write`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from . import archive as arc
from .store import ResourceOwner


@dataclasses.dataclass(frozen=True)
class Owner:
    """A resource's item, as the store's rows: *project* always (its permissions apply), and
    *subject*, or *experiment* (with *scan* for a scan), for the levels below it."""

    project: Mapping
    subject: Mapping | None = None
    experiment: Mapping | None = None
    scan: Mapping | None = None

    @property
    def level(self) -> str:
        """``project``, ``subject``, ``experiment`` or ``scan``."""
        if self.scan is not None:
            return "scan"
        if self.experiment is not None:
            return "experiment"
        return "subject" if self.subject is not None else "project"

    @property
    def key(self) -> ResourceOwner:
        """The store's key of the owner."""
        if self.experiment is not None:
            return ResourceOwner(experiment_id=self.experiment["id"],
                                 scan_id=self.scan["scan_id"] if self.scan is not None else "")
        if self.subject is not None:
            return ResourceOwner(subject_id=self.subject["id"])
        return ResourceOwner(project=self.project["id"])

    def directory(self, archive: Path, label: str) -> Path:
        """The directory of the owner's resource *label*."""
        pid = self.project["id"]
        if self.experiment is not None:
            scan_id = self.scan["scan_id"] if self.scan is not None else ""
            return arc.resource_dir(archive, pid, self.experiment["label"], scan_id, label)
        if self.subject is not None:
            return arc.subject_resource_dir(archive, pid, self.subject["label"], label)
        return arc.project_resource_dir(archive, pid, label)

    def resource_uri(self, resource_id: int) -> str:
        """``{getBaseURI()}/resources/{id}``: what the owner's file listings are under."""
        if self.experiment is not None:
            base = f"/data/experiments/{self.experiment['id']}"
            if self.scan is not None:
                base += f"/scans/{self.scan['scan_id']}"
        elif self.subject is not None:
            base = f"/data/projects/{self.project['id']}/subjects/{self.subject['id']}"
        else:
            base = f"/data/projects/{self.project['id']}"
        return f"{base}/resources/{resource_id}"

    def zip_folder(self) -> str:
        """The folder that holds the owner's ``resources/{label}/files/...`` in a zip."""
        if self.experiment is not None:
            if self.scan is not None:
                return f"{self.experiment['label']}/scans/{self.scan['scan_id']}-{self.scan['type'] or 'unknown'}"
            return self.experiment["label"]
        if self.subject is not None:
            return self.subject["label"]
        return self.project["id"]

    @property
    def cat_desc(self) -> str:
        """The resource listing's ``cat_desc``."""
        return self.scan["type"] if self.scan is not None else " "
