"""Declaration-level tests: the contract, the models, request validation and a handler run."""

import io

import msgspec
import pytest

from kiapi_core.contract import DEFAULT_HEAVY, assert_plugin_contract


def _png(size=(64, 32)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, "red").save(buffer, "PNG")
    return buffer.getvalue()


def test_plugin_keeps_the_kiapi_contract():
    # Pillow is fine in handlers, but importing the plugin must not even import PIL.
    assert_plugin_contract("kiapi_pillow", heavy=(*DEFAULT_HEAVY, "PIL"))


def test_filters_are_the_models_and_lanczos_is_the_default(kiapi_host_factory):
    host = kiapi_host_factory(plugins=["kiapi_pillow"])
    assert [m.name for m in host.registry.get("pillow").models] == [
        "lanczos", "bicubic", "bilinear", "hamming", "box", "nearest"]
    assert host.registry.resolve_model("pillow", None).name == "lanczos"
    assert host.registry.resolve_model("pillow", "Pixel-Art").name == "nearest"


@pytest.mark.parametrize("body, field", [
    ({}, "scale"),                                        # no size at all
    ({"width": 10, "scale": 2.0}, "scale"),               # both
    ({"width": 10, "fit": "stretch"}, "fit"),             # stretch needs both sides
])
def test_prepare_rejects_impossible_sizes(kiapi_host_factory, body, field):
    from kiapi_core.sdk import InvalidRequest, RequestContext
    from kiapi_pillow.capability import prepare_resize
    from kiapi_pillow.schemas import PillowResizeRequest

    host = kiapi_host_factory(plugins=["kiapi_pillow"])
    request = msgspec.convert({"image": {"type": "file_id", "file_id": "file_x"}, **body}, PillowResizeRequest)
    ctx = RequestContext(capability="pillow", model=host.registry.resolve_model("pillow", None))
    with pytest.raises(InvalidRequest) as info:
        prepare_resize(request, ctx)
    assert info.value.extra["field"] == field


def test_estimate_is_exact_for_a_box_and_bounded_otherwise():
    from kiapi_pillow.capability import BYTES_PER_PIXEL, estimate
    from kiapi_pillow.schemas import PillowConvertParams

    ctx = None  # estimate reads only the params
    box = PillowConvertParams(format="png", quality=90, background="#ffffff", max_output_pixels=10**8,
                              width=1024, height=1024)
    assert estimate(box, ctx) == pytest.approx(1024 * 1024 * BYTES_PER_PIXEL / 2**30)
    unbounded = PillowConvertParams(format="png", quality=90, background="#ffffff", max_output_pixels=2**20)
    assert estimate(unbounded, ctx) == pytest.approx(2**20 * BYTES_PER_PIXEL / 2**30)


def test_resize_handler_reports_progress_and_stops_when_canceled(kiapi_harness_factory):
    from kiapi_core.testing import file_ref

    harness = kiapi_harness_factory(plugins=["kiapi_pillow"])
    image = harness.store(_png((8, 8)), "in.png", "image/png")
    run = harness.run("resize", {"image": file_ref(image), "width": 4})
    assert run.succeeded and run.result["width"] == 4 and run.artifacts[0].content_type == "image/png"
    assert run.labels == ["loading", "decoding", "resizing", "encoding", "saving"]
    # a cancel requested while decoding is honoured before the resize (the model stays loaded)
    canceled = harness.run("resize", {"image": file_ref(image), "width": 4}, cancel_on="decoding")
    assert canceled.canceled and canceled.labels == ["decoding"] and canceled.artifacts == []
