"""Load: a real ``kiapi serve --demo`` process on loopback under 200 concurrent submissions.

One server process (Hypercorn, the real event loop and worker thread; ``KIAPI_MAX_QUEUE=64``)
serves the echo test plugin, ``kiapi_hold`` (below: its job runs until a file appears, so the
worker can be held busy without timing) and ernie in demo mode. Plugins reach it as entry
points of a fake distribution on PYTHONPATH, as in ``test_server_process.py``.

* ``test_200_concurrent_submissions``: with the worker held, 200 concurrent async submissions
  get exactly 64 x 202 (the queue bound) and 136 x 503 with ``Retry-After``; then, with the
  worker free, more waves of 200 get 202 or 503 and nothing else. Every 202 job id is unique,
  listed by ``GET /v1/jobs``, and ends ``succeeded`` with its own artifact. The server's RSS
  after the later waves stays within a generous bound of its RSS after the first.
* ``test_concurrent_real_model_jobs``: 20 concurrent ernie generations (64x64, 1 step; 16
  async and 4 sync) all run through the real mflux path and produce distinct PNGs.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

SUPPORT = Path(__file__).parent / "support"
TIMEOUT = 60.0
MAX_QUEUE = 64
SUBMISSIONS = 200
#: RSS growth allowed between the first wave and the last (tens of KB per job would be a leak
#: of ~20 MB over the 600 submissions; allocator noise stays well below this).
RSS_SLACK_MB = 32

HOLD = '''
import time
from pathlib import Path
import msgspec
from kiapi_core import Capability, Model, Operation, hookimpl

class HoldRequest(msgspec.Struct, kw_only=True):
    release: str
    mode: str = "sync"
    model: str | None = None

def hold(job):
    """Runs until the file ``release`` exists; honours cancel."""
    while not Path(job.request.release).exists():
        job.check_canceled()
        time.sleep(0.01)
    return {"released": True}

@hookimpl
def register_capabilities(register):
    register(Capability(name="hold", domain="text", title="Hold (test)",
                        models=(Model(name="m", default=True),),
                        operations=(Operation(name="wait", request=HoldRequest, result=None, handler=hold,
                                              job_type="hold"),)))
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident set size of a process, in MiB (Linux /proc, else ``ps``)."""
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    out = subprocess.run(["ps", "-o", "rss=", "-p", str(pid)], capture_output=True, text=True, check=True)
    return int(out.stdout.strip()) / 1024


class LoadServer:
    """A ``kiapi serve --demo`` process of our own on a free loopback port."""

    def __init__(self, tmp: Path) -> None:
        # A version unique to this run: /health must name it, so a server of another test run
        # that grabbed the port between _free_port() and our bind is never mistaken for ours.
        self.version = f"1.0+{os.getpid()}.{time.monotonic_ns()}"
        site = tmp / "site"
        info = site / "kiapi_load_test-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: kiapi-load-test\nVersion: {self.version}\n")
        (info / "entry_points.txt").write_text("[kiapi]\necho = kiapi_echo\nhold = kiapi_hold\n")
        (site / "kiapi_hold.py").write_text(HOLD)
        self.tmp = tmp
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(SUPPORT), *sys.path]),
                    "KIAPI_DATA_DIR": str(tmp / "data"), "KIAPI_LOAD_PLUGINS": "echo,hold,ernie",
                    "KIAPI_STRICT_PLUGINS": "1", "KIAPI_MAX_QUEUE": str(MAX_QUEUE), "KIAPI_MAX_JOBS": "100000",
                    "KIAPI_SHUTDOWN_GRACE_S": "5", "KIAPI_LOG_LEVEL": "warning", "KIAPI_CONFIG": "",
                    "XDG_CONFIG_HOME": str(tmp / "cfg")}
        self.log = open(tmp / "server.log", "w")  # noqa: SIM115 - closed in stop()
        for _attempt in range(3):  # the port may be taken between _free_port() and the bind
            if self._start():
                return
        raise AssertionError("server did not start:\n" + self.output())

    def _start(self) -> bool:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kiapi_core.cli", "serve", "--demo", "--port", str(self.port)],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + TIMEOUT
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, "server did not start:\n" + self.output()
            try:
                health = httpx.get(f"{self.url}/health", timeout=5)
                if health.status_code == 200 and any(
                        p["version"] == self.version for p in health.json().get("plugins", [])):
                    return True
            except (httpx.TransportError, ValueError):
                pass
            time.sleep(0.1)
        return False

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return Path(self.log.name).read_text()

    def rss_mb(self) -> float:
        return rss_mb(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(TIMEOUT)
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LoadServer]:
    server = LoadServer(tmp_path_factory.mktemp("load"))
    try:
        yield server
    finally:
        server.stop()
    assert "Traceback" not in server.output(), server.output()


