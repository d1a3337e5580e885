"""The floor kiapi is measured against: a bare Starlette app on Hypercorn, nothing else.

``bench/hostspeed.py`` starts it as a subprocess (``python bench/bare_app.py --port N ...``) with
the same Hypercorn set-up ``kiapi serve`` uses, and sends both servers the same requests:

- ``POST /noop``: decodes the JSON body and answers a small JSON object (kiapi: a sync no-op job);
- ``POST /png``: answers the PNG bytes kiapi's no-op plugin stores, from memory;
- ``GET /health``: answers the JSON body kiapi's ``/health`` gave, from memory;
- ``PUT /drain``: reads the request body and throws it away (the floor of an upload:
  ``bench/uploadspeed.py``).

``--serve-tuning`` applies the Hypercorn tuning ``kiapi serve`` applies (larger reads, no
extra body copies in h11; ``kiapi_core/serve.py``), so the upload floor is the one kiapi's
server stands on. It binds to loopback only and runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def build(png: bytes, health: bytes) -> Starlette:
    async def noop(request: Request) -> Response:
        body = json.loads(await request.body() or b"{}")
        return JSONResponse({"ok": True, "echo": len(body)})

    async def image(request: Request) -> Response:
        await request.body()
        return Response(png, media_type="image/png")

    async def healthz(request: Request) -> Response:
        return Response(health, media_type="application/json")

    async def drain(request: Request) -> Response:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
        return JSONResponse({"size": size})

    return Starlette(routes=[Route("/noop", noop, methods=["POST"]), Route("/png", image, methods=["POST"]),
                             Route("/health", healthz, methods=["GET"]), Route("/drain", drain, methods=["PUT"])])


def main() -> None:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--png", type=Path, required=True)
    parser.add_argument("--health", type=Path, required=True)
    parser.add_argument("--serve-tuning", action="store_true", help="apply kiapi serve's Hypercorn tuning")
    args = parser.parse_args()
    if args.serve_tuning:
        from kiapi_core.serve import tune_hypercorn

        tune_hypercorn()
    app = build(args.png.read_bytes(), args.health.read_bytes())
    config = Config()
    config.bind = [f"127.0.0.1:{args.port}"]
    config.accesslog = None
    config.errorlog = "-"
    stop = asyncio.Event()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]

    asyncio.run(run())


if __name__ == "__main__":
    main()
