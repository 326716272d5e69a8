"""Stripe payments into the ledger: purchases credited once, refunds and disputes clawed back once.

EXACTLY ONCE (DESIGN.md invariant 4), kept here on top of the ledger's reference markers:
- a purchase is keyed by its payment (`purchase:<payment_intent>`), not by the event, so the same
  payment credits once whatever announces it: a replayed event, `completed` and
  `async_payment_succeeded` for one session, or a retry after the event-id record expired;
- each payment has a `PAYMENT#<payment_intent>` record holding FACTS (money refunded so far, every
  dispute on it and its status) and LEDGER STATE (credits taken for refunds, credits held by
  disputes, and how many settlement steps were posted).
  An event only records facts, monotonically (a late or repeated event changes nothing); then
  `settle` moves the ledger state towards what the facts require, one ledger transaction per step,
  each conditioned on the record state it was computed from. So events may arrive in any order
  (a refund before its purchase is remembered and applied when the purchase lands), a crash
  between steps is finished by the next delivery, and clawbacks never exceed what was bought.
- every ledger entry posted for a payment carries a SYSTEM reference (`purchase:<pi>`, then
  `settle:<pi>:<step number>`): unique per step, never reused for a different step, and in a key
  space no client-chosen referenceId can reach (keys.SYSREF).
- a state that cannot be settled (a conflict, an impossible record) raises SettlementFailed: the
  webhook answers 5xx, logs an error and raises an alarmed metric. Never a 2xx or 4xx.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pydantic
from pydantic import BaseModel, ConfigDict

from credits import keys
from credits.errors import CreditsError, ReferenceReused, SettlementFailed, TemporarilyUnavailable, ValidationError
from credits.ledger import (
    MAX_AMOUNT,
    Entry,
    ExtraConditionFailed,
    Ledger,
    Policy,
    Posted,
    Transaction,
    from_item,
    iso_utc,
    to_item,
)
from credits.money import format_money
from credits.packages import Catalog

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

# Dispute statuses after which the money stays with us (or never left): the hold is released.
RELEASED = frozenset({"won", "warning_closed", "prevented"})
CLOSED = RELEASED | {"lost"}
DISPUTE_ATTRIBUTE = "dispute#"  # one record attribute per dispute on the payment: {status, rank, amount}
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


@dataclass(frozen=True)
class DisputeFact:
    """What we know of one dispute on a payment."""

    status: str
    amount: int | None = None

    @property
    def rank(self) -> int:
        return 2 if self.status in CLOSED else 1

    @property
    def holds(self) -> bool:
        """Open or lost: the money is (or may be) gone, so the credits are held."""
        return self.status not in RELEASED


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
    disputes: dict[str, DisputeFact] = field(default_factory=dict)
    # ledger state
    credits_refunded: int = 0
    refund_money_applied: int = 0
    credits_disputed: int = 0
    settle_steps: int = 0

    def refund_target(self) -> int:
        """Credits in proportion to the money refunded, rounded down: never more than bought."""
        if not self.amount:
            return 0
        return self.credits * min(self.refunded_amount, self.amount) // self.amount

    def holding_disputes(self) -> list[str]:
        return sorted(d for d, fact in self.disputes.items() if fact.holds)

    def dispute_target(self) -> int:
        """Credits held while ANY dispute is open or lost: whatever refunds did not take. Released
        only when no dispute still needs them (every one won, withdrawn or prevented)."""
        if not self.holding_disputes():
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
        payment_id = object_id(session.payment_intent) or session.id
        entry = Entry(
            credits,
            "purchase",
            f"{name}: {credits} credits",
            f"purchase:{payment_id}",
            price,
            currency,
            system_reference=True,
        )
        try:
            posted = self._post(
                user_id,
                entry,
                Policy.CREDIT,
                self._purchase_record(payment_id, session.id, user_id, credits, price, currency),
            )
        except ExtraConditionFailed:
            record = self.record(payment_id)
            if record is None or not record.granted or record.user_id != user_id:
                # On record as credited to someone else (or a record that moved back): never credit
                # it twice, and never call it fine. Ours to look at.
                raise SettlementFailed(f"payment {payment_id} is on record as credited to another user") from None
            posted = None  # credited before (under an earlier reference layout): a duplicate
        settled = self._settle(payment_id)  # refunds or disputes that arrived before the purchase
        if posted is None or posted.replayed:
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
                    "credits_refunded = :zero, refund_money_applied = :zero, credits_disputed = :zero, "
                    "settle_steps = :zero "
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
        payment_id = object_id(charge.payment_intent) or charge.id
        learned = self._note(
            payment_id,
            sets={"refunded_amount": charge.amount_refunded},
            # Refunds are cumulative: only a larger total is news (a late, older event is not).
            news="attribute_not_exists(refunded_amount) OR refunded_amount < :refunded_amount",
        )
        return self._after_fact(payment_id, f"refund of {payment_id} to {charge.amount_refunded}", learned)

    def _dispute(self, dispute: Dispute) -> Outcome:
        payment_id = object_id(dispute.payment_intent)
        if payment_id is None:
            return Outcome("ignored", f"dispute {dispute.id} names no payment")
        fact = DisputeFact(dispute.status, dispute.amount)
        learned = self._note(
            payment_id,
            # Each dispute on the payment is its own attribute: two disputes never overwrite each other.
            sets={"#dispute": {"status": fact.status, "rank": fact.rank, "amount": fact.amount}},
            # A closed dispute stays closed: a late `created` after `closed` is not news.
            news="attribute_not_exists(#dispute) OR #dispute.#rank < :rank",
            names={"#dispute": f"{DISPUTE_ATTRIBUTE}{dispute.id}", "#rank": "rank"},
            values={":rank": fact.rank},
        )
        return self._after_fact(payment_id, f"dispute {dispute.id} {dispute.status}", learned)

    def _note(
        self,
        payment_id: str,
        sets: dict[str, Any],
        news: str,
        names: dict[str, str] | None = None,
        values: dict[str, Any] | None = None,
    ) -> bool:
        """Record facts about a payment if they are news (False when not); unknown payments get a record."""
        values = dict(values or {})
        values.update({f":{name.lstrip('#')}": value for name, value in sets.items()})
        for _ in range(2):
            expression = "SET " + ", ".join(f"{name} = :{name.lstrip('#')}" for name in sets)
            condition = f"({news})"
            granted = self._is_granted(payment_id)
            if not granted:
                # Facts about a payment we never credited expire; a credited record never does.
                expression += ", expires_at = if_not_exists(expires_at, :expires)"
                condition += " AND attribute_not_exists(granted)"
                values[":expires"] = int(time.time()) + STUB_TTL_SECONDS
            else:
                values.pop(":expires", None)
            request: dict[str, Any] = {
                "TableName": self.table,
                "Key": self._key(payment_id),
                "UpdateExpression": expression,
                "ConditionExpression": condition,
                "ExpressionAttributeValues": to_item(values),
            }
            if names:
                request["ExpressionAttributeNames"] = names
            try:
                self.client.update_item(**request)
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
            if step is None:
                continue  # this step was posted by a concurrent delivery: recompute from the record
            if step == 0:
                return net
            net += step
        # Each round either posts a step or sees the record move: eight rounds without an end is not
        # contention but a state we cannot settle.
        raise SettlementFailed(f"payment {payment_id} did not settle after {MAX_RECOMPUTES} rounds")

    def _next_step(self, record: PaymentRecord) -> int | None:
        """Apply one missing ledger change (refund first, then the dispute hold): its signed amount,
        0 when settled, None when the step turned out to be posted already."""
        assert record.user_id is not None
        step = record.settle_steps + 1
        # Unique per step, never reused for another step: the marker lands with the record's step count.
        reference = f"settle:{record.payment_id}:{step}"
        refund = record.refund_target() - record.credits_refunded
        if refund > 0:
            money = max(record.refunded_amount, record.refund_money_applied) - record.refund_money_applied
            entry = Entry(
                -refund,
                "refund",
                f"Refund of {format_money(money, record.currency) if record.currency else money} ({record.payment_id})",
                reference,
                money,
                record.currency,
                system_reference=True,
            )
            update = self._state_update(
                record, credits_refunded=record.credits_refunded + refund, refund_money_applied=record.refunded_amount
            )
            return -refund if self._post(record.user_id, entry, Policy.CLAWBACK, update) else None
        hold = record.dispute_target()
        change = record.credits_disputed - hold
        if change == 0:
            return 0
        holding = change < 0
        named = sorted(d for d, fact in record.disputes.items() if fact.holds == holding)
        if holding:
            description = f"Payment disputed ({', '.join(named)})"
        else:
            description = "Dispute closed (" + ", ".join(f"{d} {record.disputes[d].status}" for d in named) + ")"
            description += ": credits restored"
        # The money at stake in the disputes named, never more than the payment.
        disputed = min(sum(record.disputes[d].amount or 0 for d in named), record.amount) or None
        entry = Entry(change, "dispute", description, reference, disputed, record.currency, system_reference=True)
        policy = Policy.CLAWBACK if change < 0 else Policy.CREDIT  # a hold may go below zero; a release adds
        return (
            change
            if self._post(record.user_id, entry, policy, self._state_update(record, credits_disputed=hold))
            else None
        )

    def _post(self, user_id: str, entry: Entry, policy: Policy, record_update: dict[str, Any]) -> Posted | None:
        """Post a payment's ledger entry with its record update in one transaction: the Posted, or None
        when its reference was already posted (by a concurrent delivery). Any other refusal is a
        state we cannot settle."""
        try:
            posted = self.ledger.post(user_id, entry, policy, extra=[record_update])
        except (ExtraConditionFailed, TemporarilyUnavailable):
            raise
        except ReferenceReused as exc:
            if entry.type == "purchase":  # the same payment posted with other terms: impossible
                raise SettlementFailed(f"purchase {entry.reference_id} is on the ledger with other terms") from exc
            return None
        except CreditsError as exc:
            raise SettlementFailed(
                f"{entry.type} of {entry.amount} for {user_id} refused: {type(exc).__name__}"
            ) from exc
        return None if posted.replayed and entry.type != "purchase" else posted

    def _state_update(self, record: PaymentRecord, **changes: int) -> dict[str, Any]:
        """Update the ledger state of a record, only if it is still the state the step was computed from."""
        changes["settle_steps"] = record.settle_steps + 1
        unchanged = "credits_refunded = :old_refunded AND credits_disputed = :old_disputed"
        if record.settle_steps:
            unchanged += " AND settle_steps = :old_steps"
        else:  # a record credited before steps were counted has none yet
            unchanged += " AND (attribute_not_exists(settle_steps) OR settle_steps = :old_steps)"
        values: dict[str, Any] = {f":{k}": v for k, v in changes.items()}
        values.update(
            {
                ":old_refunded": record.credits_refunded,
                ":old_disputed": record.credits_disputed,
                ":old_steps": record.settle_steps,
            }
        )
        return {
            "Update": {
                "TableName": self.table,
                "Key": self._key(record.payment_id),
                "UpdateExpression": "SET " + ", ".join(f"{k} = :{k}" for k in changes),
                "ConditionExpression": unchanged,
                "ExpressionAttributeValues": to_item(values),
            }
        }

    # ---- audit --------------------------------------------------------------------------------

    def audit(self, user_id: str, history: list[Transaction]) -> list[str]:
        """Problems between a user's ledger and the records of the payments credited to them: the
        purchase, refund and dispute entries of each payment must add up to what its facts require."""
        problems: list[str] = []
        by_payment: dict[str, list[Transaction]] = {}
        purchases = [t for t in history if t.type == "purchase" and (t.reference_id or "").startswith("purchase:")]
        for tx in purchases:
            by_payment.setdefault(str(tx.reference_id)[len("purchase:") :], []).append(tx)
        for payment_id, bought in sorted(by_payment.items()):
            record = self.record(payment_id)
            if record is None or not record.granted or record.user_id != user_id:
                problems.append(f"payment {payment_id}: credited on the ledger but not on record for this user")
                continue
            if len(bought) != 1 or bought[0].amount != record.credits:
                problems.append(
                    f"payment {payment_id}: purchase entries {[t.amount for t in bought]}, record says {record.credits}"
                )
            steps = [t for t in history if _settles(t, record)]
            refunded = -sum(t.amount for t in steps if t.type == "refund")
            disputed = -sum(t.amount for t in steps if t.type == "dispute")
            for what, on_ledger, on_record, required in (
                ("refunds", refunded, record.credits_refunded, record.refund_target()),
                ("disputes", disputed, record.credits_disputed, record.dispute_target()),
            ):
                if not on_ledger == on_record == required:
                    problems.append(
                        f"payment {payment_id}: {what} took {on_ledger} credits on the ledger, "
                        f"{on_record} on record; its facts require {required}"
                    )
        return problems

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
        fields["disputes"] = _disputes(item)
        return PaymentRecord(payment_id=payment_id, **fields)


def _settles(tx: Transaction, record: PaymentRecord) -> bool:
    """Whether a ledger entry is a settlement step of this payment (refund or dispute)."""
    if tx.type not in ("refund", "dispute") or tx.reference_id is None:
        return False  # only the system writes refund and dispute entries
    ref = tx.reference_id
    if ref.startswith((f"settle:{record.payment_id}:", f"refund:{record.payment_id}:")):
        return True
    return tx.type == "dispute" and any(ref.startswith(f"dispute:{d}:") for d in record.disputes)  # older layout


def _disputes(item: dict[str, Any]) -> dict[str, DisputeFact]:
    """Every dispute on a payment record (one attribute each; an older record kept a single one)."""
    found: dict[str, DisputeFact] = {}
    if item.get("dispute_id") and item.get("dispute_status"):
        found[item["dispute_id"]] = DisputeFact(item["dispute_status"], item.get("dispute_amount"))
    for name, value in item.items():
        if name.startswith(DISPUTE_ATTRIBUTE) and isinstance(value, dict) and isinstance(value.get("status"), str):
            amount = value.get("amount")
            fact = DisputeFact(value["status"], None if amount is None else int(amount))
            dispute_id = name[len(DISPUTE_ATTRIBUTE) :]
            if dispute_id not in found or found[dispute_id].rank <= fact.rank:
                found[dispute_id] = fact
    return found
