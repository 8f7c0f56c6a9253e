"""XNAT's "Start Jupyter" for a stored search (issue 20, item 9) on the real hub + CHP, driven
through devxnat's plugin endpoints as XNAT's UI drives them (``startServerForStoredSearch`` →
``POST /xapi/jupyterhub/users/{u}/server/{name}`` with ``xsiType = xdat:stored_search``):
devxnat's plugin checks that the search is the user's, stores the start's options (the project's
folders) and POSTs to the hub; the hub reads them back, asks XNAT for the search as the user and
scopes the server to the search's items the user may read in the start's project — or refuses,
with the reason on the user's hub home page (XNAT shows only its generic failure).
"""

from __future__ import annotations

import html
import json
import os
import time

import pytest

from devxnat import stored_search as ss
from tests.fixtures.plugin import make_plugin_hub, start_outcome, xnat_points_at
from tests.fixtures.spawn import audit_events, process_environ, server_process

pytestmark = [pytest.mark.devxnat]

SERVICE_ACCOUNT = "hubsvc-search"   # an XNAT account with the plugin's JupyterHub role
USER, PASSWORD = "bob", "bob-demo"  # bob: Collaborator on NEURO_MRI, Member of CARDIO_ECG (not SLEEP_EEG)
XNAT_GENERIC = "Failed to launch Jupyter notebook. Check the XNAT and JupyterHub system logs for error messages."

PROFILES = """
profiles:
  - slug: local-plugin
    display_name: This machine
    backend: local
    default: true
    resources: {{cpus: 2, memory: 8G}}
offload:
  partition: secure
  staging_dir: {staging}
"""


@pytest.fixture(scope="module")
def search_hub(shared_devxnat, unix_users, staging, tmp_path_factory):
    hub = make_plugin_hub(tmp_path_factory.mktemp("search-hub"), shared_devxnat, SERVICE_ACCOUNT,
                          staging=staging, profiles_text=PROFILES)
    yield hub
    hub.stop()


@pytest.fixture
def plugin_prefs(shared_devxnat, search_hub):
    """devxnat's plugin pointed at this hub (the preferences put back after the test)."""
    with xnat_points_at(shared_devxnat, search_hub, startTimeout="120"):
        yield


def start_from_search(devxnat, server: str, search: ss.SearchDef, project: str) -> dict:
    """The UI's start (``startServerForStoredSearch(username, servername, "xdat:stored_search", id,
    label, projectId, eventTrackingId)``), then XNAT's event tracking until it has an outcome."""
    key = f"ss-{time.time_ns()}"
    req = {"username": USER, "servername": server, "xsiType": "xdat:stored_search", "itemId": search.id,
           "itemLabel": search.brief_description, "projectId": project, "eventTrackingId": key,
           "computeEnvironmentConfigId": 1, "hardwareConfigId": 1}
    r = devxnat.request("POST", f"/xapi/jupyterhub/users/{USER}/server/{server}", USER, json=req)
    assert r.status_code == 200, r.text
    return start_outcome(devxnat, USER, key, timeout=120)


def stop_from_xnat(devxnat, hub, server: str) -> None:
    r = devxnat.request("DELETE", f"/xapi/jupyterhub/users/{USER}/server/{server}?eventTrackingId=stop-"
                        f"{time.time_ns()}", USER)
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 60
    while server in hub_servers(hub) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert server not in hub_servers(hub)


def hub_servers(hub) -> dict:
    """bob's servers on the hub (none before the plugin first created him there)."""
    r = hub.api("GET", f"/users/{USER}")
    return r.json()["servers"] if r.status_code == 200 else {}


def readable_results(devxnat, search: ss.SearchDef, project: str) -> list[str]:
    """What XNAT's search finds for the user in *project* (its results, as the user)."""
    rows = devxnat.get(f"/data/search/saved/{search.id}/results?format=json", USER).json()["ResultSet"]["Result"]
    return sorted(r["session_id"] for r in rows if r["project"] == project)


def home_page(hub) -> str:
    s, r = hub.login(USER, PASSWORD)
    assert r.status_code == 302, r.text[-2000:]
    page = s.get(f"{hub.url}/hub/home", timeout=30)
    assert page.status_code == 200
    return html.unescape(page.text)


