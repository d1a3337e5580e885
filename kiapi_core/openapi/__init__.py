"""OpenAPI documents and docs pages, generated from capability declarations.

* :func:`capability_document` — ``/v1/{domain}/{family}/openapi.json`` from a Capability;
* :func:`root_document` — ``/openapi.json``: core endpoints plus the capability index;
* :func:`swagger_ui_html` / :func:`redoc_html` — offline docs pages; the app serves
  :data:`STATIC_DIR` at :data:`STATIC_PREFIX` (see :func:`static_mount`);
* :func:`compare_documents` / :func:`unresolved_refs` — contract checks for tests.

Nothing here imports Starlette at import time, nor mlx or mflux ever.
"""

from .compare import compare_documents, unresolved_refs
from .core_paths import CORE_PATHS, CorePath, Param, Reply
from .generate import capability_document
from .pages import STATIC_DIR, STATIC_PREFIX, redoc_html, static_mount, swagger_ui_html
from .root import capability_index, root_document
from .schema import SchemaBuilder

__all__ = [
    "CORE_PATHS",
    "STATIC_DIR",
    "STATIC_PREFIX",
    "CorePath",
    "Param",
    "Reply",
    "SchemaBuilder",
    "capability_document",
    "capability_index",
    "compare_documents",
    "redoc_html",
    "root_document",
    "static_mount",
    "swagger_ui_html",
    "unresolved_refs",
]
