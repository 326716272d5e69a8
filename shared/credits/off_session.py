"""Auto top-up's payments as Stripe sends them back: the PaymentIntent of an off-session charge, and
what the user is told when one fails. No I/O.

An auto top-up's PaymentIntent carries its top-up in the metadata we set when creating it
(`credits.topups`): `topupId`, `userId`, `packageId` and the terms of the sale (`credits`, `price`,
`currency`, `expiresInDays`), as a Checkout Session carries a purchase's. A PaymentIntent without
`topupId` is not a top-up (a Checkout purchase's intent: its session is what credits it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from credits.payments import Terms

TOPUP_EVENTS = frozenset({"payment_intent.succeeded", "payment_intent.payment_failed"})

# What the user is told when a top-up fails, by Stripe's decline code (or ours); anything else is a
# plain decline. Sentences end the attempt: auto top-up tries again after an hour at the earliest.
MESSAGES = {
    "authentication_required": (
        "Your bank asked to confirm this payment, which cannot be done automatically: buy credits on "
        "the page to top up."
    ),
    "insufficient_funds": "Your card was declined for insufficient funds.",
    "expired_card": "Your card has expired: add a new card.",
    "lost_card": "Your card was declined: add a new card.",
    "stolen_card": "Your card was declined: add a new card.",
    "processing_error": "Your card could not be charged: add a new card.",
    "no_card": "No card is saved for auto top-up: add a card.",
    "package_unavailable": "The package auto top-up buys is no longer on sale: choose another.",
}
DECLINED = "Your card was declined."


def failure_message(code: str) -> str:
    return MESSAGES.get(code, DECLINED)


class _StripeObject(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class PaymentError(_StripeObject):
    code: str | None = None
    decline_code: str | None = None


class PaymentIntent(_StripeObject):
    id: str
    status: str
    amount: int
    currency: str
    metadata: dict[str, str] | None = None
    last_payment_error: PaymentError | None = None

    @property
    def topup(self) -> tuple[str, str] | None:
        """(user id, top-up id) of an auto top-up's intent; None for any other."""
        metadata = self.metadata or {}
        user_id, topup_id = metadata.get("userId"), metadata.get("topupId")
        return (user_id, topup_id) if user_id and topup_id else None

    @property
    def failure_code(self) -> str:
        """The decline code when the issuer gave one (`insufficient_funds`), else Stripe's code."""
        error = self.last_payment_error
        if error is None:
            return "card_declined"
        return error.decline_code or error.code or "card_declined"


def paid_details(payment_id: str, terms: Terms) -> dict[str, Any]:
    """What a paid top-up's `TOPUP#` item records (credits.payments.Terms)."""
    return {
        "payment_intent": payment_id,
        "credits": terms.credits,
        "amount": terms.price,
        "currency": terms.currency,
        "package_name": terms.name,
    }


def failed_details(payment_id: str | None, code: str) -> dict[str, Any]:
    """What a failed top-up's `TOPUP#` item records besides its code: the sentence for the user."""
    details: dict[str, Any] = {"message": failure_message(code)}
    if payment_id is not None:
        details["payment_intent"] = payment_id
    return details
