"""Memory numbers for admission: resident weights per quantization and per-request peaks.

Where the numbers come from (first-principles estimates, to be corrected by the host's
measurements of MLX peak memory; none were measured on real weights here, no GPU/Metal):

* **Parameter counts** were read from mflux 0.24.0's module trees (lazy MLX construction,
  nothing allocated): transformer 8.03 B (hidden 4096, 36 blocks, ffn 12288), Mistral-3 text
  encoder 3.43 B (26 layers, hidden 3072, vocab 131072), Flux2 VAE 0.084 B; 11.55 B total.
  Both variants share the architecture.
* **Bytes per parameter**: bf16 = 2. ``nn.quantize`` (group 64) stores ``bits/8`` per weight
  plus a bf16 scale and bias per 64 weights (+0.0625 B). mflux quantizes every Linear and the
  embedding; the VAE's convolutions stay bf16. So q8 ~ 11.5 GiB, q4 ~ 6.2 GiB, bf16 ~ 21.5 GiB.
  On disk (the Hugging Face bf16 snapshot) ~ 23.2 GB per variant.
* **Denoising activations** scale with the image tokens ``(w/16) * (h/16)`` (4096 at 1024^2)
  and the batch (2 with CFG, i.e. guidance > 1): the running block keeps ~24 hidden-sized bf16
  tensors per token alive (q/k/v/out, 3 MLP intermediates of 3x hidden, norms, residuals).
  Attention is ``mx.fast.scaled_dot_product_attention``, which never builds the S x S score
  matrix, so nothing grows with the tokens squared (2048^2 is 16,384 tokens, not 2.7e8 scores). Steps do **not** add
  memory: every step is evaluated before the next (mflux calls ``mx.eval`` per step), so
  steps only change time; the step count enters as a small per-step graph allowance.
* **VAE decode** runs at full resolution with 128 channels in f32; ~3 such buffers are alive
  at once (LOW_MEMORY decode mode). Encode for edit is the same order.
* **Demo mode** (``params.demo``): the tiny model (2 blocks, 64 wide, 13 MB) measured
  21-23 MB per 64 px run and 34-47 MB per training run; the demo estimate is 50 MB plus the
  tiny VAE's full-resolution buffers (64 channels).
* **Training** builds its own model (``TrainingRunner``), so its estimate includes weights at
  the training quantization, plus per-block activations kept for the backward pass
  (tokens at ``max_resolution`` x batch: each of the 36 blocks keeps ~0.2 MB per token, and the
  block being differentiated needs ~0.46 MB per token at its peak; measured at real width on
  stacks of one and three blocks), plus LoRA parameters with AdamW state. ``low_ram`` turns on
  mflux's gradient checkpointing: each block then keeps only its input (~25x less).
* **LoRA** adapters are applied to the loaded model (no second copy): a request counts its
  adapter files' size (``params.lora_mb``, filled in by the check) x 1.5.
"""

from __future__ import annotations

from typing import Any

from kiapi_core.sdk import RequestContext

from .params import EditParams, GenerateParams, TrainParams

GIB = 1024**3  # memory is counted in GiB (2**30 bytes), as the core, MLX and mflux do
TRANSFORMER_PARAMS = 8.033e9
TEXT_ENCODER_PARAMS = 3.429e9
VAE_PARAMS = 0.084e9
HIDDEN = 4096
BLOCKS = 36
DISK_GB = 23.2
_ACTIVE_TENSORS_PER_TOKEN = 36  # measured ~31 at real width (0.24 MB per token per block)
_VAE_CHANNELS = 128
_VAE_LIVE_BUFFERS = 3
_TEXT_ENCODER_GB = 0.5  # 2048-token Mistral pass (hidden 3072), freed before denoising


def weights_gib(bits: int | None) -> float:
    """Resident weight size in GiB at ``bits`` (``None``: bf16)."""
    quantizable = TRANSFORMER_PARAMS + TEXT_ENCODER_PARAMS
    per_param = 2.0 if bits is None else bits / 8 + 4 / 64
    return round((quantizable * per_param + VAE_PARAMS * 2.0) / GIB, 2)


WEIGHTS_GIB: dict[int | None, float] = {bits: weights_gib(bits) for bits in (None, 3, 4, 5, 6, 8)}
#: The tiny demo model is 13 MB in bf16 (measured on disk); quantized it is smaller still.
DEMO_WEIGHTS_GIB: dict[int | None, float] = {bits: 0.02 for bits in (None, 3, 4, 5, 6, 8)}