def _client(server: LoadServer) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=SUBMISSIONS + 10, max_keepalive_connections=SUBMISSIONS + 10)
    return httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT, limits=limits)


async def _wave(http: httpx.AsyncClient, tag: str) -> tuple[list[str], list[httpx.Response]]:
    """200 concurrent async submissions; returns the accepted job ids and the refusals."""

    async def submit(i: int) -> httpx.Response:
        return await http.post("/v1/text/echo/render", json={"text": f"{tag}-{i}", "mode": "async"})

    responses = await asyncio.gather(*(submit(i) for i in range(SUBMISSIONS)))
    accepted, refused = [], []
    for response in responses:
        assert response.status_code in (202, 503), (response.status_code, response.text)
        if response.status_code == 202:
            body = response.json()
            assert body["status"] in ("queued", "running", "succeeded") and body["type"] == "echo", body
            assert response.headers["location"] == f"/v1/jobs/{body['job_id']}"
            accepted.append(body["job_id"])
        else:
            assert response.json()["code"] == "queue_full", response.text
            assert int(response.headers["retry-after"]) >= 1, response.headers
            refused.append(response)
    return accepted, refused


async def _wait_all(http: httpx.AsyncClient, job_ids: list[str]) -> list[dict]:
    """Long-poll every job until it ends (bounded by TIMEOUT each)."""
    semaphore = asyncio.Semaphore(50)

    async def wait(job_id: str) -> dict:
        async with semaphore:
            deadline = time.monotonic() + TIMEOUT
            while True:
                r = await http.get(f"/v1/jobs/{job_id}", params={"wait": 5})
                assert r.status_code == 200, r.text
                job = r.json()
                if job["status"] in ("succeeded", "failed", "canceled"):
                    return job
                assert time.monotonic() < deadline, job

    return await asyncio.gather(*(wait(job_id) for job_id in job_ids))


async def _listed(http: httpx.AsyncClient) -> list[str]:
    """Every job id ``GET /v1/jobs`` lists, page by page."""
    ids: list[str] = []
    after = None
    for _ in range(1000):  # bounded paging
        params = {"limit": 500, **({"after": after} if after else {})}
        page = (await http.get("/v1/jobs", params=params)).json()
        ids += [job["id"] for job in page["data"]]
        if not page["has_more"]:
            return ids
        after = page["last_id"]
    raise AssertionError("GET /v1/jobs never ended")


