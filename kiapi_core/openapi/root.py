"""The root ``/openapi.json``: core endpoints plus an index of capability documents.

The root document is the entry point a person or an agent reads first, so besides the core
endpoints (health, files, jobs, memory) its ``info.description`` lists every capability with
links to its own OpenAPI document, Swagger UI and ReDoc, and ``x-kiapi-capabilities`` carries
the same index as data. Capability operations are deliberately not repeated here: each
capability document is self-contained and generated from the plugin's Structs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..registry import Capability
from .core_paths import CORE_PATHS, CorePath, core_components, path_item
from .generate import OPENAPI_VERSION, prune_components
from .schema import SchemaBuilder

__all__ = ["capability_index", "capability_links", "root_document"]

_INTRO = (
    "Core endpoints of this kiapi server: health, the Files API, jobs and memory.\n\n"
    "Every capability (a model family such as an image generator or upscaler) has its own "
    "OpenAPI document with its operations, request and result schemas and a usage guide. "
    "Inputs are passed as FileRefs (`{\"type\": \"file_id\" | \"url\" | \"data_url\", ...}`); "
    "sync requests return the job's result (or the raw artifact bytes), async requests return "
    "202 with a job id to poll at `GET /v1/jobs/{job_id}`."
)


def capability_links(capability: Capability) -> dict[str, str]:
    """Where a capability's document and docs pages are served."""
    prefix = capability.prefix
    return {
        "openapi": f"{prefix}/openapi.json",
        "docs": f"{prefix}/docs",
        "redoc": f"{prefix}/redoc",
        "models": f"{prefix}/models",
    }


def capability_index(capabilities: Iterable[Capability]) -> list[dict[str, Any]]:
    """The ``x-kiapi-capabilities`` entries: one per capability, sorted by domain and name."""
    return [
        {
            "name": c.name,
            "domain": c.domain,
            "title": c.title,
            "summary": c.summary,
            "version": c.version,
            **capability_links(c),
            "operations": [f"{c.prefix}/{op.name}" for op in c.operations],
            # For clients such as the web playground: which operation made a job, and which
            # FileRef fields take which kind of file.
            "job_types": {op.name: op.job_type for op in c.operations},
            "inputs": {op.name: dict(op.inputs) for op in c.operations},
        }
        for c in sorted(capabilities, key=lambda c: (c.domain, c.name))
    ]


def root_document(
    capabilities: Any,
    core_paths: Sequence[CorePath] | None = None,
    *,
    version: str | None = None,
    title: str = "kiapi",
) -> dict[str, Any]:
    """The OpenAPI 3.1 document served at ``/openapi.json``.

    :param capabilities: a :class:`~kiapi_core.registry.Registry`, any iterable of
        :class:`~kiapi_core.Capability`, or an object with a ``registry`` attribute (the host).
    :param core_paths: the core endpoint table; :data:`~kiapi_core.openapi.core_paths.CORE_PATHS`
        when omitted (pass a filtered table when some core routes are disabled).
    :param version: the kiapi core version (defaults to ``kiapi_core.__version__``).
    """
    if version is None:
        from .. import __version__ as version
    caps = list(getattr(capabilities, "registry", capabilities) or ())
    builder = SchemaBuilder()
    paths: dict[str, Any] = {}
    for entry in CORE_PATHS if core_paths is None else core_paths:
        paths.setdefault(entry.path, {})[entry.method] = path_item(entry)
    core_components(builder)
    index = capability_index(caps)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "description": _description(index), "version": version},
        "tags": _tags(paths),
        "paths": paths,
        "components": {"schemas": prune_components(builder.components, paths)},
        "x-kiapi-capabilities": index,
    }


def _description(index: list[dict[str, Any]]) -> str:
    lines = [_INTRO, "", "## Capabilities", ""]
    if not index:
        lines.append("No capability plugin is loaded. Install one (for example `kiapi-ernie`) and "
                     "restart; `kiapi plugins` shows what was found and what failed to load.")
    domain = None
    for entry in index:
        if entry["domain"] != domain:
            domain = entry["domain"]
            lines += [f"### {domain}", ""]
        summary = f" — {entry['summary']}" if entry["summary"] else ""
        lines.append(
            f"- **{entry['title']}** (`{entry['name']}`){summary} "
            f"[OpenAPI JSON]({entry['openapi']}) · [Swagger UI]({entry['docs']}) · "
            f"[ReDoc]({entry['redoc']}) · models: `GET {entry['models']}`"
        )
    return "\n".join(lines).rstrip() + "\n"


def _tags(paths: dict[str, Any]) -> list[dict[str, str]]:
    seen: list[str] = []
    for item in paths.values():
        for op in item.values():
            for tag in op.get("tags", []):
                if tag not in seen:
                    seen.append(tag)
    return [{"name": t} for t in seen]
