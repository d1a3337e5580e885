"""The webhook fields of an operation request, and how the served OpenAPI documents them.

Every operation accepts two optional fields, handled by the core before the body is decoded
into the plugin's request Struct (so plugins never see them and need not declare them):

* ``webhook``: an http(s) URL that receives the job's events;
* ``webhook_events_filter``: which events to send, any of ``start``, ``progress``,
  ``completed`` (Cog's names; default: all).
"""

from __future__ import annotations

import copy
from typing import Any

from ..errors import InvalidRequest
from .store import Subscription

FIELDS = ("webhook", "webhook_events_filter")
MAX_URL = 2048
_EVENTS = ("start", "progress", "completed")

SCHEMA_PROPERTIES: dict[str, Any] = {
    "webhook": {
        "type": "string", "format": "uri", "maxLength": MAX_URL,
        "description": "An http(s) URL that receives the job's events as signed POSTs (Standard "
                       "Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`). The server "
                       "needs `KIAPI_WEBHOOK_SECRET`. Deliveries are retried with backoff and survive a "
                       "restart. kiapi extension.",
    },
    "webhook_events_filter": {
        "type": "array", "items": {"type": "string", "enum": list(_EVENTS)}, "uniqueItems": True,
        "minItems": 1, "default": list(_EVENTS),
        "description": "Which events reach `webhook`: `start` (the job began running), `progress` "
                       "(at most one per second), `completed` (succeeded, failed or canceled). kiapi "
                       "extension.",
    },
}


def take_webhook(raw: Any, *, enabled: bool) -> Subscription | None:
    """Remove the webhook fields from the JSON body ``raw`` and check them (422 naming the
    field). ``None`` when the request names no webhook."""
    if not isinstance(raw, dict) or not any(name in raw for name in FIELDS):
        return None
    url = raw.pop("webhook", None)
    events = raw.pop("webhook_events_filter", None)
    if url is None:
        if events is not None:
            raise InvalidRequest("webhook_events_filter needs a webhook URL", field="webhook_events_filter")
        return None
    if not isinstance(url, str) or not url.strip() or len(url) > MAX_URL:
        raise InvalidRequest(f"webhook must be an http(s) URL of at most {MAX_URL} characters", field="webhook")
    if not enabled:
        raise InvalidRequest(
            "this server sends no webhooks: its operator has not set KIAPI_WEBHOOK_SECRET (needed to sign "
            "them); drop the webhook field, or poll GET /v1/jobs/{id}", field="webhook", code="webhooks_disabled")
    chosen = list(_EVENTS) if events is None else events
    if (not isinstance(chosen, list) or not chosen
            or not all(isinstance(e, str) and e in _EVENTS for e in chosen)):
        raise InvalidRequest("webhook_events_filter must be a non-empty list of: start, progress, completed",
                             field="webhook_events_filter")
    return Subscription(url=url.strip(), events=frozenset(chosen))


def document_webhook_fields(document: dict[str, Any]) -> dict[str, Any]:
    """A capability's OpenAPI document with the webhook fields added to every operation's
    request schema (new optional properties: a contract client is unaffected)."""
    document = copy.deepcopy(document)
    schemas = document.get("components", {}).get("schemas", {})
    for item in document.get("paths", {}).values():
        body = item.get("post", {}).get("requestBody", {}).get("content", {}).get("application/json", {})
        schema = body.get("schema", {})
        ref = schema.get("$ref", "")
        target = schemas.get(ref.rsplit("/", 1)[-1]) if ref.startswith("#/components/schemas/") else schema
        if isinstance(target, dict) and isinstance(target.get("properties"), dict):
            for name, prop in SCHEMA_PROPERTIES.items():
                target["properties"].setdefault(name, copy.deepcopy(prop))
    return document
