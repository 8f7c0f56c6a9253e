"""The HTTP errors the development server answers with (XNAT's wire behaviour).

A handler raises one of these; :class:`devxnat.handler.BaseHandler` turns it into
XNAT's HTML status page with ``status`` as the HTTP code and ``message`` as the
text (401 also carries ``WWW-Authenticate``). These are the stand-in's own
classes on purpose: the statuses are XNAT's protocol, independent of how the
``xnat_bridge`` client reports errors to its users.
"""

from __future__ import annotations


class HttpError(Exception):
    """An answer other than success: an HTTP ``status`` and a ``message`` for the page."""

    status = 500

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class BadRequest(HttpError):
    """A malformed path, body or parameter (400)."""

    status = 400


class Unauthorized(HttpError):
    """No login, or credentials that do not log in (401)."""

    status = 401


class Forbidden(HttpError):
    """The item exists but the logged-in user may not see or change it (403)."""

    status = 403


class NotFound(HttpError):
    """No such item or path (404)."""

    status = 404


class MethodNotAllowed(HttpError):
    """The path exists but does not answer this method (405)."""

    status = 405


class InternalError(HttpError):
    """The server failed, e.g. a call it made to another service (500)."""

    status = 500


class Conflict(HttpError):
    """The item to create exists already (409)."""

    status = 409
