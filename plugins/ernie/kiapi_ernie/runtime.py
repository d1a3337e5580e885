"""Loading ERNIE-Image through mflux, and running it with job progress and cancellation.

``load`` is the Model loader the host calls on the model thread (``"kiapi_ernie.runtime:load"``);
it returns an :class:`ErnieRuntime`, which handlers call with their job. The host frees a
runtime with :meth:`ErnieRuntime.close`.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

from kiapi_core.sdk import WeightsMissing, is_missing_weights_error

from . import adapters
from .adapters import AdapterCache
from .settings import ErnieSettings, settings_of
from .variants import VARIANTS, Variant

#: Progress fractions of the phases a generate/edit job goes through (loading is the host's).
DENOISE_START, DENOISE_END, DECODE_AT = 0.05, 0.90, 0.92


def mflux_image_strength(strength: float, steps: int) -> float:
    """The contract's ``image_strength`` (0 = keep the input, 1 = ignore it; diffusers/A1111)
    as mflux's (the opposite: mflux starts denoising at step ``int(steps * s)``).

    Clamped so both ends behave: any strength below 1 runs at least one denoising step and
    skips at least one (0.0 is a light touch-up of the input, not a copy of it), and 1.0 is
    mflux's 0.0, a generation that ignores the input. With one step there is nothing to skip:
    below 0.5 the input is kept as it is, from 0.5 it is ignored.
    """
    strength = min(1.0, max(0.0, float(strength)))
    if strength >= 1.0 or steps <= 0:
        return 0.0
    if steps == 1:
        return 1.0 if strength < 0.5 else 0.0
    start = min(steps - 1, max(1, int(steps * (1.0 - strength))))
    return (start + 0.5) / steps  # int(steps * s) == start, free of float rounding


def model_config(variant: Variant):
    from mflux.models.common.config import ModelConfig

    return ModelConfig.ernie_image_turbo() if variant.name == "turbo" else ModelConfig.ernie_image()


def local_dir(variant: Variant, settings: ErnieSettings) -> str | None:
    """The local weights directory the settings name for ``variant`` (``turbo_path``/``base_path``)."""
    return {"turbo_path": settings.turbo_path, "base_path": settings.base_path}[variant.path_setting]


def model_source(variant: Variant, settings: ErnieSettings, demo: bool, cache_dir: Path | None) -> str | None:
    """Where the weights come from: the tiny demo dir, the local-dir setting, or ``None``
    (mflux then resolves the repo id at its pinned revision in the Hugging Face cache)."""
    if demo:
        from .tiny import ensure_tiny_dir

        return str(ensure_tiny_dir(cache_dir or Path.cwd() / ".kiapi-ernie-cache"))
    local = local_dir(variant, settings)
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


def build_model(variant: Variant, *, quantize: int | None, source: str | None, demo: bool):
    """Construct ``ErnieImage`` (tiny inside :func:`tiny.tiny_construct` in demo mode)."""
    from mflux.models.ernie_image import ErnieImage

    kwargs = dict(quantize=quantize, model_path=source, model_config=model_config(variant))
    if demo:
        from .tiny import assert_tiny, tiny_construct

        with tiny_construct():
            model = ErnieImage(**kwargs)
        assert_tiny(model)
        return model
    return ErnieImage(**kwargs)


def load(*, model, quantize: int | None, settings: Any = None, demo: bool = False,
         cache_dir: Path | None = None, **options: Any) -> ErnieRuntime:
    """The Model loader: build the variant ``model.name`` at ``quantize`` bits.

    LoRAs are not a load option: they are applied to the loaded model per job
    (:meth:`ErnieRuntime.loras`), so a LoRA request reuses the resident weights.
    """
    if options:
        raise TypeError(f"unknown ernie runtime options: {', '.join(sorted(options))}")
    variant = VARIANTS[model.name]
    settings = settings_of(settings)
    source = model_source(variant, settings, demo, cache_dir)
    try:
        ernie = build_model(variant, quantize=quantize, source=source, demo=demo)
    except Exception as exc:
        if is_missing_weights_error(exc):
            where = f"{path_setting_env(variant)}={source}" if source and not demo else "the Hugging Face cache"
            raise WeightsMissing(
                f"ernie {variant.name} weights ({variant.repo}) are not available from {where} "
                f"({type(exc).__name__}: {exc}). Run `kiapi activate ernie:{variant.name}`, or set "
                f"{path_setting_env(variant)} to a local directory holding vae/, transformer/, text_encoder/ "
                "and tokenizer/."
            ) from exc
        raise
    bound_prompt_cache(ernie, settings.prompt_cache_entries)
    return ErnieRuntime(ernie, variant=variant, quantize=stored_bits(ernie, quantize), demo=demo, source=source,
                        adapter_cache_mb=settings.lora_cache_mb)


class BoundedCache(OrderedDict):
    """mflux's prompt cache (a plain dict it only reads, writes and clears) with an LRU bound."""

    def __init__(self, max_entries: int) -> None:
        super().__init__()
        self.max_entries = max(0, int(max_entries))

    def __getitem__(self, key):
        value = super().__getitem__(key)
        self.move_to_end(key)
        return value

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.max_entries:
            self.popitem(last=False)


