"""The ledger's rules (credits.ledger.rules) as worked examples: no store, no moto, no clock.

Each row of EXAMPLES reads "given an account, when these changes are decided one after another,
then ...", and says in its id what a reader can check by hand. `Book` plays the store: it keeps the
account as the rules left it after each change (as `codec.account_update` would write it) and the
items the changes wrote (markers, holds) in `found`, as the next read would return them.

Ids come from a counter: the first id a book hands out is `id-1`, the next `id-2`, and so on. Holds
given up front have ids of their own (`h1`, `h2`, ...). The time is NOW (2027-01-15 08:00 UTC) unless
a step says `at(seconds, ...)`: that many seconds later.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from msgspec import structs

from credits import keys
from credits.errors import InsufficientCredits
from credits.ledger.account import AccountState
from credits.ledger.lots import legacy
from credits.ledger.rules import (
    Change,
    Decision,
    Effect,
    EntryPosted,
    Found,
    HoldClosed,
    HoldOpened,
    KeyFreed,
    KeyRemembered,
    Kind,
    Outcome,
    Work,
    decide,
)
from credits.ledger.values import (
    IDEMPOTENCY_TTL_SECONDS,
    MAX_OPEN_HOLDS,
    REFUSAL_MEMORY_SECONDS,
    Entry,
    Idempotency,
    Policy,
    entry_fingerprint,
    fingerprint,
    month_of,
)

NOW = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC
NOW_MS = int(NOW * 1000)
DEFAULT_THRESHOLD = 10
HOLD_TTL = 300  # seconds: how long a hold given up front, or reserved here, stays open

assert month_of(NOW) == "2027-01"


# ---- the changes, as the Ledger builds them (credits.ledger.operations) -------------------------


@dataclass(frozen=True)
class Step:
    change: Change
    after: float = 0.0  # seconds after NOW


def at(seconds: float, step: Step) -> Step:
    return Step(step.change, seconds)


def key(name: str | None, request: Mapping[str, Any]) -> Idempotency | None:
    return None if name is None else Idempotency(name, fingerprint(request))


def post(entry: Entry, policy: Policy, key_name: str | None = None) -> Step:
    idem = key(key_name, {"amount": entry.amount, "type": entry.type})
    return Step(Change(Kind.POST, entry, policy, idem, entry_fingerprint(entry)))


def charge(amount: int, *, key: str | None = None, ref: str | None = None) -> Step:
    return post(Entry(-amount, "usage", "search", ref), Policy.USAGE, key)


def grant(amount: int, *, ref: str | None = None) -> Step:
    return post(Entry(amount, "gift", "top-up", ref), Policy.CREDIT)


def clawback(amount: int) -> Step:
    return post(Entry(-amount, "refund", "refunded", "pi_1"), Policy.CLAWBACK)


def adjust(amount: int, *, forced_because: str | None = None) -> Step:
    """An operator's debit, as Ledger.adjust posts it: forced below zero (with a reason) like a clawback."""
    entry = Entry(amount, "adjustment", "correction", reason=forced_because)
    return post(entry, Policy.CLAWBACK if forced_because else Policy.ADJUSTMENT)


def reserve(amount: int, *, key: str | None = None, ttl: int = HOLD_TTL) -> Step:
    idem = None if key is None else Idempotency(key, fingerprint({"hold": amount}))
    return Step(Change(Kind.RESERVE, idempotency=idem, amount=amount, ttl_seconds=ttl, description="job"))


def capture(hold_id: str, amount: int | None = None) -> Step:
    return Step(Change(Kind.CAPTURE, hold_id=hold_id, amount=amount))


def release(hold_id: str) -> Step:
    return Step(Change(Kind.RELEASE, hold_id=hold_id))


# ---- the account, kept between changes as a store would keep it ---------------------------------


