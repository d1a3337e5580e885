"""prepare/check rules: every rejected form gets 422 naming the accepted forms."""

from __future__ import annotations

import msgspec
import pytest

from kiapi_core.errors import InvalidRequest
from kiapi_seedvr2.settings import Seedvr2Settings
from kiapi_seedvr2.validation import output_size, parse_resolution

SETTINGS = Seedvr2Settings()


@pytest.mark.parametrize(("value", "expected"), [
    ("2x", "2x"), ("2X", "2x"), (" 1.5x ", "1.5x"), ("1.50X", "1.5x"), ("4x", "4x"), ("4.0x", "4x"),
    (".5x", "0.5x"), ("2 x", "2x"), (768, 768), ("768", 768), (" 16 ", 16), (16, 16), (2048, 2048),
])
def test_accepted_resolution_forms(value, expected):
    assert parse_resolution(value, SETTINGS) == expected


@pytest.mark.parametrize("value", ["5x", "4.01x", "0x", "0.0x", 4096, 8, "8", "big", "2", "x", "-2x", "2xx",
                                   "1e1x", "", 2049, 15, True, 1.5, None])
def test_rejected_resolution_forms(value):
    with pytest.raises(InvalidRequest) as err:
        parse_resolution(value, SETTINGS)
    assert err.value.status == 422
    assert "16..2048" in err.value.detail and '"2x"' in err.value.detail


@pytest.mark.parametrize(("body", "field"), [
    ({"resolution": "5x"}, "resolution"), ({"resolution": 4096}, "resolution"), ({"resolution": 8}, "resolution"),
    ({"resolution": "big"}, "resolution"), ({"softness": 1.5}, "softness"), ({"softness": -0.1}, "softness"),
    ({"quantize": 7}, "quantize"), ({"quantize": 0}, "quantize"), ({"quantize": True}, "quantize"),
    ({"seed": -1}, "seed"), ({"seed": 2**64}, "seed"), ({"quality": 0}, "quality"), ({"format": "gif"}, "format"),
])
def test_prepare_rejects_with_422(seedvr2_host, body, field):
    from kiapi_seedvr2.schemas import UpscaleRequest

    model = seedvr2_host.registry.resolve_model("seedvr2", None)
    request = UpscaleRequest(image={"type": "file_id", "file_id": "file_1"}, **body)  # bypasses schema bounds
    with pytest.raises(InvalidRequest) as err:
        seedvr2_host.registry.get("seedvr2").operations[0].prepare(request, model, seedvr2_host)
    assert err.value.status == 422 and err.value.extra["field"] == field


def test_quantize_message_names_the_levels(seedvr2):
    with pytest.raises(InvalidRequest, match=r"3, 4, 5, 6, 8"):
        seedvr2.prepare({"quantize": 7}, seedvr2.image(16, 16))


def test_prepare_resolves_defaults_and_draws_a_seed(seedvr2):
    image = seedvr2.image(16, 16)
    a = seedvr2.prepare({}, image).params
    b = seedvr2.prepare({}, image).params
    assert {k: a[k] for k in ("model", "resolution", "softness", "quantize", "format", "quality")} == {
        "model": "3b", "resolution": "2x", "softness": 0.0, "quantize": 8, "format": "png", "quality": 90}
    assert isinstance(a["seed"], int) and 0 <= a["seed"] < 2**32 and a["seed"] != b["seed"]
    assert (a["input_width"], a["input_height"], a["width"], a["height"]) == (16, 16, 32, 32)


def test_schema_decoding_rejects_out_of_range_softness():
    import msgspec

    from kiapi_seedvr2.schemas import UpscaleRequest

    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"image":{"type":"file_id","file_id":"f"},"softness":1.5}', type=UpscaleRequest)


@pytest.mark.parametrize(("size", "resolution", "expected"), [
    ((16, 16), "2x", (32, 32)), ((32, 24), "1x", (20, 16)), ((32, 24), 64, (84, 64)), ((24, 16), 32, (48, 32)),
    ((100, 37), "1.5x", (128, 48)), ((37, 100), 33, (32, 88)), ((33, 17), "3x", (92, 48)),
])
def test_output_size_known_cases(size, resolution, expected):
    assert output_size(*size, resolution) == expected


def test_output_size_matches_mflux_preprocessing(tmp_path):
    """Our arithmetic against mflux's own SeedVR2Util.preprocess_image, over a grid."""
    from mflux.models.seedvr2.variants.upscale.seedvr2_util import SeedVR2Util
    from mflux.utils.scale_factor import ScaleFactor
    from PIL import Image

    for w, h in [(16, 16), (17, 31), (32, 24), (7, 50), (45, 29), (64, 9), (13, 13)]:
        path = tmp_path / f"{w}x{h}.png"
        Image.new("RGB", (w, h)).save(path)
        for resolution in ["1x", "1.5x", "2x", "2.3x", "3x", "4x", 16, 33, 97, 130]:
            ours = output_size(w, h, resolution)
            if min(ours) < 16:
                continue  # rejected before mflux sees it
            target = ScaleFactor.parse(resolution) if isinstance(resolution, str) else resolution
            _, true_h, true_w = SeedVR2Util.preprocess_image(path, target, 0.0)
            assert ours == (true_w, true_h), (w, h, resolution)


def test_check_rejects_outputs_over_the_pixel_cap(seedvr2_with):
    capped = seedvr2_with(max_output_pixels=40 * 40)
    with pytest.raises(InvalidRequest) as err:
        capped.prepare({"resolution": "4x"}, capped.image(16, 16))
    assert "64x64" in err.value.detail and "KIAPI_SEEDVR2_MAX_OUTPUT_PIXELS" in err.value.detail
    assert "1600" in err.value.detail
    params = capped.prepare({"resolution": "2x"}, capped.image(16, 16)).params
    assert params["width"] * params["height"] <= 1600


def test_no_fixed_output_cap_by_default_memory_decides():
    """1080p -> 4K (8.3 MP) passes validation; admission sizes it against the budget."""
    from kiapi_seedvr2.schemas import UpscaleParams
    from kiapi_seedvr2.validation import size_output

    params = UpscaleParams(model="3b", resolution="2x", softness=0.0, seed=1, quantize=8, format="png", quality=90,
                           image={"type": "file_id", "file_id": "f"})
    sized = size_output(params, 1920, 1080, SETTINGS)
    assert (sized.width, sized.height) == (3840, 2160) and params.width is None  # new params, not mutated
    size_output(msgspec.structs.replace(params, resolution=2048), 2100, 1000, SETTINGS)


def test_check_rejects_a_scale_that_floors_to_nothing(seedvr2):
    with pytest.raises(InvalidRequest, match="at least 16"):
        seedvr2.prepare({"resolution": "0.5x"}, seedvr2.image(16, 16))


def test_check_uses_the_exif_orientation(seedvr2):
    image = seedvr2.image(24, 16, exif_orientation=6)  # rotated 90 degrees: displays 16x24
    params = seedvr2.prepare({"resolution": "2x"}, image).params
    assert (params["input_width"], params["input_height"], params["width"], params["height"]) == (16, 24, 32, 48)
    from mflux.utils.exif_orientation import oriented_size
    assert oriented_size(image.path) == (16, 24)
