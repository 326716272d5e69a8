"""The model's records: constants from the design, a violation, and what the model keeps per
attempt, request, hold, Idempotency-Key, user and payment (plain values, no checks)."""

from __future__ import annotations

import calendar
import random
from dataclasses import dataclass, field
from typing import Any

from tests.simulation.lotmodel import Draws, MLot
from tests.simulation.workload import Op

KEY_MEMORY = 48 * 3600.0  # an Idempotency-Key's marker lives this long after a success
REFUSAL_MEMORY = 60.0  # ... and this long after a refusal
MARGIN = 22.0  # seconds the windows leave out: container clocks disagree, retries take time
MAX_OPEN_HOLDS = 100
SETTINGS_RATE = 10
RELEASING = frozenset({"won", "warning_closed", "prevented"})  # disputes that give the credits back
CLOSED_DISPUTES = RELEASING | {"lost"}
DECIDED_REFUSALS = frozenset(
    {
        "insufficient_credits",
        "spend_limit_reached",
        "validation_error",
        "hold_not_found",
        "hold_expired",
        "hold_captured",
        "hold_released",
        "hold_ended",
        "capture_exceeds_hold",
        "too_many_holds",
    }
)
POSTS = frozenset({"charge", "grant", "adjust", "buy", "claw", "restore"})  # requests that post one entry
# Real bugs the simulator found in shared/credits, reported and not fixed yet: observed and counted
# (`strict` runs fail on them). See "Bugs found" in tests/simulation/README.md.
KNOWN_BUGS: frozenset[str] = frozenset()  # none open


class Violation(Exception):
    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"{invariant}: {detail}")
        self.invariant = invariant
        self.detail = detail


def iso_ms(text: str, _days: dict[str, int] = {}) -> int:  # noqa: B006 - a cache
    """`2026-01-31T22:00:00.123Z` as Unix ms (written independently of the ledger's iso_utc)."""
    day = text[:10]
    base = _days.get(day)
    if base is None:
        base = _days[day] = calendar.timegm((int(text[:4]), int(text[5:7]), int(text[8:10]), 0, 0, 0)) * 1000
    return base + ((int(text[11:13]) * 60 + int(text[14:16])) * 60 + int(text[17:19])) * 1000 + int(text[20:23])


@dataclass(eq=False)
class Attempt:
    """One try of a request (or one delivery of a Stripe event) on one container."""

    n: int
    op: Op
    req: Req
    try_no: int
    started: float = 0.0
    ended: float = 0.0
    actor: str = ""
    status: str = "pending"  # inflight, ok, refused, unavailable, killed, crash, failed
    code: str = ""
    hold_id: str | None = None  # capture/release: the hold it names
    budget: float | None = None  # a short time budget (a waiter that gives up)
    settings_writes: int = 0
    view: Any = None  # a read: what the model says the account read must answer (lotmodel.View)
    swept: int | None = None  # a sweep: expiration entries its own direct write made
    queued: bool = False  # it queued an intent (group commit)
    topup_ended: tuple[int, str | None] | None = None  # a top-up's end it committed: (failures, suspended)
    rng: random.Random = field(default_factory=lambda: random.Random(0))  # its own: faults, backoff, choices


@dataclass(eq=False)
class Req:
    """A logical request: its original op and every attempt and repeat of it."""

    rid: int
    op: Op
    fingerprint: str
    inflight: int = 0
    ambiguous: int = 0  # attempts whose answer was lost (no definite answer since, for a keyed one)
    entries: list[tuple[int, float]] = field(default_factory=list)  # (seq, when committed)
    holds: list[str] = field(default_factory=list)
    last_answer: str = "nothing yet"
    attempts: int = 0
    answered_ok: bool = False
    hold_answer: str | None = None  # a reserve: the hold its client was told
    hold_target: str | None = None  # a capture or release: the hold it names
    topup_target: str | None = None  # a top-up's end: the top-up it ends (read by its first attempt)

    @property
    def kind(self) -> str:
        return self.op.kind

    @property
    def user(self) -> str:
        return self.op.user

    @property
    def key(self) -> str | None:
        return self.op.key

    @property
    def desc(self) -> str:
        return f"r{self.rid}"

    def outstanding(self) -> bool:
        return self.inflight > 0 or self.ambiguous > 0


@dataclass(eq=False)
class Hold:
    hold_id: str
    req: Req
    amount: int
    until_ms: int
    key: str | None
    state: str = "open"
    captured: int | None = None
    tx: str | None = None
    opened_at: float = 0.0  # virtual time
    gone: bool = False  # deleted by TTL (a week after its end)
    pending_capture: int | None = None  # the capture entry of the commit being read
    draws: Draws = field(default_factory=dict)  # what it drew from the lots when it opened
    spent: Draws = field(default_factory=dict)  # what its capture entry took of them
    short: bool = False  # it drew less than its amount when it opened (a bug)
    clawed: bool = False  # a clawback took credits it drew that no other lot covered
    standing: list[tuple[str, int]] = field(default_factory=list)  # the lots in burn order when it opened


@dataclass
class KeyState:
    owner: Req | None = None
    applied_at: float = 0.0
    first: tuple[float, str, float, Req] | None = None  # (answered at, what, remembered until, request)
    refused_at: float | None = None


