"""Several real ``kiapi serve --demo`` hosts on one PostgreSQL database act as one endpoint."""

from __future__ import annotations

import io
import json

import httpx
import pytest
from cluster_procs import start_hosts


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
