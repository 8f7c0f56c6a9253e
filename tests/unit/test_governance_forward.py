"""The hub's relay of the servers' calls to governance (hub_ext.governance_forward), in-process
(JupyterHub's MockHub): what passes to the service and what comes back. A stand-in service on
the hub's socket records each call as it arrives."""

from __future__ import annotations

import json

import pytest
import pytest_asyncio
from tornado import web
from tornado.httpserver import HTTPServer

from hub_ext import governance_socket
from tests.fixtures.mockhub import mock_hub

pytestmark = pytest.mark.asyncio(loop_scope="module")


class Recorder(web.RequestHandler):
    calls: list = []

    def check_xsrf_cookie(self):
        return

    def _record(self, path):
        Recorder.calls.append({"method": self.request.method, "path": self.request.path, "query": self.request.query,
                               "headers": dict(self.request.headers), "body": self.request.body})
        self.set_status(201)
        self.set_header("Retry-After", "7")
        self.set_header("Set-Cookie", "service-session=stolen")
        self.set_header("X-Service-Internal", "not for servers")
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"ok": True}))

    def get(self, path):
        self._record(path)

    def post(self, path):
        self._record(path)

    def patch(self, path):
        self._record(path)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub(tmp_path_factory):
    async with mock_hub() as h:
        sock = str(tmp_path_factory.mktemp("relay") / "recorder.sock")
        server = HTTPServer(web.Application([(r"(/.*)", Recorder)]))
        server.add_socket(governance_socket.listen(sock))
        h.config.XnatGovernance.service_socket = sock
        try:
            yield h
        finally:
            server.stop()


async def test_a_call_passes_as_it_came_with_its_token_and_no_cookie(hub):
    Recorder.calls.clear()
    code, doc, r = await hub.request("POST", "api/xnat-hpc/jobs/j0123456789ab?x=1", token="the-servers-token",
                                     body=b'{"a": 1}', headers={
                                         "Content-Type": "application/json", "Cookie": "jupyterhub-session-id=abc",
                                         "X-Forwarded-User": "alice", "X-Anything": "else"})
    assert code == 201 and doc == {"ok": True}
    [call] = Recorder.calls
    prefix = hub.app.base_url.rstrip("/") + "/services/xnat-hpc-governance/"
    assert (call["method"], call["path"], call["query"], call["body"]) == (
        "POST", prefix + "api/jobs/j0123456789ab", "x=1", b'{"a": 1}')
    assert call["headers"]["Authorization"] == "token the-servers-token"
    assert call["headers"]["Content-Type"] == "application/json"
    assert not {"Cookie", "X-Forwarded-User", "X-Anything"} & set(call["headers"])
    # of the answer, the status, body, Content-Type and Retry-After; never the service's cookies
    assert r.headers["Retry-After"] == "7" and "Set-Cookie" not in r.headers
    assert "X-Service-Internal" not in r.headers


@pytest.mark.parametrize("method, path", [("GET", "review/policy"), ("PATCH", "jobs/j0123456789ab"),
                                          ("GET", "review/jobs/j0123456789ab?share=1"), ("POST", "audit")])
async def test_every_route_of_the_servers_reaches_the_service(hub, method, path):
    Recorder.calls.clear()
    body = b"{}" if method != "GET" else None
    code, _, _ = await hub.request(method, f"api/xnat-hpc/{path}", token="t", body=body)
    assert code == 201 and len(Recorder.calls) == 1 and Recorder.calls[0]["method"] == method


@pytest.mark.parametrize("method, path", [("DELETE", "jobs/j0123456789ab"), ("GET", "jobs/j0123456789ab/../x"),
                                          ("POST", "audit/extra"), ("GET", "bootstrapx")])
async def test_nothing_else_is_passed_on(hub, method, path):
    Recorder.calls.clear()
    code, _, _ = await hub.request(method, f"api/xnat-hpc/{path}", token="t")
    assert code in (404, 405) and Recorder.calls == []
