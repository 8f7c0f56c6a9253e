"""The plugin's culling tasks: ``JupyterHubPlugin``'s ``TriggerTask`` beans ``cullIdleServers``
and ``cullLongRunningServers`` (each a ``PeriodicTrigger(5, MINUTES)``), which run
``DefaultJupyterHubService.cullInactiveServers`` and ``cullLongRunningServers``.

Each pass, as the plugin's:

* does nothing while its preference is 0 or less: ``inactivityTimeout`` (minutes, default 60)
  or ``maxServerLifetime`` (hours, default 48);
* asks the hub once, ``GET {api}/users`` (the client's ``getUsers``: no pagination, so the
  hub's first page — 200 users unless ``JupyterHub.api_page_default_limit`` says otherwise),
  read into the client's ``User``/``Server`` model (:func:`read_users`);
* looks at **every** server of every listed user, whoever started it (XNAT's UI, the hub's
  form, the REST API): idle when ``ChronoUnit.MINUTES.between(last_activity, now) >
  inactivityTimeout``, too old when ``ChronoUnit.HOURS.between(started, now) >=
  maxServerLifetime`` (whole units, truncated: :func:`java_between`);
* looks the hub user up as an XNAT user (``userManagementService.getUser``): none, and the
  plugin logs an error and leaves the server;
* stops the server with the plugin's own ``stopServer`` (:meth:`.JupyterHubService.stop`:
  ``DELETE`` with ``{"remove": true}``, polling, the stored user options removed), its
  events under the key ``{now}_cullIdleServers`` / ``{now}_cullLongRunningServers``
  (``ZonedDateTime.toString()`` of UTC, e.g. ``2026-12-07T01:00:05.123Z[UTC]``), and goes
  on without waiting for it (the plugin's ``CompletableFuture``);
* ends at the first error (the hub unreachable, a model the client cannot read, a server
  without ``last_activity``/``started``: the plugin's ``NullPointerException``) with the
  plugin's ``Failed to cull … Jupyter notebook servers``; stops already sent stay sent.

Consequences a site sees (docs/devxnat.md, docs/admin.md): form-started named servers of
users whose hub name is an XNAT login are culled and *removed* too; a default server
(``/users/{u}/server``) cannot be: JupyterHub answers the remove with 400, the stop fails.

devxnat runs the two passes every ``--jupyterhub-cull-every`` seconds (0, the default: never;
the plugin: every 300 s, always), the first one interval after start-up, and tests call
:meth:`PluginCuller.cull_once` with the time they choose.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from .jupyterhub_service import JupyterHubService

log = logging.getLogger(__name__)

#: ``@JsonFormat(pattern = "yyyy-MM-dd'T'HH:mm:ss[.SSSSSS]X")`` of the client's models:
#: six fraction digits or none, an offset ``Z`` or ``±HH[mm]``
_JAVA_TIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{6}))?"
                        r"(Z|[+-]\d{2}(?:\d{2})?)")
#: the plugin's pass runs every 5 minutes (``PeriodicTrigger(5, TimeUnit.MINUTES)``)
PLUGIN_INTERVAL = 300.0


class ModelError(ValueError):
    """The hub's answer does not fit the client's model (Jackson would throw)."""


def parse_java_time(value) -> datetime | None:
    """A ``ZonedDateTime`` field of the client's models (None stays None)."""
    if value is None:
        return None
    m = _JAVA_TIME.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise ModelError(f"cannot read {value!r} as yyyy-MM-dd'T'HH:mm:ss[.SSSSSS]X")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    off = m.group(8)
    if off == "Z":
        tz = timezone.utc
    else:
        sign = -1 if off[0] == "-" else 1
        tz = timezone(sign * timedelta(hours=int(off[1:3]), minutes=int(off[3:5] or 0)))
    return datetime(year, month, day, hour, minute, second, int(m.group(7) or 0), tzinfo=tz)


def _string_map(value, what: str) -> dict | None:
    """``Map<String, String>``: Jackson turns scalars into strings and refuses the rest."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ModelError(f"{what} is not a JSON object")
    out = {}
    for k, v in value.items():
        if isinstance(v, (dict, list)):
            raise ModelError(f"{what}[{k!r}] is not a string")
        out[k] = None if v is None else (str(v).lower() if isinstance(v, bool) else str(v))
    return out


def read_users(doc) -> list[dict]:
    """``GET /users`` as the client reads it (``User[]``): name, and per server its name,
    ``started``, ``last_activity`` (datetimes or None) and flat ``user_options``; ``servers``
    None when the hub sent none (no ``read:servers``). :class:`ModelError` where Jackson
    would fail, which ends the plugin's pass."""
    if not isinstance(doc, list):
        raise ModelError("the hub's user list is not a JSON array")
    users = []
    for u in doc:
        if not isinstance(u, dict):
            raise ModelError("a user of the hub's list is not a JSON object")
        servers = u.get("servers")
        if servers is not None and not isinstance(servers, dict):
            raise ModelError(f"servers of {u.get('name')!r} is not a JSON object")
        users.append({
            "name": u.get("name"),
            "servers": None if servers is None else {
                name: {"name": s.get("name"),
                       "started": parse_java_time(s.get("started")),
                       "last_activity": parse_java_time(s.get("last_activity")),
                       "user_options": _string_map(s.get("user_options"), f"user_options of {name!r}")}
                for name, s in servers.items()},
        })
    return users


