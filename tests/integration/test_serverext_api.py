"""The jupyter-server extension's REST API against real devxnat (and real Slurm for jobs).

pytest-jupyter starts a real ServerApp with the extension enabled; requests go
over real HTTP (``jp_fetch``, token auth; the XSRF test logs in with a cookie).
The server's XNAT identity is an alias token issued for alice, as the hub
gives it (``XNAT_HOST``/``XNAT_USER``/``XNAT_PASS``), with a scope narrower
than alice's XNAT rights.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path

import pytest
import yaml
from openapi_schema_validator import OAS30Validator
from pytest_jupyter.jupyter_server import *
from tornado.httpclient import HTTPClientError

pytestmark = [pytest.mark.devxnat]

SCOPE = {"projects": {"NEURO_MRI": {}, "CARDIO_ECG": {}}}  # alice: Owner / not a member


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def staging_dir(tmp_path):
    d = tmp_path / "staging"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    return d


def server_env(devxnat, monkeypatch, tmp_path, staging_dir, root, **offload) -> dict:
    """Set the environment the hub gives alice's server (before the server starts); the
    workspace lies inside the server's root dir *root*, as ~/xnat-hpc does in a real
    server. *offload* adds to (or overrides) the offload policy."""
    alias, secret = devxnat.token("alice")
    node_tmp = tmp_path / "node"
    node_tmp.mkdir(mode=0o700)
    monkeypatch.setenv("XNAT_HPC_NODE_TMPDIR", str(node_tmp))
    monkeypatch.setenv("XNAT_HPC_DEATH_TIMEOUT", "20")
    monkeypatch.setenv("XNAT_HOST", devxnat.url)
    monkeypatch.setenv("XNAT_USER", alias)
    monkeypatch.setenv("XNAT_PASS", secret)
    monkeypatch.setenv("XNAT_HPC_SCOPE", json.dumps(SCOPE))
    monkeypatch.setenv("XNAT_HPC_WORKSPACE", str(root / "xnat-hpc"))
    monkeypatch.setenv("XNAT_HPC_OFFLOAD", json.dumps({
        "partition": "secure", "staging_dir": str(staging_dir), "max_cpus": 2,
        "max_memory": "2G", "max_walltime": "00:10:00", "default_memory": "512M",
        "default_walltime": 300, "exclusive": False, **offload}))
    return {"alias": alias, "workspace": root / "xnat-hpc"}


@pytest.fixture
def xnat_env(devxnat, monkeypatch, tmp_path, staging_dir, jp_root_dir):
    """alice's server environment (:func:`server_env`)."""
    return server_env(devxnat, monkeypatch, tmp_path, staging_dir, jp_root_dir)


@pytest.fixture
def jp_server_config(xnat_env):
    return {"ServerApp": {"jpserver_extensions": {"xnat_bridge.serverext": True}}}


@pytest.fixture
def run(jp_asyncio_loop):
    """Run a coroutine on the server's event loop (the tests are plain functions, so that
    pytest-asyncio and pytest-jupyter do not fight over the loop)."""
    return jp_asyncio_loop.run_until_complete


