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
import time
from collections.abc import AsyncIterator, Callable

from xnat_bridge.offload.phases import PhaseClock


#: the phases of a server's start, in order (a backend passes through those it has):
#: ``checks`` (XNAT permissions, revocation, the plan), ``prepare`` (the hub's work on the host:
#: the staging directory), ``sbatch``, ``queued`` (until Slurm runs the job), ``bootstrap``
#: (until the job claimed its secrets from the hub), ``server_start`` (until the backend has
#: the server's address), ``listening`` (until the server accepts connections)
SPAWN_PHASES = ("checks", "prepare", "sbatch", "queued", "bootstrap", "server_start", "listening")


class SpawnProgress:
    """Events ``{"progress": 0-100, "message": text}`` of one start, in order, and where the
    start's time went (:attr:`phases`, a :class:`~xnat_bridge.offload.phases.PhaseClock` over
    :data:`SPAWN_PHASES`)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.events: list[dict] = []
        self._changed = asyncio.Event()
        self.phases = PhaseClock(clock, order=SPAWN_PHASES)

    def phase(self, name: str) -> None:
        """End phase *name* now — unless it or a later one already ended (a backend may learn
        of a phase late: the job's claim can reach the hub before its queue poll sees it run)."""
        later = SPAWN_PHASES[SPAWN_PHASES.index(name):]
        if not any(p in self.phases.durations for p in later):
            self.phases.mark(name)

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
