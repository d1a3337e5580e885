"""The generated seedvr2 OpenAPI document matches the binding contract ``spec/seedvr2.openapi.json``.

The Capability is built here from the real Structs and document texts, so the contract is
checked without the plugin's runtime code (no mlx, no mflux).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest

from kiapi_core.files.refs import FileDataURLRef
from kiapi_core.openapi import capability_document, compare_documents, unresolved_refs
from kiapi_core.registry import Capability, Model, Operation
from kiapi_seedvr2 import docs, schemas


def _spec(name: str) -> dict[str, Any]:
    """Load a contract file; fail (never skip) when it is missing: the contract is the point."""
    env = os.environ.get("KIAPI_SPEC_DIR")
    spec_dir = Path(env) if env else Path(__file__).resolve().parents[3] / "spec"
    path = (spec_dir / f"{name}.openapi.json").resolve()
    if not path.is_file():
        pytest.fail(f"contract file {path} is missing: the repository keeps it in spec/ (or set KIAPI_SPEC_DIR)")
    return json.loads(path.read_text(encoding="utf-8"))


def _capability() -> Capability:
    return Capability(
        name="seedvr2",
        domain="image",
        title=docs.TITLE,
        summary=docs.SUMMARY,
        description=docs.DESCRIPTION,
        models=(Model(name="3b", aliases=("seedvr2-3b",), default=True), Model(name="7b", aliases=("seedvr2-7b",))),
        operations=(
            Operation(
                name="upscale", request=schemas.UpscaleRequest, result=schemas.ImageResponse,
                handler="kiapi_seedvr2.handlers:upscale", job_type="seedvr2",
                produces=("image/png", "image/jpeg", "image/webp"),
                summary=docs.UPSCALE_SUMMARY, operation_id=docs.UPSCALE_OPERATION_ID,
                description=docs.UPSCALE_DESCRIPTION,
            ),
        ),
    )


def test_document_matches_spec_structurally() -> None:
    diffs = compare_documents(capability_document(_capability(), "0.1.0"), _spec("seedvr2"))
    assert diffs == [], "\n".join(diffs)


def test_document_texts_match_spec() -> None:
    diffs = compare_documents(capability_document(_capability()), _spec("seedvr2"), prose=True)
    assert diffs == [], "\n".join(diffs)


def test_every_ref_resolves() -> None:
    assert unresolved_refs(capability_document(_capability())) == []


def test_upscale_request_defaults_and_resolution_forms() -> None:
    req = msgspec.json.decode(
        b'{"image": {"type": "data_url", "data_url": "data:image/png;base64,AA=="}, "extra": true}',
        type=schemas.UpscaleRequest,
    )
    assert isinstance(req.image, FileDataURLRef)
    assert (req.resolution, req.softness, req.mode, req.format, req.quality) == ("2x", 0.0, "sync", "png", 90)
    img = b'"image": {"type": "file_id", "file_id": "file_1"}'
    assert msgspec.json.decode(b"{" + img + b', "resolution": 1024}', type=schemas.UpscaleRequest).resolution == 1024


@pytest.mark.parametrize("extra", [b'"softness": 1.5', b'"quality": 101', b'"image": {"type": "ftp"}'])
def test_upscale_request_rejects_values_outside_the_spec(extra: bytes) -> None:
    body = b'{"image": {"type": "file_id", "file_id": "file_1"}, ' + extra + b"}"
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(body, type=schemas.UpscaleRequest)


def test_declared_capability_matches_spec() -> None:
    """The plugin's real declaration (what the host serves) meets the contract too."""
    from kiapi_seedvr2.capability import build_capability

    doc = capability_document(build_capability(), "0.1.0")
    diffs = compare_documents(doc, _spec("seedvr2"))
    assert diffs == [], "\n".join(diffs)
    assert unresolved_refs(doc) == []
