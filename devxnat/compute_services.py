"""XNAT's compute services (``org.nrg.xnat.compute``) as the JupyterHub plugin uses them (pure).

Following NrgXnat/xnat-jupyterhub-plugin's Java source (its ``compute`` package, before XNAT's
core took it over):

* :data:`HARDWARE_CONFIGS`, :data:`COMPUTE_ENVIRONMENT_CONFIGS`: what
  ``JupyterHubEnvironmentsAndHardwareInitializer`` creates (Small/Medium/Large/XLarge;
  the "XNAT Datascience Notebook" image), in XNAT's compute-services JSON shape: the seeds of
  devxnat's stored configs (:class:`.plugin_state.ComputeConfigs`);
* :func:`read_hardware_config`, :func:`hardware_config_errors`, :func:`hardware_config_model` and
  the same for compute environments: Jackson's binding of ``HardwareConfig``/
  ``ComputeEnvironmentConfig``, the services' ``validate``, the entities'
  ``fromPojo``/``update``/``toPojo``;
* :func:`enabled_for`, :func:`is_available`, :func:`available_compute_environments`:
  ``AccessScope.isEnabledFor``, ``JobTemplateService.isAvailable``, ``…/available``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping

_SCOPES = {s: {"scope": s, "enabled": True, "ids": []} for s in ("Site", "Project", "User")}


def _hardware(hid: int, name: str, cpu: float, mem: str) -> dict:
    return {
        "id": hid,
        "hardware": {
            "name": name, "cpuLimit": cpu, "cpuReservation": cpu,
            "memoryLimit": mem, "memoryReservation": mem,
            "constraints": [], "environmentVariables": [], "genericResources": [],
        },
        "scopes": json.loads(json.dumps(_SCOPES)),
    }


#: JupyterHubEnvironmentsAndHardwareInitializer's hardware (ids in creation order)
HARDWARE_CONFIGS: list[dict] = [
    _hardware(1, "Small", 2.0, "2G"),
    _hardware(2, "Medium", 2.0, "4G"),
    _hardware(3, "Large", 2.0, "8G"),
    _hardware(4, "XLarge", 4.0, "16G"),
]
#: ... and its compute environment (the UI offers configs of type JUPYTERHUB)
COMPUTE_ENVIRONMENT_CONFIGS: list[dict] = [{
    "id": 1,
    "configTypes": ["JUPYTERHUB"],
    "computeEnvironment": {
        "name": "XNAT Datascience Notebook", "image": "xnat/datascience-notebook:latest",
        "command": None, "environmentVariables": [], "mounts": [],
    },
    "scopes": json.loads(json.dumps(_SCOPES)),
    "hardwareOptions": {"allowAllHardware": True, "hardwareConfigs": []},
}]


# -- XNAT's compute services (org.nrg.xnat.compute) ---------------------------------------

#: ``org.nrg.framework.constants.Scope`` names the configs' scopes use → their codes in the
#: query of ``…/available`` (the plugin's UI sends ``site``, ``prj``, ``user``, ``datatype``)
SCOPE_CODES = {"Site": "site", "Project": "prj", "User": "user", "DataType": "datatype"}
CONFIG_TYPES = ("JUPYTERHUB", "CONTAINER_SERVICE", "GENERAL")  # ComputeEnvironmentConfig.ConfigType
OPERATORS = ("IN", "NOT_IN")                                   # Constraint.Operator
_CONFIG_TYPE_CLASS = "org.nrg.xnat.compute.models.ComputeEnvironmentConfig.ConfigType"


class UnreadableConfig(ValueError):
    """A body Jackson cannot bind to the model (a wrong JSON type, an unknown enum name): 400."""


class InvalidConfig(ValueError):
    """What the compute services refuse with an ``IllegalArgumentException`` (their
    ``validate``, an id mismatch, an unknown type) or fail on (a null the entities dereference,
    a duplicate name): XNAT's ``XapiRestControllerAdvice`` answers 500 with the message."""


class ConfigNotFound(LookupError):
    """No config with that id (the framework's ``NotFoundException``, ``@ResponseStatus(NOT_FOUND)``)."""


