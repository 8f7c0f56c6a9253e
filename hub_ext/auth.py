"""``XnatAuthenticator``: JupyterHub login against XNAT.

* A user logs in with their XNAT username and password — or with an XNAT alias
  token (alias as username, secret as password). The hub asks XNAT, obtains a
  fresh alias token for the user, and keeps it in the encrypted ``auth_state``
  (``JUPYTERHUB_CRYPT_KEY`` must be set). The password itself is never stored
  or logged.
* ``refresh_user`` re-validates the token with XNAT (every ``auth_refresh_age``
  seconds and before each spawn); when XNAT says no — token invalidated,
  account disabled, required role removed — the user must log in again. When
  XNAT is briefly unreachable, sessions are kept and the failure is logged.
* ``required_role`` gates login on an XNAT site role (like XNAT's own
  ``Jupyter`` role).
* **Names are never folded.** XNAT logins are case-sensitive; JupyterHub's default
  ``normalize_username`` lower-cases, which would make XNAT's ``ALICE`` the hub user
  ``alice`` (her server, home and ``auth_state``). Here the hub name is
  :func:`hub_ext.names.hub_name`: the admin's ``username_map`` entry, else the login itself
  when it is a valid name (``name_pattern``), else a name derived from it that no other login
  gets (``Jane.Doe`` → ``jane.doe--8c0b6e6f2c1ad7a5``). The same function serves XNAT's
  plugin (:mod:`hub_ext.plugin_gateway`), the spawners, the owners' pages and revocation. A
  login whose derived name another XNAT account already holds on this hub is refused.
* **No system accounts.** A hub name whose Unix account has a uid below
  ``c.UnixAccounts.min_uid`` (default 1000) is refused at login
  (:mod:`hub_ext.unix_accounts`; the local and Slurm backends check it again at start).

Configuration (``jupyterhub_config.py``)::

    c.JupyterHub.authenticator_class = "xnat"
    c.XnatAuthenticator.xnat_url = "https://xnat.example.org"
    c.XnatAuthenticator.required_role = "Jupyter"   # optional
    c.XnatAuthenticator.username_map = {"J.Doe": "jdoe"}   # optional: XNAT login -> hub name
"""

from __future__ import annotations

import asyncio
import json
import re

from traitlets import Bool, Dict, Float, TraitError, Unicode, default, validate

from xnat_bridge.errors import AuthenticationFailed, PermissionDenied, TokenExpired, XnatUnavailable
from xnat_bridge.extras import needs_extra

from .errors import http_error, login_error, misconfigured
from .names import DEFAULT_NAME_PATTERN, hub_name as mapped_hub_name
from .unix_accounts import UnixAccounts
from .xnat_api import AliasToken, XnatHubClient, token_is_expiring

with needs_extra("hub", "the XNAT authenticator (hub_ext.auth)"):
    from jupyterhub import orm
    from jupyterhub.auth import Authenticator

#: XNAT login names: letters, digits and ``_ - . @`` (alias tokens are UUIDs, which fit)
_USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,254}$")
SITE_ADMIN_ROLE = "Administrator"
def hub_name_problem(xnat_user: str, hub_name: str, *, pattern: str, mapping: dict[str, str],
                     holder: str | None = None) -> str:
    """Why the XNAT login *xnat_user* may not be the hub user *hub_name*; "" when it may (pure).

    *hub_name* is what ``normalize_username`` made of the login (:func:`hub_ext.names.hub_name`);
    *holder* the XNAT login the hub user already belongs to (its ``auth_state``), if any."""
    if holder is not None and holder != xnat_user:
        return (f"The XNAT account {xnat_user!r} cannot log in here because its hub user "
                f"{hub_name!r} already belongs to the XNAT account {holder!r}; the hub's "
                "administrators must give one of them another name (c.XnatAuthenticator.username_map).")
    if not re.fullmatch(pattern, hub_name):
        how = ("map it to one with c.XnatAuthenticator.username_map" if xnat_user not in mapping
               else "correct its entry in c.XnatAuthenticator.username_map")
        rule = ("lower-case letters, digits, '_', '.' and '-', at most 32 characters"
                if pattern == DEFAULT_NAME_PATTERN else f"it must match {pattern}")
        return (f"The XNAT account {xnat_user!r} cannot log in here because {hub_name!r} is not a "
                f"valid user name on this hub ({rule}; names are never changed silently, the "
                f"hub's administrators can {how}).")
    return ""


