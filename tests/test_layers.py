"""The layers import one way (docs/architecture.md): plugins -> kiapi_core.sdk -> services ->
nothing of the HTTP layer. Only the HTTP layer (and the front ends built on it: the CLI, the
server runner, the test helpers) imports Starlette."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1] / "kiapi_core"
#: The HTTP layer and the front ends; everything else in kiapi_core is the SDK or a service.
#: Route handlers kept beside their service are named routes.py or *_routes.py (files/manage_routes.py ...).
HTTP_AND_FRONT_ENDS = ("app.py", "serve.py", "http/", "default_plugins/", "cli/", "testing/", "openapi/pages.py")
HTTP_MODULES = ("kiapi_core.app", "kiapi_core.http", "kiapi_core.default_plugins", "kiapi_core.serve")


def _imports(path: Path) -> list[tuple[int, str]]:
    package = ".".join(("kiapi_core", *path.relative_to(ROOT).parent.parts))
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            module = (f"{base}.{node.module}" if node.module else base) if node.level else (node.module or "")
            found += [(node.lineno, module)] + [(node.lineno, f"{module}.{a.name}") for a in node.names]
    return found


#: Every route module (routes.py, *_routes.py) by dotted name.
ROUTE_MODULES = tuple(".".join(("kiapi_core", *p.relative_to(ROOT).with_suffix("").parts))
                      for p in ROOT.rglob("*routes.py"))


def _is_http(name: str) -> bool:
    return (name.split(".")[0] == "starlette" or name.startswith(HTTP_MODULES)
            or any(name == m or name.startswith(m + ".") for m in ROUTE_MODULES))


def test_services_and_the_sdk_never_import_the_http_layer():
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith(HTTP_AND_FRONT_ENDS) or relative.endswith("routes.py"):
            continue
        offenders += [f"{relative}:{line} imports {name}" for line, name in _imports(path) if _is_http(name)]
    assert offenders == [], (
        "a service imports the HTTP layer (Starlette, http/, app.py, a routes module):\n" + "\n".join(offenders)
        + "\nroute handlers belong in a module named routes.py (or under http/); a module that is part of the "
          "HTTP layer goes into HTTP_AND_FRONT_ENDS here")
