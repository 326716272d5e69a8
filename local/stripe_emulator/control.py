"""The emulator's control API (`/_emulator/...`, JSON or form, no key): what the tests, `make dev`'s
page (its Stripe test tools, through the gateway) and a person with curl use to act as the customer,
the bank and the card network, to see every event and delivery, to redeliver an event, and to stop
(or resume) sending webhooks."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from local.stripe_emulator.intents import Intents
from local.stripe_emulator.objects import BANK, Checkout, EmulatorError, Json, snapshot
from local.stripe_emulator.params import coerce, validate


class Control(Intents):
    """The control endpoints, and each Checkout Session's summary for the test tools."""

    def _control_session(self, session_id: str, action: str, params: Json) -> Json:
        """POST /_emulator/sessions/{id}/{action}."""
        given = params.get("amount")
        amount = None if given in (None, "") else given
        changes: dict[str, Callable[[], list[Json]]] = {
            "pay": lambda: self._complete(session_id, "card", str(params.get("payment_method") or "pm_card_visa")),
            "pay_later": lambda: self._complete(session_id, BANK),
            "async_succeed": lambda: self._settle(session_id, True),
            "async_fail": lambda: self._settle(session_id, False),
            "refund": lambda: self._refund(session_id, None if amount is None else coerce(amount, "int", "amount")),
            "dispute": lambda: self._dispute(session_id),
            "close_dispute": lambda: self._close_dispute(session_id, str(params.get("status", ""))),
            "expire": lambda: self._expire(session_id),
        }
        if action not in changes:
            raise EmulatorError(f"Unknown action: {action}", status=404)
        events, deliveries = self._act(changes[action])
        return {"events": [e["id"] for e in events], "deliveries": [list(d) for d in deliveries]}

    def _control_redeliver(self, event_id: str, params: Json) -> Json:
        """POST /_emulator/events/{id}/redeliver."""
        with self._lock:
            event = self._get("event", event_id)
        return {"events": [event_id], "deliveries": [[event_id, self.deliver(event)]]}

    def _control_events(self, params: Json) -> Json:
        """GET /_emulator/events: every event and delivery so far."""
        with self._lock:
            return {"events": snapshot(self.events), "deliveries": [list(d) for d in self.deliveries]}

    def _control_webhooks(self, params: Json) -> Json:
        """POST /_emulator/webhooks drop=true|false: stop (or resume) sending events."""
        p = validate(params, {"drop": "bool"})
        self.drop_deliveries = bool(p.get("drop", self.drop_deliveries))
        return {"dropDeliveries": self.drop_deliveries}

    def _control_sessions(self, params: Json) -> Json:
        """GET /_emulator/sessions: every Checkout Session, newest first, as a summary of what was paid
        and which control actions it allows now (the local page's test tools show them); filtered by
        `client_reference_id` and `customer` when given."""
        wanted = {k: params[k] for k in ("client_reference_id", "customer") if k in params}
        with self._lock:
            found = [s for s in self._all("checkout.session") if all(s[k] == v for k, v in wanted.items())]
            return {"sessions": [self._control_summary(session) for session in found]}

    def _control_summary(self, session: Json) -> Json:
        """One session for the test tools: its state (open, expired, processing, failed, paid), what
        was bought, refunds and dispute so far, and the control actions that apply to it now."""
        checkout = self._checkouts[session["id"]]
        intent = self._objects.get(session["payment_intent"] or "")
        charge = self._objects.get(checkout.charge or "")
        dispute = self._dispute_of(charge) if charge else None
        state = _state(session, intent)
        return {
            "id": session["id"],
            "created": session["created"],
            "state": state,
            "product": checkout.product_name,
            "credits": self._control_credits(session, checkout),
            "mode": session["mode"],
            "amount": session["amount_total"] or 0,
            "currency": session["currency"],
            "method": checkout.method if session["status"] == "complete" else None,
            "paymentIntent": intent["id"] if intent else None,
            "paymentMethod": checkout.payment_method,  # the card paid with (saved in setup mode or for later)
            "refunded": charge["amount_refunded"] if charge else 0,
            "dispute": dispute["status"] if dispute else None,
            "actions": _actions(state, charge, dispute),
        }

    def _control_credits(self, session: Json, checkout: Checkout) -> int | None:
        """The credits a session sells: its metadata's (the product writes the terms of the sale there
        at checkout), else its price's metadata (the catalog's Stripe sync writes them there)."""
        price = self._objects.get(checkout.price, {})
        for metadata in (session.get("metadata") or {}, price.get("metadata") or {}):
            text = str(metadata.get("credits", ""))
            if re.fullmatch(r"[0-9]{1,10}", text) and int(text) > 0:
                return int(text)
        return None


def _state(session: Json, intent: Json | None) -> str:
    """A session's state for the test tools: open, expired, processing, failed, paid, or (setup mode)
    saved."""
    if session["status"] == "open":
        return "open" if session["expires_at"] > time.time() else "expired"
    if session["status"] != "complete":
        return str(session["status"])
    if session["mode"] == "setup":
        return "saved"
    if session["payment_status"] == "paid":
        return "paid"
    return "processing" if intent is not None and intent["status"] == "processing" else "failed"


def _actions(state: str, charge: Json | None, dispute: Json | None) -> list[str]:
    """The control actions that apply now to a session in this state, with this charge and dispute."""
    actions = ["async_succeed", "async_fail"] if state == "processing" else []
    if charge is None:
        return actions
    dispute_status = dispute["status"] if dispute else None
    if charge["amount_refunded"] < charge["amount_captured"] and dispute_status not in ("needs_response", "lost"):
        actions.append("refund")
    if dispute is None:
        actions.append("dispute")
    elif dispute_status == "needs_response":
        actions.append("close_dispute")
    return actions
