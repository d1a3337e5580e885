"""Loading ERNIE-Image through mflux, and running it with job progress and cancellation.

``load`` is the Model loader the host calls on the model thread (``"kiapi_ernie.runtime:load"``);
it returns an :class:`ErnieRuntime`, which handlers call with their job. The host frees a
runtime with :meth:`ErnieRuntime.close`.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Any

from kiapi_core.errors import InvalidInput, WeightsMissing
from kiapi_core.weights import is_missing_weights_error

from . import loras
from .settings import ErnieSettings
from .variants import VARIANTS, Variant

log = logging.getLogger("kiapi.ernie")

#: Progress fractions of the phases a generate/edit job goes through (loading is the host's).
DENOISE_START, DENOISE_END, DECODE_AT = 0.05, 0.90, 0.92


def model_config(variant: Variant):
    from mflux.models.common.config import ModelConfig

    return ModelConfig.ernie_image_turbo() if variant.name == "turbo" else ModelConfig.ernie_image()


def model_source(variant: Variant, settings: Any, demo: bool, cache_dir: Path | None) -> str | None:
    """Where the weights come from: the tiny demo dir, the local-dir setting, or ``None``
    (mflux then resolves the repo id at its pinned revision in the Hugging Face cache)."""
    if demo:
        from .tiny import ensure_tiny_dir

        return str(ensure_tiny_dir(cache_dir or Path.cwd() / ".kiapi-ernie-cache"))
    local = getattr(settings, variant.path_setting, None) if settings is not None else None
    if local:
        path = Path(local).expanduser()
        if not (path / "transformer").is_dir():
            raise WeightsMissing(
                f"{path_setting_env(variant)}={local} does not hold ERNIE weights (no transformer/ folder); "
                f"point it at a download of {variant.repo} or run `kiapi activate ernie:{variant.name}`"
            )
        return str(path)
    return None


def path_setting_env(variant: Variant) -> str:
    return f"KIAPI_ERNIE_{variant.path_setting.upper()}"


def build_model(variant: Variant, *, quantize: int | None, source: str | None, demo: bool,
                lora_paths: list[str] | None = None, lora_scales: list[float] | None = None):
    """Construct ``ErnieImage`` (tiny inside :func:`tiny.tiny_construct` in demo mode)."""
    from mflux.models.ernie_image import ErnieImage

    # bake_lora=False keeps LoRALinear layers: baking into quantized weights loses the part of
    # the update smaller than the quantization step (mflux warns "baked weights hold 68%").
    kwargs = dict(quantize=quantize, model_path=source, lora_paths=lora_paths, lora_scales=lora_scales,
                  bake_lora=False, model_config=model_config(variant))
    if demo:
        from .tiny import assert_tiny, tiny_construct

        with tiny_construct():
            model = ErnieImage(**kwargs)
        assert_tiny(model)
        return model
    return ErnieImage(**kwargs)


def load(*, model, quantize: int | None, settings: Any = None, demo: bool = False,
         cache_dir: Path | None = None, lora_paths: list[str] | None = None,
         lora_scales: list[float] | None = None, **options: Any) -> ErnieRuntime:
    """The Model loader: build the variant ``model.name`` at ``quantize`` bits, with LoRAs."""
    if options:
        raise TypeError(f"unknown ernie runtime options: {', '.join(sorted(options))}")
    variant = VARIANTS[model.name]
    settings = settings if settings is not None else ErnieSettings()
    source = model_source(variant, settings, demo, cache_dir)
    try:
        ernie = build_model(variant, quantize=quantize, source=source, demo=demo,
                            lora_paths=[str(p) for p in lora_paths] if lora_paths else None,
                            lora_scales=list(lora_scales) if lora_scales else None)
    except Exception as exc:
        lora_file_missing = isinstance(exc, FileNotFoundError) and "LoRA" in str(exc)
        if is_missing_weights_error(exc) and not lora_file_missing:
            where = f"{path_setting_env(variant)}={source}" if source and not demo else "the Hugging Face cache"
            raise WeightsMissing(
                f"ernie {variant.name} weights ({variant.repo}) are not available from {where} "
                f"({type(exc).__name__}: {exc}). Run `kiapi activate ernie:{variant.name}`, or set "
                f"{path_setting_env(variant)} to a local directory holding vae/, transformer/, text_encoder/ "
                "and tokenizer/."
            ) from exc
        if lora_paths and (isinstance(exc, ValueError) or lora_file_missing):
            # mflux's LoRALoader: a block the model lacks, half a pair, DoRA, unreadable file ...
            raise InvalidInput(f"a LoRA does not fit the ernie {variant.name} model: {exc}") from exc
        raise
    if lora_paths:
        misfits = loras.applied_shape_problems(ernie.transformer)
        if misfits:
            del ernie
            gc.collect()
            shown = "; ".join(misfits[:8]) + (f"; and {len(misfits) - 8} more" if len(misfits) > 8 else "")
            raise InvalidInput(f"a LoRA does not fit the ernie {variant.name} model: {shown}")
    return ErnieRuntime(ernie, variant=variant, quantize=quantize, demo=demo,
                        lora_paths=list(lora_paths or ()), source=source)


class MfluxProgress:
    """mflux callback: reports ``denoising step k/n`` and ``decoding``; raising aborts.

    k is computed from the callback's timestep ``t`` and ``config.init_time_step`` (img2img
    starts late), never from tqdm (its counter reads 0 inside callbacks).
    """

    def __init__(self, job) -> None:
        self.job = job
        self.steps_done = 0

    def call_before_loop(self, seed, prompt, latents, config, **kwargs) -> None:
        n = max(1, config.num_inference_steps - config.init_time_step)
        self.job.progress(DENOISE_START, f"denoising step 0/{n}")

    def call_in_loop(self, t, seed, prompt, latents, config, time_steps) -> None:
        import mlx.core as mx

        self.job.check_canceled()  # stop before computing this step
        mx.eval(latents)  # mflux evaluates right after this call anyway; makes "step k done" true
        self.steps_done = t - config.init_time_step + 1
        n = max(1, config.num_inference_steps - config.init_time_step)
        self.job.progress(DENOISE_START + (DENOISE_END - DENOISE_START) * self.steps_done / n,
                          f"denoising step {self.steps_done}/{n}")

    def call_after_loop(self, seed, prompt, latents, config) -> None:
        self.job.progress(DECODE_AT, "decoding")


class ErnieRuntime:
    """A loaded ERNIE-Image model plus what it was built with."""

    def __init__(self, model, *, variant: Variant, quantize: int | None, demo: bool,
                 lora_paths: list[str], source: str | None) -> None:
        self.model = model
        self.variant = variant
        self.quantize = quantize
        self.demo = demo
        self.lora_paths = lora_paths
        self.source = source

    @property
    def num_layers(self) -> int:
        return len(self.model.transformer.layers)

    def generate(self, job, *, seed: int, prompt: str, negative_prompt: str | None, steps: int,
                 width: int, height: int, guidance: float, scheduler: str,
                 image_path: str | Path | None = None, image_strength: float | None = None):
        """Run one txt2img (or img2img with ``image_path``) and return the PIL image."""
        if self.model is None:
            raise RuntimeError("this ERNIE runtime was closed")
        bridge = MfluxProgress(job)
        callbacks = self.model.callbacks
        callbacks.register(bridge)
        try:
            result = self.model.generate_image(
                seed=seed, prompt=prompt, negative_prompt=negative_prompt, num_inference_steps=steps,
                width=width, height=height, guidance=guidance, scheduler=scheduler,
                image_path=str(image_path) if image_path is not None else None,
                image_strength=image_strength,
            )
        finally:
            # CallbackRegistry has no unregister: take the bridge out of every list it joined.
            for name in ("before_loop", "in_loop", "after_loop", "interrupt"):
                registered = getattr(callbacks, name, [])
                while bridge in registered:
                    registered.remove(bridge)
        return result.image

    def close(self) -> None:
        """Free the model's memory (the host calls this when it unloads the runtime)."""
        model, self.model = self.model, None
        if model is not None:
            try:
                model.prompt_cache.clear()
            except AttributeError:
                pass
            del model
        gc.collect()
        try:
            import mlx.core as mx

            mx.clear_cache()
        except Exception:  # pragma: no cover - freeing must never fail the job
            log.debug("mx.clear_cache failed", exc_info=True)
