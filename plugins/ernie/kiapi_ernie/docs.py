"""Texts of the ernie capability's OpenAPI document.

Each operation's summary, operationId, description and non-default response descriptions are
copied from ``spec/ernie.openapi.json``; the Markdown guide (``info.description``) is the
spec's guide with the same sections, updated where kiapi behaves differently (the server never
downloads weights; performance figures say where they were measured). They live here as plain
constants so the Capability declaration imports them and the OpenAPI contract test can build
the document without the plugin's runtime code. ``test_ernie_openapi`` checks the operation
texts word for word against the spec, and the guide by its ``## `` sections plus an explicit
list of the spec sentences replaced here, so update both together.
"""

from __future__ import annotations

#: ``info.title`` of the capability document.
TITLE = "kiapi ERNIE-Image API"

#: One line for the root document's capability index (``Capability.summary``).
SUMMARY = "Generate, edit, and train LoRA adapters for ERNIE-Image models."

#: ``info.description``: the Markdown guide (models, LoRA workflow, TIPS, performance).
DESCRIPTION = (
    "Image generation, editing, and LoRA training (ERNIE-Image via mflux).\n"
    "\n"
    "Three operations on Baidu's ERNIE-Image models: `/generate` (text-to-image),\n"
    "`/edit` (single-image image-to-image), and `/train` (LoRA finetune).\n"
    "\n"
    "## Upstream docs\n"
    "- [mflux — ERNIE-Image](https://github.com/filipstrand/mflux/blob/main/src/mflux/models/ernie_image/README.md) — the MLX engine kiapi runs\n"
    "- [baidu/ERNIE-Image-Turbo](https://huggingface.co/baidu/ERNIE-Image-Turbo) — `turbo` weights\n"
    "- [baidu/ERNIE-Image](https://huggingface.co/baidu/ERNIE-Image) — `base` weights\n"
    "\n"
    "## Models\n"
    "- **turbo** (default) — `baidu/ERNIE-Image-Turbo`. Fast, few steps (default 8),\n"
    "  guidance 1.0. The everyday choice.\n"
    "- **base** — `baidu/ERNIE-Image`. Higher quality but slower: more steps\n"
    "  (default 50) and stronger guidance (default 4.0).\n"
    "\n"
    "Pick the variant with `model` (aliases like `ernie-image-turbo` are accepted);\n"
    "discover variants at `GET /v1/image/ernie/models`. Variant-dependent defaults\n"
    "(`steps` / `guidance` / `quantize`) are filled in server-side when omitted, and\n"
    "the resolved values are recorded in the result `params`.\n"
    "\n"
    "## Resident vs transient runs\n"
    "The warmed, resident model uses the server's resident quantization\n"
    "(`KIAPI_ERNIE_RESIDENT_QUANTIZE`, else chosen from the memory budget: q8 from 24 GB\n"
    "Macs, q5 on 16 GB; see `models` in `GET /v1/memory`). `loras` are\n"
    "applied to the resident model for the call and taken off afterwards: no weights\n"
    "load, only the adapter (kept by file id). A `quantize` differing from the resident\n"
    "one builds a **one-off transient model** for that call — weights load fresh, so it\n"
    "is slower and not reused. For the fast path, leave `quantize` unset.\n"
    "\n"
    "## LoRA workflow\n"
    "Train an adapter from a captioned image set via `/train` (always async), then\n"
    "apply it on `/generate` or `/edit` by passing its `adapter_file_id` in `loras`\n"
    "(up to 4, each `{file, scale}`). Dataset = a ZIP uploaded to the Files API with a\n"
    "same-stem `.txt` caption next to each image (`cat.png` + `cat.txt`); images may\n"
    "sit at the top level or in a single subfolder, and `preview*` images are exempt\n"
    "from the caption requirement.\n"
    "\n"
    "```\n"
    "dataset.zip\n"
    "├── cat_01.png      # image\n"
    "├── cat_01.txt      # same-stem caption: \"a photo of a tabby cat\"\n"
    "├── cat_02.jpg\n"
    "├── cat_02.txt\n"
    "└── preview.png     # optional preview, no caption needed\n"
    "```\n"
    "\n"
    "A single wrapping subfolder is also accepted (the images just need to live\n"
    "together under one directory):\n"
    "\n"
    "```\n"
    "dataset.zip\n"
    "└── cats/\n"
    "    ├── cat_01.png\n"
    "    ├── cat_01.txt\n"
    "    └── ...\n"
    "```\n"
    "\n"
    "## TIPS\n"
    "- For a quick image, call `sync` without `Accept: application/json` to get the\n"
    "  raw bytes straight back (`curl -o out.png`).\n"
    "- `width`/`height` must be multiples of 16 and at most 2048x2048. `edit` runs\n"
    "  non-square sizes and, when `width`/`height` are omitted, keeps the input's aspect\n"
    "  ratio at about 1024x1024 pixels (`KIAPI_ERNIE_EDIT_REQUIRE_SQUARE=1` brings back the\n"
    "  old mflux 0.18 square guard). `image_strength`: lower keeps more of the input.\n"
    "- `base` at its defaults (50 steps with CFG) can take longer than the 600 s sync\n"
    "  timeout on smaller Macs: send it with `\"mode\": \"async\"` and poll the job.\n"
    "- The server never downloads weights. Run `kiapi activate ernie:turbo` (or\n"
    "  `ernie:base`) ahead of time; until then a request for that model answers 503\n"
    "  (`weights_missing`) naming the `kiapi activate` command to run.\n"
    "\n"
    "## Performance\n"
    "- **turbo**: q8 512x512 generation around 15s after cache load, peak RSS ~5-6 GiB\n"
    "  (measured by an earlier kiapi on Apple Silicon with the real weights).\n"
    "- **base**: slower and uses more steps; prefer turbo unless you need its quality.\n"
    "- LoRA runs use the resident model (only the adapter is read, once); a `quantize`\n"
    "  override rebuilds the model each call and is slower than the resident path.\n"
    "- Demo mode (`kiapi serve --demo`, tiny random-weight models on the MLX CPU\n"
    "  backend, outputs are noise): 8 turbo steps take under a second at 64x64, about\n"
    "  4s at 256x256 and about 16s at 512x512 on 2 CPU cores; keep demo requests small\n"
    "  (`\"width\": 64, \"height\": 64, \"steps\": 2`).\n"
)

