"""Real server processes: ``kill -9`` and restart, and graceful shutdown on SIGTERM.

Three ``python -m kiapi_core.cli serve --demo`` starts share one data directory:

1. jobs run, one job is left running and one queued, an upload is cut off half-way; ``kill -9``;
2. restart: finished jobs and artifacts are there, the cut-off jobs ended ``failed``
   (``server_restarted``), the half upload is invisible, an Idempotency-Key still names its
   job. Then SIGTERM while a sync job runs: new work gets 503 ``shutting_down``, the queued
   job is canceled, the running job finishes within the grace period and its caller gets 200;
3. restart with a 1 s grace: the drained jobs are as they were left; SIGTERM while a job
   that never finishes runs: it is canceled after the grace period and its sync caller gets
   an HTTP answer (503 ``shutting_down``), not a dropped connection.

Plugins reach the subprocess as entry points of a fake distribution on PYTHONPATH: the echo
test plugin and ``kiapi_sleepy`` (tests/support), whose job runs until a file appears, so nothing here
depends on timing beyond generous timeouts.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path

from helpers_server import TIMEOUT, Server


def _server(tmp: Path, data: Path, grace: float) -> Server:
    return Server(tmp, data, KIAPI_SHUTDOWN_GRACE_S=str(grace))


def _in_thread(fn) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run() -> None:
        try:
            out["response"] = fn()
        except Exception as exc:  # the assertion reports it
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _half_upload(port: int) -> socket.socket:
    """Start a 10 MB multipart upload and send only part of it."""
    sock = socket.create_connection(("127.0.0.1", port))
    head = (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"half.bin\"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n")
    sock.sendall(b"POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                 b"Content-Length: %d\r\n\r\n" % (len(head) + 10_000_000) + head + b"x" * 300_000)
    return sock


def _wait_until(predicate, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_kill_restart_and_graceful_shutdown(tmp_path):
    data = tmp_path / "data"
    never = str(tmp_path / "never-released")

    # --- 1: work, then kill -9 with a job running, one queued and an upload half-way --------
    one = _server(tmp_path, data, grace=30)
    try:
        r = one.http.post("/v1/text/echo/render", json={"text": "persisted"})
        assert r.status_code == 200, r.text
        done_id, file_id = r.headers["x-kiapi-job-id"], r.headers["x-kiapi-file-id"]
        keyed = one.http.post("/v1/text/echo/render", json={"text": "k", "mode": "async"},
                              headers={"Idempotency-Key": "before-crash"})
        assert keyed.status_code == 202
        keyed_id = keyed.json()["job_id"]
        one.wait_for(keyed_id, "succeeded")
        running_id = one.http.post("/v1/text/sleepy/wait", json={"release": never, "mode": "async"}).json()["job_id"]
        one.wait_for(running_id, "running")
        queued_id = one.http.post("/v1/text/sleepy/wait", json={"release": never, "mode": "async"}).json()["job_id"]
        assert one.http.get(f"/v1/jobs/{queued_id}").json()["status"] == "queued"
        upload = _half_upload(one.port)
        partial = data / "files" / ".partial"
        _wait_until(lambda: any(partial.iterdir()), "the upload never started")
        files_before = [f["file_id"] for f in one.http.get("/v1/files").json()["data"]]
    finally:
        one.stop(kill=True)
    upload.close()

    # --- 2: restart; then SIGTERM while a sync job runs ----------------------------------------
    two = _server(tmp_path, data, grace=30)
    try:
        jobs = {j["id"]: j for j in two.http.get("/v1/jobs").json()["data"]}
        assert jobs[done_id]["status"] == "succeeded" and jobs[done_id]["artifacts"] == [file_id]
        assert two.http.get(f"/v1/files/{file_id}/download").content == b"persisted"
        for job_id in (running_id, queued_id):
            assert jobs[job_id]["status"] == "failed", jobs[job_id]
            assert jobs[job_id]["error_code"] == "server_restarted" and "restarted" in jobs[job_id]["error"]
        assert [f["file_id"] for f in two.http.get("/v1/files").json()["data"]] == files_before
        names = [p.name for p in (data / "files").iterdir()]
        assert {n.split(".")[0] for n in names if ".data" in n} == {n[:-5] for n in names if n.endswith(".json")}
        again = two.http.post("/v1/text/echo/render", json={"text": "k", "mode": "async"},
                              headers={"Idempotency-Key": "before-crash"})
        assert again.status_code == 202 and again.json()["job_id"] == keyed_id

        release = tmp_path / "release-2"
        thread, sync = _in_thread(lambda: two.http.post("/v1/text/sleepy/wait", json={"release": str(release)}))
        _wait_until(lambda: two.http.get("/v1/jobs", params={"status": "running"}).json()["data"], "no running job")
        sync_id = two.http.get("/v1/jobs", params={"status": "running"}).json()["data"][0]["id"]
        drained_id = two.http.post("/v1/text/sleepy/wait", json={"release": never, "mode": "async"}).json()["job_id"]
        two.proc.send_signal(signal.SIGTERM)
        _wait_until(lambda: two.http.get("/health").json()["queue"]["accepting"] is False, "never stopped accepting")
        refused = two.http.post("/v1/text/echo/render", json={"text": "late"})
        assert refused.status_code == 503 and refused.json()["code"] == "shutting_down"
        assert "retry-after" in refused.headers
        assert two.http.get(f"/v1/jobs/{drained_id}").json()["status"] == "canceled"
        assert two.http.get(f"/v1/jobs/{sync_id}").json()["status"] == "running"  # within its grace
        release.touch()
        thread.join(TIMEOUT)
        assert "error" not in sync, sync
        assert sync["response"].status_code == 200 and sync["response"].content == b"released"
        assert two.proc.wait(TIMEOUT) == 0
    finally:
        two.stop(kill=True)

    # --- 3: the drain was recorded; a job that outlives the grace is canceled, caller answered ---
    three = _server(tmp_path, data, grace=1)
    try:
        drained = three.http.get(f"/v1/jobs/{drained_id}").json()
        assert drained["status"] == "canceled" and drained["error_code"] == "shutting_down"
        assert "before the job started" in drained["error"]
        assert three.http.get(f"/v1/jobs/{sync_id}").json()["status"] == "succeeded"
        thread, sync = _in_thread(lambda: three.http.post("/v1/text/sleepy/wait", json={"release": never}))
        _wait_until(lambda: three.http.get("/v1/jobs", params={"status": "running"}).json()["data"], "no running job")
        stuck_id = three.http.get("/v1/jobs", params={"status": "running"}).json()["data"][0]["id"]
        three.proc.send_signal(signal.SIGTERM)
        thread.join(TIMEOUT)
        assert "error" not in sync, sync  # an HTTP answer, not a dropped connection
        answer = sync["response"]
        assert answer.status_code == 503 and answer.json()["code"] == "shutting_down", answer.text
        assert answer.json()["job_id"] == stuck_id and "KIAPI_SHUTDOWN_GRACE_S" in answer.json()["detail"]
        assert three.proc.wait(TIMEOUT) == 0
    finally:
        three.stop(kill=True)
    # The canceled state was persisted before the process exited.
    from kiapi_core.jobs.sqlite_store import SqliteJobStore

    store = SqliteJobStore(data / "jobs.sqlite3", ttl_s=0, max_jobs=0)
    assert store.open() == []
    assert store.get(stuck_id).status.value == "canceled"
    store.close()
