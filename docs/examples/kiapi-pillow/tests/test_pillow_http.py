"""End to end through HTTP with kiapi-core's fixtures: upload, resize, convert, jobs."""

import io

from PIL import Image


def _png(size=(64, 32), mode="RGB", color="red") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, "PNG")
    return buffer.getvalue()


def _ref(file_id: str) -> dict:
    return {"type": "file_id", "file_id": file_id}


async def test_resize_returns_the_image_bytes(kiapi_client_factory):
    async with kiapi_client_factory(plugins=["kiapi_pillow"]) as client:
        file_id = await client.upload(_png(), "in.png", "image/png")
        response = await client.post("/v1/image/pillow/resize", json={"image": _ref(file_id), "width": 32})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(response.content)).size == (32, 16)


async def test_resize_as_an_async_job_reports_its_result(kiapi_client_factory):
    async with kiapi_client_factory(plugins=["kiapi_pillow"]) as client:
        file_id = await client.upload(_png(), "in.png", "image/png")
        response = await client.post("/v1/image/pillow/resize", json={
            "image": _ref(file_id), "scale": 2, "model": "pixel-art", "format": "jpeg", "mode": "async"})
        assert response.status_code == 202, response.text
        job = await client.wait_job(response.json()["job_id"])
        assert job["status"] == "succeeded" and job["type"] == "pillow-resize"
        result = job["result"]
        assert (result["width"], result["height"], result["format"], result["filter"]) == (128, 64, "jpeg", "nearest")
        assert job["artifacts"] == [result["file_id"]]
        stored = await client.get(f"/v1/files/{result['file_id']}/download")
        assert stored.headers["content-type"] == "image/jpeg"


async def test_contain_keeps_the_aspect_ratio_and_stretch_does_not(kiapi_client_factory):
    async with kiapi_client_factory(plugins=["kiapi_pillow"]) as client:
        file_id = await client.upload(_png((100, 50)), "in.png", "image/png")
        for fit, size in (("contain", (40, 20)), ("stretch", (40, 40))):
            response = await client.post("/v1/image/pillow/resize", json={
                "image": _ref(file_id), "width": 40, "height": 40, "fit": fit},
                headers={"accept": "application/json"})
            assert (response.json()["result"]["width"], response.json()["result"]["height"]) == size


async def test_invalid_requests_are_refused_before_queueing(kiapi_client_factory):
    async with kiapi_client_factory(plugins=["kiapi_pillow"]) as client:
        file_id = await client.upload(_png(), "in.png", "image/png")
        both = await client.post("/v1/image/pillow/resize", json={"image": _ref(file_id), "width": 4, "scale": 2})
        assert both.status_code == 422 and both.json()["field"] == "scale"
        unknown = await client.post("/v1/image/pillow/resize", json={"image": _ref(file_id), "width": 4,
                                                                    "model": "sinc"})
        assert unknown.status_code == 400 and "lanczos" in unknown.json()["detail"]
        not_image = await client.upload(b"hello", "a.txt", "text/plain")
        bad = await client.post("/v1/image/pillow/convert", json={"image": _ref(not_image), "format": "png"})
        assert bad.status_code == 400


async def test_convert_flattens_transparency_for_jpeg(kiapi_client_factory):
    async with kiapi_client_factory(plugins=["kiapi_pillow"]) as client:
        file_id = await client.upload(_png((8, 8), "RGBA", (0, 0, 0, 0)), "in.png", "image/png")
        response = await client.post("/v1/image/pillow/convert", json={
            "image": _ref(file_id), "format": "jpeg", "background": "#00ff00"})
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
        image = Image.open(io.BytesIO(response.content))
        assert image.size == (8, 8) and image.getpixel((4, 4))[1] > 200  # green, not black


async def test_openapi_document_carries_the_operations(kiapi_client_factory):
    async with kiapi_client_factory(plugins=["kiapi_pillow"]) as client:
        document = (await client.get("/v1/image/pillow/openapi.json")).json()
        assert set(document["paths"]) == {"/v1/image/pillow/resize", "/v1/image/pillow/convert",
                                          "/v1/image/pillow/models"}
        assert "PillowResizeRequest" in document["components"]["schemas"]