@dataclass(frozen=True)
class Given:
    balance: int = 10
    seq: int = 1
    holds: Mapping[str, int | tuple[int, float]] = field(default_factory=dict)  # id -> amount (, open for s)
    spend_limit: int | None = None
    spent: int = 0
    spend_month: str | None = None  # of `spent`; this month when `spent` is given
    threshold: int | None = None


class Book:
    """One user's account as the rules see it between changes; each change is decided on a fresh
    `Work` (the direct path), unless `one_pass` decides several on one (a combiner pass)."""

    def __init__(self, given: Given) -> None:
        self.counter = itertools.count(1)
        holds = {h: (v, HOLD_TTL) if isinstance(v, int) else v for h, v in given.holds.items()}
        ends = {h: (amount, NOW_MS + int(ttl * 1000)) for h, (amount, ttl) in holds.items()}
        lots, draws = legacy(given.balance, ends)  # an account written before lots
        self.state = AccountState(
            exists=True,
            balance=given.balance,
            seq=given.seq,
            holds=ends,
            lots=lots,
            draws=draws,
            lots_written=False,
            threshold=given.threshold,
            spend_limit=given.spend_limit,
            spend_month=given.spend_month or (month_of(NOW) if given.spent else None),
            spent=given.spent,
        )
        self.found: Found = {
            keys.hold_sk(h): {
                "hold_id": h,
                "amount": amount,
                "state": "open",
                "until_ms": NOW_MS + int(ttl * 1000),
                "description": "job",
                "idempotency_key": None,
            }
            for h, (amount, ttl) in holds.items()
        }
        self.work = Work.of(self.state, NOW)

    def new_id(self) -> str:
        return f"id-{next(self.counter)}"

    def decide(self, step: Step, *, one_pass: bool = False) -> tuple[Outcome, list[Effect]]:
        now = NOW + step.after
        work = self.work if one_pass else Work.of(self.state, now)
        outcome, effects = decide(step.change, work, self.found, Decision(now, self.new_id, DEFAULT_THRESHOLD))
        self.work = work
        if outcome.error is None and (effects or work.settled or one_pass):
            # written: the account as the next read returns it
            self.state = AccountState(
                exists=True,
                balance=work.balance,
                seq=work.seq,
                holds=dict(work.holds),
                lots={lot_id: structs.replace(lot) for lot_id, lot in work.lots.items()},
                draws={h: dict(d) for h, d in work.draws.items()},
                threshold=self.state.threshold,
                spend_limit=self.state.spend_limit,
                spend_month=work.month if work.spent_changed else self.state.spend_month,
                spent=work.spent if work.spent_changed else self.state.spent,
            )
        return outcome, effects


def said(effect: Effect, now_ms: int = NOW_MS) -> str:
    """An effect as one line a reader can check."""
    if isinstance(effect, EntryPosted):
        ref = f" ref {effect.entry.reference_id}" if effect.entry.reference_id else ""
        return f"entry {effect.seq}: {effect.entry.amount:+} {effect.entry.type}{ref} -> {effect.balance_after}"
    if isinstance(effect, KeyRemembered):
        refused = effect.fields.get("refused")
        what = f" refused {refused['error']}" if refused else ""
        return f"key {effect.idempotency.key} remembered {effect.ttl_seconds}s{what}"
    if isinstance(effect, HoldOpened):
        return f"hold {effect.hold_id} opened: {effect.amount} for {(effect.until_ms - now_ms) // 1000}s"
    if isinstance(effect, HoldClosed):
        captured = effect.ended.get("captured")
        return f"hold {effect.hold_id} {effect.ended['state']}" + ("" if captured is None else f" {captured}")
    assert isinstance(effect, KeyFreed)
    return f"key {effect.key} freed"


