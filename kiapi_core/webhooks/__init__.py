"""Webhooks: ``webhook`` and ``webhook_events_filter`` on every operation request, delivered
per the Standard Webhooks specification. Plugins do nothing: the core handles the fields.

* :mod:`.request`: taking the fields off a request body and checking them;
* :mod:`.dispatcher`: job events to signed, retried, persisted deliveries;
* :mod:`.signing`: the signature scheme; :mod:`.store`: the SQLite table of deliveries.
"""

from .dispatcher import EVENTS, WebhookDispatcher
from .request import take_webhook
from .signing import sign, verify
from .store import Subscription

__all__ = ["EVENTS", "Subscription", "WebhookDispatcher", "sign", "take_webhook", "verify"]
