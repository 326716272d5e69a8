"""The settlement rules of a payment: from its facts, the next ledger entry it needs. No I/O.

A payment's record (`PaymentRecord`) holds what it bought, the FACTS Stripe told us (money refunded
so far, every dispute and its status) and the LEDGER STATE (`LedgerState`: credits taken for
refunds, credits held by disputes, steps posted). `next_step` compares the two and names the one
entry that moves the ledger towards what the facts require, with the state the record has once it
is posted; `credits.payments` posts it (entry and record update in one transaction, guarded by the
state it was computed from) and asks again until nothing is left (docs/design.md section 12):

- refunds first: `credits * refunded // amount` credits in total, rounded down, never more than
  bought;
- then disputes: while any dispute is open or lost, whatever refunds did not take is held; given
  back when every dispute is won, `warning_closed` or `prevented`. A refund that arrives while a
  dispute holds the credits is settled after the dispute gives back what the refund takes: the
  refund then takes back those credits (its purchase's first), never other credits the user holds
  (docs/adr/0010-credit-lots.md, rule 5).

Every step names its purchase (`source`, `purchase:<payment>`): the ledger takes from that purchase's
lot first and never takes back its credits that had expired already, so it may post less than the
step asks (the entry's `expired_part`; docs/adr/0010-credit-lots.md, rule 5). The record counts the
step's credits as computed here ("credits of the purchase refunded"); the audit counts an entry's
`expired_part` with it. Credits a won dispute gives back go to a paid lot with the purchase's terms
(its package's `expiresInDays` counted from then, or no expiry).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from credits.ledger import Entry, LotTerms, Policy, Transaction
from credits.money import format_money

# Dispute statuses after which the money stays with us (or never left): the hold is released.
RELEASED = frozenset({"won", "warning_closed", "prevented"})
CLOSED = RELEASED | {"lost"}
DISPUTE_ATTRIBUTE = "dispute#"  # one record attribute per dispute on the payment: {status, rank, amount}
DISPUTE_HELD = "Payment disputed"  # how a dispute step that takes credits is described
DISPUTE_RELEASED = "Dispute closed"  # ... and one that gives them back
DISPUTE_REFUNDED = "Disputed credits passed to a refund"  # ... gives back what a refund now takes
DAY_MS = 86_400_000


def purchase_reference(payment_id: str) -> str:
    """The purchase's system reference on the ledger; its lot's `source`, named by its refunds and disputes."""
    return f"purchase:{payment_id}"


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


@dataclass(frozen=True)
class LedgerState:
    """What the ledger took back for a payment so far, and how many settlement steps were posted."""

    credits_refunded: int = 0
    refund_money_applied: int = 0  # the refunded money the refund entries so far account for
    credits_disputed: int = 0
    settle_steps: int = 0


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
    # the terms of the purchase, for credits a won dispute gives back (records of purchases from
    # before lots have neither: no expiry)
    package_name: str = ""
    expires_in_days: int | None = None

    @classmethod
    def from_item(cls, payment_id: str, item: Mapping[str, Any]) -> PaymentRecord:
        """The record as stored (plain values): its fields, and every dispute attribute."""
        fields = {name: item[name] for name in cls.__dataclass_fields__ if name in item}
        fields.pop("payment_id", None)
        fields["disputes"] = disputes_of(item)
        return cls(payment_id=payment_id, **fields)

    @property
    def state(self) -> LedgerState:
        return LedgerState(self.credits_refunded, self.refund_money_applied, self.credits_disputed, self.settle_steps)

    def after(self, step: Step) -> PaymentRecord:
        """The record once `step` is posted (its facts unchanged)."""
        return dataclasses.replace(self, **dataclasses.asdict(step.state))

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


def disputes_of(item: Mapping[str, Any]) -> dict[str, DisputeFact]:
    """Every dispute on a stored payment record (one attribute each; an older record kept a single one)."""
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


@dataclass(frozen=True)
class Step:
    """One settlement entry a payment needs, and the record's ledger state once it is posted."""

    type: str  # "refund" or "dispute"
    amount: int  # signed credits: negative takes back, positive gives back
    reference: str  # settle:<payment>:<step number>, a system reference (keys.SYSREF)
    description: str
    money: int | None  # the money it answers for, in the currency's minor unit
    currency: str | None
    state: LedgerState
    source: str | None = None  # the purchase's reference (`purchase:<payment>`): its lot answers first
    expires_in_days: int | None = None  # the purchase's terms, for credits given back
    label: str = ""  # the package's name, for the lot of credits given back
    price: tuple[int, int] | None = None  # what the purchase's credits cost: (money, credits)

    @property
    def policy(self) -> Policy:
        """A clawback may take the balance below zero; a release is a credit."""
        return Policy.CLAWBACK if self.amount < 0 else Policy.CREDIT

    def entry(self, now_ms: int) -> Entry:
        """The ledger entry, decided at `now_ms`: a clawback names its purchase; credits given back
        go to a paid lot with the purchase's terms counted from now."""
        lot = None
        if self.amount > 0:
            expires = None if self.expires_in_days is None else now_ms + self.expires_in_days * DAY_MS
            lot = LotTerms("paid", None, expires, self.label, self.source, price=self.price)
        return Entry(
            self.amount,
            self.type,
            self.description,
            self.reference,
            self.money,
            self.currency,
            system_reference=True,
            lot=lot,
            source=self.source,
        )

    def record_changes(self) -> dict[str, int]:
        """The record attributes this step sets (the state it moves, and the step count)."""
        names = ("credits_refunded", "refund_money_applied") if self.type == "refund" else ("credits_disputed",)
        state = dataclasses.asdict(self.state)
        return {name: state[name] for name in (*names, "settle_steps")}


