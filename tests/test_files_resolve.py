"""resolve_inputs: every FileRef in a request becomes a stored file, or a named 4xx."""

from __future__ import annotations

import asyncio
import base64
import io
import os
from pathlib import Path

import msgspec
import pytest
from PIL import Image

from kiapi_core.errors import BadRequest, InvalidInput, PayloadTooLarge
from kiapi_core.files.fetch import AddressPolicy, URLFetcher
from kiapi_core.files.refs import FileRef
from kiapi_core.files.resolve import decode_data_url, resolve_inputs
from kiapi_core.files.store import FileStore
from kiapi_core.settings import Settings


class Lora(msgspec.Struct, kw_only=True):
    file: FileRef
    scale: float = 1.0


class Req(msgspec.Struct, kw_only=True):
    prompt: str = "p"
    image: FileRef | None = None
    loras: list[Lora] = []
    extra: FileRef | None = None


INPUTS = {"image": "image", "loras[].file": "file"}


def png(size: tuple[int, int] = (8, 8), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


def data_url(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def req(**fields) -> Req:
    return msgspec.convert(fields, Req)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=str(tmp_path), max_data_url_mb=1)


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "files")


async def resolve(request: Req, store: FileStore, settings: Settings, **kw):
    return await resolve_inputs(request, INPUTS, store=store, settings=settings, **kw)


def stored_ids(store: FileStore) -> list[str]:
    assert os.listdir(store.root / ".partial") == []
    return [r.file_id for r in store.list()]


async def test_file_id_ref(store, settings) -> None:
    up = store.put_bytes(png(), filename="mine.png", content_type="image/png")
    out = await resolve(req(image={"type": "file_id", "file_id": up.file_id}), store, settings)
    assert out.files["image"].file_id == up.file_id and out.summary == {"image": up.file_id}
    assert out.created == []


async def test_data_url_ref_is_materialised_without_its_text(store, settings) -> None:
    url = data_url(png())
    out = await resolve(req(image={"type": "data_url", "data_url": url}), store, settings)
    f = out.files["image"]
    assert f.filename == "input-image.png" and f.content_type == "image/png"
    assert f.record.meta == {"source": "data_url", "field": "image", "kind": "image"}
    assert out.created == [f.file_id] and f.path.read_bytes() == png()


async def test_lists_and_undeclared_refs_are_found(store, settings) -> None:
    lora = data_url(b"safetensors bytes", "application/octet-stream")
    out = await resolve(req(loras=[{"file": {"type": "data_url", "data_url": lora}, "scale": 0.5}],
                            extra={"type": "data_url", "data_url": data_url(b"hello", "text/plain")}),
                        store, settings)
    assert set(out.files) == {"loras[0].file", "extra"}
    assert out.files["loras[0].file"].filename == "input-loras-0-file.bin"
    assert out.files["extra"].record.meta["kind"] == "file"  # undeclared: not probed as an image


@pytest.mark.parametrize("file_id,code", [("file_" + "0" * 32, "unknown_file_id"),
                                          ("../../etc/passwd", "invalid_file_id"),
                                          ("file_0123456789abcdef", "invalid_file_id")])
async def test_bad_file_ids_are_400_naming_the_field(store, settings, file_id: str, code: str) -> None:
    with pytest.raises(BadRequest) as info:
        await resolve(req(loras=[{"file": {"type": "file_id", "file_id": file_id}}]), store, settings)
    assert info.value.status == 400 and info.value.code == code
    assert info.value.extra["field"] == "loras[0].file" and "`loras[0].file`" in info.value.detail


@pytest.mark.parametrize("bad", ["data:image/png;base64,iVBOR w0KGgo=", "data:image/png;base64,abc",
                                 "data:image/png;base64,####", "data:image/png;base64,",
                                 "image/png;base64,AAAA", "data:image/png;base64AAAA"])
def test_data_url_strict(bad: str) -> None:
    with pytest.raises(BadRequest) as info:
        decode_data_url(bad, max_bytes=1000)
    assert info.value.code == "invalid_data_url"


def test_data_url_forms_and_cap() -> None:
    assert decode_data_url("data:,hello%20world", max_bytes=100) == ("text/plain", b"hello world")
    assert decode_data_url("DATA:image/png;base64,AAAA", max_bytes=3) == ("image/png", b"\0\0\0")
    with pytest.raises(PayloadTooLarge) as info:
        decode_data_url(data_url(b"x" * 4000), max_bytes=1000)
    assert info.value.status == 413 and "KIAPI_MAX_DATA_URL_MB" in info.value.detail
    with pytest.raises(PayloadTooLarge):
        decode_data_url("data:," + "x" * 1001, max_bytes=1000)


async def test_oversize_data_url_stores_nothing(store, settings) -> None:
    big = data_url(b"x" * (1024 * 1024 + 1), "application/octet-stream")
    with pytest.raises(PayloadTooLarge):
        await resolve(req(extra={"type": "data_url", "data_url": big}), store, settings)
    assert stored_ids(store) == []


def truncated_png() -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buf, format="PNG")
    return buf.getvalue()[:-200]


def bomb_png() -> bytes:
    return png((10_001, 10_000), mode="1")  # 100 M pixels in a few KiB


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("payload,match", [
    (b"GIF89a but not really", "not a readable image"),
    (b"<html>not an image</html>", "not a readable image"),
    (truncated_png(), "could not be decoded"),
    (bomb_png(), "over the limit"),
])
async def test_image_inputs_are_probed_and_rejects_leave_nothing(store, settings, payload, match) -> None:
    assert len(payload) < 1024 * 1024
    with pytest.raises(InvalidInput, match=match) as info:
        await resolve(req(image={"type": "data_url", "data_url": data_url(payload)}), store, settings)
    assert info.value.extra["field"] == "image" and "`image`" in info.value.detail
    assert stored_ids(store) == []


async def test_rejected_file_id_input_keeps_the_users_file(store, settings) -> None:
    mine = store.put_bytes(b"just text", filename="notes.txt")
    with pytest.raises(InvalidInput):
        await resolve(req(image={"type": "file_id", "file_id": mine.file_id}), store, settings)
    assert stored_ids(store) == [mine.file_id]


async def test_failure_removes_earlier_materialised_inputs(store, settings) -> None:
    with pytest.raises(BadRequest, match="no file"):
        await resolve(req(image={"type": "data_url", "data_url": data_url(png())},
                          loras=[{"file": {"type": "file_id", "file_id": "file_" + "0" * 32}}]),
                      store, settings)
    assert stored_ids(store) == []


async def _serve_png(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    body = png()
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: %d\r\n"
                 b"Connection: close\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    writer.close()


async def test_url_refs(store, settings) -> None:
    srv = await asyncio.start_server(_serve_png, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}/in.png?token=SECRET"
    try:
        with pytest.raises(BadRequest) as info:  # default settings: loopback refused
            await resolve(req(image={"type": "url", "url": url}), store, settings)
        assert info.value.code == "url_forbidden_address" and stored_ids(store) == []
        fetcher = URLFetcher(policy=AddressPolicy(allow_private=True))
        out = await resolve(req(image={"type": "url", "url": url}), store, settings, fetcher=fetcher)
        f = out.files["image"]
        assert f.filename == "input-image.png" and f.record.meta["source"] == "url"
        assert "SECRET" not in msgspec.json.encode(f.record).decode()
    finally:
        srv.close()
