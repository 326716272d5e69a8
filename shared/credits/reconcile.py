"""Missed-payment recovery: what Stripe says happened in a period that the ledger does not show.

Stripe retries a webhook for three days. If the endpoint was down longer, or a deploy broke it, a
paid purchase is never credited (and a refund or a dispute never applied), and nobody knows. This
module lists, from Stripe, the paid Checkout Sessions created in the period and the refunds and
disputes created in it, and compares each with the payment's record in the table (ADR 0002):

- a paid session of this product whose payment is not on record as credited: a missing purchase;
- a paid auto top-up (its `payment_intent.succeeded` event) not on record as credited: the same;
- a refund whose charge's refunded total is more than the record knows: a missing refund;
- a dispute the record does not know, or knows in an earlier state: a missing dispute change.

Applying goes through `Payments.handle` with the event the webhook would have received, built from
the object as Stripe returns it now: exactly the path the webhook takes, so a purchase is credited
once whoever applies it first (this, the webhook, a second run), and a refund or dispute moves the
ledger only as far as its facts require.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from credits.errors import CreditsError, ValidationError
from credits.payments import Outcome, Payments
from credits.settlement import CLOSED, DisputeFact, PaymentRecord
from credits.stripe_objects import object_id, started_here

MAX_WINDOW_SECONDS = 30 * 24 * 3600  # Stripe keeps events for 30 days; nothing older is looked at
UNITS = {"m": 60, "h": 3600, "d": 24 * 3600}
ORDER = {"purchase": 0, "refund": 1, "dispute": 2}  # a refund or dispute settles against its purchase
# Outcomes of Payments.handle after which the ledger shows what Stripe says (a mismatch, say, is not:
# the webhook would not have credited it either; it is for a person to look at).
SETTLED = frozenset({"granted", "duplicate", "clawed_back", "restored", "noted"})


class StripeSource(Protocol):
    """What reconciling asks of Stripe (credits.stripe_gateway.StripeGateway; tests: the emulator)."""

    def sessions_since(self, created_gte: int) -> Iterable[dict[str, Any]]: ...
    def refunded_charges_since(self, created_gte: int) -> Iterable[dict[str, Any]]: ...
    def disputes_since(self, created_gte: int) -> Iterable[dict[str, Any]]: ...
    def changed_since(self, created_gte: int, types: list[str]) -> Iterable[dict[str, Any]]: ...


# State changes that come long after their object was created, so a list by creation time misses
# them: a bank debit clears days after its session, a dispute closes weeks after it opened. Their
# events (Stripe keeps 30 days) name them.
# An auto top-up's payment has no session: the period's `payment_intent.succeeded` events name them.
LATE_CHANGES = ["checkout.session.async_payment_succeeded", "charge.dispute.closed", "payment_intent.succeeded"]


@dataclass(frozen=True)
class Missing:
    """One thing Stripe knows that the ledger does not show, and the event that applies it."""

    kind: str  # purchase, refund, dispute
    stripe_id: str  # the session, charge or dispute
    payment_id: str
    user_id: str | None
    detail: str
    event: dict[str, Any]


def window(text: str) -> int:
    """`3d`, `12h`, `90m` as seconds: at least a minute, at most Stripe's 30 days."""
    match = re.fullmatch(r"([0-9]{1,5})([mhd])", text.strip())
    if not match:
        raise ValidationError(f"{text!r} is not a period such as 3d, 12h or 90m.")
    seconds = int(match.group(1)) * UNITS[match.group(2)]
    if not 60 <= seconds <= MAX_WINDOW_SECONDS:
        raise ValidationError("The period must be from 1m to 30d (Stripe keeps 30 days of events).")
    return seconds