@dataclass(frozen=True)
class Then:
    """What the LAST change of an example decided, and the account after it."""

    error: str | None = None  # the refusal's code; None: applied
    details: Mapping[str, Any] = field(default_factory=dict)  # of the refusal (a subset)
    value: Mapping[str, Any] = field(default_factory=dict)  # of the applied result (a subset)
    effects: Sequence[str] | None = None  # as `said` tells them
    balance: int | None = None
    seq: int | None = None
    holds: Mapping[str, int] | None = None  # the open holds on the account: id -> amount
    spent: int | None = None
    month: str | None = None


@dataclass(frozen=True)
class Example:
    says: str
    given: Given
    when: Sequence[Step]
    then: Then


TOO_MANY = {f"h{i}": 1 for i in range(1, MAX_OPEN_HOLDS + 1)}

EXAMPLES = [
    # ---- charges: usage never overdraws what is available (invariants 3 and 6) ----
    Example(
        "balance 10, charge 10 -> balance 0, entry seq+1",
        Given(balance=10, seq=1),
        [charge(10)],
        Then(balance=0, seq=2, effects=["entry 2: -10 usage -> 0"], value={"balance_after": 0, "seq": 2}),
    ),
    Example(
        "balance 10, hold 4 open, charge 7 -> 402 insufficient_credits, available 6",
        Given(balance=10, holds={"h1": 4}),
        [charge(7)],
        Then(
            error="insufficient_credits",
            details={"required": 7, "balance": 10, "available": 6},
            effects=[],
            balance=10,
            seq=1,
        ),
    ),
    Example(
        "balance 10, hold 4 open, charge 6 -> balance 4, available 0",
        Given(balance=10, holds={"h1": 4}),
        [charge(6)],
        Then(balance=4, seq=2, holds={"h1": 4}, effects=["entry 2: -6 usage -> 4"]),
    ),
    Example(
        "balance 10, hold 4 that expired, charge 10 -> balance 0 (an expired hold counts for nothing)",
        Given(balance=10, holds={"h1": (4, 1)}),
        [at(2, charge(10))],
        Then(balance=0, effects=["entry 2: -10 usage -> 0"]),
    ),
    Example(
        "balance 10, clawback 15 -> -5; charge 1 -> 402 (a negative balance blocks all usage)",
        Given(balance=10),
        [clawback(15), charge(1)],
        Then(error="insufficient_credits", details={"required": 1, "balance": -5, "available": -5}, balance=-5),
    ),
    Example(
        "balance -5, grant 10 -> 5; charge 5 -> 0",
        Given(balance=-5),
        [grant(10), charge(5)],
        Then(balance=0, seq=3, effects=["entry 3: -5 usage -> 0"]),
    ),
    Example(
        "a usage of +1 -> validation_error (a charge is a debit)",
        Given(balance=10),
        [post(Entry(1, "usage", "backwards"), Policy.USAGE)],
        Then(error="validation_error", balance=10, seq=1),
    ),
    Example(
        "a credit of -1 -> validation_error",
        Given(balance=10),
        [post(Entry(-1, "gift", "backwards"), Policy.CREDIT)],
        Then(error="validation_error", balance=10),
    ),
    # ---- clawbacks and an operator's adjustments ----
    Example(
        "clawback 20 of balance 10 -> balance -10",
        Given(balance=10),
        [clawback(20)],
        Then(balance=-10, seq=2, effects=["entry 2: -20 refund ref pi_1 -> -10"]),
    ),
    Example(
        "clawback 5 of balance 10 with a hold of 8 open -> balance 5, available -3 (the hold stays)",
        Given(balance=10, holds={"h1": 8}),
        [clawback(5)],
        Then(balance=5, holds={"h1": 8}),
    ),
    Example(
        "adjustment -11 of balance 10 -> 402",
        Given(balance=10),
        [adjust(-11)],
        Then(error="insufficient_credits", details={"required": 11, "balance": 10}, balance=10, effects=[]),
    ),
    Example(
        "adjustment -11 of balance 10, forced with a reason -> -1",
        Given(balance=10),
        [adjust(-11, forced_because="chargeback we lost")],
        Then(balance=-1, seq=2, effects=["entry 2: -11 adjustment -> -1"]),
    ),
    Example(
        "adjustment -3 of balance 10 with a hold of 8 open -> 402, available 2",
        Given(balance=10, holds={"h1": 8}),
        [adjust(-3)],
        Then(error="insufficient_credits", details={"required": 3, "balance": 10, "available": 2}),
    ),
    Example(
        "adjustment -10 of balance 10 -> 0; it is not usage: nothing spent",
        Given(balance=10, spend_limit=5),
        [adjust(-10)],
        Then(balance=0, spent=0),
    ),
    # ---- holds: opened against available, ended once (invariants 6 and 7) ----
    Example(
        "reserve 6 of available 5 (balance 10, hold 5 open) -> 402",
        Given(balance=10, holds={"h1": 5}),
        [reserve(6)],
        Then(error="insufficient_credits", details={"required": 6, "balance": 10, "available": 5}, holds={"h1": 5}),
    ),
    Example(
        "reserve 5 of available 5 -> hold id-1 opened, available 0, no ledger entry",
        Given(balance=10, holds={"h1": 5}),
        [reserve(5)],
        Then(
            value={"hold_id": "id-1", "amount": 5, "balance": 10, "available": 0, "expires_at_ms": NOW_MS + 300_000},
            effects=["hold id-1 opened: 5 for 300s"],
            balance=10,
            seq=1,
            holds={"h1": 5, "id-1": 5},
        ),
    ),
    Example(
        "balance -5 (after a clawback), reserve 1 -> 402",
        Given(balance=10),
        [clawback(15), reserve(1)],
        Then(error="insufficient_credits", details={"balance": -5}, holds={}),
    ),
    Example(
        "capture 3 of an open hold of 5 -> usage entry -3, hold captured, 2 released",
        Given(balance=10, holds={"h1": 5}),
        [capture("h1", 3)],
        Then(
            value={"hold_id": "h1", "transaction_id": "id-1", "charged": 3, "balance": 7, "available": 7},
            effects=["entry 2: -3 usage ref hold:h1 -> 7", "hold h1 captured 3"],
            balance=7,
            seq=2,
            holds={},
            spent=3,
        ),
    ),
    Example(
        "capture of an open hold of 5, no amount -> all 5",
        Given(balance=10, holds={"h1": 5}),
        [capture("h1")],
        Then(value={"charged": 5, "balance": 5}, effects=["entry 2: -5 usage ref hold:h1 -> 5", "hold h1 captured 5"]),
    ),
    Example(
        "capture 0 of a hold of 5 -> no entry, hold captured 0, all 5 released",
        Given(balance=10, holds={"h1": 5}),
        [capture("h1", 0)],
        Then(value={"transaction_id": None, "charged": 0}, effects=["hold h1 captured 0"], balance=10, seq=1, holds={}),
    ),
    Example(
        "capture 6 of a hold of 5 -> capture_exceeds_hold",
        Given(balance=10, holds={"h1": 5}),
        [capture("h1", 6)],
        Then(error="capture_exceeds_hold", effects=[], balance=10, holds={"h1": 5}),
    ),
    Example(
        "capture 5 s after a hold of 5 expired -> hold_expired, nothing charged",
        Given(balance=10, holds={"h1": 5}),
        [at(HOLD_TTL + 5, capture("h1", 3))],
        Then(error="hold_expired", effects=[], balance=10, seq=1),
    ),
    Example(
        "capture at the very millisecond a hold expires -> hold_expired",
        Given(balance=10, holds={"h1": 5}),
        [at(HOLD_TTL, capture("h1"))],
        Then(error="hold_expired"),
    ),
    Example(
        "capture of a hold nobody opened -> hold_not_found",
        Given(balance=10),
        [capture("nope")],
        Then(error="hold_not_found"),
    ),
    Example(
        "hold of 5 open, clawback 8 of balance 10 -> 2; capture 5 -> 402 (only a clawback goes below 0)",
        Given(balance=10, holds={"h1": 5}),
        [clawback(8), capture("h1", 5)],
        Then(error="insufficient_credits", details={"required": 5, "balance": 2}, holds={"h1": 5}),
    ),
    Example(
        "release a hold of 5 -> released 5, available back to 10, no entry",
        Given(balance=10, holds={"h1": 5}),
        [release("h1")],
        Then(
            value={"hold_id": "h1", "released": 5, "balance": 10, "available": 10, "replayed": False},
            effects=["hold h1 released"],
            balance=10,
            seq=1,
            holds={},
        ),
    ),
    Example(
        "release twice -> the second replays the first answer, writes nothing",
        Given(balance=10, holds={"h1": 5}),
        [release("h1"), release("h1")],
        Then(value={"hold_id": "h1", "released": 5, "available": 10, "replayed": True}, effects=[], holds={}),
    ),
    Example(
        "capture after release -> hold_released",
        Given(balance=10, holds={"h1": 5}),
        [release("h1"), capture("h1", 1)],
        Then(error="hold_released", effects=[], balance=10),
    ),
    Example(
        "capture 3 twice -> the second replays (transaction id-1), charged once",
        Given(balance=10, holds={"h1": 5}),
        [capture("h1", 3), capture("h1", 3)],
        Then(value={"transaction_id": "id-1", "charged": 3, "replayed": True}, effects=[], balance=7, seq=2),
    ),
    Example(
        "capture 3, then capture 4 -> hold_captured",
        Given(balance=10, holds={"h1": 5}),
        [capture("h1", 3), capture("h1", 4)],
        Then(error="hold_captured", balance=7),
    ),
    Example(
        "release after capture -> hold_captured",
        Given(balance=10, holds={"h1": 5}),
        [capture("h1", 3), release("h1")],
        Then(error="hold_captured", balance=7),
    ),
    Example(
        "release of a hold that expired -> says released 5, writes nothing",
        Given(balance=10, holds={"h1": 5}),
        [at(HOLD_TTL + 1, release("h1"))],
        Then(value={"released": 5, "balance": 10, "available": 10}, effects=[], holds={"h1": 5}),
    ),
    Example(
        "101st open hold -> too_many_holds",
        Given(balance=1000, holds=TOO_MANY),
        [reserve(1)],
        Then(error="too_many_holds", effects=[], holds=TOO_MANY),
    ),
    Example(
        "100 open holds, one of them expired -> the next one fits (the expired one is pruned)",
        Given(balance=1000, holds={**TOO_MANY, "h1": (1, 10)}),
        [at(60, reserve(1))],
        Then(value={"hold_id": "id-1"}, holds={**{h: 1 for h in TOO_MANY if h != "h1"}, "id-1": 1}),
    ),
    Example(
        "expired holds pruned: h1 (3, for 10 s) and h2 (4, for 300 s); a minute later, reserve 2 -> h2 and id-1",
        Given(balance=10, holds={"h1": (3, 10), "h2": (4, 300)}),
        [at(60, reserve(2))],
        Then(value={"available": 4}, holds={"h2": 4, "id-1": 2}),
    ),
    Example(
        "expired holds pruned by a release: h1 expired, release h2 -> no holds left",
        Given(balance=10, holds={"h1": (3, 10), "h2": (4, 300)}),
        [at(60, release("h2"))],
        Then(effects=["hold h2 released"], holds={}),
    ),
    # ---- Idempotency-Keys and referenceIds: used once (invariant 4) ----
    Example(
        "same Idempotency-Key replays the first result",
        Given(balance=10),
        [charge(3, key="k1"), charge(3, key="k1")],
        Then(
            value={"transaction_id": "id-1", "amount": -3, "balance_after": 7, "seq": 2, "replayed": True},
            effects=[],
            balance=7,
            seq=2,
        ),
    ),
    Example(
        "a different request under the same Idempotency-Key -> idempotency_key_reused",
        Given(balance=10),
        [charge(3, key="k1"), charge(4, key="k1")],
        Then(error="idempotency_key_reused", effects=[], balance=7, seq=2),
    ),
    Example(
        "a charge's Idempotency-Key sent to open a hold -> idempotency_key_reused",
        Given(balance=10),
        [charge(3, key="k1"), reserve(3, key="k1")],
        Then(error="idempotency_key_reused", holds={}),
    ),
    Example(
        "same referenceId, same amount -> replays the first result",
        Given(balance=10),
        [charge(3, ref="r1"), charge(3, ref="r1")],
        Then(value={"transaction_id": "id-1", "balance_after": 7, "replayed": True}, effects=[], balance=7),
    ),
    Example(
        "same referenceId, different amount -> reference_id_reused",
        Given(balance=10),
        [charge(3, ref="r1"), charge(4, ref="r1")],
        Then(error="reference_id_reused", effects=[], balance=7, seq=2),
    ),
    Example(
        "a charge under a key -> the key remembers its result for 48 h",
        Given(balance=10),
        [charge(3, key="k1")],
        Then(effects=["entry 2: -3 usage -> 7"], balance=7),  # the marker is written with the entry
    ),
    Example(
        "refusal under a key is remembered: balance 2, charge 5 -> 402 and a marker for 60 s",
        Given(balance=2),
        [charge(5, key="k1")],
        Then(
            error="insufficient_credits",
            effects=["key k1 remembered 60s refused insufficient_credits"],
            balance=2,
            seq=1,
        ),
    ),
    Example(
        "a refused key replays its refusal even after a top-up: balance 2, charge 5 -> 402; grant 10; again -> 402",
        Given(balance=2),
        [charge(5, key="k1"), grant(10), charge(5, key="k1")],
        Then(error="insufficient_credits", details={"required": 5, "balance": 2}, effects=[], balance=12),
    ),
    Example(
        "a hold under a key -> opened, the key remembers the hold for 48 h",
        Given(balance=10),
        [reserve(4, key="job-1")],
        Then(
            effects=["hold id-1 opened: 4 for 300s", "key job-1 remembered 172800s"],
            holds={"id-1": 4},
        ),
    ),
    Example(
        "the same hold's key again -> the same hold, replayed",
        Given(balance=10),
        [reserve(4, key="job-1"), reserve(4, key="job-1")],
        Then(value={"hold_id": "id-1", "available": 6, "replayed": True}, effects=[], holds={"id-1": 4}),
    ),
    Example(
        "a refused hold under a key is remembered: 101st hold -> too_many_holds and a marker for 60 s",
        Given(balance=1000, holds=TOO_MANY),
        [reserve(1, key="job-1")],
        Then(error="too_many_holds", effects=["key job-1 remembered 60s refused too_many_holds"]),
    ),
    Example(
        "release of a hold under a key frees the key",
        Given(balance=10),
        [reserve(4, key="job-1"), release("id-1")],
        Then(effects=["key job-1 freed", "hold id-1 released"], holds={}),
    ),
    Example(
        "a freed key opens a new hold",
        Given(balance=10),
        [reserve(4, key="job-1"), release("id-1"), reserve(4, key="job-1")],
        Then(value={"hold_id": "id-2", "replayed": False}, holds={"id-2": 4}),
    ),
    # ---- spend limits: usage this month, posted plus open holds (invariant 8) ----
    Example(
        "reserve 6 under limit 50 with 45 spent -> spend_limit_reached",
        Given(balance=100, spend_limit=50, spent=45),
        [reserve(6)],
        Then(error="spend_limit_reached", details={"limit": 50, "spent": 45, "month": "2027-01"}, holds={}),
    ),
    Example(
        "reserve 5 under limit 50 with 45 spent -> opened (exactly at the limit)",
        Given(balance=100, spend_limit=50, spent=45),
        [reserve(5)],
        Then(holds={"id-1": 5}, spent=45),  # a hold is not spent until it is captured
    ),
    Example(
        "charge 6 under limit 50 with 40 spent and a hold of 5 open -> spend_limit_reached, spent 45",
        Given(balance=100, spend_limit=50, spent=40, holds={"h1": 5}),
        [charge(6)],
        Then(error="spend_limit_reached", details={"limit": 50, "spent": 45}),
    ),
    Example(
        "charge 10 under limit 50 with 40 spent -> spent 50",
        Given(balance=100, spend_limit=50, spent=40),
        [charge(10)],
        Then(balance=90, spent=50, month="2027-01"),
    ),
    Example(
        "capture 3 of a hold of 5 under limit 50 with 40 spent -> spent 43",
        Given(balance=100, spend_limit=50, spent=40, holds={"h1": 5}),
        [capture("h1", 3)],
        Then(balance=97, spent=43),
    ),
    Example(
        "a grant and a clawback are not usage: spent stays 40",
        Given(balance=100, spend_limit=50, spent=40),
        [grant(5), clawback(5)],
        Then(balance=100, spent=40),
    ),
    Example(
        "month rollover: 50 of 50 spent in 2026-12; in 2027-01, charge 10 -> spent 10",
        Given(balance=100, spend_limit=50, spent=50, spend_month="2026-12"),
        [charge(10)],
        Then(balance=90, spent=10, month="2027-01"),
    ),
    Example(
        "a writer whose clock is behind never goes back a month: 45 spent in 2027-02, charge 6 -> refused",
        Given(balance=100, spend_limit=50, spent=45, spend_month="2027-02"),
        [charge(6)],
        Then(error="spend_limit_reached", details={"spent": 45, "month": "2027-02"}),
    ),
]


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.says for e in EXAMPLES])
def test_worked_example(example: Example) -> None:
    book = Book(example.given)
    for step in example.when:
        outcome, effects = book.decide(step)
    then = example.then
    last = example.when[-1]
    assert outcome.error == then.error, outcome
    for name, expected in then.details.items():
        assert outcome.details[name] == expected, (name, outcome.details)
    if then.error is None:
        assert outcome.value is not None
        for name, expected in then.value.items():
            assert outcome.value[name] == expected, (name, outcome.value)
    if then.effects is not None:
        assert [said(e, NOW_MS + int(last.after * 1000)) for e in effects] == list(then.effects)
    state = book.state
    if then.balance is not None:
        assert state.balance == then.balance
    if then.seq is not None:
        assert state.seq == then.seq
    if then.holds is not None:
        assert {h: amount for h, (amount, _) in state.holds.items()} == then.holds
    if then.spent is not None:
        assert state.spent == then.spent
    if then.month is not None:
        assert state.spend_month == then.month


