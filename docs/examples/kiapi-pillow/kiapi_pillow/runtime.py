"""The model loader: the "runtime" of a filter is a resampler bound to it.

Pillow is imported here, inside the loader, and never at package import time. A diffusion
plugin does the same with mlx or torch, where the import alone takes seconds.
"""

from typing import Any


class Resampler:
    """Resizes PIL images with one resampling filter."""

    def __init__(self, name: str) -> None:
        from PIL import Image

        self.name = name.lower()
        self.filter = Image.Resampling[name]

    def resize(self, image: Any, size: tuple[int, int]) -> Any:
        return image.resize(size, resample=self.filter)


def load(model, **options: Any) -> Resampler:
    """Called on the model thread as ``load(model=..., quantize=..., settings=..., ...)``."""
    return Resampler(model.info["filter"])