def _kind(v) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(v), "null" if v is None else "a number")


def _show(v) -> str:
    """A value in a message: a scalar as written (cut short), else its JSON kind."""
    return repr(v if len(str(v)) <= 40 else f"{str(v)[:40]}…") if isinstance(v, (str, int, float)) else _kind(v)


def _obj(v, where: str) -> dict | None:
    if v is None or isinstance(v, dict):
        return v
    raise UnreadableConfig(f"{where} must be a JSON object, not {_kind(v)}")


def _list(v, where: str) -> list | None:
    if v is None or isinstance(v, list):
        return v
    raise UnreadableConfig(f"{where} must be a JSON array, not {_kind(v)}")


def _str(v, where: str) -> str | None:
    """A ``String``: Jackson also takes a number or boolean as its text."""
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (int, float)):
        return json.dumps(v)
    raise UnreadableConfig(f"{where} must be a string, not {_kind(v)}")


def _double(v, where: str) -> float | None:
    """A ``Double``: a number, or a string holding one ("" is null)."""
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    try:
        f = None if isinstance(v, bool) or not isinstance(v, (int, float, str)) else float(v)
    except (ValueError, OverflowError):
        f = None
    if f is None or not math.isfinite(f):
        raise UnreadableConfig(f"{where} must be a number (e.g. 2.0), not {_show(v)}")
    return f


def _boolean(v, where: str) -> bool:
    """A primitive ``boolean``: absent or null is false."""
    if v is None or isinstance(v, bool):
        return bool(v)
    if v in ("true", "false"):
        return v == "true"
    raise UnreadableConfig(f"{where} must be true or false, not {_show(v)}")


def _long(v, where: str) -> int | None:
    """A ``Long`` (an id): an integer, or a string holding one."""
    if isinstance(v, str) and re.fullmatch(r"[+-]?\d{1,18}", v):
        v = int(v)
    if v is None or (isinstance(v, int) and not isinstance(v, bool) and abs(v) < 2 ** 63):
        return v
    raise UnreadableConfig(f"{where} must be an integer id, not {_show(v)}")


def _enum(v, names, where: str) -> str | None:
    if v is None or (isinstance(v, str) and v in names):
        return v
    raise UnreadableConfig(f"{where}: {_show(v)} is not one of {', '.join(names)}")


def _items(v, where: str, read) -> list | None:
    """A list of objects, each read by *read* (a null element stays None)."""
    items = _list(v, where)
    return None if items is None else [None if _obj(x, f"{where}[{i}]") is None else read(x, f"{where}[{i}]")
                                       for i, x in enumerate(items)]


def _read_scopes(v, where: str) -> dict | None:
    scopes = _obj(v, where)
    if scopes is None:
        return None
    out = {}
    for key, s in scopes.items():
        if key not in SCOPE_CODES:
            raise UnreadableConfig(f"{where}: {_show(key)} is not a scope (one of {', '.join(SCOPE_CODES)})")
        s = _obj(s, f"{where}.{key}")
        out[key] = None if s is None else {
            "scope": _enum(s.get("scope"), SCOPE_CODES, f"{where}.{key}.scope"),
            "enabled": _boolean(s.get("enabled"), f"{where}.{key}.enabled"),
            "ids": None if s.get("ids") is None else [_str(i, f"{where}.{key}.ids") for i in
                                                      _list(s.get("ids"), f"{where}.{key}.ids")]}
    return out


def _pairs(a: str, b: str):
    return lambda x, where: {a: _str(x.get(a), f"{where}.{a}"), b: _str(x.get(b), f"{where}.{b}")}


def _read_constraint(x: dict, where: str) -> dict:
    values = _list(x.get("values"), f"{where}.values")
    return {"key": _str(x.get("key"), f"{where}.key"),
            "values": None if values is None else [_str(v, f"{where}.values") for v in values],
            "operator": _enum(x.get("operator"), OPERATORS, f"{where}.operator")}


