"""What the hub decided when it started a server: the one record of a server's scope.

The hub writes it into the spawner's state (JupyterHub persists ``Spawner.get_state()``
in its database after every start and hands it back with ``load_state`` after a
restart); everything that later needs a server's scope — audit ingestion, the job
ledger, revocation, the owners' pages — reads it back with :meth:`SpawnRecord.from_state`.
Never from ``user_options``: those are what was *asked* (and stored flat for XNAT's
readers, ``projects: "A,B"``), not what the hub *decided*.

State shape (JSON, under :data:`STATE_KEY`)::

    {"xnat_hpc": {"v": 1, "scope": "<Scope.to_json()>", "profile": "local-small",
                  "backend": "local", "started": "2026-12-07T02:40:00Z",
                  "token_sha256": "<sha256 of the server's JUPYTERHUB_API_TOKEN>",
                  "login": "Jane.Doe", "server_scopes": ["custom:xnat-hpc:audit", "custom:xnat-hpc:jobs"]}}

``token_sha256`` binds the record to the one hub token JupyterHub issued to the server for
this start: a request carrying a token is from this server exactly when the token's sha256
matches (:func:`server_of_token`), also after a hub restart (when the hub no longer holds
the plaintext) — a personal token of the same user, whatever its note or scopes, never is.

``server_scopes`` (optional; absent in records written before it) names the xnat-hpc custom
scopes the hub defined when it started the server (:meth:`SpawnRecord.configured_scopes`): the
server's token was then asked for them, and its calls to governance must carry them
(:mod:`hub_ext.server_scopes`); a record without them is of a server started before, whose token
holds what servers were issued then.

Pure; imported by the hub side and (later) by the governance service alike.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import hmac
from collections.abc import Mapping

from .errors import InvalidRequest
from .scope import Scope

STATE_KEY = "xnat_hpc"
VERSION = 1
#: the prefix of the custom scopes a hub grants researchers' servers (:mod:`hub_ext.server_scopes`)
SCOPE_PREFIX = "custom:xnat-hpc:"


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclasses.dataclass(frozen=True)
class SpawnRecord:
    """A server's scope and profile as the hub decided them at its start."""

    scope: Scope
    profile: str = ""
    backend: str = ""
    started: str = ""
    token_sha256: str = ""  #: sha256 (hex) of the server's own hub token of this start
    login: str = ""         #: the XNAT login the server was started for ("" in older records)
    #: the xnat-hpc custom scopes the hub defined at this start (() in older records)
    server_scopes: tuple[str, ...] = ()

    @property
    def projects(self) -> frozenset[str]:
        """The scope's project ids (empty for an unrestricted scope: a hub never starts one)."""
        return frozenset(self.scope.projects or {})

    def to_state(self) -> dict:
        """The value to store under :data:`STATE_KEY` of the spawner's state."""
        return {"v": VERSION, "scope": self.scope.to_json(), "profile": self.profile,
                "backend": self.backend, "started": self.started, "token_sha256": self.token_sha256,
                "login": self.login, "server_scopes": list(self.server_scopes)}

    @classmethod
    def from_state(cls, state: Mapping | None) -> SpawnRecord | None:
        """The record in a spawner's *state* (the whole state dict), or None when it has
        none (a server started before this record existed, or by another spawner).
        A malformed record raises :class:`InvalidRequest` naming the problem: it was
        written by the hub, so it is never silently read as "no scope"."""
        doc = (state or {}).get(STATE_KEY) if isinstance(state, Mapping) else None
        if doc is None:
            return None
        if not isinstance(doc, Mapping) or doc.get("v") != VERSION or not isinstance(doc.get("scope"), str):
            raise InvalidRequest(f"the spawner state's {STATE_KEY!r} record is not version {VERSION}")
        scope = Scope.from_json(doc["scope"])
        if not scope.restricted:
            raise InvalidRequest(f"the spawner state's {STATE_KEY!r} record has an unrestricted scope")
        scopes = doc.get("server_scopes") or ()
        if not isinstance(scopes, (list, tuple)) or not all(isinstance(x, str) for x in scopes):
            raise InvalidRequest(f"the spawner state's {STATE_KEY!r} record has server_scopes that are not "
                                 "a list of scope names")
        return cls(scope=scope, profile=str(doc.get("profile") or ""), backend=str(doc.get("backend") or ""),
                   started=str(doc.get("started") or ""), token_sha256=str(doc.get("token_sha256") or ""),
                   login=str(doc.get("login") or ""), server_scopes=tuple(scopes))

    @staticmethod
    def configured_scopes(config: Mapping | None) -> tuple[str, ...]:
        """The xnat-hpc custom scopes (:data:`SCOPE_PREFIX`) that a hub's *config* (the traitlets
        ``Config`` a spawner has as ``self.config``) defines in ``JupyterHub.custom_scopes``,
        sorted: what a spawner records at a start as :attr:`server_scopes` (pure)."""
        hub = config.get("JupyterHub") if isinstance(config, Mapping) else None
        custom = hub.get("custom_scopes") if isinstance(hub, Mapping) else None
        if custom is not None and not isinstance(custom, Mapping) and hasattr(custom, "get_value"):
            custom = custom.get_value({})  # a lazy c.JupyterHub.custom_scopes.update(...)
        return tuple(sorted(s for s in (custom or {}) if str(s).startswith(SCOPE_PREFIX)))

    def issued(self, token: str) -> bool:
        """Whether *token* is the server's own hub token of this start (constant-time)."""
        return bool(self.token_sha256 and token) and hmac.compare_digest(self.token_sha256, token_sha256(token))


def token_sha256(token: str) -> str:
    """The digest a :class:`SpawnRecord` keeps of a server's hub token (hex sha256)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def server_of_token(records: Mapping[str, SpawnRecord | None], token: str) -> str | None:
    """The name of the server (of *records*: name → record of one user's **active** servers)
    whose own hub token *token* is, or None (pure)."""
    for name, record in records.items():
        if record is not None and record.issued(token):
            return name
    return None


def record_of(spawner) -> SpawnRecord | None:
    """The record of a JupyterHub spawner, from its state (``get_state()``, what JupyterHub
    persists); None for a spawner without one (another spawner class, or a server started
    before this record existed)."""
    get_state = getattr(spawner, "get_state", None)
    return SpawnRecord.from_state(get_state()) if callable(get_state) else None
