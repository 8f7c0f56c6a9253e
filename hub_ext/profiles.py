"""Admin profiles: one YAML file, checked by a schema with line-numbered errors.

An admin lists the server profiles users may pick on the spawn page in one
YAML file (example: ``config/profiles.yaml``, reference: ``docs/profiles.md``)::

    defaults:        # inherited by every profile (deep merge, the profile wins)
    profiles:        # the list users choose from
    offload:         # limits for the secure partition
    xnat_hardware:   # XNAT plugin hardware config id / name -> profile slug

:func:`load_profiles` parses the text with PyYAML's ``compose`` so every value
keeps its line, validates the whole file and reports *all* problems at once as
``FILE:LINE: profiles[2].resources.memory: '4 gigs' is not a memory size; ...``.
Unknown keys are errors with a "did you mean" suggestion: a typo never passes
silently. Everything here is pure except :class:`ProfileWatcher` (reads the
file when it changed) and :func:`check_config_main` (the ``check-config`` CLI).
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, TextIO

import yaml

from xnat_bridge.errors import InvalidRequest, NotFound, PermissionDenied
from xnat_bridge.permissions import ROLES, SITE_ADMIN

log = logging.getLogger(__name__)

BACKENDS = ("local", "slurm", "kubernetes")
SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
_MEMORY_RE = re.compile(r"^(\d+(?:\.\d+)?)([KMGT])$", re.IGNORECASE)
_WALLTIME_RE = re.compile(r"^(?:(\d+)-)?(\d+):([0-5]\d):([0-5]\d)$")
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_PLAIN_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
DEFAULT_STAGING_DIR = "/var/lib/xnat-hpc-hub/staging"


# --------------------------------------------------------------------------
# Public data model
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a profiles file, with where it is and how to fix it."""

    source: str
    line: int | None  # 1-based; None when the problem concerns the whole file
    path: str  # e.g. "profiles[2].resources.memory"; "" for the whole file
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return ": ".join(part for part in (where, self.path, self.message) if part)