def _tokens(width: int, height: int) -> int:
    return max(1, (width // 16) * (height // 16))


#: Training, in hidden-sized bf16 tensors per token (8 KB each at real width), measured at real
#: width on stacks of one and three blocks (tests/test_ernie_real_geometry.py):
#: the backward of the block being differentiated needs ~57 at its peak (0.46 MB per token, the
#: ~0.5 GiB per 512^2 sample often quoted per block) ...
_TRAIN_WORKING_TENSORS = 66
#: ... while every other block keeps ~25 for the backward pass (0.20 MB per token) ...
_TRAIN_KEPT_TENSORS = 30
#: ... or ~1 (its input) with gradient checkpointing, which recomputes the rest.
_TRAIN_KEPT_CHECKPOINTED = 2
#: Caption tokens per training sample (mflux pads a batch to its longest caption).
_CAPTION_TOKENS = 64
#: Resident quantizations tried, best first, when the setting leaves the choice to the budget.
RESIDENT_CHOICES = (8, 6, 5, 4, 3)
#: The job a chosen resident quantization must leave room for.
ROOM_FOR = (1024, 1024)


def demo_gb(width: int, height: int, batch: int = 1) -> float:
    """Tiny demo model: a fixed overhead plus its VAE's full-resolution buffers."""
    return round(0.05 + batch * width * height * 64 * 4 * _VAE_LIVE_BUFFERS / GIB, 3)


def inference_block_gb(tokens: int, batch: int = 1) -> float:
    """What one transformer block holds while it runs at inference (only one runs at a time).

    ``mx.fast.scaled_dot_product_attention`` never materialises the tokens x tokens score
    matrix, so nothing here grows with tokens squared.
    """
    return batch * tokens * HIDDEN * 2 * _ACTIVE_TENSORS_PER_TOKEN / GIB


def train_working_gb(tokens: int) -> float:
    """The backward working set of the block being differentiated (``tokens``: all samples')."""
    return tokens * HIDDEN * 2 * _TRAIN_WORKING_TENSORS / GIB


def train_kept_gb(tokens: int, *, checkpointing: bool) -> float:
    """What each other block keeps for the backward pass."""
    return tokens * HIDDEN * 2 * (_TRAIN_KEPT_CHECKPOINTED if checkpointing else _TRAIN_KEPT_TENSORS) / GIB


def train_activations_gb(tokens: int, blocks: int, *, checkpointing: bool) -> float:
    """Peak training activations over ``blocks`` blocks."""
    return (blocks - 1) * train_kept_gb(tokens, checkpointing=checkpointing) + train_working_gb(tokens)


def image_peak_gb(width: int, height: int, steps: int, guidance: float, *, edit: bool = False) -> float:
    """Peak GiB one generate/edit adds on top of the model's weights."""
    batch = 2 if guidance > 1.0 else 1
    tokens = _tokens(width, height)
    per_block = inference_block_gb(tokens, batch) * GIB
    decode = width * height * _VAE_CHANNELS * 4 * _VAE_LIVE_BUFFERS
    encode = decode if edit else 0
    graph = steps * batch * tokens * 128 * 4  # one latent per step kept by the lazy graph at most
    return round((max(per_block, decode, encode) + graph) / GIB + _TEXT_ENCODER_GB, 3)


def lora_gb(params: GenerateParams) -> float:
    """Adapters applied to the loaded model: their tensors plus the per-layer casts at run time."""
    return (params.lora_mb or 0.0) * 1.5 / 1024


def estimate_generate(params: GenerateParams, ctx: RequestContext) -> float:
    """Peak GiB one generate adds on top of the resident weights."""
    if params.demo:
        return demo_gb(params.width, params.height) + lora_gb(params)
    return image_peak_gb(params.width, params.height, params.steps, params.guidance) + lora_gb(params)


def estimate_edit(params: EditParams, ctx: RequestContext) -> float:
    """Peak GiB one edit adds on top of the resident weights (generate's plus the VAE encode)."""
    if params.demo:
        return demo_gb(params.width, params.height) + lora_gb(params)
    return image_peak_gb(params.width, params.height, params.steps, params.guidance, edit=True) + lora_gb(params)


def _lora_params(targets: list[dict[str, Any]]) -> int:
    from .trainconfig import count_modules

    total = 0
    for target in targets:
        width = 12288 if "mlp" in target["module_path"] else HIDDEN  # conservative in+out
        total += count_modules([target]) * int(target["rank"]) * (HIDDEN + width)
    return total


def train_gb(params: TrainParams, *, low_ram: bool | None = None) -> float:
    """Training peak, its own model included; ``low_ram`` (default: the params') turns on
    mflux's gradient checkpointing."""
    low_ram = params.low_ram if low_ram is None else low_ram
    side, batch = params.max_resolution, params.batch_size
    if params.demo:  # its own tiny model: a few MB of weights
        return demo_gb(side, side, batch)
    tokens = (_tokens(side, side) + _CAPTION_TOKENS) * batch
    kept = train_activations_gb(tokens, BLOCKS, checkpointing=low_ram)
    lora = _lora_params(params.targets) * 4 * 4 / GIB  # f32 param, grad, m, v
    encode = side * side * _VAE_CHANNELS * 4 * _VAE_LIVE_BUFFERS / GIB
    return round(weights_gib(params.quantize) + max(kept, encode) + lora + _TEXT_ENCODER_GB, 2)


def estimate_train(params: TrainParams, ctx: RequestContext) -> float:
    """Training peak: its own model at the training quantization + backward activations."""
    return train_gb(params)


def choose_resident_quantize(budget_gb: float, steps: int, guidance: float) -> int:
    """The largest of 8/6/5/4/3 bits whose weights leave room for a 1024^2 job (3 if none does)."""
    room = image_peak_gb(*ROOM_FOR, steps, guidance)
    for bits in RESIDENT_CHOICES:
        if WEIGHTS_GIB[bits] + room <= budget_gb:
            return bits
    return RESIDENT_CHOICES[-1]
