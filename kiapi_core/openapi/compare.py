"""Structural comparison of OpenAPI documents, and ``$ref`` checking.

The wire contract (``spec/*.openapi.json``) binds paths, methods, parameters, schema names,
properties, types, defaults, enums, bounds, required lists, response codes, media types and
headers, but not prose. :func:`compare_documents` walks both documents together and lists
every difference with its JSON path, ignoring prose keywords (titles, descriptions, examples,
``info``) unless asked to compare them too. It is generic on purpose: a plugin's contract test
calls it with its own spec file.

Normalisation, so that equivalent documents compare equal:

* ``anyOf`` / ``oneOf`` / ``allOf`` / ``required`` / ``type`` lists compare as multisets;
* ``parameters`` compare by ``(in, name)``, not by position;
* numbers compare by value (``1 == 1.0``) but booleans never equal numbers.
"""

from __future__ import annotations

import difflib
import json
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

__all__ = ["PROSE_KEYS", "compare_documents", "guide_differences", "resolve_pointer", "unresolved_refs",
           "without_guide"]

#: Keywords that carry prose, not structure.
PROSE_KEYS = frozenset({"title", "description", "summary", "examples", "example", "externalDocs", "tags"})
#: Top-level keys that describe the document rather than the API.
_DOCUMENT_PROSE = frozenset({"info", "servers", "tags", "externalDocs"})
#: Keys whose value is a map from names (of properties, paths, codes ...) to objects, so the
#: names must never be mistaken for keywords.
_NAME_MAPS = frozenset({
    "properties", "patternProperties", "schemas", "paths", "content", "headers", "responses",
    "mapping", "$defs", "definitions", "encoding", "callbacks", "links", "securitySchemes",
    "parameters_by_key", "requestBodies",
})
#: Never compared, even with ``prose``: kiapi's examples must run against kiapi (Swagger's "Try
#: it out" sends them), while the spec's came from another project (``zimage``, ``turbo``).
EXAMPLE_KEYS = frozenset({"examples", "example"})
#: Texts kiapi words differently from the spec on purpose (JSON path suffixes): the spec's
#: wording describes another project's job types.
TEXT_CHANGES = ('.AsyncJobResponse.properties.type.description',)
#: Keys whose value is data (compared as a whole, never walked as schema).
_OPAQUE = frozenset({"default", "const", "enum", "examples", "example", "x-kiapi-capabilities"})
_UNORDERED = frozenset({"anyOf", "oneOf", "allOf", "required", "type"})


def compare_documents(actual: Any, expected: Any, *, prose: bool = False) -> list[str]:
    """Every difference between two OpenAPI documents, as ``"<json path>: <what>"`` lines.

    :param actual: the generated document.
    :param expected: the contract (spec file contents).
    :param prose: also compare titles, descriptions, summaries and ``info`` (examples never,
        see :data:`EXAMPLE_KEYS`; nor the :data:`TEXT_CHANGES`).
    :return: an empty list when the documents agree.
    """
    diffs: list[str] = []
    ignore = EXAMPLE_KEYS if prose else PROSE_KEYS
    if isinstance(actual, dict) and isinstance(expected, dict) and not prose:
        actual = {k: v for k, v in actual.items() if k not in _DOCUMENT_PROSE}
        expected = {k: v for k, v in expected.items() if k not in _DOCUMENT_PROSE}
    _walk(actual, expected, "$", None, ignore, diffs)
    return [d for d in diffs if not d.split(":", 1)[0].endswith(TEXT_CHANGES)]


def _walk(a: Any, e: Any, path: str, parent: str | None, ignore: frozenset[str], out: list[str]) -> None:
    if parent in _OPAQUE:
        if _canonical(a) != _canonical(e):
            out.append(f"{path}: expected {_short(e)}, got {_short(a)}")
        return
    if isinstance(e, dict) and isinstance(a, dict):
        names = parent in _NAME_MAPS
        keys_e = {k for k in e if names or k not in ignore}
        keys_a = {k for k in a if names or k not in ignore}
        for key in sorted(keys_e - keys_a, key=str):
            out.append(f"{_join(path, key)}: missing (expected {_short(e[key])})")
        for key in sorted(keys_a - keys_e, key=str):
            out.append(f"{_join(path, key)}: unexpected (got {_short(a[key])})")
        for key in sorted(keys_e & keys_a, key=str):
            child = None if names else key
            if child == "parameters" and isinstance(e[key], list) and isinstance(a[key], list):
                _walk(_by_param(a[key]), _by_param(e[key]), _join(path, key), "parameters_by_key", ignore, out)
            else:
                _walk(a[key], e[key], _join(path, key), child, ignore, out)
        return
    if isinstance(e, list) and isinstance(a, list):
        if parent in _UNORDERED:
            _compare_unordered(a, e, path, ignore, out)
            return
        if len(a) != len(e):
            out.append(f"{path}: expected {len(e)} items, got {len(a)}")
        for i, (x, y) in enumerate(zip(a, e)):
            _walk(x, y, f"{path}[{i}]", None, ignore, out)
        return
    if not _same_scalar(a, e):
        out.append(f"{path}: expected {_short(e)}, got {_short(a)}")


