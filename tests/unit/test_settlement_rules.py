"""The settlement rules by worked example: a payment's facts in, the ledger entries it needs out.

Pure calculation (credits.settlement), no table: each case is a payment record as the webhook
leaves it, and the steps `next_step` names one after the other until the payment is settled.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from msgspec import structs

from credits.ledger import Entry, LotTerms, Policy, Transaction
from credits.settlement import (
    DisputeFact,
    LedgerState,
    PaymentRecord,
    Step,
    disputes_of,
    next_step,
    payment_problems,
)

PAYMENT = "pi_1"
NOW_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def bought(credits: int = 100, price: int = 1000, currency: str | None = "usd", **facts: Any) -> PaymentRecord:
    """A payment credited to `user-1`: `credits` for `price` (minor units), with its facts so far."""
    return PaymentRecord(PAYMENT, True, "user-1", credits, price, currency, **facts)


def disputed(*statuses: str, amount: int | None = 1000) -> dict[str, DisputeFact]:
    return {f"dp_{i + 1}": DisputeFact(status, amount) for i, status in enumerate(statuses)}


def settle(record: PaymentRecord) -> tuple[list[Step], PaymentRecord]:
    """Every step the record needs, each applied to the record as `Payments` posts it."""
    steps: list[Step] = []
    while (step := next_step(record)) is not None:
        assert len(steps) < 10, "a settlement that never ends"
        steps.append(step)
        record = record.after(step)
    return steps, record


def taken(steps: list[Step]) -> list[tuple[str, int, str]]:
    return [(s.type, s.amount, s.reference) for s in steps]


# ---- one set of facts ------------------------------------------------------------------------

CASES = {
    "bought 100 credits for $10, nothing happened since: nothing to post": (bought(), [], LedgerState()),
    "bought 100 credits for $10, refunded $5: a refund step of 50": (
        bought(refunded_amount=500),
        [("refund", -50, "settle:pi_1:1")],
        LedgerState(credits_refunded=50, refund_money_applied=500, settle_steps=1),
    ),
    "refunded in full: every credit bought": (
        bought(refunded_amount=1000),
        [("refund", -100, "settle:pi_1:1")],
        LedgerState(credits_refunded=100, refund_money_applied=1000, settle_steps=1),
    ),
    "refunded more than was paid: never more than was bought": (
        bought(refunded_amount=5000),
        [("refund", -100, "settle:pi_1:1")],
        LedgerState(credits_refunded=100, refund_money_applied=5000, settle_steps=1),
    ),
    "10 credits for $10, refunded $3.33: 3 credits, rounded down": (
        bought(credits=10, refunded_amount=333),
        [("refund", -3, "settle:pi_1:1")],
        LedgerState(credits_refunded=3, refund_money_applied=333, settle_steps=1),
    ),
    "10 credits for $10, refunded $0.99: less than a credit takes none": (
        bought(credits=10, refunded_amount=99),
        [],
        LedgerState(),
    ),
    "a second refund total after a first step: only the difference": (
        bought(refunded_amount=800, credits_refunded=30, refund_money_applied=300, settle_steps=1),
        [("refund", -50, "settle:pi_1:2")],
        LedgerState(credits_refunded=80, refund_money_applied=800, settle_steps=2),
    ),
    "a payment of nothing: refunds take nothing": (
        bought(price=0, refunded_amount=500),
        [],
        LedgerState(),
    ),
    "disputed: every credit held": (
        bought(disputes=disputed("needs_response")),
        [("dispute", -100, "settle:pi_1:1")],
        LedgerState(credits_disputed=100, settle_steps=1),
    ),
    "a dispute lost: held, and nothing more": (
        bought(disputes=disputed("lost")),
        [("dispute", -100, "settle:pi_1:1")],
        LedgerState(credits_disputed=100, settle_steps=1),
    ),
    "a dispute won before we heard it open: nothing to post": (
        bought(disputes=disputed("won")),
        [],
        LedgerState(),
    ),
    "a dispute after a partial refund: only what the refund left": (
        bought(refunded_amount=400, disputes=disputed("needs_response", amount=600)),
        [("refund", -40, "settle:pi_1:1"), ("dispute", -60, "settle:pi_1:2")],
        LedgerState(credits_refunded=40, refund_money_applied=400, credits_disputed=60, settle_steps=2),
    ),
    "two disputes, one won, one lost: the lost one keeps the credits held": (
        bought(disputes=disputed("won", "lost")),
        [("dispute", -100, "settle:pi_1:1")],
        LedgerState(credits_disputed=100, settle_steps=1),
    ),
    "a refund before the purchase was credited: nothing yet": (
        PaymentRecord(PAYMENT, refunded_amount=500),
        [],
        LedgerState(),
    ),
    "a record credited before steps were counted: the next step is number 1": (
        bought(refunded_amount=1000, credits_refunded=50, refund_money_applied=500),
        [("refund", -50, "settle:pi_1:1")],
        LedgerState(credits_refunded=100, refund_money_applied=1000, settle_steps=1),
    ),
    "settled already: nothing to post": (
        bought(refunded_amount=500, credits_refunded=50, refund_money_applied=500, settle_steps=1),
        [],
        LedgerState(credits_refunded=50, refund_money_applied=500, settle_steps=1),
    ),
}


@pytest.mark.parametrize(("record", "steps", "state"), CASES.values(), ids=list(CASES))
def test_the_steps_a_payments_facts_require(
    record: PaymentRecord, steps: list[tuple[str, int, str]], state: LedgerState
) -> None:
    posted, settled = settle(record)
    assert taken(posted) == steps
    assert settled.state == state
    assert next_step(settled) is None


# ---- facts arriving one after the other ------------------------------------------------------


def test_disputed_in_full_then_won_holds_100_then_gives_100_back() -> None:
    record = bought(disputes=disputed("needs_response"))
    opened, record = settle(record)
    record.disputes = disputed("won")
    closed, record = settle(record)
    assert taken(opened) + taken(closed) == [("dispute", -100, "settle:pi_1:1"), ("dispute", 100, "settle:pi_1:2")]
    assert record.state == LedgerState(credits_disputed=0, settle_steps=2)


def test_an_inquiry_closed_without_a_chargeback_gives_the_credits_back() -> None:
    record = bought(disputes=disputed("warning_needs_response"))
    _, record = settle(record)
    record.disputes = disputed("warning_closed")
    assert taken(settle(record)[0]) == [("dispute", 100, "settle:pi_1:2")]


def test_a_refund_after_a_full_dispute_was_lost_takes_nothing_more() -> None:
    """The credits move from the dispute's hold to the refund: the balance does not change again.
    The dispute gives back first, so the refund takes those credits back and never the user's others."""
    record = bought(disputes=disputed("lost"))
    held, record = settle(record)
    record.refunded_amount = 1000
    after, record = settle(record)
    assert taken(held) == [("dispute", -100, "settle:pi_1:1")]
    assert taken(after) == [("dispute", 100, "settle:pi_1:2"), ("refund", -100, "settle:pi_1:3")]
    assert after[0].description == "Disputed credits passed to a refund (dp_1)"
    assert sum(s.amount for s in after) == 0
    assert record.state == LedgerState(credits_refunded=100, refund_money_applied=1000, settle_steps=3)


