"""JSON Schema (OpenAPI 3.1) for msgspec types, in the shape the kiapi spec uses.

msgspec can emit JSON Schema itself, but its shapes differ from the pydantic-style ones the
binding spec was written in (no field titles, ``anyOf`` ordering, tagged unions, defaults from
factories ...). This module walks :func:`msgspec.inspect.type_info` and emits the spec's shapes:

* an optional field is ``{"anyOf": [X, {"type": "null"}], "title": ..., "description": ...}``
  with no ``default`` key when the default is ``None``;
* a Struct, Enum or named tagged union becomes a component referenced by ``$ref``; a field that
  is a reference carries only the reference and its Meta keywords (no title);
* ``Literal`` becomes ``{"type": "string", "enum": [...]}`` (``const`` for a single value);
* a tagged Struct gets its tag property ``{"type": "string", "const": tag, "title", "default"}``;
* a Struct's ``description`` is its docstring, its ``title`` its component name;
* ``additionalProperties: true`` only on the Structs the caller says are open (operation
  requests), as the spec only marks those.

Per-Struct adjustments are data, not code: a Struct may carry a class variable
``__openapi__ = {"name": "_Timings", "description": None, "examples": [...]}`` (``name`` renames
the component, other keys are merged into its schema, ``None`` removes a key); Structs defined
elsewhere get the same treatment through :data:`SCHEMA_OVERRIDES`.
"""

from __future__ import annotations

import contextlib
import copy
import enum
import inspect
import typing
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import msgspec
import msgspec.inspect as mi

from ..files.refs import FILE_REF_TYPES, FileDataURLRef, FileIDRef, FileURLRef

__all__ = ["NAMED_UNIONS", "SCHEMA_OVERRIDES", "SchemaBuilder", "field_title", "ref"]

REF_PREFIX = "#/components/schemas/"

#: Unions of tagged Structs that are documented as one named component (``oneOf`` plus a
#: discriminator) instead of being spelled out at every use.
NAMED_UNIONS: dict[frozenset[type], str] = {frozenset(FILE_REF_TYPES): "FileRef"}

#: ``__openapi__`` entries for Structs and Enums this package cannot annotate itself.
SCHEMA_OVERRIDES: dict[type, dict[str, Any]] = {
    FileIDRef: {
        "description": None,
        "examples": [{"file_id": "file_0123456789abcdef", "type": "file_id"}],
    },
    FileURLRef: {"description": None, "examples": [{"type": "url", "url": "https://example.com/input.png"}]},
    FileDataURLRef: {
        "description": None,
        "examples": [{"data_url": "data:image/png;base64,iVBORw0KGgo...", "type": "data_url"}],
    },
}


def ref(name: str) -> dict[str, Any]:
    """A ``$ref`` to a component schema."""
    return {"$ref": REF_PREFIX + name}


def field_title(name: str) -> str:
    """The title pydantic gives a field: ``file_id`` → ``File Id``."""
    return name.title().replace("_", " ")