def _read_mount(x: dict, where: str) -> dict:
    return {"volumeName": _str(x.get("volumeName"), f"{where}.volumeName"),
            "localPath": _str(x.get("localPath"), f"{where}.localPath"),
            "containerPath": _str(x.get("containerPath"), f"{where}.containerPath"),
            "readOnly": _boolean(x.get("readOnly"), f"{where}.readOnly")}


def _body(body, what: str) -> dict:
    if body is None:
        raise UnreadableConfig("Required request body is missing")
    return _obj(body, f"the {what}")


def read_hardware_config(body) -> dict:
    """Jackson's binding of a ``HardwareConfig`` (``id``, ``hardware`` {``name``, ``cpuLimit``,
    ``cpuReservation``, ``memoryLimit``, ``memoryReservation``, ``constraints``,
    ``environmentVariables``, ``genericResources``}, ``scopes`` {scope name: {``scope``,
    ``enabled``, ``ids``}}): JSON types checked, unknown properties ignored, nothing validated."""
    doc = _body(body, "hardware config")
    hw = _obj(doc.get("hardware"), "hardware")
    if hw is not None:
        hw = {"name": _str(hw.get("name"), "hardware.name"),
              "cpuLimit": _double(hw.get("cpuLimit"), "hardware.cpuLimit"),
              "cpuReservation": _double(hw.get("cpuReservation"), "hardware.cpuReservation"),
              "memoryLimit": _str(hw.get("memoryLimit"), "hardware.memoryLimit"),
              "memoryReservation": _str(hw.get("memoryReservation"), "hardware.memoryReservation"),
              "constraints": _items(hw.get("constraints"), "hardware.constraints", _read_constraint),
              "environmentVariables": _items(hw.get("environmentVariables"), "hardware.environmentVariables",
                                             _pairs("key", "value")),
              "genericResources": _items(hw.get("genericResources"), "hardware.genericResources",
                                         _pairs("name", "value"))}
    return {"id": _long(doc.get("id"), "id"), "hardware": hw, "scopes": _read_scopes(doc.get("scopes"), "scopes")}


def read_compute_environment_config(body) -> dict:
    """Jackson's binding of a ``ComputeEnvironmentConfig`` (``id``, ``configTypes``,
    ``computeEnvironment`` {``name``, ``image``, ``command``, ``environmentVariables``,
    ``mounts``}, ``scopes``, ``hardwareOptions`` {``allowAllHardware``, ``hardwareConfigs``}); of
    the hardware configs listed only their ``id`` counts."""
    doc = _body(body, "compute environment config")
    types = _list(doc.get("configTypes"), "configTypes")
    ce = _obj(doc.get("computeEnvironment"), "computeEnvironment")
    if ce is not None:
        ce = {"name": _str(ce.get("name"), "computeEnvironment.name"),
              "image": _str(ce.get("image"), "computeEnvironment.image"),
              "command": _str(ce.get("command"), "computeEnvironment.command"),
              "environmentVariables": _items(ce.get("environmentVariables"),
                                             "computeEnvironment.environmentVariables", _pairs("key", "value")),
              "mounts": _items(ce.get("mounts"), "computeEnvironment.mounts", _read_mount)}
    opts = _obj(doc.get("hardwareOptions"), "hardwareOptions")
    if opts is not None:
        opts = {"allowAllHardware": _boolean(opts.get("allowAllHardware"), "hardwareOptions.allowAllHardware"),
                "hardwareConfigs": _items(opts.get("hardwareConfigs"), "hardwareOptions.hardwareConfigs",
                                          lambda x, where: {"id": _long(x.get("id"), f"{where}.id")})}
    return {"id": _long(doc.get("id"), "id"),
            "configTypes": None if types is None else [_enum(t, CONFIG_TYPES, "configTypes") for t in types],
            "computeEnvironment": ce, "scopes": _read_scopes(doc.get("scopes"), "scopes"),
            "hardwareOptions": opts}


def _blank(v) -> bool:
    return not (v or "").strip()


def _missing_scopes(scopes: Mapping, text: str) -> list[str]:
    return [text.format(label) for name, label in (("Site", "site"), ("User", "user"), ("Project", "project"))
            if name not in scopes]


