"""Stripe payments into the ledger: purchases credited once, refunds and disputes clawed back once.

EXACTLY ONCE (DESIGN.md invariant 4), kept here on top of the ledger's reference markers:
- a purchase is keyed by its payment (`purchase:<payment_intent>`), not by the event, so the same
  payment credits once whatever announces it: a replayed event, `completed` and
  `async_payment_succeeded` for one session, or a retry after the event-id record expired;
- each payment has a `PAYMENT#<payment_intent>` record holding FACTS (money refunded so far, the
  dispute and its status) and LEDGER STATE (credits taken for refunds, credits held by a dispute).
  An event only records facts, monotonically (a late or repeated event changes nothing); then
  `settle` moves the ledger state towards what the facts require, one ledger transaction per step,
  each conditioned on the record state it was computed from. So events may arrive in any order
  (a refund before its purchase is remembered and applied when the purchase lands), a crash
  between steps is finished by the next delivery, and clawbacks never exceed what was bought.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pydantic
from pydantic import BaseModel, ConfigDict

from credits import keys
from credits.errors import TemporarilyUnavailable, ValidationError
from credits.ledger import MAX_AMOUNT, Entry, ExtraConditionFailed, Ledger, Policy, from_item, iso_utc, to_item
from credits.packages import Catalog

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

# Dispute statuses after which the money stays with us (or never left): the hold is released.
RELEASED = frozenset({"won", "warning_closed", "prevented"})
CLOSED = RELEASED | {"lost"}
STUB_TTL_SECONDS = 90 * 24 * 3600  # facts about payments we never credited are forgotten after 90 days

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

    kind: str  # granted, duplicate, clawed_back, restored, pending, waiting, failed, mismatch, ignored
    detail: str = ""
    user_id: str | None = None
    credits: int = 0

    def body(self) -> dict[str, Any]:
        return {"outcome": self.kind, "detail": self.detail, "credits": self.credits}


@dataclass
class PaymentRecord:
    """One payment: what it bought, the facts Stripe told us about it, and what the ledger took back."""

    payment_id: str
    granted: bool = False
    user_id: str | None = None
    credits: int = 0
    amount: int = 0
    currency: str | None = None
    # facts
    refunded_amount: int = 0
    dispute_id: str | None = None
    dispute_status: str | None = None
    dispute_amount: int | None = None
    # ledger state
    credits_refunded: int = 0
    refund_money_applied: int = 0
    credits_disputed: int = 0

    def refund_target(self) -> int:
        """Credits in proportion to the money refunded, rounded down: never more than bought."""
        if not self.amount:
            return 0
        return self.credits * min(self.refunded_amount, self.amount) // self.amount

    def dispute_target(self) -> int:
        """Credits a dispute holds: whatever refunds did not take, until the dispute is released."""
        if self.dispute_status is None or self.dispute_status in RELEASED:
            return 0
        return self.credits - self.refund_target()


def parse_event(payload: dict[str, Any]) -> Event:
    try:
        return Event.model_validate(payload)
    except pydantic.ValidationError:
        raise ValidationError("The body is not a Stripe event.") from None


def _count(text: str | None) -> int | None:
    """A positive integer written by us in metadata, or None."""
    if text is None or not re.fullmatch(r"[0-9]{1,10}", text):
        return None
    value = int(text)
    return value if 0 < value <= MAX_AMOUNT else None


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
            return self._dispute(Dispute.model_validate(obj))
        except pydantic.ValidationError:
            raise ValidationError(f"The {event.type} object is not valid.") from None

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

        terms = self._terms(metadata, package_id)
        if terms is None:
            return Outcome("mismatch", f"session {session.id}: unknown package {package_id}", user_id)
        name, credits, price, currency = terms
        if (session.amount_total, session.currency) != (price, currency):
            return Outcome(
                "mismatch",
                f"session {session.id} paid {session.amount_total} {session.currency}; "
                f"package {package_id} was sold for {price} {currency}",
                user_id,
            )
        payment_id = _id(session.payment_intent) or session.id
        try:
            posted = self.ledger.grant(
                user_id,
                credits,
                type="purchase",
                description=f"{name}: {credits} credits",
                reference_id=f"purchase:{payment_id}",
                monetary_amount=price,
                currency=currency,
                extra=[self._purchase_record(payment_id, session.id, user_id, credits, price, currency)],
            )
        except ExtraConditionFailed:
            # The payment is on record as credited to another user: never credit it twice.
            return Outcome("mismatch", f"payment {payment_id} was already credited elsewhere", user_id)
        settled = self._settle(payment_id)  # refunds or disputes that arrived before the purchase
        if posted.replayed:
            return Outcome("duplicate", f"payment {payment_id} was already credited", user_id, 0)
        detail = f"payment {payment_id}" + (f"; {settled:+d} credits from earlier events" if settled else "")
        return Outcome("granted", detail, user_id, credits)

    def _terms(self, metadata: dict[str, str], package_id: str) -> tuple[str, int, int, str] | None:
        """What was sold: the terms fixed in the session at checkout, else the catalog's current ones."""
        package = self.catalog.get(package_id)
        credits, price = _count(metadata.get("credits")), _count(metadata.get("price"))
        currency = metadata.get("currency", "")
        if credits and price and re.fullmatch(r"[a-z]{3}", currency):
            return (package.name if package else package_id), credits, price, currency
        if package is None:
            return None
        return package.name, package.credits, package.price, package.currency

    def _purchase_record(
        self, payment_id: str, session_id: str, user_id: str, credits: int, price: int, currency: str
    ) -> dict[str, Any]:
        """Turn the payment's record (absent, or facts noted before the purchase) into a credited one."""
        not_credited_yet = "attribute_not_exists(granted)"
        return {
            "Update": {
                "TableName": self.table,
                "Key": self._key(payment_id),
                "UpdateExpression": (
                    "SET granted = :true, user_id = :user, credits = :credits, amount = :amount, "
                    "currency = :currency, session_id = :session, granted_at = :now, "
                    "refunded_amount = if_not_exists(refunded_amount, :zero), "
                    "credits_refunded = :zero, refund_money_applied = :zero, credits_disputed = :zero "
                    "REMOVE expires_at"
                ),
                "ConditionExpression": not_credited_yet,
                "ExpressionAttributeValues": to_item(
                    {
                        ":true": True,
                        ":user": user_id,
                        ":credits": credits,
                        ":amount": price,
                        ":currency": currency,
                        ":session": session_id,
                        ":now": iso_utc(time.time()),
                        ":zero": 0,
                    }
                ),
            }
        }

    # ---- facts --------------------------------------------------------------------------------

    def _refund(self, charge: Charge) -> Outcome:
        payment_id = _id(charge.payment_intent) or charge.id
        learned = self._note(
            payment_id,
            sets={"refunded_amount": charge.amount_refunded},
            # Refunds are cumulative: only a larger total is news (a late, older event is not).
            news="attribute_not_exists(refunded_amount) OR refunded_amount < :refunded_amount",
        )
        return self._after_fact(payment_id, f"refund of {payment_id} to {charge.amount_refunded}", learned)

    def _dispute(self, dispute: Dispute) -> Outcome:
        payment_id = _id(dispute.payment_intent)
        if payment_id is None:
            return Outcome("ignored", f"dispute {dispute.id} names no payment")
        rank = 2 if dispute.status in CLOSED else 1
        learned = self._note(
            payment_id,
            sets={
                "dispute_id": dispute.id,
                "dispute_status": dispute.status,
                "dispute_rank": rank,
                "dispute_amount": dispute.amount,
            },
            # A closed dispute stays closed: a late `created` after `closed` is not news.
            news="attribute_not_exists(dispute_rank) OR dispute_id <> :dispute_id OR dispute_rank < :dispute_rank",
        )
        return self._after_fact(payment_id, f"dispute {dispute.id} {dispute.status}", learned)

    def _note(self, payment_id: str, sets: dict[str, Any], news: str) -> bool:
        """Record facts about a payment if they are news (False when not); unknown payments get a record."""
        values = {f":{name}": value for name, value in sets.items()}
        for _ in range(2):
            expression = "SET " + ", ".join(f"{name} = :{name}" for name in sets)
            condition = f"({news})"
            granted = self._is_granted(payment_id)
            if not granted:
                # Facts about a payment we never credited expire; a credited record never does.
                expression += ", expires_at = if_not_exists(expires_at, :expires)"
                condition += " AND attribute_not_exists(granted)"
                values[":expires"] = int(time.time()) + STUB_TTL_SECONDS
            else:
                values.pop(":expires", None)
            try:
                self.client.update_item(
                    TableName=self.table,
                    Key=self._key(payment_id),
                    UpdateExpression=expression,
                    ConditionExpression=condition,
                    ExpressionAttributeValues=to_item(values),
                )
                return True
            except self.client.exceptions.ConditionalCheckFailedException:
                if granted or not self._is_granted(payment_id):
                    return False  # not news
                # credited meanwhile: note the fact on the credited record instead
        return False

    def _after_fact(self, payment_id: str, what: str, learned: bool) -> Outcome:
        record = self.record(payment_id)
        if record is None or not record.granted:
            # Not credited (yet): remembered, and applied if and when the purchase arrives.
            return Outcome("pending", f"{what}: payment not credited by this product (yet)")
        change = self._settle(payment_id)
        if change < 0:
            return Outcome("clawed_back", what, record.user_id, -change)
        if change > 0:
            return Outcome("restored", what, record.user_id, change)
        return Outcome("duplicate" if not learned else "noted", what, record.user_id)

    # ---- ledger state -------------------------------------------------------------------------

    def _settle(self, payment_id: str) -> int:
        """Post what the payment's facts require and the ledger does not show yet; returns the net change."""
        net = 0
        for _ in range(MAX_RECOMPUTES):
            record = self.record(payment_id)
            if record is None or not record.granted or record.user_id is None:
                return net
            try:
                step = self._next_step(record)
            except ExtraConditionFailed:
                continue  # the record moved under us (a concurrent event): recompute from it
            if step == 0:
                return net
            net += step
        raise TemporarilyUnavailable("The payment record is busy; please retry.")

    def _next_step(self, record: PaymentRecord) -> int:
        """Apply one missing ledger change (refund first, then the dispute hold); 0 when settled."""
        assert record.user_id is not None
        refund = record.refund_target() - record.credits_refunded
        if refund > 0:
            money = max(record.refunded_amount, record.refund_money_applied) - record.refund_money_applied
            self.ledger.claw_back(
                record.user_id,
                refund,
                type="refund",
                description=f"Refund of {money} {record.currency} ({record.payment_id})",
                reference_id=f"refund:{record.payment_id}:{record.credits_refunded + refund}",
                monetary_amount=money,
                currency=record.currency,
                extra=[
                    self._state_update(
                        record,
                        credits_refunded=record.credits_refunded + refund,
                        refund_money_applied=record.refunded_amount,
                    )
                ],
            )
            return -refund
        hold = record.dispute_target()
        change = record.credits_disputed - hold
        if change == 0:
            return 0
        reference = f"dispute:{record.dispute_id}:{hold}"
        if change < 0:
            description = f"Payment disputed ({record.dispute_id})"
        else:
            description = f"Dispute {record.dispute_status} ({record.dispute_id}): credits restored"
        entry = Entry(change, "dispute", description, reference, record.dispute_amount, record.currency)
        policy = Policy.CLAWBACK if change < 0 else Policy.CREDIT  # a hold may go below zero; a release adds
        self.ledger.post(record.user_id, entry, policy, extra=[self._state_update(record, credits_disputed=hold)])
        return change

    def _state_update(self, record: PaymentRecord, **changes: int) -> dict[str, Any]:
        """Update the ledger state of a record, only if it is still the state the step was computed from."""
        unchanged = "credits_refunded = :old_refunded AND credits_disputed = :old_disputed"
        values: dict[str, Any] = {f":{k}": v for k, v in changes.items()}
        values.update({":old_refunded": record.credits_refunded, ":old_disputed": record.credits_disputed})
        return {
            "Update": {
                "TableName": self.table,
                "Key": self._key(record.payment_id),
                "UpdateExpression": "SET " + ", ".join(f"{k} = :{k}" for k in changes),
                "ConditionExpression": unchanged,
                "ExpressionAttributeValues": to_item(values),
            }
        }

    # ---- the record ---------------------------------------------------------------------------

    def _key(self, payment_id: str) -> dict[str, Any]:
        return to_item({"pk": keys.payment_pk(payment_id), "sk": keys.PAYMENT_SK})

    def _is_granted(self, payment_id: str) -> bool:
        record = self.record(payment_id)
        return record is not None and record.granted

    def record(self, payment_id: str) -> PaymentRecord | None:
        response = self.client.get_item(TableName=self.table, Key=self._key(payment_id), ConsistentRead=True)
        if "Item" not in response:
            return None
        item = from_item(response["Item"])
        fields = {name: item[name] for name in PaymentRecord.__dataclass_fields__ if name in item}
        fields.pop("payment_id", None)
        return PaymentRecord(payment_id=payment_id, **fields)
