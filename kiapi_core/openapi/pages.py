"""Swagger UI and ReDoc pages that work offline.

The JavaScript and CSS are packaged under ``static/`` (swagger-ui-dist 5 and redoc 2 from the
npm registry, with their licence files) and served by the app at :data:`STATIC_PREFIX`, so the
docs pages load on a machine without internet access, unlike the CDN links FastAPI emits. The
page builders return plain HTML strings; only :func:`static_mount` touches Starlette, and only
when called.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

__all__ = [
    "REDOC_JS",
    "STATIC_DIR",
    "STATIC_PREFIX",
    "SWAGGER_UI_CSS",
    "SWAGGER_UI_JS",
    "redoc_html",
    "static_mount",
    "swagger_ui_html",
]

#: Directory of the packaged assets.
STATIC_DIR = Path(__file__).resolve().parent / "static"
#: URL prefix the app serves :data:`STATIC_DIR` under.
STATIC_PREFIX = "/-/static"

SWAGGER_UI_JS = "swagger-ui-bundle.js"
SWAGGER_UI_CSS = "swagger-ui.css"
REDOC_JS = "redoc.standalone.js"


def swagger_ui_html(openapi_url: str, title: str, *, static_prefix: str = STATIC_PREFIX) -> str:
    """A Swagger UI page for the document at ``openapi_url`` ("Try it out" included)."""
    config = {
        "url": openapi_url,
        "dom_id": "#swagger-ui",
        "deepLinking": True,
        "displayRequestDuration": True,
        "tryItOutEnabled": True,
        "layout": "BaseLayout",
    }
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} - Swagger UI</title>
<link rel="stylesheet" href="{html.escape(static_prefix)}/{SWAGGER_UI_CSS}">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{html.escape(static_prefix)}/{SWAGGER_UI_JS}"></script>
<script>
const config = {_script_json(config)};
config.presets = [SwaggerUIBundle.presets.apis];
window.ui = SwaggerUIBundle(config);
</script>
</body>
</html>
"""


def redoc_html(openapi_url: str, title: str, *, static_prefix: str = STATIC_PREFIX) -> str:
    """A ReDoc page for the document at ``openapi_url`` (no web fonts, nothing remote)."""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} - ReDoc</title>
<style>body {{ margin: 0; padding: 0; }}</style>
</head>
<body>
<div id="redoc-container"></div>
<script src="{html.escape(static_prefix)}/{REDOC_JS}"></script>
<script>
Redoc.init({_script_json(openapi_url)}, {{"hideDownloadButton": false, "expandResponses": "200,202"}},
           document.getElementById("redoc-container"));
</script>
</body>
</html>
"""


def static_mount(path: str = STATIC_PREFIX) -> Any:
    """A Starlette ``Mount`` serving :data:`STATIC_DIR` at ``path``."""
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    return Mount(path, app=StaticFiles(directory=STATIC_DIR), name="kiapi-static")


def _script_json(value: Any) -> str:
    """JSON safe to embed in a ``<script>`` element (no ``</script>`` breakout)."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def security_headers(page: str) -> dict[str, str]:
    """Headers for a docs page: a Content-Security-Policy allowing only the bundled assets and
    the page's own inline script (by hash), and no framing by other sites (clickjacking)."""
    import base64
    import hashlib
    import re

    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
        for body in re.findall(r"<script>(.*?)</script>", page, flags=re.S))
    policy = ("default-src 'self'; "
              f"script-src 'self' {hashes}; "
              "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data:; "
              "worker-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
              "form-action 'self'; frame-ancestors 'none'")
    return {"Content-Security-Policy": policy, "X-Frame-Options": "DENY",
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
