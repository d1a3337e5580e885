"""The declarations of plugin API version 2.

The same Structs as :mod:`kiapi_core.registry` (the host reads them unchanged), except that a
:class:`Capability` made here declares ``plugin_api=2``: its ``prepare``, ``check``,
``estimate`` and ``transient`` are called with a :class:`~kiapi_core.sdk.RequestContext` and
its params travel as the operation's ``params`` Struct.
"""

from __future__ import annotations

from ..registry import Capability as _CoreCapability
from ..registry import InputKind, KiapiDeprecationWarning, Model, Operation, WeightFiles


class Capability(_CoreCapability, frozen=True, kw_only=True):
    """A family of models and the operations they serve (plugin API version 2)."""

    plugin_api: int = 2


__all__ = ["Capability", "InputKind", "KiapiDeprecationWarning", "Model", "Operation", "WeightFiles"]
