"""Request examples for the OpenAPI documents, so Swagger's "Try it out" runs as it stands.

Swagger UI pre-fills a request body from the media type's ``examples``; without them it
invents one from the schema (``"model": "string"``, ``"width": 0``), which the server rightly
refuses. An operation declares its example (``Operation.example``); when it does not, one is
derived from the request schema: required fields only, a FileRef as a small inline image, so a
third-party plugin's page still gets a body that decodes.

The sample inputs are tiny real files inlined as data URLs (no upload needed, nothing remote):
a 64×64 PNG (a sun over a hill, 532 bytes) and a training ZIP holding it with its caption.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

__all__ = ["SAMPLE_DATASET", "SAMPLE_IMAGE", "derived_example", "request_examples"]

_PNG_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAEAAAABACAMAAACdt4HsAAAAYFBMVEX60lqi1Xerx3GWx3+itHeuoG+coXujjHZ+0Y9j0aFy"
    "wpc/0bk/wrl6tpFVs6o5tb05qr1PkK49lLowlMOjfXajcnZ+eI+sY3CZY31+Y49Zfadacqc3eL5aY6c3Y74ePCj6+6wLAAAB"
    "b0lEQVR42u3M23pEMBRA4QQRpqjRRqZGO+//lmUQe+dIc9dv1v36yY9qVH2YtVPvsLc1YgNG64+A6hzQ6kAVAEbb38I/BIyW"
    "v4V/EOj2Wh2oDgBdZxHgHwFU54EOAtUhoHMC1RHgqsIC/Hfge+v+bBiGq1nbqA4AgCBL1wYVBga0zzWNbviBAe82olxzAIP+"
    "60IZAgjxCmUIIMQrlJFA6QHu7l8JZRRwmQoCxNVlKxrYCfKl6lVHgI04B9S1QZwFoFDMnQZqtP8FWInCB/TefxaKIgqoixDQ"
    "+/9ooAgDve9P0zQM9I4/BS3ADQYArv35VGoJA7fb5xKf0/Y8z8KAgADP0Z5nU/pPESAEBniOygyBUgQIP5BlukARIIQJcPPf"
    "CUoRIKwAt/yLQNeIXBIOgFuA5JkGSAfAtvR/ExQgrQBjhpDsYWAhMMCYISQJFiAgdYBp6f9MIEBigBkZf5JgQEoAMEsW4BHZ"
    "C3gBL+DfAL+VVh3/wh9sqgAAAABJRU5ErkJggg=="
)
_ZIP_BASE64 = (
    "UEsDBBQAAAAAAAAAIVxxwmQgFAIAABQCAAAKAAAAc3Vuc2V0LnBuZ4lQTkcNChoKAAAADUlIRFIAAABAAAAAQAgDAAAAnbeB"
    "7AAAAGBQTFRF+tJaotV3q8dxlsd/orR3rqBvnKF7o4x2ftGPY9GhcsKXP9G5P8K5eraRVbOqObW9Oaq9T5CuPZS6MJTDo312"
    "o3J2fniPrGNwmWN9fmOPWX2nWnKnN3i+WmOnN2O+Hjwo+vusCwAAAW9JREFUeNrtzNt6RDAUQOEEEaao0UamRjvv/5ZlEHvn"
    "SHPXb9b9+smPalR9mLVT77C3NWIDRuuPgOoc0OpAFQBG29/CPwSMlr+FfxDo9lodqA4AXWcR4B8BVOeBDgLVIaBzAtUR4KrC"
    "Avx34Hvr/mwYhqtZ26gOAIAgS9cGFQYGtM81jW74gQHvNqJccwCD/utCGQII8QplCCDEK5SRQOkB7u5fCWUUcJkKAsTVZSsa"
    "2AnypepVR4CNOAfUtUGcBaBQzJ0GarT/BViJwgf03n8WiiIKqIsQ0Pv/aKAIA73vT9M0DPSOPwUtwA0GAK79+VRqCQO32+cS"
    "n9P2PM/CgIAAz9GeZ1P6TxEgBAZ4jsoMgVIECD+QZbpAESCECXDz3wlKESCsALf8i0DXiFwSDoBbgOSZBkgHwLb0fxMUIK0A"
    "Y4aQ7GFgITDAmCEkCRYgIHWAaen/TCBAYoAZGX+SYEBKADBLFuAR2Qt4AS/g3wC/lVYd/8IfbKoAAAAASUVORK5CYIJQSwME"
    "FAAAAAAAAAAhXP7uMzAqAAAAKgAAAAoAAABzdW5zZXQudHh0YSBzdW4gb3ZlciBhIGdyZWVuIGhpbGwsIGZsYXQgaWxsdXN0"
    "cmF0aW9uUEsBAhQDFAAAAAAAAAAhXHHCZCAUAgAAFAIAAAoAAAAAAAAAAAAAAIABAAAAAHN1bnNldC5wbmdQSwECFAMUAAAA"
    "AAAAACFc/u4zMCoAAAAqAAAACgAAAAAAAAAAAAAAgAE8AgAAc3Vuc2V0LnR4dFBLBQYAAAAAAgACAHAAAACOAgAAAAA="
)

#: A FileRef to a 64×64 PNG, inline: valid input for any image operation.
SAMPLE_IMAGE: dict[str, str] = {"type": "data_url", "data_url": "data:image/png;base64," + _PNG_BASE64}
#: A FileRef to a training ZIP (one image and its same-stem caption), inline.
SAMPLE_DATASET: dict[str, str] = {"type": "data_url", "data_url": "data:application/zip;base64," + _ZIP_BASE64}

_FILE_REF = "#/components/schemas/FileRef"


def request_examples(example: Mapping[str, Any] | None, schema: Mapping[str, Any],
                     components: Mapping[str, Any]) -> dict[str, Any]:
    """The media type's ``examples`` map: the declared example, else one derived from the schema."""
    if example is not None:
        return {"default": {"summary": "A request that runs as it stands", "value": copy.deepcopy(dict(example))}}
    return {"default": {"summary": "The required fields (others take their defaults)",
                        "value": derived_example(schema, components)}}