class ProfileConfigError(InvalidRequest):
    """A profiles file is invalid; ``problems`` lists everything wrong in it."""

    reason = "invalid_profiles"

    def __init__(self, problems: Iterable[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class Resources:
    """What a server gets. Memory sizes are bytes, walltime is seconds; None = backend default."""

    cpus: int = 1
    memory: int | None = None
    gpus: int = 0
    # slurm
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    walltime: int | None = None
    constraint: str | None = None
    # kubernetes
    image: str | None = None
    cpu_limit: float | None = None
    mem_limit: int | None = None
    node_selector: dict[str, str] = field(default_factory=dict, hash=False)
    tolerations: tuple[dict[str, Any], ...] = field(default=(), hash=False)


@dataclass(frozen=True)
class Allow:
    """Who sees a profile. Every rule that is set must match; empty = everyone."""

    roles: tuple[str, ...] = ()
    site_roles: tuple[str, ...] = ()
    projects: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()

    @property
    def everyone(self) -> bool:
        return not (self.roles or self.site_roles or self.projects or self.users or self.groups)

    @property
    def needs_project(self) -> bool:
        """True when the profile is tied to projects (``roles`` or ``projects`` set)."""
        return bool(self.roles or self.projects)

    def project_matches(self, project: str) -> bool:
        """The project id matches one of the ``projects`` patterns (or none are set)."""
        return not self.projects or any(fnmatchcase(project, pat) for pat in self.projects)

    def role_matches(self, role: str | None) -> bool:
        return not self.roles or role in self.roles

    def admits(self, project: str, role: str | None) -> bool:
        return self.project_matches(project) and self.role_matches(role)


@dataclass(frozen=True)
class Profile:
    """One entry of the spawn page."""

    slug: str
    display_name: str
    backend: str
    description: str = ""
    default: bool = False
    resources: Resources = Resources()
    allow: Allow = Allow()


@dataclass(frozen=True)
class OffloadLimits:
    """The admin's limits for jobs on the secure partition (sizes in bytes, time in seconds)."""

    partition: str = "secure"
    max_cpus: int | None = None
    max_memory: int | None = None
    max_gpus: int | None = None
    max_walltime: int | None = None
    exclusive: bool = True
    staging_dir: str = DEFAULT_STAGING_DIR

    def violations(self, *, cpus: int = 1, memory: int | None = None, gpus: int = 0,
                   walltime: int | None = None) -> list[str]:
        """What a job request exceeds, one sentence each (empty when it fits)."""
        asks = (("cpus", cpus, self.max_cpus, str),
                ("memory", memory, self.max_memory, format_memory),
                ("gpus", gpus, self.max_gpus, str),
                ("walltime", walltime, self.max_walltime, format_walltime))
        return [f"{name} {fmt(asked)} is above the limit {fmt(limit)} of partition "
                f"{self.partition!r}; ask for at most {fmt(limit)}"
                for name, asked, limit, fmt in asks
                if limit is not None and asked is not None and asked > limit]

    def check_request(self, **asked: Any) -> None:
        """Raise :class:`InvalidRequest` naming every limit the request exceeds."""
        problems = self.violations(**asked)
        if problems:
            raise InvalidRequest("; ".join(problems))


@dataclass(frozen=True)
class ProfileConfig:
    """A validated profiles file."""

    profiles: tuple[Profile, ...]
    hardware_map: dict[str, str] = field(default_factory=dict, hash=False)
    offload: OffloadLimits = OffloadLimits()
    source: str = "<string>"

    @property
    def slugs(self) -> list[str]:
        return [p.slug for p in self.profiles]

    def by_slug(self, slug: str) -> Profile:
        """The profile called *slug*; :class:`NotFound` names the known ones."""
        for profile in self.profiles:
            if profile.slug == slug:
                return profile
        raise NotFound(f"no profile {slug!r}; known profiles: {', '.join(self.slugs)}", item=slug)

    @property
    def default_profile(self) -> Profile:
        """The profile marked ``default: true``, else the first one."""
        return next((p for p in self.profiles if p.default), self.profiles[0])

    def profile_for_hardware(self, hardware: str | int) -> Profile | None:
        """The profile the admin mapped an XNAT hardware config id or name to, if any."""
        slug = self.hardware_map.get(str(hardware))
        return self.by_slug(slug) if slug else None


def format_memory(size: int | None) -> str:
    """Bytes → the largest exact unit, as Slurm and JupyterHub read it: 4294967296 → ``4G``."""
    if size is None:
        return "unset"
    for unit in "TGMK":
        if size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    return f"{-(-size // _UNITS['K'])}K"


def format_walltime(seconds: int | None) -> str:
    """Seconds → Slurm's ``--time``: 28800 → ``8:00:00``, 129600 → ``1-12:00:00``."""
    if seconds is None:
        return "unset"
    days, rest = divmod(seconds, 86400)
    hours = f"{rest // 3600:02d}" if days else str(rest // 3600)
    hms = f"{hours}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}-{hms}" if days else hms


# --------------------------------------------------------------------------
# YAML with lines
# --------------------------------------------------------------------------


@dataclass
class _Node:
    """A YAML value with the line it was written on and its path in the file."""

    kind: str  # "map" | "seq" | "scalar"
    value: Any  # dict[str, _Node] | list[_Node] | a Python scalar
    line: int  # the key's line for mapping values, else where the value starts
    path: str
    raw: str = ""  # scalar text as written (walltimes: YAML reads 8:00:00 as 28800)


def _join(path: str, key: str) -> str:
    step = key if _PLAIN_KEY_RE.match(key) else f"[{key!r}]"
    return f"{path}.{step}" if path and not step.startswith("[") else f"{path}{step}"


class _Composer:
    """Turns PyYAML's node tree into :class:`_Node` values, reporting what YAML hides."""

    def __init__(self, report: Callable[[int, str, str], None]):
        self.report = report
        self.constructor = yaml.constructor.SafeConstructor()
        self.active: set[int] = set()

    def convert(self, node: yaml.Node, path: str, line: int) -> _Node:
        if id(node) in self.active:
            self.report(line, path, "a YAML alias refers to itself; write the value out")
            return _Node("scalar", None, line, path)
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return _Node("map", self._mapping(node, path), line, path)
            if isinstance(node, yaml.SequenceNode):
                items = [self.convert(item, f"{path}[{i}]", item.start_mark.line + 1)
                         for i, item in enumerate(node.value)]
                return _Node("seq", items, line, path)
            return _Node("scalar", self._scalar(node, path, line), line, path, node.value)
        finally:
            self.active.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: str) -> dict[str, _Node]:
        items: dict[str, _Node] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                self.report(line, path, "a key must be a plain name, not a list or mapping")
                continue
            key = key_node.value
            child_path = _join(path, key)
            if key in items:
                self.report(line, child_path, f"key {key!r} appears twice (first on line "
                                              f"{items[key].line}); keep only one")
                continue
            items[key] = self.convert(value_node, child_path, line)
        return items

    def _scalar(self, node: yaml.ScalarNode, path: str, line: int) -> Any:
        try:
            return self.constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError) as exc:  # unknown tag, or !!int abc
            self.report(line, path, f"cannot read {node.value!r} ({getattr(exc, 'problem', exc)}); "
                                    "remove the YAML tag or quote the value")
            return None


def _syntax_problem(source: str, text: str, exc: yaml.YAMLError) -> Problem:
    if isinstance(exc, yaml.reader.ReaderError):  # a control character; no mark, a position
        line = text.count("\n", 0, exc.position) + 1
        message = f"character {chr(exc.character)!r} is not allowed in YAML; remove it"
        return Problem(source, line, "", message)
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    what = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    detail = f"{what} ({context})" if context else what
    if context and what.startswith("but "):  # "expected a single document ..., but found another"
        detail = f"{context}, {what}"
    return Problem(source, mark.line + 1 if mark else None, "",
                   f"YAML syntax error: {detail}; check indentation (spaces, not tabs), "
                   "colons and quotes around this line")


# --------------------------------------------------------------------------
# Value checkers: (node, validator) -> value, raise _Bad(message)
# --------------------------------------------------------------------------


class _Bad(Exception):
    """A value is wrong; the message says how to fix it."""


_INVALID = object()
Checker = Callable[[_Node, "_Validator"], Any]


def _describe(node: _Node) -> str:
    if node.kind == "map":
        return "a mapping"
    if node.kind == "seq":
        return "a list"
    value = node.value
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return f"{node.raw} (which YAML reads as {str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"the number {node.raw}"
    return repr(node.raw)


def _suggest(word: str, choices: Iterable[str]) -> str:
    choices = list(choices)
    folded = [c for c in choices if c.casefold() == word.casefold()]
    close = folded or difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


def _text(node: _Node, _v: _Validator) -> str:
    if node.kind == "scalar" and isinstance(node.value, str) and node.value.strip():
        return node.value
    hint = f'; write it in quotes: "{node.raw}"' if node.kind == "scalar" and node.value is not None else ""
    raise _Bad(f"expected text, got {_describe(node)}{hint}")


def _flag(node: _Node, _v: _Validator) -> bool:
    if node.kind == "scalar" and isinstance(node.value, bool):
        return node.value
    raise _Bad(f"expected true or false, got {_describe(node)}")


def _is_number(node: _Node, kinds: tuple[type, ...] = (int, float)) -> bool:
    """A YAML number (YAML 1.1 reads ``true``/``yes`` as bool, a subclass of int: not a number)."""
    return node.kind == "scalar" and isinstance(node.value, kinds) and not isinstance(node.value, bool)


def _int_at_least(low: int) -> Checker:
    def check(node: _Node, _v: _Validator) -> int:
        if _is_number(node, (int,)) and node.value >= low:
            return node.value
        raise _Bad(f"expected a whole number >= {low} (e.g. {max(low, 2)}), got {_describe(node)}")
    return check


def _positive_number(node: _Node, _v: _Validator) -> float:
    if _is_number(node) and node.value > 0:
        return float(node.value)
    raise _Bad(f"expected a number > 0 (e.g. 2 or 0.5), got {_describe(node)}")


def parse_memory(text: str) -> int:
    """``"4G"`` → 4294967296 (K, M, G, T are powers of 1024, as in Slurm and JupyterHub)."""
    match = _MEMORY_RE.match(text.strip())
    size = int(float(match.group(1)) * _UNITS[match.group(2).upper()]) if match else 0
    if size <= 0:
        raise ValueError(f"{text!r} is not a memory size; write e.g. 4G or 512M")
    return size


def parse_walltime(text: str) -> int:
    """``"8:00:00"`` → 28800, ``"1-12:00:00"`` → 129600 (Slurm's HH:MM:SS and D-HH:MM:SS)."""
    match = _WALLTIME_RE.match(text.strip())
    if match:
        days, hours, minutes, seconds = (int(group or 0) for group in match.groups())
        total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
        if total > 0 and (match.group(1) is None or hours < 24):
            return total
    raise ValueError(f"{text!r} is not a walltime; write HH:MM:SS (e.g. 8:00:00) "
                     "or D-HH:MM:SS (e.g. 1-12:00:00)")


def _from_text(parse: Callable[[str], int], example: str) -> Checker:
    def check(node: _Node, _v: _Validator) -> int:
        if node.kind != "scalar":
            raise _Bad(f"expected a value like {example}, got {_describe(node)}")
        try:
            return parse(node.raw)  # raw text: YAML would read 8:00:00 as the number 28800
        except ValueError as exc:
            raise _Bad(str(exc)) from None
    return check


_memory = _from_text(parse_memory, "4G")
_walltime = _from_text(parse_walltime, "8:00:00")


def _choice(options: Sequence[str], what: str) -> Checker:
    def check(node: _Node, v: _Validator) -> str:
        value = _text(node, v)
        if value in options:
            return value
        raise _Bad(f"unknown {what} {value!r}; {_suggest(value, options)}use one of {', '.join(options)}")
    return check


def _slug(node: _Node, v: _Validator) -> str:
    value = node.raw if _is_number(node) else _text(node, v)  # YAML reads slug: 2024 as a number
    if SLUG_RE.match(value):
        return value
    fixed = re.sub(r"[^a-z0-9-]+", "-", value.lower()).strip("-")[:40] or "my-profile"
    raise _Bad(f"{value!r} is not a valid slug: use 1-40 lowercase letters, digits and dashes, "
               f"starting with a letter or digit, e.g. {fixed}")


def _abs_path(node: _Node, v: _Validator) -> str:
    value = _text(node, v)
    if os.path.isabs(value):
        return value
    raise _Bad(f"{value!r} is not an absolute path; write it from the root, e.g. {DEFAULT_STAGING_DIR}")


def _list_of(item: Checker, example: str) -> Checker:
    def check(node: _Node, v: _Validator) -> tuple:
        if node.kind != "seq":
            raise _Bad(f"expected a list, e.g. {example}, got {_describe(node)}")
        values = [v.check(child, item) for child in node.value]
        return _INVALID if _INVALID in values else tuple(values)
    return check


def _str_map(node: _Node, v: _Validator) -> dict[str, str]:
    if node.kind != "map":
        raise _Bad(f"expected a mapping of text to text, e.g. {{gpu: a100}}, got {_describe(node)}")
    values = {key: v.check(child, _text) for key, child in node.value.items()}
    return _INVALID if _INVALID in values.values() else values


def _map_node(node: _Node, _v: _Validator) -> _Node:
    if node.kind == "map":
        return node
    raise _Bad(f"expected a mapping (indented key: value lines), got {_describe(node)}")


def _seq_node(node: _Node, _v: _Validator) -> _Node:
    if node.kind == "seq":
        return node
    raise _Bad(f"expected a list (lines starting with '- '), got {_describe(node)}")


def _not_inherited(node: _Node, _v: _Validator) -> None:
    key = node.path.rsplit(".", 1)[-1]
    raise _Bad(f"{key} cannot be inherited; set it on each profile instead of under defaults")


def _toleration(node: _Node, v: _Validator) -> dict[str, Any]:
    if node.kind != "map":
        raise _Bad(f"expected a mapping like {{key: gpu, operator: Exists, effect: NoSchedule}}, "
                   f"got {_describe(node)}")
    return v.fields(node, TOLERATION_SCHEMA)


# --------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------

_names = _list_of(_text, "[alice, bob]")

TOLERATION_SCHEMA: dict[str, Checker] = {
    "key": _text,
    "operator": _choice(("Exists", "Equal"), "operator"),
    "value": _text,
    "effect": _choice(("NoSchedule", "PreferNoSchedule", "NoExecute"), "effect"),
    "tolerationSeconds": _int_at_least(0),
}
COMMON_RESOURCES: dict[str, Checker] = {"cpus": _int_at_least(1), "memory": _memory, "gpus": _int_at_least(0)}
BACKEND_RESOURCES: dict[str, dict[str, Checker]] = {
    "local": {},
    "slurm": {"partition": _text, "account": _text, "qos": _text, "walltime": _walltime,
              "constraint": _text},
    "kubernetes": {"image": _text, "cpu_limit": _positive_number, "mem_limit": _memory,
                   "node_selector": _str_map,
                   "tolerations": _list_of(_toleration, "[{key: gpu, operator: Exists}]")},
}
ALLOW_SCHEMA: dict[str, Checker] = {
    "roles": _list_of(_choice(ROLES, "project role"), "[Owner, Member]"),
    "site_roles": _list_of(_text, "[Jupyter]"),
    "projects": _list_of(_text, "['NEURO_*', SLEEP_EEG]"),
    "users": _names,
    "groups": _names,
}
PROFILE_SCHEMA: dict[str, Checker] = {
    "slug": _slug,
    "display_name": _text,
    "description": _text,
    "backend": _choice(BACKENDS, "backend"),
    "default": _flag,
    "resources": _map_node,
    "allow": _map_node,
}
PROFILE_REQUIRED = {"slug": "e.g. 'slug: gpu-large'",
                    "backend": "'backend: local', 'slurm' or 'kubernetes'"}
NOT_INHERITED = ("slug", "display_name", "default")
DEFAULTS_SCHEMA: dict[str, Checker] = {**PROFILE_SCHEMA, **dict.fromkeys(NOT_INHERITED, _not_inherited)}
OFFLOAD_SCHEMA: dict[str, Checker] = {
    "partition": _text,
    "max_cpus": _int_at_least(1),
    "max_memory": _memory,
    "max_gpus": _int_at_least(0),
    "max_walltime": _walltime,
    "exclusive": _flag,
    "staging_dir": _abs_path,
}
TOP_SCHEMA: dict[str, Checker] = {
    "defaults": _map_node, "profiles": _seq_node, "offload": _map_node, "xnat_hardware": _map_node,
}
#: backend -> the resource keys it accepts; None (defaults, unknown backend) -> every key
RESOURCE_SCHEMAS: dict[str | None, dict[str, Checker]] = {
    None: {**COMMON_RESOURCES, **{k: c for keys in BACKEND_RESOURCES.values() for k, c in keys.items()}},
    **{name: {**COMMON_RESOURCES, **keys} for name, keys in BACKEND_RESOURCES.items()},
}


def _backend_of(key: str) -> str | None:
    return next((name for name, keys in BACKEND_RESOURCES.items() if key in keys), None)


def _inheritable(defaults: _Node | None) -> _Node | None:
    """``defaults:`` without the keys that must be set per profile (reported separately)."""
    if defaults is None:
        return None
    return replace(defaults, value={k: v for k, v in defaults.value.items() if k not in NOT_INHERITED})


def _merge(base: _Node | None, over: _Node) -> _Node:
    """Deep merge of mapping nodes; *over* wins. Inherited nodes keep their own path and line."""
    if base is None or base.kind != "map" or over.kind != "map":
        return over
    merged = dict(base.value)
    for key, node in over.value.items():
        merged[key] = _merge(merged.get(key), node)
    return replace(over, value=merged)


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------


class _Validator:
    """Walks the node tree, collects every problem, builds the dataclasses."""

    def __init__(self, source: str):
        self.source = source
        self.problems: list[Problem] = []

    def report(self, line: int | None, path: str, message: str) -> None:
        self.problems.append(Problem(self.source, line, path, message))

    def check(self, node: _Node, checker: Checker) -> Any:
        try:
            return checker(node, self)
        except _Bad as exc:
            self.report(node.line, node.path, str(exc))
            return _INVALID

    def fields(self, node: _Node, schema: Mapping[str, Checker],
               required: Mapping[str, str] | None = None) -> dict:
        """The one place that checks a mapping: unknown keys, missing keys, each value.

        *required* maps each required key to a hint. Returns only the keys that are
        set and valid; the dataclass defaults fill the rest (no ``if x is None`` chains).
        """
        for key, hint in (required or {}).items():
            child = node.value.get(key)
            if child is None or child.value is None:
                where = child or node
                self.report(where.line, where.path, f"missing required key {key!r}; add {hint}")
        values = {}
        for key, child in node.value.items():
            if key not in schema:
                self.report(child.line, child.path, self._unknown(key, schema))
            elif child.kind != "scalar" or child.value is not None:
                value = self.check(child, schema[key])
                if value is not _INVALID:
                    values[key] = value
        return values

    @staticmethod
    def _unknown(key: str, schema: Mapping[str, Checker]) -> str:
        if key == "<<":
            return ("YAML merge keys (<<) are not supported; "
                    "put shared values under the top-level defaults:")
        return f"unknown key {key!r}; {_suggest(key, schema)}allowed here: {', '.join(schema)}"

    # -- the file ---------------------------------------------------------

    def config(self, root: _Node) -> ProfileConfig | None:
        if root.kind != "map":
            self.report(root.line, "", "the file must be a mapping with a 'profiles:' list; "
                                       "see config/profiles.yaml")
            return None
        top = self.fields(root, TOP_SCHEMA,
                          required={"profiles": "a 'profiles:' list (see config/profiles.yaml)"})
        defaults = top.get("defaults")
        if defaults is not None:
            self._defaults(defaults)
        profiles, slugs = self._profiles(top.get("profiles"), defaults)
        hardware = self._hardware(top.get("xnat_hardware"), slugs)
        offload = self._offload(top.get("offload"))
        return ProfileConfig(tuple(profiles), hardware, offload, self.source)

    def _defaults(self, node: _Node) -> None:
        values = self.fields(node, DEFAULTS_SCHEMA)
        self._resources(values.get("resources"), None)
        self._allow(values.get("allow"))

    def _profiles(self, node: _Node | None, defaults: _Node | None) -> tuple[list[Profile], set[str]]:
        """The valid profiles, and every valid slug (also of profiles with other problems)."""
        if node is None:
            return [], set()
        if not node.value:
            self.report(node.line, node.path, "the list is empty; add at least one profile")
        inherited = _inheritable(defaults)
        checked = [(self._profile(_merge(inherited, item)), item) for item in node.value]
        slugs = self._unique([(values, item) for values, item in checked if item.kind == "map"])
        complete = [values for values, _ in checked if "slug" in values and "backend" in values]
        return [_build_profile(values) for values in complete], slugs

    def _profile(self, node: _Node) -> dict[str, Any]:
        """The checked values of one profile (only the valid ones)."""
        if node.kind != "map":
            self.report(node.line, node.path, f"expected a profile (a mapping with slug, display_name, "
                                              f"backend, ...), got {_describe(node)}")
            return {}
        values = self.fields(node, PROFILE_SCHEMA, required=PROFILE_REQUIRED)
        values["resources"] = self._resources(values.get("resources"), values.get("backend"))
        values["allow"] = self._allow(values.get("allow"))
        return values

    def _resources(self, node: _Node | None, backend: str | None) -> Resources:
        if node is None:
            return Resources()
        schema = RESOURCE_SCHEMAS[backend]
        node = replace(node, value={key: child for key, child in node.value.items()
                                    if self._applies(key, child, backend, schema)})
        values = self.fields(node, schema)
        self._limits_not_below(node, values)
        return Resources(**values)

    def _applies(self, key: str, child: _Node, backend: str | None,
                 schema: Mapping[str, Checker]) -> bool:
        """Whether to check *key* for this profile.

        Inherited keys outside the backend's schema are skipped silently (the
        defaults were checked on their own); another backend's key written on
        the profile itself is an error.
        """
        if backend is None or key in schema:
            return True
        if child.path.startswith("defaults."):
            return False
        owner = _backend_of(key)
        if owner is None:
            return True  # an unknown key: fields() reports it with a suggestion
        self.report(child.line, child.path, f"{key!r} is a {owner} setting, but this profile uses "
                                            f"backend {backend}; remove it or set backend: {owner}")
        return False

    def _limits_not_below(self, node: _Node, values: dict) -> None:
        """Kubernetes limits are at least the guarantees (``cpus``, ``memory``)."""
        pairs = (("cpu_limit", "cpus", "{:g}".format), ("mem_limit", "memory", format_memory))
        for limit, request, fmt in pairs:
            if limit in values and request in values and values[limit] < values[request]:
                child = node.value[limit]
                self.report(child.line, child.path, f"{limit} {fmt(values[limit])} is below {request} "
                            f"{fmt(values[request])}; raise {limit} or lower {request}")

    def _allow(self, node: _Node | None) -> Allow:
        return Allow(**self.fields(node, ALLOW_SCHEMA)) if node is not None else Allow()

    def _unique(self, profiles: list[tuple[dict[str, Any], _Node]]) -> set[str]:
        """Slugs are unique and at most one profile is the default (invalid profiles count too)."""
        seen: dict[str, int] = {}
        first_default: tuple[str, int] | None = None
        for values, node in profiles:
            slug = values.get("slug")
            if slug in seen:
                where = node.value["slug"]
                self.report(where.line, where.path, f"duplicate slug {slug!r}, already used on line "
                                                    f"{seen[slug]}; slugs must be unique, rename one")
            elif slug:
                seen[slug] = node.value["slug"].line
            if not values.get("default"):
                continue
            flag = node.value["default"]
            name = repr(slug) if slug else "this profile"
            if first_default:
                self.report(flag.line, flag.path, f"{name} is a second default profile; {first_default[0]} "
                            f"(line {first_default[1]}) is already default: true, keep at most one")
            else:
                first_default = (name, flag.line)
        return set(seen)

    def _hardware(self, node: _Node | None, slugs: set[str]) -> dict[str, str]:
        hardware: dict[str, str] = {}
        for key, child in (node.value.items() if node is not None else ()):
            slug = self.check(child, _text)
            if slug is _INVALID:
                continue
            if slug not in slugs:
                self.report(child.line, child.path, f"unknown profile {slug!r}; "
                            f"{_suggest(slug, sorted(slugs))}map to one of: {', '.join(sorted(slugs))}")
            hardware[key] = slug
        return hardware

    def _offload(self, node: _Node | None) -> OffloadLimits:
        return OffloadLimits(**self.fields(node, OFFLOAD_SCHEMA)) if node is not None else OffloadLimits()


def _build_profile(values: dict[str, Any]) -> Profile:
    return Profile(**{"display_name": values["slug"], **values})


def _tidy(problems: list[Problem]) -> list[Problem]:
    """Dedupe (inherited defaults are checked once per profile) and sort by line."""
    return sorted(dict.fromkeys(problems), key=lambda p: p.line or 0)


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------


def load_profiles(text: str, source: str = "<string>") -> ProfileConfig:
    """Parse and validate a profiles file; :class:`ProfileConfigError` lists every problem."""
    validator = _Validator(source)
    try:
        document = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ProfileConfigError([_syntax_problem(source, text, exc)]) from None
    if document is None:
        raise ProfileConfigError([Problem(source, 1, "", "the file is empty; add a 'profiles:' list "
                                                         "(see config/profiles.yaml)")])
    root = _Composer(validator.report).convert(document, "", document.start_mark.line + 1)
    config = validator.config(root)
    if validator.problems or config is None:
        raise ProfileConfigError(_tidy(validator.problems))
    return config


def load_profiles_file(path: str | os.PathLike) -> ProfileConfig:
    """:func:`load_profiles` on a file; an unreadable file is a problem, not a traceback."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        message = f"the file is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8"
        raise ProfileConfigError([Problem(str(path), None, "", message)]) from None
    except OSError as exc:
        message = f"cannot read the file ({exc.strerror or exc}); check the path and its permissions"
        raise ProfileConfigError([Problem(str(path), None, "", message)]) from None
    return load_profiles(text, str(path))


# --------------------------------------------------------------------------
# Who may use what
# --------------------------------------------------------------------------


def _one_of(wanted: Sequence[str], have: Iterable[str], *, fold: bool = False) -> bool:
    """An unset rule matches; a set one needs one of *have* in *wanted*."""
    norm = (lambda s: s.casefold()) if fold else (lambda s: s)
    return not wanted or bool({norm(w) for w in wanted} & {norm(h) for h in have})


def _visible(allow: Allow, username: str, groups: Iterable[str], site_roles: Iterable[str],
             project_roles: Mapping[str, str]) -> bool:
    return (_one_of(allow.users, [username]) and _one_of(allow.groups, groups)
            and _one_of(allow.site_roles, site_roles, fold=True)
            and (not allow.needs_project
                 or any(allow.admits(project, role) for project, role in project_roles.items())))


def visible_profiles(config: ProfileConfig, *, username: str, groups: Iterable[str],
                     site_roles: Iterable[str], project_roles: Mapping[str, str]) -> list[Profile]:
    """The profiles this user may pick, in file order. Site admins see them all."""
    site_roles = list(site_roles)
    if any(role.casefold() == SITE_ADMIN.casefold() for role in site_roles):
        return list(config.profiles)
    groups = list(groups)
    return [p for p in config.profiles if _visible(p.allow, username, groups, site_roles, project_roles)]


def profile_allows_projects(profile: Profile, project_roles: Mapping[str, str],
                            selected: Sequence[str]) -> None:
    """Re-check at spawn time that *profile* may be used with every *selected* project."""
    allow = profile.allow
    if not selected and allow.needs_project:
        raise PermissionDenied(f"profile {profile.slug!r} is meant for XNAT projects "
                               f"{_rules(allow)}; select at least one project")
    for project in selected:
        role = project_roles.get(project)
        if role is None:
            raise PermissionDenied(f"you have no role in XNAT project {project!r}; ask its owner "
                                   "for access or deselect it", item=project)
        if not allow.project_matches(project):
            raise PermissionDenied(f"profile {profile.slug!r} cannot be used with project {project!r} "
                                   f"(it is limited to {', '.join(allow.projects)}); pick another "
                                   "profile or deselect the project", item=project)
        if not allow.role_matches(role):
            raise PermissionDenied(f"profile {profile.slug!r} needs role {' or '.join(allow.roles)} in "
                                   f"project {project!r}, you are {role} there; pick another profile "
                                   "or ask the project owner", item=project)


def _rules(allow: Allow) -> str:
    parts = [f"matching {', '.join(allow.projects)}" if allow.projects else "",
             f"where you are {' or '.join(allow.roles)}" if allow.roles else ""]
    return " ".join(p for p in parts if p)


# --------------------------------------------------------------------------
# Hot reload and the check-config command
# --------------------------------------------------------------------------


class ProfileWatcher:
    """The current good configuration of one profiles file, re-read when the file changes.

    ``current()`` looks at the file's mtime, size and inode at most every
    *interval* seconds and re-reads it when they changed. An invalid new version
    is logged once (as a warning listing every problem) and the last good
    configuration stays in use until the file is fixed. The first load must
    succeed: the constructor raises :class:`ProfileConfigError` otherwise.
    """

    def __init__(self, path: str | os.PathLike, *, interval: float = 2.0,
                 clock: Callable[[], float] = time.monotonic):
        self.path = Path(path)
        self.interval = interval
        self._clock = clock
        self._signature = self._stat()
        self._config = load_profiles_file(self.path)
        self._checked_at = clock()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def current(self) -> ProfileConfig:
        now = self._clock()
        if now - self._checked_at >= self.interval:
            self._checked_at = now
            signature = self._stat()
            if signature != self._signature:
                self._signature = signature
                self._reload()
        return self._config

    def _reload(self) -> None:
        try:
            config = load_profiles_file(self.path)
        except ProfileConfigError as exc:
            log.warning("profiles file %s is invalid; keeping the last good configuration (%s) "
                        "until it is fixed:\n%s", self.path, ", ".join(self._config.slugs), exc)
            return
        self._config = config
        log.info("reloaded profiles from %s: %s", self.path, ", ".join(config.slugs))


def check_config_main(paths: list[str], out: TextIO = sys.stdout) -> int:
    """``xnat-hpc-hub check-config FILE...``: 0 when every file is valid, else 1."""
    if not paths:
        print("give at least one profiles file, e.g. config/profiles.yaml", file=out)
        return 1
    status = 0
    for path in paths:
        try:
            config = load_profiles_file(path)
        except ProfileConfigError as exc:
            status = 1
            for problem in exc.problems:
                print(problem, file=out)
            continue
        count = len(config.profiles)
        print(f"{path}: OK ({count} profile{'s' * (count != 1)}: {', '.join(config.slugs)})", file=out)
    return status
