"""Memory numbers for admission: resident weights per quantization and per-request peaks.

Where the numbers come from (first-principles estimates, to be corrected by the host's
measurements of MLX peak memory; none were measured on real weights here, no GPU/Metal):

* **Parameter counts** were read from mflux 0.24.0's module trees (lazy MLX construction,
  nothing allocated): transformer 8.03 B (hidden 4096, 36 blocks, ffn 12288), Mistral-3 text
  encoder 3.43 B (26 layers, hidden 3072, vocab 131072), Flux2 VAE 0.084 B; 11.55 B total.
  Both variants share the architecture.
* **Bytes per parameter**: bf16 = 2. ``nn.quantize`` (group 64) stores ``bits/8`` per weight
  plus a bf16 scale and bias per 64 weights (+0.0625 B). mflux quantizes every Linear and the
  embedding; the VAE's convolutions stay bf16. So q8 ~ 11.5 GB, q4 ~ 6.2 GB, bf16 ~ 21.5 GB (GB = 2**30 bytes).
  On disk (the Hugging Face bf16 snapshot) ~ 23.2 GB per variant.
* **Denoising activations** scale with the image tokens ``(w/16) * (h/16)`` (4096 at 1024^2)
  and the batch (2 with CFG, i.e. guidance > 1): each block keeps ~24 hidden-sized bf16
  tensors per token alive (q/k/v/out, 3 MLP intermediates of 3x hidden, norms, residuals),
  and attention scores for 32 heads when the fused kernel is not used. Steps do **not** add
  memory: every step is evaluated before the next (mflux calls ``mx.eval`` per step), so
  steps only change time; the step count enters as a small per-step graph allowance.
* **VAE decode** runs at full resolution with 128 channels in f32; ~3 such buffers are alive
  at once (LOW_MEMORY decode mode). Encode for edit is the same order.
* **Demo mode** (``params["demo"]``): the tiny model (2 blocks, 64 wide, 13 MB) measured
  21-23 MB per 64 px run and 34-47 MB per training run; the demo estimate is 50 MB plus the
  tiny VAE's full-resolution buffers (64 channels).
* **Training** builds its own model (``TrainingRunner``), so its estimate includes weights at
  the training quantization, plus per-block activations kept for the backward pass
  (36 blocks x tokens at ``max_resolution`` x batch), plus LoRA parameters with AdamW state.
"""

from __future__ import annotations

from typing import Any

GB = 1024**3  # the core counts GB as 2**30 bytes (MLX and mflux do too)
TRANSFORMER_PARAMS = 8.033e9
TEXT_ENCODER_PARAMS = 3.429e9
VAE_PARAMS = 0.084e9
HIDDEN = 4096
HEADS = 32
BLOCKS = 36
DISK_GB = 23.2
_ACTIVE_TENSORS_PER_TOKEN = 24
_VAE_CHANNELS = 128
_VAE_LIVE_BUFFERS = 3
_TEXT_ENCODER_GB = 0.5  # 2048-token Mistral pass (hidden 3072), freed before denoising


def weights_gb(bits: int | None) -> float:
    """Resident weight size in GB at ``bits`` (``None``: bf16)."""
    quantizable = TRANSFORMER_PARAMS + TEXT_ENCODER_PARAMS
    per_param = 2.0 if bits is None else bits / 8 + 4 / 64
    return round((quantizable * per_param + VAE_PARAMS * 2.0) / GB, 2)


WEIGHTS_GB: dict[int | None, float] = {bits: weights_gb(bits) for bits in (None, 3, 4, 5, 6, 8)}
#: The tiny demo model is 13 MB in bf16 (measured on disk); quantized it is smaller still.
DEMO_WEIGHTS_GB: dict[int | None, float] = {bits: 0.02 for bits in (None, 3, 4, 5, 6, 8)}


def _tokens(width: int, height: int) -> int:
    return max(1, (width // 16) * (height // 16))


def demo_gb(width: int, height: int, batch: int = 1) -> float:
    """Tiny demo model: a fixed overhead plus its VAE's full-resolution buffers."""
    return round(0.05 + batch * width * height * 64 * 4 * _VAE_LIVE_BUFFERS / GB, 3)


def image_peak_gb(width: int, height: int, steps: int, guidance: float, *, edit: bool = False) -> float:
    """Peak GB one generate/edit adds on top of the model's weights."""
    batch = 2 if guidance > 1.0 else 1
    tokens = _tokens(width, height)
    per_block = batch * tokens * HIDDEN * 2 * _ACTIVE_TENSORS_PER_TOKEN
    scores = batch * HEADS * tokens * tokens * 2  # upper bound: unfused attention scores
    decode = width * height * _VAE_CHANNELS * 4 * _VAE_LIVE_BUFFERS
    encode = decode if edit else 0
    graph = steps * batch * tokens * 128 * 4  # one latent per step kept by the lazy graph at most
    return round((max(per_block + scores, decode, encode) + graph) / GB + _TEXT_ENCODER_GB, 3)


def estimate_generate(params: dict[str, Any], model: Any = None) -> float:
    if params.get("demo"):
        return demo_gb(params["width"], params["height"])
    return image_peak_gb(params["width"], params["height"], params["steps"], params["guidance"])


def estimate_edit(params: dict[str, Any], model: Any = None) -> float:
    if params.get("demo"):
        return demo_gb(params["width"], params["height"])
    return image_peak_gb(params["width"], params["height"], params["steps"], params["guidance"], edit=True)


def _lora_params(targets: list[dict[str, Any]]) -> int:
    from .trainconfig import count_modules

    total = 0
    for target in targets:
        width = 12288 if "mlp" in target["module_path"] else HIDDEN  # conservative in+out
        total += count_modules([target]) * int(target["rank"]) * (HIDDEN + width)
    return total


def estimate_train(params: dict[str, Any], model: Any = None) -> float:
    """Training peak: its own model at the training quantization + backward activations."""
    side = int(params.get("max_resolution") or 512)
    batch = int(params.get("batch_size") or 1)
    if params.get("demo"):  # its own tiny model: a few MB of weights
        return demo_gb(side, side, batch)
    tokens = _tokens(side, side) * batch
    activations = tokens * HIDDEN * 2 * _ACTIVE_TENSORS_PER_TOKEN * BLOCKS
    scores = batch * HEADS * _tokens(side, side) ** 2 * 2 * BLOCKS
    lora = _lora_params(params.get("lora_layers", {}).get("targets", [])) * 4 * 4  # f32 param, grad, m, v
    encode = side * side * _VAE_CHANNELS * 4 * _VAE_LIVE_BUFFERS
    return round(weights_gb(params.get("quantize")) + (activations + scores + lora + encode) / GB
                 + _TEXT_ENCODER_GB, 2)


def builds_transient_model(params: dict[str, Any]) -> bool:
    """LoRAs are applied to a one-off model built for the request (a second copy of the weights)."""
    return bool(params.get("loras"))
