"""Build a capability's OpenAPI document from its declaration.

``/v1/{domain}/{family}/openapi.json`` is generated from the :class:`~kiapi_core.Capability`
alone (request/result Structs, operation texts, produced media types), so a plugin never writes
OpenAPI by hand and the document cannot disagree with the decoder the host builds from the same
Structs. For ernie and seedvr2 the output must match ``spec/*.openapi.json`` structurally; the
response layout below mirrors that spec (200 Job JSON or raw bytes, 202, 400, 422, 503, 504).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from typing import Any

from ..jobs.models import JobStatus
from ..registry import Capability, Operation
from .components import (
    ACCEPT_PARAMETER,
    ASYNC_JOB_RESPONSE,
    ASYNC_ONLY_RESPONSE_TEXT,
    CAPABILITY_MODEL_SPEC,
    SIMPLE_COMPONENTS,
    SYNC_RESPONSE_TEXT,
    binary_response_headers,
    job_schema,
    job_schema_name,
)
from .examples import request_examples
from .schema import REF_PREFIX, SchemaBuilder, ref

__all__ = [
    "OPENAPI_VERSION",
    "ROOT_OPENAPI_URL",
    "capability_document",
    "derived_operation_id",
    "derived_summary",
    "extra_route_paths",
    "prune_components",
]

OPENAPI_VERSION = "3.1.0"
ROOT_OPENAPI_URL = "/openapi.json"

_MODELS_DESCRIPTION = (
    "List the servable models for this capability.\n\n"
    "Returns the public catalog of every variant selectable via the ``model``\n"
    "field on this capability's endpoints."
)
_BINARY = {"type": "string", "format": "binary"}


def extra_route_paths(routes: Iterable[Any], prefix: str) -> dict[str, dict[str, Any]]:
    """OpenAPI path items for plugin routes (duck-typed Starlette routes: ``path``,
    ``methods``, ``endpoint``, ``include_in_schema``); mounts and hidden routes are left out."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        methods = getattr(route, "methods", None)
        if not methods or not getattr(route, "include_in_schema", True):
            continue
        endpoint = getattr(route, "endpoint", None)
        doc = (getattr(endpoint, "__doc__", None) or "").strip()
        summary = doc.splitlines()[0] if doc else f"{route.path} (added by the plugin)"
        parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                      for name in re.findall(r"{([^}:]+)(?::[^}]*)?}", route.path)]
        for method in sorted(m for m in methods if m != "HEAD"):
            slug = re.sub(r"[^A-Za-z0-9]+", "_", route.path.removeprefix(prefix)).strip("_") or "root"
            item: dict[str, Any] = {"summary": summary, "description": doc,
                                    "operationId": f"{method.lower()}_{slug}",
                                    "responses": {"200": {"description": "Successful Response"}}}
            if parameters:
                item["parameters"] = parameters
            paths.setdefault(route.path, {})[method.lower()] = item
    return paths


def capability_document(
    capability: Capability,
    host_version: str | None = None,
    *,
    version: str | None = None,
    root_openapi: str = ROOT_OPENAPI_URL,
    extra_routes: Iterable[Any] = (),
) -> dict[str, Any]:
    """The OpenAPI 3.1 document served at ``{capability.prefix}/openapi.json``.

    Build it once per host (it depends only on the declaration) and serve the cached dict.

    :param capability: the declaration as registered by its plugin.
    :param host_version: the kiapi core version, recorded as ``info.x-kiapi-host-version`` so
        a client can tell which host generated the document.
    :param version: ``info.version``; the capability's own version when omitted.
    :param root_openapi: where the root document (files, jobs, health) is served.
    :param extra_routes: the routes the capability's plugin added with ``register_routes``
        (all under the capability's prefix); each appears with its methods and the first line
        of its endpoint's docstring as summary.
    :raises ValueError: when two different Structs would share one component name.
    """
    builder = SchemaBuilder(open_structs=[op.request for op in capability.operations])
    paths: dict[str, Any] = {}
    for op in capability.operations:
        paths[f"{capability.prefix}/{op.name}"] = {"post": operation_object(capability, op, builder)}
    paths[f"{capability.prefix}/models"] = {"get": _models_operation(capability)}
    for path, item in extra_route_paths(extra_routes, capability.prefix).items():
        paths.setdefault(path, {}).update(item)
    add_core_components(builder)
    info: dict[str, Any] = {
        "title": capability.title,
        "description": capability.description,
        "version": version or capability.version,
    }
    if host_version:
        info["x-kiapi-host-version"] = host_version
    return {
        "openapi": OPENAPI_VERSION,
        "info": info,
        "paths": paths,
        "components": {"schemas": prune_components(builder.components, paths)},
        "x-kiapi-capability": capability.name,
        "x-kiapi-domain": capability.domain,
        "x-kiapi-root-openapi": root_openapi,
    }


