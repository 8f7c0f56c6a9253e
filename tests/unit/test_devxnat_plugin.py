"""Pure parts of devxnat's JupyterHub plugin and listing formats (no server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devxnat import listing_formats as lf
from devxnat import plugin_configs as pc


def test_validation_messages_are_the_plugins():
    assert pc.validate_start_request("alice", {}) == [
        "Usernames do not match", "Username cannot be blank", "XSI type cannot be blank",
        "Item ID cannot be blank", "Item label cannot be blank", "Project ID cannot be blank",
        "Event tracking ID cannot be blank", "Compute environment config ID cannot be null",
        "hardware config id cannot be null"]
    ok = {"username": "alice", "xsiType": "xnat:projectData", "itemId": "P", "itemLabel": "P",
          "projectId": "P", "eventTrackingId": "k", "computeEnvironmentConfigId": 1, "hardwareConfigId": 2}
    assert pc.validate_start_request("alice", ok) == []
    assert pc.validate_start_request("bob", ok) == ["Usernames do not match"]


@pytest.mark.parametrize("xsi,general", [
    ("xnat:mrSessionData", "xnat:experimentData"), ("xnat:experimentData", "xnat:experimentData"),
    ("xnat:mrScanData", "xnat:imageScanData"), ("xnat:projectData", "xnat:projectData"),
    ("xnat:subjectData", "xnat:subjectData"), ("xdat:stored_search", "xdat:stored_search")])
def test_general_xsi_type(xsi, general):
    assert pc.general_xsi_type(xsi) == general


def test_default_hardware_and_availability():
    assert [(h["id"], h["hardware"]["name"], h["hardware"]["cpuReservation"], h["hardware"]["memoryLimit"])
            for h in pc.HARDWARE_CONFIGS] == [(1, "Small", 2.0, "2G"), (2, "Medium", 2.0, "4G"),
                                              (3, "Large", 2.0, "8G"), (4, "XLarge", 4.0, "16G")]
    assert pc.is_available(1, 4) and not pc.is_available(1, 5) and not pc.is_available(2, 1)


def test_task_template_and_user_options():
    hw = json.loads(json.dumps(pc.HARDWARE_CONFIGS[3]))
    hw["hardware"]["genericResources"] = [{"name": "gpu", "value": "1"}]
    hw["hardware"]["constraints"] = [{"key": "node.labels.gpu", "operator": "IN", "values": ["a", "b"]}]
    hw["hardware"]["environmentVariables"] = [{"key": "HW", "value": "x"}]
    t = pc.task_template(pc.COMPUTE_ENVIRONMENT_CONFIGS[0], hw)
    assert t["resources"] == {"cpu_limit": 4.0, "cpu_reservation": 4.0, "mem_limit": "16G",
                              "mem_reservation": "16G", "generic_resources": {"gpu": "1"}}
    assert t["placement"] == {"constraints": ["node.labels.gpu==a", "node.labels.gpu==b"]}
    assert t["container_spec"]["env"] == {"HW": "x"} and t["container_spec"]["command"] is None
    env = pc.default_env("alice", "xnat:projectData", "P", "http://x", "ALIAS", "SECRET")
    doc = pc.user_options(user_id=3, login="alice", servername="s", xsi_type="xnat:projectData", item_id="P",
                          project_id="P", event_tracking_id="k", template=t, env=env,
                          workspace_source="/ws/users/alice", data={"/data/projects/P/experiments": "/srv/xnat/P/arc001"},
                          archive_prefix="/srv/xnat", archive_docker_prefix="/mnt/arc")
    assert list(doc) == ["userId", "servername", "xsiType", "itemId", "projectId", "eventTrackingId",
                         "task_template"]
    spec = doc["task_template"]["container_spec"]
    assert spec["mounts"] == [
        {"target": "/workspace/alice", "source": "/ws/users/alice", "type": "bind", "read_only": False},
        {"target": "/data/projects/P/experiments", "type": "bind", "read_only": True,
         "source": "/mnt/arc/P/arc001"}]
    assert spec["env"]["XNAT_USER"] == "ALIAS" and spec["env"]["HW"] == "x"
    assert t["container_spec"]["mounts"] == []  # the template itself is not changed


def test_hub_start_body_keeps_the_builders_nulls():
    body = pc.hub_start_body(user_id=7, xsi_type="xnat:experimentData", item_id="E1", item_label="S1",
                             project_id="P", event_tracking_id="k")
    assert json.dumps(body, separators=(",", ":")) == (
        '{"userId":7,"servername":null,"xsiType":"xnat:experimentData","itemId":"E1","itemLabel":"S1",'
        '"projectId":"P","eventTrackingId":"k","dashboardConfigId":null,"task_template":null}')


def test_data_paths_follow_the_plugin_layout(tmp_path: Path):
    arc = tmp_path
    (arc / "P" / "arc001" / "E1").mkdir(parents=True)
    (arc / "P" / "subjects" / "S1").mkdir(parents=True)
    assert pc.data_paths(arc, "project", "P") == {
        "/data/projects/P/experiments": str(arc / "P" / "arc001"),
        "/data/projects/P/subjects": str(arc / "P" / "subjects")}
    assert pc.data_paths(arc, "subject", "P", subject_label="S1", experiment_labels=["E1", "E2"]) == {
        "/data/projects/P/subject-resources/S1": str(arc / "P" / "subjects" / "S1"),
        "/data/projects/P/experiments/E1": str(arc / "P" / "arc001" / "E1")}
    assert pc.translate("/a/b", "", "/x") == "/a/b" and pc.translate("/a/b", "/a", "/x") == "/x/b"
    # Java's String.replace: every occurrence
    assert pc.translate("/arc/P/arc001", "/arc", "/m") == "/m/P/m001"


def test_csv_and_xml_as_xfttable_writes_them():
    doc = {"ResultSet": {"Result": [{"ID": "P1", "name": 'a, "b"', "note": "x\ny"},
                                    {"ID": "P2", "name": "<c>", "note": ""}],
                         "totalRecords": "2", "title": "Projects"}}
    assert lf.to_csv(doc) == 'ID,name,note\nP1,"a, ""b""",x y\nP2,<c>,\n'
    xml = lf.to_xml(doc)
    assert xml.startswith('<ResultSet title="Projects" totalRecords="2"><results><columns><column>ID</column>')
    assert "<row><cell>P2</cell><cell>&lt;c&gt;</cell><cell></cell></row>\n" in xml
    assert xml.endswith("</rows></results></ResultSet>")
