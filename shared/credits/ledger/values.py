"""The ledger's values: what callers pass in and get back, the limits, and input validation.

Nothing here reads or writes; every other module of the ledger builds on it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from msgspec import Struct, field

from credits.errors import ValidationError
from credits.ledger.topup import AutoTopUp, TopUpState

MAX_AMOUNT = 1_000_000_000
MAX_TRANSACTION_ITEMS = 100  # DynamoDB's limit for one TransactWriteItems
# A combiner reads at most this many queued changes: as many as one transaction of 100 items can
# decide (a charge is 4 items: the intent's removal, its decision, its entry and its marker), so
# their decisions and markers fit one batch read (100 keys) and none is read in vain.
MAX_INTENTS_PER_PASS = 24
INTENT_GRACE_SECONDS = 2.0  # past its waiter's deadline plus this, a queued change is refused, never applied
FREED_KEY_SECONDS = 3600  # a released hold's key marker is kept (freed) as long as an intent lives
INTENT_TTL_SECONDS = 3600  # an intent its waiter never took off the queue (a crash) is deleted by TTL
LEASE_MS = 2000  # the combiner lease: extended by every pass; a dead combiner is replaced after this
# A pass that takes longer than the lease (a slow or loaded store) would lose it mid-pass to a waiter,
# whose own pass would lose it the same way: the lease a pass writes, and the one a waiter takes,
# is 3 times the last pass's duration (recorded on the account), between LEASE_MS and MAX_LEASE_MS.
MAX_LEASE_MS = 4000
POLL_SECONDS = 0.05  # a waiter looks for its decision about this often (then twice as long), jittered
# ... or, when passes are slow, about twice per pass (up to this): a decision comes once per pass, and
# waiters polling faster than that only slow the store the combiner is waiting on
MAX_POLL_SECONDS = 0.5
SERVE_AFTER_OWN_SECONDS = 0.5  # a combiner keeps serving the queue this long after its own change
# A container that found an account contended (a live combiner, a lost race, others queued with its
# change) queues its changes there at once for this long, without a direct attempt that would lose.
CONTENDED_SECONDS = 1.0
MAX_KEY_BYTES = 255  # user ids, reference ids and idempotency keys, in UTF-8 bytes (they become key parts)
IDEMPOTENCY_TTL_SECONDS = 48 * 3600  # Stripe keeps keys 24 h; we keep them twice as long.
MAX_TIME_BUDGET_SECONDS = 30.0  # the longest a writer may wait for its change (Ledger's time_budget)
# A refusal under an Idempotency-Key (402, too many holds) is kept and replayed this long: longer
# than any change queued under that key before the answer can still be applied (a waiter's budget
# plus INTENT_GRACE_SECONDS), with room to spare for clocks that disagree. Then the key is free again.
REFUSAL_MEMORY_SECONDS = 60
DEFAULT_HOLD_TTL_SECONDS = 300
DEFAULT_LOW_BALANCE_THRESHOLD = 10
LIMIT_NOTE_TTL_SECONDS = 400 * 86_400
MAX_HOLD_TTL_SECONDS = 86_400
HOLD_RETENTION_SECONDS = 7 * 86_400  # a hold item outlives its end by a week: a late capture is a 409
MAX_NOTE_BYTES = 32 * 1024
SETTINGS_CHANGES_PER_MINUTE = 10  # per user, per UTC minute (PUT /credits/settings)
# per account: the account item carries them (about 60 bytes each) and every change rewrites it, so
# the cap keeps that write small (docs/adr/0005-holds.md: about 7 KB at the cap)
MAX_OPEN_HOLDS = 100
# Credit lots (docs/design.md section 16, docs/adr/0010-credit-lots.md): an account keeps at most this
# many lots on its item (open ones and expired purchase lots a refund may still need); past it a new
# grant joins an existing lot and never expires sooner than its own terms say.
MAX_LOTS = 50
CATEGORIES = ("paid", "promotional")
DEFAULT_PRIORITY = {"paid": 50, "promotional": 10}
MAX_PRIORITY = 100
EXPIRY_WARNING_DAYS = 7  # "Credits Expiring Soon", once per lot, this long before it expires
# An expired purchase lot stays on the account (a few numbers) this long, so a refund of it never
# claws back its credits that had already expired; past it, a refund claws back as for any credits.
EXPIRED_LOT_MEMORY_SECONDS = 180 * 86_400
MAX_LOT_LABEL = 60  # characters of a lot's name kept for its expiry entry ("of Starter")
ENTRY_TYPES = frozenset({"purchase", "usage", "refund", "dispute", "expiration", "adjustment", "gift"})


class Policy(Enum):
    """How an entry may move the balance."""

    USAGE = "usage"  # a debit that must be covered by a non-negative balance
    CREDIT = "credit"  # a positive amount
    CLAWBACK = "clawback"  # a debit that may take the balance below zero (refund, dispute, forced adjustment)
    ADJUSTMENT = "adjustment"  # an operator's debit: never below zero, balance nor available


class LotTerms(Struct, frozen=True):
    """The terms of the credits an entry adds: their category, priority (lower spends first) and
    expiry, the name their expiry entry gives them, and the purchase they answer for (refunds)."""

    category: str = "paid"
    priority: int | None = None  # None: DEFAULT_PRIORITY of the category
    expires_at_ms: int | None = None
    label: str = ""
    source: str | None = None  # the purchase's system reference (`purchase:<payment>`), for refunds
    # the currency they were bought in (set by the rules from the entry) and the price, (minor units,
    # credits): a purchase's from its entry, a won dispute's from its purchase (the settlement passes
    # the payment's); None for credits granted for nothing
    currency: str | None = None
    price: tuple[int, int] | None = None

    @property
    def rank(self) -> int:
        return DEFAULT_PRIORITY[self.category] if self.priority is None else self.priority


class Entry(Struct, frozen=True):
    """One change to post: a signed amount and what it is."""

    amount: int
    type: str
    description: str
    reference_id: str | None = None
    monetary_amount: int | None = None
    currency: str | None = None
    # True for references the system writes for itself (`purchase:<pi>`, a settlement step): they
    # live in their own key space (keys.SYSREF), which no client-chosen referenceId can reach.
    system_reference: bool = False
    reason: str | None = None  # why an operator forced an adjustment below zero (kept, never shown to the user)
    lot: LotTerms | None = None  # a credit: the terms of the lot it adds to (None: paid, no expiry)
    # a refund's or a dispute's clawback: the purchase (`purchase:<payment>`) whose lot it draws first
    # and whose already expired credits it never takes back
    source: str | None = None
    action: str | None = None  # usage: the priced action (or route) that charged it, for insights


class Posted(Struct, frozen=True):
    """The result of a change, the same on first write and on every replay."""

    transaction_id: str
    amount: int
    balance: int
    seq: int
    replayed: bool = False

    @classmethod
    def of(cls, result: Mapping[str, Any]) -> Posted:
        """From a change's result, as decided (or stored on a decided intent)."""
        return cls(
            str(result["transaction_id"]),
            int(result["amount"]),
            int(result["balance_after"]),
            int(result["seq"]),
            bool(result.get("replayed", False)),
        )