@dataclass(eq=False)
class TopUps:
    """A user's auto top-up as the model has it, from the commits: the setting, the card, the
    `TOPUP#` items and the failures (credits.ledger.topup's rules, written independently)."""

    setting: dict[str, Any] | None = None  # the account's `auto_top_up` map {e, t, p, m}
    card: str | None = None  # the saved card's id
    count: int = 0
    pending: str | None = None  # the id of the one pending
    items: dict[int, str] = field(default_factory=dict)  # number -> state (pending, succeeded, failed)
    started: list[tuple[int, str, int]] = field(default_factory=list)  # (number, UTC month, max in force)
    failures: int = 0  # in a row
    retry_ms: int = 0  # no new one before (a failure's back-off)
    suspended: str | None = None
    changed_at: float = -1.0  # (virtual time) the last change of the above by anything but a start
    settings_seen: list[tuple[float, dict[str, Any] | None]] = field(default_factory=list)  # recent, with when
    card_seen: list[tuple[float, bool]] = field(default_factory=list)  # (when, a card saved), recent

    def per_month(self, month: str) -> int:
        return sum(1 for _, m, _ in self.started if m == month)


@dataclass(eq=False)
class User:
    name: str
    balance: int = 0
    seq: int = 0
    entries: list[tuple[str, int, int]] = field(default_factory=list)  # (id, amount, balance_after)
    tids: dict[str, int] = field(default_factory=dict)  # entry id -> seq
    holds: dict[str, Hold] = field(default_factory=dict)
    open: dict[str, Hold] = field(default_factory=dict)  # the account's map, as the model has it
    month: str = ""
    spent: int = 0
    limit: int | None = None
    threshold: int | None = None
    refs: dict[tuple[str, str], tuple[int, Req | None]] = field(default_factory=dict)  # -> (seq, owner)
    keys: dict[str, KeyState] = field(default_factory=dict)
    payments: set[str] = field(default_factory=set)
    last_hold: str | None = None  # the hold a reserve of the user was last answered
    lots: dict[str, MLot] = field(default_factory=dict)  # the account's lots, as the model has them
    lows: list[tuple[float, int]] = field(default_factory=list)  # (when, balance as read) after each entry, recent
    uncovered: set[int] = field(default_factory=set)  # entries a known bug paid with expired credits
    topups: TopUps = field(default_factory=TopUps)

    def held(self, t_ms: int) -> int:
        return sum(h.amount for h in self.open.values() if h.until_ms > t_ms)


@dataclass(eq=False)
class Buy:
    """A purchase whose lot expires (a `buy`), as rule 5 sees it: what expired of its credits, what
    its refunds and disputes counted as gone already, and its open dispute."""

    source: str
    user: str
    credits: int
    lot: str | None = None  # its lot, as its purchase entry named it
    expires: int | None = None
    expired: int = 0  # its credits that expired (expiration entries of its lot)
    forgiven: int = 0  # of those, what its refunds did not take back again
    dforgiven: int = 0  # what its open disputes did not take back (a won dispute gives back the rest)
    dispute: tuple[int, int] | None = None  # an open dispute: (asked, taken)
    asked: int = 0  # what its refunds and disputes asked
    taken: int = 0  # what they took
    forgotten: bool = False  # a lot of it was forgotten at the bound (MAX_LOTS): rule 5 no longer holds
    merged: bool = False  # its credits and others' share a dated lot (at the bound): counted together
    taken_twice: bool = False  # reported: some of its credits were taken back and expired too
    refund_while_disputed: bool = False  # a refund came while a dispute of it was open
    held_when_taken: bool = False  # a clawback of it came while a hold had drawn from its lot
    expired_lots: set[str] = field(default_factory=set)  # its lots that expired credits
    second_lot_missed: bool = False  # a clawback missed credits of it that expired in another lot
    unrecorded: bool = False  # a clawback came before its expiry was recorded (more were due than a write records)


@dataclass(eq=False)
class Payment:
    pi: str
    user: str
    credits: int
    price: int
    inflight: int = 0
    pending: int = 0  # redeliveries not made yet
    failures: int = 0
    paid: bool = False  # a paid session with the right amount was delivered
    refunded: int = 0  # the largest refunded total delivered
    disputes: dict[str, dict[int, str]] = field(default_factory=dict)  # id -> rank -> status
    credited_to: str | None = None
    purchase_seq: int = 0
    refunds: int = 0  # credits refund entries took
    held: int = 0  # credits dispute entries hold
    steps: int = 0
    entries: list[int] = field(default_factory=list)  # seqs of its entries

    def refund_target(self, refunded: int | None = None) -> int:
        money = self.refunded if refunded is None else refunded
        return self.credits * min(money, self.price) // self.price

    def status(self, dispute: str) -> str:
        ranks = self.disputes[dispute]
        return ranks.get(2) or ranks[1]

    def hold_target(self) -> int:
        holding = any(self.status(d) not in RELEASING for d in self.disputes)
        return self.credits - self.refund_target() if holding else 0

    def expected_net(self) -> int:
        if not self.paid:
            return 0
        return self.credits - self.refund_target() - self.hold_target()

    @property
    def net(self) -> int:
        return (self.credits if self.purchase_seq else 0) - self.refunds - self.held