def derived_example(schema: Mapping[str, Any], components: Mapping[str, Any]) -> dict[str, Any]:
    """Values for the required properties of an object schema (a ``$ref`` is followed)."""
    schema = _resolve(schema, components)
    out: dict[str, Any] = {}
    for name in schema.get("required", []):
        value = _value(schema.get("properties", {}).get(name, {}), components)
        if value is not None:
            out[name] = value
    return out


def _value(prop: Mapping[str, Any], components: Mapping[str, Any]) -> Any:
    if prop.get("$ref") == _FILE_REF:
        return copy.deepcopy(SAMPLE_IMAGE)
    if "examples" in prop:
        return copy.deepcopy(prop["examples"][0])
    if "default" in prop:
        return copy.deepcopy(prop["default"])
    for option in prop.get("anyOf", []):
        if option.get("type") != "null":
            return _value(option, components)
    prop = _resolve(prop, components)
    if "enum" in prop:
        return prop["enum"][0]
    if "const" in prop:
        return prop["const"]
    kind = prop.get("type")
    if kind == "object":
        return derived_example(prop, components)
    if kind in ("integer", "number"):
        low = prop.get("minimum", prop.get("exclusiveMinimum", 0))
        return low + 1 if "exclusiveMinimum" in prop and "minimum" not in prop else low
    return {"string": "a lighthouse on a cliff at dusk", "boolean": False, "array": []}.get(str(kind))


def _resolve(schema: Mapping[str, Any], components: Mapping[str, Any]) -> Mapping[str, Any]:
    target = schema.get("$ref")
    if isinstance(target, str) and target.startswith("#/components/schemas/"):
        return components.get(target.rsplit("/", 1)[-1], {})
    return schema
