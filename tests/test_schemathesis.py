"""Property-based API testing with schemathesis: the root and every capability document.

A demo host serving ernie and seedvr2 runs in-process (schemathesis's ASGI transport, the
app's lifespan running), and schemathesis generates requests for every operation of
``/openapi.json``, ``/v1/image/ernie/openapi.json`` and ``/v1/image/seedvr2/openapi.json``,
schema-valid ones and schema-invalid ones. Every response must be:

* no server error (no 5xx at all: nothing here should meet a full queue, a memory limit or a
  sync timeout);
* a documented status code, with a documented content type and a body conforming to the
  documented schema (and documented response headers conforming).

Kept bounded and deterministic for the suite (``derandomize``, no example database, a few
examples per model-running operation); ``KIAPI_FUZZ_SCALE=8`` multiplies every example count
and draws fresh random examples, for a longer exploratory run (``KIAPI_FUZZ_REPORT=1 pytest -s``
prints the status codes each capability operation answered).

Generated bodies are bent in three ways so a run stays small, fast and on loopback:

* image sizes, steps and upscale targets are clamped to tiny values (a 1024x1024 generation or
  a 2048-pixel upscale takes minutes on a CPU); values the plugin rejects stay rejected;
* FileRefs without ``type`` get the tag their one key implies: the spec's FileRef is a
  ``oneOf`` with a ``type`` discriminator, and by OpenAPI's discriminator rules the property
  must be present (the host answers 422 without it, as the FastAPI original did), but
  schemathesis's generator does not read discriminators;
* every URL input points at ``127.0.0.1`` (refused by the private-address guard: 400), so no
  request leaves the machine;
* some ``file_id`` inputs and path ids are swapped for ids that exist (a stored PNG, a finished
  job), so the 200 answers are exercised and checked, not only the 404s.

Status codes the capability contract cannot list: ``spec/*.openapi.json`` is binding and
documents 200/202/400/422/503/504 for operations; the host also answers 406 (nothing the
``Accept`` header allows), 409 (an ``Idempotency-Key`` reused with another body), 413 (body over
``KIAPI_MAX_BODY_MB``), 415 (not a JSON body), 408 (a body arriving too slowly) and 507 (an
artifact or input over the storage quota, or a full disk). Adding them to the generated documents would
break the structural match with the spec (``compare_documents`` reports extra responses), so
for capability documents those are accepted as host-level answers and checked here
against the core's error shape (``{"detail", "code"}`` JSON) instead. The root document,
which the host owns, documents everything it answers.
"""

from __future__ import annotations

import collections
import io
import os
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.python import asgi as st_asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import kiapi_ernie
import kiapi_seedvr2
from kiapi_core.app import build_app
from kiapi_core.testing import build_test_host

pytestmark = pytest.mark.slow

SCALE = max(1, int(os.environ.get("KIAPI_FUZZ_SCALE", "1")))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]
#: Answers of the host to a capability operation that the binding spec cannot list (see above).
HOST_LEVEL_STATUSES = {406, 408, 409, 413, 415, 507}
#: Examples per operation and generation mode; operations that may run a model get fewer.
EXAMPLES = {"generate": 15, "edit": 15, "upscale": 15, "train": 8}
DEFAULT_EXAMPLES = 25
#: A URL input that never leaves the machine (the private-address guard refuses it: 400).
LOOPBACK_URL = "http://127.0.0.1:9/input.png"
TINY = 64


