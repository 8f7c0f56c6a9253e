"""What the development server may write to its log about a request.

Request lines go to the log (tornado's access log, error lines). XNAT's token
API puts an alias token's secret into the path
(``/data/services/tokens/validate/{alias}/{secret}``, the same for
``invalidate``), and clients may put a password into a query string; a log
line must show neither. :func:`redact_uri` replaces the secret path segment of
the token endpoints and the value of every query parameter whose name suggests
a credential with :data:`MASK`, keeping the rest readable for debugging.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

MASK = "[redacted]"

#: ``.../services/tokens/{validate|invalidate}/{alias}/{secret}`` (any prefix: /data, /xapi, /REST)
_TOKEN_PATH = re.compile(r"(/services/tokens/(?:validate|invalidate)/[^/?#]*)/[^?#]*", re.IGNORECASE)
#: query parameters whose value is a credential
_SECRET_KEY = re.compile(r"pass|secret|token|auth|key|jsession", re.IGNORECASE)


def redact_uri(uri: str) -> str:
    """*uri* (path and query) with token secrets and credential parameters masked."""
    path, sep, query = uri.partition("?")
    # %2F-encoded slashes would hide the secret segment from the pattern: decode them first
    decoded = unquote(path) if "%" in path else path
    if _TOKEN_PATH.search(decoded):
        path = _TOKEN_PATH.sub(lambda m: f"{m.group(1)}/{MASK}", decoded)
    if not sep:
        return path
    parts = []
    for pair in query.split("&"):
        name, eq, _value = pair.partition("=")
        parts.append(f"{name}={MASK}" if eq and _SECRET_KEY.search(unquote(name)) else pair)
    return f"{path}?{'&'.join(parts)}"
