"""The plugin SDK (``kiapi_core.sdk``): plugin API version 2 next to version 1, its exports,
and the rule that the plugins in this repository import nothing else of kiapi_core."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Literal

import msgspec
import pytest

import kiapi_echo
from kiapi_core import sdk
from kiapi_core.errors import PluginError
from kiapi_core.testing import build_test_host

ROOT = Path(__file__).parents[1]
#: The plugin packages of this repository: each may import only kiapi_core.sdk.
PLUGIN_PACKAGES = {
    "kiapi_pillow": ROOT / "docs" / "examples" / "kiapi-pillow" / "kiapi_pillow",
    "kiapi_ernie": ROOT / "plugins" / "ernie" / "kiapi_ernie",
    "kiapi_seedvr2": ROOT / "plugins" / "seedvr2" / "kiapi_seedvr2",
}


class Knobs(msgspec.Struct, kw_only=True, frozen=True):
    factor: int = 2


class ScaleRequest(msgspec.Struct, kw_only=True):
    value: int
    image: sdk.FileRef | None = None
    model: str | None = None
    mode: Literal["sync", "async"] = "sync"


class ScaleParams(msgspec.Struct, kw_only=True, frozen=True):
    value: int
    factor: int
    model: str
    image_file_id: str | None = None
    checked: bool = False


class ScaleResult(msgspec.Struct, kw_only=True):
    product: int
    params_type: str
    image_file_id: str | None


SEEN: dict[str, object] = {}


def prepare(request: ScaleRequest, ctx: sdk.RequestContext) -> ScaleParams:
    SEEN["prepare"] = ctx
    if request.value < 0:
        raise sdk.InvalidRequest("value: must be 0 or more", field="value")
    return ScaleParams(value=request.value, factor=ctx.settings.factor, model=ctx.model.name)


def check(request: ScaleRequest, params: ScaleParams, ctx: sdk.RequestContext) -> ScaleParams:
    SEEN["check"] = params
    return msgspec.structs.replace(params, checked=True, image_file_id=ctx.file_ids.get("image"))


def estimate(params: ScaleParams, ctx: sdk.RequestContext) -> float:
    SEEN["estimate"] = (params, ctx.demo, ctx.limits.max_image_pixels)
    return 0.001


def handle(job: sdk.JobContext) -> ScaleResult:
    p: ScaleParams = job.params
    return ScaleResult(product=p.value * p.factor, params_type=type(p).__name__, image_file_id=p.image_file_id)


class ScalePlugin:
    @sdk.hookimpl
    def register_capabilities(self, register):
        register(sdk.Capability(
            name="scale", domain="text", title="Scale", settings=Knobs,
            models=(sdk.Model(name="m", default=True),),
            operations=(sdk.Operation(name="run", request=ScaleRequest, result=ScaleResult, handler=handle,
                                      job_type="scale", prepare=prepare, check=check, estimate=estimate,
                                      params=ScaleParams, inputs={"image": "file"}),)))


async def test_version_2_and_version_1_plugins_serve_side_by_side(kiapi_client_factory):
    async with kiapi_client_factory(plugins=[ScalePlugin(), kiapi_echo],
                                    plugin_settings={"scale": {"factor": 3}}) as http:
        upload = await http.upload(b"x", "x.bin")
        ran = await http.post("/v1/text/scale/run", json={"value": 7, "image": {"type": "file_id",
                                                                                "file_id": upload}})
        assert ran.status_code == 200, ran.text
        assert ran.json()["result"] == {"product": 21, "params_type": "ScaleParams", "image_file_id": upload}
        # The record keeps the params check returned, as JSON another host could run.
        assert ran.json()["params"] == {"value": 7, "factor": 3, "model": "m", "image_file_id": upload,
                                        "checked": True}
        bad = await http.post("/v1/text/scale/run", json={"value": -1})
        assert bad.status_code == 422 and bad.json()["field"] == "value"
        # The version-1 echo plugin (kiapi_core imports, prepare(request, model, host)) still works.
        echo = await http.post("/v1/text/echo/render", json={"text": "v1"})
        assert echo.status_code == 200 and echo.content == b"v1"
    ctx = SEEN["prepare"]
    assert isinstance(ctx, sdk.RequestContext) and ctx.settings == Knobs(factor=3) and ctx.demo is True
    assert isinstance(SEEN["check"], ScaleParams) and SEEN["check"].checked is False  # got, not mutated
    params, demo, pixels = SEEN["estimate"]
    assert isinstance(params, ScaleParams) and params.checked and demo is True and pixels > 0


def test_plugin_api_version_is_2_and_unknown_versions_are_refused(tmp_path):
    assert sdk.PLUGIN_API_VERSION == 2 and sdk.SUPPORTED_PLUGIN_APIS == (1, 2)
    assert sdk.Capability(name="a", domain="b", title="t").plugin_api == 2
    from kiapi_core import Capability as V1Capability

    assert V1Capability(name="a", domain="b", title="t").plugin_api == 1

    class Future:
        @sdk.hookimpl
        def register_capabilities(self, register):
            register(sdk.Capability(name="future", domain="text", title="F", plugin_api=3,
                                    models=(sdk.Model(name="m"),)))

    with pytest.raises(PluginError, match="plugin API 3"):
        build_test_host(tmp_path, plugins=[Future()])
    host = build_test_host(tmp_path, plugins=[Future(), kiapi_echo], strict_plugins=False)
    assert [c.name for c in host.registry] == ["echo"]


def test_sdk_exports_what_all_lists():
    assert sorted(sdk.__all__) == sorted(set(sdk.__all__))
    for name in sdk.__all__:
        assert getattr(sdk, name) is not None, name
    assert sdk.error_classes()["invalid_request"] is sdk.InvalidRequest


@pytest.mark.parametrize("package", sorted(PLUGIN_PACKAGES))
def test_plugins_import_only_the_sdk(package):
    offenders = []
    for path in sorted(PLUGIN_PACKAGES[package].rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                if name.split(".")[0] == "kiapi_core" and name != "kiapi_core.sdk":
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert offenders == [], "plugins must import only kiapi_core.sdk:\n" + "\n".join(offenders)


def test_a_version_1_hook_under_a_version_2_capability_is_refused_at_registration(tmp_path):
    def prepare_v1(request, model, host):
        return {}

    class Mixed:
        @sdk.hookimpl
        def register_capabilities(self, register):
            register(sdk.Capability(name="mixed", domain="text", title="M", models=(sdk.Model(name="m"),),
                                    operations=(sdk.Operation(name="go", request=ScaleRequest, result=None,
                                                              handler=handle, job_type="m", prepare=prepare_v1),)))

    with pytest.raises(PluginError, match=r"prepare must accept \(request, ctx\), not \(request, model, host\)"):
        build_test_host(tmp_path, plugins=[Mixed()])


async def test_check_returning_new_params_keeps_what_the_core_recorded(kiapi_client_factory):
    import io

    from PIL import Image

    class Picture(ScalePlugin):
        @sdk.hookimpl
        def register_capabilities(self, register):
            register(sdk.Capability(
                name="picture", domain="image", title="Picture", settings=Knobs,
                models=(sdk.Model(name="m", default=True),),
                operations=(sdk.Operation(name="run", request=ScaleRequest, result=ScaleResult, handler=handle,
                                          job_type="picture", prepare=prepare, check=check, estimate=estimate,
                                          params=ScaleParams, inputs={"image": "image"}),)))

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, "PNG")
    async with kiapi_client_factory(plugins=[Picture()]) as http:
        upload = await http.upload(buffer.getvalue(), "in.png", "image/png")
        ran = await http.post("/v1/image/picture/run", json={"value": 1, "image": {"type": "file_id",
                                                                                   "file_id": upload}})
    assert ran.status_code == 200, ran.text
    assert ran.json()["params"]["checked"] is True and ran.json()["params"]["input_gb"] > 0
