"""What happens to a payment outside the API, as Stripe's test tools simulate it: the customer pays on
the hosted page (by card, or by a delayed method that clears later or fails), the bank refunds, the
card network opens and closes a dispute. Each change sends its events."""

from __future__ import annotations

import time

from local.stripe_emulator import cards, objects
from local.stripe_emulator.objects import BANK, Checkout, EmulatorError, Json, format_amount, shape
from local.stripe_emulator.webhooks import Webhooks


class Payments(Webhooks):
    """The control actions on a Checkout Session, each sending its events (and returning them)."""

    def pay(self, session_id: str, payment_method: str = "pm_card_visa") -> list[Json]:
        """Card payment with one of Stripe's test cards (in setup mode, or with setup_future_usage, the
        card is saved): the session completes as paid; sends checkout.session.completed."""
        return self._act(self._complete, session_id, "card", payment_method)[0]

    def pay_later(self, session_id: str) -> list[Json]:
        """Delayed method (bank debit): completes unpaid; sends checkout.session.completed."""
        return self._act(self._complete, session_id, BANK)[0]

    def async_succeed(self, session_id: str) -> list[Json]:
        """The delayed payment clears; sends checkout.session.async_payment_succeeded."""
        return self._act(self._settle, session_id, True)[0]

    def async_fail(self, session_id: str) -> list[Json]:
        """The delayed payment fails; sends checkout.session.async_payment_failed."""
        return self._act(self._settle, session_id, False)[0]

    def refund(self, session_id: str, amount: int | None = None) -> list[Json]:
        """Refund part or (None) the rest of the charge; sends charge.refunded."""
        return self._act(self._refund, session_id, amount)[0]

    def dispute(self, session_id: str) -> list[Json]:
        """Open a fraud chargeback for the whole charge; sends charge.dispute.created."""
        return self._act(self._dispute, session_id)[0]

    def close_dispute(self, session_id: str, status: str) -> list[Json]:
        """Close the dispute as "won" or "lost"; sends charge.dispute.closed."""
        return self._act(self._close_dispute, session_id, status)[0]

    def expire(self, session_id: str) -> list[Json]:
        """Expire an open session; sends checkout.session.expired."""
        return self._act(self._expire, session_id)[0]

    # ---- the changes (run under the lock, by _act) -------------------------------------------------

    def _complete(self, session_id: str, method: str, card: str = "pm_card_visa") -> list[Json]:
        """The customer submits the checkout form with a card (one of Stripe's test cards) or a
        delayed method; in setup mode, or with setup_future_usage, the card is saved."""
        session, checkout = self._checkout(session_id)
        if session["status"] != "open" or session["expires_at"] <= time.time():
            state = session["status"] if session["status"] != "open" else "expired"
            raise EmulatorError(f"Checkout session {session_id} is {state}.", code="session_not_open")
        setup, test_card = session["mode"] == "setup", cards.card_named(card)
        if setup and method != "card":
            raise EmulatorError("A setup-mode session saves a card.", code="card_only")
        saving = setup or checkout.setup_future_usage is not None
        if method == "card" and ((not setup and test_card.decline) or (saving and not test_card.saveable)):
            # as on Stripe's page: the card is refused, the session stays open
            raise EmulatorError((test_card.decline or cards.GENERIC).message, status=402, code="card_declined")
        customer = self._objects.get(session["customer"] or "", {})
        email = customer.get("email") or session["customer_email"] or "customer@example.com"
        session.update(
            status="complete",
            url=None,
            customer_details=shape("customer_details", email=email, name=customer.get("name")),
        )
        if method == "card":  # attached to the customer (if any) when saved
            saved = cards.payment_method(test_card, session["customer"] if saving else None)
            checkout.payment_method = self._store(saved)["id"]
        if setup:
            made = cards.setup_intent(saved, session["customer"], checkout.pi_metadata, checkout.pi_description)
            session["setup_intent"] = self._store(made)["id"]
            return [self._emit("checkout.session.completed", session)]
        checkout.method = method
        intent = self._store(objects.payment_intent(session, checkout))
        intent.update(payment_method=checkout.payment_method, setup_future_usage=checkout.setup_future_usage)
        session["payment_intent"] = intent["id"]
        if method == "card":
            self._charge_succeeded(session, checkout, intent)
        return [self._emit("checkout.session.completed", session)]

    def _settle(self, session_id: str, succeeded: bool) -> list[Json]:
        """A pending delayed payment clears or fails."""
        session, checkout = self._checkout(session_id)
        intent = self._objects.get(session["payment_intent"] or "")
        if intent is None or intent["status"] != "processing":
            raise EmulatorError(
                f"Checkout session {session_id} has no pending delayed payment.", code="payment_not_pending"
            )
        if succeeded:
            self._charge_succeeded(session, checkout, intent)
            return [self._emit("checkout.session.async_payment_succeeded", session)]
        intent.update(
            status="requires_payment_method",
            processing=None,
            last_payment_error={
                "code": "insufficient_funds",
                "message": "The customer's account has insufficient funds to cover this payment.",
                "type": "card_error",
                "decline_code": None,
                "doc_url": None,
                "param": None,
            },
        )
        return [self._emit("checkout.session.async_payment_failed", session)]

    def _charge_succeeded(self, session: Json, checkout: Checkout, intent: Json) -> None:
        """Money moved: create the charge and mark the intent and the session paid."""
        charge = self._store(objects.charge(session, checkout, intent))
        card = self._objects.get(intent["payment_method"] or "")
        if card is not None:  # the card paid with (not the delayed method)
            details = charge["payment_method_details"]["card"]
            details.update({k: card["card"][k] for k in ("last4", "fingerprint", "exp_year")})
        checkout.charge = charge["id"]
        intent.update(
            status="succeeded",
            amount_received=intent["amount"],
            latest_charge=charge["id"],
            processing=None,
            payment_method=charge["payment_method"],
        )
        session["payment_status"] = "paid"

    def _paid_charge(self, session_id: str) -> tuple[Checkout, Json]:
        """The session's successful charge, or an error if nothing was paid."""
        _, checkout = self._checkout(session_id)
        if checkout.charge is None:
            raise EmulatorError(f"Checkout session {session_id} has no successful charge.", code="no_charge")
        return checkout, self._objects[checkout.charge]

    def _refund(self, session_id: str, amount: int | None) -> list[Json]:
        """Refund the session's charge."""
        checkout, charge = self._paid_charge(session_id)
        return self._refund_charge(charge, amount, checkout.method)

    def _dispute(self, session_id: str) -> list[Json]:
        """The cardholder's bank opens a chargeback of the session's charge."""
        checkout, charge = self._paid_charge(session_id)
        events = self._dispute_charge(charge)
        checkout.dispute = events[0]["data"]["object"]["id"]
        return events

    def _close_dispute(self, session_id: str, status: str) -> list[Json]:
        """The network decides the dispute of the session's charge."""
        return self._close_charge_dispute(self._paid_charge(session_id)[1], status)

    def _dispute_of(self, charge: Json) -> Json | None:
        """The charge's dispute, if any."""
        return next((d for d in self._all("dispute") if d["charge"] == charge["id"]), None)

    def _refund_charge(self, charge: Json, amount: int | None, method: str) -> list[Json]:
        """Refund part or (None) the rest of a charge; amount_refunded stays cumulative."""
        remaining = charge["amount_captured"] - charge["amount_refunded"]
        dispute = self._dispute_of(charge)
        if dispute and dispute["status"] in ("needs_response", "lost"):
            raise EmulatorError(
                f"Charge {charge['id']} has been charged back; cannot issue a refund.", code="charge_disputed"
            )
        if remaining <= 0:
            raise EmulatorError(f"Charge {charge['id']} has already been refunded.", code="charge_already_refunded")
        amount = remaining if amount is None else amount
        if not 0 < amount <= remaining:
            raise EmulatorError(
                # as Stripe says it, in money: "Refund amount ($9.99) is greater than unrefunded amount on
                # charge ($2.50)"
                f"Refund amount ({format_amount(amount, charge['currency'])}) is greater than unrefunded amount "
                f"on charge ({format_amount(remaining, charge['currency'])})."
                if amount > remaining
                else f"Refund amount ({format_amount(amount, charge['currency'])}) must be positive.",
                code="amount_too_large",
                param="amount",
            )
        refund = self._store(objects.refund(charge, amount, method))
        charge["refunds"]["data"].insert(0, refund)
        charge["refunds"]["total_count"] = len(charge["refunds"]["data"])
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] >= charge["amount_captured"]
        return [self._emit("charge.refunded", charge)]

    def _dispute_charge(self, charge: Json) -> list[Json]:
        """Open a fraud chargeback of the whole charge."""
        if self._dispute_of(charge):
            raise EmulatorError(f"Charge {charge['id']} is already disputed.", code="charge_disputed")
        dispute = self._store(objects.dispute(charge))
        charge["disputed"] = True
        return [self._emit("charge.dispute.created", dispute)]

    def _close_charge_dispute(self, charge: Json, status: str) -> list[Json]:
        """Close the charge's dispute as won or lost."""
        if status not in ("won", "lost"):
            raise EmulatorError(f"Invalid status: {status!r} (expected 'won' or 'lost').", param="status")
        dispute = self._dispute_of(charge)
        if dispute is None:
            raise EmulatorError(f"Charge {charge['id']} has no dispute to close.", code="no_dispute")
        if dispute["status"] in ("won", "lost"):
            raise EmulatorError(f"Dispute {dispute['id']} is already closed.", code="dispute_closed")
        dispute["status"] = status
        return [self._emit("charge.dispute.closed", dispute)]

    def _expire(self, session_id: str) -> list[Json]:
        """An open session expires."""
        session, _ = self._checkout(session_id)
        if session["status"] != "open":
            raise EmulatorError(
                f"Checkout session {session_id} is {session['status']}, not open.", code="session_not_open"
            )
        session.update(status="expired", url=None)
        return [self._emit("checkout.session.expired", session)]
