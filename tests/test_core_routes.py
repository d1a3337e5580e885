"""The core's route table is written in two places: the routes the default plugins serve and
``openapi/core_paths.py``, which documents them in the root OpenAPI document. They must agree."""

from __future__ import annotations

from kiapi_core.openapi.core_paths import CORE_PATHS
from kiapi_core.testing import build_test_host


def test_served_core_routes_and_documented_core_paths_agree(tmp_path):
    host = build_test_host(tmp_path)
    served = set()
    for plugin, routes in host.plugin_routes.items():
        assert plugin.startswith("kiapi_core.default_plugins."), plugin  # no other plugin is loaded
        for route in routes:
            if getattr(route, "include_in_schema", True):
                # Starlette adds HEAD to every GET route: compare without HEAD.
                served |= {(route.path, m.lower()) for m in route.methods or () if m != "HEAD"}
    documented = {(entry.path, entry.method) for entry in CORE_PATHS if entry.method != "head"}
    assert served - documented == set(), "served but missing from openapi/core_paths.py"
    assert documented - served == set(), "documented in openapi/core_paths.py but not served"
