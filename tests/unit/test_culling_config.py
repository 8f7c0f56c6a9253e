"""The hub's idle culler as the shipped configurations run it (config/jupyterhub_config.py, the
demo's hub, config/z2jh-values.yaml): a hub-managed ``jupyterhub-idle-culler`` service, its role
with exactly the scopes the culler needs, and timeouts a server with running offload jobs
survives. Read from the files' syntax (nothing of them runs here)."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import yaml
from jupyterhub_idle_culler import IdleCuller

from devstack import demo
from devstack.hubconfig import IDLE_CULLER_SCOPES, idle_culler_hub_config

ROOT = Path(__file__).resolve().parents[2]
#: jupyterhub-idle-culler's README: list users, read their servers and activity, stop servers
NEEDED = {"list:users", "read:users:activity", "read:servers", "delete:servers"}
#: jupyterhub-singleuser relays the server's activity every $JUPYTERHUB_ACTIVITY_INTERVAL s
RELAY_INTERVAL = 300
SYS_EXECUTABLE = "<sys.executable>"


def _value(node: ast.AST):
    """A literal; ``sys.executable`` as a marker, any other expression as ``<its source>``."""
    if isinstance(node, ast.Attribute) and ast.unparse(node) == "sys.executable":
        return SYS_EXECUTABLE
    if isinstance(node, ast.List):
        return [_value(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        return {_value(k): _value(v) for k, v in zip(node.keys, node.values)}
    try:
        return ast.literal_eval(node)
    except ValueError:
        return f"<{ast.unparse(node)}>"


def hub_lists(text: str, trait: str) -> list:
    """Everything a ``jupyterhub_config.py`` puts into ``c.JupyterHub.<trait>`` (assigned
    lists and ``.append``-ed items), in order."""
    found = []
    for node in ast.walk(ast.parse(text)):
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and ast.unparse(node.targets[0]) == f"c.JupyterHub.{trait}"):
            found += _value(node.value)
        elif (isinstance(node, ast.Call) and ast.unparse(node.func) == f"c.JupyterHub.{trait}.append"):
            found.append(_value(node.args[0]))
    return found


def culler_of(text: str) -> tuple[IdleCuller, dict]:
    """The culler's settings as its own command line parser reads them, and its role."""
    services = [s for s in hub_lists(text, "services") if s["name"] == "idle-culler"]
    assert len(services) == 1, services
    command = services[0]["command"]
    assert command[:3] == [SYS_EXECUTABLE, "-m", "jupyterhub_idle_culler"], command
    assert "api_token" not in services[0]  # the hub makes the token of a service it starts
    app = IdleCuller()
    app.parse_command_line(command[3:])
    roles = [r for r in hub_lists(text, "load_roles") if "idle-culler" in r.get("services", ())]
    assert len(roles) == 1, roles
    return app, roles[0]


def check_culler(app: IdleCuller, role: dict) -> None:
    assert set(role["scopes"]) == NEEDED and len(role["scopes"]) == len(NEEDED)
    assert app.cull_users is False          # users are XNAT accounts: never deleted
    assert app.cull_default_servers and app.cull_named_servers  # form, REST and XNAT starts alike
    assert app.max_age == 0                 # a hard age limit would stop servers whose jobs run
    # a server with running offload jobs marks itself active every activity_interval s, and
    # jupyterhub-singleuser relays that every RELAY_INTERVAL s: the timeout must outlast both
    from xnat_bridge.serverext.app import XnatHpcExtension

    assert app.timeout >= 2 * (RELAY_INTERVAL + XnatHpcExtension.activity_interval.default_value)
    assert 0 < app.cull_every <= app.timeout // 2


def test_the_builders_scopes_are_the_needed_ones():
    assert set(IDLE_CULLER_SCOPES) == NEEDED and len(IDLE_CULLER_SCOPES) == len(NEEDED)
    app, role = culler_of(idle_culler_hub_config(timeout=1800, every=60, max_age=7200))
    assert (app.timeout, app.cull_every, app.max_age) == (1800, 60, 7200)
    assert role == {"name": "idle-culler", "services": ["idle-culler"], "scopes": list(IDLE_CULLER_SCOPES)}


def test_the_site_example_runs_the_culler_as_a_hub_service():
    text = (ROOT / "config" / "jupyterhub_config.py").read_text()
    check_culler(*culler_of(text))
    # XNAT's service keeps its own role; the culler's is not widened by it
    assert [s["name"] for s in hub_lists(text, "services")] == ["xnat", "idle-culler"]


def test_the_demo_hub_runs_the_culler_and_devxnat_the_plugins_culling(tmp_path):
    text = demo.hub_config(xnat_url="http://127.0.0.1:1", hub_dir=tmp_path, port=1, proxy_api_port=2,
                           hub_port=3, profiles=tmp_path / "p.yaml", archive=tmp_path / "a",
                           audit_log=tmp_path / "audit.db")
    app, role = culler_of(text)
    check_culler(app, role)
    assert (app.timeout, app.cull_every) == (demo.DEMO_CULL_TIMEOUT, demo.DEMO_CULL_EVERY)
    compile(text, "jupyterhub_config.py", "exec")
    # devxnat's plugin culls on the plugin's own schedule (every 5 minutes)
    assert "--jupyterhub-cull-every" in (ROOT / "devstack" / "demo.py").read_text()
    from devxnat import build_parser
    from devxnat.culling import PLUGIN_INTERVAL

    args = build_parser().parse_args(["--data", str(tmp_path), "--jupyterhub-cull-every", str(demo.DEMO_CULL_EVERY)])
    assert args.jupyterhub_cull_every == PLUGIN_INTERVAL
    assert build_parser().parse_args(["--data", str(tmp_path)]).jupyterhub_cull_every == 0


def test_the_kubernetes_values_use_the_charts_cull_section():
    values = yaml.safe_load((ROOT / "config" / "z2jh-values.yaml").read_text())
    cull = values["cull"]
    assert cull["enabled"] is True and cull["users"] is False and cull["maxAge"] == 0
    from xnat_bridge.serverext.app import XnatHpcExtension

    assert cull["timeout"] >= 2 * (RELAY_INTERVAL + XnatHpcExtension.activity_interval.default_value)
    assert 0 < cull["every"] <= cull["timeout"] // 2
    # the chart's own service and role: no second culler in extraConfig
    assert "jupyterhub_idle_culler" not in yaml.safe_dump(values["hub"].get("extraConfig", {}))


def test_the_hub_extra_brings_the_culler():
    hub = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["hub"]
    assert any(r.startswith("jupyterhub-idle-culler") for r in hub)
