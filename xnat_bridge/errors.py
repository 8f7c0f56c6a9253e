"""The package's one exception hierarchy.

Every error that a person can act on is an :class:`XnatHpcError` subclass with
an HTTP status; the jupyter-server handlers and the hub map them to responses
in one place (``status`` → HTTP code, ``str(exc)`` → the message shown).
Anything else is a bug: 500 with a generic message, logged with its traceback.
"""

from __future__ import annotations


class XnatHpcError(Exception):
    """Base class: a failure with a message a person understands."""

    status = 500
    #: short machine-readable kind, used in JSON error bodies
    reason = "error"

    def __init__(self, message: str, *, item: str | None = None):
        super().__init__(message)
        self.message = message
        self.item = item

    def to_json(self) -> dict:
        body = {"error": self.reason, "message": self.message}
        if self.item:
            body["item"] = self.item
        return body


class InvalidRequest(XnatHpcError):
    """The request itself is wrong: bad name, path, value or manifest."""

    status = 400
    reason = "invalid_request"


class AuthenticationFailed(XnatHpcError):
    """XNAT rejected the credentials (wrong password, unknown user)."""

    status = 401
    reason = "authentication_failed"


class TokenExpired(AuthenticationFailed):
    """The XNAT alias token is no longer valid; log in again."""

    reason = "token_expired"


class PermissionDenied(XnatHpcError):
    """XNAT (or the server's scope) does not allow this user this item."""

    status = 403
    reason = "permission_denied"


class OutOfScope(PermissionDenied):
    """The item exists maybe, but is outside the scope this server was started for."""

    reason = "out_of_scope"


class NotFound(XnatHpcError):
    """No such project, subject, experiment, scan, resource, file, dataset or job."""

    status = 404
    reason = "not_found"


class Conflict(XnatHpcError):
    """The item changed underneath (e.g. a manifest whose files changed in XNAT)."""

    status = 409
    reason = "conflict"


class Gone(XnatHpcError):
    """The route or item existed in an earlier version and is retired; the message says what
    replaced it."""

    status = 410
    reason = "gone"


class XnatUnavailable(XnatHpcError):
    """XNAT did not answer, timed out, or answered with a 5xx."""

    status = 503
    reason = "xnat_unavailable"


class SlurmError(XnatHpcError):
    """A Slurm command failed (controller down, job rejected, ...)."""

    status = 502
    reason = "slurm_error"


class SlurmUnavailable(SlurmError):
    """Slurm's controller does not answer: nothing can be submitted now (try again later)."""

    status = 503
    reason = "slurm_unavailable"


class CommandFailed(XnatHpcError):
    """An external command exited non-zero; carries its exit code and output."""

    status = 500
    reason = "command_failed"

    def __init__(self, cmd, returncode: int, stdout: str = "", stderr: str = ""):
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        detail = (stderr or stdout).strip()
        super().__init__(
            f"command {self.cmd[0]!r} failed with exit code {returncode}"
            + (f": {detail}" if detail else "")
        )
