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

Modules: :mod:`hub_ext.profile_model` (the dataclasses), :mod:`hub_ext.profile_schema`
(parsing and validation); this one loads files, applies the visibility rules, watches
the file and runs ``check-config``. Its names are the public API.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence, TextIO

import yaml

from xnat_bridge.errors import PermissionDenied
from xnat_bridge.permissions import SITE_ADMIN

from .profile_model import (  # noqa: F401  (re-exported)
    BACKENDS,
    DEFAULT_STAGING_DIR,
    SLUG_RE,
    Allow,
    OffloadPolicy,
    Problem,
    Profile,
    ProfileConfig,
    ProfileConfigError,
    Resources,
    format_memory,
    format_walltime,
)
from .profile_schema import (  # noqa: F401  (re-exported)
    _Composer,
    _syntax_problem,
    _tidy,
    _Validator,
    parse_memory,
    parse_walltime,
)

log = logging.getLogger(__name__)


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
