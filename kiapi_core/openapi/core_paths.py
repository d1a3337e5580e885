"""The core endpoints of the root ``/openapi.json``, as a declarative table.

The handlers for health, files, jobs and memory live elsewhere (default plugins); describing
them here as data keeps the root document independent of how the routes are written and
lets a route author change one row instead of OpenAPI plumbing. Each row names response
schemas by component name; :func:`core_components` registers those components.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import msgspec

from ..files.models import FileRecord
from ..jobs.models import JobStatus
from .components import ERROR_RESPONSE, SIMPLE_COMPONENTS, job_schema
from .schema import SchemaBuilder, ref

__all__ = ["CORE_PATHS", "CorePath", "Param", "Reply", "core_components", "path_item"]

_JSON = "application/json"
_BINARY = {"type": "string", "format": "binary"}


class Param(msgspec.Struct, frozen=True, kw_only=True):
    """One path, query or header parameter."""

    name: str
    location: str = "query"
    schema: Mapping[str, Any] = msgspec.field(default_factory=lambda: {"type": "string"})
    required: bool = False
    description: str = ""


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    """One response: description, body schema by media type, header descriptions by name."""

    description: str
    content: Mapping[str, Mapping[str, Any]] = msgspec.field(default_factory=dict)
    headers: Mapping[str, str] = msgspec.field(default_factory=dict)


class CorePath(msgspec.Struct, frozen=True, kw_only=True):
    """One core operation of the root document."""

    method: str
    path: str
    summary: str
    description: str = ""
    tag: str = ""
    params: tuple[Param, ...] = ()
    #: Request body schemas by media type, or ``None``.
    body: Mapping[str, Mapping[str, Any]] | None = None
    responses: Mapping[int, Reply] = msgspec.field(default_factory=dict)


def _json(name: str) -> dict[str, Any]:
    return {_JSON: ref(name)}


def _error(description: str) -> Reply:
    return Reply(description=description, content=_json("ErrorResponse"))


#: One server-sent event of ``/v1/jobs/{job_id}/events`` (OpenAPI 3.1 convention: the schema of
#: an event stream describes each event; ``data`` is the Job JSON).
_JOB_EVENT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "event": {"type": "string", "const": "job"},
        "id": {"type": "string", "description": "Sequence number of the event, from 1."},
        "data": {"type": "string", "contentMediaType": _JSON, "contentSchema": ref("Job"),
                 "description": "The Job JSON after the change."},
    },
    "required": ["event", "data"],
}

_FILE_ID = Param(name="file_id", location="path", required=True, description="A Files-API id.")
_JOB_ID = Param(name="job_id", location="path", required=True, description="A job id.")
_NOT_FOUND = _error("No such id (or it expired).")

_FILENAME = Param(name="filename", description="Raw-body uploads: the file's name (its extension "
                  "sets the type when the Content-Type does not). Default: `upload` plus an extension "
                  "for the Content-Type.")
_DISPOSITION = Param(name="Content-Disposition", location="header",
                     description="Raw-body uploads: `attachment; filename=...` (or `filename*=UTF-8''...`) "
                     "names the file when the `filename` parameter is absent.")
_UPLOAD_REPLIES = {
    201: Reply(description="The stored file's metadata.", content=_json("FileRecord"),
               headers={"Location": "URL of the new file's metadata."}),
    400: _error("A malformed multipart body (bad boundary, cut off before its end), more than one "
                "`file` field, or a client that disconnected mid-upload."),
    413: _error("The file exceeds the upload size cap."),
    415: _error("Neither multipart/form-data nor a raw body (a raw POST needs "
                "`application/octet-stream` or a filename)."),
    422: _error("No `file` field in the form."),
    503: _error("The server is shutting down and takes no new uploads (`shutting_down`)."),
    507: _error("Storing the file would pass the storage quota (`KIAPI_MAX_STORAGE_GB`) or the disk "
                "is full (`insufficient_storage`); the detail names the usage and how to free space."),
}

CORE_PATHS: tuple[CorePath, ...] = (
    CorePath(
        method="get", path="/health", tag="health", summary="Health",
        description="Server status: loaded plugins (and the ones that failed), resident models, "
        "memory budget and reservations, queue length, and whether demo mode is on. `status` is "
        "`ok`, or `degraded` when a plugin failed and was skipped (the rest is served; "
        "`plugin_errors` says what went wrong) or a service the host needs is out of reach, such as "
        "a cluster's database (`problems` says what and since when).",
        responses={200: Reply(description="Server status.", content=_json("Health"))},
    ),
    CorePath(
        method="get", path="/v1/files", tag="files", summary="List files",
        description="Stored files, newest first, a page at a time: pass the previous page's "
        "`last_id` as `after` while `has_more` is true.",
        params=(
            Param(name="limit", schema={"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                  description="Page size."),
            Param(name="after", description="The last file id of the previous page."),
        ),
        responses={200: Reply(description="A page of stored files.", content=_json("FileList")),
                   422: _error("Invalid `limit` or `after`.")},
    ),
    CorePath(
        method="post", path="/v1/files", tag="files", summary="Upload a file",
        description="Upload one file as `multipart/form-data` with the field `file`, or as the raw "
        "body (`application/octet-stream` or the file's own media type) named by `filename` or a "
        "`Content-Disposition` header. The upload is streamed to disk; use the returned `file_id` "
        "in any FileRef (`{\"type\": \"file_id\", \"file_id\": ...}`).",
        params=(_FILENAME, _DISPOSITION),
        body={"multipart/form-data": {
            "type": "object",
            "properties": {"file": {**_BINARY, "title": "File"}},
            "required": ["file"],
        }, "application/octet-stream": _BINARY},
        responses=_UPLOAD_REPLIES,
    ),
    CorePath(
        method="put", path="/v1/files", tag="files", summary="Upload a file (raw body)",
        description="The request body is the file (`curl -T photo.png "
        "'http://127.0.0.1:8000/v1/files?filename=photo.png'`). Its type is the Content-Type, or "
        "is guessed from the name when that is missing or `application/octet-stream`.",
        params=(_FILENAME, _DISPOSITION),
        body={"application/octet-stream": _BINARY},
        responses=_UPLOAD_REPLIES,
    ),
    CorePath(
        method="get", path="/v1/files/{file_id}", tag="files", summary="File metadata",
        params=(_FILE_ID,),
        responses={200: Reply(description="The file's metadata.", content=_json("FileRecord")), 404: _NOT_FOUND},
    ),
    CorePath(
        method="delete", path="/v1/files/{file_id}", tag="files", summary="Delete a file",
        params=(_FILE_ID,),
        responses={200: Reply(description="The file was deleted.", content=_json("Deleted")), 404: _NOT_FOUND},
    ),
    *(
        CorePath(
            method=method, path="/v1/files/{file_id}/download", tag="files", summary=summary,
            description="The stored bytes with their content type, a filename (Content-Disposition), "
            "an ETag and Range support.",
            params=(_FILE_ID, Param(name="Range", location="header", description="A byte range (`bytes=0-1023`).")),
            responses={
                200: Reply(description="The file's bytes.", content={"*/*": _BINARY},
                           headers={"ETag": "Entity tag of the stored bytes.",
                                    "Content-Disposition": "attachment; filename=...",
                                    "Accept-Ranges": "bytes"}),
                206: Reply(description="The requested byte range.", content={"*/*": _BINARY},
                           headers={"Content-Range": "The range returned."}),
                304: Reply(description="Not modified (If-None-Match matched the ETag)."),
                404: _NOT_FOUND,
                416: Reply(description="The requested range cannot be satisfied."),
            },
        )
        for method, summary in (("get", "Download a file"), ("head", "File download headers"))
    ),
    CorePath(
        method="get", path="/v1/jobs", tag="jobs", summary="List jobs",
        description="Jobs still retained, newest first, optionally filtered, a page at a time: "
        "pass the previous page's `last_id` as `after` while `has_more` is true.",
        params=(
            Param(name="status", description="Only jobs in these states: one or more of queued, "
                  "running, succeeded, failed, canceled, comma-separated (`queued,running`)."),
            Param(name="type", description="Only jobs of this type (`ernie`, `seedvr2`, ...)."),
            Param(name="limit", schema={"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
                  description="Page size."),
            Param(name="after", description="The last job id of the previous page."),
        ),
        responses={200: Reply(description="The jobs.", content=_json("JobList")), 422: _error("Invalid filter.")},
    ),
    CorePath(
        method="get", path="/v1/jobs/{job_id}", tag="jobs", summary="Get a job",
        description="The job's status, progress, result and artifacts. With `wait`, the answer "
        "comes as soon as the job changes (status, progress or label) or after that many seconds "
        "(at most 60): long polling without a tight loop.",
        params=(_JOB_ID, Param(name="wait", schema={"type": "number", "minimum": 0, "default": 0},
                               description="Seconds to wait for a change.")),
        responses={200: Reply(description="The job.", content=_json("Job")), 404: _NOT_FOUND,
                   422: _error("Invalid `wait` (not a number, or negative).")},
    ),
    CorePath(
        method="delete", path="/v1/jobs/{job_id}", tag="jobs", summary="Delete a job",
        description="Cancel the job if it has not finished, then forget it. Its artifacts stay in "
        "the Files API.",
        params=(_JOB_ID,),
        responses={200: Reply(description="The job was deleted.", content=_json("Deleted")), 404: _NOT_FOUND},
    ),
    CorePath(
        method="post", path="/v1/jobs/{job_id}/cancel", tag="jobs", summary="Cancel a job",
        description="A queued job never runs; a running job stops at its next cancel check and "
        "ends `canceled`. Canceling a finished job changes nothing.",
        params=(_JOB_ID,),
        responses={200: Reply(description="The job after the cancel request.", content=_json("Job")),
                   404: _NOT_FOUND},
    ),
    CorePath(
        method="get", path="/v1/jobs/{job_id}/events", tag="jobs", summary="Job events",
        description="Server-sent events: `event: job` with the Job JSON as `data` on every change, "
        "ending with the terminal state; `: keepalive` comments while nothing happens.",
        params=(_JOB_ID,),
        responses={200: Reply(description="An event stream; the schema describes one event.",
                              content={"text/event-stream": _JOB_EVENT},
                              headers={"X-Kiapi-Job-Id": "The job being followed."}),
                   404: _NOT_FOUND},
    ),
    CorePath(
        method="get", path="/v1/memory", tag="memory", summary="Memory budget",
        description="The memory budget, resident models with their weights, live reservations and "
        "measured peaks.",
        responses={200: Reply(description="Memory accounting.", content=_json("Memory"))},
    ),
    *(
        CorePath(
            method="post", path=f"/v1/memory/models/{{family}}/{{model}}/{action}", tag="memory",
            summary=summary, description=description,
            params=(Param(name="family", location="path", description="Capability name (`ernie`)."),
                    Param(name="model", location="path", description="Model name or alias.")),
            responses={200: Reply(description="What happened, with the memory accounting after it.",
                                  content=_json("Memory")),
                       400: _error("Unknown model."), 404: _error("Unknown capability."),
                       503: _error("The model does not fit the memory budget.")},
        )
        for action, summary, description in (
            ("load", "Load a model", "Load (warm) a model resident, admitted like a job: it may "
             "evict idle models, or answer 503 when it cannot fit."),
            ("unload", "Unload a model", "Unload a model's idle resident instances; one in use by a "
             "running job stays."),
        )
    ),
    # --- operations: storage chores and metrics (docs/files.md, docs/operators.md) ---------------
    CorePath(
        method="get", path="/v1/files/usage", tag="files", summary="Storage usage",
        description="Stored files and bytes in total and per kind (`output`: made by jobs; `upload`; "
        "`input`: materialised URL and data-URL inputs), and the retention in force.",
        responses={200: Reply(description="Usage figures.", content={_JSON: {"type": "object"}})},
    ),
    CorePath(
        method="delete", path="/v1/files", tag="files", summary="Delete many files",
        description="Delete up to 1000 files at once; ids that are already gone are reported in "
        "`not_found`.",
        body={_JSON: {"type": "object", "required": ["file_ids"], "properties": {
            "file_ids": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1000}}}},
        responses={200: Reply(description="`{deleted: [...], not_found: [...]}`.", content={_JSON: {"type": "object"}}),
                   400: _error("The body is not JSON."),
                   422: _error("No ids, too many, or malformed ones (nothing was deleted).")},
    ),
    CorePath(
        method="post", path="/v1/files/prune", tag="files", summary="Prune files and jobs",
        description="Delete files (and, with `job_status`, job records) by age, job status, kind and "
        "a total size target (oldest first until it fits); `dry_run` reports without deleting. At "
        "least one of `older_than_s`, `job_status`, `max_total_bytes`.",
        body={_JSON: {"type": "object", "properties": {
            "older_than_s": {"type": "number", "minimum": 0},
            "job_status": {"type": "array", "items": {"type": "string", "enum": ["succeeded", "failed", "canceled"]}},
            "kinds": {"type": "array", "items": {"type": "string", "enum": ["output", "upload", "input"]}},
            "max_total_bytes": {"type": "integer", "minimum": 0},
            "dry_run": {"type": "boolean", "default": False}}}},
        responses={200: Reply(description="`{dry_run, deleted, deleted_bytes, jobs_deleted, remaining_bytes}`.",
                              content={_JSON: {"type": "object"}}),
                   400: _error("The body is not JSON."), 422: _error("No criterion, or an invalid one.")},
    ),
    CorePath(
        method="get", path="/metrics", tag="health", summary="Prometheus metrics",
        description="Jobs, queue, memory, model loads, HTTP traffic, storage and webhook deliveries "
        "in the Prometheus text exposition format (docs/operators.md#11-metrics).",
        responses={200: Reply(description="The metrics.", content={"text/plain": {"type": "string"}})},
    ),
    CorePath(
        method="get", path="/v1/cluster/hosts", tag="cluster", summary="Cluster hosts",
        description="The hosts sharing this cluster's PostgreSQL database (`KIAPI_CLUSTER_URL`): id, "
        "advertised URL, role, capabilities, resident models, budget and free memory, running job, "
        "heartbeat age, draining and live (docs/cluster.md).",
        responses={200: Reply(description="`{object: \"list\", self: <this host's id>, data: [...]}`.",
                              content={_JSON: {"type": "object"}}),
                   404: _error("Cluster mode is off on this host (`cluster_off`).")},
    ),
)


def core_components(builder: SchemaBuilder) -> None:
    """Register the schemas the core paths refer to."""
    free_form = {"additionalProperties": True, "type": "object"}
    builder.component(JobStatus)
    builder.component(FileRecord)
    builder.add("Job", job_schema(None))
    builder.add("ErrorResponse", copy.deepcopy(ERROR_RESPONSE))
    for name, schema in SIMPLE_COMPONENTS.items():
        builder.add(name, dict(schema))
    for name, item in (("FileList", "FileRecord"), ("JobList", "Job")):
        nullable_id = {"anyOf": [{"type": "string"}, {"type": "null"}]}
        builder.add(name, {
            "properties": {
                "object": {"type": "string", "const": "list", "title": "Object", "default": "list"},
                "data": {"items": ref(item), "type": "array", "title": "Data"},
                "has_more": {"type": "boolean", "title": "Has More",
                             "description": "Whether another page follows (pass `last_id` as `after`)."},
                "first_id": {**nullable_id, "title": "First Id"},
                "last_id": {**nullable_id, "title": "Last Id"},
            },
            "type": "object",
            "required": ["data"],
            "title": name,
        })
    builder.add("Deleted", {**free_form, "title": "Deleted", "properties": {
        "deleted": {"type": "boolean", "title": "Deleted"},
        "file_id": {"type": "string", "title": "File Id"},
        "job_id": {"type": "string", "title": "Job Id"},
        "was_running": {"type": "boolean", "title": "Was Running"},
    }, "required": ["deleted"]})
    builder.add("Health", {**free_form, "title": "Health"})
    builder.add("Memory", {**free_form, "title": "Memory"})


def path_item(entry: CorePath) -> dict[str, Any]:
    """The OpenAPI operation object for one row."""
    op: dict[str, Any] = {"tags": [entry.tag] if entry.tag else [], "summary": entry.summary}
    if entry.description:
        op["description"] = entry.description
    op["operationId"] = _operation_id(entry)
    if entry.params:
        op["parameters"] = [
            {"name": p.name, "in": p.location, "required": p.required or p.location == "path",
             "schema": dict(p.schema), **({"description": p.description} if p.description else {})}
            for p in entry.params
        ]
    if entry.body is not None:
        op["requestBody"] = {"required": True,
                             "content": {mt: {"schema": dict(s)} for mt, s in entry.body.items()}}
    responses: dict[str, Any] = {}
    for code in sorted(entry.responses):
        reply = entry.responses[code]
        out: dict[str, Any] = {"description": reply.description}
        if reply.content:
            out["content"] = {mt: {"schema": dict(s)} for mt, s in reply.content.items()}
        if reply.headers:
            out["headers"] = {h: {"description": d, "schema": {"type": "string"}} for h, d in reply.headers.items()}
        responses[str(code)] = out
    op["responses"] = responses
    if not op["tags"]:
        del op["tags"]
    return op


def _operation_id(entry: CorePath) -> str:
    words = entry.path.strip("/").replace("{", "").replace("}", "").replace("/", "_").replace("-", "_")
    return f"{entry.method}_{words}"
