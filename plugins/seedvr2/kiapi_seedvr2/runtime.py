"""The SeedVR2 runtime: the loader the host calls and the object handlers run.

``load(...)`` (``Model.loader = "kiapi_seedvr2.runtime:load"``) runs on the model thread and
returns a :class:`Seedvr2Runtime` wrapping one ``mflux.models.seedvr2.SeedVR2`` instance.

Progress. mflux's ``SeedVR2.generate_image`` runs: preprocess -> VAE encode -> one DiT step ->
VAE decode -> colour correction, and only the DiT step has callbacks (before/in/after the loop).
To report honest phases we wrap ``encode`` and ``decode`` **on this instance's VAE only**
(instance attributes shadow the class methods; other instances and the class are untouched).
mflux's tiler calls them once per 512 px tile, so the wrappers evaluate each tile, report the
tile fraction and check for cancellation; after the last decode tile comes colour correction.
Without the wrapper the encode of a single-tile image would stay a lazy graph and run inside the
DiT's ``mx.eval``, so "upscaling" would be reported while the encoder still runs.

Cancellation: every report may raise ``JobCanceled`` (the job context checks), which aborts
``generate_image`` at the next tile or at the DiT callbacks; mflux keeps the model usable.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kiapi_core.sdk import is_missing_weights_error

from .settings import DEFAULT_SETTINGS
from .validation import padded_size

Report = Callable[[float | None, str | None], None]

#: (start, end) progress fractions of each phase; loading is the host's, saving the handler's.
ENCODE = (0.02, 0.40)
UPSCALE = (0.40, 0.55)
DECODE = (0.55, 0.93)
COLOUR = 0.93


def _tile_count(height: int, width: int, scale: int, tile: int, overlap: int) -> int:
    """How many tiles mflux's VAETiler visits for an ``height`` x ``width`` grid (latent units)."""
    stride = max(1, tile - overlap)
    count = 0
    for y in range(0, height, stride):
        y_end = min(y + tile, height)
        for x in range(0, width, stride):
            x_end = min(x + tile, width)
            if (y > 0 and (y_end - y) <= overlap) or (x > 0 and (x_end - x) <= overlap):
                continue
            count += 1
    return count


