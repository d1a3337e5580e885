"""Standard Webhooks signatures (https://www.standardwebhooks.com/).

A delivery carries ``webhook-id`` (the message id, the same on every retry so receivers can
drop duplicates), ``webhook-timestamp`` (integer seconds since the epoch) and
``webhook-signature``: ``v1,`` + base64 of HMAC-SHA256 over ``{id}.{timestamp}.{body}`` keyed
with the secret's bytes. Secrets are written ``whsec_`` + base64, as the specification's
libraries expect; generate one with
``python3 -c "import base64,secrets; print('whsec_' + base64.b64encode(secrets.token_bytes(32)).decode())"``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from ..errors import SettingsError

PREFIX = "whsec_"
GENERATE = ("python3 -c \"import base64,secrets; print('whsec_' + "
            "base64.b64encode(secrets.token_bytes(32)).decode())\"")


def secret_bytes(secret: str) -> bytes:
    """The key of a ``whsec_<base64>`` secret; SettingsError saying how to make one otherwise."""
    if not secret.startswith(PREFIX):
        raise SettingsError(f"KIAPI_WEBHOOK_SECRET must be 'whsec_' followed by base64 (the Standard "
                            f"Webhooks format); generate one with: {GENERATE}")
    try:
        key = base64.b64decode(secret[len(PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise SettingsError(f"KIAPI_WEBHOOK_SECRET is not valid base64 after 'whsec_'; generate one "
                            f"with: {GENERATE}") from None
    if len(key) < 24:
        raise SettingsError(f"KIAPI_WEBHOOK_SECRET is too short ({len(key)} bytes; use 24 to 64); "
                            f"generate one with: {GENERATE}")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def verify(key: bytes, headers: dict[str, str], body: bytes, *, tolerance_s: float = 300.0,
           now: float | None = None) -> bool:
    """What a receiver does: check any ``v1`` signature and that the timestamp is recent."""
    import time

    msg_id, stamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
    if not msg_id or not stamp.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(stamp)) > tolerance_s:
        return False
    expected = sign(key, msg_id, int(stamp), body)
    return any(hmac.compare_digest(expected, candidate)
               for candidate in headers.get("webhook-signature", "").split(" ") if candidate)


__all__ = ["GENERATE", "secret_bytes", "sign", "verify"]
