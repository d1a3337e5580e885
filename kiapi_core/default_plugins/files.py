"""The files endpoints of the core, as a default plugin."""

from __future__ import annotations

from ..hookspecs import hookimpl


@hookimpl
def register_routes(host):
    from ..files.manage_routes import routes as manage_routes
    from ..files.routes import routes

    # usage/prune first: `/v1/files/{file_id}` would otherwise take "usage" for a file id
    return manage_routes() + routes()