def tile_counts(width: int, height: int, tiling: Any, spatial_scale: int = 8) -> tuple[int, int]:
    """(encode calls, decode calls) mflux 0.24.0 makes for an output of ``width`` x ``height``."""
    pw, ph = padded_size(width, height)
    encode = 1
    if tiling is not None and tiling.vae_encode_tiled:
        t = tiling.vae_encode_tile_size
        if ph > t or pw > t:
            lt = max(1, t // spatial_scale)
            ov = max(0, min(tiling.vae_encode_tile_overlap // spatial_scale, lt - 1))
            encode = _tile_count(-(-ph // spatial_scale), -(-pw // spatial_scale), spatial_scale, lt, ov)
    decode = 1
    if tiling is not None and tiling.vae_decode_tiles_per_dim and tiling.vae_decode_tiles_per_dim > 1:
        lh, lw = ph // spatial_scale, pw // spatial_scale
        lt = max(1, int(tiling.vae_decode_tile_size) // spatial_scale)
        if lh > lt or lw > lt:
            overlap_px = int(tiling.vae_decode_overlap) * spatial_scale
            ov = max(0, min(overlap_px // spatial_scale, lt - 1))
            decode = _tile_count(lh, lw, spatial_scale, lt, ov)
    return encode, decode


class _Run:
    """Per-run state the VAE wrappers and the DiT callbacks report through."""

    def __init__(self, report: Report, encode_tiles: int, decode_tiles: int) -> None:
        self.report = report
        self.encode_tiles, self.decode_tiles = encode_tiles, decode_tiles
        self.encoded = self.decoded = 0
        self.marks: dict[str, float] = {}

    def mark(self, label: str) -> None:
        self.marks[label] = time.perf_counter()

    # --- mflux callbacks (the single DiT step) -------------------------------------------
    def call_before_loop(self, **_: Any) -> None:
        self.mark("upscaling")
        self.report(UPSCALE[0], "upscaling")

    def call_in_loop(self, latents: Any, **_: Any) -> None:
        import mlx.core as mx

        mx.eval(latents)  # the callback fires before mflux evaluates the step: time it honestly
        self.report(UPSCALE[1], None)

    def call_after_loop(self, **_: Any) -> None:
        self.mark("decoding")
        self.report(DECODE[0], "decoding")


class Seedvr2Runtime:
    """One loaded SeedVR2 model (resident or transient)."""

    def __init__(self, model: Any, *, variant: str, quantize: int | None, demo: bool, source: str) -> None:
        self.model = model
        self.variant = variant
        self.quantize = quantize
        self.demo = demo
        self.source = source
        self._run: _Run | None = None
        self._wrap_vae()

    def _wrap_vae(self) -> None:
        import mlx.core as mx

        vae = self.model.vae
        encode, decode = vae.encode, vae.decode  # bound methods of this instance

        def encode_tile(x: Any) -> Any:
            run = self._run
            out = encode(x)
            if run is not None:
                mx.eval(out)
                run.encoded += 1
                span = ENCODE[1] - ENCODE[0]
                run.report(ENCODE[0] + span * min(1.0, run.encoded / run.encode_tiles), None)
            return out

        def decode_tile(z: Any) -> Any:
            run = self._run
            out = decode(z)
            if run is not None:
                mx.eval(out)
                run.decoded += 1
                span = DECODE[1] - DECODE[0]
                run.report(DECODE[0] + span * min(1.0, run.decoded / run.decode_tiles), None)
                if run.decoded == run.decode_tiles:
                    run.mark("colour correction")
                    run.report(COLOUR, "colour correction")
            return out

        vae.encode = encode_tile  # instance attributes: nn.Module keeps plain callables out of params
        vae.decode = decode_tile

    def upscale(self, image_path: Path, *, resolution: int | str, softness: float, seed: int,
                width: int | None = None, height: int | None = None,
                report: Report | None = None) -> tuple[Any, dict[str, float]]:
        """Upscale one image; returns ``(PIL image, measurements)``.

        ``width``/``height`` (the expected output size) only size the tile progress.
        ``report(fraction, label)`` may raise to cancel.
        """
        from mflux.utils.scale_factor import ScaleFactor

        from .validation import scale_factor

        report = report or (lambda fraction, label: None)
        if width is None or height is None:
            encode_tiles = decode_tiles = 1
        else:
            encode_tiles, decode_tiles = tile_counts(width, height, self.model.tiling_config)
        run = _Run(report, encode_tiles, decode_tiles)
        factor = scale_factor(resolution)
        target = ScaleFactor(int(factor) if factor.is_integer() else factor) if factor is not None else int(resolution)

        report(ENCODE[0], "encoding")  # may raise (canceled): nothing is registered yet
        callbacks = self.model.callbacks
        # No MLX counters are read or reset here: the core measures each job's peak itself.
        started = time.perf_counter()
        run.mark("encoding")
        callbacks.register(run)
        self._run = run
        try:
            generated = self.model.generate_image(seed=seed, image_path=image_path, resolution=target,
                                                  softness=softness)
        finally:
            self._run = None
            for name in ("before_loop", "in_loop", "after_loop"):
                hooks = getattr(callbacks, name)
                if run in hooks:
                    hooks.remove(run)
        finished = time.perf_counter()
        order = ["encoding", "upscaling", "decoding", "colour correction"]
        stamps = [run.marks.get(k) for k in order] + [finished]
        phases = {
            f"{label.replace(' ', '_')}_s": round(end - start, 4)
            for label, start, end in zip(order, stamps, stamps[1:], strict=False)
            if start is not None and end is not None
        }
        measurements = {"run_s": round(finished - started, 4), **phases}
        return generated.image, measurements

    def close(self) -> None:
        """Drop the model (the host calls this when it evicts or drops a transient instance,
        then collects garbage and clears MLX's cache itself)."""
        self.model = None


def load(*, model: Any, quantize: int | None, settings: Any = None, demo: bool = False,
         cache_dir: Path | None = None, **options: Any) -> Seedvr2Runtime:
    """Build a SeedVR2 runtime for ``model`` (a kiapi Model declaration) on the model thread."""
    from kiapi_core.sdk import WeightsMissing

    from .guard import install_cumsum_guard
    from .tiny import check_tiny, ensure_tiny_weights, model_config_for, tiny_construction

    if options:
        raise TypeError(f"seedvr2 models take no load options; got {sorted(options)}")
    install_cumsum_guard()  # CPU backend only; see guard.py
    from mflux.models.seedvr2 import SeedVR2

    settings = settings or DEFAULT_SETTINGS
    variant = model.info.get("variant", model.name)
    model_config = model_config_for(variant)
    if demo:
        if cache_dir is None:
            raise ValueError("demo mode needs a cache_dir for the tiny weights")
        path = ensure_tiny_weights(Path(cache_dir), variant)
        with tiny_construction():
            instance = SeedVR2(quantize=quantize, model_path=str(path), model_config=model_config)
        check_tiny(instance)
        _materialize(instance)
        return Seedvr2Runtime(instance, variant=variant, quantize=quantize, demo=True, source=str(path))

    local = getattr(settings, f"path_{variant}", None)
    source = str(Path(local).expanduser()) if local else model_config.model_name
    try:
        instance = SeedVR2(quantize=quantize, model_path=source, model_config=model_config)
    except Exception as exc:
        if is_missing_weights_error(exc):
            raise WeightsMissing(
                f"seedvr2 {variant} weights are not available ({type(exc).__name__}: {exc}). Run "
                f"`kiapi activate seedvr2:{variant}` or set KIAPI_SEEDVR2_PATH_{variant.upper()} to a directory "
                f"holding {', '.join(model.info.get('files', ()))}."
            ) from exc
        raise
    _materialize(instance)
    return Seedvr2Runtime(instance, variant=variant, quantize=quantize, demo=False, source=source)


def _materialize(instance: Any) -> None:
    """Read the weights now: mflux leaves SeedVR2's parameters lazy (unlike ERNIE, it never calls
    ``mx.eval(model)``), which would move the disk read into the first request's encode/DiT phase
    and hide the weights from the host's load-time memory measurement."""
    import mlx.core as mx

    mx.eval(instance.parameters())


