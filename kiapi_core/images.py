"""Image helpers shared by every image capability: encoding outputs and checking inputs.

Pillow is imported inside the functions so that importing the core stays light.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Literal

from .errors import InvalidInput

ImageFormat = Literal["png", "jpeg", "webp"]
MEDIA_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS: dict[str, str] = {"png": "png", "jpeg": "jpg", "webp": "webp"}
#: Formats accepted as image inputs: PNG, JPEG and WebP, as documented. MPO is how Pillow names
#: a JPEG carrying extra pictures (many phone and camera photos); it is a JPEG and its first
#: picture is used. GIF, BMP and TIFF are refused: no model here wants animation, and they are
#: rarely what a user meant to send.
INPUT_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "MPO"})
#: Memory one decoded input pixel takes on its way into a model (RGBA bytes, then float32
#: channels and a copy): counted in the job's memory admission.
INPUT_BYTES_PER_PIXEL = 16


def encode_image(image: Any, format: ImageFormat = "png", quality: int = 90) -> bytes:
    """Encode a PIL image as png, jpeg or webp (``quality`` applies to jpeg and webp)."""
    buffer = io.BytesIO()
    if format == "jpeg":
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        image.save(buffer, format="JPEG", quality=quality)
    elif format == "webp":
        image.save(buffer, format="WEBP", quality=quality)
    elif format == "png":
        image.save(buffer, format="PNG")
    else:  # pragma: no cover - the request schemas only allow the three above
        raise ValueError(f"unsupported image format {format!r}")
    return buffer.getvalue()


def probe_image(path: Path, *, max_pixels: int, what: str = "image") -> tuple[int, int, str]:
    """Check that ``path`` holds a complete image of a supported format within ``max_pixels``.

    Returns ``(width, height, pillow_format)``; raises :class:`InvalidInput` (400) with a
    sentence the client can act on otherwise. Decodes the whole image, so truncated files fail.
    """
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow warns from ~89 M pixels; our own limit (KIAPI_MAX_IMAGE_PIXELS) decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                fmt = image.format or "?"
                if fmt not in INPUT_FORMATS:
                    raise InvalidInput(f"{what} is a {fmt} image; send PNG, JPEG or WebP (convert it first)")
                if width * height > max_pixels:
                    raise InvalidInput(
                        f"{what} is {width}x{height} = {width * height} pixels, over the limit of "
                        f"{max_pixels} (KIAPI_MAX_IMAGE_PIXELS); send a smaller image"
                    )
                image.load()
    except InvalidInput:
        raise
    except UnidentifiedImageError:
        raise InvalidInput(f"{what} is not a readable image; send PNG, JPEG or WebP") from None
    except Image.DecompressionBombError as exc:
        raise InvalidInput(f"{what} is refused as a decompression bomb ({_without(exc, path)}); "
                           "send a smaller image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidInput(f"{what} could not be decoded ({_without(exc, path)}); is the file complete?") from None
    return width, height, fmt


def _without(exc: BaseException, path: Path) -> str:
    """The exception's message without the server's file path (clients must not see it)."""
    return str(exc).replace(str(path), "the file").replace(path.name, "the file") or type(exc).__name__
