"""Test-only plugins that fail in the ways real ones do."""

from __future__ import annotations

import msgspec

from kiapi_core import Capability, Model, Operation, hookimpl


class Request(msgspec.Struct):
    text: str = ""


class ClashingAliases:
    """Registers a capability whose two models share an alias."""

    @hookimpl
    def register_capabilities(self, register):
        register(Capability(
            name="clash", domain="text", title="Clash",
            models=(Model(name="a", aliases=("same",), default=True), Model(name="b", aliases=("SAME",))),
            operations=(Operation(name="go", request=Request, result=None, handler=print, job_type="clash"),),
        ))


class DuplicateEcho:
    """Registers a second capability named like the echo test plugin."""

    @hookimpl
    def register_capabilities(self, register):
        register(Capability(name="echo", domain="text", title="Echo again", models=(Model(name="x"),)))


class Misspelled:
    """Implements a hook name that does not exist."""

    @hookimpl
    def register_capabilitys(self, register):  # the typo is the point
        pass
