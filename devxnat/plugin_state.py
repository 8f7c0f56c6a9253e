"""The JupyterHub plugin's state in devxnat's SQLite file: its preferences, the stored user
options (``UserOptionsEntity``: one per user and server name), XNAT's event tracking
data (``EventTrackingData``: one per tracking key and user) and the compute services' hardware
and compute-environment configs (:class:`ComputeConfigs`).

Tables live next to the store's in ``devxnat.sqlite3`` (0600); the hub token preference is
a secret kept there and never logged.
"""

from __future__ import annotations

import json
import sqlite3
import time

from . import compute_services as cs
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
CREATE TABLE IF NOT EXISTS compute_hardware_configs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS compute_environment_configs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS compute_environment_hardware (
    env_id INTEGER NOT NULL, hardware_id INTEGER NOT NULL, PRIMARY KEY (env_id, hardware_id));
"""


class PluginState:
    """Preferences, user options and event tracking of the plugin over a :class:`Store`."""

    def __init__(self, store: Store, *, defaults: dict[str, str] | None = None):
        self.store = store
        self.defaults = dict(PREFERENCES)
        self.defaults.update(defaults or {})
        store.db.executescript(_SCHEMA)
        self.compute = ComputeConfigs(store)

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


class ComputeConfigs:
    """XNAT's compute services over devxnat's store: ``DefaultHardwareConfigService`` and
    ``DefaultComputeEnvironmentConfigService`` (create, update, delete, the hardware each
    environment allows), seeded as ``JupyterHubEnvironmentsAndHardwareInitializer`` does.

    Ids are never reused (as XNAT's sequence). Failures raise :class:`.plugin_configs.InvalidConfig`
    (XNAT's ``IllegalArgumentException`` or database error) or
    :class:`.plugin_configs.ConfigNotFound`."""

    def __init__(self, store: Store):
        self.store = store
        self.seed()

    def seed(self) -> None:
        """The plugin's defaults (:data:`.plugin_configs.COMPUTE_ENVIRONMENT_CONFIGS`, then
        :data:`.plugin_configs.HARDWARE_CONFIGS`: environment 1, hardware 1–4 in a new store)
        unless a JUPYTERHUB environment or any hardware exists."""
        if self._has_configs():
            return
        with self.store.tx():
            if self._has_configs():
                return
            for env in cs.COMPUTE_ENVIRONMENT_CONFIGS:
                self.create_environment(cs.read_compute_environment_config(env))
            for hw in cs.HARDWARE_CONFIGS:
                self.create_hardware(cs.read_hardware_config(hw))

    def _has_configs(self) -> bool:
        db = self.store.db
        return (db.execute("SELECT 1 FROM compute_hardware_configs LIMIT 1").fetchone() is not None
                or any("JUPYTERHUB" in json.loads(doc)["configTypes"]
                       for (doc,) in db.execute("SELECT doc FROM compute_environment_configs")))

    # -- hardware ---------------------------------------------------------------------
    def hardware_list(self) -> list[dict]:
        rows = self.store.db.execute("SELECT id, doc FROM compute_hardware_configs ORDER BY id")
        return [{"id": hid, **json.loads(doc)} for hid, doc in rows]

    def hardware(self, hid: int | None) -> dict | None:
        row = self.store.db.execute("SELECT doc FROM compute_hardware_configs WHERE id=?", (hid,)).fetchone()
        return None if row is None else {"id": hid, **json.loads(row[0])}

    def create_hardware(self, cfg: dict) -> dict:
        """``create``: validated, stored under a new id, allowed by every environment that
        allows all hardware."""
        _check(cs.hardware_config_errors(cfg), "Hardware config is invalid: {}", ", ")
        model = cs.hardware_config_model(cfg, 0)
        with self.store.tx() as db:
            hid = _insert(db, "compute_hardware_configs", "hardware config", model)
            for eid, doc in db.execute("SELECT id, doc FROM compute_environment_configs").fetchall():
                if json.loads(doc)["hardwareOptions"]["allowAllHardware"]:
                    db.execute("INSERT OR IGNORE INTO compute_environment_hardware VALUES (?,?)", (eid, hid))
        return self.hardware(hid)

    def update_hardware(self, cfg: dict) -> dict:
        """``update``: the body's id, validated; scopes only those it was created with."""
        if cfg.get("id") is None:
            raise cs.InvalidConfig("Hardware config id cannot be null")
        _check(cs.hardware_config_errors(cfg), "Hardware config is invalid: {}", ", ")
        with self.store.tx() as db:
            stored = self.hardware(cfg["id"])
            if stored is None:
                raise cs.ConfigNotFound(f"No hardware config found for ID {cfg['id']}")
            _update(db, "compute_hardware_configs", "hardware config",
                    cs.hardware_config_model(cfg, cfg["id"], stored_scopes=stored["scopes"]))
        return self.hardware(cfg["id"])

    def delete_hardware(self, hid: int) -> None:
        with self.store.tx() as db:
            if self.hardware(hid) is None:
                raise cs.ConfigNotFound(f"No hardware config found with id {hid}")
            db.execute("DELETE FROM compute_environment_hardware WHERE hardware_id=?", (hid,))
            db.execute("DELETE FROM compute_hardware_configs WHERE id=?", (hid,))

    # -- compute environments -------------------------------------------------------------
    def environments(self, config_type: str | None = None) -> list[dict]:
        """``getAll`` / ``getByType``: :func:`.plugin_configs.compute_environment_view` each."""
        rows = self.store.db.execute("SELECT id FROM compute_environment_configs ORDER BY id").fetchall()
        envs = [self.environment(eid) for (eid,) in rows]
        return [e for e in envs if e is not None and (config_type is None or config_type in e["configTypes"])]

    def environment(self, eid: int | None) -> dict | None:
        db = self.store.db
        row = db.execute("SELECT doc FROM compute_environment_configs WHERE id=?", (eid,)).fetchone()
        if row is None:
            return None
        ids = [h for (h,) in db.execute("SELECT hardware_id FROM compute_environment_hardware WHERE env_id=?"
                                        " ORDER BY hardware_id", (eid,))]
        return cs.compute_environment_view({"id": eid, **json.loads(row[0])},
                                           [h for h in map(self.hardware, ids) if h is not None])

    def create_environment(self, cfg: dict) -> dict:
        _check(cs.compute_environment_config_errors(cfg), "ComputeEnvironmentConfig is invalid: [{}]", ", ")
        model = cs.compute_environment_config_model(cfg, 0)
        with self.store.tx() as db:
            eid = _insert(db, "compute_environment_configs", "compute environment config", model)
            self._allow(db, eid, cfg["hardwareOptions"])
        return self.environment(eid)

    def update_environment(self, cfg: dict) -> dict:
        if cfg.get("id") is None:
            raise cs.InvalidConfig("ComputeEnvironmentConfig ID cannot be null when updating")
        _check(cs.compute_environment_config_errors(cfg), "ComputeEnvironmentConfig is invalid: [{}]", ", ")
        with self.store.tx() as db:
            stored = self.environment(cfg["id"])
            if stored is None:
                raise cs.ConfigNotFound("Compute environment config not found.")
            _update(db, "compute_environment_configs", "compute environment config",
                    cs.compute_environment_config_model(cfg, cfg["id"], stored_scopes=stored["scopes"]))
            self._allow(db, cfg["id"], cfg["hardwareOptions"])
        return self.environment(cfg["id"])

    def delete_environment(self, eid: int) -> None:
        with self.store.tx() as db:
            if self.environment(eid) is None:
                raise cs.ConfigNotFound(f"No compute environment config found with ID {eid}")
            db.execute("DELETE FROM compute_environment_hardware WHERE env_id=?", (eid,))
            db.execute("DELETE FROM compute_environment_configs WHERE id=?", (eid,))

    def _allow(self, db: sqlite3.Connection, eid: int, options: dict) -> None:
        """``setHardwareConfigsForComputeEnvironmentConfig``: every hardware config when
        ``allowAllHardware``, else those listed that exist."""
        db.execute("DELETE FROM compute_environment_hardware WHERE env_id=?", (eid,))
        ids = ([h["id"] for h in self.hardware_list()] if options["allowAllHardware"] else
               [h["id"] for h in options["hardwareConfigs"] if h and self.hardware(h["id"]) is not None])
        db.executemany("INSERT OR IGNORE INTO compute_environment_hardware VALUES (?,?)", [(eid, h) for h in ids])

    # -- the plugin's use ---------------------------------------------------------------
    def is_available(self, env_id: int | None, hardware_id: int | None, scope: dict[str, str]) -> bool:
        """``JobTemplateService.isAvailable`` for the execution *scope* (scope name → id)."""
        env, hw = self.environment(env_id), self.hardware(hardware_id)
        return cs.is_available(env_id, hardware_id, [env] if env else [], [hw] if hw else [], scope)

    def job_template(self, env_id: int | None, hardware_id: int | None, scope: dict[str, str]) -> tuple[dict, dict]:
        """``JobTemplateService.resolve``: the environment and hardware configs, or
        :class:`.plugin_configs.InvalidConfig` when they are not available."""
        if not self.is_available(env_id, hardware_id, scope):
            raise cs.InvalidConfig(f"JobTemplate resolution failed for computeEnvironmentConfigId {env_id} and "
                                   f"hardwareConfigId {hardware_id} and executionScope {scope}")
        return self.environment(env_id), self.hardware(hardware_id)


def _check(errors: list[str], template: str, sep: str) -> None:
    if errors:
        raise cs.InvalidConfig(template.format(sep.join(errors)))


def _name(model: dict) -> str:
    return (model.get("hardware") or model.get("computeEnvironment"))["name"]


def _doc(model: dict) -> str:
    return json.dumps({k: v for k, v in model.items() if k != "id"})


def _insert(db: sqlite3.Connection, table: str, what: str, model: dict) -> int:
    try:
        return db.execute(f"INSERT INTO {table}(name, doc) VALUES (?,?)", (_name(model), _doc(model))).lastrowid
    except sqlite3.IntegrityError:  # the entity's unique name (XNAT: a database error)
        raise cs.InvalidConfig(f"A {what} named {_name(model)!r} already exists; names are unique") from None


def _update(db: sqlite3.Connection, table: str, what: str, model: dict) -> None:
    try:
        db.execute(f"UPDATE {table} SET name=?, doc=? WHERE id=?", (_name(model), _doc(model), model["id"]))
    except sqlite3.IntegrityError:
        raise cs.InvalidConfig(f"A {what} named {_name(model)!r} already exists; names are unique") from None
