"""The playground's page and assets over HTTP (no browser): headers, auth, offline, size."""

from __future__ import annotations

import re

import pytest

from kiapi_core.testing import build_test_host, client
from kiapi_core.ui.routes import CSP, STATIC_DIR, UI_PREFIX

#: The whole playground (HTML, CSS, JS, icon), uncompressed; it loads on a phone over the LAN.
PAGE_BUDGET_BYTES = 90_000


def _assets() -> list[str]:
    return sorted(p.relative_to(STATIC_DIR).as_posix() for p in STATIC_DIR.rglob("*") if p.is_file())


@pytest.mark.parametrize("token", [None, "s3cret"])
async def test_page_and_assets_are_served_with_a_strict_csp(tmp_path, token):
    host = build_test_host(tmp_path / "data", **({"auth_token": token} if token else {}))
    async with client(host) as http:
        page = await http.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.headers["content-security-policy"] == CSP
        assert page.headers["x-content-type-options"] == "nosniff"
        for name in _assets():
            asset = await http.get(f"{UI_PREFIX}/{name}")
            assert asset.status_code == 200, name
            assert asset.headers["content-security-policy"] == CSP
        assert (await http.get(f"{UI_PREFIX}/js/nothing.js")).status_code == 404
        if token:  # the page and its assets hold no data; everything else still needs the token
            assert (await http.get("/openapi.json")).status_code == 401
            assert (await http.get("/v1/jobs")).status_code == 401
            assert (await http.get(f"{UI_PREFIX}/../openapi.json")).status_code in (401, 404)


def test_no_inline_code_nothing_remote_and_small():
    html = (STATIC_DIR / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "inline script"
    assert "<style" not in html and " style=" not in html and " on" + "click=" not in html
    text = {name: (STATIC_DIR / name).read_text() for name in _assets()}
    for name, body in text.items():
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", body), f"{name} refers to another origin"
        assert "eval(" not in body and "new Function" not in body and "innerHTML" not in body, name
    # Every module the page imports is shipped.
    for name, body in text.items():
        for target in re.findall(r'from "\./([\w.]+)"', body):
            assert f"js/{target}" in text, (name, target)
    assert sum((STATIC_DIR / n).stat().st_size for n in text) < PAGE_BUDGET_BYTES
