"""Real ``kiapi serve --demo`` hosts on one PostgreSQL database, where things go wrong or wait:
light-pool jobs beside a model job, inputs deleted or expired while their job waits, webhooks
whose submitting (and running) host died, a job no live host can hold, and the database itself
going away and coming back."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import httpx
import psycopg
import pytest
from cluster_procs import ClusterHost, start_hosts
from helpers_server import Receiver

from kiapi_core.webhooks.signing import secret_bytes, sign

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
HOOKS = {"KIAPI_WEBHOOK_SECRET": SECRET, "KIAPI_WEBHOOK_ALLOW_PRIVATE": "1"}
JSON = {"Accept": "application/json"}


def _png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 10)).save(out, format="PNG")
    return out.getvalue()


def _stop(hosts) -> None:
    for host in hosts:
        host.stop(kill=True)


def _busy(hosts, tmp_path) -> dict[str, object]:
    """Occupy every host's model thread with a job that waits for its own release file;
    returns host name -> release path."""
    releases = {}
    for index, _ in enumerate(hosts):
        release = tmp_path / f"busy-{index}"
        job_id = hosts[0].submit(str(release))
        job = hosts[0].wait_for(job_id, lambda j: j["progress_label"] == "waiting", "a busy job never started")
        releases[job["metrics"]["cluster_host"]] = release
    assert len(releases) == len(hosts), releases
    return releases


def test_light_pool_jobs_run_beside_a_running_model_job(tmp_path, pg_url):
    (a,) = start_hosts(tmp_path, pg_url, ["a"])
    try:
        model_job = a.submit(str(tmp_path / "never"))
        a.wait_for(model_job, lambda j: j["progress_label"] == "waiting", "the model job never started")
        started = time.monotonic()
        r = a.http.post("/v1/text/cwait/light", json={"text": "quick"}, headers=JSON)
        assert r.status_code == 200, r.text
        assert time.monotonic() - started < 10.0
        job = r.json()
        assert job["result"]["thread"].startswith("kiapi-pool-") and job["metrics"]["pool"] is True
        assert job["metrics"]["cluster_host"] == "a"
        assert a.http.get(f"/v1/files/{job['artifacts'][0]}/download").content == b"quick"
        assert a.job(model_job)["status"] == "running"  # it never waited behind the model job
        health = a.http.get("/health").json()
        assert health["queue"]["pool"]["workers"] == 2 and health["queue"]["running"]["id"] == model_job
    finally:
        _stop([a])


def test_inputs_of_a_waiting_job_outlive_their_delete_and_expiry_on_every_host(tmp_path, pg_url):
    from kiapi_core.cluster.pg import PgFileStore, Pool

    hosts = start_hosts(tmp_path, pg_url, ["a", "b"], extra_env={"KIAPI_FILE_TTL_S": "5"})
    a, b = hosts
    sweeper = PgFileStore(tmp_path / "sweeper", Pool(pg_url))
    try:
        releases = _busy(hosts, tmp_path)
        png = _png()
        uploaded_at = time.monotonic()
        deleted, expiring, loose = (a.http.post("/v1/files", files={"file": (f"{n}.png", png, "image/png")})
                                    .json()["file_id"] for n in ("deleted", "expiring", "loose"))
        jobs = [a.submit("", image={"type": "file_id", "file_id": file_id}) for file_id in (deleted, expiring)]
        assert all(a.job(j)["status"] == "queued" for j in jobs)
        assert b.http.delete(f"/v1/files/{deleted}").status_code in (200, 204)
        assert a.http.get(f"/v1/files/{deleted}").status_code == 404  # gone for clients at once, everywhere
        assert b.http.delete(f"/v1/files/{deleted}").status_code == 404
        time.sleep(max(0.0, uploaded_at + 5.5 - time.monotonic()))  # the other two expire
        assert b.http.get(f"/v1/files/{expiring}").status_code == 404
        # Any host's retention sweep removes the loose file, never the two a waiting job needs.
        assert sweeper.sweep_expired() == 1
        with psycopg.connect(pg_url) as conn:
            kept = {r[0] for r in conn.execute("SELECT id FROM kiapi_files").fetchall()}
        assert {deleted, expiring} <= kept and loose not in kept
        for release in releases.values():
            release.touch()
        for job_id in jobs:
            job = b.wait_for(job_id, "succeeded")
            out = job["artifacts"][0]
            assert b.http.get(f"/v1/files/{out}/download").content.endswith(b":" + png)
        # The jobs ended: their inputs go at the next sweep (with any output that expired too).
        assert sweeper.sweep_expired() >= 2
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT count(*) FROM kiapi_files WHERE id = ANY(%s)",
                                ([deleted, expiring],)).fetchone()[0] == 0
    finally:
        sweeper.pool.close()
        _stop(hosts)


def _until_sent(pg_url: str) -> None:
    deadline = time.monotonic() + 30
    with psycopg.connect(pg_url, autocommit=True) as conn:
        while conn.execute("SELECT count(*) FROM kiapi_webhook_deliveries").fetchone()[0]:
            assert time.monotonic() < deadline, "a delivery was never marked sent"
            time.sleep(0.05)


def _signed(delivery: dict) -> bool:
    headers = delivery["headers"]
    expected = sign(secret_bytes(SECRET), headers["webhook-id"], int(headers["webhook-timestamp"]), delivery["body"])
    return headers["webhook-signature"] == expected


def test_webhooks_are_delivered_after_the_submitting_and_the_running_host_died(tmp_path, pg_url):
    receiver = Receiver()
    env = {**HOOKS, "KIAPI_WEBHOOK_RETRY_S": "1,1,1,1,1"}
    api = start_hosts(tmp_path, pg_url, ["api"], role="api", extra_env=env)[0]
    workers = start_hosts(tmp_path, pg_url, ["w1", "w2"], role="worker", extra_env=env)
    try:
        release = tmp_path / "go"
        job_id = api.submit(str(release), webhook=receiver.url)
        job = api.wait_for(job_id, lambda j: j["progress_label"] == "waiting", "never started")
        runner = next(w for w in workers if w.name == job["metrics"]["cluster_host"])
        other = next(w for w in workers if w is not runner)
        receiver.wait_for(lambda ds: any(d["json"]["type"] == "job.start" for d in ds))
        _until_sent(pg_url)  # (killed while a delivery is in flight, it would rightly come again)
        api.stop(kill=True)  # the host that took the job and its webhook is gone
        receiver.status = 500  # and the receiver fails for now: the completion must be retried
        release.touch()
        failed = receiver.wait_for(lambda ds: any(d["json"]["type"] == "job.completed" for d in ds))
        msg_id = next(d for d in failed if d["json"]["type"] == "job.completed")["headers"]["webhook-id"]
        runner.stop(kill=True)  # the host that ran it (and tried the delivery) is gone too
        receiver.status = 200
        seen = receiver.wait_for(lambda ds: any(d["json"]["type"] == "job.completed" and d["status"] == 200
                                                for d in ds))
        completed = [d for d in seen if d["json"]["type"] == "job.completed"]
        assert {d["headers"]["webhook-id"] for d in completed} == {msg_id}  # the same message, again
        assert all(_signed(d) for d in seen)
        assert completed[-1]["json"]["data"]["status"] == "succeeded"
        assert completed[-1]["json"]["data"]["metrics"]["cluster_host"] == runner.name
        starts = [d for d in seen if d["json"]["type"] == "job.start"]
        assert len(starts) == 1 and starts[0]["json"]["data"]["id"] == job_id
        assert other.proc.poll() is None
    finally:
        receiver.close()
        _stop([api, *workers])


def _small_and_big(tmp_path, pg_url) -> tuple[ClusterHost, ClusterHost]:
    """A host with a 4 GiB budget and one with 16 GiB, on one database."""
    small = ClusterHost(tmp_path, pg_url, "small", extra_env={"KIAPI_MEMORY_LIMIT_GB": "4"})
    big = ClusterHost(tmp_path, pg_url, "big", extra_env={"KIAPI_MEMORY_LIMIT_GB": "16"})
    return small.ready(), big.ready()


def test_a_job_that_outgrew_every_live_host_fails_instead_of_bouncing(tmp_path, pg_url):
    small, big = _small_and_big(tmp_path, pg_url)
    hosts = [small, big]
    try:
        releases = _busy(hosts, tmp_path)
        gb_file = tmp_path / "gb"
        gb_file.write_text("1")
        job_id = small.submit("", gb_file=str(gb_file))
        gb_file.write_text("10")  # its estimate grew while it waited (as learned estimates do)
        releases["small"].touch()  # the small host claims it first, and cannot ever hold it
        job = small.wait_for(job_id, lambda j: j["progress_label"].startswith("waiting for a host with more memory"),
                             "the refusal was not shown on the job")
        assert job["status"] == "queued" and "small can never fit it" in job["progress_label"]
        gb_file.write_text("100")  # now more than any host has
        releases["big"].touch()
        job = big.wait_for(job_id, lambda j: j["status"] == "failed", "the job kept bouncing")
        assert job["error_code"] == "memory_budget"
        assert "no live host in the cluster can ever run this job" in job["error"] and "16.00 GiB" in job["error"]
        assert job["metrics"]["attempt"] == 1  # refusals burnt no attempt
    finally:
        _stop(hosts)


def test_a_queued_job_no_live_host_can_take_says_why_until_one_can(tmp_path, pg_url):
    small, big = _small_and_big(tmp_path, pg_url)
    hosts = [small, big]
    try:
        releases = _busy(hosts, tmp_path)
        gb_file = tmp_path / "gb"
        gb_file.write_text("10")
        job_id = small.submit("", gb_file=str(gb_file))  # accepted: the big host could hold it
        big.stop(kill=True)  # ... and is gone
        job = small.wait_for(job_id, lambda j: j["progress_label"].startswith("waiting: it needs about 10.0"),
                             "the job never said why it waits")
        assert job["status"] == "queued" and "the largest live host serving 'cwait' has 4.00 GiB" in job["progress_label"]
        bigger = ClusterHost(tmp_path, pg_url, "bigger", extra_env={"KIAPI_MEMORY_LIMIT_GB": "16"}).ready()
        hosts.append(bigger)
        for release in releases.values():  # the lost host's busy job was re-queued too
            release.touch()
        job = small.wait_for(job_id, "succeeded")
        assert job["metrics"]["cluster_host"] == "bigger"
    finally:
        _stop(hosts)


def _watch(url: str, job_id: str, seen: list[dict]) -> None:
    try:
        with httpx.Client(base_url=url, timeout=120) as client, client.stream("GET", f"/v1/jobs/{job_id}/events") as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:]))
    except httpx.HTTPError as exc:  # the assertion on the last event reports it
        seen.append({"status": "stream broke", "error": repr(exc)})


@pytest.fixture
def own_pg(pg_server):
    """A PostgreSQL server of this test's own (it is stopped and started again)."""
    from pg_server import PostgresServer

    server = PostgresServer(pg_server.bin_dir)
    server.start()
    yield server
    server.stop()


