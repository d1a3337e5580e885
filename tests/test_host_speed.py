"""The request path's host-speed choices (#19) keep every answer what it was: small bodies
decoded on the event loop, larger ones in a thread; ``/health`` cached only where nothing can
change."""

from __future__ import annotations

import asyncio

import pytest

import kiapi_echo
from helpers_weights import FLAT_FILES, FLAT_REPO, FLAT_REV, ToyPlugin, build_snapshot


@pytest.fixture
def hops(monkeypatch) -> list[str]:
    """The names of the functions the request path sends to a worker thread."""
    seen: list[str] = []
    real = asyncio.to_thread

    async def counting(fn, /, *args, **kwargs):
        seen.append(getattr(fn, "__name__", repr(fn)))
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", counting)
    return seen


async def test_a_small_body_is_decoded_on_the_loop_a_large_one_in_a_thread(kiapi_client_factory, hops) -> None:
    async with kiapi_client_factory(plugins=[kiapi_echo], demo=False) as client:
        r = await client.post("/v1/text/echo/render", json={"text": "hi", "repeat": 2})
        assert r.status_code == 200 and r.content == b"hihi"
        assert "_decode" not in hops and "decode_body" not in hops  # no thread hop to decode
        hops.clear()
        r = await client.post("/v1/text/echo/render", json={"text": "x" * 9000})
        assert r.status_code == 200 and r.content == b"x" * 9000
        assert "_decode" in hops and "decode_body" in hops  # 9 KB: parsed and converted off the loop


async def test_many_keys_are_converted_off_the_loop_and_still_checked(kiapi_client_factory, hops) -> None:
    """A small body with many keys (each unknown one is compared with every declared name)
    goes to a thread, and its near misses are still refused."""
    body = {"text": "hi", "reepat": 2, **{f"extra_field_{i}": i for i in range(40)}}
    async with kiapi_client_factory(plugins=[kiapi_echo], demo=False, unknown_fields="typos") as client:
        r = await client.post("/v1/text/echo/render", json=body)
    assert r.status_code == 422 and "did you mean `repeat`" in r.json()["detail"]
    assert "decode_body" in hops


async def test_health_figures_are_live(kiapi_client_factory) -> None:
    async with kiapi_client_factory(plugins=[kiapi_echo], demo=False) as client:
        before = (await client.get("/health")).json()
        assert (await client.post("/v1/text/echo/render", json={"text": "a"})).status_code == 200
        after = (await client.get("/health")).json()
    assert after["queue"]["totals"]["succeeded"] == before["queue"]["totals"]["succeeded"] + 1
    assert [c["name"] for c in after["capabilities"]] == [c["name"] for c in before["capabilities"]]
    assert after["plugins"] == before["plugins"] and after["plugin_errors"] == before["plugin_errors"]


async def test_health_readiness_follows_weights_on_disk(kiapi_client_factory, hf_cache) -> None:
    """Readiness that depends on files is read again for every ``/health`` (not cached)."""
    def ready(body: dict) -> dict[str, bool]:
        toy = next(c for c in body["capabilities"] if c["name"] == "toy")
        return {m["name"]: m["ready"] for m in toy["models"]}

    async with kiapi_client_factory(plugins=[ToyPlugin()], demo=False) as client:
        assert ready((await client.get("/health")).json()) == {"small": False, "a": False, "b": False}
        build_snapshot(hf_cache, FLAT_REPO, FLAT_REV, FLAT_FILES)
        assert ready((await client.get("/health")).json()) == {"small": False, "a": True, "b": True}


def test_the_route_index_picks_what_the_scan_picks(tmp_path) -> None:
    from starlette.routing import Match, Route

    from kiapi_core.app import build_app
    from kiapi_core.host import build_host
    from kiapi_core.http.routing import static_index
    from kiapi_core.settings import Settings

    app = build_app(build_host(Settings(data_dir=str(tmp_path), demo=True), plugins=[kiapi_echo]))
    routes = app.router.routes
    index = static_index(routes)
    assert {("/health", "GET"), ("/v1/text/echo/render", "POST"), ("/v1/files", "POST")} <= set(index)
    for (path, method), route in index.items():
        scope = {"type": "http", "path": path, "method": method, "root_path": ""}
        assert next(r for r in routes if r.matches(scope)[0] is Match.FULL) is route

    async def endpoint(request):  # pragma: no cover - never called
        raise AssertionError

    shadowed = [Route("/things/{name}", endpoint, methods=["GET"]), Route("/things/new", endpoint, methods=["GET", "POST"])]
    assert set(static_index(shadowed)) == {("/things/new", "POST")}  # GET /things/new is the first route's


async def test_a_route_added_after_the_first_request_is_routed_as_the_scan_would() -> None:
    """The index is rebuilt when routes are added after it was built: a route put in front of
    an indexed one wins, as it does in Starlette's scan (never a stale answer)."""
    import httpx
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from kiapi_core.http.routing import IndexedRouter

    async def first(request):
        return PlainTextResponse("first")

    async def later(request):
        return PlainTextResponse("later")

    app = Starlette()
    app.router = IndexedRouter(routes=[Route("/first", first)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        assert (await http.get("/first")).text == "first"
        app.router.routes.insert(0, Route("/first", later))
        assert (await http.get("/first")).text == "later"