def test_a_start_from_a_stored_search_is_scoped_to_its_readable_items(search_hub, shared_devxnat, plugin_prefs):
    """The site-wide "First visits, every modality" (MR, EEG and ECG sessions), started from
    CARDIO_ECG: XNAT's results for bob hold NEURO_MRI's and CARDIO_ECG's first visits (not
    SLEEP_EEG's: bob may not read it); the server gets CARDIO_ECG's, and only those are mounted."""
    search, project, server = ss.FIRST_VISITS, "CARDIO_ECG", "ss-ok"
    wanted = readable_results(shared_devxnat, search, project)
    elsewhere = readable_results(shared_devxnat, search, "NEURO_MRI")
    assert wanted and elsewhere  # the search finds items in both; the start's project decides
    data = start_from_search(shared_devxnat, server, search, project)
    assert data["succeeded"] in (True, "true"), (data, search_hub.log()[-3000:])
    try:
        srv = hub_servers(search_hub)[server]
        assert srv["user_options"]["xsiType"] == "xdat:stored_search"
        assert srv["user_options"]["itemId"] == search.id
        pid = server_process(USER, srv)
        env = process_environ(pid)
        assert json.loads(env["XNAT_HPC_SCOPE"]) == {"projects": {project: {"experiments": wanted}}}
        assert (env["XNAT_XSI_TYPE"], env["XNAT_ITEM_ID"], env["XNAT_DATA"]) == (
            "xdat:stored_search", search.id, "/data")
        labels = {e["ID"]: e["label"] for e in shared_devxnat.get(
            f"/data/projects/{project}/experiments?format=json", USER).json()["ResultSet"]["Result"]}
        mounted = sorted(os.listdir(f"/proc/{pid}/root/data/projects/{project}/experiments"))
        assert mounted == sorted(labels[i] for i in wanted)   # the search's items, not the project's
        assert not os.path.exists(f"/proc/{pid}/root/data/projects/NEURO_MRI")
        [allowed] = [e for e in audit_events(search_hub) if e["user"] == USER and e["action"] == "spawn"
                     and e["outcome"] == "allowed" and e.get("server") == server]
        assert project in allowed["items"]
    finally:
        stop_from_xnat(shared_devxnat, search_hub, server)


def test_a_search_that_finds_nothing_readable_in_the_project_is_refused_on_the_home_page(
        search_hub, shared_devxnat, plugin_prefs):
    """"NEURO_MRI first visits" (MR sessions) started from CARDIO_ECG: XNAT's plugin starts it (the
    search is bob's), the hub refuses; XNAT shows its generic failure, the hub's home page why."""
    search, project, server = ss.NEURO_FIRST_VISITS, "CARDIO_ECG", "ss-none"
    data = start_from_search(shared_devxnat, server, search, project)
    assert data["succeeded"] in (False, "false") and data["finalMessage"] == XNAT_GENERIC, data
    assert server not in hub_servers(search_hub)
    reason = (f"stored search {search.id} ({search.brief_description}) finds no experiments in project "
              f"{project} that you can read")
    home = home_page(search_hub)
    assert (f"Your start of Jupyter from XNAT (stored search {search.brief_description} in project {project}) "
            f"was refused: {reason}") in home, home[-3000:]
    denied = [e for e in audit_events(search_hub) if e["user"] == USER and e["action"] == "spawn"
              and e["outcome"] == "denied" and e.get("server") == server]
    assert denied and reason in denied[-1]["detail"]


def test_a_search_not_shared_with_the_user_is_refused_by_xnat(search_hub, shared_devxnat, plugin_prefs):
    """alice's own search: XNAT's plugin refuses bob's start itself (``canRead``); the hub is not asked."""
    st = shared_devxnat.store()
    mine = ss.SearchDef("xs1700000000098", "xnat:mrSessionData", "alice's sessions",
                        fields=(ss.Field("xnat:mrSessionData", "LABEL", "Session"),), users=("alice",))
    ss.add_search(st, mine)
    try:
        data = start_from_search(shared_devxnat, "ss-private", mine, "NEURO_MRI")
    finally:
        ss.remove_search(st, mine.id)
        st.close()
    assert data["succeeded"] in (False, "false")
    assert data["finalMessage"] == ("Failed to launch Jupyter notebook. Permission denied to read "
                                    f"xdat:stored_search {mine.id} in project NEURO_MRI")
    assert "ss-private" not in hub_servers(search_hub)
