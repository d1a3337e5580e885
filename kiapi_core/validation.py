"""Validation helpers every capability shares, so plugins say things the same way.

* :class:`Problems` collects every problem of a request and raises them together (a 422 whose
  ``errors`` lists each field and its fix), instead of making the client fix one at a time;
* :func:`resolve_seed` and :func:`resolve_quantize` resolve the two parameters every model-backed
  image request has, with one range and one message;
* :func:`ref_summary` is how a FileRef is recorded in job params: ids and URLs without query
  strings or credentials, never inline data.
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .errors import InvalidRequest, KiapiError

#: Seeds are unsigned 64-bit integers (MLX's random key); drawn ones stay in 32 bits so they
#: are easy to read and retype.
MAX_SEED = 2**64 - 1
#: Quantization levels MLX supports for these models (group size 64).
QUANTIZE_LEVELS = (3, 4, 5, 6, 8)


class Problems:
    """Collects ``(field, detail)`` problems; :meth:`raise_if_any` raises them all at once."""

    def __init__(self) -> None:
        self.items: list[dict[str, str]] = []

    def add(self, field: str, detail: str) -> None:
        self.items.append({"field": field, "detail": detail})

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self, error: type[KiapiError] = InvalidRequest) -> None:
        if not self.items:
            return
        detail = "; ".join(item["detail"] for item in self.items)
        extra: dict[str, Any] = {"errors": self.items}
        if len(self.items) == 1:
            extra["field"] = self.items[0]["field"]
        raise error(detail, **extra)


def draw_seed() -> int:
    return secrets.randbelow(2**32)


def resolve_seed(seed: int | None, problems: Problems, field: str = "seed") -> int | None:
    """The request's seed, or a freshly drawn one when omitted (recorded so runs repeat)."""
    if seed is None:
        return draw_seed()
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        problems.add(field, f"{field} must be an integer from 0 to 2**64-1, or omitted for a random one; "
                            f"got {seed!r}")
        return None
    return seed


def resolve_quantize(quantize: int | None, default: int | None, problems: Problems,
                     field: str = "quantize", default_means: str = "the resident model's") -> int | None:
    """The bits to run with: ``default`` when omitted, else one of QUANTIZE_LEVELS.
    ``default_means`` names what the default is in the message (training has its own)."""
    if quantize is None:
        return default
    if isinstance(quantize, bool) or quantize not in QUANTIZE_LEVELS:
        levels = ", ".join(map(str, QUANTIZE_LEVELS))
        bits = f"q{default}" if default else "unquantized"
        problems.add(field, f"{field} must be one of {levels}, or omitted for {default_means} {bits}; "
                            f"got {quantize!r}")
        return None
    return quantize


def ref_summary(ref: Any) -> dict[str, Any]:
    """A FileRef (Struct or dict) as recorded in params: never inline data or URL secrets."""
    get = ref.get if isinstance(ref, dict) else lambda name, default=None: getattr(ref, name, default)
    if get("file_id") is not None:
        return {"type": "file_id", "file_id": get("file_id")}
    url = get("url")
    if isinstance(url, str):
        return {"type": "url", "url": strip_url_secrets(url)}
    data_url = get("data_url")
    if isinstance(data_url, str):
        head = data_url[5:data_url.find(",")] if data_url.startswith("data:") else ""
        return {"type": "data_url", "media_type": head.split(";")[0] or None, "chars": len(data_url)}
    return {"type": str(get("type", "unknown"))}


def strip_url_secrets(url: str) -> str:
    """``url`` without credentials, query string or fragment (tokens often travel there)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "<unparsable URL, not recorded>"


def redact(value: Any) -> Any:
    """``value`` with every FileRef-shaped dict reduced to :func:`ref_summary`: job params never
    carry inline data or URL secrets, whatever a plugin's ``prepare`` or ``check`` returned."""
    if isinstance(value, dict):
        if value.get("type") in ("data_url", "url") and ({"data_url", "url"} & value.keys()):
            return ref_summary(value)
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value
