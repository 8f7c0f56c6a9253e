"""The hub side without a hub: the one error mapping, the routes for
``c.JupyterHub.extra_handlers``, the hub audit log, the progress channel between
the dispatcher and its backend, and the Slurm backend's commands (argument lists
through the subprocess gateway)."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import threading
import types

import pytest
from tornado import web
from traitlets.config import Config

from hub_ext import errors
from hub_ext.audit_log import HubAuditLog
from hub_ext.handlers import configured_handlers, missing_routes, xnat_hpc_handlers
from spawner.progress import SpawnProgress, follow
from xnat_bridge.errors import (
    CommandFailed,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    SlurmError,
    XnatUnavailable,
)


# -- errors ------------------------------------------------------------------------------
@pytest.mark.parametrize("exc, status", [
    (InvalidRequest("bad"), 400), (PermissionDenied("no"), 403), (NotFound("gone"), 404),
    (XnatUnavailable("XNAT down"), 503), (SlurmError("slurmctld down"), 503),
    (CommandFailed(["age"], 1, "", "boom"), 503),
])
def test_domain_errors_keep_their_message_and_a_4xx_or_become_503(exc, status):
    page = errors.http_error(exc)
    assert (page.status_code, page.log_message) == (status, exc.message)
    spawn = errors.spawn_error(exc)
    assert (spawn.status_code, spawn.jupyterhub_message) == (status, exc.message)


def test_unexpected_errors_are_500_with_a_generic_message_and_logged(caplog):
    with caplog.at_level(logging.ERROR, logger="hub_ext.errors"):
        err = errors.http_error(KeyError("secret-internal-detail"))
    assert err.status_code == 500 and err.log_message == errors.UNEXPECTED
    assert "secret-internal-detail" not in err.log_message
    assert caplog.records and caplog.records[-1].exc_info is not None
    already = web.HTTPError(418, "teapot")
    assert errors.http_error(already) is already


def test_login_errors_say_nobody_can_log_in_when_xnat_is_down():
    err = errors.login_error(XnatUnavailable("connection refused"))
    assert err.status_code == 503 and err.log_message == errors.LOGIN_UNAVAILABLE
    assert errors.login_error(PermissionDenied("role missing")).status_code == 403
    assert errors.misconfigured("XnatAuthenticator.xnat_url is not configured").status_code == 500


async def test_handler_methods_answer_through_the_mapping():
    class Handler:
        log = logging.getLogger("test")

        @errors.map_errors
        async def refuse(self):
            raise PermissionDenied("bootstrap refused")

        @errors.map_errors
        async def crash(self):
            raise RuntimeError("bug")

        @errors.map_errors
        async def fine(self):
            return "ok"

    h = Handler()
    with pytest.raises(web.HTTPError) as refused:
        await h.refuse()
    assert (refused.value.status_code, refused.value.log_message) == (403, "bootstrap refused")
    with pytest.raises(web.HTTPError) as crashed:
        await h.crash()
    assert crashed.value.status_code == 500
    assert await h.fine() == "ok"


# -- routes ------------------------------------------------------------------------------
def test_routes_keep_their_urls_under_the_hub_prefix_and_import_registers_nothing():
    from jupyterhub import apihandlers, handlers
    from jupyterhub.app import JupyterHub

    ours = xnat_hpc_handlers()
    assert xnat_hpc_handlers() is not ours  # a new list each call
    routes = [h[0] for h in JupyterHub.add_url_prefix("/hub/", list(ours))]
    # the servers' calls to governance keep their hub addresses, passed on to the service
    forwarded = ("/hub/api/xnat-hpc/(audit|jobs/j[0-9a-f]{12}(?:/publish)?|review/policy|review/jobs/j[0-9a-f]{12}"
                 "|shares(?:/[^/]+)?)")
    # the owners' pages are the governance service's: their old addresses redirect there
    assert routes == ["/hub/api/xnat-hpc/bootstrap", forwarded, "/hub/xnat-hpc/owner", "/hub/xnat-hpc/owner/access",
                      "/hub/xnat-hpc/review", "/hub/xnat-plugin/api(/.*)?"]
    import re

    for path in ("audit", "jobs/j0123456789ab", "review/policy", "review/jobs/j0123456789ab"):
        assert re.fullmatch(forwarded, f"/hub/api/xnat-hpc/{path}")
    for path in ("bootstrap", "jobs/j0123456789ab/x", "review/jobs/../../users", "auditx"):
        assert not re.fullmatch(forwarded, f"/hub/api/xnat-hpc/{path}")
    installed = {h[1] for h in handlers.default_handlers + apihandlers.default_handlers}
    assert not installed.intersection(h[1] for h in ours)


def test_missing_routes_reads_the_hub_configuration():
    c = Config()
    assert missing_routes(c)[0] == "/api/xnat-hpc/bootstrap"
    assert "/xnat-hpc/owner" in missing_routes(c) and "/xnat-hpc/owner/access" in missing_routes(c)
    assert "/xnat-hpc/review" in missing_routes(c)
    assert any("jobs/j[0-9a-f]{12}" in r for r in missing_routes(c))  # the job ledger, passed on
    c.JupyterHub.extra_handlers = xnat_hpc_handlers()
    assert missing_routes(c) == [] and len(configured_handlers(c)) == len(xnat_hpc_handlers())
    lazy = Config()
    lazy.JupyterHub.extra_handlers.extend(xnat_hpc_handlers())  # the `+=` style of config files
    assert missing_routes(lazy) == []


# -- audit log ----------------------------------------------------------------------------
async def test_hub_audit_log_appends_a_keyed_chain_off_the_event_loop(tmp_path, monkeypatch):
    from hub_ext import audit_store

    log = HubAuditLog(path=str(tmp_path / "logs" / "audit.db"))
    assert log.query() == [] and log.verify() == (True, "no events yet")
    loop_thread = threading.get_ident()
    writers = []
    append = audit_store.AuditStore.append_groups

    def spy(store, groups):
        writers.append(threading.get_ident())
        return append(store, groups)

    monkeypatch.setattr(audit_store.AuditStore, "append_groups", spy)
    assert await log.record("alice", "spawn", "allowed", items=["P1"], detail="profile small") == 1
    assert await log.record("bob", "spawn", "denied", items=["P2"]) == 2
    assert writers and loop_thread not in writers
    events = log.query()
    assert [(e["seq"], e["user"], e["outcome"], e["items"], e["source"]) for e in events] == \
        [(2, "bob", "denied", ["P2"], "hub"), (1, "alice", "allowed", ["P1"], "hub")]
    ok, sentence = log.verify()
    assert ok and "intact (2 records" in sentence
    for name in ("logs/audit.db", "logs/audit.key", "logs/audit.db.checkpoint"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "logs").stat().st_mode & 0o777 == 0o700
    log.close()


# -- progress ------------------------------------------------------------------------------
async def test_progress_follows_the_current_channel_until_the_start_is_done():
    holder = types.SimpleNamespace(channel=None, pending=True)
    seen = []

    async def read():
        async for event in follow(lambda: holder.channel, lambda: holder.pending, interval=0.05):
            seen.append(event["message"])

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.02)  # asked before the start made its channel
    holder.channel = SpawnProgress()
    holder.channel.emit(5, "checking")
    await asyncio.sleep(0.15)
    holder.channel.emit(40, "submitted")  # e.g. the dispatcher's backend, same channel
    await asyncio.sleep(0.02)
    holder.channel.emit(90, "up")
    holder.pending = False
    await asyncio.wait_for(reader, 2)
    assert seen == ["checking", "submitted", "up"]


async def test_the_dispatcher_hands_its_channel_to_the_backend():
    from spawner.dispatch import XnatProfilesSpawner
    from spawner.slurm import XnatSlurmSpawner

    parent = XnatProfilesSpawner(config=Config())
    parent.spawn_progress = SpawnProgress()
    child = XnatSlurmSpawner(config=Config())
    child.spawn_progress = parent.spawn_progress
    child._progress(40, "Submitted Slurm job 7")
    assert parent.spawn_progress.events == [{"progress": 40, "message": "Submitted Slurm job 7"}]


def test_a_starts_phases_are_kept_in_order_and_a_late_news_folds_into_the_next():
    """A server's start is broken down by phase (SPAWN_PHASES) on its progress channel; the
    Slurm backend may learn the job runs (its queue poll) after the job already claimed its
    secrets: that phase is then part of the bootstrap's, never counted twice or backwards."""
    from spawner.progress import SPAWN_PHASES

    now = [10.0]
    channel = SpawnProgress(clock=lambda: now[0])
    for name, took in (("checks", 0.2), ("prepare", 0.05), ("sbatch", 0.01), ("bootstrap", 1.5)):
        now[0] += took
        channel.phase(name)
    now[0] += 0.3
    channel.phase("queued")  # news of the queue after the claim: nothing recorded
    channel.phase("server_start")
    assert channel.phases.as_json() == {"checks": 0.2, "prepare": 0.05, "sbatch": 0.01, "bootstrap": 1.5,
                                        "server_start": 0.3}
    assert list(channel.phases.as_json()) == [p for p in SPAWN_PHASES if p in channel.phases.durations]
    assert channel.phases.text().startswith("checks 0.20 s · prepare 0.05 s · sbatch 0.01 s · bootstrap 1.50 s")