class Idempotency(Struct, frozen=True):
    """A client's Idempotency-Key and the fingerprint of the request it was sent with."""

    key: str
    fingerprint: str


class Transaction(Struct, frozen=True):
    """A ledger entry as read back."""

    id: str
    seq: int
    amount: int
    balance_after: int
    type: str
    description: str
    reference_id: str | None
    monetary_amount: int | None
    currency: str | None
    created_at: str
    system_reference: bool = False
    reason: str | None = None  # an operator's reason for a forced adjustment (not in the HTTP API)
    draws: Mapping[str, int] = field(default_factory=dict)  # lot id -> credits a debit took from it
    lot: str | None = None  # the lot a credit went to
    expired_part: int = 0  # a refund's or dispute's credits that had expired already (not taken again)
    action: str | None = None  # usage: the priced action (or route) that charged it


class Audit(Struct):
    """What `Ledger.audit` found for one user; `ok` when every invariant of section 4 holds."""

    user_id: str
    balance: int
    seq: int
    entries: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class Reserved(Struct, frozen=True):
    """A hold just opened, or the same hold replayed for a repeated Idempotency-Key."""

    hold_id: str
    amount: int
    expires_at_ms: int
    balance: int
    available: int
    replayed: bool = False

    @property
    def expires_at(self) -> str:
        return iso_ms(self.expires_at_ms)


class Captured(Struct, frozen=True):
    """A hold's capture: one usage entry of `charged` (none, and no transaction id, for 0)."""

    hold_id: str
    transaction_id: str | None
    charged: int
    balance: int
    available: int
    replayed: bool = False


class Released(Struct, frozen=True):
    """A hold's release: nothing was charged."""

    hold_id: str
    released: int
    balance: int
    available: int
    replayed: bool = False


class Hold(Struct, frozen=True):
    """A hold as read back; `state` is open, captured, released or expired."""

    hold_id: str
    amount: int
    state: str
    expires_at_ms: int
    description: str
    captured: int | None = None
    transaction_id: str | None = None
    response: str | None = None  # the note written with its capture
    balance_after: int | None = None  # the balance its end left

    @property
    def expires_at(self) -> str:
        return iso_ms(self.expires_at_ms)


class Unchanged(Enum):
    """A setting left out of a change keeps its value."""

    UNCHANGED = "unchanged"