def _png(size: tuple[int, int]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 30, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


class Served:
    """The app under test and ids that exist in it."""

    def __init__(self, app: Any, client: Any) -> None:
        self.app = app
        self.client = client
        self.ids: dict[str, list[str]] = {}
        #: (operation label, status) of every generated request, for the coverage assertions.
        self.seen: collections.Counter[tuple[str, int]] = collections.Counter()

    def seed(self) -> None:
        """Store files and finish jobs whose ids the generated requests may use."""
        ids: dict[str, list[str]] = {"file": [], "doomed_file": [], "job": [], "doomed_job": []}
        for key in ("file", "doomed_file"):
            r = self.client.post("/v1/files", files={"file": ("in.png", _png((16, 16)), "image/png")})
            assert r.status_code == 201, r.text
            ids[key].append(r.json()["file_id"])
        for key in ("job", "doomed_job"):
            r = self.client.post("/v1/image/ernie/generate", headers={"accept": "application/json"},
                                 json={"prompt": "seed", "width": TINY, "height": TINY, "steps": 1})
            assert r.status_code == 200, r.text
            job = r.json()
            assert job["status"] == "succeeded", job
            ids[key].append(job["id"])
            if key == "job":
                ids["file"].extend(job["artifacts"])
        self.ids = ids


@pytest.fixture
def served(tmp_path) -> Iterator[Served]:
    """A fresh demo host per test: schemathesis's pytest plugin ends every ASGI lifespan it
    started when a test ends, and a host's worker thread cannot be started twice."""
    host = build_test_host(tmp_path / "data", plugins=[kiapi_ernie, kiapi_seedvr2],
                           sync_timeout_s=30.0, shutdown_grace_s=5.0,
                           allowed_hosts=["testserver"])  # the Host of Starlette's test client
    app = build_app(host)
    try:
        # The client starts the app's lifespan on schemathesis's event-loop thread; every
        # generated request reaches the app on that same loop.
        with st_asgi.get_client(app) as client:
            served = Served(app, client)
            served.seed()
            yield served
    finally:
        st_asgi.shutdown_lifespans()


def _schema(served: Served, path: str) -> Any:
    return schemathesis.openapi.from_asgi(path, served.app)


def _operations(schema: Any) -> list[Any]:
    return [result.ok() for result in schema.get_all_operations()]  # .ok() raises on a broken one


# --- bending generated requests -------------------------------------------------------------

def _clamp_size(value: Any) -> Any:
    """Image sizes: keep small values (and wrong types, for the validator), shrink big ones."""
    if value is None:
        return TINY
    if isinstance(value, int) and not isinstance(value, bool) and value > TINY:
        return 16 + value % (TINY - 15)  # still sometimes not a multiple of 16: a 422
    return value


def _bend_refs(node: Any, existing_file: str, use_existing: bool) -> Any:
    """Point URL FileRefs at loopback and (sometimes) file_id FileRefs at a stored file."""
    if isinstance(node, dict):
        out = {k: _bend_refs(v, existing_file, use_existing) for k, v in node.items()}
        tags = [key for key in ("file_id", "url", "data_url") if key in out]
        if "type" not in out and len(tags) == 1:
            out["type"] = tags[0]  # the discriminator selects the variant (see above)
        if out.get("type") == "url" and "url" in out:
            out["url"] = LOOPBACK_URL
        if use_existing and out.get("type") == "file_id" and isinstance(out.get("file_id"), str):
            out["file_id"] = existing_file
        return out
    if isinstance(node, list):
        return [_bend_refs(v, existing_file, use_existing) for v in node]
    return node


def _bend_body(operation: str, body: Any, existing_file: str, use_existing: bool) -> Any:
    if not isinstance(body, dict):
        return body
    body = _bend_refs(body, existing_file, use_existing)
    if operation in ("generate", "edit"):
        for key in ("width", "height"):
            body[key] = _clamp_size(body.get(key))
        steps = body.get("steps")
        if steps is None or (isinstance(steps, int) and not isinstance(steps, bool) and steps > 2):
            body["steps"] = 1 if steps is None else 1 + steps % 2
    elif operation == "upscale":
        resolution = body.get("resolution")
        if isinstance(resolution, int) and not isinstance(resolution, bool) and resolution > TINY:
            body["resolution"] = 16 + resolution % (TINY - 15)
        # a factor string ("4x" at most) of the 16x16 stored image stays tiny
    elif operation == "train":
        body.setdefault("num_epochs", 1)
        body.setdefault("max_resolution", TINY)
    return body


def _bent(operation: Any, served: Served, mode: GenerationMode) -> Any:
    """The operation's case strategy with bodies and path ids bent as described above."""
    name = operation.path.rstrip("/").rsplit("/", 1)[-1]
    strategy = operation.as_strategy(generation_mode=mode)
    existing_file = served.ids["file"][0]

    def bend(case: Any, use_existing: bool) -> Any:
        if case.body is not None and not isinstance(case.body, (bytes, str)):
            case.body = _bend_body(name, case.body, existing_file, use_existing)
        return case

    # The first branch is explored first: start with requests naming things that exist.
    strategies = [strategy.map(lambda case: bend(case, True)), strategy.map(lambda case: bend(case, False))]
    known = _known_path_parameters(operation, served)
    if known:
        strategies.insert(0, operation.as_strategy(generation_mode=mode, path_parameters=known)
                          .map(lambda case: bend(case, False)))
    return st.one_of(strategies)


def _known_path_parameters(operation: Any, served: Served) -> dict[str, str] | None:
    """Ids that exist for this operation's path, so 200 answers are generated too."""
    path, method = operation.path, operation.method.lower()
    doomed = method == "delete"
    if "{file_id}" in path:
        return {"file_id": served.ids["doomed_file" if doomed else "file"][0]}
    if "{job_id}" in path:
        return {"job_id": served.ids["doomed_job" if doomed else "job"][0]}
    if "{family}" in path:
        return {"family": "ernie", "model": "turbo"}
    return None


# --- checking responses ---------------------------------------------------------------------

def _can_be_invalid(operation: Any) -> bool:
    """Whether a schema-invalid request exists: a body, or a parameter that is not a free string
    (hypothesis would otherwise spend seconds proving it cannot generate one)."""
    raw = operation.definition.raw
    if "requestBody" in raw:
        return True
    return any(p.get("schema", {}) != {"type": "string"} for p in raw.get("parameters", []))


def _check(served: Served, case: Any, capability: bool) -> None:
    response = case.call(timeout=60)
    served.seen[(case.operation.label, response.status_code)] += 1
    if capability and response.status_code in HOST_LEVEL_STATUSES:
        assert response.headers.get("content-type", "").startswith("application/json"), response.text
        body = response.json()
        assert isinstance(body.get("detail"), str) and isinstance(body.get("code"), str), body
        return
    case.validate_response(response, checks=CHECKS)


def _run(served: Served, path: str, *, capability: bool) -> list[str]:
    """Fuzz every operation of one document; returns what ran ("<operation> <mode>")."""
    ran = []
    for operation in _operations(_schema(served, path)):
        name = operation.path.rstrip("/").rsplit("/", 1)[-1]
        examples = EXAMPLES.get(name, DEFAULT_EXAMPLES) * SCALE
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if _can_be_invalid(operation) else [])
        for mode in modes:
            @given(case=_bent(operation, served, mode))
            @hypothesis.settings(max_examples=examples, deadline=None, database=None, derandomize=SCALE == 1,
                                 phases=[Phase.explicit, Phase.generate], print_blob=True,
                                 suppress_health_check=list(HealthCheck))
            def fuzz(case: Any) -> None:
                _check(served, case, capability)

            try:
                fuzz()
            except Unsatisfiable:  # pragma: no cover - _can_be_invalid is a heuristic
                continue
            ran.append(f"{operation.label} {mode.value}")
    return ran


