"""Auto top-up's payment: from a started top-up to an off-session charge of the user's saved card.

The ledger starts a top-up in the decision that spends `available` below the user's threshold: it
marks it pending on the account and writes `TOPUP#<n>` in the same transaction
(credits.ledger.topup). The top-up function reads that item from the table's stream and calls
`TopUps.start`, which charges the saved card for the package, off-session, with the top-up's own
idempotency key (`stripe_key`: the same for every delivery of the record), so a retried, duplicated
or crashed delivery finds Stripe's first answer and never charges twice. Then:

- paid at once: credited now through the payment path every purchase takes (`Payments.top_up_paid`:
  keyed by the PaymentIntent, so the webhook's `payment_intent.succeeded` and reconcile credit
  nothing more), and the top-up ends;
- declined, or needing authentication the user cannot give while away: the top-up ends as failed
  with the code and a sentence for the user (no new one for an hour; the third failure in a row
  suspends auto top-up until a new card or the user turns it on again);
- still processing: the webhook ends it when Stripe knows.
What is asked of Stripe (the amount, the card, the terms in the metadata) is fixed on the `TOPUP#`
item by the first delivery, so every retry sends the same parameters under the same key (Stripe
refuses a key reused with others). Stripe unreachable, busy or failing: the record is retried (the
stream, then the alarmed dead-letter queue); a request Stripe refuses as invalid (the card no longer
attached) ends it as failed (`processing_error`). Turned off before it was paid: it ends cancelled,
nothing charged, no failure counted.

Nothing here runs on the charge path: a charge only writes the item.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from credits import keys
from credits.errors import PaymentProviderError, TemporarilyUnavailable
from credits.ledger.topup import stripe_key
from credits.off_session import PaymentIntent, failed_details
from credits.payments import Outcome, Payments
from credits.store import ConditionFailed, Update, absent, eq
from credits.stripe_gateway import OffSessionPayment


class Charger(Protocol):
    """What a top-up needs of Stripe (credits.stripe_gateway.StripeGateway)."""

    def charge_saved_card(
        self,
        *,
        customer_id: str,
        payment_method_id: str,
        amount: int,
        currency: str,
        idempotency_key: str,
        metadata: dict[str, str],
        description: str,
    ) -> OffSessionPayment: ...


class TopUps:
    def __init__(self, payments: Payments, charger: Charger) -> None:
        self.payments = payments
        self.ledger = payments.ledger
        self.catalog = payments.catalog
        self.store = payments.store
        self.charger = charger

    def start(self, user_id: str, item: Mapping[str, Any]) -> Outcome:
        """Pay for the top-up of a `TOPUP#` item as written by the ledger (`topup_id`, `number`,
        `package_id`); nothing when it ended already (a redelivered record). Raises
        PaymentProviderError when Stripe may answer later (retry the record: the same key)."""
        topup_id, number = str(item["topup_id"]), int(item["number"])
        settings = self.ledger.settings(user_id)
        if settings.topup.pending != topup_id:
            return Outcome("duplicate", f"auto top-up {topup_id} has ended", user_id)
        if settings.auto_top_up is None or not settings.auto_top_up.enabled:
            # turned off after the crossing, before it was paid: the user's word is the last
            message = "Auto top-up was turned off before this top-up was paid: nothing was charged."
            self.ledger.cancel_top_up(user_id, topup_id, "turned_off", message)
            return Outcome("ignored", f"auto top-up {topup_id}: turned off, nothing charged", user_id)
        charge = self._charge(user_id, number, item, settings.card)
        if isinstance(charge, str):
            return self._failed(user_id, topup_id, charge)
        try:
            payment = self.charger.charge_saved_card(**charge, idempotency_key=stripe_key(user_id, number))
        except PaymentProviderError as exc:
            if exc.retriable:
                raise
            return self._failed(user_id, topup_id, "processing_error")
        metadata = charge["metadata"]
        if payment.status == "succeeded" and payment.payment_intent_id:
            intent = PaymentIntent(
                id=payment.payment_intent_id,
                status="succeeded",
                amount=charge["amount"],
                currency=charge["currency"],
                metadata=metadata,
            )
            return self.payments.top_up_paid(intent, user_id, topup_id)
        if payment.status == "processing":
            return Outcome("waiting", f"auto top-up {topup_id}: payment {payment.payment_intent_id} is processing")
        code = payment.failure_code or ("authentication_required" if payment.status == "requires_action" else "")
        return self._failed(user_id, topup_id, code or "card_declined", payment.payment_intent_id)

    def _charge(
        self, user_id: str, number: int, item: Mapping[str, Any], card: Mapping[str, Any] | None
    ) -> dict[str, Any] | str:
        """What to ask Stripe for (the arguments of `charge_saved_card` but the key), fixed on the
        `TOPUP#` item by the first delivery so that every later one sends Stripe exactly the same
        (the same key with other parameters is refused): the package's terms, the card and its
        customer as they were then. A failure code when there is nothing to charge."""
        key = (keys.user_pk(user_id), keys.topup_sk(number))
        fixed = (self.store.get(key) or {}).get("charge")
        if fixed is None:
            if not card or not card.get("customer"):
                return "no_card"
            package = self.catalog.get(str(item["package_id"]))
            if package is None or not package.active:
                return "package_unavailable"
            # The terms of the sale, as a Checkout Session fixes a purchase's: the webhook and
            # reconcile credit exactly these (credits.payments).
            metadata = {"userId": user_id, "packageId": package.id, "topupId": str(item["topup_id"])}
            fixed = {
                "customer_id": str(card["customer"]),
                "payment_method_id": str(card["id"]),
                "amount": package.price,
                "currency": package.currency,
                "metadata": {**metadata, **package.sale_terms()},
                "description": f"Auto top-up: {package.name}",
            }
            try:
                self.store.write(
                    Update(key, set={"charge": fixed}, condition=absent("charge") & eq("state", "pending"))
                )
            except ConditionFailed:
                fixed = (self.store.get(key) or {}).get("charge")  # another delivery fixed it first
                if fixed is None:
                    raise TemporarilyUnavailable("The top-up ended meanwhile; retry.") from None
        return {**fixed, "amount": int(fixed["amount"])}

    def _failed(self, user_id: str, topup_id: str, code: str, payment_id: str | None = None) -> Outcome:
        self.ledger.finish_top_up(user_id, topup_id, failure=code, details=failed_details(payment_id, code))
        return Outcome("failed", f"auto top-up {topup_id} failed: {code}", user_id)