def test_a_refund_during_a_won_dispute_is_not_given_back() -> None:
    record = bought(price=500, disputes=disputed("needs_response", amount=500))
    opened, record = settle(record)
    record.refunded_amount = 250
    refunded, record = settle(record)
    record.disputes = disputed("won", amount=500)
    won, record = settle(record)
    assert [s.amount for s in opened + refunded + won] == [-100, 50, -50, 50]
    assert sum(s.amount for s in opened + refunded + won) == -50  # half the money refunded: half the credits


def test_partial_refunds_round_down_and_never_take_more_than_was_bought() -> None:
    record = bought(credits=10)
    taken_per_refund = []
    for total in (1, 333, 666, 999, 1000):
        record.refunded_amount = total
        steps, record = settle(record)
        taken_per_refund.append(sum(s.amount for s in steps))
    assert taken_per_refund == [0, -3, -3, -3, -1]
    assert record.credits_refunded == 10 and record.refund_money_applied == 1000


def test_a_refund_before_the_purchase_is_applied_when_the_purchase_lands() -> None:
    early = PaymentRecord(PAYMENT, refunded_amount=500)
    assert next_step(early) is None
    credited = dataclasses.replace(early, granted=True, user_id="user-1", credits=100, amount=500, currency="usd")
    assert taken(settle(credited)[0]) == [("refund", -100, "settle:pi_1:1")]


# ---- what each step posts --------------------------------------------------------------------