class XnatAuthenticator(Authenticator):
    """Authenticate JupyterHub users against XNAT (password or alias token)."""

    xnat_url = Unicode(
        help="""Base URL of the XNAT server, e.g. ``https://xnat.example.org`` (no trailing
        ``/data``). Users log in with their XNAT credentials; the hub obtains an XNAT
        alias token for each user and hands it to their servers. Required.""",
    ).tag(config=True)

    @default("xnat_url")
    def _default_xnat_url(self):
        import os

        return os.environ.get("XNAT_HOST", "")

    @validate("xnat_url")
    def _validate_xnat_url(self, proposal):
        url = proposal["value"].strip().rstrip("/")
        if url and not re.match(r"^https?://[^/\s]+", url):
            raise ValueError(f"xnat_url must be an http(s) URL, got {url!r}")
        return url

    required_role = Unicode(
        "",
        help="""XNAT site role a user must hold to log in, e.g. ``Jupyter`` (XNAT's own
        JupyterHub plugin uses that role). Empty (the default) lets every enabled XNAT
        account log in. Site administrators always may. Checked at login and at every
        refresh, so removing the role in XNAT logs the user out within
        ``auth_refresh_age`` seconds.""",
    ).tag(config=True)

    request_timeout = Float(
        10.0,
        help="Seconds to wait for XNAT on each login/refresh request (default 10).",
    ).tag(config=True)

    validate_cert = Bool(
        True,
        help="Verify XNAT's TLS certificate. Turn off only for a test server.",
    ).tag(config=True)

    admin_from_xnat = Bool(
        False,
        help="""Make XNAT site administrators JupyterHub admins (and demote them when
        XNAT does). Off by default: hub admins can act as any user.""",
    ).tag(config=True)

    name_pattern = Unicode(
        DEFAULT_NAME_PATTERN,
        help=f"""Regular expression (matched in full) that a hub user name must match: the XNAT
        login itself, or its entry in ``username_map``. The local and Slurm backends run
        servers as the Unix account of that name, so the default is a lower-case Unix
        account name, ``{DEFAULT_NAME_PATTERN}``. A login whose name does not match is
        refused with a message saying so — never lower-cased or otherwise changed, because
        XNAT logins are case-sensitive and folding them would make two XNAT accounts one hub
        user. Widen it only where the hub's spawners accept such names (e.g. Kubernetes
        only: ``[A-Za-z0-9_.@-]{{1,64}}``).""",
    ).tag(config=True)

    @validate("name_pattern")
    def _validate_name_pattern(self, proposal):
        try:
            re.compile(proposal["value"])
        except re.error as e:
            raise TraitError(f"XnatAuthenticator.name_pattern is not a regular expression: {e}") from None
        return proposal["value"]

    username_map = Dict(
        help="""Explicit XNAT login → hub user name table, e.g. ``{"J.Doe": "jdoe", "ALICE":
        "alice2"}``. Keys are XNAT logins exactly as XNAT spells them (case-sensitive; nothing
        is lower-cased first, unlike JupyterHub's default). One-to-one: two logins mapped to
        the same hub name are refused when the hub starts. A hub name used here is reserved:
        the XNAT account of that name, if unmapped, cannot log in. Changing an entry logs the
        affected user out at the next refresh. Unmapped logins keep their name and must match
        ``name_pattern``.""",
    ).tag(config=True)

    @validate("username_map")
    def _validate_username_map(self, proposal):
        mapping = proposal["value"]
        seen: dict[str, str] = {}
        for xnat_name, hub_name in mapping.items():
            if not isinstance(xnat_name, str) or not isinstance(hub_name, str) or not hub_name:
                raise TraitError("XnatAuthenticator.username_map maps XNAT logins (str) to hub "
                                 f"names (non-empty str), got {xnat_name!r}: {hub_name!r}")
            if hub_name in seen:
                raise TraitError(f"XnatAuthenticator.username_map gives the hub name {hub_name!r} "
                                 f"to both {seen[hub_name]!r} and {xnat_name!r}; each hub name "
                                 "must belong to one XNAT account")
            seen[hub_name] = xnat_name
        return mapping

    token_renew_margin = Float(
        3600.0,
        help="""Seconds before the XNAT alias token expires at which ``refresh_user``
        replaces it with a new one (XNAT tokens last 48 h by default).""",
    ).tag(config=True)

    # JupyterHub defaults that this authenticator needs
    @default("enable_auth_state")
    def _default_enable_auth_state(self):
        return True

    @default("allow_all")
    def _default_allow_all(self):
        # XNAT is the gatekeeper (enabled account, optional required_role); an admin who
        # lists allowed_users narrows it further
        return not self.allowed_users

    @default("auth_refresh_age")
    def _default_auth_refresh_age(self):
        return 300

    @default("refresh_pre_spawn")
    def _default_refresh_pre_spawn(self):
        return True

    def normalize_username(self, username: str) -> str:
        """XNAT login → hub name (:func:`hub_ext.names.hub_name`: ``username_map``, the login
        itself when valid, else a derived name).

        Replaces JupyterHub's default, which lower-cases (XNAT logins are case-sensitive:
        ``ALICE`` is not ``alice``). Whether the result may log in is decided in
        :meth:`authenticate` (:func:`hub_name_problem`, ``name_pattern``)."""
        return mapped_hub_name(username, self.username_map, self.name_pattern)

    def validate_username(self, username: str) -> bool:
        """JupyterHub's checks, and ``name_pattern``: the same rule for logins, names created
        through the REST API and ``allowed_users``/``admin_users``."""
        return super().validate_username(username) and bool(re.fullmatch(self.name_pattern, username))

    @property
    def client(self) -> XnatHubClient:
        if not self.xnat_url:
            raise misconfigured("XnatAuthenticator.xnat_url is not configured", logger=self.log)
        return XnatHubClient(self.xnat_url, timeout=self.request_timeout,
                             validate_cert=self.validate_cert)

    async def authenticate(self, handler, data):
        """:meth:`_check_login`, audited: every success and failure goes to the hub's trail
        (``login``; the attempted name, never the password; failures from one address capped
        at :data:`LOGIN_AUDIT_PER_MINUTE` a minute, the rest counted in the next record)."""
        attempted = "".join(ch for ch in str((data or {}).get("username", "")).strip()[:64] if ch.isprintable())
        remote = getattr(getattr(handler, "request", None), "remote_ip", "") or ""
        try:
            result = await self._check_login(handler, data)
        except Exception as exc:
            reason = getattr(exc, "log_message", "") or type(exc).__name__
            outcome = "failed" if getattr(exc, "status_code", 0) >= 500 else "denied"
            await _audit_login(self, attempted, outcome, f"from {remote}: {reason}", remote)
            raise
        if result:
            await _audit_login(self, result["name"], "allowed", f"from {remote}", remote)
        else:
            await _audit_login(self, attempted or "(empty)", "denied",
                               f"from {remote}: wrong name or password, or refused by XNAT", remote)
        return result

    async def _check_login(self, handler, data):
        username = (data or {}).get("username", "").strip()
        password = (data or {}).get("password", "")
        if not username or not password:
            return None
        if not _USERNAME_RE.match(username):
            self.log.warning("login refused: malformed username %r", username[:64])
            return None
        client = self.client
        try:
            token = await client.issue_token(username, password)
            xnat_user = await client.validate_token(token.alias, token.secret)
            roles = await client.roles(xnat_user, token)
        except (AuthenticationFailed, PermissionDenied):
            self.log.warning("login refused by XNAT for %r", username)
            return None
        except XnatUnavailable as e:
            raise login_error(e, logger=self.log) from None
        if not self._role_ok(roles):
            await client.invalidate_token(token)
            self.log.warning("login refused for %r: lacks XNAT role %r", xnat_user,
                             self.required_role)
            raise http_error(PermissionDenied(
                f"Your XNAT account does not have the '{self.required_role}' role that "
                "this hub requires. Ask your XNAT administrator to grant it."))
        hub_name = self.normalize_username(xnat_user)
        try:
            problem = hub_name_problem(xnat_user, hub_name, pattern=self.name_pattern,
                                       mapping=self.username_map,
                                       holder=await _holder_of(handler, hub_name))
            if problem:
                raise PermissionDenied(problem)
            accounts = UnixAccounts(config=self.config, log=self.log)
            await asyncio.to_thread(accounts.lookup, hub_name)  # a system account: refused
        except PermissionDenied as e:
            await client.invalidate_token(token)
            self.log.warning("login refused for XNAT account %r: %s", xnat_user, e.message)
            raise http_error(e) from None
        self.log.info("XNAT login ok for %r as hub user %r (roles %s)", xnat_user, hub_name, roles)
        return {
            "name": xnat_user,
            "admin": (SITE_ADMIN_ROLE in roles) if self.admin_from_xnat else None,
            "auth_state": {
                "xnat_user": xnat_user,
                "xnat_url": self.xnat_url,
                "xnat_token": token.to_state(),
                "xnat_roles": roles,
            },
        }

    def _role_ok(self, roles: list[str]) -> bool:
        return (not self.required_role or self.required_role in roles
                or SITE_ADMIN_ROLE in roles)

    async def refresh_user(self, user, handler=None):
        state = await user.get_auth_state() or {}
        token = AliasToken.from_state(state.get("xnat_token"))
        if token is None:
            # A user who never logged in to the hub, started by XNAT's "Start Jupyter" (a
            # service posting the plugin's body): the spawner checks the alias token XNAT
            # issued for this start instead (spawner.xnat_launch), or refuses the start.
            return _is_xnat_plugin_start(handler)
        client = self.client
        try:
            xnat_user = await client.validate_token(token.alias, token.secret)
            if xnat_user != state.get("xnat_user") or self.normalize_username(xnat_user) != user.name:
                return False  # another account's token, or username_map changed: log in again
            roles = await client.roles(xnat_user, token)
            if not self._role_ok(roles):
                self.log.warning("%s lost XNAT role %r: logging out", xnat_user,
                                 self.required_role)
                return False
            if token_is_expiring(token, self.token_renew_margin):
                new = await client.issue_token(token.alias, token.secret)
                await client.invalidate_token(token)
                token = new
        except (TokenExpired, AuthenticationFailed, PermissionDenied):
            self.log.info("XNAT token of %s no longer valid: login required", user.name)
            return False
        except XnatUnavailable as e:
            # keep sessions through a short XNAT outage; spawns still re-check
            self.log.warning("cannot refresh %s, XNAT unavailable: %s", user.name, e.message)
            return True
        new_state = {**state, "xnat_token": token.to_state(), "xnat_roles": roles}
        if new_state == state and not self.admin_from_xnat:
            return True  # nothing changed: spare the encrypt + database write
        result = {"auth_state": new_state}
        if self.admin_from_xnat:
            result["admin"] = SITE_ADMIN_ROLE in roles
        return result