def bound_prompt_cache(ernie: Any, max_entries: int) -> None:
    """Replace the model's unbounded prompt cache (every distinct prompt's embeddings, kept for
    the model's lifetime: up to ~50 MB each at 2048 tokens with CFG) by a bounded one."""
    cache = BoundedCache(max_entries)
    cache.update(getattr(ernie, "prompt_cache", {}) or {})
    ernie.prompt_cache = cache


def stored_bits(ernie: Any, requested: int | None) -> int | None:
    """The bits the weights really have: mflux keeps a pre-quantized directory's own bits."""
    bits = getattr(ernie, "bits", None)
    return bits if isinstance(bits, int) else requested


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

    def __init__(self, model, *, variant: Variant, quantize: int | None, demo: bool, source: str | None,
                 adapter_cache_mb: float = 512.0) -> None:
        self.model = model
        self.variant = variant
        self.quantize = quantize
        self.demo = demo
        self.source = source
        self.adapters = AdapterCache(int(adapter_cache_mb * 2**20))

    def loras(self, files: list[tuple[str, str]], scales: list[float]):
        """Context manager: the adapters ``files`` ((file id, path) pairs) applied at ``scales``
        to this model for the block, taken off afterwards. Yields (warnings, adapter bytes,
        files read from disk)."""
        if self.model is None:
            raise RuntimeError("this ERNIE runtime was closed")
        got = [self.adapters.get(file_id, path) for file_id, path in files]
        read = sum(1 for _, hit in got if not hit)
        nbytes = sum(adapter.nbytes for adapter, _ in got)
        return _LoraScope(adapters.applied(self.model.transformer, [a for a, _ in got], scales), nbytes, read)

    @property
    def num_layers(self) -> int:
        return len(self.model.transformer.layers)

    def generate(self, job, *, seed: int, prompt: str, negative_prompt: str | None, steps: int,
                 width: int, height: int, guidance: float, scheduler: str,
                 image_path: str | Path | None = None, image_strength: float | None = None):
        """Run one txt2img (or img2img with ``image_path``) and return the PIL image.

        ``image_strength`` is the contract's (lower keeps more of the input); it is mapped to
        mflux's opposite convention here, in one place (:func:`mflux_image_strength`).
        """
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
                image_strength=None if image_strength is None else mflux_image_strength(image_strength, steps),
            )
        finally:
            # CallbackRegistry has no unregister: take the bridge out of every list it joined.
            for name in ("before_loop", "in_loop", "after_loop", "interrupt"):
                registered = getattr(callbacks, name, [])
                while bridge in registered:
                    registered.remove(bridge)
        return result.image

    def close(self) -> None:
        """Drop the model (the host calls this when it unloads the runtime, then collects
        garbage and clears MLX's cache itself: doing it here too cost a second collection)."""
        model, self.model = self.model, None
        if model is not None:
            try:
                model.prompt_cache.clear()
            except AttributeError:
                pass
            self.adapters.clear()
            del model


class _LoraScope(contextlib.AbstractContextManager):
    """What :meth:`ErnieRuntime.loras` returns: the applied-adapters block and its figures."""

    def __init__(self, scope, nbytes: int, read: int) -> None:
        self._scope = scope
        self.nbytes = nbytes
        self.read = read

    def __enter__(self) -> tuple[list[str], int, int]:
        return self._scope.__enter__(), self.nbytes, self.read

    def __exit__(self, *exc):
        return self._scope.__exit__(*exc)