def test_a_refund_step_is_a_clawback_of_the_money_refunded_since_the_last() -> None:
    record = bought(refunded_amount=800, credits_refunded=30, refund_money_applied=300, settle_steps=1)
    step = next_step(record)
    assert step is not None
    assert step.policy is Policy.CLAWBACK
    assert step.entry(NOW_MS) == Entry(
        -50, "refund", "Refund of $5.00 (pi_1)", "settle:pi_1:2", 500, "usd", True, source="purchase:pi_1"
    )
    assert step.record_changes() == {"credits_refunded": 80, "refund_money_applied": 800, "settle_steps": 2}


def test_a_refund_without_a_currency_shows_the_bare_amount() -> None:
    step = next_step(bought(currency=None, refunded_amount=500))
    assert step is not None and step.description == "Refund of 500 (pi_1)"


def test_a_dispute_hold_names_the_disputes_and_the_money_at_stake_up_to_the_payment() -> None:
    step = next_step(bought(disputes=disputed("needs_response", "under_review", amount=700)))
    assert step is not None
    assert (step.description, step.money, step.policy) == ("Payment disputed (dp_1, dp_2)", 1000, Policy.CLAWBACK)
    assert step.record_changes() == {"credits_disputed": 100, "settle_steps": 1}


def test_a_dispute_release_is_a_credit_naming_how_each_dispute_closed() -> None:
    record = bought(disputes=disputed("won", amount=None), credits_disputed=100, settle_steps=1)
    step = next_step(record)
    assert step is not None
    assert (step.type, step.amount, step.policy) == ("dispute", 100, Policy.CREDIT)
    assert (step.description, step.money) == ("Dispute closed (dp_1 won): credits restored", None)
    assert step.entry(NOW_MS).system_reference


# ---- the record as stored, and the audit -------------------------------------------------------


def test_disputes_are_read_from_their_own_attributes_and_the_older_single_one() -> None:
    item = {
        "dispute_id": "dp_old",
        "dispute_status": "needs_response",
        "dispute_amount": 300,
        "dispute#dp_new": {"status": "lost", "rank": 2, "amount": 500},
        "dispute#dp_old": {"status": "won", "rank": 2, "amount": 300},
        "dispute#broken": {"rank": 1},
    }
    assert disputes_of(item) == {"dp_old": DisputeFact("won", 300), "dp_new": DisputeFact("lost", 500)}
    record = PaymentRecord.from_item(PAYMENT, {"pk": "PAYMENT#pi_1", "granted": True, "credits": 5, **item})
    assert (record.granted, record.credits, sorted(record.disputes)) == (True, 5, ["dp_new", "dp_old"])


def entry(type_: str, amount: int, reference: str) -> Transaction:
    return Transaction(
        id="tx",
        seq=1,
        amount=amount,
        balance_after=0,
        type=type_,
        description="",
        reference_id=reference,
        monetary_amount=None,
        currency=None,
        created_at="2026-01-01T00:00:00.000Z",
    )


def test_the_audit_of_a_settled_payment_finds_nothing_and_of_a_missing_step_says_what() -> None:
    record = bought(refunded_amount=500, credits_refunded=50, refund_money_applied=500, settle_steps=1)
    history = [entry("purchase", 100, "purchase:pi_1"), entry("refund", -50, "settle:pi_1:1")]
    assert payment_problems(PAYMENT, "user-1", record, history) == []
    [problem] = payment_problems(PAYMENT, "user-1", record, history[:1])
    assert "refunds took 0 credits on the ledger, 50 on record; its facts require 50" in problem
    assert payment_problems(PAYMENT, "someone-else", record, history) == [
        "payment pi_1: credited on the ledger but not on record for this user"
    ]


# ---- credit lots: steps name their purchase, the audit counts what had expired -----------------

DAY_MS = 86_400_000


def test_every_step_names_its_purchase_and_credits_given_back_get_its_terms_from_now() -> None:
    record = bought(disputes=disputed("needs_response"), package_name="Starter", expires_in_days=30)
    [held], record = settle(record)
    record.disputes = disputed("won")
    [given] = settle(record)[0]
    took, gave = held.entry(NOW_MS), given.entry(NOW_MS)
    assert (took.amount, took.source, took.lot) == (-100, "purchase:pi_1", None)
    assert (gave.amount, gave.source) == (100, "purchase:pi_1")
    # and the purchase's price (the finance report values them so)
    assert gave.lot == LotTerms("paid", None, NOW_MS + 30 * DAY_MS, "Starter", "purchase:pi_1", price=(1000, 100))