async def _holder_of(handler, hub_name: str) -> str | None:
    """The XNAT login the existing hub user *hub_name* last logged in as (its ``auth_state``);
    None for a new user or one who never logged in to the hub."""
    find = getattr(handler, "find_user", None)
    user = find(hub_name) if find is not None else None
    if user is None:
        return None
    state = await user.get_auth_state() or {}
    return state.get("xnat_user") or None


def _is_xnat_plugin_start(handler) -> bool:
    """True when *handler* is a service's ``POST …/users/{u}/server[s/{name}]`` with the XNAT
    plugin's body (``xsiType``): the start then carries its own XNAT credential."""
    if handler is None or getattr(handler.request, "method", "") != "POST":
        return False
    requester = getattr(handler, "current_user", None)
    if not isinstance(requester, orm.Service) or "/server" not in handler.request.path:
        return False
    try:
        body = json.loads(handler.request.body or b"{}")
    except ValueError:
        return False
    return isinstance(body, dict) and "xsiType" in body


#: failed logins from one address recorded per minute (the rest are counted, not recorded)
LOGIN_AUDIT_PER_MINUTE = 20
_login_failures: dict[str, list[float]] = {}


async def _audit_login(auth: Authenticator, name: str, outcome: str, detail: str, remote: str) -> None:
    """One ``login`` event on the hub's trail; never fails the login itself."""
    import time

    from .hub_events import HubEventLog

    if outcome != "allowed":
        now = time.monotonic()
        window = _login_failures.setdefault(remote, [now, 0, 0])  # [start, recorded, suppressed]
        if now - window[0] > 60:
            window[:] = [now, 0, window[2]]
        if window[1] >= LOGIN_AUDIT_PER_MINUTE:
            window[2] += 1
            return
        window[1] += 1
        if window[2]:
            detail, window[2] = f"{detail} (+{window[2]} failed logins from {remote} not recorded one by one)", 0
        if len(_login_failures) > 10000:
            _login_failures.clear()
    try:
        await HubEventLog(config=auth.config, log=auth.log).record(name or "(empty)", "login", outcome,
                                                                   detail=detail[:300])
    except Exception:  # noqa: BLE001 - the trail must not decide who logs in; the admin must know
        auth.log.exception("could not audit the login of %r", name)
