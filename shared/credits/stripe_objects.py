"""The Stripe objects payments read, as Stripe sends them, and which of them are this product's.

Only the fields we read are modelled; real objects carry many more, ignored. `started_here` is the
one rule for "a Checkout Session this product started": the webhook (`credits.payments`) and
missed-payment recovery (`credits.reconcile`) both ask it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict

from credits.errors import ValidationError

HANDLED = frozenset(
    {
        "checkout.session.completed",
        "checkout.session.async_payment_succeeded",
        "checkout.session.async_payment_failed",
        "charge.refunded",
        "charge.dispute.created",
        "charge.dispute.closed",
        "payment_method.detached",  # a saved card removed (credits.cards)
    }
)


class _StripeObject(BaseModel):
    """Real Stripe objects carry many more fields than we read: ignore them."""

    model_config = ConfigDict(extra="ignore", frozen=True)


def object_id(value: str | dict[str, Any] | None) -> str | None:
    """An id from a field that Stripe may send as an id or as an expanded object."""
    if isinstance(value, dict):
        return str(value.get("id")) if value.get("id") else None
    return value


class CheckoutSession(_StripeObject):
    id: str
    mode: str | None = None
    status: str | None = None
    payment_status: str
    client_reference_id: str | None = None
    metadata: dict[str, str] | None = None
    amount_total: int | None = None
    currency: str | None = None
    payment_intent: str | dict[str, Any] | None = None
    setup_intent: str | dict[str, Any] | None = None  # setup mode: the SetupIntent that saved a card
    customer: str | dict[str, Any] | None = None


class CardDetails(_StripeObject):
    """A card PaymentMethod's `card`: what the user is shown of it, and its number's fingerprint."""

    brand: str
    last4: str
    exp_month: int
    exp_year: int
    fingerprint: str | None = None


class PaymentMethod(_StripeObject):
    """A PaymentMethod (`card` only for cards); `customer` is who it is attached to: None once detached."""

    id: str
    type: str
    created: int
    customer: str | dict[str, Any] | None = None
    card: CardDetails | None = None


class Charge(_StripeObject):
    id: str
    amount: int
    amount_refunded: int
    currency: str
    payment_intent: str | dict[str, Any] | None = None
    refunded: bool = False


class Dispute(_StripeObject):
    id: str
    amount: int
    currency: str
    status: str
    charge: str | dict[str, Any] | None = None
    payment_intent: str | dict[str, Any] | None = None


class EventData(_StripeObject):
    object: dict[str, Any]
    # what changed, as it was before (`payment_method.detached`: the customer it was attached to)
    previous_attributes: dict[str, Any] | None = None


class Event(_StripeObject):
    id: str
    type: str
    created: int | None = None
    livemode: bool = False
    data: EventData


def parse_event(payload: dict[str, Any]) -> Event:
    try:
        return Event.model_validate(payload)
    except pydantic.ValidationError:
        raise ValidationError("The body is not a Stripe event.") from None


@dataclass(frozen=True)
class ProductSession:
    """Who a Checkout Session of this product is for and what it sells."""

    user_id: str
    package_id: str


def started_here(session: CheckoutSession | Mapping[str, Any]) -> ProductSession | None:
    """The user and package of a Checkout Session this product started; None for any other session.

    Ours are one-off payments (`mode` payment, or not said) naming the user (`client_reference_id`,
    else `metadata.userId`) and the package (`metadata.packageId`), as `credits.checkout` starts
    them. The session as parsed (the webhook) or as Stripe lists it (reconcile).
    """
    metadata: Mapping[str, Any]
    if isinstance(session, CheckoutSession):
        mode, reference, metadata = session.mode, session.client_reference_id, session.metadata or {}
    else:
        mode, reference = session.get("mode"), session.get("client_reference_id")
        metadata = session.get("metadata") or {}
    user_id = reference or metadata.get("userId")
    package_id = metadata.get("packageId")
    if mode not in (None, "payment") or not user_id or not package_id:
        return None
    return ProductSession(str(user_id), str(package_id))