GENERATE_SUMMARY = "Generate Ernie Endpoint"

GENERATE_OPERATION_ID = "generate_ernie_endpoint_v1_image_ernie_generate_post"

GENERATE_DESCRIPTION = (
    "Generate an image from a text prompt (ERNIE-Image, text-to-image).\n"
    "\n"
    "No input image — use `/v1/image/ernie/edit` for image-to-image. The same\n"
    "endpoint serves both `sync` and `async` via `mode`. Variant defaults differ:\n"
    "`turbo` (default) is fast and uses few steps; `base` is higher quality and\n"
    "slower.\n"
    "\n"
    "Sync content negotiation: a single image is produced, so unless the client\n"
    "asks for JSON the raw image bytes are returned with `X-Kiapi-File-Id` /\n"
    "`X-Kiapi-Job-Id` headers — `curl -o out.png` just works. With\n"
    "`Accept: application/json` (or async) the Job JSON is returned, whose\n"
    "`result` follows ImageResponse.\n"
    "\n"
    "Any `loras` or a `quantize` differing from the resident model runs a one-off\n"
    "transient model (slower, not reused). Async returns 202 immediately; poll\n"
    "GET /v1/jobs/{job_id} and fetch the artifact via GET /v1/files/{file_id}."
)

EDIT_SUMMARY = "Edit Ernie Endpoint"

EDIT_OPERATION_ID = "edit_ernie_endpoint_v1_image_ernie_edit_post"

EDIT_DESCRIPTION = (
    "Edit a single input image with a prompt (ERNIE-Image, image-to-image).\n"
    "\n"
    "Takes one `image` (FileRef) plus a `prompt`; `image_strength` controls how\n"
    "much of the input is preserved (lower = closer to input). Output must be\n"
    "square by default (a guard around an mflux 0.18.0 non-square img2img issue),\n"
    "overrideable via `KIAPI_ERNIE_EDIT_REQUIRE_SQUARE=0`. The same endpoint\n"
    "serves both `sync` and `async` via `mode`.\n"
    "\n"
    "Sync content negotiation, transient-model behavior (`loras` / `quantize`\n"
    "override), and the ImageResponse `result` shape match\n"
    "`/v1/image/ernie/generate`."
)

TRAIN_SUMMARY = "Train Ernie Endpoint"

TRAIN_OPERATION_ID = "train_ernie_endpoint_v1_image_ernie_train_post"

TRAIN_DESCRIPTION = (
    "Train a LoRA adapter on a captioned image set (ERNIE-Image, always async).\n"
    "\n"
    "Long-running, so this endpoint is always async: it returns 202 with a\n"
    "job_id — poll GET /v1/jobs/{job_id}. The `dataset` is a Files-API ZIP whose\n"
    "images each have a same-stem `.txt` caption. On success the job's `result`\n"
    "holds `adapter_file_id` (the trained `.safetensors`, also the artifact),\n"
    "`adapter_bytes`, `num_images`, the resolved `config`, `lora_targets`, and\n"
    "`timings`; the adapter can then be passed back via `loras` on generate/edit."
)

#: Response descriptions that differ from the host's defaults for always-async operations.
TRAIN_RESPONSES = {
    202: "Training job accepted. Poll GET /v1/jobs/{job_id}.",
    400: "Invalid model or dataset FileRef.",
}