def hardware_config_errors(cfg: Mapping) -> list[str]:
    """``DefaultHardwareConfigService.validate``: its messages, which XNAT joins with ", " after
    "Hardware config is invalid: "."""
    errors = []
    if cfg.get("hardware") is None:
        errors.append("Hardware cannot be null")
    elif _blank(cfg["hardware"].get("name")):
        errors.append("Hardware name cannot be blank")
    if not cfg.get("scopes"):
        errors.append("Hardware scopes cannot be null or empty")
    else:
        errors += _missing_scopes(cfg["scopes"], "Hardware scopes must contain a {} scope")
    return errors


def compute_environment_config_errors(cfg: Mapping) -> list[str]:
    """``DefaultComputeEnvironmentConfigService.validate``: its messages (XNAT writes them as a
    Java list after "ComputeEnvironmentConfig is invalid: ")."""
    errors = []
    if not cfg.get("configTypes"):
        errors.append("ComputeEnvironmentConfig must have at least one config type")
    ce = cfg.get("computeEnvironment")
    if ce is None:
        errors.append("ComputeEnvironment cannot be null")
    else:
        if _blank(ce.get("name")):
            errors.append("ComputeEnvironment name cannot be blank")
        if _blank(ce.get("image")):
            errors.append("ComputeEnvironment image cannot be blank")
    if not cfg.get("scopes"):
        errors.append("ComputeEnvironmentConfig must have at least one scope")
    else:
        errors += _missing_scopes(cfg["scopes"], "ComputeEnvironmentConfig must have a {} scope")
    opts = cfg.get("hardwareOptions")
    if opts is None:
        errors.append("ComputeEnvironmentHardwareOptions cannot be null")
    elif opts.get("hardwareConfigs") is None:
        errors.append("ComputeEnvironmentHardwareOptions hardware configs cannot be null")
    return errors


def _not_null(items: list | None, where: str) -> list:
    """An entity's list from the model's (null → empty; a null element: the entity's NPE)."""
    for i, x in enumerate(items or []):
        if x is None:
            raise InvalidConfig(f"{where}[{i}] is null")
    return list(items or [])


def _scope_model(scopes: Mapping, keep: Mapping | None, what: str) -> dict:
    """The scope entities: created from *scopes*, or, on update, only the scopes *keep* (the
    stored config) has, each updated from *scopes* (``value.update(pojo.getScopes().get(key))``)."""
    out = {}
    for key in (keep if keep is not None else scopes):
        s = scopes.get(key)
        if s is None or s.get("scope") is None:
            raise InvalidConfig(f'{what} scope {key} needs "scope": {{"scope": "{key}", "enabled": true, "ids": []}}')
        out[key] = {"scope": s["scope"], "enabled": bool(s["enabled"]), "ids": sorted(set(s.get("ids") or []))}
    return out


def hardware_config_model(cfg: Mapping, hid: int, *, stored_scopes: Mapping | None = None) -> dict:
    """A valid *cfg* as XNAT stores and answers it under id *hid* (``HardwareConfigEntity``'s
    ``fromPojo``/``update`` then ``toPojo``; sets written in sorted order)."""
    hw = cfg["hardware"]
    constraints = []
    for c in _not_null(hw.get("constraints"), "hardware.constraints"):
        if c["operator"] is None:
            raise InvalidConfig(f"hardware constraint {c['key']!r} needs an operator: one of {', '.join(OPERATORS)}")
        constraints.append({"key": c["key"], "values": sorted(set(c["values"] or [])), "operator": c["operator"]})
    return {"id": hid,
            "hardware": {**{k: hw[k] for k in ("name", "cpuLimit", "cpuReservation", "memoryLimit",
                                               "memoryReservation")},
                         "constraints": constraints,
                         "environmentVariables": _not_null(hw.get("environmentVariables"),
                                                           "hardware.environmentVariables"),
                         "genericResources": _not_null(hw.get("genericResources"), "hardware.genericResources")},
            "scopes": _scope_model(cfg["scopes"], stored_scopes, "Hardware")}