class SchemaBuilder:
    """Collects component schemas while converting types.

    One builder per OpenAPI document: :attr:`components` ends up holding every Struct, Enum and
    named union reachable from the types passed to :meth:`schema`. Two different classes that
    would get the same component name are refused, since one would silently hide the other.
    """

    def __init__(
        self,
        *,
        open_structs: Iterable[type] = (),
        named_unions: Mapping[frozenset[type], str] | None = None,
        overrides: Mapping[type, Mapping[str, Any]] | None = None,
    ) -> None:
        self.components: dict[str, dict[str, Any]] = {}
        self._open = set(open_structs)
        self._unions = dict(NAMED_UNIONS if named_unions is None else named_unions)
        self._overrides = dict(SCHEMA_OVERRIDES if overrides is None else overrides)
        self._owners: dict[str, object] = {}
        # msgspec.inspect sorts Literal values; the declared order is kept for the document.
        self._literals: list[tuple[Any, ...]] = []

    # --- public ---------------------------------------------------------------------------

    def schema(self, tp: Any) -> dict[str, Any]:
        """The schema of a type annotation (a ``$ref`` for Structs), registering components."""
        with self._literal_order(tp):
            return self._convert(mi.type_info(tp))

    def component(self, tp: type) -> str:
        """Register a Struct or Enum as a component and return its name."""
        info = mi.type_info(tp)
        if isinstance(info, mi.StructType):
            return self._struct(info)
        if isinstance(info, mi.EnumType):
            return self._enum(info.cls)
        raise TypeError(f"{tp!r} is not a Struct or Enum; only those become named components")

    def name_of(self, tp: type) -> str:
        """The component name a Struct or Enum gets (``__openapi__["name"]`` or the class name)."""
        return self._extra(tp).get("name") or tp.__name__

    def add(self, name: str, schema: dict[str, Any], owner: object | None = None) -> None:
        """Add a hand-written component, refusing a different one under the same name."""
        owner = owner if owner is not None else ("literal", name)
        if name in self._owners and self._owners[name] != owner:
            raise ValueError(
                f"two schemas want the OpenAPI component name {name!r}: "
                f"{_describe(self._owners[name])} and {_describe(owner)}"
            )
        self._owners[name] = owner
        self.components[name] = schema

    # --- conversion -----------------------------------------------------------------------

    def _extra(self, cls: type) -> dict[str, Any]:
        extra = dict(self._overrides.get(cls, {}))
        extra.update(vars(cls).get("__openapi__", {}) or {})
        return extra

    def _claim(self, name: str, cls: type) -> bool:
        """Reserve ``name`` for ``cls``; False when it is already registered (or in progress)."""
        owner = self._owners.get(name)
        if owner is cls:
            return False
        if owner is not None:
            raise ValueError(
                f"two schemas want the OpenAPI component name {name!r}: {_describe(owner)} and "
                f"{_describe(cls)}; rename one (class name or __openapi__ = {{'name': ...}})"
            )
        self._owners[name] = cls
        self.components[name] = {}  # placeholder so recursive references terminate
        return True

    def _convert(self, t: mi.Type) -> dict[str, Any]:
        if isinstance(t, mi.Metadata):
            out = self._convert(t.type)
            out.update(t.extra_json_schema or {})
            return out
        if isinstance(t, mi.AnyType):
            return {}
        if isinstance(t, mi.NoneType):
            return {"type": "null"}
        if isinstance(t, mi.BoolType):
            return {"type": "boolean"}
        if isinstance(t, (mi.IntType, mi.FloatType)):
            out = {"type": "integer" if isinstance(t, mi.IntType) else "number"}
            for attr, key in (("ge", "minimum"), ("le", "maximum"), ("gt", "exclusiveMinimum"),
                              ("lt", "exclusiveMaximum"), ("multiple_of", "multipleOf")):
                value = getattr(t, attr)
                if value is not None:
                    out[key] = float(value) if key != "multipleOf" else value
            return out
        if isinstance(t, mi.StrType):
            out = {"type": "string"}
            _put(out, "minLength", t.min_length)
            _put(out, "maxLength", t.max_length)
            _put(out, "pattern", t.pattern)
            return out
        if isinstance(t, (mi.BytesType, mi.ByteArrayType, mi.MemoryViewType)):
            return {"type": "string", "contentEncoding": "base64"}
        if isinstance(t, mi.DateTimeType):
            return {"type": "string", "format": "date-time"}
        if isinstance(t, mi.DateType):
            return {"type": "string", "format": "date"}
        if isinstance(t, mi.UUIDType):
            return {"type": "string", "format": "uuid"}
        if isinstance(t, mi.DecimalType):
            return {"type": "string", "format": "decimal"}
        if isinstance(t, mi.LiteralType):
            return _literal(self._declared_order(t.values))
        if isinstance(t, mi.EnumType):
            return ref(self._enum(t.cls))
        if isinstance(t, (mi.ListType, mi.VarTupleType, mi.SetType, mi.FrozenSetType)):
            out = {"items": self._convert(t.item_type), "type": "array"}
            if isinstance(t, (mi.SetType, mi.FrozenSetType)):
                out["uniqueItems"] = True
            _put(out, "minItems", t.min_length)
            _put(out, "maxItems", t.max_length)
            return out
        if isinstance(t, mi.TupleType):
            items = [self._convert(x) for x in t.item_types]
            return {"prefixItems": items, "type": "array", "minItems": len(items), "maxItems": len(items)}
        if isinstance(t, mi.DictType):
            value = self._convert(t.value_type)
            out = {"additionalProperties": value if value else True, "type": "object"}
            _put(out, "minProperties", t.min_length)
            _put(out, "maxProperties", t.max_length)
            return out
        if isinstance(t, mi.StructType):
            return ref(self._struct(t))
        if isinstance(t, mi.UnionType):
            return self._union(t)
        raise TypeError(f"no OpenAPI schema rule for {t!r}; add one in kiapi_core.openapi.schema")

    @contextlib.contextmanager
    def _literal_order(self, annotation: Any) -> Iterator[None]:
        saved = self._literals
        self._literals = list(_literals_in(annotation))
        try:
            yield
        finally:
            self._literals = saved

    def _declared_order(self, values: tuple[Any, ...]) -> tuple[Any, ...]:
        for declared in self._literals:
            if set(declared) == set(values) and len(declared) == len(values):
                return declared
        return values

    def _union(self, t: mi.UnionType) -> dict[str, Any]:
        members = [m for m in t.types if not isinstance(m, mi.NoneType)]
        nullable = len(members) != len(t.types)
        structs = [m for m in members if isinstance(m, mi.StructType)]
        if len(structs) > 1 and len(structs) == len(members) and all(s.tag is not None for s in structs):
            branches = [self._tagged_union(structs)]
        else:
            branches = [self._convert(m) for m in members]
        if nullable:
            branches.append({"type": "null"})
        return branches[0] if len(branches) == 1 else {"anyOf": branches}

    def _tagged_union(self, structs: list[mi.StructType]) -> dict[str, Any]:
        names = [self._struct(s) for s in structs]
        schema = {
            "oneOf": [ref(n) for n in names],
            "discriminator": {
                "propertyName": structs[0].tag_field,
                "mapping": {str(s.tag): REF_PREFIX + n for s, n in sorted(zip(structs, names), key=_by_tag)},
            },
        }
        name = self._unions.get(frozenset(s.cls for s in structs))
        if name is None:
            return schema
        self.add(name, schema, owner=("union", name))
        return ref(name)

    def _enum(self, cls: type[enum.Enum]) -> str:
        name = self.name_of(cls)
        if self._claim(name, cls):
            values = [m.value for m in cls]
            schema = _literal(values)
            schema.pop("const", None)
            schema["enum"] = values
            schema["title"] = name
            _apply(schema, self._extra(cls))
            self.components[name] = schema
        return name

    def _struct(self, t: mi.StructType) -> str:
        cls = t.cls
        name = self.name_of(cls)
        if not self._claim(name, cls):
            return name
        props: dict[str, Any] = {}
        if t.tag_field is not None:
            tag = _literal([t.tag])
            props[t.tag_field] = {**tag, "title": field_title(t.tag_field), "default": t.tag}
        hints = _hints(cls)
        for f in t.fields:
            props[f.encode_name] = self._property(f, hints.get(f.name))
        schema: dict[str, Any] = {"properties": props}
        if cls in self._open and not t.forbid_unknown_fields:
            schema["additionalProperties"] = True
        schema["type"] = "object"
        required = [f.encode_name for f in t.fields if f.required]
        if required:
            schema["required"] = required
        schema["title"] = name
        doc = vars(cls).get("__doc__")
        if doc:
            schema["description"] = inspect.cleandoc(doc)
        _apply(schema, self._extra(cls))
        self.components[name] = schema
        return name

    def _property(self, f: mi.Field, annotation: Any) -> dict[str, Any]:
        with self._literal_order(annotation):
            out = self._convert(f.type)
        if "$ref" not in out and "title" not in out:
            out["title"] = field_title(f.name)
        if f.default is not msgspec.NODEFAULT and f.default is not None:
            out["default"] = msgspec.to_builtins(f.default)
        return out


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls, include_extras=True)
    except Exception:  # unresolvable forward references: fall back to msgspec's value order
        return {}