def test_credits_given_back_for_a_purchase_without_expiry_never_expire() -> None:
    record = bought(disputes=disputed("won"), credits_disputed=100, settle_steps=1, package_name="Pro")
    step = next_step(record)
    assert step is not None
    assert step.entry(NOW_MS).lot == LotTerms("paid", None, None, "Pro", "purchase:pi_1", price=(1000, 100))


def test_the_terms_of_the_purchase_are_read_from_its_record() -> None:
    item = {"granted": True, "credits": 100, "package_name": "Team", "expires_in_days": 365}
    record = PaymentRecord.from_item(PAYMENT, item)
    assert (record.package_name, record.expires_in_days) == ("Team", 365)
    assert PaymentRecord.from_item(PAYMENT, {"granted": True}).expires_in_days is None  # before lots: never


def settled(type_: str, amount: int, step: int, expired: int = 0, description: str = "") -> Transaction:
    tx = entry(type_, amount, f"settle:pi_1:{step}")
    return structs.replace(tx, expired_part=expired, description=description)


AUDITED = {
    "a full refund after 70 of 100 expired: the entry takes 30": (
        bought(refunded_amount=1000, credits_refunded=100, refund_money_applied=1000, settle_steps=1),
        [settled("refund", -30, 1, expired=70)],
    ),
    "a refund of credits that had all expired: an entry of 0": (
        bought(refunded_amount=1000, credits_refunded=100, refund_money_applied=1000, settle_steps=1),
        [settled("refund", 0, 1, expired=100)],
    ),
    "a dispute after expiry, then won: gives back exactly what it took": (
        bought(disputes=disputed("won"), settle_steps=2),
        [
            settled("dispute", -30, 1, expired=70, description="Payment disputed (dp_1)"),
            settled("dispute", 30, 2, expired=70, description="Dispute closed (dp_1 won): credits restored"),
        ],
    ),
    "a dispute of credits that had all expired, then won: two entries of 0": (
        bought(disputes=disputed("won"), settle_steps=2),
        [
            settled("dispute", 0, 1, expired=100, description="Payment disputed (dp_1)"),
            settled("dispute", 0, 2, expired=100, description="Dispute closed (dp_1 won): credits restored"),
        ],
    ),
    "a lost dispute of expired credits, then a full refund: the hold passes to the refund, all 0": (
        bought(
            refunded_amount=1000,
            credits_refunded=100,
            refund_money_applied=1000,
            disputes=disputed("lost"),
            settle_steps=3,
        ),
        [
            settled("dispute", 0, 1, expired=100, description="Payment disputed (dp_1)"),
            settled("dispute", 0, 2, expired=100, description="Disputed credits passed to a refund (dp_1)"),
            settled("refund", 0, 3, expired=100),
        ],
    ),
    "a dispute of expired credits still open: the hold counts them": (
        bought(disputes=disputed("needs_response"), credits_disputed=100, settle_steps=1),
        [settled("dispute", 0, 1, expired=100, description="Payment disputed (dp_1)")],
    ),
}


@pytest.mark.parametrize(("record", "steps"), AUDITED.values(), ids=list(AUDITED))
def test_the_audit_counts_the_credits_that_had_expired_with_each_entry(
    record: PaymentRecord, steps: list[Transaction]
) -> None:
    history = [entry("purchase", 100, "purchase:pi_1"), *steps]
    assert payment_problems(PAYMENT, "user-1", record, history) == []


def test_the_audit_still_finds_a_refund_that_took_too_little() -> None:
    record = bought(refunded_amount=1000, credits_refunded=100, refund_money_applied=1000, settle_steps=1)
    history = [entry("purchase", 100, "purchase:pi_1"), settled("refund", -30, 1, expired=60)]
    [problem] = payment_problems(PAYMENT, "user-1", record, history)
    assert "refunds took 90 credits on the ledger, 100 on record; its facts require 100" in problem


def test_the_audit_tells_a_release_of_0_from_a_hold_of_0() -> None:
    """An open dispute whose release was posted as a hold would leave 200 held on the ledger."""
    record = bought(disputes=disputed("won"), settle_steps=2)
    held = settled("dispute", 0, 1, expired=100, description="Payment disputed (dp_1)")
    history = [entry("purchase", 100, "purchase:pi_1"), held, settled("dispute", 0, 2, expired=100)]
    [problem] = payment_problems(PAYMENT, "user-1", record, history)
    assert "disputes took 200 credits on the ledger, 0 on record" in problem