# ---- what the table does not show at a glance -----------------------------------------------------


def test_a_refusal_writes_nothing_but_its_key_marker_and_changes_no_account_state() -> None:
    book = Book(Given(balance=10, holds={"h1": 4}, spend_limit=50, spent=45))
    work = Work.of(book.state, NOW)
    outcome, effects = decide(charge(7).change, work, book.found, Decision(NOW, book.new_id, DEFAULT_THRESHOLD))
    assert outcome.error == "insufficient_credits" and effects == []
    assert (work.balance, work.seq, work.spent, work.holds_changed, work.spent_changed) == (10, 1, 45, False, False)
    with pytest.raises(InsufficientCredits) as refused:
        outcome.result()  # a refusal raises again as the error it was, from its code and details
    assert (refused.value.required, refused.value.balance, refused.value.available) == (7, 10, 6)


def test_a_refusal_remembered_under_a_key_replays_from_its_stored_marker() -> None:
    book = Book(Given(balance=2))
    outcome, (remembered,) = book.decide(charge(5, key="k1"))
    assert isinstance(remembered, KeyRemembered)
    assert remembered.ttl_seconds == REFUSAL_MEMORY_SECONDS == 60  # as the table says: "60s"
    assert IDEMPOTENCY_TTL_SECONDS == 172_800  # a result's marker: 48 h, "172800s" in the table
    assert remembered.fields["refused"] == {"error": "insufficient_credits", **outcome.attributes()}
    # a later read finds the marker as written: the refusal, whatever the balance is by then
    found: Found = {keys.idem_sk("k1"): dict(remembered.fields)}
    again, effects = decide(
        charge(5, key="k1").change,
        Work.of(AccountState(exists=True, balance=100, seq=7), NOW + 30),
        found,
        Decision(NOW + 30, book.new_id, DEFAULT_THRESHOLD),
    )
    assert (again.error, again.details["balance"], effects) == ("insufficient_credits", 2, [])


