"""Payments made through the API, the customer absent (auto top-up): a PaymentIntent created and
confirmed off-session with a saved card or one of Stripe's test cards, which succeeds or is declined
(Stripe's 402 card error) and sends its webhook; the customers' saved cards (PaymentMethods) and
their detaching; refunds and disputes of any PaymentIntent's charge; and the control that makes the
next off-session payment decline, need authentication or succeed, whatever its card."""

from __future__ import annotations

import re

from local.stripe_emulator import cards
from local.stripe_emulator.cards import CardDeclined
from local.stripe_emulator.objects import EmulatorError, Json, snapshot
from local.stripe_emulator.params import (
    PAYMENT_INTENT_PARAMS,
    PAYMENT_METHOD_LIST_PARAMS,
    coerce,
    missing,
    page,
    validate,
)
from local.stripe_emulator.payments import Payments

_OFF_SESSION = ("true", "one_off", "recurring")  # off_session=true, or the kind of payment it is
_REUSED = (
    "The provided PaymentMethod was previously used with a PaymentIntent without Customer attachment, "
    "shared with a connected account, or was detached from a Customer. It may not be used again. To use a "
    "PaymentMethod multiple times, you must attach it to a Customer first."
)
_RETURN_URL = (
    "This PaymentIntent is configured to accept payment methods enabled in your Dashboard. Because some of "
    "these payment methods might redirect your customer off of your page, you must provide a `return_url`. "
    "If you don't want to accept redirect-based payment methods, set `automatic_payment_methods[enabled]` to "
    "`true` and `automatic_payment_methods[allow_redirects]` to `never` when creating Setup Intents and "
    "Payment Intents."
)