def java_between(start: datetime, end: datetime, unit: timedelta) -> int:
    """``ChronoUnit.{MINUTES,HOURS}.between(start, end)``: whole units, truncated toward zero
    (negative when *end* is earlier). A None *start* is the plugin's NullPointerException."""
    if start is None:
        raise TypeError("ChronoUnit.between: start is null (NullPointerException in the plugin)")
    micros = (end - start) // timedelta(microseconds=1)
    per = unit // timedelta(microseconds=1)
    whole = abs(micros) // per
    return whole if micros >= 0 else -whole


def java_zoned_utc(now: datetime) -> str:
    """``ZonedDateTime.now(ZoneId.of("UTC")).toString()`` on Java 8 (millisecond clock):
    ``2026-12-07T01:00Z[UTC]``, ``…T01:00:05Z[UTC]``, ``…T01:00:05.123Z[UTC]``."""
    t = now.astimezone(timezone.utc)
    ms = t.microsecond // 1000
    text = f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}"
    if t.second or ms:
        text += f":{t.second:02d}"
        if ms:
            text += f".{ms:03d}"
    return text + "Z[UTC]"


@dataclasses.dataclass(frozen=True)
class Rule:
    """One of the plugin's two culling tasks."""

    preference: str
    unit: timedelta
    field: str
    key_suffix: str
    because: str
    noun: str

    def due(self, server: dict, now: datetime, limit: int) -> bool:
        elapsed = java_between(server[self.field], now, self.unit)
        return elapsed > limit if self.field == "last_activity" else elapsed >= limit


#: ``cullInactiveServers``: idle longer than ``inactivityTimeout`` whole minutes
INACTIVE = Rule("inactivityTimeout", timedelta(minutes=1), "last_activity", "_cullIdleServers",
                "due to inactivity", "idle")
#: ``cullLongRunningServers``: started at least ``maxServerLifetime`` whole hours ago
LONG_RUNNING = Rule("maxServerLifetime", timedelta(hours=1), "started", "_cullLongRunningServers",
                    "due to long running time", "long running")


@dataclasses.dataclass(frozen=True)
class Cull:
    """A stop one pass sent: hub user, server name, the rule's preference, event key."""

    user: str
    server: str
    preference: str
    key: str


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class PluginCuller:
    """The plugin's two culling tasks over devxnat's plugin state (``settings`` as the app's:
    ``store``, ``plugin_state``, ``plugin_tasks``); *clock* gives "now" (UTC) to the
    periodic passes."""

    def __init__(self, settings, *, clock: Callable[[], datetime] = _utcnow):
        self.settings = settings
        self.clock = clock
        self._loops: list[asyncio.Task] = []

    def service(self) -> JupyterHubService:
        return JupyterHubService(self.settings)

    async def cull_once(self, now: datetime | None = None) -> list[Cull]:
        """Both passes at *now* (default: the clock), idle first; the stops they sent (their
        tasks are in ``settings["plugin_tasks"]``)."""
        now = now or self.clock()
        return await self.cull_inactive_servers(now) + await self.cull_long_running_servers(now)

    async def cull_inactive_servers(self, now: datetime | None = None) -> list[Cull]:
        return await self._pass(INACTIVE, now or self.clock())

    async def cull_long_running_servers(self, now: datetime | None = None) -> list[Cull]:
        return await self._pass(LONG_RUNNING, now or self.clock())

    async def _pass(self, rule: Rule, now: datetime) -> list[Cull]:
        sent: list[Cull] = []
        service = self.service()
        try:
            limit = int(service.state.pref(rule.preference))  # getLongValue
            if limit <= 0:
                log.debug("Not culling %s Jupyter notebook servers", rule.noun)
                return sent
            log.debug("Culling %s Jupyter notebook servers", rule.noun)
            users = read_users(await service.client().users())
            key = java_zoned_utc(now) + rule.key_suffix
            for user in users:
                for servername, server in user["servers"].items():  # None: the plugin's NPE
                    if not rule.due(server, now, limit):
                        continue
                    if service.store.user(user["name"]) is None:
                        log.error("Unable to delete long running Jupyter server for user %s", user["name"])
                        continue
                    log.info("Removing Jupyter server %s for user %s %s.", servername, user["name"],
                             rule.because)
                    service.stop(user["name"], servername, key)
                    sent.append(Cull(user["name"], servername, rule.preference, key))
        except Exception as e:  # noqa: BLE001 - the plugin's catch-all around the pass
            log.error("Failed to cull %s Jupyter notebook servers (%s: %s)", rule.noun,
                      type(e).__name__, e)
        return sent

    # -- the schedule ---------------------------------------------------------------
    def start(self, every: float = PLUGIN_INTERVAL) -> None:
        """Run each pass every *every* seconds after the previous one ended (Spring's
        ``PeriodicTrigger``: fixed delay), the first one *every* seconds from now; on the
        running loop, until :meth:`stop`."""
        if every <= 0:
            raise ValueError("the culling interval must be > 0 seconds")
        self.stop()
        loop = asyncio.get_running_loop()
        self._loops = [loop.create_task(self._every(every, p))
                       for p in (self.cull_inactive_servers, self.cull_long_running_servers)]

    async def _every(self, every: float, run_pass) -> None:
        while True:
            await asyncio.sleep(every)
            await run_pass(self.clock())

    def stop(self) -> None:
        for task in self._loops:
            task.cancel()
        self._loops = []
