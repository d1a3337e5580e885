"""The cluster endpoints of the core, as a default plugin."""

from __future__ import annotations

from ..hookspecs import hookimpl


@hookimpl
def register_routes(host):
    from ..cluster.routes import routes

    return routes()
