"""``GET /v1/cluster/hosts``: the hosts sharing this cluster's database, as the registry sees them."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.routing import Route

from ..errors import NotFound
from ..http.responses import JSONResponse

#: A host whose heartbeat is older than this many leases is listed as not live.
LIVE_LEASES = 1.0


async def list_hosts(request: Request) -> JSONResponse:
    """Every registered host: id, advertised URL, role, capabilities, resident models, memory,
    the running job, heartbeat age and whether it is draining or live."""
    jobs = request.app.state.host.jobs
    if not hasattr(jobs, "ahosts"):
        raise NotFound("cluster mode is off on this host: set KIAPI_CLUSTER_URL=postgresql://... "
                       "to share jobs and files with other hosts (docs/cluster.md)", code="cluster_off")
    hosts = await jobs.ahosts()
    return JSONResponse({"object": "list", "self": jobs.host_id,
                         "data": [msgspec.to_builtins(h) for h in hosts]})


def routes() -> list[Route]:
    return [Route("/v1/cluster/hosts", list_hosts, methods=["GET"])]


__all__ = ["routes"]
