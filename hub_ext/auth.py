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

Configuration (``jupyterhub_config.py``)::

    c.JupyterHub.authenticator_class = "xnat"
    c.XnatAuthenticator.xnat_url = "https://xnat.example.org"
    c.XnatAuthenticator.required_role = "Jupyter"   # optional
"""

from __future__ import annotations

import re

from jupyterhub.auth import Authenticator
from traitlets import Bool, Float, Unicode, default, validate

from xnat_bridge.errors import AuthenticationFailed, PermissionDenied, TokenExpired, XnatUnavailable

from .errors import http_error, login_error, misconfigured
from .xnat_api import AliasToken, XnatHubClient, token_is_expiring

#: XNAT login names: letters, digits and ``_ - . @`` (alias tokens are UUIDs, which fit)
_USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,254}$")
SITE_ADMIN_ROLE = "Administrator"


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

    @property
    def client(self) -> XnatHubClient:
        if not self.xnat_url:
            raise misconfigured("XnatAuthenticator.xnat_url is not configured", logger=self.log)
        return XnatHubClient(self.xnat_url, timeout=self.request_timeout,
                             validate_cert=self.validate_cert)

    async def authenticate(self, handler, data):
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
        self.log.info("XNAT login ok for %r (roles %s)", xnat_user, roles)
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
            return False
        client = self.client
        try:
            xnat_user = await client.validate_token(token.alias, token.secret)
            if xnat_user != state.get("xnat_user"):
                return False
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
