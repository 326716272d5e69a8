"""Cards: Stripe's test payment methods (`pm_card_visa`, `pm_card_chargeDeclined`...) and how each
behaves when charged, the PaymentMethod and SetupIntent objects a saved card makes, the charge of a
card payment made through the API (succeeded or declined), and the card error Stripe answers (402)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from local.stripe_emulator.objects import EmulatorError, Json, intent_charge, new_id, shape, snapshot


@dataclass(frozen=True)
class Decline:
    """How the issuer declines a charge: Stripe's error code, decline code and messages."""

    code: str
    decline_code: str
    message: str
    seller_message: str


GENERIC = Decline(
    "card_declined",
    "generic_decline",
    "Your card was declined.",
    "The bank did not return any further details with this decline.",
)
INSUFFICIENT_FUNDS = Decline(
    "card_declined",
    "insufficient_funds",
    "Your card has insufficient funds.",
    "The bank returned the decline code `insufficient_funds`.",
)
AUTHENTICATION = Decline(
    "authentication_required",
    "authentication_required",
    "Your card was declined. This transaction requires authentication.",
    "The bank returned the decline code `authentication_required`.",
)
# The control's names for the next off-session payment's outcome (None: as its card behaves).
OUTCOMES: dict[str, Decline | None] = {
    "succeed": None,
    "decline": GENERIC,
    "insufficient_funds": INSUFFICIENT_FUNDS,
    "authentication_required": AUTHENTICATION,
}


@dataclass(frozen=True)
class Card:
    """One of Stripe's test payment methods (https://docs.stripe.com/testing): its card number's last
    four digits, what a charge of it does, and whether Stripe can save it (attach it to a customer)."""

    token: str
    last4: str
    decline: Decline | None = None
    saveable: bool = True
    authenticates: bool = False  # needs 3D Secure on every payment, saved or not (4000 0027 6000 3184)

    def off_session(self) -> Decline | None:
        """What a charge with no customer present does: declined, or None (it succeeds)."""
        return AUTHENTICATION if self.authenticates else self.decline


TEST_CARDS = {
    card.token: card
    for card in (
        Card("pm_card_visa", "4242"),
        Card("pm_card_chargeDeclined", "0002", GENERIC, saveable=False),
        Card("pm_card_chargeDeclinedInsufficientFunds", "9995", INSUFFICIENT_FUNDS),
        Card("pm_card_authenticationRequired", "3184", authenticates=True),
        Card("pm_card_chargeCustomerFail", "0341", GENERIC),  # saves; every charge of it declines
    )
}
_BY_LAST4 = {card.last4: card for card in TEST_CARDS.values()}


def card_named(token: str, param: str = "payment_method") -> Card:
    """A test payment method by its token, or Stripe's resource_missing error."""
    if token not in TEST_CARDS:
        raise EmulatorError(f"No such PaymentMethod: '{token}'", code="resource_missing", param=param)
    return TEST_CARDS[token]


def card_of(method: Json) -> Card:
    """The test card a stored PaymentMethod was made from (its last four digits tell)."""
    return _BY_LAST4[method["card"]["last4"]]


def payment_method(card: Card, customer: str | None) -> Json:
    """A card PaymentMethod of the test card, attached to `customer` if given."""
    fingerprint = hashlib.sha256(card.last4.encode()).hexdigest()[:16]  # stable per card number
    made = shape(
        "payment_method",
        id=new_id("pm"),
        allow_redisplay="limited" if customer else "unspecified",
        created=int(time.time()),
        customer=customer,
    )
    made["card"].update(last4=card.last4, fingerprint=fingerprint, exp_year=time.gmtime().tm_year + 3)
    return made


def setup_intent(method: Json, customer: str | None, metadata: dict[str, str], description: str | None) -> Json:
    """A SetupIntent that saved `method` for off-session use."""
    intent_id = new_id("seti")
    return shape(
        "setup_intent",
        id=intent_id,
        client_secret=f"{intent_id}_secret_{new_id('s')[2:]}",
        created=int(time.time()),
        customer=customer,
        description=description,
        latest_attempt=new_id("setatt"),
        metadata=metadata,
        payment_method=method["id"],
        status="succeeded",
    )


def payment_intent(p: Json) -> Json:
    """A PaymentIntent as POST /v1/payment_intents makes it, before any confirmation."""
    intent_id = new_id("pi")
    return shape(
        "payment_intent",
        id=intent_id,
        amount=p["amount"],
        automatic_payment_methods=None
        if "payment_method_types" in p
        else {"allow_redirects": "always", "enabled": True},
        client_secret=f"{intent_id}_secret_{new_id('s')[2:]}",
        created=int(time.time()),
        currency=p["currency"],
        customer=p.get("customer"),
        description=p.get("description"),
        metadata=p.get("metadata", {}),
        payment_method=p.get("payment_method"),
        payment_method_types=p.get("payment_method_types", ["card"]),
        status="requires_confirmation" if p.get("payment_method") else "requires_payment_method",
    )


def charge(intent: Json, method: Json, decline: Decline | None) -> Json:
    """The charge of a card payment made through the API: succeeded, or declined by the issuer."""
    charge_id, amount = new_id("ch"), intent["amount"]
    details = shape("card", fingerprint=method["card"]["fingerprint"], last4=method["card"]["last4"])
    details.update(exp_year=method["card"]["exp_year"], network_transaction_id=new_id("ntx", 15)[4:])
    made = intent_charge(intent, charge_id, method["id"], "card", details)
    if decline is None:
        details.update(
            amount_authorized=amount, overcapture={"maximum_amount_capturable": amount, "status": "unavailable"}
        )
        return made
    made.update(captured=False, paid=False, status="failed", failure_code=decline.code, failure_message=decline.message)
    made.update(amount_captured=0, balance_transaction=None)
    made["outcome"].update(
        network_status="declined_by_network",
        reason=decline.decline_code,
        seller_message=decline.seller_message,
        type="issuer_declined",
    )
    return made


def payment_error(decline: Decline, failed: Json, method: Json) -> Json:
    """A PaymentIntent's last_payment_error (and the 402 error's body) for a declined charge."""
    return {
        "charge": failed["id"],
        "code": decline.code,
        "decline_code": decline.decline_code,
        "doc_url": f"https://stripe.com/docs/error-codes/{decline.code.replace('_', '-')}",
        "message": decline.message,
        "param": None,
        "payment_method": snapshot(method),
        "type": "card_error",
    }


class CardDeclined(EmulatorError):
    """Stripe's 402 card error, carrying the declined PaymentIntent (kept with its Idempotency-Key
    like any request that reached execution)."""

    def __init__(self, error: Json, intent: Json) -> None:
        super().__init__(error["message"], status=402, code=error["code"], kind="card_error")
        self.error, self.intent = error, snapshot(intent)

    def body(self) -> Json:
        """The error as Stripe's JSON body, with the PaymentIntent."""
        return {"error": {**self.error, "payment_intent": self.intent}}
