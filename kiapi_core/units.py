"""The two size units kiapi uses, and the rule for naming them.

* **GiB** (2**30 bytes) for memory: what plugins declare (``Model.weights_gib``,
  ``WeightFiles.size_gib``, ``estimate`` results), the memory budget and every memory figure.
  MLX and mflux count memory this way (they call it "GB").
* **GB** (10**9 bytes) for disk and transfer figures shown to people (``kiapi status``,
  ``kiapi activate``, file quotas), as the Hugging Face Hub and ``df -H`` show them.

Names carry the unit (``_gib``, ``_gb``, ``_bytes``) and so does every figure printed. Wire
and settings names that predate this rule keep their ``_gb`` spelling and document their
unit (``KIAPI_MEMORY_LIMIT_GB`` and ``/v1/memory``'s ``*_gb`` fields are GiB).
"""

from __future__ import annotations

BYTES_PER_GIB = 2**30
BYTES_PER_GB = 10**9


def gib_from_gb(gb: float) -> float:
    """Decimal GB (the Hub's figure) in GiB."""
    return gb * BYTES_PER_GB / BYTES_PER_GIB


def human_bytes(size: float) -> str:
    """A disk or download size in decimal units (B, kB, MB, GB, TB), as the Hub shows them."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(value) < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


__all__ = ["BYTES_PER_GB", "BYTES_PER_GIB", "gib_from_gb", "human_bytes"]
