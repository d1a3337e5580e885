"""Dataset ZIP rules: checked before queueing (400 listing every problem), extracted safely."""

from __future__ import annotations

import stat
import zipfile

import pytest

from kiapi_core.errors import InvalidInput
from kiapi_ernie import dataset

LIMITS = dataset.Limits()


def _write(tmp_path, entries, name="ds.zip", compression=zipfile.ZIP_DEFLATED):
    path = tmp_path / name
    with zipfile.ZipFile(path, "w", compression) as archive:
        for entry, data in entries.items():
            archive.writestr(entry, data)
    return path


def _problems(path, limits=LIMITS) -> list[str]:
    with pytest.raises(InvalidInput) as info:
        dataset.inspect(path, limits)
    assert info.value.status == 400
    return info.value.extra["problems"]


@pytest.fixture
def png(ernie_helpers):
    return ernie_helpers.png((32, 32))


def test_top_level_and_single_folder_layouts(tmp_path, png):
    top = dataset.inspect(_write(tmp_path, {"a.png": png, "a.txt": "an apple", "b.JPG": png, "b.txt": "b",
                                            "preview.png": png, "notes.md": "ignored"}), LIMITS)
    assert top.num_images == 2 and top.previews == ["preview.png"] and top.folder == ""
    nested = dataset.inspect(_write(tmp_path, {"cats/": b"", "cats/a.webp": png, "cats/a.txt": "cat",
                                               "__MACOSX/cats/._a.webp": b"junk", "cats/.DS_Store": b"x"},
                                    "n.zip"), LIMITS)
    assert nested.num_images == 1 and nested.folder == "cats"


def test_every_problem_is_listed(tmp_path, png):
    problems = _problems(_write(tmp_path, {"a.png": png, "sub/b.png": png, "sub/b.txt": "b", "c.jpg": png,
                                           "x_out.png": png, "x_out.txt": "edit pair"}))
    text = " | ".join(problems)
    assert "one single folder" in text and "(top level)" in text and "sub/" in text
    assert "a.png (needs a.txt)" in text and "c.jpg (needs c.txt)" in text
    assert "_out" in text


def test_no_images_and_preview_only(tmp_path, png):
    assert any("no training images" in p for p in _problems(_write(tmp_path, {"readme.txt": "hi"})))
    only_preview = _problems(_write(tmp_path, {"preview.png": png}, "p.zip"))
    assert any("preview* images do not count" in p for p in only_preview)


def test_unsafe_entries(tmp_path, png):
    link = zipfile.ZipInfo("evil_link.png")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    device = zipfile.ZipInfo("dev.txt")
    device.create_system = 3
    device.external_attr = (stat.S_IFCHR | 0o600) << 16
    entries = {"../escape.png": png, "/abs.png": png, "a/../../b.txt": "x", link: "/etc/passwd", device: "",
               "ok.png": png, "ok.txt": "fine"}
    text = " | ".join(_problems(_write(tmp_path, entries)))
    assert "'..' path components" in text and "absolute paths" in text
    assert "symbolic links" in text and "devices, FIFOs and sockets" in text


def test_limits_entries_size_and_ratio(tmp_path, png):
    many = {f"{i}.txt": "x" for i in range(12)}
    assert "more than the limit of 10" in _problems(_write(tmp_path, many), dataset.Limits(max_entries=10))[0]
    bomb = _write(tmp_path, {"a.png": png, "a.txt": "x", "zeros.bin": b"\0" * (8 << 20)}, "bomb.zip")
    text = " | ".join(_problems(bomb))
    assert "zeros.bin" in text and "zip bomb" in text
    big = _write(tmp_path, {"a.png": png, "a.txt": "x"}, "big.zip", zipfile.ZIP_STORED)
    assert "unpacks to" in " ".join(_problems(big, dataset.Limits(max_bytes=100)))


def test_unreadable_images_and_captions(tmp_path, ernie_helpers):
    tiny = ernie_helpers.png((8, 8))
    entries = {"a.png": b"not an image", "a.txt": "x", "b.png": tiny, "b.txt": "y",
               "c.png": ernie_helpers.png((32, 32)), "c.txt": "   "}
    text = " | ".join(_problems(_write(tmp_path, entries)))
    assert "a.png is not a readable image" in text and "b.png is 8x8" in text and "c.txt is empty" in text


def test_not_a_zip(tmp_path):
    path = tmp_path / "x.zip"
    path.write_bytes(b"PK but not really")
    with pytest.raises(InvalidInput, match="not a readable ZIP"):
        dataset.inspect(path, LIMITS)


def test_extract_flattens_only_validated_files(tmp_path, png):
    path = _write(tmp_path, {"set/a.png": png, "set/a.txt": "apple", "set/preview_1.png": png,
                             "set/extra.json": "{}"})
    plan = dataset.extract(path, tmp_path / "data", LIMITS)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["a.png", "a.txt"]
    assert plan.num_images == 1


