"""/v1/jobs over HTTP: list, get with long-poll, SSE events, cancel, delete, errors."""

from __future__ import annotations

import asyncio
import json
import threading
from types import SimpleNamespace

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request

from helpers_jobs import OTHER, WAIT, make_rig
from kiapi_core.errors import KiapiError
from kiapi_core.http.responses import error_response
from kiapi_core.jobs.routes import routes


async def _kiapi_error(request: Request, exc: Exception):
    assert isinstance(exc, KiapiError)
    return error_response(exc)


@pytest.fixture
async def env(tmp_path):
    rig = make_rig(tmp_path)
    app = Starlette(routes=routes(), exception_handlers={KiapiError: _kiapi_error})
    app.state.host = SimpleNamespace(jobs=rig.manager, settings=rig.manager.settings)
    await rig.manager.start()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://kiapi") as client:
        yield SimpleNamespace(rig=rig, client=client)
    await rig.manager.stop(grace_s=0)


async def started(req) -> None:
    assert await asyncio.to_thread(req.started.wait, WAIT)


async def test_get_and_list(env):
    job_id, _ = env.rig.submit(label="a")
    other, _ = env.rig.submit(OTHER, label="b")
    await env.rig.manager.wait(other, WAIT)
    r = await env.client.get(f"/v1/jobs/{job_id}")
    assert r.status_code == 200
    body = r.json()
    assert body["id"] == job_id and body["status"] == "succeeded" and body["progress"] == 1.0
    assert body["type"] == "testcap" and len(body["artifacts"]) == 1 and body["error"] is None
    r = await env.client.get("/v1/jobs")
    body = r.json()
    assert body["object"] == "list" and [j["id"] for j in body["data"]] == [other, job_id]
    assert body["has_more"] is False
    r = await env.client.get("/v1/jobs", params={"type": "testcap-other"})
    assert [j["id"] for j in r.json()["data"]] == [other]
    r = await env.client.get("/v1/jobs", params={"status": "failed,canceled"})
    assert r.json()["data"] == []
    r = await env.client.get("/v1/jobs", params={"limit": 1})
    page = r.json()
    assert [j["id"] for j in page["data"]] == [other] and page["has_more"] and page["last_id"] == other
    r = await env.client.get("/v1/jobs", params={"limit": 1, "after": page["last_id"]})
    assert [j["id"] for j in r.json()["data"]] == [job_id]


@pytest.mark.parametrize("query, field", [
    ({"status": "done"}, "status"), ({"limit": 0}, "limit"), ({"limit": 501}, "limit"),
    ({"limit": "x"}, "limit"),
])
async def test_list_rejects_bad_queries(env, query, field):
    r = await env.client.get("/v1/jobs", params=query)
    assert r.status_code == 422 and r.json()["field"] == field and r.json()["code"] == "invalid_request"


async def test_list_with_unknown_cursor_is_422(env):
    r = await env.client.get("/v1/jobs", params={"after": "job_" + "0" * 32})
    assert r.status_code == 422 and r.json()["code"] == "invalid_cursor" and r.json()["field"] == "after"


async def test_malformed_and_unknown_ids_are_404(env):
    r = await env.client.get("/v1/jobs/../../etc")
    assert r.status_code == 404
    r = await env.client.get("/v1/jobs/job_XYZ")
    assert r.status_code == 404 and "job_<32" in r.json()["detail"] and "job_id" not in r.json()
    unknown = "job_" + "a" * 32
    for method, path in (("GET", ""), ("DELETE", ""), ("POST", "/cancel"), ("GET", "/events")):
        r = await env.client.request(method, f"/v1/jobs/{unknown}{path}")
        assert r.status_code == 404, (method, path)
        assert r.json()["job_id"] == unknown and r.headers["X-Kiapi-Job-Id"] == unknown


async def test_long_poll_answers_on_change(env):
    gate = threading.Event()
    job_id, req = env.rig.submit(gate=gate, steps=2)
    await started(req)
    r = await env.client.get(f"/v1/jobs/{job_id}", params={"wait": "0.05"})
    assert r.json()["status"] == "running"  # nothing changed: answered at the timeout
    poll = asyncio.create_task(env.client.get(f"/v1/jobs/{job_id}", params={"wait": "3600"}))
    await asyncio.sleep(0.05)
    gate.set()
    r = await asyncio.wait_for(poll, WAIT)
    assert r.status_code == 200 and r.json()["progress"] > 0
    await env.rig.manager.wait(job_id, WAIT)
    r = await env.client.get(f"/v1/jobs/{job_id}", params={"wait": "30"})
    assert r.json()["status"] == "succeeded"  # terminal: answers at once
    r = await env.client.get(f"/v1/jobs/{job_id}", params={"wait": "soon"})
    assert r.status_code == 422 and r.json()["job_id"] == job_id


async def test_events_stream_until_the_terminal_state(env):
    gate = threading.Event()
    job_id, req = env.rig.submit(gate=gate, steps=3)
    stream = asyncio.create_task(env.client.get(f"/v1/jobs/{job_id}/events"))
    await started(req)
    gate.set()
    r = await asyncio.wait_for(stream, WAIT)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-cache"
    snapshots = []
    for block in r.text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        assert lines["event"] == "job"
        snapshots.append(json.loads(lines["data"]))
    assert snapshots[-1]["status"] == "succeeded" and snapshots[-1]["progress"] == 1.0
    progress = [s["progress"] or 0.0 for s in snapshots]
    assert progress == sorted(progress) and all(p < 1.0 for p in progress[:-1])


async def test_cancel_queued_and_running_over_http(env):
    gate = threading.Event()
    running, req = env.rig.submit(gate=gate, steps=1000)
    await started(req)
    queued, queued_req = env.rig.submit()
    r = await env.client.post(f"/v1/jobs/{queued}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "canceled"
    r = await env.client.post(f"/v1/jobs/{running}/cancel")
    assert r.status_code == 200 and r.json()["status"] in ("running", "canceled")
    r = await env.client.get(f"/v1/jobs/{running}", params={"wait": "30"})
    assert r.status_code == 200
    job = await env.rig.manager.wait(running, WAIT)
    assert job.status.value == "canceled"
    r = await env.client.post(f"/v1/jobs/{running}/cancel")
    assert r.json()["status"] == "canceled"  # idempotent
    assert not queued_req.started.is_set()


async def test_delete(env):
    gate = threading.Event()
    running, req = env.rig.submit(gate=gate, steps=1000)
    await started(req)
    queued, _ = env.rig.submit()
    r = await env.client.delete(f"/v1/jobs/{queued}")
    assert r.json() == {"deleted": True, "job_id": queued, "was_running": False}
    r = await env.client.delete(f"/v1/jobs/{running}")
    assert r.json() == {"deleted": True, "job_id": running, "was_running": True}
    for job_id in (queued, running):
        assert (await env.client.get(f"/v1/jobs/{job_id}")).status_code == 404
