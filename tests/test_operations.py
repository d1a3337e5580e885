"""A capability operation through HTTP: decoding, validation, sync/async, negotiation, errors."""

import base64
import io

import pytest

import kiapi_echo


@pytest.fixture
async def client(kiapi_client_factory):
    async with kiapi_client_factory(plugins=[kiapi_echo], demo=False) as http:
        yield http


def _png_data_url(size=(8, 8)) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


async def test_sync_returns_raw_bytes_with_both_headers(client):
    r = await client.post("/v1/text/echo/render", json={"text": "hi", "repeat": 2})
    assert r.status_code == 200, r.text
    assert r.content == b"hihi" and r.headers["content-type"].startswith("text/plain")
    file_id, job_id = r.headers["x-kiapi-file-id"], r.headers["x-kiapi-job-id"]
    assert (await client.get(f"/v1/files/{file_id}/download")).content == b"hihi"
    job = (await client.get(f"/v1/jobs/{job_id}")).json()
    assert job["status"] == "succeeded" and job["artifacts"] == [file_id]


async def test_accept_json_returns_the_job(client):
    r = await client.post("/v1/text/echo/render", json={"text": "hi"}, headers={"Accept": "application/json"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    job = r.json()
    assert job["status"] == "succeeded" and job["progress"] == 1.0 and job["progress_label"] == "done"
    assert job["type"] == "echo" and job["result"]["text"] == "hi"
    assert job["params"] == {"text": "hi", "model": "small"}
    assert job["result"]["file_id"] == job["artifacts"][0]


async def test_async_answers_202_with_location(client):
    r = await client.post("/v1/text/echo/render", json={"text": "later", "mode": "async"})
    assert r.status_code == 202
    body = r.json()
    assert set(body) == {"job_id", "type", "status"} and body["type"] == "echo"
    assert r.headers["location"] == f"/v1/jobs/{body['job_id']}"
    job = await client.wait_job(body["job_id"])
    assert job["status"] == "succeeded" and job["progress"] == 1.0


async def test_always_async_operation_ignores_sync_mode(client):
    r = await client.post("/v1/text/echo/batch", json={"steps": 1, "mode": "sync"})
    assert r.status_code == 202
    assert (await client.wait_job(r.json()["job_id"]))["status"] == "succeeded"


async def test_several_artifacts_answer_with_json(client):
    r = await client.post("/v1/text/echo/pair", json={})
    assert r.status_code == 200 and len(r.json()["artifacts"]) == 2


async def test_nothing_acceptable_is_406_before_any_job(client):
    """#15 case 14: an Accept nothing the operation produces satisfies is refused before queueing."""
    r = await client.post("/v1/text/echo/render", json={"text": "x"}, headers={"Accept": "text/html"})
    assert r.status_code == 406 and r.json()["code"] == "not_acceptable"
    assert "job_id" not in r.json() and "application/json" in r.json()["detail"]
    assert (await client.get("/v1/jobs")).json()["data"] == []


async def test_unacceptable_result_found_late_is_406_naming_the_job(client):
    r = await client.post("/v1/text/echo/pair", json={}, headers={"Accept": "image/png"})
    assert r.status_code == 406
    assert r.json()["job_id"] == r.headers["x-kiapi-job-id"] and r.json()["code"] == "not_acceptable"


async def test_unknown_model_is_400_listing_valid_names(client):
    r = await client.post("/v1/text/echo/render", json={"text": "x", "model": "huge"})
    assert r.status_code == 400 and r.json()["code"] == "unknown_model"
    assert "small, large" in r.json()["detail"] and r.json()["valid"] == ["small", "large"]


async def test_model_alias_any_case(client):
    r = await client.post("/v1/text/echo/render", json={"text": "x", "model": "ECHO-large"},
                          headers={"Accept": "application/json"})
    assert r.json()["params"]["model"] == "large" and r.json()["model"] == "large"


@pytest.mark.parametrize(
    ("body", "field"),
    [({"text": "x", "repeat": 0}, "repeat"), ({"repeat": 1}, "text"), ({"text": 5}, "text"),
     ({"text": "x", "image": {"type": "file_id"}}, "image.file_id"), ({"text": "x", "mode": "later"}, "mode")],
)
async def test_schema_errors_are_422_naming_the_field(client, body, field):
    r = await client.post("/v1/text/echo/render", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "invalid_request" and r.json()["field"] == field, r.json()
    assert r.json()["detail"]


async def test_prepare_errors_are_422(client):
    r = await client.post("/v1/text/echo/render", json={"text": "forbidden"})
    assert r.status_code == 422 and r.json()["field"] == "text" and "choose another" in r.json()["detail"]


@pytest.mark.parametrize("content", [b"{not json", b"", b"\xff\xfe{}"])
async def test_malformed_json_is_400(client, content):
    r = await client.post("/v1/text/echo/render", content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["code"] == "malformed_json"


async def test_non_object_body_is_422(client):
    r = await client.post("/v1/text/echo/render", json=[1, 2])
    assert r.status_code == 422


async def test_wrong_content_type_is_415(client):
    r = await client.post("/v1/text/echo/render", content=b"--x--", headers={"Content-Type": "multipart/form-data"})
    assert r.status_code == 415 and "application/json" in r.json()["detail"]


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain", None])
async def test_bodies_a_foreign_page_can_send_are_415(client, content_type):
    """#15 case 3: form-encoded, text/plain and untyped bodies need no CORS preflight, so a
    web page could send them: they are not read as JSON (curl -d needs -H or --json)."""
    headers = {"Content-Type": content_type} if content_type else {}
    r = await client.post("/v1/text/echo/render", content=b'{"text": "hi"}', headers=headers)
    assert r.status_code == 415 and r.json()["code"] == "unsupported_media_type"
    assert "curl --json" in r.json()["detail"]
    assert (await client.get("/v1/jobs")).json()["data"] == []
    r = await client.post("/v1/text/echo/render", content=b'{"text": "hi"}',
                          headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 200 and r.content == b"hi"


async def test_oversized_body_is_413(kiapi_client_factory):
    async with kiapi_client_factory(plugins=[kiapi_echo], max_body_mb=0.001) as http:
        r = await http.post("/v1/text/echo/render", json={"text": "x" * 5000})
        assert r.status_code == 413 and "KIAPI_MAX_BODY_MB" in r.json()["detail"]


async def test_unknown_fields_are_accepted_but_reported(client):
    r = await client.post("/v1/text/echo/render", json={"text": "x", "colour": "red", "image": None, "stepz": 3},
                          headers={"Accept": "application/json"})
    assert r.status_code == 200
    assert "colour, stepz" in r.headers["x-kiapi-warnings"]
    assert any("colour, stepz" in w for w in r.json()["warnings"])


async def test_failed_sync_job_answers_with_its_status_and_job_id(client):
    r = await client.post("/v1/text/echo/fail", json={"how": "invalid"})
    assert r.status_code == 422 and r.json()["job_id"] == r.headers["x-kiapi-job-id"]
    assert "on purpose" in r.json()["detail"]
    r = await client.post("/v1/text/echo/fail", json={"how": "crash"})
    assert r.status_code == 500 and r.json()["job_id"] and "boom" in r.json()["detail"]
    job = (await client.get(f"/v1/jobs/{r.json()['job_id']}")).json()
    assert job["status"] == "failed" and job["error_code"] == "internal_error"


async def test_image_input_from_data_url_is_stored_and_recorded(client):
    r = await client.post("/v1/text/echo/render", json={"text": "x", "image": {"type": "data_url", "data_url": _png_data_url()}},
                          headers={"Accept": "application/json"})
    assert r.status_code == 200, r.text
    job = r.json()
    assert set(job["inputs"]) == {"image"}
    assert "data:image" not in r.text  # never echoed back
    stored = await client.get(f"/v1/files/{job['inputs']['image']}/download")
    assert stored.content[:8] == b"\x89PNG\r\n\x1a\n"


async def test_image_input_that_is_not_an_image_is_400(client):
    bogus = "data:image/png;base64," + base64.b64encode(b"not a png at all").decode()
    r = await client.post("/v1/text/echo/render", json={"text": "x", "image": {"type": "data_url", "data_url": bogus}})
    assert r.status_code == 400


async def test_unknown_file_id_is_400(client):
    r = await client.post("/v1/text/echo/render",
                          json={"text": "x", "image": {"type": "file_id", "file_id": "file_" + "0" * 32}})
    assert r.status_code == 400 and "image" in r.json()["detail"]


async def test_models_list_matches_the_catalogue_shape(client):
    r = await client.get("/v1/text/echo/models")
    assert r.json() == [
        {"name": "small", "family": "echo", "domain": "text", "aliases": ["echo-small", "Tiny"], "default": True,
         "features": ["text"], "ready": True},
        {"name": "large", "family": "echo", "domain": "text", "aliases": ["echo-large"], "default": False,
         "features": ["text"], "ready": True},
    ]


async def test_unknown_path_is_json_404(client):
    r = await client.get("/v1/nothing/here")
    assert r.status_code == 404 and r.json()["code"] == "not_found"


def test_redact_keeps_ids_and_drops_payloads_and_url_secrets():
    from kiapi_core.validation import redact

    params = {"image": {"type": "data_url", "data_url": "data:image/png;base64,AAAA"},
              "loras": [{"file": {"type": "url", "url": "https://u:p@example.com/a.safetensors?sig=secret#x"},
                         "scale": 1.0},
                        {"file": {"type": "file_id", "file_id": "file_1"}, "scale": 0.5}],
              "prompt": "a cat"}
    assert redact(params) == {
        "image": {"type": "data_url", "media_type": "image/png", "chars": 26},
        "loras": [{"file": {"type": "url", "url": "https://example.com/a.safetensors"}, "scale": 1.0},
                  {"file": {"type": "file_id", "file_id": "file_1"}, "scale": 0.5}],
        "prompt": "a cat"}


async def test_deleting_an_input_does_not_break_the_queued_job_using_it(client):
    import threading

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, format="PNG")
    file_id = await client.upload(buffer.getvalue(), "in.png", "image/png")
    gate = kiapi_echo.GATES["pin"] = threading.Event()
    try:
        blocker = await client.post("/v1/text/echo/slow", json={"steps": 1, "gate": "pin", "mode": "async"})
        queued = await client.post("/v1/text/echo/render", json={"text": "x", "mode": "async",
                                                                 "image": {"type": "file_id", "file_id": file_id}})
        assert (await client.delete(f"/v1/files/{file_id}")).status_code == 200
        assert (await client.get(f"/v1/files/{file_id}")).status_code == 404  # gone for clients at once
    finally:
        gate.set()
    await client.wait_job(blocker.json()["job_id"])
    job = await client.wait_job(queued.json()["job_id"])
    assert job["status"] == "succeeded", job
    echoed = await client.get(f"/v1/files/{job['artifacts'][0]}/download")
    with Image.open(io.BytesIO(echoed.content)) as image:  # the input's pixels, plus the job's params
        assert image.getpixel((0, 0)) == (1, 2, 3) and "kiapi" in image.text
    stored = client.host.files
    assert not list(stored.root.glob(f"{file_id}*"))  # and its bytes went once the job let go