def test_one_combiner_pass_decides_each_change_against_the_ones_before_it() -> None:
    """Several changes on ONE Work (a combiner pass): balance 5, charge 4 (k-a), charge 4 (k-b),
    charge 4 (k-a again) -> applied (1 left), refused, and the first one replayed."""
    book = Book(Given(balance=5))
    first, first_effects = book.decide(charge(4, key="k-a"), one_pass=True)
    second, second_effects = book.decide(charge(4, key="k-b"), one_pass=True)
    third, third_effects = book.decide(charge(4, key="k-a"), one_pass=True)
    assert [said(e) for e in first_effects] == ["entry 2: -4 usage -> 1"]
    assert (second.error, second.details["balance"]) == ("insufficient_credits", 1)
    assert [said(e) for e in second_effects] == ["key k-b remembered 60s refused insufficient_credits"]
    assert third.value is not None and first.value is not None
    assert (third.value["transaction_id"], third.value["replayed"], third_effects) == ("id-1", True, [])
    assert (book.work.balance, book.work.seq) == (1, 2)


def test_an_entry_carries_the_users_threshold_or_the_default() -> None:
    _, (posted,) = Book(Given(balance=10)).decide(charge(1))
    assert isinstance(posted, EntryPosted) and posted.threshold == DEFAULT_THRESHOLD
    _, (posted,) = Book(Given(balance=10, threshold=3)).decide(charge(1))
    assert isinstance(posted, EntryPosted) and posted.threshold == 3