def _compare_unordered(a: list[Any], e: list[Any], path: str, ignore: frozenset[str], out: list[str]) -> None:
    ca = Counter(_canonical(_strip(x, ignore)) for x in a)
    ce = Counter(_canonical(_strip(x, ignore)) for x in e)
    missing = list((ce - ca).elements())
    extra = list((ca - ce).elements())
    if missing or extra:
        out.append(
            f"{path}: items differ (order ignored); missing {', '.join(missing) or 'none'}; "
            f"unexpected {', '.join(extra) or 'none'}"
        )


def _strip(node: Any, ignore: frozenset[str], parent: str | None = None) -> Any:
    """``node`` without prose keys, for order-insensitive comparison of list items."""
    if parent in _OPAQUE:
        return node
    if isinstance(node, dict):
        names = parent in _NAME_MAPS
        return {k: _strip(v, ignore, None if names else k) for k, v in node.items() if names or k not in ignore}
    if isinstance(node, list):
        items = [_strip(v, ignore) for v in node]
        if parent in _UNORDERED:
            items.sort(key=_canonical)
        return items
    return node


def _by_param(params: list[Any]) -> dict[str, Any]:
    return {
        f"{p.get('in')}:{p.get('name')}" if isinstance(p, dict) else str(i): p for i, p in enumerate(params)
    }


def _same_scalar(a: Any, e: Any) -> bool:
    if isinstance(a, bool) or isinstance(e, bool):
        return type(a) is type(e) and a == e
    if isinstance(a, (int, float)) and isinstance(e, (int, float)):
        return a == e
    return type(a) is type(e) and a == e


def _canonical(value: Any) -> str:
    return json.dumps(_numbers(value), sort_keys=True, ensure_ascii=False)


def _numbers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return value


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=repr)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _join(path: str, key: Any) -> str:
    key = str(key)
    return f"{path}.{key}" if _IDENT.match(key) else f"{path}[{json.dumps(key)}]"


def resolve_pointer(document: Any, pointer: str) -> Any:
    """The value a local ``$ref`` (``#/components/schemas/X``) points at; ``KeyError`` if none."""
    if not pointer.startswith("#"):
        raise KeyError(f"not a local reference: {pointer}")
    node = document
    for raw in pointer[1:].split("/")[1:]:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise KeyError(pointer)
    return node


def unresolved_refs(document: Any) -> list[str]:
    """Every ``$ref`` (and discriminator mapping target) in ``document`` that does not resolve."""
    problems: list[str] = []

    def check(target: Any, where: str) -> None:
        if not isinstance(target, str):
            problems.append(f"{where}: $ref is not a string")
            return
        try:
            resolve_pointer(document, target)
        except KeyError:
            problems.append(f"{where}: {target} does not resolve")

    def walk(node: Any, path: str, parent: str | None) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                here = _join(path, key)
                if key == "$ref" and parent not in _NAME_MAPS:
                    check(value, here)
                elif parent == "discriminator" and key == "mapping" and isinstance(value, dict):
                    for tag, target in value.items():
                        check(target, _join(here, tag))
                else:
                    walk(value, here, None if parent in _NAME_MAPS else key)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]", None)

    walk(document, "$", None)
    return problems


def guide_differences(actual: str, spec: str, changes: Sequence[tuple[str, str]] = ()) -> list[str]:
    """How a capability's Markdown guide departs from the contract's guide ``spec``.

    The guide must keep the spec's ``## `` sections in order and its wording, except for the
    listed ``(spec text, replacement)`` changes, each of which must name text found exactly once
    in the spec: a plugin documents what it really does without drifting silently.
    """
    problems: list[str] = []
    headings = [[line for line in text.splitlines() if line.startswith("## ")] for text in (actual, spec)]
    if headings[0] != headings[1]:
        problems.append(f"guide sections {headings[0]} differ from the spec's {headings[1]}")
    expected = spec
    for old, new in changes:
        if spec.count(old) != 1:
            problems.append(f"change not found exactly once in the spec's guide: {old!r}")
        elif old == new:
            problems.append(f"change replaces a text with itself: {old!r}")
        expected = expected.replace(old, new)
    if expected != actual:
        diff = difflib.unified_diff(expected.splitlines(), actual.splitlines(), "spec + changes", "guide",
                                    lineterm="")
        problems.append("guide differs from the spec beyond the listed changes:\n" + "\n".join(diff))
    return problems


def without_guide(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` without ``info.description`` (compared by :func:`guide_differences`)."""
    info = {k: v for k, v in document.get("info", {}).items() if k != "description"}
    return {**document, "info": info}
