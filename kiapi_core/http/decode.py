"""A decoded JSON body → the operation's request Struct, with every problem reported at once.

* **Type layer**: msgspec stops at the first error, so when the whole body fails, each declared
  field is converted on its own and every failure is listed (``errors: [{field, detail}]``);
  enum failures list the valid values, missing fields are named.
* **Unknown fields**: the contract allows extra fields, so they are accepted and reported back
  (job ``warnings`` and ``X-Kiapi-Warnings``). A near miss of a declared field (``widht``,
  ``stpes``, ``negative_promt``, ``Width``) is almost surely a mistake: with
  ``KIAPI_UNKNOWN_FIELDS=typos`` (the default) it is a 422 naming the field it resembles;
  ``reject`` refuses every unknown field, ``warn`` only warns.
* **Text length**: no string in a body may be longer than ``KIAPI_MAX_TEXT_CHARS`` (data URLs
  excepted: ``KIAPI_MAX_DATA_URL_MB`` bounds them).
"""

from __future__ import annotations

import enum
import functools
import re
import typing
from collections.abc import Iterator
from typing import Any, Literal

import msgspec

from ..errors import InvalidRequest

UnknownFields = Literal["reject", "typos", "warn"]
#: Unknown field names listed in a warning or an error at most; longer names are cut.
MAX_LISTED = 20
MAX_NAME_CHARS = 64
DEFAULT_MAX_TEXT_CHARS = 100_000
#: String values exempt from the text bound (their own size limits apply).
_UNBOUNDED_KEYS = frozenset({"data_url"})
_PATH = re.compile(r" - at `(\$[^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `([^`]+)`$")
_ENUM = re.compile(r"^Invalid enum value ")
_EXPECTED = re.compile(r"^Expected `([^`]+)`(.*)$")
_GOT = re.compile(r", got `[^`]*`")


def decode_body(raw: Any, schema: type, *, unknown: UnknownFields = "typos",
                max_text_chars: int = DEFAULT_MAX_TEXT_CHARS) -> tuple[Any, list[str]]:
    """The request Struct for a JSON body (InvalidRequest listing every problem) and the
    warnings about fields it ignored."""
    if not isinstance(raw, dict):
        raise InvalidRequest(f"the request body must be a JSON object, not {type(raw).__name__}")
    problems = list(_long_texts(raw, max_text_chars))
    body: Any = None
    try:
        body = msgspec.convert(raw, schema)
    except msgspec.ValidationError as exc:
        problems += field_problems(raw, schema, exc)
    unknown_paths = _unknown_fields(raw, body, schema, "")
    warned: list[str] = []
    for path, suggestion in unknown_paths:
        if unknown == "reject" or (unknown == "typos" and suggestion):
            hint = f"; did you mean `{suggestion}`?" if suggestion else ""
            problems.append({"field": _name(path), "detail": f"unknown field `{_name(path)}`{hint} "
                             "(KIAPI_UNKNOWN_FIELDS decides what happens to unknown fields)"})
        else:
            warned.append(_name(path) + (f" (did you mean {suggestion}?)" if suggestion else ""))
    if problems:
        raise _invalid(problems)
    return body, _warnings(warned)


def _invalid(problems: list[dict[str, str]]) -> InvalidRequest:
    detail = "; ".join(p["detail"] for p in problems)
    extra: dict[str, Any] = {"errors": problems}
    if len(problems) == 1:
        extra["field"] = problems[0]["field"]
        extra["path"] = "$." + problems[0]["field"] if problems[0]["field"] != "$" else "$"
    return InvalidRequest(detail, **extra)


def _warnings(names: list[str]) -> list[str]:
    if not names:
        return []
    listed = sorted(names)[:MAX_LISTED]
    more = f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
    plural = "s" if len(names) > 1 else ""
    return [f"ignored unknown field{plural}: {', '.join(listed)}{more}"]


def _name(path: str) -> str:
    return path if len(path) <= MAX_NAME_CHARS else path[:MAX_NAME_CHARS] + "..."


# -- the type layer, every field ------------------------------------------------------------

def field_problems(raw: dict[str, Any], schema: type, error: msgspec.ValidationError) -> list[dict[str, str]]:
    """Every field of ``raw`` that does not convert to ``schema``'s declaration (and every
    missing required one); falls back to ``error`` for what no single field explains."""
    problems: list[dict[str, str]] = []
    for info in msgspec.structs.fields(schema):
        if info.encode_name not in raw:
            if info.required:
                problems.append({"field": info.encode_name, "detail": f"{info.encode_name} is required"})
            continue
        try:
            msgspec.convert(raw[info.encode_name], info.type)
        except msgspec.ValidationError as exc:
            problems.append(_problem(str(exc), info.type, prefix=info.encode_name,
                                     value=raw[info.encode_name]))
    return problems or [_problem(str(error), None, prefix="")]


