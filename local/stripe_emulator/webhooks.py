"""Events and their webhooks: each change makes its events, which are kept, then signed as Stripe
signs them (`Stripe-Signature: t=...,v1=HMAC-SHA256`) and POSTed to the webhook URL, one request each,
waiting for the answer; a redirect or an unreachable endpoint is a failed delivery, as at Stripe."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from local.stripe_emulator import objects
from local.stripe_emulator.objects import Json
from local.stripe_emulator.state import EmulatorState

USER_AGENT = "Stripe/1.0 (+https://stripe.com/docs/webhooks)"
DELIVERY_TIMEOUT = 30.0


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Stripe counts a redirect from a webhook endpoint as a failed delivery; so do we."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        """Never follow."""
        return None


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


class Webhooks(EmulatorState):
    """The events of changes, and their signed deliveries."""

    webhook_secret: str
    webhook_url: str | None
    # (event id, HTTP status; 0: not sent or unreachable), in the order sent
    deliveries: list[tuple[str, int]]
    # While True, events are made but never sent (as when the webhook endpoint is down for longer
    # than Stripe retries): what `credits reconcile` exists to find. Status 0 in `deliveries`.
    drop_deliveries: bool

    def sign(self, payload: bytes, timestamp: int | None = None) -> str:
        """A Stripe-Signature header value for the payload."""
        ts = int(time.time()) if timestamp is None else timestamp
        mac = hmac.new(self.webhook_secret.encode(), f"{ts}.".encode() + payload, hashlib.sha256)
        return f"t={ts},v1={mac.hexdigest()}"

    def deliver(self, event: Json) -> int:
        """POST the event, signed, to webhook_url; returns the HTTP status (0 if unset or unreachable)."""
        with self._lock:
            if event["id"] not in self._objects:
                self._objects[event["id"]] = event
                self.events.append(event)
                self._save()
        payload = json.dumps(event, indent=2).encode()
        status = 0 if self.drop_deliveries else self._post(payload)
        with self._lock:
            self.deliveries.append((event["id"], status))
        return status

    def _post(self, payload: bytes) -> int:
        """Send one webhook request and wait for the answer."""
        if not self.webhook_url:
            return 0
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": USER_AGENT,
            "Stripe-Signature": self.sign(payload),
            "Accept": "*/*; q=0.5, application/xml",
            "Cache-Control": "no-cache",
        }
        request = urllib.request.Request(self.webhook_url, data=payload, headers=headers, method="POST")
        try:
            with _OPENER.open(request, timeout=DELIVERY_TIMEOUT) as response:
                response.read()
                return int(response.status)
        except urllib.error.HTTPError as exc:
            exc.close()
            return exc.code
        except (OSError, http.client.HTTPException, ValueError):
            return 0

    def _emit(self, kind: str, obj: Json) -> Json:
        """Record a new event carrying a snapshot of the object."""
        event = objects.event(kind, obj)
        self._objects[event["id"]] = event
        self.events.append(event)
        return event

    def _act(self, change: Callable[..., list[Json]], *args: Any) -> tuple[list[Json], list[tuple[str, int]]]:
        """Change state under the lock, then deliver the events outside it (the webhook may call back)."""
        with self._lock:
            try:
                events = change(*args)
            finally:
                self._save()  # kept before any webhook is sent: what the ledger may record, survives
        return events, [(event["id"], self.deliver(event)) for event in events]