def test_a_capture_posts_under_a_system_reference_a_client_cannot_reach() -> None:
    _, effects = Book(Given(balance=10, holds={"h1": 5})).decide(capture("h1", 3))
    posted = effects[0]
    assert isinstance(posted, EntryPosted)
    assert (posted.entry.reference_id, posted.entry.system_reference) == ("hold:h1", True)
    # a client's referenceId "hold:h1" is another key: it never replays nor blocks the capture
    client_ref = Book(Given(balance=10))
    client_ref.found.update({keys.ref_sk("hold:h1", system=True): {"fingerprint": "x"}})
    outcome, _ = client_ref.decide(charge(1, ref="hold:h1"))
    assert outcome.error is None


def test_the_items_a_change_reads_and_may_write() -> None:
    step = charge(3, key="k1", ref="r1").change
    assert step.sks() == [keys.ref_sk("r1"), keys.idem_sk("k1")]
    assert step.writes({}) == {keys.ref_sk("r1"), keys.idem_sk("k1")}
    assert step.writes({keys.idem_sk("k1"): {}}) == set()  # it replays (or is refused): writes no marker
    hold = {"state": "open", "idempotency_key": "job-1"}
    assert release("h1").change.writes({keys.hold_sk("h1"): hold}) == {keys.hold_sk("h1"), keys.idem_sk("job-1")}
    assert release("h1").change.writes({keys.hold_sk("h1"): {**hold, "state": "released"}}) == set()
