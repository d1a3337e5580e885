"""Texts of the seedvr2 capability's OpenAPI document.

The upscale operation's summary, operationId and description are copied from
``spec/seedvr2.openapi.json``; the Markdown guide (``info.description``) is the spec's guide with
the same sections, updated where kiapi differs (the text-to-image family it points to, the
server never downloads weights, where the performance figures were measured). Plain constants so
the Capability declaration imports them and the OpenAPI contract test can build the document
without the plugin's runtime code; ``test_seedvr2_openapi`` lists the spec sentences replaced
here.
"""

from __future__ import annotations

#: ``info.title`` of the capability document.
TITLE = "kiapi SeedVR2 API"

#: One line for the root document's capability index (``Capability.summary``).
SUMMARY = "Upscale images with SeedVR2 diffusion super-resolution."

#: ``info.description``: the Markdown guide (models, sizing, TIPS, performance).
DESCRIPTION = (
    "Image super-resolution upscaling (SeedVR2 via mflux).\n"
    "\n"
    "One operation: `/upscale` takes an input image and produces a higher-resolution\n"
    "version. SeedVR2 is diffusion-based super-resolution, **not** prompt-driven image\n"
    "generation — there is no prompt. To create or edit images from text, use the\n"
    "ernie family (`/v1/image/ernie/generate`, `/v1/image/ernie/edit`) instead.\n"
    "\n"
    "## Upstream docs\n"
    "- [mflux — SeedVR2](https://github.com/filipstrand/mflux/blob/main/src/mflux/models/seedvr2/README.md) — the MLX engine kiapi runs\n"
    "- [numz/SeedVR2_comfyUI](https://huggingface.co/numz/SeedVR2_comfyUI) — weights\n"
    "\n"
    "## Models\n"
    "- **3b** (default) — faster, lighter; good general upscaler.\n"
    "- **7b** — larger variant, higher quality at a higher memory/time cost.\n"
    "\n"
    "Discover variants at `GET /v1/image/seedvr2/models`. An omitted `quantize` uses\n"
    "the resident model's quantization (q8); the resolved values are recorded in the\n"
    "result `params`.\n"
    "\n"
    "## Sizing the output\n"
    "`resolution` accepts either form:\n"
    "- an **integer** shortest-edge pixel target (16..2048), or\n"
    "- a **scale factor** string like `2x` or `1.5x` (> 0 and at most 4.0x).\n"
    "\n"
    "`softness` (0..1) trades sharpness for smoothing; leave it at 0 for the crispest\n"
    "result.\n"
    "\n"
    "## Resident vs transient runs\n"
    "The warmed, resident model uses the server-default quantization (q8). A request\n"
    "that sets a `quantize` differing from the resident model builds a **one-off\n"
    "transient model** for that call — weights load fresh, so it is slower and not\n"
    "reused. For the fast path, leave `quantize` unset.\n"
    "\n"
    "## TIPS\n"
    "- For a quick result, call `sync` without `Accept: application/json` to get the\n"
    "  raw bytes straight back (`curl -o out.png`).\n"
    "- Upscaling a large source image to a high `resolution` raises peak memory; the\n"
    "  request can 503 if it does not fit the global memory budget — try the `3b`\n"
    "  variant or a smaller target.\n"
    "- The server never downloads weights. Run `kiapi activate seedvr2:3b` (or\n"
    "  `seedvr2:7b`) ahead of time; until then a request for that model answers 503\n"
    "  (`weights_missing`) naming the `kiapi activate` command to run.\n"
    "\n"
    "## Performance\n"
    "- **3b**: 256→512 q8 first-run peak ~3929 MiB; cached 256→768 peak ~1756 MiB\n"
    "  (measured by an earlier kiapi on Apple Silicon with the real weights).\n"
    "- **7b**: larger variant; estimate only until measured locally.\n"
    "- Demo mode (`kiapi serve --demo`, tiny random-weight models on the MLX CPU\n"
    "  backend, outputs are noise): 3D convolutions are slow on the CPU, so keep demo\n"
    "  inputs and targets small (a 32x32 input with `\"resolution\": 64`).\n"
)

UPSCALE_SUMMARY = "Upscale Seedvr2 Endpoint"

UPSCALE_OPERATION_ID = "upscale_seedvr2_endpoint_v1_image_seedvr2_upscale_post"

UPSCALE_DESCRIPTION = (
    "Upscale one image with diffusion super-resolution (SeedVR2 via mflux).\n"
    "\n"
    "Takes an input `image` (FileRef) and produces a higher-resolution version.\n"
    "SeedVR2 is super-resolution, not prompt-driven generation — there is no\n"
    "prompt. The target size is set by `resolution`: an integer shortest-edge\n"
    "pixel target (16..2048) or a scale factor like `\"2x\"` (up to `4.0x`). The\n"
    "same endpoint serves both `sync` and `async` via `mode`.\n"
    "\n"
    "Sync content negotiation: a single image is produced, so unless the client\n"
    "asks for JSON the raw image bytes are returned with `X-Kiapi-File-Id` /\n"
    "`X-Kiapi-Job-Id` headers — `curl -o out.png` just works. With\n"
    "`Accept: application/json` (or async) the Job JSON is returned, whose\n"
    "`result` follows ImageResponse.\n"
    "\n"
    "A `quantize` differing from the resident model's quantization runs a one-off\n"
    "transient model (slower, not reused). Async returns 202 immediately; poll\n"
    "GET /v1/jobs/{job_id} and fetch the artifact via GET /v1/files/{file_id}."
)
