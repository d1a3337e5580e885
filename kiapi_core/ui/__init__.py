"""The web playground served at ``/``: static HTML, CSS and JavaScript modules, no build step.

The page is generic: it reads the root ``/openapi.json`` (the capability index), each
capability's OpenAPI document and model list at run time, and builds a form per operation from
the request schema, so a third-party plugin gets its page without writing any UI code. Every
asset ships in the ``kiapi-core`` wheel under ``static/`` and is served by :mod:`.routes`
under ``/-/ui/``; nothing is loaded from another origin.

The page and its assets are sent with a strict Content-Security-Policy (``routes.CSP``): no
inline scripts or styles, nothing remote; images may come from ``blob:`` URLs, because with a
token set the page fetches artifacts with an ``Authorization`` header and shows them as blobs.
"""