def next_step(record: PaymentRecord) -> Step | None:
    """The next entry the payment's facts require and its ledger does not show yet (refunds first,
    then the dispute hold); None when it is settled, or not credited (nothing to take back yet)."""
    if not record.granted:
        return None
    # Unique per step, never reused for another step: the marker lands with the record's step count.
    reference = f"settle:{record.payment_id}:{record.settle_steps + 1}"
    dispute = _dispute_step(record, reference)
    if dispute is not None and dispute.amount > 0:
        return dispute  # a dispute gives back first (a refund then takes those credits back)
    return _refund_step(record, reference) or dispute


def _refund_step(record: PaymentRecord, reference: str) -> Step | None:
    refund = record.refund_target() - record.credits_refunded
    if refund <= 0:
        return None
    money = max(record.refunded_amount, record.refund_money_applied) - record.refund_money_applied
    shown = format_money(money, record.currency) if record.currency else money
    state = dataclasses.replace(
        record.state,
        credits_refunded=record.credits_refunded + refund,
        refund_money_applied=record.refunded_amount,
        settle_steps=record.settle_steps + 1,
    )
    description = f"Refund of {shown} ({record.payment_id})"
    return Step("refund", -refund, reference, description, money, record.currency, state, *_terms(record))


def _dispute_step(record: PaymentRecord, reference: str) -> Step | None:
    hold = record.dispute_target()
    change = record.credits_disputed - hold
    if change == 0:
        return None
    holding = change < 0
    named = sorted(d for d, fact in record.disputes.items() if fact.holds == holding)
    if holding:
        description = f"{DISPUTE_HELD} ({', '.join(named)})"
    elif record.holding_disputes():  # still held: a refund takes what the disputes give back
        named = record.holding_disputes()
        description = f"{DISPUTE_REFUNDED} ({', '.join(named)})"
    else:
        description = f"{DISPUTE_RELEASED} (" + ", ".join(f"{d} {record.disputes[d].status}" for d in named) + ")"
        description += ": credits restored"
    # The money at stake in the disputes named, never more than the payment.
    disputed = min(sum(record.disputes[d].amount or 0 for d in named), record.amount) or None
    state = dataclasses.replace(record.state, credits_disputed=hold, settle_steps=record.settle_steps + 1)
    return Step("dispute", change, reference, description, disputed, record.currency, state, *_terms(record))


def _terms(record: PaymentRecord) -> tuple[str, int | None, str, tuple[int, int] | None]:
    """What every step of the payment names: its purchase, and the terms of credits given back (their
    expiry, name and price: the purchase's)."""
    price = (record.amount, record.credits) if record.amount > 0 and record.credits > 0 else None
    return purchase_reference(record.payment_id), record.expires_in_days, record.package_name, price


# ---- the payments audit -----------------------------------------------------------------------


def settles(tx: Transaction, record: PaymentRecord) -> bool:
    """Whether a ledger entry is a settlement step of this payment (refund or dispute)."""
    if tx.type not in ("refund", "dispute") or tx.reference_id is None:
        return False  # only the system writes refund and dispute entries
    ref = tx.reference_id
    if ref.startswith((f"settle:{record.payment_id}:", f"refund:{record.payment_id}:")):
        return True
    return tx.type == "dispute" and any(ref.startswith(f"dispute:{d}:") for d in record.disputes)  # older layout


def credits_taken(tx: Transaction) -> int:
    """The purchase's credits a settlement entry took back (negative: gave back), as the settlement
    counted them: what the entry moved, and what of them had expired already (`expired_part`: the
    ledger never takes those again, nor gives them back). An entry of 0 credits says its direction
    only by its description (a dispute's release)."""
    released = tx.type == "dispute" and tx.description.startswith((DISPUTE_RELEASED, DISPUTE_REFUNDED))
    gives = tx.amount > 0 or (tx.amount == 0 and released)
    return -(tx.amount + tx.expired_part) if gives else -tx.amount + tx.expired_part


def payment_problems(
    payment_id: str, user_id: str, record: PaymentRecord | None, history: Iterable[Transaction]
) -> list[str]:
    """What is wrong between one payment credited to `user_id` on the ledger (`history`, the user's
    whole ledger) and its record: one purchase entry of its credits, and refund and dispute entries
    adding up to what its facts require."""
    if record is None or not record.granted or record.user_id != user_id:
        return [f"payment {payment_id}: credited on the ledger but not on record for this user"]
    history = list(history)
    problems: list[str] = []
    reference = purchase_reference(payment_id)
    bought = [t.amount for t in history if t.type == "purchase" and t.reference_id == reference]
    if bought != [record.credits]:
        problems.append(f"payment {payment_id}: purchase entries {bought}, record says {record.credits}")
    steps = [t for t in history if settles(t, record)]
    for what, kind, on_record, required in (
        ("refunds", "refund", record.credits_refunded, record.refund_target()),
        ("disputes", "dispute", record.credits_disputed, record.dispute_target()),
    ):
        on_ledger = sum(credits_taken(t) for t in steps if t.type == kind)
        if not on_ledger == on_record == required:
            problems.append(
                f"payment {payment_id}: {what} took {on_ledger} credits on the ledger, "
                f"{on_record} on record; its facts require {required}"
            )
    return problems
