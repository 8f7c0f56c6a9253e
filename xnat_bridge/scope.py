"""The data scope a server was started for.

A scope names XNAT projects, optionally narrowed to some subjects and/or
experiments (by ID or label) in each. Every bridge operation checks the scope
*first* (an item outside it is refused even when XNAT would allow it) and then
still asks XNAT (inside it, XNAT decides).

The hub hands the scope to the server as JSON in ``XNAT_HPC_SCOPE`` (read by
:func:`xnat_bridge.server_env.scope_from_env`)::

    {"projects": {"NEURO_MRI": {}, "SLEEP_EEG": {"subjects": ["SLEEP_EEG_S001"]},
                  "CARDIO_ECG": {"experiments": ["XNAT_E00007"]}}}

An absent ``XNAT_HPC_SCOPE`` means "no restriction beyond XNAT" (a notebook
outside the hub); an empty ``projects`` means "nothing".
"""

from __future__ import annotations

import dataclasses
import json
import re

from .errors import InvalidRequest, OutOfScope

#: XNAT IDs and labels: letters, digits, ``_`` and ``-`` (XNAT's own rule for labels)
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,99}$")
ENV = "XNAT_HPC_SCOPE"


def check_id(value: str, what: str) -> str:
    if not isinstance(value, str) or not ID_RE.match(value):
        raise InvalidRequest(f"{what} {value!r} is not a valid XNAT identifier "
                             "(letters, digits, _ and -)", item=str(value)[:100])
    return value


@dataclasses.dataclass(frozen=True)
class ProjectScope:
    subjects: frozenset[str] = frozenset()
    experiments: frozenset[str] = frozenset()

    @property
    def whole(self) -> bool:
        return not self.subjects and not self.experiments


@dataclasses.dataclass(frozen=True)
class Scope:
    """``projects`` maps project id → :class:`ProjectScope`; ``None`` = unrestricted."""

    projects: dict[str, ProjectScope] | None = None

    @classmethod
    def unrestricted(cls) -> "Scope":
        return cls(None)

    @classmethod
    def of(cls, projects: list[str] | dict) -> "Scope":
        """From a list of project ids or the JSON form's mapping."""
        if isinstance(projects, (list, tuple)):
            projects = {p: {} for p in projects}
        if not isinstance(projects, dict):
            raise InvalidRequest("scope projects must be a list or a mapping")
        out = {}
        for pid, narrow in projects.items():
            check_id(pid, "project")
            narrow = narrow or {}
            if not isinstance(narrow, dict) or set(narrow) - {"subjects", "experiments"}:
                raise InvalidRequest(f"scope of {pid}: only 'subjects' and 'experiments' may narrow it")
            subs = frozenset(check_id(s, "subject") for s in narrow.get("subjects", []) or [])
            exps = frozenset(check_id(e, "experiment") for e in narrow.get("experiments", []) or [])
            out[pid] = ProjectScope(subs, exps)
        return cls(out)

    @classmethod
    def from_json(cls, text: str | None) -> "Scope":
        if text is None or text.strip() == "":
            return cls.unrestricted()
        try:
            doc = json.loads(text)
        except ValueError:
            raise InvalidRequest(f"{ENV} is not valid JSON") from None
        if not isinstance(doc, dict) or "projects" not in doc:
            raise InvalidRequest(f'{ENV} must look like {{"projects": {{...}}}}')
        return cls.of(doc["projects"])

    def to_json(self) -> str:
        if self.projects is None:
            return ""
        return json.dumps({"projects": {
            p: {k: sorted(v) for k, v in (("subjects", ps.subjects), ("experiments", ps.experiments)) if v}
            for p, ps in sorted(self.projects.items())}}, sort_keys=True)

    @property
    def restricted(self) -> bool:
        return self.projects is not None

    def project_ids(self, readable: list[str] | None = None) -> list[str]:
        """The scope's projects (or *readable* when unrestricted), sorted."""
        if self.projects is None:
            return sorted(readable or [])
        return sorted(self.projects)

    # -- checks: raise OutOfScope naming the item ------------------------------
    def check_project(self, project: str) -> None:
        if self.projects is not None and project not in self.projects:
            raise OutOfScope(f"project {project} is outside the scope this server was started for",
                             item=project)

    def check_subject(self, project: str, *ids: str) -> None:
        """*ids*: the subject's ID and label (either may be listed in the scope)."""
        self.check_project(project)
        ps = self.projects[project] if self.projects is not None else None
        if ps is not None and ps.subjects and not ps.subjects.intersection(ids) and not ps.experiments:
            raise OutOfScope(f"subject {ids[-1]} of {project} is outside this server's scope",
                             item=ids[-1])

    def check_experiment(self, project: str, experiment_ids: tuple[str, ...],
                         subject_ids: tuple[str, ...]) -> None:
        """*experiment_ids* / *subject_ids*: ID and label of the experiment and its subject."""
        self.check_project(project)
        ps = self.projects[project] if self.projects is not None else None
        if ps is None or ps.whole:
            return
        if ps.experiments.intersection(experiment_ids) or ps.subjects.intersection(subject_ids):
            return
        raise OutOfScope(f"experiment {experiment_ids[-1]} of {project} is outside this server's scope",
                         item=experiment_ids[-1])

    def subject_visible(self, project: str, subject_ids: tuple[str, ...]) -> bool:
        """Whether a subject is listed when browsing (it or one of its experiments may be in scope)."""
        ps = self.projects.get(project) if self.projects is not None else ProjectScope()
        if ps is None:
            return False
        return ps.whole or bool(ps.experiments) or bool(ps.subjects.intersection(subject_ids))