def _answered(served: Served, label: str, status: int) -> bool:
    return served.seen[(label, status)] > 0


def test_root_document(served) -> None:
    ran = _run(served, "/openapi.json", capability=False)
    assert "POST /v1/files negative" in ran and "GET /v1/jobs/{job_id} negative" in ran, ran
    # the answers that carry bodies were checked, not only the 404s
    for label, status in (("POST /v1/files", 201), ("GET /v1/files/{file_id}", 200),
                          ("GET /v1/files/{file_id}/download", 200), ("GET /v1/jobs/{job_id}", 200),
                          ("GET /v1/jobs/{job_id}/events", 200), ("GET /v1/jobs", 200),
                          ("DELETE /v1/jobs/{job_id}", 200), ("POST /v1/memory/models/{family}/{model}/load", 200)):
        assert _answered(served, label, status), (label, status, sorted(served.seen.items()))


@pytest.mark.parametrize("family", ["ernie", "seedvr2"])
def test_capability_document(served, family) -> None:
    runs = {"ernie": "POST /v1/image/ernie/generate", "seedvr2": "POST /v1/image/seedvr2/upscale"}[family]
    ran = _run(served, f"/v1/image/{family}/openapi.json", capability=True)
    assert f"{runs} negative" in ran and f"GET /v1/image/{family}/models positive" in ran, ran
    # the model really ran at least once (a schema-valid request answered with an image or a job)
    assert _answered(served, runs, 200) or _answered(served, runs, 202), sorted(served.seen.items())
    if os.environ.get("KIAPI_FUZZ_REPORT"):
        print(sorted(served.seen.items()))
