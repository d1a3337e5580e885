"""The core's own OpenAPI pieces: job schemas, standard parameters and responses.

These are written out as data rather than generated from :mod:`kiapi_core.jobs.models`,
because the wire contract documents them with descriptions and examples the runtime Structs do
not carry, and the Job record has extra fields (queue position, warnings ...) that are welcome
on the wire but are not part of the contract. ``tests/test_openapi_spec.py`` checks that every
property here is a field of the runtime Struct, so the two cannot drift apart silently.
"""

from __future__ import annotations

import copy
from typing import Any

from .schema import ref

__all__ = [
    "ACCEPT_PARAMETER",
    "ASYNC_JOB_RESPONSE",
    "CAPABILITY_MODEL_SPEC",
    "ASYNC_ONLY_RESPONSE_TEXT",
    "ERROR_RESPONSE",
    "SIMPLE_COMPONENTS",
    "SYNC_RESPONSE_TEXT",
    "binary_response_headers",
    "job_schema",
    "job_schema_name",
]

_JOB_ID_EXAMPLE = "job_0123456789abcdef"

#: Plain named string types the Job schema refers to.
SIMPLE_COMPONENTS: dict[str, dict[str, Any]] = {
    "FileID": {"type": "string"},
    "JobID": {"type": "string"},
    "JobType": {"type": "string"},
}

ASYNC_JOB_RESPONSE: dict[str, Any] = {
    "properties": {
        "job_id": {
            "type": "string",
            "title": "Job Id",
            "description": "In-memory job id. Poll GET /v1/jobs/{job_id} to inspect status, progress, result, and artifacts.",
            "examples": [_JOB_ID_EXAMPLE],
        },
        "type": {
            "type": "string",
            "title": "Type",
            "description": "Job type: the capability's job type for the operation, such as ernie, ernie-edit, "
            "ernie-train or seedvr2 (see each capability's guide).",
            "examples": ["ernie"],
        },
        "status": {
            **ref("JobStatus"),
            "description": "Initial job status. Async responses are normally queued unless the worker starts immediately.",
            "examples": ["queued"],
        },
    },
    "type": "object",
    "required": ["job_id", "type", "status"],
    "title": "AsyncJobResponse",
}

CAPABILITY_MODEL_SPEC: dict[str, Any] = {
    "properties": {
        "name": {
            "type": "string",
            "title": "Name",
            "description": "Model variant name to pass in the request model field.",
            "examples": ["turbo"],
        },
        "family": {
            "type": "string",
            "title": "Family",
            "description": "Capability family that resolves this model variant.",
            "examples": ["ernie"],
        },
        "domain": {
            "type": "string",
            "title": "Domain",
            "description": "Capability domain used for grouping model lists.",
            "examples": ["image"],
        },
        "aliases": {
            "items": {"type": "string"},
            "type": "array",
            "title": "Aliases",
            "description": "Alternative names that also resolve to this model.",
            "examples": [["ernie-image-turbo", "baidu/ERNIE-Image-Turbo"]],
        },
        "default": {
            "type": "boolean",
            "title": "Default",
            "description": "Whether this is the default model when the request omits model.",
            "default": False,
            "examples": [True],
        },
        "features": {
            "items": {"type": "string"},
            "type": "array",
            "title": "Features",
            "description": "Handler-declared modalities and features supported by this model.",
            "examples": [["text", "image"]],
        },
    },
    "type": "object",
    "required": ["name", "family", "domain"],
    "title": "CapabilityModelSpec",
    "description": "Public model discovery entry for capability-specific model lists.",
}

