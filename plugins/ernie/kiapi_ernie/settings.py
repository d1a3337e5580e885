"""Settings of the ernie capability (``KIAPI_ERNIE_<FIELD>`` or the ``[ernie]`` config table).

Each field carries its one-line documentation right below it; ``kiapi config`` shows it.
Imports only msgspec, so the host can read settings without loading mlx or mflux.
"""

from __future__ import annotations

from typing import Any

import msgspec


class ErnieSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Plugin settings; the core fills them from defaults < config file < environment."""

    turbo_path: str | None = None
    "Local directory holding baidu/ERNIE-Image-Turbo (vae/, transformer/, text_encoder/, tokenizer/); unset uses the Hugging Face cache."
    base_path: str | None = None
    "Local directory holding baidu/ERNIE-Image; unset uses the Hugging Face cache."
    resident_quantize: int | None = None
    "Quantization bits of the resident (warm) models (3, 4, 5, 6 or 8); unset chooses from the memory budget: the largest that leaves room for a 1024x1024 job. Requests with another `quantize` run a transient model."
    train_quantize: int = 8
    "Quantization bits used for LoRA training when the request omits `quantize`."
    edit_require_square: bool = False
    "Reject non-square /edit sizes (an old mflux guard; mflux 0.24 runs non-square img2img); 1 turns it on."
    default_width: int = 1024
    "Output width when a request omits `width`."
    default_height: int = 1024
    "Output height when a request omits `height`."
    max_width: int = 2048
    "Largest accepted `width` (a multiple of 16)."
    max_height: int = 2048
    "Largest accepted `height` (a multiple of 16)."
    max_steps: int = 100
    "Largest accepted `steps`."
    lora_cache_mb: float = 512.0
    "Parsed LoRA adapters kept in memory per loaded model (by file id), in MiB; 0 reads the file on every request."
    prompt_cache_entries: int = 32
    "Prompt embeddings kept per loaded model (least recently used dropped first)."
    max_loras: int = 4
    "Most LoRA adapters one request may apply."
    max_lora_mb: float = 2048.0
    "Largest accepted LoRA adapter file, in MiB."
    max_lora_rank: int = 256
    "Largest `lora_rank` (or target rank) a training request may ask for."
    max_train_resolution: int = 2048
    "Largest `max_resolution` a training request may ask for."
    dataset_max_entries: int = 10_000
    "Most entries (files and folders) a training dataset ZIP may hold."
    dataset_max_mb: float = 4096.0
    "Largest total uncompressed size of a training dataset ZIP, in MiB."
    dataset_max_ratio: float = 200.0
    "Largest compression ratio of a dataset ZIP entry (and of the whole archive); zip-bomb guard."
    max_train_epochs: int = 1000
    "Largest `num_epochs` a training request may ask for."
    max_train_batch_size: int = 64
    "Largest `batch_size` a training request may ask for."
    max_train_steps: int = 20_000
    "Most optimizer steps (epochs x batches per epoch) one training job may run."
    max_checkpoints: int = 20
    "Most intermediate checkpoints (`save_frequency`) one training job may store."


def settings_of(settings: Any) -> ErnieSettings:
    """The plugin's settings as the host hands them out (``ctx.settings``, ``job.settings``, the
    loader's ``settings=``), or the defaults when a caller passes none (tests, the CLI's
    ``kiapi check`` building a loader by hand)."""
    return settings if isinstance(settings, ErnieSettings) else ErnieSettings()
