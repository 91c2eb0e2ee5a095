"""How a delivery proves it came from this service: the signed headers of a webhook's `POST`.

`X-Trainyard-Timestamp: <unix seconds>` and `X-Trainyard-Signature: sha256=<hex HMAC-SHA256 of
"<timestamp>.<body>" with the secret>`; receivers check both and reject old timestamps
(replays), and deduplicate by `X-Trainyard-Event-Id` (an attempt may be sent twice when its
worker was lost).
"""

from __future__ import annotations

import hmac
import time

from service.webhook_models import WebhookDelivery

USER_AGENT = "trainyard-webhooks/1"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """`X-Trainyard-Signature`: `sha256=` + hex HMAC-SHA256 of `timestamp.body` with `secret`."""
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, "sha256")
    return "sha256=" + mac.hexdigest()


def signed_headers(delivery: WebhookDelivery, secret: str, body: bytes) -> dict[str, str]:
    """The headers of one attempt's `POST` of `body`, signed now with `secret`."""
    timestamp = str(int(time.time()))
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Trainyard-Event": delivery.event,
        "X-Trainyard-Event-Id": delivery.event_id,
        "X-Trainyard-Delivery": delivery.id,
        "X-Trainyard-Attempt": str(delivery.attempt),
        "X-Trainyard-Timestamp": timestamp,
        "X-Trainyard-Signature": sign(secret, timestamp, body),
    }