def _inline(node, spec):
    """The spec with every $ref replaced by its target (the spec has no cycles)."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = spec
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part]
            return _inline(target, spec)
        return {k: _inline(v, spec) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, spec) for v in node]
    return node


@pytest.fixture(scope="module")
def openapi():
    from xnat_bridge.serverext import OPENAPI_PATH

    spec = yaml.safe_load(OPENAPI_PATH.read_text())
    return _inline(spec, spec)


def check_against_spec(spec, method: str, path: str, code: int, data) -> None:
    """Every answer the tests see must match the OpenAPI response schema of its route."""
    for template, item in spec["paths"].items():
        pattern = re.sub(r"\\{\w+\\}", "[^/]+", re.escape(template.lstrip("/")))
        if re.fullmatch(pattern, path) and method.lower() in item:
            responses = item[method.lower()]["responses"]
            resp = responses.get(str(code)) or responses["default"]
            schema = resp.get("content", {}).get("application/json", {}).get("schema")
            if schema is None:
                assert data is None, (method, path, code, data)
            else:
                OAS30Validator(schema).validate(data)
            return
    # not a documented route: the JSON 404 of the catch-all
    assert code == 404 and data["error"] == "not_found", (method, path, code, data)


@pytest.fixture
def api(jp_fetch, run, openapi):
    """``api("GET", "projects", params=..., body=...)`` → (status, JSON or None)."""

    def call(method, path, *, params=None, body=None, headers=None, expect=None):
        kw = {"method": method, "params": params, "headers": headers, "raise_error": False}
        if body is not None:
            kw["body"] = body if isinstance(body, (str, bytes)) else json.dumps(body)
        elif method in ("POST", "PUT"):
            kw["body"] = b""
        r = run(jp_fetch("xnat-hpc", "api", *path.split("/"), **kw))
        data = json.loads(r.body) if r.body else None
        check_against_spec(openapi, method, path, r.code, data)
        if expect is not None:
            assert r.code == expect, (r.code, data)
        return r.code, data

    return call


# -- scope and browsing ------------------------------------------------------------

def test_scope_and_projects(api, devxnat):
    code, scope = api("GET", "scope")
    assert code == 200
    assert scope == {"user": "alice", "xnat_host": devxnat.url, "data_mode": "api",
                     "scope": {"CARDIO_ECG": {"subjects": [], "experiments": []},
                               "NEURO_MRI": {"subjects": [], "experiments": []}}}
    code, projects = api("GET", "projects")
    # CARDIO_ECG is in the scope but alice may not read it; SLEEP_EEG she may, but it is out of scope
    assert code == 200 and [p["id"] for p in projects["items"]] == ["NEURO_MRI"]
    assert projects["items"][0]["role"] == "Owner"
    assert set(projects["items"][0]) == {"id", "name", "description", "role"}


def test_browse_down_to_files(api):
    _, subjects = api("GET", "projects/NEURO_MRI/subjects", params={"limit": 2}, expect=200)
    assert subjects["limit"] == 2 and subjects["offset"] == 0 and len(subjects["items"]) == 2
    assert subjects["total"] >= 3
    assert set(subjects["items"][0]) == {"id", "label", "project", "gender", "yob"}
    label = subjects["items"][0]["label"]
    _, exps = api("GET", "projects/NEURO_MRI/experiments", params={"subject": label},
                        expect=200)
    assert exps["items"] and all(e["subject_label"] == label for e in exps["items"])
    assert set(exps["items"][0]) == {"id", "label", "project", "subject_id", "subject_label", "date",
                                     "xsi_type", "modality"}
    exp = exps["items"][0]["id"]
    _, scans = api("GET", f"projects/NEURO_MRI/experiments/{exp}/scans", expect=200)
    scan = scans["items"][0]
    assert scan["file_count"] > 0 and scan["size"] == sum(r["size"] for r in scan["resources"])
    assert set(scan["resources"][0]) == {"id", "label", "format", "file_count", "size", "scan"}
    _, res = api("GET", f"projects/NEURO_MRI/experiments/{exp}/resources",
                       params={"scan": scan["id"]}, expect=200)
    assert [r["label"] for r in res["items"]] == [r["label"] for r in scan["resources"]]
    _, files = api("GET", f"projects/NEURO_MRI/experiments/{exp}/files",
                         params={"scan": scan["id"]}, expect=200)
    assert sum(f["size"] for f in files["items"]) == scan["size"]
    assert set(files["items"][0]) == {"uri", "path", "size", "md5", "resource"}


def test_paging_limits(api):
    code, err = api("GET", "projects/NEURO_MRI/subjects", params={"limit": 501})
    assert code == 400 and err["error"] == "invalid_request" and "limit" in err["message"]
    code, err = api("GET", "projects/NEURO_MRI/experiments", params={"offset": "x"})
    assert code == 400 and "offset" in err["message"]


def test_out_of_scope_and_not_readable(api):
    code, err = api("GET", "projects/SLEEP_EEG/subjects")  # XNAT allows, the scope does not
    assert code == 403 and err["error"] == "out_of_scope" and err["item"] == "SLEEP_EEG"
    code, err = api("GET", "projects/CARDIO_ECG/experiments")  # in scope, XNAT refuses
    assert code == 403 and err["error"] == "permission_denied" and err["item"] == "CARDIO_ECG"
    code, err = api("POST", "datasets", body={"name": "sneaky",
                                                    "selection": [{"project": "SLEEP_EEG"}]})
    assert code == 403 and err["error"] == "out_of_scope"


def test_unknown_items_and_bad_ids(api):
    code, err = api("GET", "projects/NEURO_MRI/experiments/NO_SUCH/scans")
    assert code == 404 and err["error"] == "not_found"
    code, err = api("GET", "projects/NEURO%20MRI/subjects")
    assert code == 400 and "not a valid XNAT identifier" in err["message"]


# -- datasets ----------------------------------------------------------------------------

def test_dataset_lifecycle(api, xnat_env, devxnat):
    _, exps = api("GET", "projects/NEURO_MRI/experiments", params={"limit": 1}, expect=200)
    exp = exps["items"][0]
    sel = [{"project": "NEURO_MRI", "experiment": exp["label"]}]
    code, ds = api("POST", "datasets", body={"name": "t1 set", "selection": sel})
    assert code == 201, ds
    assert ds["name"] == "t1 set" and ds["version"] == 1 and ds["versions"] == [1]
    # metadata only: the content hash is known once a staging recorded every file's sha256
    assert ds["file_count"] > 0 and ds["total_size"] > 0 and ds["manifest_sha256"] == ""
    assert ds["selection"] == sel and ds["created"]
    _, listing = api("GET", "datasets", expect=200)
    assert [d["name"] for d in listing["items"]] == ["t1 set"]
    assert listing["items"][0] == ds
    _, detail = api("GET", "datasets/t1 set", expect=200)
    assert len(detail["files"]) == ds["file_count"]
    assert set(detail["files"][0]) == {"name", "uri", "size", "sha256"}
    assert sum(f["size"] for f in detail["files"]) == ds["total_size"]
    assert all(f["sha256"] == "" for f in detail["files"])
    # what a staging does: record the sha256s; the dataset's content hash is then known
    import hashlib

    from xnat_bridge.datasets import DatasetStore

    store = DatasetStore(xnat_env["workspace"] / "datasets")
    archive = {f.name: (devxnat.archive / f.archive_path).read_bytes() for f in store.load("t1 set").files}
    store.record_sha256("t1 set", 1, {n: hashlib.sha256(b).hexdigest() for n, b in archive.items()})
    _, ds = api("GET", "datasets/t1 set", expect=200)
    assert len(ds["manifest_sha256"]) == 64 and ds["version"] == 1
    assert {f["name"]: f["sha256"] for f in ds["files"]} == {
        n: hashlib.sha256(b).hexdigest() for n, b in archive.items()}
    _, v1 = api("GET", "datasets/t1 set", params={"version": 1}, expect=200)
    assert v1["version"] == 1
    code, err = api("GET", "datasets/t1 set", params={"version": 7})
    assert code == 404 and "no version 7" in err["message"]
    code, body = api("DELETE", "datasets/t1 set")
    assert code == 204 and body is None
    code, err = api("GET", "datasets/t1 set")
    assert code == 404 and err["error"] == "not_found"
    code, err = api("DELETE", "datasets/t1 set")
    assert code == 404


def test_bad_dataset_requests(api):
    sel = [{"project": "NEURO_MRI"}]
    for name in ("../etc", "", " lead", "a/b", "x" * 65, 42):
        code, err = api("POST", "datasets", body={"name": name, "selection": sel})
        assert code == 400 and err["error"] == "invalid_request", (name, err)
    code, err = api("POST", "datasets", body={"name": "ok", "selection": []})
    assert code == 400 and "at least one" in err["message"]
    code, err = api("POST", "datasets", body="{not json")
    assert code == 400 and "not valid JSON" in err["message"]
    code, err = api("POST", "datasets", body={"name": "ok", "selection": sel, "extra": 1})
    assert code == 400 and "extra" in err["message"]
    code, err = api("GET", "datasets/no such set")
    assert code == 404 and err["item"] == "no such set"


# -- limits and scripts ---------------------------------------------------------------------

def test_limits(api):
    _, limits = api("GET", "limits", expect=200)
    assert limits["partition"] == "secure" and limits["partitions"] == ["secure"]
    assert limits["max_cpus"] == 2 and limits["max_memory"] == 2 * 1024**3
    assert limits["max_walltime"] == 600 and limits["default_walltime"] == 300


def test_scripts_listing(api, jp_root_dir, tmp_path):
    (jp_root_dir / "train.py").write_text("print('hi')\n")
    (jp_root_dir / "a" / "b" / "c").mkdir(parents=True)
    (jp_root_dir / "a" / "b" / "c" / "deep.py").write_text("x = 1\n")
    (jp_root_dir / "a" / "b" / "c" / "d").mkdir()
    (jp_root_dir / "a" / "b" / "c" / "d" / "too_deep.py").write_text("x = 1\n")
    (jp_root_dir / ".hidden").mkdir()
    (jp_root_dir / ".hidden" / "secret.py").write_text("x = 1\n")
    (jp_root_dir / "notes.txt").write_text("no")
    (jp_root_dir / "xnat-hpc" / "jobs").mkdir(parents=True)  # the workspace: results, not scripts
    (jp_root_dir / "xnat-hpc" / "jobs" / "model.py").write_text("x = 1\n")
    outside = tmp_path / "outside.py"
    outside.write_text("x = 1\n")
    (jp_root_dir / "link_out.py").symlink_to(outside)
    _, scripts = api("GET", "scripts", expect=200)
    assert scripts["items"] == [{"path": "a/b/c/deep.py", "size": 6},
                                {"path": "train.py", "size": 12}]


# -- errors, auth, XSRF, XNAT down -----------------------------------------------------------

def test_unauthenticated_is_refused(jp_fetch, run):
    with pytest.raises(HTTPClientError) as e:
        run(jp_fetch("xnat-hpc", "api", "projects", headers={"Authorization": "token wrong"}))
    assert e.value.code == 403


def test_cookie_post_without_xsrf_is_refused(jp_serverapp, http_server_client, jp_base_url, run):
    token = jp_serverapp.identity_provider.token
    r = run(http_server_client.fetch(f"{jp_base_url}login?token={token}", follow_redirects=False,
                                     raise_error=False))
    cookies = [c.split(";", 1)[0] for c in r.headers.get_list("Set-Cookie")]
    assert any(c.startswith("username-") for c in cookies), cookies
    cookie = "; ".join(cookies)
    url = f"{jp_base_url}xnat-hpc/api/datasets"
    body = json.dumps({"name": "xsrf", "selection": [{"project": "NEURO_MRI"}]})
    r = run(http_server_client.fetch(url, method="POST", body=body, raise_error=False,
                                     headers={"Cookie": cookie}))
    assert r.code == 403
    err = json.loads(r.body)
    assert "_xsrf" in err["message"]
    # a header that does not match the _xsrf cookie is refused too
    r = run(http_server_client.fetch(url, method="POST", body=body, raise_error=False,
                                     headers={"Cookie": cookie + "; _xsrf=abcd1234",
                                              "X-XSRFToken": "ffff0000"}))
    assert r.code == 403 and "XSRF" in json.loads(r.body)["message"]
    # the same cookie with a matching XSRF token passes the check and reaches the handler
    r = run(http_server_client.fetch(url, method="POST", raise_error=False,
                                     body=body.replace("NEURO_MRI", "SLEEP_EEG"),
                                     headers={"Cookie": cookie + "; _xsrf=abcd1234",
                                              "X-XSRFToken": "abcd1234"}))
    assert r.code == 403 and json.loads(r.body)["error"] == "out_of_scope"


@pytest.fixture
def unreachable_xnat(xnat_env, monkeypatch):
    monkeypatch.setenv("XNAT_HOST", f"http://127.0.0.1:{_closed_port()}")


def test_xnat_unreachable_is_503(unreachable_xnat, api):
    for path in ("scope", "projects", "projects/NEURO_MRI/subjects"):
        code, err = api("GET", path)
        assert code == 503 and err["error"] == "xnat_unavailable", (path, err)
        assert "not reachable" in err["message"]
    # what needs no XNAT still answers
    api("GET", "limits", expect=200)
    api("GET", "datasets", expect=200)


@pytest.fixture
def no_xnat_env(xnat_env, monkeypatch):
    monkeypatch.delenv("XNAT_HOST")  # before the server starts: it must start all the same


def test_not_configured_is_503(no_xnat_env, api):
    code, err = api("GET", "projects")
    assert code == 503
    assert err["message"] == "XNAT is not configured for this server: XNAT_HOST is not set"


def broken_factory(**kwargs):
    """A connection factory that fails unexpectedly (configured by import name below)."""
    raise RuntimeError("boom: internal detail that must not reach the client")


@pytest.fixture
def broken_server_config(xnat_env, jp_server_config):
    jp_server_config["XnatHpcExtension"] = {
        "connection_factory": f"{__name__}.broken_factory"}
    return jp_server_config


def test_unexpected_error_is_generic_500(broken_server_config, api):
    code, err = api("GET", "projects")
    assert code == 500
    assert err == {"error": "error", "message": "internal error; see the server log"}


def test_unknown_route_is_json_404(api):
    code, err = api("GET", "nope")
    assert code == 404 and err["error"] == "not_found" and "openapi.yaml" in err["message"]
    code, err = api("POST", "datasets/x/y")
    assert code == 404 and err["error"] == "not_found"




# -- jobs on the real Slurm -------------------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_example.py"
TERMINAL = {"done", "failed", "cancelled", "lost"}


@pytest.fixture
def neuro_dataset(api, jp_root_dir):
    """The example script in the root dir and a dataset of NEURO_MRI, through the API."""
    shutil.copyfile(EXAMPLE, jp_root_dir / "train.py")
    _, ds = api("POST", "datasets", body={"name": "mri", "selection": [{"project": "NEURO_MRI"}]},
                expect=201)
    return ds


def _wait(api, run, job_id, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, job = api("GET", f"jobs/{job_id}", expect=200)
        if job["state"] in TERMINAL:
            return job
        run(asyncio.sleep(0.5))  # the server's loop keeps running while we wait
    raise AssertionError(f"job {job_id} still {job['state']} after {timeout} s: {job['message']}")


@pytest.mark.slurm
def test_job_submit_run_logs_results(slurm, api, run, neuro_dataset, jp_serverapp):
    body = {"dataset": "mri", "script": "train.py", "cpus": 1, "memory": "512M",
            "walltime": "0:05:00", "client_token": "submit-1"}
    code, job = api("POST", "jobs", body=body)
    assert code == 202, job
    assert job["state"] == "staging" and job["script"] == "train.py" and job["dataset"] == "mri"
    assert job["resources"]["memory"] == 512 * 2**20 and job["resources"]["walltime"] == 300
    assert job["resources"]["partition"] == "secure" and job["client_token"] == "submit-1"
    assert job["manifest_sha256"] == neuro_dataset["manifest_sha256"]
    # a double-clicked Submit: the same token answers 200 with the same job, no second job
    code, again = api("POST", "jobs", body=body)
    assert code == 200 and again["id"] == job["id"]
    # while the job is not finished the server tells the hub it is active
    ext = jp_serverapp.web_app.settings["xnat_hpc"]
    assert run(ext.report_activity_once()) is True
    assert "xnat_hpc_jobs" in jp_serverapp.web_app.settings["last_activity_times"]

    done = _wait(api, run, job["id"])
    assert done["state"] == "done", done["message"]
    # the staging recorded every file's sha256 into the dataset version: its content hash is the job's
    _, staged = api("GET", "datasets/mri", expect=200)
    assert staged["version"] == neuro_dataset["version"] and all(f["sha256"] for f in staged["files"])
    assert len(staged["manifest_sha256"]) == 64 and staged["manifest_sha256"] == done["manifest_sha256"]
    assert done["exit_code"] == 0 and done["slurm_job_id"] and done["started"] and done["ended"]
    _, jobs = api("GET", "jobs", expect=200)
    assert [j["id"] for j in jobs["items"]] == [job["id"]]
    _, logs = api("GET", f"jobs/{job['id']}/logs", expect=200)
    assert logs["state"] == "done" and logs["text"] and logs["offset"] == len(logs["text"].encode())
    _, rest = api("GET", f"jobs/{job['id']}/logs", params={"offset": logs["offset"]}, expect=200)
    assert rest["text"] == "" and rest["offset"] == logs["offset"]
    _, results = api("GET", f"jobs/{job['id']}/results", expect=200)
    assert results["path"] == f"xnat-hpc/jobs/{job['id']}/results"  # relative to the root dir
    names = {f["name"] for f in results["files"]}
    assert {"metrics.json", "model.pkl"} <= names
    metrics = json.loads((Path(jp_serverapp.root_dir) / results["path"] / "metrics.json").read_text())
    assert metrics
    assert results["provenance"]
    # finished: no more activity reports; cancel is a no-op returning the record
    assert run(ext.report_activity_once()) is False
    _, same = api("POST", f"jobs/{job['id']}/cancel", expect=200)
    assert same["state"] == "done"


@pytest.mark.slurm
def test_job_cancel(slurm, api, run, neuro_dataset):
    code, job = api("POST", "jobs", body={"dataset": "mri", "script": "train.py"})
    assert code == 202
    code, cancelled = api("POST", f"jobs/{job['id']}/cancel")
    assert code == 200 and cancelled["state"] == "cancelled" and "cancel" in cancelled["message"]
    code, err = api("GET", f"jobs/{job['id']}/results")
    assert code == 409 and err["error"] == "conflict" and "not done" in err["message"]
    assert _wait(api, run, job["id"])["state"] == "cancelled"


def test_job_requests_refused_before_submission(api, neuro_dataset, jp_root_dir, tmp_path):
    outside = tmp_path / "outside.py"
    outside.write_text("print('x')\n")
    (jp_root_dir / "link_out.py").symlink_to(outside)
    (jp_root_dir / "notes.txt").write_text("x")
    (jp_root_dir / "pkg.py").mkdir()
    cases = {
        "../outside.py": "'..'",
        str(outside): "absolute",
        "/etc/hostname.py": "absolute",
        "link_out.py": "outside",
        "notes.txt": "not a Python file",
        "missing.py": "does not exist",
        "pkg.py": "not a regular file",
    }
    for script, words in cases.items():
        code, err = api("POST", "jobs", body={"dataset": "mri", "script": script})
        assert code == 400 and err["error"] == "invalid_request", (script, err)
        assert words in err["message"], (script, err["message"])
    for body, words in [
        ({"dataset": "mri", "script": "train.py", "cpus": 99}, "cpus 99 is above the maximum 2"),
        ({"dataset": "mri", "script": "train.py", "memory": "64G", "walltime": "2:00:00"}, "walltime"),
        ({"dataset": "mri", "script": "train.py", "cpus": "many"}, "cpus must be an integer"),
        ({"dataset": "mri", "script": "train.py", "memory": "lots"}, "is not a size"),
        ({"dataset": "mri", "script": "train.py", "nodes": 3}, "unknown fields ['nodes']"),
        ({"dataset": "mri", "script": "train.py", "client_token": "a b"}, "client_token"),
        ({"script": "train.py"}, "needs a dataset"),
        ([], "JSON object"),
    ]:
        code, err = api("POST", "jobs", body=body)
        assert code == 400 and words in err["message"], (body, err)
    code, err = api("POST", "jobs", body={"dataset": "no such set", "script": "train.py"})
    assert code == 404 and err["error"] == "not_found"
    _, jobs = api("GET", "jobs", expect=200)
    assert jobs["items"] == []  # nothing was recorded, nothing reached sbatch


def test_unknown_jobs_are_404(api):
    for job_id in ("j000000000000", "nonsense", "J3FA94C0D12AB"):
        for suffix, method in (("", "GET"), ("/logs", "GET"), ("/results", "GET"), ("/cancel", "POST")):
            code, err = api(method, f"jobs/{job_id}{suffix}")
            assert code == 404 and err["error"] == "not_found", (job_id, suffix, err)
    code, err = api("GET", "jobs/j000000000000/logs", params={"offset": -1})
    assert code == 400