def operation_object(capability: Capability, op: Operation, builder: SchemaBuilder) -> dict[str, Any]:
    """The ``post`` object of one operation, registering its schemas in ``builder``."""
    path = f"{capability.prefix}/{op.name}"
    out: dict[str, Any] = {
        "summary": op.summary or derived_summary(capability, op),
        "description": op.description,
        "operationId": op.operation_id or derived_operation_id(capability, op),
    }
    if not op.always_async:
        out["parameters"] = [copy.deepcopy(ACCEPT_PARAMETER)]
    schema = builder.schema(op.request)
    examples = request_examples(op.example, schema, builder.components)
    out["requestBody"] = {
        "required": True,
        "content": {"application/json": {"schema": schema, "examples": examples}},
    }
    if op.always_async:
        out["responses"] = _async_only_responses(op)
    else:
        out["responses"] = _sync_responses(op, builder)
    if not out["description"]:
        out["description"] = f"`POST {path}`: {out['summary']}."
    return out


def _sync_responses(op: Operation, builder: SchemaBuilder) -> dict[str, Any]:
    text = {**SYNC_RESPONSE_TEXT, **op.responses}
    result_name = builder.component(op.result) if op.result is not None else None
    job_name = job_schema_name(result_name)
    builder.add(job_name, job_schema(result_name), owner=("job", result_name))
    content: dict[str, Any] = {"application/json": {"schema": ref(job_name)}}
    for media_type in op.produces:
        content[media_type] = {"schema": dict(_BINARY)}
    ok: dict[str, Any] = {"description": text[200], "content": content}
    if op.produces:
        ok["headers"] = binary_response_headers()
    responses: dict[str, Any] = {"200": ok, "202": _accepted(text[202])}
    responses.update(_plain(text, skip=(200, 202)))
    return responses


def _async_only_responses(op: Operation) -> dict[str, Any]:
    # The handler never answers 200 (the job is always queued), but the spec documents a
    # free-form 200 as FastAPI did; keep it so clients generated from either agree.
    text = {**ASYNC_ONLY_RESPONSE_TEXT, **op.responses}
    responses: dict[str, Any] = {
        "200": {"description": text[200], "content": {"application/json": {"schema": {}}}},
        "202": _accepted(text[202]),
    }
    responses.update(_plain(text, skip=(200, 202, 504)))
    return responses


def _accepted(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ref("AsyncJobResponse")}}}


def _plain(text: Mapping[int, str], skip: Iterable[int]) -> dict[str, Any]:
    return {str(code): {"description": text[code]} for code in sorted(text) if code not in skip}


def _models_operation(capability: Capability) -> dict[str, Any]:
    operation_id = _sanitize(f"list_models{capability.prefix}/models") + "_get"
    return {
        "summary": "List Models",
        "description": _MODELS_DESCRIPTION,
        "operationId": operation_id,
        "responses": {
            "200": {
                "description": "Successful Response",
                "content": {
                    "application/json": {
                        "schema": {
                            "items": ref("CapabilityModelSpec"),
                            "type": "array",
                            "title": "Response " + operation_id.replace("_", " ").title(),
                        }
                    }
                },
            }
        },
    }


def add_core_components(builder: SchemaBuilder) -> None:
    """Register the core schemas operations refer to (unused ones are pruned afterwards)."""
    builder.component(JobStatus)
    builder.add("AsyncJobResponse", copy.deepcopy(ASYNC_JOB_RESPONSE))
    builder.add("CapabilityModelSpec", copy.deepcopy(CAPABILITY_MODEL_SPEC))
    for name, schema in SIMPLE_COMPONENTS.items():
        builder.add(name, dict(schema))


def derived_summary(capability: Capability, op: Operation) -> str:
    """``Generate Ernie Endpoint``: the summary FastAPI derived from the handler name."""
    return f"{_words(op.name)} {_words(capability.name)} Endpoint"


def derived_operation_id(capability: Capability, op: Operation) -> str:
    """``generate_ernie_endpoint_v1_image_ernie_generate_post``, FastAPI's naming scheme."""
    return _sanitize(f"{op.name}_{capability.name}_endpoint{capability.prefix}/{op.name}") + "_post"


def prune_components(components: Mapping[str, Any], roots: Any) -> dict[str, Any]:
    """The components reachable by ``$ref`` from ``roots``, sorted by name."""
    keep: set[str] = set()
    pending = list(_refs(roots))
    while pending:
        name = pending.pop()
        if name in keep or name not in components:
            continue
        keep.add(name)
        pending.extend(_refs(components[name]))
    return {name: components[name] for name in sorted(keep)}


def _refs(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        target = node.get("$ref")
        if isinstance(target, str) and target.startswith(REF_PREFIX):
            yield target[len(REF_PREFIX):]
        for key, value in node.items():
            if key != "$ref":
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _words(name: str) -> str:
    return re.sub(r"[-_]+", " ", name).title()


def _sanitize(text: str) -> str:
    return re.sub(r"\W", "_", text)
