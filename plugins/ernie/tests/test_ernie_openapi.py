"""The generated ernie OpenAPI document matches the binding contract ``spec/ernie.openapi.json``.

The Capability is built here from the real request/result Structs and document texts, with the
operation names, job types and media types the plugin declares, so the contract is checked
without the plugin's runtime code (no mlx, no mflux).
"""

from __future__ import annotations

import msgspec
import pytest
from helpers_spec import spec_document

from kiapi_core.files.refs import FileIDRef, FileURLRef
from kiapi_core.openapi import capability_document, compare_documents, unresolved_refs
from kiapi_core.openapi.compare import guide_differences, without_guide
from kiapi_ernie import docs, schemas
from kiapi_ernie.capability import build_capability

IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")


SPEC_NAME = "ernie"

#: The only places where the served guide (``docs.DESCRIPTION``) departs from the spec's, as
#: (spec text, guide text): statements kiapi documents as it actually behaves. Everything else in
#: the guide, and every operation and schema text, is the spec's word for word.
GUIDE_CHANGES: tuple[tuple[str, str], ...] = (
    # The server never downloads weights: a missing model answers 503 naming `kiapi activate`.
    ("- First use downloads the ERNIE-Image weights; run `kiapi activate` ahead of time\n"
     "  to avoid a cold-start download on the first request.\n",
     "- The server never downloads weights. Run `kiapi activate ernie:turbo` (or\n"
     "  `ernie:base`) ahead of time; until then a request for that model answers 503\n"
     "  (`weights_missing`) naming the `kiapi activate` command to run.\n"),
    # Where the spec's figure comes from.
    ("peak RSS ~5-6 GiB.\n",
     "peak RSS ~5-6 GiB\n  (measured by an earlier kiapi on Apple Silicon with the real weights).\n"),
    # LoRAs run on the resident model (issue #13); the resident quantization comes from the budget.
    ("The warmed, resident model uses the server-default quantization. A request that\n"
     "either supplies `loras` or sets a `quantize` differing from the resident model\n"
     "builds a **one-off transient model** for that call — weights load fresh, so it is\n"
     "slower and not reused. For the fast path, omit `loras` and leave `quantize` unset.\n",
     "The warmed, resident model uses the server's resident quantization\n"
     "(`KIAPI_ERNIE_RESIDENT_QUANTIZE`, else chosen from the memory budget: q8 from 24 GB\n"
     "Macs, q5 on 16 GB; see `models` in `GET /v1/memory`). `loras` are\n"
     "applied to the resident model for the call and taken off afterwards: no weights\n"
     "load, only the adapter (kept by file id). A `quantize` differing from the resident\n"
     "one builds a **one-off transient model** for that call — weights load fresh, so it\n"
     "is slower and not reused. For the fast path, leave `quantize` unset.\n"),
    # Non-square edits run on mflux 0.24 (the guard is off by default); base and the sync timeout.
    ("- `width`/`height` must be multiples of 16 and at most 2048x2048. `edit`\n"
     "  additionally requires square sizes by default — set\n"
     "  `KIAPI_ERNIE_EDIT_REQUIRE_SQUARE=0` to lift the guard (mflux 0.18.0 can fail on\n"
     "  some non-square ERNIE img2img sizes).\n",
     "- `width`/`height` must be multiples of 16 and at most 2048x2048. `edit` runs\n"
     "  non-square sizes and, when `width`/`height` are omitted, keeps the input's aspect\n"
     "  ratio at about 1024x1024 pixels (`KIAPI_ERNIE_EDIT_REQUIRE_SQUARE=1` brings back the\n"
     "  old mflux 0.18 square guard). `image_strength`: lower keeps more of the input.\n"
     "- `base` at its defaults (50 steps with CFG) can take longer than the 600 s sync\n"
     "  timeout on smaller Macs: send it with `\"mode\": \"async\"` and poll the job.\n"),
    # LoRA runs are no longer transient; demo-mode figures (measured here) appended.
    ("- Transient runs (any `loras` or a `quantize` override) rebuild the model each\n"
     "  call and are slower than the resident path.\n",
     "- LoRA runs use the resident model (only the adapter is read, once); a `quantize`\n"
     "  override rebuilds the model each call and is slower than the resident path.\n"
     "- Demo mode (`kiapi serve --demo`, tiny random-weight models on the MLX CPU\n"
     "  backend, outputs are noise): 8 turbo steps take under a second at 64x64, about\n"
     "  4s at 256x256 and about 16s at 512x512 on 2 CPU cores; keep demo requests small\n"
     "  (`\"width\": 64, \"height\": 64, \"steps\": 2`).\n"),
)


