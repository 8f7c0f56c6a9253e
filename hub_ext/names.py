"""XNAT's names on this hub: logins → hub users, the plugin's server names → hub server names.

Both mappings are pure, deterministic and documented (docs/admin.md, "XNAT logins and hub
users", "Server names XNAT makes"); the authenticator, XNAT's plugin path
(:mod:`hub_ext.plugin_gateway`), the spawners, the owners' pages and revocation all call these
functions, so one XNAT account is one hub user everywhere.

**Logins** (:func:`hub_name`). XNAT logins are case-sensitive and may hold capitals, dots and
``@``; hub users here are Unix account names (the local and Slurm backends run servers as
them). In order:

1. the admin's ``username_map`` entry (``{"J.Doe": "jdoe"}``: the site's existing account);
2. the login itself when it is already a valid name (``name_pattern``), holds no ``--`` and
   is not a name ``username_map`` gives to another login;
3. otherwise a **derived** name: ``{stem}--{h}``, *stem* the login lower-cased with every
   other character made ``-`` (at most 14 characters, a letter first), *h* the first 16 hex
   digits of the login's SHA-256. ``Jane.Doe`` → ``jane.doe--8c0b6e6f2c1ad7a5``.

Never folded: ``CaRoL`` and ``carol`` are two hub users (``carol--…`` and ``carol``). Names of
rules 2 and 3 cannot meet (only derived names hold ``--``); two derived names meet only when
their logins' SHA-256 agree in 64 bits (a second preimage: about 2^64 hashes to find), and the
hub refuses the second login of a derived name it has seen (``xnat_user`` in ``auth_state``,
:meth:`hub_ext.auth.XnatAuthenticator.refresh_user`; the login a server was started for,
:class:`xnat_bridge.spawn_record.SpawnRecord`).

**Server names** (:func:`hub_server_name`). XNAT's plugin (≥ 1.2.0) names each server after the
start's event-tracking id, ``new Date().toISOString()`` without ``-``, ``:`` and ``.``
(``20261207T004607123Z``); JupyterHub ≥ 6 refuses new names that are not lower-case slugs. Such
a name becomes ``xnat-20261207t004607123z`` and back (:func:`xnat_server_name`); a name that
already is a valid slug is kept; ``""`` (older plugins: the default server) is kept; any other
name, and a slug of the reserved ``xnat-<digits>t<digits>z`` form, is refused with the reason.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

from xnat_bridge.errors import InvalidRequest

#: a portable lower-case Unix account name (useradd's default rule, plus ``.``), 1-32 characters
DEFAULT_NAME_PATTERN = r"[a-z_][a-z0-9_.-]{0,31}"
#: what separates a derived name's stem from its hash; never in a login kept as it is
DERIVED_MARK = "--"
STEM_MAX = 14
HASH_HEX = 16
_DERIVED_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,13}--[0-9a-f]{16}$")

#: ``generateEventTrackingId()`` of the plugin's UI: ISO-8601 UTC without ``-``, ``:``, ``.``
ETID_RE = re.compile(r"^(\d{8})T(\d{9})Z$")
_MAPPED_ETID_RE = re.compile(r"^xnat-(\d{8})t(\d{9})z$")
#: JupyterHub 6's ``is_valid_safe_slug``: 1-30 characters, a-z0-9 and single hyphens, a letter
#: first, a letter or digit last
_SAFE_SLUG_RE = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
SLUG_MAX = 30


def derived_name(login: str) -> str:
    """The derived hub name of *login* (rule 3; pure)."""
    stem = re.sub(r"[^a-z0-9_.-]", "-", login.lower())[:STEM_MAX]
    if not stem or not stem[0].isalpha() or not stem.isascii():
        stem = ("u" + stem)[:STEM_MAX]
    stem = stem.rstrip("-") or "u"
    digest = hashlib.sha256(login.encode("utf-8")).hexdigest()[:HASH_HEX]
    return f"{stem}{DERIVED_MARK}{digest}"


def is_derived(name: str) -> bool:
    """Whether *name* has the shape of a derived hub name."""
    return bool(_DERIVED_RE.match(name))


def hub_name(login: str, mapping: Mapping[str, str] | None = None,
             pattern: str = DEFAULT_NAME_PATTERN) -> str:
    """The hub user (and Unix account) of the XNAT account *login* (pure; module docstring)."""
    mapping = mapping or {}
    if login in mapping:
        return mapping[login]
    if (re.fullmatch(pattern, login) and DERIVED_MARK not in login
            and login not in set(mapping.values())):
        return login
    return derived_name(login)


def xnat_login(name: str, mapping: Mapping[str, str] | None = None,
               pattern: str = DEFAULT_NAME_PATTERN) -> str | None:
    """The XNAT login whose hub user is *name*, where the name alone says it: the
    ``username_map`` entry, or the login kept as it is; None for a derived name (its login is
    recorded where the hub saw it: ``auth_state``, the server's spawn record)."""
    for login, mapped in (mapping or {}).items():
        if mapped == name:
            return login
    if hub_name(name, mapping, pattern) == name:
        return name
    return None


def hub_server_name(name: str) -> str:
    """The hub's name for a server XNAT's plugin names *name* (pure; module docstring);
    :class:`InvalidRequest` naming the problem for a name that cannot be mapped."""
    if name == "":
        return ""
    match = ETID_RE.match(name)
    if match:
        return f"xnat-{match.group(1)}t{match.group(2)}z"
    if _MAPPED_ETID_RE.match(name):
        raise InvalidRequest(f"the server name {name!r} is reserved for the servers XNAT's "
                             "plugin names after its event-tracking ids")
    if len(name) <= SLUG_MAX and _SAFE_SLUG_RE.match(name):
        return name
    shown = name if len(name) <= 64 else name[:61] + "..."
    raise InvalidRequest(
        f"the server name {shown!r} is neither an XNAT event-tracking id (like 20261207T004607123Z) "
        f"nor a JupyterHub server name (1-{SLUG_MAX} lower-case letters, digits and single hyphens, "
        "a letter first)")


def xnat_server_name(name: str) -> str:
    """The plugin's name for the hub's server *name* (the inverse of :func:`hub_server_name`)."""
    match = _MAPPED_ETID_RE.match(name)
    return f"{match.group(1)}T{match.group(2)}Z" if match else name
