"""Webhooks: signed Standard Webhooks deliveries to a real receiver on 127.0.0.1, filters,
retries, SSRF refusals, and pending deliveries that survive a server restart."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from pathlib import Path

import pytest
from helpers_server import Receiver, Server

import kiapi_echo
from kiapi_core.errors import SettingsError
from kiapi_core.testing import build_test_host
from kiapi_core.webhooks import verify
from kiapi_core.webhooks.signing import secret_bytes

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
KEY = b"k" * 32
HOOKS = {"webhook_secret": SECRET, "webhook_allow_private": True, "webhook_retry_s": [0.2, 0.2]}


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def signed(delivery: dict) -> bool:
    return verify(KEY, delivery["headers"], delivery["body"])


async def test_events_are_signed_ordered_and_filtered(kiapi_client_factory, receiver):
    gate = kiapi_echo.GATES["hook"] = threading.Event()
    async with kiapi_client_factory(plugins=[kiapi_echo], **HOOKS) as http:
        r = await http.post("/v1/text/echo/slow", json={"steps": 2, "gate": "hook", "mode": "async",
                                                        "webhook": receiver.url})
        assert r.status_code == 202 and "unknown" not in r.headers["x-kiapi-warnings"]
        job_id = r.json()["job_id"]
        try:
            await asyncio.to_thread(receiver.wait_for, lambda ds: any(d["json"]["type"] == "job.progress" for d in ds))
        finally:
            gate.set()
        await http.wait_job(job_id)
        seen = await asyncio.to_thread(receiver.wait_for, lambda ds: any(d["json"]["type"] == "job.completed" for d in ds))
        only = await http.post("/v1/text/echo/render", json={"text": "x", "webhook": receiver.url,
                                                             "webhook_events_filter": ["completed"]})
        assert only.status_code == 200
        after = await asyncio.to_thread(receiver.wait_for, lambda ds: len(ds) > len(seen))
    types = [d["json"]["type"] for d in seen]
    assert types[0] == "job.start" and types[-1] == "job.completed" and "job.progress" in types
    assert all(signed(d) for d in after)
    assert all(d["json"]["data"]["id"] == job_id for d in seen)
    assert seen[-1]["json"]["data"]["status"] == "succeeded"
    assert after[-1]["json"]["type"] == "job.completed"
    assert after[-1]["json"]["data"]["id"] == only.headers["x-kiapi-job-id"]
    assert len({d["headers"]["webhook-id"] for d in after}) == len(after)
    assert not verify(b"x" * 32, after[0]["headers"], after[0]["body"])  # the wrong key fails


async def test_a_failed_delivery_is_retried_with_the_same_id(kiapi_client_factory, receiver):
    receiver.status = 503
    async with kiapi_client_factory(plugins=[kiapi_echo], **HOOKS) as http:
        await http.post("/v1/text/echo/render", json={"text": "x", "webhook": receiver.url,
                                                      "webhook_events_filter": ["completed"]})
        await asyncio.to_thread(receiver.wait_for, lambda ds: len(ds) >= 1)
        receiver.status = 200
        got = await asyncio.to_thread(receiver.wait_for, lambda ds: any(d["status"] == 200 for d in ds))
        delivered = 'kiapi_webhook_deliveries_total{event="completed",outcome="delivered"} 1.0'
        for _ in range(100):  # the receiver records before it answers; the count follows the answer
            metrics = (await http.get("/metrics")).text
            if delivered in metrics:
                break
            await asyncio.sleep(0.05)
    assert got[0]["headers"]["webhook-id"] == got[-1]["headers"]["webhook-id"] and len(got) == 2
    assert all(signed(d) for d in got)
    assert 'kiapi_webhook_deliveries_total{event="completed",outcome="failed"} 1.0' in metrics
    assert delivered in metrics


async def test_webhook_requests_are_checked_before_queueing(kiapi_client_factory, receiver):
    async with kiapi_client_factory(plugins=[kiapi_echo], webhook_secret=SECRET) as http:
        r = await http.post("/v1/text/echo/render", json={"text": "x", "webhook": receiver.url})
        assert r.status_code == 400 and r.json()["code"] == "webhook_forbidden_address"
        assert "KIAPI_WEBHOOK_ALLOW_PRIVATE" in r.json()["detail"]
        # A host name's refusal names the address class, never the address (no DNS oracle).
        r = await http.post("/v1/text/echo/render", json={"text": "x", "webhook": "http://localhost:9/h"})
        assert r.status_code == 400 and r.json()["code"] == "webhook_forbidden_address"
        assert "resolves to a" in r.json()["detail"] and "127.0.0.1" not in r.json()["detail"]
        r = await http.post("/v1/text/echo/render", json={"text": "x", "webhook": "ftp://example.com/x"})
        assert r.status_code == 400
        r = await http.post("/v1/text/echo/render", json={"text": "x", "webhook": "https://example.com/h",
                                                          "webhook_events_filter": ["done"]})
        assert r.status_code == 422 and r.json()["field"] == "webhook_events_filter"
        assert (await http.get("/v1/jobs")).json()["data"] == []
        doc = (await http.get("/v1/text/echo/openapi.json")).json()
        props = doc["components"]["schemas"]["RenderRequest"]["properties"]
        assert props["webhook"]["type"] == "string"
        assert props["webhook_events_filter"]["items"]["enum"] == ["start", "progress", "completed"]
    async with kiapi_client_factory(plugins=[kiapi_echo]) as http:
        r = await http.post("/v1/text/echo/render", json={"text": "x", "webhook": receiver.url})
        assert r.status_code == 422 and r.json()["code"] == "webhooks_disabled"


def test_the_secret_must_be_in_the_standard_format(tmp_path):
    assert secret_bytes(SECRET) == KEY
    for bad in ("plain-text", "whsec_***", "whsec_" + base64.b64encode(b"short").decode()):
        with pytest.raises(SettingsError, match="whsec_"):
            build_test_host(tmp_path, webhook_secret=bad)


def test_pending_deliveries_survive_a_restart(tmp_path: Path, receiver):
    """A delivery that failed before the server stopped, and the end of a job a crash cut off,
    both arrive after the restart, signed, with their ids unchanged across retries."""
    data = tmp_path / "data"
    env = {"KIAPI_WEBHOOK_SECRET": SECRET, "KIAPI_WEBHOOK_ALLOW_PRIVATE": "1", "KIAPI_WEBHOOK_RETRY_S": "1,1,1"}
    receiver.status = 500
    server = Server(tmp_path, data, **env)
    try:
        done = server.http.post("/v1/text/echo/render", json={"text": "x", "webhook": receiver.url,
                                                              "webhook_events_filter": ["completed"]})
        assert done.status_code == 200
        receiver.wait_for(lambda ds: len(ds) >= 1)
        running = server.http.post("/v1/text/sleepy/wait", json={
            "release": str(tmp_path / "never"), "mode": "async", "webhook": receiver.url + "?cut",
            "webhook_events_filter": ["completed"]}).json()["job_id"]
        job = server.http.get(f"/v1/jobs/{running}", params={"wait": 0}).json()
        while job["status"] != "running":
            job = server.http.get(f"/v1/jobs/{running}").json()
        # The job store writes behind (a start may be lost in the last few ms before a kill):
        # let it record the running job, so the restart finds it cut off.
        time.sleep(0.5)
    finally:
        server.stop(kill=True)
    failed_ids = {d["headers"]["webhook-id"] for d in receiver.deliveries}
    receiver.status = 200
    server = Server(tmp_path, data, **env)
    try:
        got = receiver.wait_for(lambda ds: sum(d["status"] == 200 for d in ds) >= 2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nserver log:\n{server.output()}") from None
    finally:
        server.stop()
    ok = [d for d in got if d["status"] == 200]
    assert all(signed(d) for d in ok)
    first = next(d for d in ok if d["json"]["data"]["id"] == done.headers["x-kiapi-job-id"])
    assert first["headers"]["webhook-id"] in failed_ids and first["json"]["data"]["status"] == "succeeded"
    cut = next(d for d in ok if d["json"]["data"]["id"] == running)
    assert cut["path"] == "/hook?cut" and cut["json"]["type"] == "job.completed"
    assert cut["json"]["data"]["status"] == "failed" and cut["json"]["data"]["error_code"] == "server_restarted"


async def test_progress_is_throttled_but_the_latest_state_arrives(tmp_path, receiver):
    import msgspec

    from kiapi_core.jobs.models import Job, JobStatus
    from kiapi_core.settings import Settings
    from kiapi_core.webhooks import Subscription, WebhookDispatcher

    settings = msgspec.convert(HOOKS, Settings)
    dispatcher = WebhookDispatcher(settings, tmp_path / "hooks.sqlite3")
    await dispatcher.start()
    try:
        job = Job(type="t", id="job_" + "1" * 32, status=JobStatus.running)
        dispatcher.subscribe(job.id, Subscription(url=receiver.url, events=frozenset({"progress"})))
        for fraction in (0.1, 0.2, 0.3):
            dispatcher.on_job("progress", msgspec.structs.replace(job, progress=fraction))
            await asyncio.sleep(0.01)
        got = await asyncio.to_thread(receiver.wait_for, lambda ds: len(ds) >= 2, 10.0)
        await asyncio.sleep(1.2)
    finally:
        await dispatcher.stop()
    assert [d["json"]["data"]["progress"] for d in receiver.deliveries] == [0.1, 0.3]
    assert all(signed(d) for d in got)