def test_guide_follows_the_spec() -> None:
    """The guide keeps the spec's sections, in order, and its wording except the listed changes."""
    problems = guide_differences(docs.DESCRIPTION, spec_document(SPEC_NAME)["info"]["description"], GUIDE_CHANGES)
    assert problems == [], "\n".join(problems)
    assert capability_document(build_capability())["info"]["description"] == docs.DESCRIPTION


def test_document_matches_spec_structurally() -> None:
    diffs = compare_documents(capability_document(build_capability(), "0.1.0"), spec_document("ernie"))
    assert diffs == [], "\n".join(diffs)


def test_schema_texts_match_spec() -> None:
    """Field descriptions and titles are part of what clients read; they are copied verbatim."""
    doc = capability_document(build_capability())
    spec = spec_document("ernie")
    diffs = compare_documents(doc["components"], spec["components"], prose=True)
    assert diffs == [], "\n".join(diffs)


def test_document_texts_match_spec() -> None:
    """Every text but the guide word for word (title, summaries, operation and field texts)."""
    doc = capability_document(build_capability())
    diffs = compare_documents(without_guide(doc), without_guide(spec_document("ernie")), prose=True)
    assert diffs == [], "\n".join(diffs)


def test_every_ref_resolves() -> None:
    assert unresolved_refs(capability_document(build_capability())) == []


def test_derived_names_equal_the_spec_ones() -> None:
    """Without explicit summaries/operationIds the host derives the same names."""
    cap = build_capability()
    plain = msgspec.structs.replace(
        cap, operations=tuple(msgspec.structs.replace(o, summary=None, operation_id=None) for o in cap.operations)
    )
    diffs = compare_documents(without_guide(capability_document(plain)), without_guide(spec_document("ernie")), prose=True)
    assert diffs == [], "\n".join(diffs)


def test_requests_decode_with_spec_defaults_and_ignore_unknown_fields() -> None:
    req = msgspec.json.decode(b'{"prompt": "a cat", "nonsense": 1}', type=schemas.GenerateRequest)
    assert (req.mode, req.format, req.quality, req.scheduler, req.loras) == ("sync", "png", 90, "linear", [])
    edit = msgspec.json.decode(
        b'{"prompt": "x", "image": {"type": "url", "url": "https://e.com/a.png"}}', type=schemas.EditRequest
    )
    assert edit.image == FileURLRef(url="https://e.com/a.png") and edit.image_strength == 0.4
    train = msgspec.json.decode(b'{"dataset": {"type": "file_id", "file_id": "file_1"}}', type=schemas.TrainRequest)
    assert train.dataset == FileIDRef(file_id="file_1")
    assert (train.seed, train.max_resolution, train.num_epochs, train.lora_rank) == (42, 512, 10, 16)


@pytest.mark.parametrize(
    "body",
    [b'{"prompt": ""}', b'{"prompt": "x", "quality": 0}', b'{"prompt": "x", "steps": 0}',
     b'{"prompt": "x", "format": "gif"}', b'{"prompt": "x", "mode": "later"}', b"{}"],
)
def test_generate_request_rejects_values_outside_the_spec(body: bytes) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(body, type=schemas.GenerateRequest)


def test_train_response_round_trips() -> None:
    result = schemas.TrainResponse(model="turbo", adapter_file_id="file_1", adapter_bytes=10, num_images=3,
                                   timings={"total_s": 1.5})
    assert msgspec.json.decode(msgspec.json.encode(result), type=schemas.TrainResponse) == result


