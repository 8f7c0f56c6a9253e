"""The progress channel of one server start.

JupyterHub asks the spawner it knows for ``progress()``; with the dispatcher
(:mod:`spawner.dispatch`) the work is done by a backend spawner it created. So
the spawner JupyterHub knows makes one :class:`SpawnProgress` per start, the
dispatcher hands it to its backend (``child.spawn_progress = ...``), whoever
does the work calls :meth:`SpawnProgress.emit`, and ``progress()`` reads it
with :func:`follow`.

Async contract: everything runs on the hub's event loop; :meth:`SpawnProgress.emit`
never blocks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable


class SpawnProgress:
    """Events ``{"progress": 0-100, "message": text}`` of one start, in order."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self._changed = asyncio.Event()

    def emit(self, progress: int, message: str) -> None:
        self.events.append({"progress": int(progress), "message": message})
        self._changed.set()

    async def wait_beyond(self, seen: int, timeout: float) -> None:
        """Return when there are more than *seen* events, or after *timeout* seconds."""
        if len(self.events) > seen:
            return
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass


async def follow(current: Callable[[], SpawnProgress | None], pending: Callable[[], bool],
                 interval: float = 1.0) -> AsyncIterator[dict]:
    """Yield the events of ``current()`` as they come, while ``pending()``, then the rest.

    ``current()`` is read again at every step: when a new start replaces the channel
    (or makes the first one), following starts over with the new channel's events.
    """
    channel: SpawnProgress | None = None
    sent = 0
    while True:
        latest = current()
        if latest is not channel:
            channel, sent = latest, 0
        if channel is not None:
            while sent < len(channel.events):
                yield channel.events[sent]
                sent += 1
        if not pending():
            return
        if channel is None:
            await asyncio.sleep(min(interval, 0.1))
        else:
            await channel.wait_beyond(sent, interval)
