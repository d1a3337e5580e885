"""Structured logs: JSON lines from a real server, job lifecycle and access lines with the job
id, and model-library output captured at debug level."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading

from helpers_server import Server

from kiapi_core.logs import MODEL_THREAD, JsonFormatter, capture_model_output


def test_json_logs_carry_job_lifecycle_and_access_lines(tmp_path):
    server = Server(tmp_path, tmp_path / "data", KIAPI_LOG_FORMAT="json")
    try:
        ok = server.http.post("/v1/text/echo/render", json={"text": "hi"})
        assert server.http.get(f"/v1/jobs/{ok.headers['x-kiapi-job-id']}").status_code == 200
        failed = server.http.post("/v1/text/echo/fail", json={"how": "invalid"})
    finally:
        assert server.stop() == 0
    lines = [json.loads(line) for line in server.log_path.read_text().splitlines() if line.strip()]
    assert all({"ts", "level", "logger", "msg"} <= line.keys() for line in lines)
    job_id = ok.headers["x-kiapi-job-id"]
    events = {line["event"]: line for line in lines if line.get("job_id") == job_id and "event" in line}
    assert {"job_queued", "job_started", "job_succeeded", "http"} <= events.keys(), events.keys()
    done = events["job_succeeded"]
    assert done["capability"] == "echo" and done["model"] == "small" and done["operation"] == "render"
    assert done["job_type"] == "echo" and "echo/render (small)" in done["msg"]
    assert done["run_s"] >= 0 and done["wait_s"] >= 0 and "peak_gb" in done
    polled = [line for line in lines if line.get("event") == "http" and line.get("route") == "/v1/jobs/{job_id}"]
    assert all(line["job_id"] for line in polled)
    access = next(line for line in lines if line.get("event") == "http" and line.get("job_id") == job_id
                  and line["method"] == "POST")
    assert access["route"] == "/v1/text/echo/render" and access["status"] == 200 and access["method"] == "POST"
    fail = next(line for line in lines if line.get("job_id") == failed.headers["x-kiapi-job-id"]
                and line.get("event") == "job_failed")
    assert fail["error_code"] == "invalid_request" and fail["level"] == "info"


def test_model_thread_output_becomes_debug_records(caplog):
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = io.StringIO(), io.StringIO()
    try:
        capture_model_output()

        def library_noise() -> None:
            print("🖼️ Generating image 1/1")
            sys.stderr.write("step 1/2\rstep 2/2\n")

        with caplog.at_level(logging.DEBUG, logger="kiapi.models"):
            worker = threading.Thread(target=library_noise, name=MODEL_THREAD)
            worker.start()
            worker.join()
            print("from another thread")
        passed = sys.stdout.original.getvalue()  # type: ignore[attr-defined]
    finally:
        sys.stdout, sys.stderr = saved
    records = [(r.name, r.levelname, r.getMessage()) for r in caplog.records if r.name.startswith("kiapi.models")]
    assert records == [("kiapi.models.stdout", "DEBUG", "🖼️ Generating image 1/1"),
                       ("kiapi.models.stderr", "DEBUG", "step 1/2"), ("kiapi.models.stderr", "DEBUG", "step 2/2")]
    assert passed == "from another thread\n"


def test_json_formatter_keeps_structured_fields():
    record = logging.LogRecord("kiapi.jobs", logging.INFO, __file__, 1, "job %s done", ("job_x",), None)
    record.job_id = "job_x"
    record.run_s = 1.5
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "job job_x done" and line["job_id"] == "job_x" and line["run_s"] == 1.5