def test_the_database_goes_away_and_comes_back(tmp_path, own_pg):
    url = own_pg.new_database()
    hosts = start_hosts(tmp_path, url, ["a", "b"])
    a, b = hosts
    try:
        release = tmp_path / "go"
        job_id = a.submit(str(release))
        a.wait_for(job_id, lambda j: j["progress_label"] == "waiting", "never started")
        watched: list[dict] = []
        watcher = threading.Thread(target=_watch, args=(b.url, job_id, watched), daemon=True)
        watcher.start()  # an SSE stream on b stays open through the outage
        deadline = time.monotonic() + 10
        while not watched:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        own_pg.pause()
        down_at = time.monotonic()
        for host in hosts:
            deadline = time.monotonic() + 15
            health = host.http.get("/health").json()
            while health["status"] != "degraded":
                assert time.monotonic() < deadline, health
                time.sleep(0.2)
                health = host.http.get("/health").json()
            assert "cluster database has been unreachable" in health["problems"][0]
            database = health["queue"]["cluster"]["database"]
            assert database["reachable"] is False and database["error"] in health["problems"][0]
            assert "cannot be reached right now" not in database["error"]  # the cause, not the client's text
        for host in hosts:
            r = host.http.post("/v1/text/cwait/wait", json={"mode": "async"})
            assert r.status_code == 503 and r.json()["code"] == "cluster_database_unavailable", r.text
            assert int(r.headers["retry-after"]) > 0
            assert host.http.get(f"/v1/jobs/{job_id}").status_code == 503
            up = host.http.post("/v1/files", files={"file": ("x.bin", b"x", "application/octet-stream")})
            assert up.status_code == 503, up.text
        # The running job is stopped on its host once its lease runs out (nobody can renew it).
        time.sleep(max(0.0, 2.0 + 1.0 - (time.monotonic() - down_at)))
        assert any("lost the job" in h.output() or "stopped here" in h.output() for h in hosts)
        own_pg.resume()
        for host in hosts:
            deadline = time.monotonic() + 30
            while host.http.get("/health").json()["status"] != "ok":
                assert time.monotonic() < deadline, host.output()[-3000:]
                time.sleep(0.2)
        # Recovered without a restart: the cut-off job runs again, new work is taken.
        job = b.wait_for(job_id, lambda j: j["status"] == "running" and j["metrics"].get("attempt") == 2,
                         "the cut-off job was never run again")
        assert any("was lost while running attempt 1" in w for w in job["warnings"])
        release.touch()
        assert a.wait_for(job_id, "succeeded")["artifacts"]
        watcher.join(30)
        assert watched[-1]["status"] == "succeeded" and not watched[-1].get("error"), watched[-1]
        assert any(event.get("metrics", {}).get("attempt") == 2 for event in watched)
        r = b.http.post("/v1/text/cwait/wait", json={}, headers=JSON)
        assert r.status_code == 200, r.text
        with httpx.Client(base_url=a.url, timeout=30) as client:
            assert client.post("/v1/files", files={"file": ("y.bin", b"y", "application/octet-stream")}).status_code \
                in (200, 201)
    finally:
        _stop(hosts)
