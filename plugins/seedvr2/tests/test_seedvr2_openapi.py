"""The generated seedvr2 OpenAPI document matches the binding contract ``spec/seedvr2.openapi.json``.

The Capability is built here from the real Structs and document texts, so the contract is
checked without the plugin's runtime code (no mlx, no mflux).
"""

from __future__ import annotations

import msgspec
import pytest
from helpers_spec import spec_document

from kiapi_core.files.refs import FileDataURLRef
from kiapi_core.openapi import capability_document, compare_documents, unresolved_refs
from kiapi_core.openapi.compare import guide_differences, without_guide
from kiapi_seedvr2 import docs, schemas
from kiapi_seedvr2.capability import build_capability

SPEC_NAME = "seedvr2"

#: The only places where the served guide (``docs.DESCRIPTION``) departs from the spec's, as
#: (spec text, guide text): statements kiapi documents as it actually behaves. Everything else in
#: the guide, and every operation and schema text, is the spec's word for word.
GUIDE_CHANGES: tuple[tuple[str, str], ...] = (
    # kiapi's text-to-image family is ernie; the spec named families kiapi does not have.
    ("qwen / flux2 / zimage / ideogram4 families instead.\n",
     "ernie family (`/v1/image/ernie/generate`, `/v1/image/ernie/edit`) instead.\n"),
    # The server never downloads weights: a missing model answers 503 naming `kiapi activate`.
    ("- First use downloads the SeedVR2 weights; run `kiapi activate` ahead of time to\n"
     "  avoid a cold-start download on the first request.\n",
     "- The server never downloads weights. Run `kiapi activate seedvr2:3b` (or\n"
     "  `seedvr2:7b`) ahead of time; until then a request for that model answers 503\n"
     "  (`weights_missing`) naming the `kiapi activate` command to run.\n"),
    # Where the spec's figures come from.
    ("cached 256→768 peak ~1756 MiB.\n",
     "cached 256→768 peak ~1756 MiB\n"
     "  (measured by an earlier kiapi on Apple Silicon with the real weights).\n"),
    # Demo-mode advice, appended to the Performance section.
    ("- **7b**: larger variant; estimate only until measured locally.\n",
     "- **7b**: larger variant; estimate only until measured locally.\n"
     "- Demo mode (`kiapi serve --demo`, tiny random-weight models on the MLX CPU\n"
     "  backend, outputs are noise): 3D convolutions are slow on the CPU, so keep demo\n"
     "  inputs and targets small (a 32x32 input with `\"resolution\": 64`).\n"),
)


def test_guide_follows_the_spec() -> None:
    """The guide keeps the spec's sections, in order, and its wording except the listed changes."""
    problems = guide_differences(docs.DESCRIPTION, spec_document(SPEC_NAME)["info"]["description"], GUIDE_CHANGES)
    assert problems == [], "\n".join(problems)
    assert capability_document(build_capability())["info"]["description"] == docs.DESCRIPTION


def test_document_matches_spec_structurally() -> None:
    diffs = compare_documents(capability_document(build_capability(), "0.1.0"), spec_document("seedvr2"))
    assert diffs == [], "\n".join(diffs)


def test_document_texts_match_spec() -> None:
    """Every text but the guide word for word (title, summaries, operation and field texts)."""
    doc = capability_document(build_capability())
    diffs = compare_documents(without_guide(doc), without_guide(spec_document("seedvr2")), prose=True)
    assert diffs == [], "\n".join(diffs)


def test_every_ref_resolves() -> None:
    assert unresolved_refs(capability_document(build_capability())) == []


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


