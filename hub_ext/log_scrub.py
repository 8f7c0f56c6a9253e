"""Keep tokens that arrive in URLs, and those in a dumped pod spec, out of the hub's log.

XNAT's JupyterHub plugin opens a user's server at ``{jupyterHubHostUrl}{server url}?token=<hub
token>`` (``jupyterhub-servers.js``: ``XNAT.plugin.jupyterhub.servers.goTo``). JupyterHub's
request log (``jupyterhub.log.log_request``) writes ``token=[secret]`` for a URL parameter whose
*name* contains ``token``, but not for a token carried inside another parameter's *value*. When
such a link reaches the hub itself (the server is not running, so the proxy sends it to the hub),
the hub redirects a visitor without a session to
``/hub/login?next=%2Fhub%2Fuser%2F…%3Ftoken%3D<token>`` and logs that ``next`` — the token — as
it is, in the redirect's line and in the login page's.

:class:`TokenScrubber` rewrites every ``…token=<value>`` in a log line, plain or URL-encoded once
or twice, to ``…token=[secret]``. :func:`scrub_token_params` puts it on the hub's request log
(``tornado.access``) and its application log (``JupyterHub``); call it from
``jupyterhub_config.py`` (``config/jupyterhub_config.py`` does). It changes only what is logged.

kubespawner logs the whole pod when the API server refuses it (a quota, a policy:
``Failed for {pod}``), the server's ``JUPYTERHUB_API_TOKEN`` value with it; the same filter
writes ``[secret]`` for the value of every environment variable whose name says it is secret
(``…TOKEN``, ``…PASS``, ``…SECRET``, ``…KEY``).
"""

from __future__ import annotations

import logging
import re

#: the loggers of the hub process whose lines may hold a request's URL
HUB_LOGGERS = ("tornado.access", "JupyterHub")

# a parameter whose name ends in "token" (token, access_token, api_token), "=" plain or encoded
# once (%3D) or twice (%253D); its value runs to the next "&" or "#" (plain, %26/%23, %2526/%2523),
# blank, quote or angle bracket
_TOKEN_PARAM = re.compile(
    r"(?i)(\w*token(?:=|%3D|%253D))"
    r"((?:[^&#\s\"'<>%]|%(?!26|23|2526|2523)[0-9A-Fa-f]{2})+)")
SECRET = "[secret]"
# an environment variable's value in a dumped pod or container spec (kubespawner logs the whole pod
# when the API refuses it: ``'name': 'JUPYTERHUB_API_TOKEN', 'value': '…'``, Python's or JSON's
# quotes), for a variable whose name says it is secret
_SECRET_ENV = re.compile(
    r"""(?i)((['"])name\2\s*:\s*(['"])\w*(?:TOKEN|PASS|PASSWORD|SECRET|KEY)\w*\3\s*,\s*"""
    r"""(['"])value\4\s*:\s*(['"]))((?:(?!\5).)*)(\5)""", re.S)


def scrub_tokens(text: str) -> str:
    """*text* with the value of every ``…token=`` parameter, and of every secret-named
    environment variable of a dumped pod spec, replaced by ``[secret]`` (pure)."""
    text = _TOKEN_PARAM.sub(lambda m: m.group(1) + SECRET, text)
    return _SECRET_ENV.sub(lambda m: m.group(1) + SECRET + m.group(7), text)


class TokenScrubber(logging.Filter):
    """A logging filter that passes every record, with :func:`scrub_tokens` applied to its
    message (the record's arguments are formatted into it first)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a badly formatted record: leave it to the handler
            return True
        scrubbed = scrub_tokens(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, ()
        return True


def scrub_token_params(loggers: tuple[str, ...] = HUB_LOGGERS) -> None:
    """Install one :class:`TokenScrubber` on each of *loggers* (again: nothing changes)."""
    for name in loggers:
        logger = logging.getLogger(name)
        if not any(isinstance(f, TokenScrubber) for f in logger.filters):
            logger.addFilter(TokenScrubber())
