"""The JupyterHub plugin's state in devxnat's SQLite file: its preferences, the stored user
options (``UserOptionsEntity``: one per user and server name) and XNAT's event tracking
data (``EventTrackingData``: one per tracking key and user).

Tables live next to the store's in ``devxnat.sqlite3`` (0600); the hub token preference is
a secret kept there and never logged.
"""

from __future__ import annotations

import json
import time

from .plugin_configs import PREFERENCES
from .store import Store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jh_prefs (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jh_user_options (
    user_id INTEGER NOT NULL, servername TEXT NOT NULL, doc TEXT NOT NULL,
    PRIMARY KEY (user_id, servername));
CREATE TABLE IF NOT EXISTS event_tracking (
    key TEXT NOT NULL, user_id INTEGER NOT NULL, payload TEXT, succeeded INTEGER,
    final_message TEXT, ts REAL NOT NULL, PRIMARY KEY (key, user_id));
"""


class PluginState:
    """Preferences, user options and event tracking of the plugin over a :class:`Store`."""

    def __init__(self, store: Store, *, defaults: dict[str, str] | None = None):
        self.store = store
        self.defaults = dict(PREFERENCES)
        self.defaults.update(defaults or {})
        store.db.executescript(_SCHEMA)

    # -- preferences --------------------------------------------------------
    def pref(self, name: str) -> str:
        row = self.store.db.execute("SELECT value FROM jh_prefs WHERE name=?", (name,)).fetchone()
        return row[0] if row else self.defaults[name]

    def prefs(self) -> dict[str, str]:
        return {name: self.pref(name) for name in self.defaults}

    def set_pref(self, name: str, value: str) -> None:
        if name not in self.defaults:
            raise KeyError(name)
        with self.store.tx() as db:
            db.execute("INSERT OR REPLACE INTO jh_prefs(name, value) VALUES (?,?)", (name, str(value)))

    def num(self, name: str) -> float:
        """A numeric preference (devxnat also accepts fractions of seconds, for tests)."""
        try:
            return float(self.pref(name))
        except ValueError:
            return float(self.defaults[name])

    def flag(self, name: str) -> bool:
        return self.pref(name).strip().lower() == "true"

    # -- user options ---------------------------------------------------------
    def store_options(self, user_id: int, servername: str, doc: dict) -> None:
        with self.store.tx() as db:
            db.execute("INSERT OR REPLACE INTO jh_user_options VALUES (?,?,?)",
                       (user_id, servername, json.dumps(doc)))

    def options(self, user_id: int, servername: str) -> dict | None:
        row = self.store.db.execute("SELECT doc FROM jh_user_options WHERE user_id=? AND servername=?",
                                    (user_id, servername)).fetchone()
        return json.loads(row[0]) if row else None

    def remove_options(self, user_id: int, servername: str) -> None:
        with self.store.tx() as db:
            db.execute("DELETE FROM jh_user_options WHERE user_id=? AND servername=?", (user_id, servername))

    # -- event tracking ---------------------------------------------------------
    def track(self, key: str, user_id: int, status: str, progress: int, message: str) -> None:
        """One ``JupyterServerEvent``: appended to the key's payload; at progress 100 the
        tracking data is final (``succeeded`` = not Failed, ``finalMessage`` = message)."""
        now = time.time()
        with self.store.tx() as db:
            row = db.execute("SELECT payload FROM event_tracking WHERE key=? AND user_id=?",
                             (key, user_id)).fetchone()
            entries = json.loads(row[0])["entryList"] if row and row[0] else []
            entries.append({"status": status, "eventTime": int(now * 1000), "message": message})
            entries.sort(key=lambda e: e["eventTime"])
            payload = json.dumps({"entryList": entries})
            final = progress == 100
            db.execute(
                "INSERT INTO event_tracking(key, user_id, payload, succeeded, final_message, ts)"
                " VALUES (?,?,?,?,?,?) ON CONFLICT(key, user_id) DO UPDATE SET payload=excluded.payload,"
                " succeeded=COALESCE(excluded.succeeded, succeeded),"
                " final_message=COALESCE(excluded.final_message, final_message), ts=excluded.ts",
                (key, user_id, payload, (int(status != "Failed") if final else None),
                 (message if final else None), now))

    def tracking(self, key: str, user_id: int) -> dict | None:
        """``EventTrackingDataPojo`` (``@JsonInclude``: nulls kept)."""
        row = self.store.db.execute(
            "SELECT payload, succeeded, final_message FROM event_tracking WHERE key=? AND user_id=?",
            (key, user_id)).fetchone()
        if row is None:
            return None
        return {"key": key, "payload": row[0],
                "succeeded": None if row[1] is None else bool(row[1]), "finalMessage": row[2]}
