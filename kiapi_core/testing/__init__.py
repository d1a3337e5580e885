"""Test helpers for kiapi and its plugins: see :mod:`kiapi_core.testing.helpers` (hosts and
HTTP clients) and :mod:`kiapi_core.testing.handlers` (running one handler directly).

Kept lazy because pytest imports this package's fixtures module in every session.
"""

from __future__ import annotations

from typing import Any

_HELPERS = ("KiapiClient", "LifespanRunner", "build_test_host", "client")
_HANDLERS = ("HandlerHarness", "HandlerRun", "Prepared", "file_ref")
__all__ = [*_HELPERS, *_HANDLERS]


def __getattr__(name: str) -> Any:
    if name in _HELPERS:
        from . import helpers

        return getattr(helpers, name)
    if name in _HANDLERS:
        from . import handlers

        return getattr(handlers, name)
    raise AttributeError(name)