def _event(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    """The event the webhook would have received for `obj` (its id names the recovery, not Stripe)."""
    return {"id": f"evt_reconcile_{obj['id']}", "object": "event", "type": kind, "data": {"object": obj}}


def _once(objects: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Each object once, the first seen (the lists' current state before an event's snapshot)."""
    seen: set[str] = set()
    for obj in objects:
        if obj["id"] not in seen:
            seen.add(obj["id"])
            yield obj


class _Records:
    """Payment records, each read once per run."""

    def __init__(self, payments: Payments) -> None:
        self.payments = payments
        self.read: dict[str, PaymentRecord | None] = {}

    def __call__(self, payment_id: str) -> PaymentRecord | None:
        if payment_id not in self.read:
            self.read[payment_id] = self.payments.record(payment_id)
        return self.read[payment_id]


def find_missing(payments: Payments, stripe: StripeSource, created_gte: int) -> list[Missing]:
    """Everything of the period that the ledger does not show, purchases first."""
    record = _Records(payments)
    late = _late_changes(stripe, created_gte)
    ours: set[str] = set()  # payments of this product's sessions in the period
    sessions = [*stripe.sessions_since(created_gte), *late["checkout.session"]]
    found = list(_missing_purchases(_once(sessions), record, ours))
    found += _missing_top_ups(_once(late["payment_intent"]), record, ours)
    found += _missing_refunds(stripe.refunded_charges_since(created_gte), record, ours)
    found += _missing_disputes(_once([*stripe.disputes_since(created_gte), *late["dispute"]]), record, ours)
    return sorted(found, key=lambda m: ORDER[m.kind])


def _late_changes(stripe: StripeSource, created_gte: int) -> dict[str, list[dict[str, Any]]]:
    """The sessions and disputes named by the period's events of late changes, by object type."""
    late: dict[str, list[dict[str, Any]]] = {"checkout.session": [], "dispute": [], "payment_intent": []}
    for obj in stripe.changed_since(created_gte, LATE_CHANGES):
        late.setdefault(str(obj.get("object")), []).append(obj)
    return late


def _credited(known: PaymentRecord | None) -> bool:
    return known is not None and known.granted


def _missing_purchases(sessions: Iterable[dict[str, Any]], record: _Records, ours: set[str]) -> Iterator[Missing]:
    """Paid sessions of this product whose payment is not on record as credited; notes in `ours`
    the payment of every session of this product, paid or not."""
    for session in sessions:
        started = started_here(session)
        if started is None:
            continue  # not started by this product
        payment_id = object_id(session.get("payment_intent")) or str(session["id"])
        ours.add(payment_id)
        if session.get("status") != "complete" or session.get("payment_status") != "paid":
            continue  # not paid (yet): nothing is owed
        if not _credited(record(payment_id)):
            detail = f"session {session['id']}: {started.package_id} paid, not credited"
            event = _event("checkout.session.completed", session)
            yield Missing("purchase", str(session["id"]), payment_id, started.user_id, detail, event)


def _missing_top_ups(intents: Iterable[dict[str, Any]], record: _Records, ours: set[str]) -> Iterator[Missing]:
    """Paid auto top-ups (credits.topups) not on record as credited; notes each in `ours`."""
    for intent in intents:
        metadata = intent.get("metadata") or {}
        user_id, topup_id = metadata.get("userId"), metadata.get("topupId")
        if not user_id or not topup_id:
            continue  # a Checkout purchase's intent (its session is looked at) or not ours
        payment_id = str(intent["id"])
        ours.add(payment_id)
        if intent.get("status") == "succeeded" and not _credited(record(payment_id)):
            detail = f"auto top-up {topup_id}: payment {payment_id} paid, not credited"
            yield Missing(
                "purchase", payment_id, payment_id, user_id, detail, _event("payment_intent.succeeded", intent)
            )


def _missing_refunds(charges: Iterable[dict[str, Any]], record: _Records, ours: set[str]) -> Iterator[Missing]:
    """Refunded charges whose refunded total is more than their payment's record knows."""
    for charge in charges:
        payment_id = object_id(charge.get("payment_intent")) or str(charge["id"])
        known = record(payment_id)
        refunded = int(charge.get("amount_refunded") or 0)
        if not _credited(known) and payment_id not in ours:
            continue  # a payment this product never credited (another product's, or too old)
        if known is None or known.refunded_amount < refunded:
            before = known.refunded_amount if known else 0
            detail = f"charge {charge['id']}: {refunded} refunded, the ledger knows {before}"
            event = _event("charge.refunded", charge)
            yield Missing("refund", str(charge["id"]), payment_id, known.user_id if known else None, detail, event)


def _missing_disputes(disputes: Iterable[dict[str, Any]], record: _Records, ours: set[str]) -> Iterator[Missing]:
    """Disputes their payment's record does not know, or knows in an earlier state."""
    for dispute in disputes:
        payment_id = object_id(dispute.get("payment_intent"))
        if payment_id is None:
            continue
        known = record(payment_id)
        if not _credited(known) and payment_id not in ours:
            continue
        fact = DisputeFact(str(dispute.get("status")), dispute.get("amount"))
        seen = known.disputes.get(str(dispute["id"])) if known else None
        if seen is None or seen.rank < fact.rank:
            kind = "charge.dispute.closed" if fact.status in CLOSED else "charge.dispute.created"
            detail = f"dispute {dispute['id']} ({fact.status}): the ledger knows {seen.status if seen else 'nothing'}"
            event = _event(kind, dispute)
            yield Missing("dispute", str(dispute["id"]), payment_id, known.user_id if known else None, detail, event)


def apply(payments: Payments, missing: Iterable[Missing]) -> Iterator[tuple[Missing, Outcome | CreditsError]]:
    """Apply each through the webhook's own path, in order (purchases before their refunds). One that
    fails (a payment on record for another user, the store unavailable) is answered with its error
    and the others are still applied: one bad item never holds back every later one."""
    for item in sorted(missing, key=lambda m: ORDER[m.kind]):
        try:
            yield item, payments.handle(item.event)
        except CreditsError as exc:
            yield item, exc