def check_train(request, inputs, host) -> dict:
    """``prepare`` then ``check`` of ernie's train operation as ``host`` calls them (plugin API 2,
    adapted): the params the job would record."""
    operation = next(op for op in host.registry.get("ernie").operations if op.name == "train")
    params = operation.prepare(request, host.registry.resolve_model("ernie", None), host)
    operation.check(request, params, inputs, host)
    return params


def test_check_train_uses_settings(tmp_path, png, ernie_helpers, ernie_files):
    from kiapi_core.files.refs import FileIDRef
    from kiapi_ernie.schemas import TrainRequest

    stored = ernie_files(_write(tmp_path, {"a.png": png, "a.txt": "x", "b.png": png, "b.txt": "y"}).read_bytes())
    request = TrainRequest(dataset=FileIDRef(file_id=stored.file_id))
    params = check_train(request, {"dataset": stored}, ernie_helpers.host())
    assert params["dataset"] == {"type": "file_id", "file_id": stored.file_id}
    assert params["dataset_file_id"] == stored.file_id  # recorded by check, from the stored input
    with pytest.raises(InvalidInput, match="KIAPI_ERNIE_DATASET_MAX_ENTRIES"):
        check_train(request, {"dataset": stored}, ernie_helpers.host(dataset_max_entries=3))


def test_images_are_probed_by_the_core_within_the_host_pixel_limit(tmp_path, png, ernie_helpers, ernie_files):
    """Image members go through kiapi_core.images.probe_image with KIAPI_MAX_IMAGE_PIXELS."""
    import io

    from PIL import Image

    from kiapi_core.files.refs import FileIDRef
    from kiapi_ernie.schemas import TrainRequest

    big = ernie_helpers.png((64, 64))
    noisy = io.BytesIO()
    Image.frombytes("RGB", (20, 20), bytes(range(256)) * 4 + bytes(176)).save(noisy, format="PNG")
    truncated = noisy.getvalue()[: len(noisy.getvalue()) // 2]
    gif = io.BytesIO()
    Image.new("RGB", (20, 20)).save(gif, format="GIF")
    entries = {"a.png": big, "a.txt": "x", "b.png": truncated, "b.txt": "y", "c.png": gif.getvalue(), "c.txt": "z"}
    stored = ernie_files(_write(tmp_path, entries).read_bytes())
    request = TrainRequest(dataset=FileIDRef(file_id=stored.file_id))
    with pytest.raises(InvalidInput) as info:
        check_train(request, {"dataset": stored}, ernie_helpers.host(max_image_pixels=1000))
    text = " | ".join(info.value.extra["problems"])
    assert "a.png is 64x64 = 4096 pixels, over the limit of 1000 (KIAPI_MAX_IMAGE_PIXELS)" in text
    assert "b.png could not be decoded" in text
    assert "c.png is a GIF image; send PNG, JPEG or WebP" in text
    ok = ernie_files(_write(tmp_path, {"a.png": big, "a.txt": "x"}, "ok.zip").read_bytes())
    check_train(request, {"dataset": ok}, ernie_helpers.host(max_image_pixels=4096))


def test_extract_does_not_decode_images_again(tmp_path, png, monkeypatch):
    """check_train decoded them before queueing; extraction on the model thread re-checks structure."""
    calls = []
    monkeypatch.setattr(dataset, "probe_image", lambda *a, **k: calls.append(a) or (64, 64, "PNG"))
    path = _write(tmp_path, {"a.png": png, "a.txt": "apple"})
    dataset.extract(path, tmp_path / "data", LIMITS)
    assert calls == []
    dataset.inspect(path, LIMITS)
    assert len(calls) == 1


def test_what_would_fail_after_queueing_is_refused_before(tmp_path, ernie_helpers):
    """Hidden names (extract refuses them) and images mflux would scale below 16 px at this
    max_resolution: listed before queueing, not a failed job later."""
    entries = {".a.png": ernie_helpers.png((32, 32)), ".a.txt": "x",
               "long.png": ernie_helpers.png((1200, 40)), "long.txt": "y", "ok.png": ernie_helpers.png((64, 64)),
               "ok.txt": "z"}
    path = _write(tmp_path, entries)
    with pytest.raises(InvalidInput) as info:
        dataset.inspect(path, LIMITS, max_resolution=64)
    text = info.value.detail
    assert "hidden file names" in text and ".a.png" in text
    entries.pop(".a.png"), entries.pop(".a.txt")
    with pytest.raises(InvalidInput, match=r"long.png is 1200x40: scaled to max_resolution 64 .* becomes 350x11"):
        dataset.inspect(_write(tmp_path, entries, name="b.zip"), LIMITS, max_resolution=64)
    dataset.inspect(_write(tmp_path, entries, name="c.zip"), LIMITS, max_resolution=512)  # 1200x40 fits at 512
    assert dataset.trained_size(1200, 40, 512) == (1200, 32) and dataset.trained_size(1200, 40, 64) == (336, 0)