# -- subprocess gateway (async) ------------------------------------------------------------
async def test_arun_is_the_async_gateway_with_list_arguments_and_typed_failures():
    from xnat_bridge import procs

    done = await procs.arun(["sh", "-c", "cat; echo err >&2"], input=b"in\n", timeout=10)
    assert (done.returncode, done.stdout, done.stderr) == (0, "in\n", "err\n")
    with pytest.raises(CommandFailed) as failed:
        await procs.arun(["sh", "-c", "echo out; echo why >&2; exit 3"], timeout=10)
    assert (failed.value.returncode, failed.value.stdout, failed.value.stderr) == (3, "out\n", "why\n")
    with pytest.raises(CommandFailed) as missing:
        await procs.arun(["/nonexistent/sbatch"], timeout=10)
    assert missing.value.returncode == 127
    with pytest.raises(CommandFailed) as slow:
        await procs.arun(["sleep", "5"], timeout=0.2)
    assert slow.value.returncode == 124
    assert (await procs.arun(["sh", "-c", "exit 2"], check=False)).returncode == 2


# -- Slurm commands ------------------------------------------------------------------------
def _slurm_spawner(config: Config | None = None):
    from spawner.slurm import XnatSlurmSpawner

    return XnatSlurmSpawner(config=config or Config(),
                            user=types.SimpleNamespace(name="alice", url="/user/alice/"))


