"""Several real ``kiapi serve --demo`` hosts on one PostgreSQL database act as one endpoint."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from cluster_procs import start_hosts
from helpers_server import Receiver


@pytest.fixture
def two(tmp_path, pg_url):
    hosts = start_hosts(tmp_path, pg_url, ["a", "b"])
    yield hosts
    for host in hosts:
        host.stop()


def _png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(out, format="PNG")
    return out.getvalue()


def _by_name(hosts, name):
    return next(h for h in hosts if h.name == name)


def test_submit_on_a_sse_on_b_and_a_file_uploaded_on_one_host_used_on_the_other(two, tmp_path):
    a, b = two
    release, png = tmp_path / "go", _png()
    job_id = a.submit(str(release))
    seen: list[dict] = []
    with httpx.Client(base_url=b.url, timeout=60) as client, client.stream("GET", f"/v1/jobs/{job_id}/events") as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            seen.append(json.loads(line[6:]))
            if seen[-1]["progress_label"] == "waiting" and not release.exists():
                # The runner is busy: a file uploaded there is used by a job the other host runs.
                runner = _by_name(two, seen[-1]["metrics"]["cluster_host"])
                other = b if runner is a else a
                up = runner.http.post("/v1/files", files={"file": ("in.png", png, "image/png")})
                assert up.status_code in (200, 201), up.text
                done = runner.http.post("/v1/text/cwait/wait",
                                        json={"image": {"type": "file_id", "file_id": up.json()["file_id"]}},
                                        headers={"Accept": "application/json"})
                assert done.status_code == 200, done.text
                assert done.json()["metrics"]["cluster_host"] == other.name
                out = done.json()["artifacts"][0]
                assert runner.http.get(f"/v1/files/{out}/download").content.endswith(b":" + png)
                release.touch()
    assert [s["status"] for s in seen][0] in ("queued", "running") and seen[-1]["status"] == "succeeded", seen
    assert any(s["progress_label"] == "waiting" for s in seen)
    file_id = seen[-1]["artifacts"][0]
    body = a.http.get(f"/v1/files/{file_id}/download").content
    assert body.startswith(b"released by") and b.http.get(f"/v1/files/{file_id}/download").content == body
    assert {f["file_id"] for f in a.http.get("/v1/files").json()["data"]} == \
        {f["file_id"] for f in b.http.get("/v1/files").json()["data"]}
    # a delete on one host is seen by the other at once
    assert b.http.delete(f"/v1/files/{file_id}").status_code in (200, 204)
    assert a.http.get(f"/v1/files/{file_id}/download").status_code == 404


@pytest.fixture
def three(tmp_path, pg_url):  # pg_url is one database per test, shared by the test's hosts
    hosts = start_hosts(tmp_path, pg_url, ["a", "b", "c"])
    yield hosts
    for host in hosts:
        host.stop()


def test_cancel_from_another_host_and_one_idempotency_key_on_two_hosts(three, tmp_path, pg_url):
    a, b, c = three
    job_id = a.submit(str(tmp_path / "never"))
    job = a.wait_for(job_id, lambda j: j["progress_label"] == "waiting", "never started")
    runner = job["metrics"]["cluster_host"]
    canceler = next(h for h in three if h.name != runner)
    r = canceler.http.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "running"
    job = b.wait_for(job_id, lambda j: j["status"] == "canceled", "cancel never took effect")
    assert job["progress_label"] == "canceled"

    body = {"release": "", "mode": "async", "model": "m2"}
    with ThreadPoolExecutor(2) as pool:  # the same key on two hosts at the same moment
        first_f, second_f = (pool.submit(h.http.post, "/v1/text/cwait/wait", json=body,
                                         headers={"Idempotency-Key": "k-1"}) for h in (a, c))
        first, second = first_f.result(), second_f.result()
    assert first.status_code == 202 and second.status_code == 202
    assert first.json()["job_id"] == second.json()["job_id"]
    clash = b.http.post("/v1/text/cwait/wait", json={**body, "model": "m1"}, headers={"Idempotency-Key": "k-1"})
    assert clash.status_code == 409 and clash.json()["code"] == "idempotency_conflict"
    listed = [j for j in b.http.get("/v1/jobs", params={"type": "cwait", "limit": 500}).json()["data"]]
    assert len(listed) == 2  # the canceled one and the keyed one: never two keyed jobs

    hosts = a.http.get("/v1/cluster/hosts").json()["data"]
    assert sorted(h["id"] for h in hosts) == ["a", "b", "c"]
    for row in hosts:
        assert row["url"].startswith("http://127.0.0.1:") and row["capabilities"] == ["cwait", "echo"]
        assert row["heartbeat_age_s"] < 5 and row["draining"] is False and row["live"] is True
        assert {"resident", "free_gb", "running_job"} <= set(row)
    # the same on the command line
    env = {**os.environ, "KIAPI_CLUSTER_URL": pg_url, "KIAPI_CONFIG": ""}
    out = subprocess.run([sys.executable, "-m", "kiapi_core.cli", "cluster"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "3 host(s)" in out.stdout and all(f"\n{n}  http://127.0.0.1:" in out.stdout for n in "bc")
    out = subprocess.run([sys.executable, "-m", "kiapi_core.cli", "cluster", "--json"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert sorted(h["id"] for h in json.loads(out.stdout)["hosts"]) == ["a", "b", "c"]


def test_kill_9_of_the_owner_reruns_the_job_then_fails_it_host_lost(three, tmp_path):
    a, b, c = three
    job_id = a.submit(str(tmp_path / "never"))
    job = a.wait_for(job_id, lambda j: j["progress_label"] == "waiting", "never started")
    first = job["metrics"]["cluster_host"]
    killed_at = time.monotonic()
    _by_name(three, first).proc.kill()
    watcher = next(h for h in three if h.name != first)
    job = watcher.wait_for(job_id, lambda j: j["status"] == "running" and j["metrics"].get("attempt") == 2
                           and j["progress_label"] == "waiting", "never re-run")
    assert time.monotonic() - killed_at < 2.0 + 6.0  # lease + margin
    second = job["metrics"]["cluster_host"]
    assert second != first and any("was lost" in w for w in job["warnings"])
    _by_name(three, second).proc.kill()
    last = next(h for h in three if h.name not in (first, second))
    job = last.wait_for(job_id, lambda j: j["status"] == "failed", "never failed")
    assert job["error_code"] == "host_lost" and "stopped answering" in job["error"]


def test_sigstop_past_the_lease_then_sigcont_is_fenced_out(two, tmp_path):
    a, b = two
    release = tmp_path / "go"
    job_id = a.submit(str(release))
    job = a.wait_for(job_id, lambda j: j["progress_label"] == "waiting", "never started")
    stalled = _by_name(two, job["metrics"]["cluster_host"])
    other = b if stalled is a else a
    stalled.signal(signal.SIGSTOP)
    try:
        job = other.wait_for(job_id, lambda j: j["metrics"].get("attempt") == 2 and j["progress_label"] == "waiting",
                             "the stalled host's job was never taken over")
        assert job["metrics"]["cluster_host"] == other.name
        release.touch()  # both runs may now finish: the second while the first is still stopped
        job = other.wait_for(job_id, lambda j: j["status"] == "succeeded", "the second attempt never finished")
    finally:
        stalled.signal(signal.SIGCONT)
    # The stalled host wakes up believing it runs the job and finishes it too: its result, its
    # record writes and its artifact must all be refused or removed.
    time.sleep(3.0)
    job = other.job(job_id)
    assert job["status"] == "succeeded" and job["metrics"]["cluster_host"] == other.name
    assert job["metrics"]["attempt"] == 2 and job["result"]["pid"] == other.proc.pid and len(job["artifacts"]) == 1
    assert "attempt 1" in stalled.output() and ("lost its lease" in stalled.output() or "stopped here" in stalled.output())
    outputs = [f["file_id"] for f in stalled.http.get("/v1/files").json()["data"] if f["meta"].get("job_id") == job_id]
    assert outputs == job["artifacts"]


def test_a_host_with_the_model_resident_wins_the_job(tmp_path, pg_url):
    hosts = start_hosts(tmp_path, pg_url, ["a", "b"], affinity_s=30.0)
    try:
        a, b = hosts
        r = a.http.post("/v1/text/cwait/wait", json={"model": "m1"}, headers={"Accept": "application/json"})
        assert r.status_code == 200, r.text
        warm = r.json()["metrics"]["cluster_host"]
        # the registry shows the model resident on that host
        rows = {h["id"]: h for h in b.http.get("/v1/cluster/hosts").json()["data"]}
        deadline = time.monotonic() + 10
        while "cwait:m1" not in rows[warm]["resident"]:
            assert time.monotonic() < deadline, rows
            time.sleep(0.2)
            rows = {h["id"]: h for h in b.http.get("/v1/cluster/hosts").json()["data"]}
        for entry in (a, b, a, b):
            r = entry.http.post("/v1/text/cwait/wait", json={"model": "m1"}, headers={"Accept": "application/json"})
            assert r.status_code == 200 and r.json()["metrics"]["cluster_host"] == warm
    finally:
        for host in hosts:
            host.stop()


def test_roles_webhooks_and_a_graceful_stop_hands_the_running_job_to_another_host(tmp_path, pg_url):
    receiver = Receiver()
    hooks = {"KIAPI_WEBHOOK_SECRET": "whsec_" + base64.b64encode(b"k" * 32).decode(),
             "KIAPI_WEBHOOK_ALLOW_PRIVATE": "1"}
    api = start_hosts(tmp_path, pg_url, ["api"], role="api", extra_env=hooks)[0]
    workers = start_hosts(tmp_path, pg_url, ["w1", "w2"], role="worker", grace_s=1.0)
    try:
        rows = {h["id"]: h for h in api.http.get("/v1/cluster/hosts").json()["data"]}
        assert rows["api"]["role"] == "api" and rows["api"]["capabilities"] == []
        assert rows["w1"]["role"] == "worker" and "cwait" in rows["w1"]["capabilities"]
        refused = workers[0].http.post("/v1/text/cwait/wait", json={})
        assert refused.status_code == 503 and refused.json()["code"] == "role_worker"
        release = tmp_path / "go"
        job_id = api.submit(str(release))
        job = api.wait_for(job_id, lambda j: j["progress_label"] == "waiting", "never started")
        first = _by_name(workers, job["metrics"]["cluster_host"])
        first.proc.terminate()  # SIGTERM: drain; after the 1 s grace the job goes back to the queue
        assert first.proc.wait(30) == 0
        job = api.wait_for(job_id, lambda j: j["progress_label"] == "waiting"
                           and j["metrics"]["cluster_host"] != first.name, "never handed over")
        assert job["metrics"]["attempt"] == 1 and job["status"] == "running"  # a hand-back is no lost attempt
        assert first.name not in [h["id"] for h in api.http.get("/v1/cluster/hosts").json()["data"]]
        release.touch()
        assert api.wait_for(job_id, lambda j: j["status"] == "succeeded")["artifacts"]
        # A webhook registered where the job was submitted fires although another host ran it.
        hooked = api.http.post("/v1/text/cwait/wait", json={"mode": "async", "webhook": receiver.url})
        assert hooked.status_code == 202, hooked.text
        hooked_id = hooked.json()["job_id"]
        seen = receiver.wait_for(lambda ds: any(d["json"]["type"] == "job.completed" for d in ds))
        mine = [d["json"] for d in seen if d["json"]["data"]["id"] == hooked_id]
        assert mine[0]["type"] == "job.start" and mine[-1]["type"] == "job.completed"
        assert mine[-1]["data"]["status"] == "succeeded" and mine[-1]["data"]["metrics"]["cluster_host"] != "api"
    finally:
        receiver.close()
        for host in [api, *workers]:
            host.stop()
