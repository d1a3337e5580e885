"""Test helpers for kiapi and its plugins: see :mod:`kiapi_core.testing.helpers`.

Kept lazy because pytest imports this package's fixtures module in every session.
"""

from __future__ import annotations

from typing import Any

__all__ = ["KiapiClient", "LifespanRunner", "build_test_host", "client"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import helpers

        return getattr(helpers, name)
    raise AttributeError(name)
