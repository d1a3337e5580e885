"""Nine misbehaving plugins (and one well-behaved twin), as fake installed distributions.

``install(site)`` writes each as a ``*.dist-info`` with an entry point plus its module into
``site``; put ``site`` on ``sys.path``/``PYTHONPATH`` and they are "installed" next to the real
kiapi-ernie and kiapi-seedvr2. ``PROBLEMS`` maps each misbehaving distribution to a phrase its
error must contain.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

_CAP = '''
import msgspec
from kiapi_core import Capability, Model, Operation, hookimpl

class Req(msgspec.Struct, kw_only=True):
    text: str = ""
    model: str | None = None
    mode: str = "sync"

def run(job):
    return {"text": job.request.text}

def capability(name, domain="text", op="go"):
    return Capability(name=name, domain=domain, title=name, models=(Model(name="m", default=True),),
                      operations=(Operation(name=op, request=Req, result=None, handler=run, job_type=name),))
'''

#: distribution -> (entry-point name, module source, extra METADATA lines)
PLUGINS: dict[str, tuple[str, str, str]] = {
    # Sorts before kiapi-ernie, but kiapi-ernie owns the name "ernie" (kiapi-<capability>).
    "kiapi-aaa-ernie": ("aaa-ernie", _CAP + '''
@hookimpl
def register_capabilities(register):
    register(capability("ernie", domain="image"))
''', ""),
    "kiapi-twin-a": ("twin-a", _CAP + '''
import click
from starlette.responses import PlainTextResponse
from starlette.routing import Route

async def status(request):
    """Twin status: an extra route under the capability's prefix."""
    return PlainTextResponse("twin ok")

@hookimpl
def register_capabilities(register):
    register(capability("twin"))

@hookimpl
def register_routes(host):
    return [Route("/v1/text/twin/status", status, methods=["GET"])]

@hookimpl
def register_commands(cli):
    @cli.command(name="twin-hello")
    def hello():
        click.echo("hello from twin")
''', ""),
    "kiapi-twin-b": ("twin-b", _CAP + '''
@hookimpl
def register_capabilities(register):
    register(capability("twin"))
''', ""),
    "kiapi-typo-one": ("typo-one", _CAP + '''
@hookimpl
def register_capabilites(register):
    register(capability("typo-one"))
''', ""),
    "kiapi-typo-two": ("typo-two", _CAP + '''
@hookimpl
def register_capabilities(register):
    register(capability("typo-two"))

@hookimpl
def register_route(host):
    return []
''', ""),
    "kiapi-async-hook": ("async-hook", _CAP + '''
@hookimpl
async def register_capabilities(register):
    register(capability("async-hook"))
''', ""),
    "kiapi-bad-names": ("bad-names", _CAP + '''
@hookimpl
def register_capabilities(register):
    register(capability("café", domain="", op="a/b"))
''', ""),
    "kiapi-route-hijack": ("route-hijack", _CAP + '''
from starlette.responses import PlainTextResponse
from starlette.routing import Route

async def steal(request):
    return PlainTextResponse("stolen")

@hookimpl
def register_capabilities(register):
    register(capability("hijack"))

@hookimpl
def register_routes(host):
    return [Route("/v1/files/{fid}", steal, methods=["GET"]), Route("/v1/image/ernie/models", steal)]
''', ""),
    "kiapi-cli-takeover": ("cli-takeover", _CAP + '''
import click

@hookimpl
def register_capabilities(register):
    register(capability("takeover"))

@hookimpl
def register_commands(cli):
    @cli.command(name="serve")
    def serve():
        click.echo("not the real server")
''', ""),
    "kiapi-import-error": ("import-error", "raise ImportError('No module named torch_magic')\n", ""),
    "kiapi-old-core": ("old-core", _CAP + '''
@hookimpl
def register_capabilities(register):
    register(capability("old-core"))
''', "Requires-Dist: kiapi-core<0.1,>=0.0.1\n"),
}

#: misbehaving distribution -> what its error must say
PROBLEMS: dict[str, tuple[str, ...]] = {
    "kiapi-aaa-ernie": ("'ernie'", "kiapi-ernie", "KIAPI_DISABLE_PLUGINS=ernie"),
    "kiapi-twin-b": ("'twin'", "kiapi-twin-a", "KIAPI_DISABLE_PLUGINS=twin-a"),
    "kiapi-typo-one": ("register_capabilites", "did you mean 'register_capabilities'"),
    "kiapi-typo-two": ("register_route'", "did you mean 'register_routes'"),
    "kiapi-async-hook": ("async def",),
    "kiapi-bad-names": ("'café'", "domain name ''", "operation name 'a/b'"),
    "kiapi-route-hijack": ("/v1/files/{fid}", "outside its capability's prefix"),
    "kiapi-cli-takeover": ("'serve'", "kiapi-core"),
    "kiapi-import-error": ("torch_magic",),
    "kiapi-old-core": ("requires kiapi-core>=0.0.1,<0.1", "is running"),
}


def install(site: Path, only: tuple[str, ...] | None = None) -> None:
    for dist, (ep_name, source, metadata) in PLUGINS.items():
        if only is not None and dist not in only:
            continue
        module = dist.replace("-", "_") + "_mod"
        info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n{metadata}")
        (info / "entry_points.txt").write_text(f"[kiapi]\n{ep_name} = {module}\n")
        (site / f"{module}.py").write_text(textwrap.dedent(source))
