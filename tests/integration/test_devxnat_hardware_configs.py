"""A site admin adds hardware configurations to XNAT's compute services and XNAT's "Start
Jupyter" uses them (docs/admin.md, "XNAT's Start Jupyter button", step 5): devxnat over
HTTP, as XNAT's admin UI (``hardware-configs.js``) and the plugin's UI
(``compute-environment-configs.js``, ``jupyterhub-servers.js``) drive it, against the
recording stand-in of JupyterHub's REST API of test_devxnat_plugin.py. A private devxnat: what
is changed here is removed again at the end of each test."""

from __future__ import annotations

import pytest

from tests.fixtures.devxnat import start_devxnat_with
from tests.integration.test_devxnat_plugin import (hub, options, start, start_request, stop,  # noqa: F401
                                                   xnat)

pytestmark = [pytest.mark.devxnat]

SCOPES = {s: {"scope": s, "enabled": True, "ids": []} for s in ("Site", "Project", "User")}
TINY = {"hardware": {"name": "Tiny (Slurm)", "cpuLimit": 1.0, "cpuReservation": 1.0, "memoryLimit": "1G",
                     "memoryReservation": "1G", "constraints": [],
                     "environmentVariables": [{"key": "XNAT_HPC_HARDWARE", "value": "tiny-slurm"}],
                     "genericResources": []},
        "scopes": SCOPES}


def test_a_site_admins_hardware_is_offered_started_and_removed(xnat, hub):  # noqa: F811
    assert xnat.request("POST", "/xapi/hardware-configs", "alice", json=TINY).status_code == 403
    assert xnat.get("/xapi/hardware-configs", "alice").status_code == 403
    r = xnat.request("POST", "/xapi/hardware-configs", "admin", json=TINY)
    assert r.status_code == 201, r.text
    hw = r.json()
    try:
        assert hw["hardware"] == TINY["hardware"] and hw["scopes"] == SCOPES and hw["id"] > 4
        assert xnat.get(f"/xapi/hardware-configs/{hw['id']}", "admin").json() == hw
        # what the plugin's UI offers alice for a start in NEURO_MRI
        r = xnat.get("/xapi/compute-environment-configs/available?type=JUPYTERHUB&site=XNAT&user=alice"
                     "&prj=NEURO_MRI", "alice")
        assert r.status_code == 200, r.text
        assert hw in r.json()[0]["hardwareOptions"]["hardwareConfigs"]

        req = start_request("alice", "xnat:projectData", "NEURO_MRI", "NEURO_MRI", "NEURO_MRI",
                            hardwareConfigId=hw["id"])
        final = start(xnat, "alice", req)
        assert final["succeeded"] is True, final
        try:
            r = options(xnat, "alice", req["servername"])
            assert r.status_code == 200, r.text
            t = r.json()["task_template"]
            assert t["resources"] == {"cpu_limit": 1.0, "cpu_reservation": 1.0, "mem_limit": "1G",
                                      "mem_reservation": "1G", "generic_resources": {}}
            assert t["container_spec"]["env"]["XNAT_HPC_HARDWARE"] == "tiny-slurm"
        finally:
            assert stop(xnat, "alice", req["servername"])["succeeded"] is True
    finally:
        r = xnat.request("DELETE", f"/xapi/hardware-configs/{hw['id']}", "admin")
        assert r.status_code == 204 and r.content == b"", r.text
    assert xnat.get(f"/xapi/hardware-configs/{hw['id']}", "admin").status_code == 404
    assert [h["id"] for h in xnat.get("/xapi/compute-environment-configs/1", "admin").json()[
        "hardwareOptions"]["hardwareConfigs"]] == [1, 2, 3, 4]
    # a start with the removed hardware fails as the plugin's does
    final = start(xnat, "alice", start_request("alice", "xnat:projectData", "NEURO_MRI", "NEURO_MRI",
                                               "NEURO_MRI", hardwareConfigId=hw["id"]))
    assert final["succeeded"] is False and final["finalMessage"] == (
        "Failed to launch Jupyter notebook server. The compute environment or hardware configuration is not "
        "available to the user.")


def test_an_environment_limited_to_some_hardware_refuses_the_rest(xnat):  # noqa: F811
    env = xnat.get("/xapi/compute-environment-configs/1", "admin").json()
    limited = dict(env, hardwareOptions={"allowAllHardware": False, "hardwareConfigs": [{"id": 1}]})
    r = xnat.request("PUT", "/xapi/compute-environment-configs/1", "admin", json=limited)
    assert r.status_code == 200, r.text
    try:
        assert [h["id"] for h in r.json()["hardwareOptions"]["hardwareConfigs"]] == [1]
        final = start(xnat, "alice", start_request("alice", "xnat:projectData", "NEURO_MRI", "NEURO_MRI",
                                                   "NEURO_MRI", hardwareConfigId=2))
        assert final["succeeded"] is False and "hardware configuration is not available" in final["finalMessage"]
        r = xnat.request("PUT", "/xapi/compute-environment-configs/1", "bob", json=env)
        assert r.status_code == 403
    finally:
        r = xnat.request("PUT", "/xapi/compute-environment-configs/1", "admin", json=env)
        assert r.status_code == 200 and r.json() == env, r.text


def test_configs_are_kept_in_devxnats_store_across_a_restart(tmp_path):
    server = start_devxnat_with(tmp_path / "data", [])
    try:
        r = server.request("POST", "/xapi/hardware-configs", "admin", json=TINY)
        assert r.status_code == 201, r.text
        hw = r.json()
    finally:
        server.stop()
    server = start_devxnat_with(tmp_path / "data", [])
    try:
        listed = server.get("/xapi/hardware-configs", "admin").json()
        assert [h["hardware"]["name"] for h in listed] == ["Small", "Medium", "Large", "XLarge", "Tiny (Slurm)"]
        assert listed[-1] == hw  # the defaults are not seeded twice; ids kept
    finally:
        server.stop()