def _problem(message: str, annotation: Any, *, prefix: str, value: Any = None) -> dict[str, str]:
    match = _PATH.search(message)
    path = match.group(1) if match else "$"
    what = message[: match.start()] if match else message
    field = prefix + path[1:] if prefix else (path[2:] if path.startswith("$.") else path)
    tags = _tag_values(annotation)
    missing = _MISSING.match(what)
    if missing:  # name the missing field itself, not the object that lacks it
        field = f"{field}.{missing.group(1)}" if field != "$" else missing.group(1)
        one_of = f" (one of: {', '.join(tags[1])})" if tags and field == f"{prefix}.{tags[0]}" else ""
        return {"field": field, "detail": f"{field} is required{one_of}"}
    if tags and field == f"{prefix}.{tags[0]}" and what.startswith("Invalid value"):
        return {"field": field, "detail": f"{field}: {what}; valid values: {', '.join(tags[1])}"}
    values = _enum_values(annotation) if field == prefix else []
    if values and _ENUM.match(what):
        what += f"; valid values: {', '.join(values)}"
    expected = _EXPECTED.match(what)
    if expected and field == prefix:  # "Expected `int` >= 1" -> "steps must be an int >= 1 (got 0)"
        shown = msgspec.json.encode(value).decode(errors="replace")
        shown = shown if len(shown) <= 40 else shown[:40] + "..."
        if values:
            return {"field": field, "detail": f"{field} must be one of: {', '.join(values)} (got {shown})"}
        kind, rest = expected.group(1), _GOT.sub("", expected.group(2))
        article = "an" if kind[:1] in "aeiou" else "a"
        return {"field": field, "detail": f"{field} must be {article} {kind}{rest} (got {shown})"}
    return {"field": field, "detail": f"{field}: {what}" if field != "$" else what}


def _tag_values(annotation: Any) -> tuple[str, list[str]] | None:
    """``(tag field, tags)`` of a tagged union of Structs (a FileRef), through Annotated and
    Optional; ``None`` for anything else."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) is not typing.Annotated \
        else typing.get_args(typing.get_args(annotation)[0]) or (typing.get_args(annotation)[0],)
    structs = [a for a in args if isinstance(a, type) and issubclass(a, msgspec.Struct)
               and a.__struct_config__.tag_field]
    if not structs:
        return None
    return structs[0].__struct_config__.tag_field or "", [str(a.__struct_config__.tag) for a in structs]


def _enum_values(annotation: Any) -> list[str]:
    """The allowed values of a Literal or Enum annotation (through Annotated and Optional)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _enum_values(typing.get_args(annotation)[0])
    if origin is Literal:
        return [str(v) for v in typing.get_args(annotation)]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [str(m.value) for m in annotation]
    values: list[str] = []
    for arg in typing.get_args(annotation):
        values += _enum_values(arg)
    return values


# -- text length ----------------------------------------------------------------------------

def _long_texts(raw: Any, limit: int) -> Iterator[dict[str, str]]:
    """Strings longer than ``limit`` characters anywhere in the body (iteratively)."""
    stack: list[tuple[str, Any, str]] = [("$", raw, "")]
    while stack:
        path, value, key = stack.pop()
        if isinstance(value, str):
            if len(value) > limit and key not in _UNBOUNDED_KEYS:
                field = path[2:] if path.startswith("$.") else path
                yield {"field": field, "detail": f"{_name(field)} is {len(value)} characters long, more than "
                                                 f"{limit} (KIAPI_MAX_TEXT_CHARS)"}
        elif isinstance(value, dict):
            stack.extend((f"{path}.{k}", v, k) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", v, key) for i, v in enumerate(value))


# -- unknown fields and near misses ---------------------------------------------------------

def _unknown_fields(raw: Any, value: Any, schema: Any, prefix: str) -> list[tuple[str, str | None]]:
    """``(dotted path, declared name it nearly matches)`` for every object key the Struct types
    do not declare. ``value`` is the converted Struct, or ``None`` when conversion failed (the
    top level is still checked against ``schema``)."""
    found: list[tuple[str, str | None]] = []
    struct_type = type(value) if isinstance(value, msgspec.Struct) else schema
    if isinstance(struct_type, type) and issubclass(struct_type, msgspec.Struct) and isinstance(raw, dict):
        known, tag_field = _struct_keys(struct_type)
        for key, item in raw.items():
            if key == tag_field:
                continue
            if key not in known:
                found.append((prefix + key, near_miss(key, known)))
            elif value is not None:
                found += _unknown_fields(item, getattr(value, known[key]), None, f"{prefix}{key}.")
    elif isinstance(value, (list, tuple)) and isinstance(raw, list):
        for index, (r, v) in enumerate(zip(raw, value)):
            found += _unknown_fields(r, v, None, f"{prefix.rstrip('.')}[{index}].")
    return found


@functools.cache
def _struct_keys(cls: type[msgspec.Struct]) -> tuple[dict[str, str], str | None]:
    """A Struct type's JSON keys (encode name → attribute) and tag field, computed once per
    type: ``msgspec.structs.fields`` cost ~200 µs per request for GenerateRequest (#19)."""
    known = {f.encode_name: f.name for f in msgspec.structs.fields(cls)}
    return known, cls.__struct_config__.tag_field


def near_miss(name: str, known: typing.Iterable[str]) -> str | None:
    """The declared name ``name`` is most likely a misspelling of, if any: the same but for
    case or ``-``/``_``, or one edit away (two for names of 8+ characters; a swap of neighbours
    is one edit). Names under 4 characters are never guessed at."""
    if len(name) < 4 or len(name) > 64:
        return None
    folded = name.lower().replace("-", "_")
    best: tuple[int, str] | None = None
    for candidate in known:
        if folded == candidate.lower():
            return candidate
        allowed = 2 if len(candidate) >= 8 else 1
        distance = _osa_distance(folded, candidate.lower(), allowed)
        if distance <= allowed and (best is None or distance < best[0]):
            best = (distance, candidate)
    return best[1] if best else None


def _osa_distance(a: str, b: str, cap: int) -> int:
    """Optimal-string-alignment edit distance (insert, delete, substitute, swap neighbours),
    cut short at ``cap + 1``."""
    if abs(len(a) - len(b)) > cap:
        return cap + 1
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cost = 0 if ca == cb else 1
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                current[j] = min(current[j], previous2[j - 2] + 1)
        if min(current) > cap:
            return cap + 1
        previous2, previous = previous, current
    return previous[-1]
