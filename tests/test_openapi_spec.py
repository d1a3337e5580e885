"""OpenAPI generation in the core: schema conversion, the comparator, root document, docs pages.

These tests use only core types and Structs defined here, so they pass with no plugin
installed. The core schemas every capability document carries (Job, AsyncJobResponse,
CapabilityModelSpec, FileRef ...) are still checked against the binding spec files, which must
be present: a missing contract fails, it never skips.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import msgspec
import pytest
from helpers_spec import spec_document

from kiapi_core.files.models import FileRecord
from kiapi_core.files.refs import FileRef
from kiapi_core.jobs.models import AsyncJobResponse, Job
from kiapi_core.openapi import (
    STATIC_DIR,
    STATIC_PREFIX,
    SchemaBuilder,
    capability_document,
    compare_documents,
    redoc_html,
    root_document,
    static_mount,
    swagger_ui_html,
    unresolved_refs,
)
from kiapi_core.openapi.components import ASYNC_JOB_RESPONSE, CAPABILITY_MODEL_SPEC, job_schema
from kiapi_core.openapi.core_paths import CORE_PATHS
from kiapi_core.registry import Capability, Model, ModelSpec, Operation, Registry

SPEC_NAMES = ("ernie", "seedvr2")
CORE_COMPONENTS = ("AsyncJobResponse", "CapabilityModelSpec", "FileDataURLRef", "FileID", "FileIDRef",
                   "FileRef", "FileURLRef", "JobID", "JobStatus", "JobType")


# --- a capability made of test-local Structs -------------------------------------------------


class PaintRequest(msgspec.Struct, kw_only=True):
    mode: Literal["sync", "async"] = "sync"
    image: Annotated[FileRef, msgspec.Meta(description="Input.")]
    strength: Annotated[int, msgspec.Meta(ge=1)] | None = None


class Paint(msgspec.Struct, kw_only=True):
    """What a paint job returns."""

    file_id: str
    params: dict[str, Any]


class Bake(msgspec.Struct, kw_only=True):
    label: str


def _capability(**kw: Any) -> Capability:
    return Capability(
        name="paint", domain="image", title="Paint API", summary="Paints things.", description="# Paint",
        models=(Model(name="small", default=True),),
        operations=(
            Operation(name="paint", request=PaintRequest, result=Paint, handler="x:y", job_type="paint",
                      produces=("image/png",)),
            Operation(name="bake", request=Bake, result=None, handler="x:y", job_type="bake", always_async=True),
        ),
        **kw,
    )


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_core_components_match_spec(name: str) -> None:
    generated = capability_document(_capability())["components"]["schemas"]
    spec = spec_document(name)["components"]["schemas"]
    for component in CORE_COMPONENTS:
        diffs = compare_documents({component: generated[component]}, {component: spec[component]}, prose=True)
        assert diffs == [], f"{component}:\n" + "\n".join(diffs)
    job = generated["JobPaint"]
    spec_job = spec["JobImageResponse"]
    assert job["properties"]["result"] == {"anyOf": [{"$ref": "#/components/schemas/Paint"}, {"type": "null"}]}
    strip = {**job, "title": None, "properties": {**job["properties"], "result": None}}
    strip_spec = {**spec_job, "title": None, "properties": {**spec_job["properties"], "result": None}}
    assert compare_documents(strip, strip_spec, prose=True) == []


def test_capability_document_layout() -> None:
    doc = capability_document(_capability(), "9.9.9")
    assert doc["openapi"] == "3.1.0"
    assert doc["info"] == {"title": "Paint API", "description": "# Paint", "version": "0.1.0",
                           "x-kiapi-host-version": "9.9.9"}
    assert (doc["x-kiapi-capability"], doc["x-kiapi-domain"], doc["x-kiapi-root-openapi"]) == (
        "paint", "image", "/openapi.json")
    assert set(doc["paths"]) == {"/v1/image/paint/paint", "/v1/image/paint/bake", "/v1/image/paint/models"}
    paint = doc["paths"]["/v1/image/paint/paint"]["post"]
    assert paint["operationId"] == "paint_paint_endpoint_v1_image_paint_paint_post"
    assert paint["summary"] == "Paint Paint Endpoint"
    assert [p["name"] for p in paint["parameters"]] == ["Accept"]
    assert list(paint["responses"]) == ["200", "202", "400", "422", "503", "504"]
    assert set(paint["responses"]["200"]["content"]) == {"application/json", "image/png"}
    bake = doc["paths"]["/v1/image/paint/bake"]["post"]
    assert "parameters" not in bake
    assert list(bake["responses"]) == ["200", "202", "400", "422", "503"]
    assert bake["responses"]["200"]["content"]["application/json"]["schema"] == {}
    schemas = doc["components"]["schemas"]
    assert "Job" not in schemas  # the always-async op does not document a typed Job
    assert schemas["PaintRequest"]["additionalProperties"] is True
    assert schemas["Bake"]["additionalProperties"] is True
    assert "additionalProperties" not in schemas["Paint"]
    assert schemas["Paint"]["description"] == "What a paint job returns."
    assert list(schemas) == sorted(schemas)
    assert unresolved_refs(doc) == []


def test_operation_response_overrides() -> None:
    cap = _capability()
    ops = (msgspec.structs.replace(cap.operations[0], responses={400: "Bad paint.", 409: "Busy."}),)
    doc = capability_document(msgspec.structs.replace(cap, operations=ops))
    responses = doc["paths"]["/v1/image/paint/paint"]["post"]["responses"]
    assert responses["400"] == {"description": "Bad paint."}
    assert responses["409"] == {"description": "Busy."}


# --- the schema converter ---------------------------------------------------------------------


class Inner(msgspec.Struct, kw_only=True, tag="inner", tag_field="kind"):
    __openapi__: ClassVar[dict[str, Any]] = {"name": "_Inner", "examples": [{"kind": "inner"}]}
    level: Literal["b", "a", "c"] = "b"


class Outer(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # No docstring: no description in the schema.
    inner: Annotated[Inner, msgspec.Meta(description="The inner one.")]
    maybe: Annotated[float | None, msgspec.Meta(description="Optional.")] = None
    ratio: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.5
    tags: list[str] = msgspec.field(default_factory=list)
    either: int | str = 3
    free: dict[str, Any] | None = None
    counts: dict[str, int] = {}


def test_converter_emits_spec_shapes() -> None:
    builder = SchemaBuilder(open_structs=[Outer])
    assert builder.schema(Outer) == {"$ref": "#/components/schemas/Outer"}
    outer = builder.components["Outer"]
    assert "additionalProperties" not in outer  # forbid_unknown_fields wins over "open"
    assert "description" not in outer
    assert outer["required"] == ["inner"]
    props = outer["properties"]
    assert props["inner"] == {"$ref": "#/components/schemas/_Inner", "description": "The inner one."}
    assert props["maybe"] == {"anyOf": [{"type": "number"}, {"type": "null"}], "description": "Optional.",
                              "title": "Maybe"}
    assert props["ratio"] == {"type": "number", "minimum": 0.0, "exclusiveMaximum": 1.0, "title": "Ratio",
                              "default": 0.5}
    assert props["tags"] == {"items": {"type": "string"}, "type": "array", "title": "Tags"}
    assert props["either"] == {"anyOf": [{"type": "integer"}, {"type": "string"}], "title": "Either", "default": 3}
    assert props["free"] == {"anyOf": [{"additionalProperties": True, "type": "object"}, {"type": "null"}],
                             "title": "Free"}
    assert props["counts"]["additionalProperties"] == {"type": "integer"}
    inner = builder.components["_Inner"]
    assert inner["title"] == "_Inner" and inner["examples"] == [{"kind": "inner"}]
    assert inner["properties"]["kind"] == {"type": "string", "const": "inner", "title": "Kind", "default": "inner"}
    assert inner["properties"]["level"]["enum"] == ["b", "a", "c"]  # declared order, not sorted
    assert "required" not in inner


def test_converter_refuses_two_structs_with_one_name() -> None:
    first = type("Same", (msgspec.Struct,), {"__annotations__": {"a": int}})
    second = type("Same", (msgspec.Struct,), {"__annotations__": {"b": str}})
    builder = SchemaBuilder()
    builder.schema(first)
    with pytest.raises(ValueError, match="Same"):
        builder.schema(second)


def test_recursive_struct_terminates() -> None:
    builder = SchemaBuilder()
    builder.schema(Node)
    assert builder.components["Node"]["properties"]["children"]["items"] == {"$ref": "#/components/schemas/Node"}


class Node(msgspec.Struct):
    children: list[Node] = []


# --- the core templates agree with the runtime Structs ------------------------------------------


def _fields(struct: type) -> dict[str, bool]:
    return {f.name: f.required for f in msgspec.structs.fields(struct)}


def test_templates_describe_runtime_structs() -> None:
    job = job_schema("X")
    assert set(job["properties"]) <= set(_fields(Job))
    assert [n for n, req in _fields(Job).items() if req] == job["required"]
    assert _fields(ModelSpec) == {n: n in CAPABILITY_MODEL_SPEC["required"] for n in CAPABILITY_MODEL_SPEC["properties"]}
    assert _fields(AsyncJobResponse) == {n: True for n in ASYNC_JOB_RESPONSE["properties"]}


# --- the comparator ---------------------------------------------------------------------------


def test_comparator_reports_structural_differences_with_paths() -> None:
    spec = spec_document("seedvr2")
    changed = json.loads(json.dumps(spec))
    props = changed["components"]["schemas"]["UpscaleRequest"]["properties"]
    props["quality"]["maximum"] = 99
    props["softness"]["default"] = False
    del props["seed"]
    props["mode"]["description"] = "prose only"
    changed["components"]["schemas"]["UpscaleRequest"]["required"] = []
    changed["paths"]["/v1/image/seedvr2/upscale"]["post"]["responses"].pop("504")
    changed["x-kiapi-domain"] = "video"
    diffs = compare_documents(changed, spec)
    text = "\n".join(diffs)
    assert len(diffs) == 6, text
    assert '$.components.schemas.UpscaleRequest.properties.quality.maximum: expected 100.0, got 99' in text
    assert "properties.softness.default" in text and "properties.seed: missing" in text
    assert "UpscaleRequest.required: items differ" in text
    assert '$.paths["/v1/image/seedvr2/upscale"].post.responses["504"]: missing' in text
    assert '$["x-kiapi-domain"]: expected "image", got "video"' in text
    assert any("mode.description" in d for d in compare_documents(changed, spec, prose=True))


def test_comparator_normalises_order_and_numbers() -> None:
    expected = {"anyOf": [{"type": "integer", "minimum": 1.0}, {"type": "null"}], "required": ["a", "b"],
                "parameters": [{"name": "A", "in": "header"}, {"name": "q", "in": "query"}]}
    actual = {"anyOf": [{"type": "null"}, {"minimum": 1, "type": "integer"}], "required": ["b", "a"],
              "parameters": [{"name": "q", "in": "query"}, {"name": "A", "in": "header"}]}
    assert compare_documents(actual, expected) == []
    assert compare_documents({"default": 1}, {"default": True}) != []


def test_unresolved_refs_are_reported() -> None:
    doc = {"components": {"schemas": {"A": {"$ref": "#/components/schemas/B"},
                                      "U": {"oneOf": [], "discriminator": {"mapping": {"x": "#/nowhere"}}}}}}
    problems = unresolved_refs(doc)
    assert len(problems) == 2 and "#/components/schemas/B" in problems[0]


# --- the root document ------------------------------------------------------------------------


def test_root_document() -> None:
    registry = Registry()
    registry.add(_capability(), plugin="paint", distribution="kiapi-paint")
    doc = root_document(registry, version="1.2.3")
    assert doc["info"]["title"] == "kiapi" and doc["info"]["version"] == "1.2.3"
    # The core table (openapi/core_paths.py), itself checked against the served routes by
    # tests/test_core_routes.py: no third copy of the route list here.
    expected: dict[str, set[str]] = {}
    for entry in CORE_PATHS:
        expected.setdefault(entry.path, set()).add(entry.method)
    assert {p: set(item) for p, item in doc["paths"].items()} == expected
    assert {"/health", "/v1/files", "/v1/jobs", "/v1/memory", "/metrics"} <= set(expected)
    jobs_params = {p["name"] for p in doc["paths"]["/v1/jobs"]["get"]["parameters"]}
    assert jobs_params == {"status", "type", "limit", "after"}
    upload = doc["paths"]["/v1/files"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert upload["required"] == ["file"]
    assert "text/event-stream" in doc["paths"]["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]
    description = doc["info"]["description"]
    for link in ("/v1/image/paint/openapi.json", "/v1/image/paint/docs", "/v1/image/paint/redoc"):
        assert f"({link})" in description
    [entry] = doc["x-kiapi-capabilities"]
    assert entry["openapi"] == "/v1/image/paint/openapi.json" and entry["operations"] == [
        "/v1/image/paint/paint", "/v1/image/paint/bake"]
    assert doc["components"]["schemas"]["FileRecord"]["required"] == [
        n for n, req in _fields(FileRecord).items() if req]
    assert unresolved_refs(doc) == []
    operation_ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(operation_ids) == len(set(operation_ids))


def test_root_document_without_plugins() -> None:
    doc = root_document([])
    assert doc["x-kiapi-capabilities"] == [] and "No capability plugin" in doc["info"]["description"]
    assert unresolved_refs(doc) == []


# --- docs pages and assets --------------------------------------------------------------------


def test_docs_pages_use_packaged_assets_only() -> None:
    for page in (swagger_ui_html("/v1/image/x/openapi.json", "X </title>"), redoc_html("/openapi.json", "kiapi")):
        assert "cdn" not in page.lower() and "https://" not in page and "</title>" in page
        assert page.count("<title>") == 1 and "X </title> -" not in page
        for ref in page.split(f'"{STATIC_PREFIX}/')[1:]:
            assert (STATIC_DIR / ref.split('"')[0]).is_file()
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js",
                 "swagger-ui-dist.LICENSE", "redoc.LICENSE"):
        assert (STATIC_DIR / name).stat().st_size > 0
    assert sum(p.stat().st_size for p in STATIC_DIR.iterdir()) < 5_000_000
    assert not list(STATIC_DIR.glob("*.map"))


async def test_static_mount_serves_assets() -> None:
    import httpx
    from starlette.applications import Starlette

    transport = httpx.ASGITransport(app=Starlette(routes=[static_mount()]))
    async with httpx.AsyncClient(transport=transport, base_url="http://kiapi") as client:
        response = await client.get(f"{STATIC_PREFIX}/swagger-ui.css")
        assert response.status_code == 200 and "text/css" in response.headers["content-type"]
        assert (await client.get(f"{STATIC_PREFIX}/nothing.js")).status_code == 404


def test_openapi_package_imports_no_web_or_ml_stack() -> None:
    code = ("import sys, kiapi_core.openapi; "
            "print(sorted(m for m in ('starlette', 'mlx', 'mflux', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_repository_copy_of_the_contract_matches_the_shared_original():
    """spec/ is a copy of the project's shared contract (../shared/spec beside a checkout, as
    in CI); when the original is there, the copy must not have drifted from it."""
    root = Path(__file__).resolve().parents[1]
    shared = root.parent / "shared" / "spec"
    if not shared.is_dir():
        pytest.skip("no shared/spec beside this checkout to compare with")
    for name in ("ernie.openapi.json", "seedvr2.openapi.json"):
        assert (root / "spec" / name).read_bytes() == (shared / name).read_bytes(), name


# --- request examples -------------------------------------------------------------------------


def test_request_examples_are_declared_or_derived_and_decode() -> None:
    from kiapi_core.openapi.examples import SAMPLE_IMAGE

    cap = _capability()
    declared = (msgspec.structs.replace(cap.operations[0], example={"image": SAMPLE_IMAGE, "strength": 3}),
                cap.operations[1])
    doc = capability_document(msgspec.structs.replace(cap, operations=declared))
    for path, struct, expected in (("paint", PaintRequest, {"image": SAMPLE_IMAGE, "strength": 3}),
                                   ("bake", Bake, {"label": "a lighthouse on a cliff at dusk"})):
        body = doc["paths"][f"/v1/image/paint/{path}"]["post"]["requestBody"]["content"]["application/json"]
        value = body["examples"]["default"]["value"]
        assert value == expected
        msgspec.json.decode(msgspec.json.encode(value), type=struct)  # the example decodes as it stands
    derived = capability_document(cap)["paths"]["/v1/image/paint/paint"]["post"]["requestBody"]
    assert derived["content"]["application/json"]["examples"]["default"]["value"] == {"image": SAMPLE_IMAGE}


def test_core_examples_describe_this_project() -> None:
    text = json.dumps(capability_document(_capability()))
    for foreign in ("zimage", "flux2", "acestep", "qwen3", "not activated"):
        assert foreign not in text