def test_slurm_backend_refuses_to_start_without_the_bootstrap_route():
    spawner = _slurm_spawner()
    with pytest.raises(web.HTTPError) as refused:
        spawner.check_bootstrap_route()
    assert refused.value.status_code == 503
    assert "c.JupyterHub.extra_handlers = xnat_hpc_handlers()" in refused.value.jupyterhub_message
    c = Config()
    c.JupyterHub.extra_handlers = xnat_hpc_handlers()
    _slurm_spawner(c).check_bootstrap_route()


async def test_squeue_and_scancel_are_argument_lists_through_the_gateway(monkeypatch):
    from batchspawner.batchspawner import JobStatus

    from spawner import slurm

    calls = []
    answers = {}

    async def arun(argv, **kw):
        calls.append(list(argv))
        answer = answers[argv[0]]
        if isinstance(answer, Exception):
            raise answer
        return subprocess.CompletedProcess(argv, 0, answer, "")

    monkeypatch.setattr(slurm.procs, "arun", arun)
    spawner = _slurm_spawner()
    assert await spawner.query_job_status() == JobStatus.NOTFOUND and calls == []  # no job yet
    spawner.job_id = "42"
    spawner.spawn_progress = SpawnProgress()
    answers["squeue"] = "PENDING (null)\n"
    assert await spawner.query_job_status() == JobStatus.PENDING
    assert calls[-1] == ["squeue", "-h", "-j", "42", "-o", "%T %B"]
    answers["squeue"] = "RUNNING node1\n"
    assert await spawner.query_job_status() == JobStatus.RUNNING
    assert await spawner.query_job_status() == JobStatus.RUNNING  # reported once
    assert spawner.state_gethost() == "node1"
    assert [e["message"] for e in spawner.spawn_progress.events] == [
        "Slurm job 42 is pending in the queue", "Slurm job 42 is running; starting JupyterLab"]
    answers["squeue"] = CommandFailed(["squeue"], 1, "", "slurm_load_jobs error: Unable to contact slurm controller")
    assert await spawner.query_job_status() == JobStatus.UNKNOWN
    answers["squeue"] = CommandFailed(["squeue"], 1, "", "slurm_load_jobs error: Invalid job id specified")
    assert await spawner.query_job_status() == JobStatus.NOTFOUND
    answers["scancel"] = ""
    await spawner.cancel_batch_job()
    assert calls[-1] == ["scancel", "42"]