class Intents(Payments):
    """PaymentIntents and PaymentMethods through the API; the control actions keyed on a PaymentIntent."""

    def refund_payment_intent(self, intent_id: str, amount: int | None = None) -> list[Json]:
        """Refund part or (None) the rest of the PaymentIntent's charge; sends charge.refunded."""
        return self._act(self._intent_action, intent_id, "refund", {"amount": amount})[0]

    def dispute_payment_intent(self, intent_id: str) -> list[Json]:
        """Open a fraud chargeback of the PaymentIntent's charge; sends charge.dispute.created."""
        return self._act(self._intent_action, intent_id, "dispute", {})[0]

    def close_payment_intent_dispute(self, intent_id: str, status: str) -> list[Json]:
        """Close its dispute as "won" or "lost"; sends charge.dispute.closed."""
        return self._act(self._intent_action, intent_id, "close_dispute", {"status": status})[0]

    # ---- Stripe's endpoints (run under the lock by RestApi._api) ------------------------------------

    def _create_payment_intent(self, params: Json) -> Json:
        """POST /v1/payment_intents, confirmed at once (confirm=true) or not, off-session or not."""
        p = validate(params, PAYMENT_INTENT_PARAMS)
        for required in ("amount", "currency"):
            if required not in p:
                raise missing(required)
        if not re.fullmatch(r"[a-zA-Z]{3}", p["currency"]):
            raise EmulatorError(f"Invalid currency: {p['currency']}", param="currency")
        if p["amount"] < 1:
            raise EmulatorError("This value must be greater than or equal to 1.", param="amount")
        p["currency"] = p["currency"].lower()
        off_session, confirm = p.get("off_session", "false"), p.get("confirm", False)
        if off_session not in (*_OFF_SESSION, "false"):
            raise EmulatorError(f"Invalid boolean: {off_session}", param="off_session")
        off = off_session in _OFF_SESSION
        if off and not confirm:
            raise EmulatorError("`off_session` can only be used when `confirm` is true.", param="off_session")
        if p.get("customer"):
            self._get("customer", p["customer"], param="customer", status=400)
        method = self._method_for(p) if "payment_method" in p else None
        if confirm and method is None:
            raise EmulatorError(
                "You cannot confirm this PaymentIntent because it's missing a payment method.",
                code="payment_intent_unexpected_state",
                param="payment_method",
            )
        redirects = p.get("automatic_payment_methods", {}).get("allow_redirects") != "never"
        if confirm and not off and redirects and not {"return_url", "payment_method_types"} & set(p):
            raise EmulatorError(_RETURN_URL, param="return_url")
        if method is not None:
            p["payment_method"] = self._store(method)["id"]
        intent = self._store(cards.payment_intent(p))
        return self._confirm(intent, method, off) if method is not None and confirm else intent

    def _method_for(self, p: Json) -> Json:
        """The PaymentMethod a PaymentIntent names: a new one for a test card's token (as Stripe makes
        one of `pm_card_visa`), or a stored one the intent's customer may use."""
        given, customer = p["payment_method"], p.get("customer")
        if given in cards.TEST_CARDS:
            return cards.payment_method(cards.card_named(given), None)
        method = self._get("payment_method", given, param="payment_method", status=400)
        if method["customer"] is None:
            raise EmulatorError(_REUSED, param="payment_method")
        if method["customer"] != customer:
            raise EmulatorError(
                f"The PaymentMethod {given} is attached to Customer {method['customer']}; pass that Customer "
                "as `customer` to use it.",
                param="customer" if customer else "payment_method",
            )
        return method

    def _confirm(self, intent: Json, method: Json, off: bool) -> Json:
        """Charge the card: the intent succeeds, or the issuer declines (a 402 card error)."""
        card = cards.card_of(method)
        if off and self._next_off_session is not None:  # the control's, for this one payment only
            decline, self._next_off_session = cards.OUTCOMES[self._next_off_session], None
        elif off:
            decline = card.off_session()
        elif card.authenticates:  # on-session: the customer is asked to authenticate
            intent.update(status="requires_action", next_action={"type": "use_stripe_sdk", "use_stripe_sdk": {}})
            return intent
        else:
            decline = card.decline
        charge = self._store(cards.charge(intent, method, decline))
        intent["latest_charge"] = charge["id"]
        if decline is None:
            intent.update(status="succeeded", amount_received=intent["amount"])
            self._emit("payment_intent.succeeded", intent)
            return intent
        error = cards.payment_error(decline, charge, method)
        intent.update(status="requires_payment_method", payment_method=None, last_payment_error=error)
        self._emit("payment_intent.payment_failed", intent)
        raise CardDeclined(error, intent)

    def _list_payment_methods(self, customer_id: str, params: Json) -> Json:
        """GET /v1/customers/{id}/payment_methods: the cards attached to the customer, newest first."""
        p = validate(params, PAYMENT_METHOD_LIST_PARAMS)
        self._get("customer", customer_id)
        found = [
            x
            for x in self._all("payment_method")
            if x["customer"] == customer_id and all(x[f] == p[f] for f in ("type", "allow_redisplay") if f in p)
        ]
        return page(found, p, f"/v1/customers/{customer_id}/payment_methods")

    def _detach_payment_method(self, method_id: str, params: Json) -> Json:
        """POST /v1/payment_methods/{id}/detach; sends payment_method.detached."""
        validate(params, {"expand": "list"})
        method = self._get("payment_method", method_id)
        if method["customer"] is None:
            raise EmulatorError(
                "The payment method you provided is not attached to a customer so detachment is impossible.",
                param="payment_method",
            )
        customer, method["customer"] = method["customer"], None
        self._emit("payment_method.detached", method)["data"]["previous_attributes"] = {"customer": customer}
        return method

    # ---- control (/_emulator/...) -------------------------------------------------------------------

    def _control_payment_intent(self, intent_id: str, action: str, params: Json) -> Json:
        """POST /_emulator/payment_intents/{id}/{refund|dispute|close_dispute}: on its charge."""
        events, deliveries = self._act(self._intent_action, intent_id, action, params)
        return {"events": [e["id"] for e in events], "deliveries": [list(d) for d in deliveries]}

    def _intent_action(self, intent_id: str, action: str, params: Json) -> list[Json]:
        """Refund, dispute or close the dispute of the PaymentIntent's successful charge."""
        intent = self._get("payment_intent", intent_id)
        if action not in ("refund", "dispute", "close_dispute"):
            raise EmulatorError(f"Unknown action: {action}", status=404)
        if intent["status"] != "succeeded":
            raise EmulatorError(f"PaymentIntent {intent_id} has no successful charge.", code="no_charge")
        charge = self._objects[intent["latest_charge"]]
        if action == "dispute":
            return self._dispute_charge(charge)
        if action == "close_dispute":
            return self._close_charge_dispute(charge, str(params.get("status", "")))
        given = params.get("amount")
        amount = None if given in (None, "") else coerce(str(given), "int", "amount")
        return self._refund_charge(charge, amount, charge["payment_method_details"]["type"])

    def _control_next_off_session_payment(self, params: Json) -> Json:
        """POST /_emulator/next_off_session_payment outcome=decline|insufficient_funds|
        authentication_required|succeed: what the next off-session PaymentIntent does, whatever its card
        (outcome=card: as its card behaves); GET: the outcome waiting."""
        p = validate(params, {"outcome": "str"})
        with self._lock:
            if "outcome" in p:
                if p["outcome"] not in (*cards.OUTCOMES, "card"):
                    raise EmulatorError(
                        f"Invalid outcome: {p['outcome']!r} (expected one of {', '.join(cards.OUTCOMES)} or card).",
                        param="outcome",
                    )
                self._next_off_session = None if p["outcome"] == "card" else p["outcome"]
                self._save()
            return {"nextOffSessionPayment": snapshot(self._next_off_session)}
