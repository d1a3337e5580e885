"""The jobs endpoints of the core (and the cluster's host list), as a default plugin."""

from __future__ import annotations

from ..hookspecs import hookimpl


@hookimpl
def register_routes(host):
    from ..cluster.routes import routes as cluster_routes
    from ..jobs.routes import routes

    return routes() + cluster_routes()
