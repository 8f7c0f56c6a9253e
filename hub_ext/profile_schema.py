"""Validation of a profiles file: YAML composed with line numbers, checked key by key.

Every problem is collected (never only the first) as a
:class:`~hub_ext.profile_model.Problem` with file, line, path and a message
that says how to fix it; unknown keys get a "did you mean" suggestion.
Pure: no I/O. :func:`hub_ext.profiles.load_profiles` is the entry point.
"""

from __future__ import annotations

import difflib
import os
import posixpath
import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Mapping, Sequence

import yaml

from xnat_bridge.permissions import ROLES
from xnat_bridge.units import parse_memory, parse_walltime

from .profile_model import (
    BACKENDS,
    DEFAULT_STAGING_DIR,
    SLUG_RE,
    Allow,
    OffloadPolicy,
    Problem,
    Profile,
    ProfileConfig,
    Resources,
    format_memory,
)

_PLAIN_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")

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


def _node_path(node: _Node, v: _Validator) -> str:
    """An absolute, clean directory path on the compute nodes (it goes into a batch script,
    quoted, and into ``bwrap``'s binds): never ``/``, never the sandbox's own ``/xnat``."""
    value = _text(node, v)
    example = "e.g. /mnt/xnat/archive"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise _Bad(f"{value!r} contains a control character; write the path on one line, {example}")
    if not value.startswith("/"):
        raise _Bad(f"{value!r} is not an absolute path; write where the nodes mount the archive "
                   f"from the root, {example}")
    clean = "/" + posixpath.normpath(value).lstrip("/")
    if clean != value:
        raise _Bad(f"{value!r} is not a clean path (it means {clean!r}); write it without '.', '..', "
                   f"'//' or a trailing '/', {example}")
    if value == "/":
        raise _Bad(f"'/' is the whole file system; name the directory the nodes mount the archive at, "
                   f"{example}")
    if value == "/xnat" or value.startswith("/xnat/"):
        raise _Bad(f"{value!r} cannot hold the archive: the server's sandbox has its own {value}; "
                   f"name the directory of the archive itself, {example}")
    return value


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
    "data_layout": _choice(("xnat", "plugin"), "data layout"),
    "archive_node_path": _node_path,
}
#: profile keys that belong to one backend (inherited from defaults only by that backend's profiles)
BACKEND_KEYS = {"archive_node_path": "slurm"}
PROFILE_REQUIRED = {"slug": "e.g. 'slug: gpu-large'",
                    "backend": "'backend: local', 'slurm' or 'kubernetes'"}
NOT_INHERITED = ("slug", "display_name", "default")
DEFAULTS_SCHEMA: dict[str, Checker] = {**PROFILE_SCHEMA, **dict.fromkeys(NOT_INHERITED, _not_inherited)}
#: the admin-set fields of :class:`~xnat_bridge.offload.policy.OffloadPolicy` (the rest keep defaults)
OFFLOAD_SCHEMA: dict[str, Checker] = {
    "partition": _text,
    "max_cpus": _int_at_least(1),
    "max_memory": _memory,
    "max_gpus": _int_at_least(0),
    "max_walltime": _walltime,
    "exclusive": _flag,
    "staging_dir": _abs_path,
    "node_scratch": _memory,
    "staging_threads": _int_at_least(1),
    "staging_buffer": _memory,
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
        self._backend_keys(node, values)
        values["resources"] = self._resources(values.get("resources"), values.get("backend"))
        values["allow"] = self._allow(values.get("allow"))
        return values

    def _backend_keys(self, node: _Node, values: dict[str, Any]) -> None:
        """Drop a profile key of another backend (:data:`BACKEND_KEYS`): silently when inherited
        from ``defaults:``, as a problem when written on the profile itself."""
        backend = values.get("backend")
        for key, owner in BACKEND_KEYS.items():
            if key not in values or backend in (None, owner):
                continue
            del values[key]
            child = node.value[key]
            if not child.path.startswith("defaults."):
                self.report(child.line, child.path, f"{key!r} is a {owner} setting, but this profile uses "
                                                    f"backend {backend}; remove it or set backend: {owner}")

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

    def _offload(self, node: _Node | None) -> OffloadPolicy:
        return OffloadPolicy(**self.fields(node, OFFLOAD_SCHEMA)) if node is not None else OffloadPolicy()


def _build_profile(values: dict[str, Any]) -> Profile:
    return Profile(**{"display_name": values["slug"], **values})


def _tidy(problems: list[Problem]) -> list[Problem]:
    """Dedupe (inherited defaults are checked once per profile) and sort by line."""
    return sorted(dict.fromkeys(problems), key=lambda p: p.line or 0)