def compute_environment_config_model(cfg: Mapping, eid: int, *, stored_scopes: Mapping | None = None) -> dict:
    """A valid *cfg* as XNAT stores it under id *eid*, without the hardware it allows (those
    are associations: :func:`compute_environment_view`)."""
    ce = cfg["computeEnvironment"]
    return {"id": eid, "configTypes": list(dict.fromkeys(cfg["configTypes"])),
            "computeEnvironment": {
                "name": ce["name"], "image": ce["image"], "command": ce["command"],
                "environmentVariables": _not_null(ce.get("environmentVariables"),
                                                  "computeEnvironment.environmentVariables"),
                "mounts": _not_null(ce.get("mounts"), "computeEnvironment.mounts")},
            "scopes": _scope_model(cfg["scopes"], stored_scopes, "ComputeEnvironment"),
            "hardwareOptions": {"allowAllHardware": cfg["hardwareOptions"]["allowAllHardware"]}}


def compute_environment_view(model: Mapping, hardware: list[dict]) -> dict:
    """The ``ComputeEnvironmentConfig`` XNAT answers: *model* with the hardware configs it is
    associated with (every one when created or updated with ``allowAllHardware``, and each one
    created later) in ``hardwareOptions.hardwareConfigs``."""
    view = json.loads(json.dumps(model))
    view["hardwareOptions"]["hardwareConfigs"] = json.loads(json.dumps(hardware))
    return view


def config_type(value: str | None, *, blank_is_none: bool = False) -> str | None:
    """A ``ConfigType`` request parameter (``valueOf``: an unknown name is XNAT's 500)."""
    if value is None or (blank_is_none and not value.strip()):
        return None
    if value not in CONFIG_TYPES:
        raise InvalidConfig(f"No enum constant {_CONFIG_TYPE_CLASS}.{value} (one of {', '.join(CONFIG_TYPES)})")
    return value


def execution_scope(params: Mapping[str, str]) -> dict[str, str]:
    """``…/available``'s execution scope: the query parameters that are scope codes."""
    by_code = {code: name for name, code in SCOPE_CODES.items()}
    return {by_code[k]: v for k, v in params.items() if k in by_code}


def enabled_for(scopes: Mapping, scope: Mapping[str, str]) -> bool:
    """``AccessScope.isEnabledFor``: each scope the config has is enabled for all, or lists the
    execution scope's id for it."""
    return all(s["enabled"] or scope.get(name) in s["ids"] for name, s in scopes.items())


def available_compute_environments(configs: list[dict], *, config_type: str | None = None,
                                   execution_scope: Mapping[str, str] | None = None) -> list[dict]:
    """``getAvailable``: the compute-environment configs (:func:`compute_environment_view`) of
    *config_type* enabled for *execution_scope*, each with only the hardware enabled for it."""
    scope = execution_scope or {}
    out = []
    for c in configs:
        if (config_type and config_type not in c["configTypes"]) or not enabled_for(c["scopes"], scope):
            continue
        c = json.loads(json.dumps(c))
        c["hardwareOptions"]["hardwareConfigs"] = [h for h in c["hardwareOptions"]["hardwareConfigs"]
                                                   if enabled_for(h["scopes"], scope)]
        out.append(c)
    return out


def is_available(compute_env_id, hardware_id, configs=COMPUTE_ENVIRONMENT_CONFIGS,
                 hardware=HARDWARE_CONFIGS, execution_scope: Mapping[str, str] | None = None) -> bool:
    """``JobTemplateService.isAvailable``: the compute environment and the hardware exist and are
    enabled for the execution scope, and the environment allows all hardware or lists this one."""
    scope = execution_scope or {}
    env = next((c for c in configs if c["id"] == compute_env_id), None)
    hw = next((h for h in hardware if h["id"] == hardware_id), None)
    if env is None or hw is None or not enabled_for(env["scopes"], scope) or not enabled_for(hw["scopes"], scope):
        return False
    opts = env["hardwareOptions"]
    return bool(opts.get("allowAllHardware")) or any(h.get("id") == hardware_id
                                                     for h in opts.get("hardwareConfigs") or [])