UNCHANGED = Unchanged.UNCHANGED


class Settings(Struct, frozen=True):
    """A user's settings as in force: their threshold (or the default) and their monthly limit."""

    low_balance_threshold: int
    monthly_spend_limit: int | None
    spent_this_month: int  # usage posted this month plus open holds (what counts against the limit)
    auto_top_up: AutoTopUp | None = None  # the user's auto top-up settings, if ever set
    topup: TopUpState = field(default_factory=TopUpState)  # where their top-ups stand
    card: Mapping[str, Any] | None = None  # the saved card (credits.cards: id, brand, last4, ...)


class LotView(Struct, frozen=True):
    """A lot as it stands: what is left of it and what open holds drew from it."""

    lot_id: str
    category: str
    priority: int
    expires_at_ms: int | None
    granted: int
    remaining: int
    held: int
    created_ms: int
    label: str

    @property
    def expires_at(self) -> str | None:
        return None if self.expires_at_ms is None else iso_ms(self.expires_at_ms)


class AccountView(Struct, frozen=True):
    """The balance, and how much of it open holds take: available = balance - held (invariant 6).
    Lots that expired count for nothing from their expiry on (invariant 9)."""

    balance: int
    available: int
    held: int
    open_holds: Mapping[str, int]  # hold id -> expires at (Unix ms)
    lots: tuple[LotView, ...] = ()  # the lots that count, in burn order

    def expiring(self, count: int = 3) -> list[tuple[int, int]]:
        """The next expiries: (credits, expires at in Unix ms), soonest first."""
        dated = sorted((lot.expires_at_ms, lot.remaining) for lot in self.lots if lot.expires_at_ms and lot.remaining)
        return [(credits, at) for at, credits in dated[:count]]


class ExtraConditionFailed(Exception):
    """A caller-supplied transaction item's condition failed (its state moved); re-read and retry."""

    def __init__(self, index: int) -> None:
        super().__init__(f"extra item {index} condition failed")
        self.index = index


def validate_amount(value: object, name: str = "amount") -> int:
    """A positive integer no larger than MAX_AMOUNT, or a ValidationError."""
    if type(value) is not int or not 0 < value <= MAX_AMOUNT:
        raise ValidationError(
            f"{name} must be a positive integer no larger than {MAX_AMOUNT}.",
            [{"field": name, "issue": "must be an integer between 1 and 1000000000"}],
        )
    return value


def key_problem(value: str) -> str | None:
    """Why a string cannot be part of a key (user id, reference id, idempotency key), or None.

    Limits are in UTF-8 bytes, because DynamoDB's are: 255 bytes keep every sort key we build
    far below its 1,024-byte limit, whatever characters are used.
    """
    if not value:
        return "must not be empty"
    if not value.isprintable():  # control characters, lone surrogates, separators
        return "must be printable characters"
    if len(value.encode("utf-8")) > MAX_KEY_BYTES:
        return f"must be at most {MAX_KEY_BYTES} bytes in UTF-8"
    return None


def validate_token(value: str, name: str) -> str:
    """A user id, reference id or idempotency key: 1..255 bytes of printable characters."""
    problem = key_problem(value)
    if problem is not None:
        raise ValidationError(
            f"{name} must be 1 to {MAX_KEY_BYTES} bytes (UTF-8) of printable characters.",
            [{"field": name, "issue": problem}],
        )
    return value


def fingerprint(payload: Mapping[str, Any]) -> str:
    """A stable hash of a request, to tell a replay from a different request under one key."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def iso_utc(now: float) -> str:
    """A Unix time as ISO 8601 UTC with milliseconds, as every stored timestamp is written: its
    millisecond is the one the rules decide with (`int(now * 1000)`), never the next."""
    return iso_ms(int(now * 1000))


def iso_ms(ms: int) -> str:
    """A Unix time in milliseconds as ISO 8601 UTC, exactly (no float in between)."""
    at = datetime.fromtimestamp(ms // 1000, UTC).replace(microsecond=ms % 1000 * 1000)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def month_of(now: float) -> str:
    """The UTC calendar month of a Unix time, `YYYY-MM`: spend limits count usage per month."""
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m")


def entry_fingerprint(entry: Entry) -> str:
    """What a reference marker remembers of its change, to tell a replay from a different change.
    A lot's category and priority count when they are not the default (paid, its default priority),
    so a marker written before lots still matches; its expiry does not (a purchase retried later
    computes it again from its terms)."""
    facts: dict[str, Any] = {
        "amount": entry.amount,
        "type": entry.type,
        "monetaryAmount": entry.monetary_amount,
        "currency": entry.currency,
    }
    terms = entry.lot
    if terms is not None and (terms.category != "paid" or terms.priority is not None):
        facts["lot"] = [terms.category, terms.rank]
    return fingerprint(facts)