def _literals_in(annotation: Any, depth: int = 0) -> Iterator[tuple[Any, ...]]:
    """Every ``Literal[...]`` argument tuple inside an annotation, in declaration order."""
    if annotation is None or depth > 20:
        return
    if typing.get_origin(annotation) is typing.Literal:
        yield typing.get_args(annotation)
        return
    for arg in typing.get_args(annotation):
        if not isinstance(arg, msgspec.Meta):
            yield from _literals_in(arg, depth + 1)


def _literal(values: Iterable[Any]) -> dict[str, Any]:
    values = [v.value if isinstance(v, enum.Enum) else v for v in values]
    kinds = {_json_type(v) for v in values}
    out: dict[str, Any] = {"type": kinds.pop()} if len(kinds) == 1 else {}
    if len(values) == 1:
        out["const"] = values[0]
    else:
        out["enum"] = list(values)
    return out


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if value is None:
        return "null"
    return "string"


def _apply(schema: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if key == "name":
            continue
        if value is None:
            schema.pop(key, None)
        else:
            schema[key] = copy.deepcopy(value)  # documents must not alias class-level data


def _put(out: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        out[key] = value


def _by_tag(pair: tuple[mi.StructType, str]) -> str:
    return str(pair[0].tag)


def _describe(owner: object) -> str:
    if isinstance(owner, type):
        return f"{owner.__module__}.{owner.__qualname__}"
    return repr(owner)
