"""Stripe payments into the ledger: purchases credited once, refunds and disputes clawed back once.

EXACTLY ONCE (DESIGN.md invariant 4), kept here on top of the ledger's reference markers:
- a purchase is keyed by its payment (`purchase:<payment_intent>`), not by the event, so the same
  payment credits once whatever announces it: a replayed event, `completed` and
  `async_payment_succeeded` for one session, or a retry after the event-id record expired;
- each payment has a `PAYMENT#<payment_intent>` record, written in the grant's transaction, that
  holds what was bought and what was clawed back; every clawback updates it in the clawback's own
  transaction, conditioned on the state it was computed from, so refunds and disputes never take
  back more than was bought, and each cumulative refund amount is applied once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pydantic
from pydantic import BaseModel, ConfigDict

from credits import keys
from credits.errors import TemporarilyUnavailable, ValidationError
from credits.ledger import ExtraConditionFailed, Ledger, from_item, to_item
from credits.packages import Catalog

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

HANDLED = frozenset(
    {
        "checkout.session.completed",
        "checkout.session.async_payment_succeeded",
        "checkout.session.async_payment_failed",
        "charge.refunded",
        "charge.dispute.created",
        "charge.dispute.closed",
    }
)
MAX_RECOMPUTES = 8


class _StripeObject(BaseModel):
    """Real Stripe objects carry many more fields than we read: ignore them."""

    model_config = ConfigDict(extra="ignore", frozen=True)


def _id(value: str | dict[str, Any] | None) -> str | None:
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
    customer: str | dict[str, Any] | None = None


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


class Event(_StripeObject):
    id: str
    type: str
    created: int | None = None
    livemode: bool = False
    data: EventData


@dataclass(frozen=True)
class Outcome:
    """What an event did, for the response, the log line and the metrics."""

    kind: str  # granted, duplicate, clawed_back, restored, waiting, failed, mismatch, ignored
    detail: str = ""
    user_id: str | None = None
    credits: int = 0

    def body(self) -> dict[str, Any]:
        return {"outcome": self.kind, "detail": self.detail, "credits": self.credits}


@dataclass
class PaymentRecord:
    """What one payment bought and what has been taken back from it."""

    payment_id: str
    user_id: str
    credits: int
    amount: int
    currency: str
    refunded_amount: int = 0
    credits_refunded: int = 0
    dispute_id: str | None = None
    credits_disputed: int = 0

    @property
    def credits_left(self) -> int:
        return self.credits - self.credits_refunded - self.credits_disputed


def parse_event(payload: dict[str, Any]) -> Event:
    try:
        return Event.model_validate(payload)
    except pydantic.ValidationError:
        raise ValidationError("The body is not a Stripe event.") from None


class Payments:
    """Applies Stripe events to the ledger; the DynamoDB client, ledger and catalog are injected."""

    def __init__(self, ledger: Ledger, catalog: Catalog, client: DynamoDBClient, table_name: str) -> None:
        self.ledger = ledger
        self.catalog = catalog
        self.client = client
        self.table = table_name

    def handle(self, payload: dict[str, Any]) -> Outcome:
        """Apply one verified Stripe event; unknown types are ignored."""
        event = parse_event(payload)
        if event.type not in HANDLED:
            return Outcome("ignored", f"event type {event.type} is not used")
        obj = event.data.object
        try:
            if event.type.startswith("checkout.session."):
                return self._session(event.type, CheckoutSession.model_validate(obj))
            if event.type == "charge.refunded":
                return self._refund(Charge.model_validate(obj))
            dispute = Dispute.model_validate(obj)
        except pydantic.ValidationError:
            raise ValidationError(f"The {event.type} object is not valid.") from None
        if event.type == "charge.dispute.created":
            return self._dispute_opened(dispute)
        return self._dispute_closed(dispute)

    # ---- purchases ----------------------------------------------------------------------------

    def _session(self, event_type: str, session: CheckoutSession) -> Outcome:
        metadata = session.metadata or {}
        user_id = session.client_reference_id or metadata.get("userId")
        package_id = metadata.get("packageId")
        if session.mode not in (None, "payment") or not user_id or not package_id:
            return Outcome("ignored", f"session {session.id} was not started by this product")
        if metadata.get("userId") not in (None, user_id):
            return Outcome("mismatch", f"session {session.id}: client_reference_id and metadata disagree")
        if event_type == "checkout.session.async_payment_failed":
            return Outcome("failed", f"async payment failed for session {session.id}", user_id)
        if session.payment_status != "paid":
            # An async method (bank debit, voucher): the money is not there yet.
            return Outcome("waiting", f"session {session.id} is {session.payment_status}", user_id)

        package = self.catalog.get(package_id)
        if package is None:
            return Outcome("mismatch", f"session {session.id}: unknown package {package_id}", user_id)
        if (session.amount_total, session.currency) != (package.price, package.currency):
            return Outcome(
                "mismatch",
                f"session {session.id} paid {session.amount_total} {session.currency}; "
                f"package {package.id} costs {package.price} {package.currency}",
                user_id,
            )
        payment_id = _id(session.payment_intent) or session.id
        record = PaymentRecord(payment_id, user_id, package.credits, package.price, package.currency)
        try:
            posted = self.ledger.grant(
                user_id,
                package.credits,
                type="purchase",
                description=f"{package.name}: {package.credits} credits",
                reference_id=f"purchase:{payment_id}",
                monetary_amount=package.price,
                currency=package.currency,
                extra=[self._new_record(record, session.id)],
            )
        except ExtraConditionFailed:
            # The payment is on record under another user's ledger: never credit it twice.
            return Outcome("mismatch", f"payment {payment_id} was already credited elsewhere", user_id)
        if posted.replayed:
            return Outcome("duplicate", f"payment {payment_id} was already credited", user_id)
        return Outcome("granted", f"payment {payment_id}", user_id, package.credits)

    def _new_record(self, record: PaymentRecord, session_id: str) -> dict[str, Any]:
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return {
            "Put": {
                "TableName": self.table,
                "Item": to_item(
                    {
                        "pk": keys.payment_pk(record.payment_id),
                        "sk": keys.PAYMENT_SK,
                        "user_id": record.user_id,
                        "session_id": session_id,
                        "credits": record.credits,
                        "amount": record.amount,
                        "currency": record.currency,
                        "refunded_amount": 0,
                        "credits_refunded": 0,
                        "credits_disputed": 0,
                        "created_at": now,
                    }
                ),
                "ConditionExpression": "attribute_not_exists(pk)",  # one record per payment
            }
        }

    def record(self, payment_id: str) -> PaymentRecord | None:
        response = self.client.get_item(
            TableName=self.table,
            Key=to_item({"pk": keys.payment_pk(payment_id), "sk": keys.PAYMENT_SK}),
            ConsistentRead=True,
        )
        if "Item" not in response:
            return None
        item = from_item(response["Item"])
        return PaymentRecord(
            payment_id=payment_id,
            user_id=item["user_id"],
            credits=item["credits"],
            amount=item["amount"],
            currency=item["currency"],
            refunded_amount=item.get("refunded_amount", 0),
            credits_refunded=item.get("credits_refunded", 0),
            dispute_id=item.get("dispute_id"),
            credits_disputed=item.get("credits_disputed", 0),
        )

    def _record_update(self, record: PaymentRecord, changes: dict[str, Any]) -> dict[str, Any]:
        """An update of the payment record, conditioned on the exact state `record` was read in."""
        sets = ", ".join(f"{name} = :new_{name}" for name in changes)
        unchanged_refunds = "refunded_amount = :old_refunded_amount AND credits_refunded = :old_credits_refunded"
        unchanged_dispute = "credits_disputed = :old_credits_disputed"
        values = {f":new_{k}": v for k, v in changes.items()}
        values.update(
            {
                ":old_refunded_amount": record.refunded_amount,
                ":old_credits_refunded": record.credits_refunded,
                ":old_credits_disputed": record.credits_disputed,
            }
        )
        return {
            "Update": {
                "TableName": self.table,
                "Key": to_item({"pk": keys.payment_pk(record.payment_id), "sk": keys.PAYMENT_SK}),
                "UpdateExpression": f"SET {sets}",
                "ConditionExpression": f"{unchanged_refunds} AND {unchanged_dispute}",
                "ExpressionAttributeValues": to_item(values),
            }
        }

    def _with_record(self, payment_id: str, apply: Any) -> Outcome:
        """Run `apply(record)` until it lands on a record nobody changed meanwhile (bounded)."""
        for _ in range(MAX_RECOMPUTES):
            record = self.record(payment_id)
            if record is None:
                return Outcome("ignored", f"payment {payment_id} was never credited by this product")
            try:
                outcome: Outcome = apply(record)
                return outcome
            except ExtraConditionFailed:
                continue  # a concurrent refund or dispute moved the record: recompute from it
        raise TemporarilyUnavailable("The payment record is busy; please retry.")

    # ---- refunds ------------------------------------------------------------------------------

    def _refund(self, charge: Charge) -> Outcome:
        payment_id = _id(charge.payment_intent) or charge.id

        def apply(record: PaymentRecord) -> Outcome:
            refunded = min(charge.amount_refunded, record.amount)
            if refunded <= record.refunded_amount:
                return Outcome("duplicate", f"refunds of {payment_id} up to {refunded} were applied", record.user_id)
            # Credits in proportion to the money refunded so far, rounded down: never more than bought.
            due = record.credits * refunded // record.amount
            take = min(due - record.credits_refunded, record.credits_left)
            update = self._record_update(
                record, {"refunded_amount": refunded, "credits_refunded": record.credits_refunded + max(take, 0)}
            )
            if take <= 0:
                self._apply_alone(update)
                return Outcome("duplicate", f"refund of {payment_id} takes back no further credits", record.user_id)
            self.ledger.claw_back(
                record.user_id,
                take,
                type="refund",
                description=f"Refund: {refunded - record.refunded_amount} {record.currency} of {record.amount}",
                reference_id=f"refund:{payment_id}:{refunded}",
                monetary_amount=refunded - record.refunded_amount,
                currency=record.currency,
                extra=[update],
            )
            return Outcome("clawed_back", f"refund of {payment_id}", record.user_id, take)

        return self._with_record(payment_id, apply)

    def _apply_alone(self, update: dict[str, Any]) -> None:
        try:
            self.client.update_item(**update["Update"])
        except self.client.exceptions.ConditionalCheckFailedException as exc:
            raise ExtraConditionFailed(0) from exc

    # ---- disputes -----------------------------------------------------------------------------

    def _dispute_opened(self, dispute: Dispute) -> Outcome:
        payment_id = _id(dispute.payment_intent)
        if payment_id is None:
            return Outcome("ignored", f"dispute {dispute.id} names no payment")

        def apply(record: PaymentRecord) -> Outcome:
            if record.dispute_id is not None:
                return Outcome("duplicate", f"dispute {record.dispute_id} is on record", record.user_id)
            take = record.credits_left
            update = self._record_update(record, {"dispute_id": dispute.id, "credits_disputed": take})
            if take <= 0:
                self._apply_alone(update)
                return Outcome("duplicate", f"nothing left to take back for {dispute.id}", record.user_id)
            self.ledger.claw_back(
                record.user_id,
                take,
                type="dispute",
                description=f"Payment disputed ({dispute.id})",
                reference_id=f"dispute:{dispute.id}",
                monetary_amount=dispute.amount,
                currency=dispute.currency,
                extra=[update],
            )
            return Outcome("clawed_back", f"dispute {dispute.id}", record.user_id, take)

        return self._with_record(payment_id, apply)

    def _dispute_closed(self, dispute: Dispute) -> Outcome:
        payment_id = _id(dispute.payment_intent)
        if payment_id is None:
            return Outcome("ignored", f"dispute {dispute.id} names no payment")

        def apply(record: PaymentRecord) -> Outcome:
            if record.dispute_id != dispute.id:
                return Outcome("ignored", f"dispute {dispute.id} is not on record", record.user_id)
            if dispute.status != "won":
                return Outcome("duplicate", f"dispute {dispute.id} closed {dispute.status}", record.user_id)
            if record.credits_disputed <= 0:
                return Outcome("duplicate", f"dispute {dispute.id} credits were restored", record.user_id)
            give = record.credits_disputed
            self.ledger.grant(
                record.user_id,
                give,
                type="dispute",
                description=f"Dispute won ({dispute.id}): credits restored",
                reference_id=f"dispute-won:{dispute.id}",
                monetary_amount=dispute.amount,
                currency=dispute.currency,
                extra=[self._record_update(record, {"credits_disputed": 0})],
            )
            return Outcome("restored", f"dispute {dispute.id} won", record.user_id, give)

        return self._with_record(payment_id, apply)
