"""Starlette's router with an index of its static paths.

Starlette tries each route's regex in turn until one matches: with every capability's
operations and documents, the core's endpoints and the UI that is 40 to 60 routes, and
``/health`` or an operation near the end of the list cost 40–100 µs of matching per request,
more than a bare app's whole answer (#19, host speed). The index answers a request for a path
without parameters with one dict lookup, and only where the scan would pick the same route: a
path and method no earlier route matches. Everything else goes through the scan unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.routing import BaseRoute, Match, Route, Router
from starlette.types import Receive, Scope, Send


def static_index(routes: Sequence[BaseRoute]) -> dict[tuple[str, str], Route]:
    """``(path, method) → route`` for the parameterless routes the scan would choose."""
    index: dict[tuple[str, str], Route] = {}
    for position, route in enumerate(routes):
        if not isinstance(route, Route) or route.param_convertors or not route.methods:
            continue
        for method in route.methods:
            probe = {"type": "http", "path": route.path, "method": method, "root_path": ""}
            if route.matches(probe)[0] is not Match.FULL:
                continue
            if any(earlier.matches(probe)[0] is Match.FULL for earlier in routes[:position]):
                continue  # an earlier route wins in the scan: leave it to the scan
            index.setdefault((route.path, method), route)
    return index


class IndexedRouter(Router):
    """A :class:`~starlette.routing.Router` that looks static paths up before scanning."""

    _index: dict[tuple[str, str], Route] = {}
    _indexed_routes = -1  # how many routes the index was built from

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            if self._indexed_routes != len(self.routes):  # first use, or a route added since
                self._index, self._indexed_routes = static_index(self.routes), len(self.routes)
            route = self._index.get((scope["path"], scope["method"]))
            if route is not None:
                scope.setdefault("router", self)
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope["route"] = route
                    scope.update(child_scope)
                    await route.handle(scope, receive, send)
                    return
        await super().app(scope, receive, send)


__all__ = ["IndexedRouter", "static_index"]