async def test_200_concurrent_submissions(server: LoadServer, tmp_path: Path) -> None:
    async with _client(server) as http:
        # Warm up the paths the waves use, so the RSS baseline is not the first-use allocations.
        warm, _ = await _wave(http, "warm")
        await _wait_all(http, warm)

        # --- wave 1: the worker is held, so the queue bound decides exactly --------------------
        release = tmp_path / "release"
        r = await http.post("/v1/text/hold/wait", json={"release": str(release), "mode": "async"})
        assert r.status_code == 202, r.text
        hold_id = r.json()["job_id"]
        for _ in range(int(TIMEOUT / 0.05)):
            if (await http.get(f"/v1/jobs/{hold_id}")).json()["status"] == "running":
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the hold job never started")
        accepted, refused = await _wave(http, "one")
        assert len(accepted) == MAX_QUEUE and len(refused) == SUBMISSIONS - MAX_QUEUE
        health = (await http.get("/health")).json()
        assert health["queue"]["queued"] == MAX_QUEUE, health["queue"]
        release.touch()
        all_accepted = list(accepted)
        jobs = await _wait_all(http, [hold_id, *accepted])
        assert all(job["status"] == "succeeded" for job in jobs), [j for j in jobs if j["status"] != "succeeded"]
        rss_first = server.rss_mb()

        # --- waves 2-3: the worker runs freely while submissions arrive -----------------------
        for tag in ("two", "three"):
            accepted, refused = await _wave(http, tag)
            assert accepted, "no submission was accepted"
            all_accepted += accepted
            jobs = await _wait_all(http, accepted)
            failed = [job for job in jobs if job["status"] != "succeeded"]
            assert not failed, failed[:3]
            texts = {job["result"]["text"] for job in jobs}
            assert len(texts) == len(jobs)  # each job ran its own request
        rss_last = server.rss_mb()

        # --- no lost, no duplicated job ----------------------------------------------------------
        assert len(set(all_accepted)) == len(all_accepted), "a job id was handed out twice"
        listed = await _listed(http)
        assert len(set(listed)) == len(listed), "GET /v1/jobs lists a job twice"
        missing = set(all_accepted) - set(listed)
        assert not missing, f"{len(missing)} accepted jobs are not listed"
        # each accepted job has its own artifact, downloadable
        one = (await http.get(f"/v1/jobs/{all_accepted[-1]}")).json()
        assert (await http.get(f"/v1/files/{one['artifacts'][0]}/download")).content == one["result"]["text"].encode()

        # --- memory stays flat --------------------------------------------------------------------
        assert rss_last - rss_first < RSS_SLACK_MB, (rss_first, rss_last)
        assert (await http.get("/health")).status_code == 200
    print(f"RSS after wave 1: {rss_first:.1f} MiB, after wave 3: {rss_last:.1f} MiB; "
          f"{len(all_accepted)} jobs accepted")


async def test_concurrent_real_model_jobs(server: LoadServer) -> None:
    from io import BytesIO

    from PIL import Image

    body = {"prompt": "load", "width": 64, "height": 64, "steps": 1}
    async with _client(server) as http:
        async def submit(i: int) -> httpx.Response:
            mode = "sync" if i % 5 == 0 else "async"
            return await http.post("/v1/image/ernie/generate", json={**body, "seed": i, "mode": mode})

        responses = await asyncio.gather(*(submit(i) for i in range(20)))
        sync = [r for r in responses if r.status_code == 200]
        assert all(r.status_code in (200, 202) for r in responses), [(r.status_code, r.text[:200]) for r in responses]
        assert len(sync) == 4
        for r in sync:
            assert r.headers["content-type"] == "image/png"
            assert Image.open(BytesIO(r.content)).size == (64, 64)
        job_ids = [r.json()["job_id"] for r in responses if r.status_code == 202]
        job_ids += [r.headers["x-kiapi-job-id"] for r in sync]
        assert len(set(job_ids)) == 20
        jobs = await _wait_all(http, job_ids)
        assert all(job["status"] == "succeeded" for job in jobs), [(j["status"], j.get("error")) for j in jobs]
        assert sorted(job["result"]["params"]["seed"] for job in jobs) == list(range(20))
        artifacts = {job["artifacts"][0] for job in jobs}
        assert len(artifacts) == 20
        for file_id in list(artifacts)[:3]:
            png = (await http.get(f"/v1/files/{file_id}/download")).content
            assert Image.open(BytesIO(png)).size == (64, 64)
