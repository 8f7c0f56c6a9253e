"""The one place where the hub turns the package's errors into what it answers.

Every error a person can act on is an :class:`~xnat_bridge.errors.XnatHpcError`
with a ``status`` and a ``message`` (:mod:`xnat_bridge.errors`). On the hub:

* **pages and APIs** (owner page, bootstrap API) answer :func:`http_error`:
  a client error (4xx) keeps its status and message; a failure of something the
  hub needs (XNAT, Slurm, a command: 5xx) becomes 503 with its message, the hub
  itself being fine; anything else is a bug: 500 with a generic message, the
  traceback in the hub's log. Handler methods get this with :func:`map_errors`.
* **spawn failures** answer :func:`spawn_error`: the same status rule, and the
  message as ``jupyterhub_message``, which JupyterHub shows on the spawn page and
  in the REST reply.
* **logins** answer :func:`login_error` (XNAT down: nobody can log in, say so).
* an incomplete hub configuration answers :func:`misconfigured` (500, with the
  setting to add).

An error that carries ``headers`` (a dict, e.g. :class:`RateLimited`'s ``Retry-After``)
hands them to the :class:`~tornado.web.HTTPError`; JupyterHub's ``APIHandler.write_error``
sends them with the JSON body.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tornado import web

from xnat_bridge.errors import XnatHpcError, XnatUnavailable

log = logging.getLogger(__name__)

#: what a person reads when the hub itself failed (the details are in the hub's log)
UNEXPECTED = ("The hub failed unexpectedly. Please try again; if it keeps failing, tell the "
              "hub's administrators (the details are in the hub's log).")

#: what a person reads when XNAT does not answer at login
LOGIN_UNAVAILABLE = ("XNAT is not reachable at the moment, so nobody can log in. "
                     "Please try again in a few minutes.")


class RateLimited(XnatHpcError):
    """Too much from one sender in too little time: try again after :attr:`retry_after` seconds
    (answered 429 with a ``Retry-After`` header)."""

    status = 429
    reason = "rate_limited"

    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


def status_for(exc: XnatHpcError) -> int:
    """The HTTP status for *exc*: a 4xx is kept; a 5xx (XNAT, Slurm, a command) is 503."""
    return exc.status if exc.status < 500 else 503


def http_error(exc: BaseException, *, logger: logging.Logger | logging.LoggerAdapter | None = None,
               ) -> web.HTTPError:
    """What a hub page or API answers for *exc* (see the module docstring)."""
    logger = logger or log
    if isinstance(exc, web.HTTPError):
        return exc
    if isinstance(exc, XnatHpcError):
        if exc.status >= 500:
            logger.warning("%s (answered %s)", exc.message, status_for(exc))
        err = web.HTTPError(status_for(exc), exc.message)
        headers = getattr(exc, "headers", None)
        if headers:
            err.headers = dict(headers)  # sent by JupyterHub's APIHandler.write_error
        return err
    logger.error("unexpected error in a hub handler: %r", exc, exc_info=exc)
    return web.HTTPError(500, UNEXPECTED)


def spawn_error(exc: XnatHpcError) -> web.HTTPError:
    """What JupyterHub shows the user when a start fails with *exc*."""
    err = web.HTTPError(status_for(exc), exc.message)
    err.jupyterhub_message = exc.message
    return err


def login_error(exc: XnatHpcError, *, logger: logging.Logger | logging.LoggerAdapter | None = None,
                ) -> web.HTTPError:
    """What the login page answers when XNAT cannot decide (*exc*) — not a refusal."""
    if isinstance(exc, XnatUnavailable):
        (logger or log).error("XNAT unavailable: %s", exc.message)
        return web.HTTPError(503, LOGIN_UNAVAILABLE)
    return http_error(exc, logger=logger)


def misconfigured(message: str, *, logger: logging.Logger | logging.LoggerAdapter | None = None,
                  ) -> web.HTTPError:
    """The hub's configuration lacks a setting: 500, with *message* saying which."""
    (logger or log).error("configuration: %s", message)
    return web.HTTPError(500, message)


_Handler = TypeVar("_Handler", bound=Callable[..., Awaitable[Any]])


def map_errors(method: _Handler) -> _Handler:
    """Decorate an async handler method so that every exception leaves it through :func:`http_error`."""

    @functools.wraps(method)
    async def wrapper(self, *args, **kwargs):
        try:
            return await method(self, *args, **kwargs)
        except web.HTTPError:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped: domain → 4xx/503, anything else → 500 + log
            raise http_error(exc, logger=getattr(self, "log", log)) from None

    return wrapper  # type: ignore[return-value]
