"""Stripe events for tests, built on Stripe's own example objects (a trimmed copy of the official
fixtures, kept in tests/events/stripe_objects.json) and signed as Stripe signs them."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TRIMMED = ROOT / "tests" / "events" / "stripe_objects.json"
SECRET = "whsec_test_secret"


def stripe_objects() -> dict[str, Any]:
    """Stripe's example objects by name: checkout.session, charge, dispute, event."""
    data: dict[str, Any] = json.loads(TRIMMED.read_text())
    return data


OBJECTS = stripe_objects()


def event(event_type: str, obj: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
    out = copy.deepcopy(OBJECTS["event"])
    out.update(
        {
            "id": event_id or f"evt_{uuid.uuid4().hex[:24]}",
            "type": event_type,
            "created": int(time.time()),
            "data": {"object": obj, "previous_attributes": None},
        }
    )
    return out


def session(
    *,
    user: str = "user-1",
    package: str = "starter",
    amount: int = 500,
    currency: str = "usd",
    paid: bool = True,
    session_id: str | None = None,
    payment_intent: str | None = None,
) -> dict[str, Any]:
    obj = copy.deepcopy(OBJECTS["checkout.session"])
    obj.update(
        {
            "id": session_id or f"cs_test_{uuid.uuid4().hex[:24]}",
            "mode": "payment",
            "status": "complete",
            "payment_status": "paid" if paid else "unpaid",
            "client_reference_id": user,
            "metadata": {"userId": user, "packageId": package, "credits": "100"},
            "amount_total": amount,
            "amount_subtotal": amount,
            "currency": currency,
            "payment_intent": payment_intent or f"pi_{uuid.uuid4().hex[:24]}",
            "customer": "cus_test",
        }
    )
    return obj


def charge(payment_intent: str, *, amount: int = 500, refunded: int = 0, currency: str = "usd") -> dict[str, Any]:
    obj = copy.deepcopy(OBJECTS["charge"])
    obj.update(
        {
            "id": "ch_" + payment_intent[3:],
            "amount": amount,
            "amount_captured": amount,
            "amount_refunded": refunded,
            "refunded": refunded >= amount,
            "currency": currency,
            "payment_intent": payment_intent,
        }
    )
    return obj


def dispute(
    payment_intent: str, *, status: str = "needs_response", amount: int = 500, dispute_id: str | None = None
) -> dict[str, Any]:
    obj = copy.deepcopy(OBJECTS["dispute"])
    obj.update(
        {
            "id": dispute_id or "dp_" + payment_intent[3:],
            "amount": amount,
            "currency": "usd",
            "status": status,
            "charge": "ch_" + payment_intent[3:],
            "payment_intent": payment_intent,
        }
    )
    return obj


def signature(payload: bytes, secret: str = SECRET, timestamp: int | None = None) -> str:
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


def function_url_event(
    payload: bytes, sig: str | None, *, base64_body: bool = False, method: str = "POST"
) -> dict[str, Any]:
    """The Lambda Function URL event (payload 2.0) for a Stripe delivery."""
    headers = {"content-type": "application/json; charset=utf-8", "user-agent": "Stripe/1.0"}
    if sig is not None:
        headers["stripe-signature"] = sig
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/",
        "rawQueryString": "",
        "headers": headers,
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "webhook",
            "domainName": "webhook.lambda-url.us-east-1.on.aws",
            "domainPrefix": "webhook",
            "http": {
                "method": method,
                "path": "/",
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "Stripe/1.0",
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "time": "25/Nov/2026:03:00:00 +0000",
            "timeEpoch": int(time.time() * 1000),
        },
        "body": base64.b64encode(payload).decode() if base64_body else payload.decode(),
        "isBase64Encoded": base64_body,
    }


def signed(evt: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    payload = json.dumps(evt, indent=2).encode()
    return function_url_event(payload, signature(payload), **kwargs)