async def test_sbatch_refusal_is_a_slurm_error_and_spends_the_code(monkeypatch, tmp_path):
    from hub_ext import bootstrap
    from spawner import slurm

    async def arun(argv, **kw):
        assert kw["input"].startswith(b"#!") and "sbatch" in " ".join(argv)
        raise CommandFailed(argv, 1, "", "sbatch: error: invalid partition specified: nowhere\n")

    monkeypatch.setattr(slurm.procs, "arun", arun)
    monkeypatch.setattr(slurm, "batch_script", lambda plan, settings, names: "#!/bin/sh\n")
    spawner = _slurm_spawner()
    monkeypatch.setattr(spawner, "_home", lambda: str(tmp_path))
    monkeypatch.setattr(spawner, "get_env", lambda: {"XNAT_PASS": "s", "XNAT_HOST": "h"})
    monkeypatch.setattr(spawner, "get_args", lambda: [])
    issued = []
    monkeypatch.setattr(bootstrap.registry, "issue", lambda owner, secret, ttl: issued.append(owner) or "code")
    revoked = []
    monkeypatch.setattr(bootstrap.registry, "revoke", lambda owner: revoked.append(owner))
    with pytest.raises(SlurmError, match="Slurm refused the server job: sbatch: error: invalid partition"):
        await spawner.submit_batch_script()
    assert issued == revoked == [spawner]


# -- refresh_user and XNAT's "Start Jupyter" -------------------------------------------------
def _handler(requester, method="POST", path="/hub/api/users/bob/servers/x", body=None):
    request = types.SimpleNamespace(method=method, path=path,
                                    body=json.dumps(body if body is not None else {"xsiType": "x"}).encode())
    return types.SimpleNamespace(current_user=requester, request=request)


def test_only_a_services_plugin_start_passes_refresh_without_a_hub_login():
    from jupyterhub.orm import Service

    from hub_ext.auth import XnatAuthenticator, _is_xnat_plugin_start

    assert _is_xnat_plugin_start(_handler(Service(name="xnat")))
    assert _is_xnat_plugin_start(_handler(Service(name="xnat"), path="/hub/api/users/bob/server"))
    assert not _is_xnat_plugin_start(None)
    assert not _is_xnat_plugin_start(_handler(types.SimpleNamespace(name="admin")))   # a user, not a service
    assert not _is_xnat_plugin_start(_handler(Service(name="xnat"), body={"projects": ["P"]}))   # not the plugin's body
    assert not _is_xnat_plugin_start(_handler(Service(name="xnat"), method="GET"))
    assert not _is_xnat_plugin_start(_handler(Service(name="xnat"), path="/hub/api/users/bob/tokens"))
    bad = _handler(Service(name="xnat"))
    bad.request.body = b"{not json"
    assert not _is_xnat_plugin_start(bad)

    class NoState:
        name = "bob"

        async def get_auth_state(self):
            return None

    auth = XnatAuthenticator(xnat_url="http://xnat.invalid")
    assert asyncio.run(auth.refresh_user(NoState(), _handler(Service(name="xnat")))) is True
    assert asyncio.run(auth.refresh_user(NoState(), _handler(types.SimpleNamespace(name="bob")))) is False