_JOB_PROPERTIES: dict[str, Any] = {
    "type": {
        **ref("JobType"),
        "description": "Job type. Use this to interpret the capability-specific result payload.",
        "examples": ["ernie"],
    },
    "params": {
        "additionalProperties": True,
        "type": "object",
        "title": "Params",
        "description": "Request parameters captured for inspection and reproducibility. Secret or large media payloads may be omitted or redacted by endpoints.",
    },
    "id": {
        **ref("JobID"),
        "description": "In-memory job id. Jobs are cleared when the kiapi process restarts.",
        "examples": [_JOB_ID_EXAMPLE],
    },
    "status": {
        **ref("JobStatus"),
        "description": "Job lifecycle state: queued, running, succeeded, failed, or canceled.",
        "default": "queued",
        "examples": ["succeeded"],
    },
    "result": None,  # filled in by job_schema()
    "artifacts": {
        "items": ref("FileID"),
        "type": "array",
        "title": "Artifacts",
        "description": "File ids produced by the job. Use GET /v1/files/{file_id} for metadata or /download for bytes.",
        "examples": [["file_0123456789abcdef"]],
    },
    "error": {
        "anyOf": [{"type": "string"}, {"type": "null"}],
        "title": "Error",
        "description": "Error message when status is failed; otherwise null.",
        "examples": [None],
    },
    "created_at": {
        "type": "number",
        "title": "Created At",
        "description": "Unix timestamp when the job was created.",
        "examples": [1766200000.0],
    },
    "started_at": {
        "anyOf": [{"type": "number"}, {"type": "null"}],
        "title": "Started At",
        "description": "Unix timestamp when the worker started the job, or null while queued.",
        "examples": [1766200001.0],
    },
    "finished_at": {
        "anyOf": [{"type": "number"}, {"type": "null"}],
        "title": "Finished At",
        "description": "Unix timestamp when the job reached a terminal state, or null while queued/running.",
        "examples": [1766200030.0],
    },
    "progress": {
        "anyOf": [{"type": "number", "maximum": 1.0, "minimum": 0.0}, {"type": "null"}],
        "title": "Progress",
        "description": "Best-effort completion fraction in [0.0, 1.0]. Null means the job has not reported progress.",
        "examples": [1.0],
    },
    "progress_label": {
        "type": "string",
        "title": "Progress Label",
        "description": "Short human-readable phase label such as queued, running, denoising, saving, or done.",
        "default": "queued",
        "examples": ["done"],
    },
}


def job_schema_name(result_name: str | None) -> str:
    """``Job`` + the result's component name (``JobImageResponse``), or ``Job`` when untyped."""
    return f"Job{result_name}" if result_name else "Job"


def job_schema(result_name: str | None) -> dict[str, Any]:
    """The Job record schema with ``result`` typed as the named component (or free-form)."""
    props = copy.deepcopy(_JOB_PROPERTIES)
    if result_name:
        props["result"] = {"anyOf": [ref(result_name), {"type": "null"}]}
    else:
        props["result"] = {"title": "Result", "description": "Capability-specific result; see the capability's OpenAPI document."}
    return {
        "properties": props,
        "type": "object",
        "required": ["type"],
        "title": job_schema_name(result_name),
    }


#: Error body of every kiapi error response (root document; capability documents follow the
#: spec, which leaves error bodies undocumented).
ERROR_RESPONSE: dict[str, Any] = {
    "properties": {
        "detail": {"type": "string", "title": "Detail", "description": "What is wrong and how to fix it."},
        "code": {"type": "string", "title": "Code", "description": "Stable machine-readable error code."},
        "job_id": {
            "type": "string",
            "title": "Job Id",
            "description": "The job the error belongs to, when a job exists.",
        },
    },
    "additionalProperties": True,
    "type": "object",
    "required": ["detail", "code"],
    "title": "ErrorResponse",
}

_ACCEPT_DESCRIPTION = (
    "Response media type preference. application/json returns the Job JSON; otherwise sync "
    "requests with one artifact return raw bytes when possible."
)

ACCEPT_PARAMETER: dict[str, Any] = {
    "name": "Accept",
    "in": "header",
    "required": False,
    "schema": {
        "anyOf": [{"type": "string"}, {"type": "null"}],
        "description": _ACCEPT_DESCRIPTION,
        "examples": ["application/json", "image/png", "audio/wav", "video/mp4"],
        "title": "Accept",
    },
    "description": _ACCEPT_DESCRIPTION,
}


def binary_response_headers() -> dict[str, Any]:
    """Headers a sync operation sets when it answers with raw artifact bytes."""
    return {
        "X-Kiapi-File-Id": {
            "description": "Produced artifact file_id when raw bytes are returned.",
            "schema": {"type": "string"},
        },
        "X-Kiapi-Job-Id": {"description": "Job id when raw bytes are returned.", "schema": {"type": "string"}},
    }


#: Default response descriptions by status code; ``Operation.responses`` overrides them.
SYNC_RESPONSE_TEXT: dict[int, str] = {
    200: "Sync result. Returns Job JSON with Accept: application/json; single-artifact jobs may return raw bytes otherwise.",
    202: "Async job accepted. Poll GET /v1/jobs/{job_id}.",
    400: "Invalid request for the selected model or file reference.",
    422: "Request schema or validation error.",
    503: "Model setup or memory budget error.",
    504: "Sync request exceeded the configured timeout.",
}
ASYNC_ONLY_RESPONSE_TEXT: dict[int, str] = {
    200: "Successful Response",
    202: "Job accepted. Poll GET /v1/jobs/{job_id}.",
    400: "Invalid request for the selected model or file reference.",
    422: "Request schema or validation error.",
    503: "Model setup or memory budget error.",
}
