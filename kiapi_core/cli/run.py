"""``kiapi run FAMILY OPERATION --field value ... -o out.png``: one request, start to file.

Like ``cog predict -i`` and ``ollama run``: the flags are the operation's request fields
(``--guidance-scale 4`` sets ``guidance_scale``), typed from the capability's OpenAPI document
(numbers, booleans, lists as JSON or a repeated flag); Cog's ``-i name=value`` works too. A
value ``@path`` uploads that file and passes it as a ``file_id``; an ``http(s)://`` value for
an input field is passed as a URL.
The job runs async with a progress bar; Ctrl-C cancels it. Its outputs are downloaded to
``-o`` (several: ``out_1.png``, ``out_2.png`` ...) or to their own names in the current
directory, never overwriting a file.
"""

from __future__ import annotations

import json
import mimetypes
import os
from pathlib import Path
from typing import Any

import click

from ..units import human_bytes
from .remote import DEFAULT_URL, Remote, _token, progress_line


@click.command("run", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("family")
@click.argument("operation")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Where to write the output (default: its own name in the current directory).")
@click.option("--json", "as_json", is_flag=True, help="Print the finished job as JSON on stdout.")
@click.option("--url", envvar="KIAPI_URL", default=DEFAULT_URL, show_default=True, help="The server (also $KIAPI_URL).")
@click.pass_context
def run(ctx: click.Context, family: str, operation: str, output: str | None, as_json: bool, url: str) -> None:
    """Run one operation on a running server and save its output.

    \b
    kiapi run ernie generate --prompt "a red apple" --steps 8 -o apple.png
    kiapi run seedvr2 upscale --image @apple.png --resolution 2x -o apple-2x.png
    """
    remote = Remote(url, _token(ctx), timeout_s=120.0)
    path, properties = _operation(remote, family, operation)
    body = _body(remote, ctx.args, properties)
    if "mode" in properties:
        body["mode"] = "async"
    submitted = remote.json("POST", path, json=body)
    job_id = submitted.get("job_id") or submitted.get("id")
    click.echo(f"job {job_id}", err=True)
    try:
        job = remote.wait_job(job_id, on_change=lambda j: click.echo(progress_line(j), nl=False, err=True))
    except KeyboardInterrupt:
        remote.request("POST", f"/v1/jobs/{job_id}/cancel")
        click.echo(f"\ncanceled job {job_id}", err=True)
        raise SystemExit(130) from None
    click.echo("", err=True)
    if as_json:
        click.echo(json.dumps(job, indent=2))
    if job["status"] != "succeeded":
        raise click.ClickException(f"job {job_id} {job['status']}: {job.get('error') or ''}".rstrip(": "))
    for warning in job.get("warnings", []):
        click.echo(f"warning: {warning}", err=True)
    for index, file_id in enumerate(job.get("artifacts", [])):
        written = _download(remote, file_id, output, index, len(job["artifacts"]))
        if not as_json:
            click.echo(written)


def _operation(remote: Remote, family: str, operation: str) -> tuple[str, dict[str, Any]]:
    capabilities = {c["name"]: c for c in remote.json("GET", "/health").get("capabilities", [])}
    if family not in capabilities:
        raise click.ClickException(f"the server has no capability {family!r}; it has: "
                                   f"{', '.join(sorted(capabilities)) or 'none (is the token set?)'}")
    document = remote.json("GET", capabilities[family]["openapi"])
    posts = {p.rsplit("/", 1)[-1]: (p, item["post"]) for p, item in document["paths"].items() if "post" in item}
    if operation not in posts:
        raise click.ClickException(f"{family} has no operation {operation!r}; it has: {', '.join(sorted(posts))}")
    path, post = posts[operation]
    schema = post["requestBody"]["content"]["application/json"]["schema"]
    schema = _resolve(document, schema)
    return path, {name: _resolve(document, prop) for name, prop in schema.get("properties", {}).items()}


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
        return document["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    return schema


def _body(remote: Remote, args: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    index = 0
    while index < len(args):
        token = args[index]
        if token in ("-i", "--input") and index + 1 < len(args) and "=" in args[index + 1]:
            token = "--" + args[index + 1]  # Cog's `-i name=value`
            index += 1
        if not token.startswith("--") or token == "--":
            raise click.UsageError(f"unexpected {token!r}: give request fields as --name value")
        name, has_value, value = token[2:].partition("=")
        name = name.replace("-", "_")
        if name not in properties:
            raise click.UsageError(f"--{name.replace('_', '-')} is not a field of this operation; "
                                   f"fields: {', '.join('--' + p.replace('_', '-') for p in properties)}")
        if not has_value:
            if index + 1 < len(args) and not args[index + 1].startswith("--"):
                value, index = args[index + 1], index + 1
            else:
                value = "true"
        index += 1
        converted = _convert(remote, name, value, properties[name])
        if _types(properties[name]) == {"array"} and not isinstance(converted, list):
            body.setdefault(name, []).append(converted)
        else:
            body[name] = converted
    return body


def _types(prop: dict[str, Any]) -> set[str]:
    found: set[str] = set()
    for option in [prop, *prop.get("anyOf", []), *prop.get("oneOf", [])]:
        kind = option.get("type")
        found.update([kind] if isinstance(kind, str) else kind or [])
        if "$ref" in option:
            found.add("object")
    return found - {"null"}


def _convert(remote: Remote, name: str, value: str, prop: dict[str, Any]) -> Any:
    if value.startswith("@"):
        return {"type": "file_id", "file_id": _upload(remote, Path(value[1:]).expanduser())}
    types = _types(prop)
    if "object" in types and value.startswith(("http://", "https://")):
        return {"type": "url", "url": value}
    if types == {"string"} or not types & {"integer", "number", "boolean", "array", "object"}:
        return value
    try:
        return json.loads(value)
    except ValueError:
        if types & {"integer", "number", "boolean"} and not types & {"string"}:
            raise click.UsageError(f"--{name.replace('_', '-')}: {value!r} is not a {'/'.join(sorted(types))}") from None
        return value


def _upload(remote: Remote, path: Path) -> str:
    if not path.is_file():
        raise click.UsageError(f"@{path}: no such file")
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    with path.open("rb") as fh:
        record = remote.json("POST", "/v1/files", files={"file": (path.name, fh, content_type)})
    return record["file_id"]


def _download(remote: Remote, file_id: str, output: str | None, index: int, count: int) -> str:
    record = remote.json("GET", f"/v1/files/{file_id}")
    if output:
        target = Path(output)
        if count > 1:
            target = target.with_name(f"{target.stem}_{index + 1}{target.suffix}")
    else:
        target = _free_name(Path(os.path.basename(record["filename"]) or file_id))
    data = remote.request("GET", f"/v1/files/{file_id}/download").content
    target.write_bytes(data)
    click.echo(f"wrote {target} ({human_bytes(len(data))})", err=True)
    return str(target)


def _free_name(path: Path) -> Path:
    candidate, number = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
        number += 1
    return candidate
