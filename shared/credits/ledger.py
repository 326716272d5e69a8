"""The credit ledger: every balance change, and the invariants that keep money right.

INVARIANTS (DESIGN.md section 4), kept by `Ledger.post` and checked by `Ledger.audit`:

1. All or nothing: the account update, its ledger entry `TX#<seq>` and its `REF#` / `IDEM#`
   markers are ONE TransactWriteItems. No balance change without its entry, nor the reverse.
2. Gapless ledger: entries carry seq 1..N; balance_after[n] = balance_after[n-1] + amount[n];
   the account holds balance_after[N] and seq N. The write is conditioned on the seq just read,
   so a concurrent writer makes it fail, and the loser re-reads and retries.
3. No overdraft by usage: a usage charge larger than the balance, or against a negative balance,
   raises InsufficientCredits and writes nothing; so does an operator's adjustment that would take
   the balance or `available` below zero. Only a clawback (a refund, a dispute, an operator's
   adjustment forced with a reason) may go below zero.
4. Exactly once: a reference id is unique per user (REF# marker); an idempotency key is unique
   per user while its marker lives (IDEM# marker, at least 24 hours). Both are written in the
   same transaction as the change, so a retry, concurrent or after a crash, replays the result.
5. Integer money: amounts are Python ints, validated, stored as DynamoDB numbers.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from typing import TYPE_CHECKING, Any, TypeVar

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

from credits import keys
from credits.errors import (
    CaptureExceedsHold,
    CreditsError,
    HoldCaptured,
    HoldEnded,
    HoldExpired,
    HoldNotFound,
    HoldReleased,
    IdempotencyKeyReused,
    InsufficientCredits,
    ReferenceReused,
    SpendLimitReached,
    TemporarilyUnavailable,
    TooManyHolds,
    TooManyRequests,
    ValidationError,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

MAX_AMOUNT = 1_000_000_000
MAX_TRANSACTION_ITEMS = 100  # DynamoDB's limit for one TransactWriteItems
MAX_INTENTS_PER_PASS = 48  # a combiner reads at most this many queued changes (their markers fit one batch read)
INTENT_GRACE_SECONDS = 2.0  # past its waiter's deadline plus this, a queued change is refused, never applied
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
ENTRY_TYPES = frozenset({"purchase", "usage", "refund", "dispute", "expiration", "adjustment", "gift"})

# DynamoDB errors after which the same request, resent with the same ClientRequestToken, is safe.
RETRIABLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
        "TransactionInProgressException",
    }
)

T = TypeVar("T")
_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


class Policy(Enum):
    """How an entry may move the balance."""

    USAGE = "usage"  # a debit that must be covered by a non-negative balance
    CREDIT = "credit"  # a positive amount
    CLAWBACK = "clawback"  # a debit that may take the balance below zero (refund, dispute, forced adjustment)
    ADJUSTMENT = "adjustment"  # an operator's debit: never below zero, balance nor available


@dataclass(frozen=True)
class Entry:
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


@dataclass(frozen=True)
class Posted:
    """The result of a change, the same on first write and on every replay."""

    transaction_id: str
    amount: int
    balance: int
    seq: int
    replayed: bool = False


@dataclass(frozen=True)
class Idempotency:
    """A client's Idempotency-Key and the fingerprint of the request it was sent with."""

    key: str
    fingerprint: str


@dataclass(frozen=True)
class Transaction:
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


@dataclass
class Audit:
    """What `Ledger.audit` found for one user; `ok` when every invariant of section 4 holds."""

    user_id: str
    balance: int
    seq: int
    entries: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class Reserved:
    """A hold just opened, or the same hold replayed for a repeated Idempotency-Key."""

    hold_id: str
    amount: int
    expires_at_ms: int
    balance: int
    available: int
    replayed: bool = False

    @property
    def expires_at(self) -> str:
        return iso_utc(self.expires_at_ms / 1000)


@dataclass(frozen=True)
class Captured:
    """A hold's capture: one usage entry of `charged` (none, and no transaction id, for 0)."""

    hold_id: str
    transaction_id: str | None
    charged: int
    balance: int
    available: int
    replayed: bool = False


@dataclass(frozen=True)
class Released:
    """A hold's release: nothing was charged."""

    hold_id: str
    released: int
    balance: int
    available: int
    replayed: bool = False


@dataclass(frozen=True)
class Hold:
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
        return iso_utc(self.expires_at_ms / 1000)


class Unchanged(Enum):
    """A setting left out of a change keeps its value."""

    UNCHANGED = "unchanged"


UNCHANGED = Unchanged.UNCHANGED


@dataclass(frozen=True)
class Settings:
    """A user's settings as in force: their threshold (or the default) and their monthly limit."""

    low_balance_threshold: int
    monthly_spend_limit: int | None
    spent_this_month: int  # usage posted this month plus open holds (what counts against the limit)


@dataclass(frozen=True)
class AccountView:
    """The balance, and how much of it open holds take: available = balance - held (invariant 6)."""

    balance: int
    available: int
    held: int
    open_holds: Mapping[str, int]  # hold id -> expires at (Unix ms)


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


def to_item(values: Mapping[str, Any]) -> dict[str, Any]:
    """Python values to a DynamoDB attribute map (None values are left out)."""
    return {k: _serializer.serialize(v) for k, v in values.items() if v is not None}


def from_item(item: Mapping[str, Any]) -> dict[str, Any]:
    """A DynamoDB attribute map to Python values, numbers as int (in nested maps and lists too)."""
    return {k: _plain(_deserializer.deserialize(v)) for k, v in item.items()}


def _plain(value: Any) -> Any:
    """Nested DynamoDB values as plain Python: Decimal numbers as int, maps and lists recursively."""
    if isinstance(value, Decimal):
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def iso_utc(now: float) -> str:
    """A Unix time as ISO 8601 UTC with milliseconds, as every stored timestamp is written."""
    return datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class _Snapshot:
    """What one read of the account tells: the ledger's head, the open holds, the combiner lease."""

    exists: bool
    balance: int
    seq: int
    reference: dict[str, Any] | None = None
    idempotency: dict[str, Any] | None = None
    combiner: str | None = None  # who holds the combiner lease (group commit), until when (Unix ms)
    combiner_until: int = 0
    combiner_pass_ms: int = 0  # how long the last combiner pass took (it sizes the next lease)
    # open holds as last written, hold id -> (amount, expires at in Unix ms); expired ones count for
    # nothing from that millisecond on, whether or not a write has pruned them yet (invariant 7)
    holds: dict[str, tuple[int, int]] = field(default_factory=dict)
    holds_rev: int = 0  # moves with every change of `holds`: a write guards it like `seq`
    # the user's settings (DESIGN.md section 11) and the usage posted in `spend_month` (YYYY-MM)
    threshold: int | None = None
    spend_limit: int | None = None
    spend_month: str | None = None
    spent: int = 0

    def combining(self, now_ms: int) -> bool:
        return self.combiner is not None and self.combiner_until > now_ms

    def held(self, now_ms: int) -> int:
        return sum(amount for amount, until in self.holds.values() if until > now_ms)

    def available(self, now_ms: int) -> int:
        return self.balance - self.held(now_ms)


def _snapshot(account: Mapping[str, Any] | None, **markers: Any) -> _Snapshot:
    has_ledger = account is not None and "seq" in account
    raw_holds = _plain(account.get("holds") or {}) if account else {}
    return _Snapshot(
        exists=has_ledger,
        balance=account["balance"] if account and has_ledger else 0,
        seq=account["seq"] if account and has_ledger else 0,
        reference=markers.get("reference"),
        idempotency=markers.get("idempotency"),
        combiner=account.get("combiner") if account else None,
        combiner_until=account.get("combiner_until", 0) if account else 0,
        combiner_pass_ms=account.get("combiner_pass_ms", 0) if account else 0,
        holds={hold_id: (h["a"], h["u"]) for hold_id, h in raw_holds.items()},
        holds_rev=account.get("holds_rev", 0) if account else 0,
        threshold=account.get("low_balance_threshold") if account else None,
        spend_limit=account.get("monthly_spend_limit") if account else None,
        spend_month=account.get("spend_month") if account else None,
        spent=account.get("spent", 0) if account else 0,
    )


def month_of(now: float) -> str:
    """The UTC calendar month of a Unix time, `YYYY-MM`: spend limits count usage per month."""
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m")


@dataclass
class _Work:
    """The account as a pass of decisions changes it (one change directly, many in a combiner pass)."""

    base: _Snapshot
    balance: int
    seq: int
    holds: dict[str, tuple[int, int]]
    month: str
    spent: int  # usage posted this month (captures and charges; open holds count on top)
    holds_changed: bool = False
    spent_changed: bool = False
    limit_used: bool = False  # a decision of this pass was made against the user's spend limit

    @classmethod
    def of(cls, snapshot: _Snapshot, now: float) -> _Work:
        month = month_of(now)
        if snapshot.spend_month is not None and snapshot.spend_month > month:
            month = snapshot.spend_month  # a writer whose clock is behind never goes back a month
        spent = snapshot.spent if snapshot.spend_month == month else 0  # a new month starts from 0
        return cls(snapshot, snapshot.balance, snapshot.seq, dict(snapshot.holds), month, spent)

    def spend(self, amount: int) -> None:
        self.spent += amount
        self.spent_changed = True

    def check_limit(self, amount: int, now_ms: int) -> None:
        """Invariant 8: usage this month (posted, plus open holds) never passes the user's limit."""
        limit = self.base.spend_limit
        self.limit_used = True  # the write is guarded by the limit as read (None included)
        if limit is not None and self.spent + self.held(now_ms) + amount > limit:
            raise SpendLimitReached(limit=limit, spent=self.spent + self.held(now_ms), month=self.month)

    def held(self, now_ms: int) -> int:
        return sum(amount for amount, until in self.holds.values() if until > now_ms)

    def available(self, now_ms: int) -> int:
        return self.balance - self.held(now_ms)

    def prune(self, now_ms: int) -> None:
        """Forget expired holds, so the account item never grows with the number of holds ever made."""
        expired = [hold_id for hold_id, (_, until) in self.holds.items() if until <= now_ms]
        for hold_id in expired:
            del self.holds[hold_id]
        self.holds_changed |= bool(expired)


class _Kind(Enum):
    POST = "post"  # a ledger entry (usage, credit, clawback)
    RESERVE = "reserve"  # open a hold
    CAPTURE = "capture"  # end a hold with one usage entry (or none, for 0)
    RELEASE = "release"  # end a hold with no entry


@dataclass(frozen=True)
class _Op:
    """One change to a user's account, decided by `Ledger._apply` directly or in a combiner pass."""

    kind: _Kind
    entry: Entry | None = None  # POST
    policy: Policy | None = None  # POST
    idempotency: Idempotency | None = None  # POST, RESERVE
    ref_fingerprint: str = ""  # POST
    hold_id: str | None = None  # CAPTURE, RELEASE
    amount: int | None = None  # RESERVE: the amount held; CAPTURE: the amount asked (None: all of it)
    ttl_seconds: int = 0  # RESERVE
    description: str = ""  # RESERVE
    note: str | None = None  # CAPTURE: kept on the hold with its end (the paywall's response, to replay)

    def sks(self) -> list[str]:
        """The items this change reads besides the account: its markers, or its hold."""
        sks = [] if self.entry is None else [_ref_sk(self.entry)]
        sks.append(_idem_sk(self.idempotency))
        if self.hold_id is not None:
            sks.append(keys.hold_sk(self.hold_id))
        return [sk for sk in sks if sk is not None]

    def writes(self, found: Mapping[str, Mapping[str, Any]]) -> set[str]:
        """The items besides the account and the ledger entry it would write, as `found` stands: none
        when a marker of it exists already (it replays or is refused) or its hold is not open."""
        if self.hold_id is None:
            sks = set(self.sks())
            return set() if sks & found.keys() else sks
        hold = found.get(keys.hold_sk(self.hold_id))
        if hold is None or hold["state"] != "open":
            return set()
        key = hold.get("idempotency_key")
        return {keys.hold_sk(self.hold_id)} | ({keys.idem_sk(key)} if key else set())

    def size(self) -> int:
        """The most transaction items it may write, besides the account and the decision."""
        if self.kind is _Kind.POST:
            return 1 + len(self.sks())  # TX and its markers
        if self.kind is _Kind.RESERVE:
            return 1 + len(self.sks())  # HOLD and its idempotency marker
        return 3  # CAPTURE: HOLD, TX, its reference marker; RELEASE: HOLD and the freed key

    def fields(self) -> dict[str, Any]:
        e = self.entry
        return {
            "kind": self.kind.value,
            "amount": e.amount if e is not None else self.amount,
            "type": e.type if e is not None else None,
            "description": e.description if e is not None else self.description,
            "reference_id": e.reference_id if e is not None else None,
            "system_reference": (e.system_reference or None) if e is not None else None,
            "reason": e.reason if e is not None else None,
            "monetary_amount": e.monetary_amount if e is not None else None,
            "currency": e.currency if e is not None else None,
            "policy": self.policy.value if self.policy is not None else None,
            "idempotency_key": self.idempotency.key if self.idempotency else None,
            "idempotency_fingerprint": self.idempotency.fingerprint if self.idempotency else None,
            "ref_fingerprint": self.ref_fingerprint,
            "hold_id": self.hold_id,
            "ttl_seconds": self.ttl_seconds or None,
            "note": self.note,
        }

    @classmethod
    def from_fields(cls, item: Mapping[str, Any]) -> _Op:
        kind = _Kind(item.get("kind", _Kind.POST.value))
        key = item.get("idempotency_key")
        idempotency = None if key is None else Idempotency(key, item["idempotency_fingerprint"])
        if kind is not _Kind.POST:
            return cls(
                kind,
                idempotency=idempotency,
                hold_id=item.get("hold_id"),
                amount=item.get("amount"),
                ttl_seconds=item.get("ttl_seconds", 0),
                description=item.get("description", ""),
                note=item.get("note"),
            )
        entry = Entry(
            item["amount"],
            item["type"],
            item.get("description", ""),
            item.get("reference_id"),
            item.get("monetary_amount"),
            item.get("currency"),
            system_reference=bool(item.get("system_reference")),
            reason=item.get("reason"),
        )
        return cls(kind, entry, Policy(item["policy"]), idempotency, item.get("ref_fingerprint", ""))


@dataclass(frozen=True)
class _Intent:
    """A queued change (group commit): everything a combiner needs to decide and post it."""

    id: str
    created_ms: int
    apply_before_ms: int
    op: _Op

    @property
    def sk(self) -> str:
        return keys.intent_sk(self.created_ms, self.id)

    def item(self, pk: str, now: int) -> dict[str, Any]:
        return {
            "pk": pk,
            "sk": self.sk,
            "intent_id": self.id,
            "apply_before_ms": self.apply_before_ms,
            **self.op.fields(),
            "expires_at": now + INTENT_TTL_SECONDS,  # never left behind, whatever happens
        }

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> _Intent:
        return cls(
            id=item["intent_id"],
            created_ms=int(item["sk"].split("#")[2]),
            apply_before_ms=item["apply_before_ms"],
            op=_Op.from_fields(item),
        )


# The errors a decision may refuse a change with, rebuilt from the fields stored with it (a waiter
# reads its combiner's decision from the table).
_REFUSALS: dict[str, Callable[[Mapping[str, Any]], CreditsError]] = {
    "InsufficientCredits": lambda d: InsufficientCredits(
        required=int(d["required"]), balance=int(d["balance"]), available=int(d.get("available", d["balance"]))
    ),
    "IdempotencyKeyReused": lambda d: IdempotencyKeyReused(str(d["message"])),
    "ReferenceReused": lambda d: ReferenceReused(str(d["message"])),
    "ValidationError": lambda d: ValidationError(str(d.get("message", "The change is not valid."))),
    "TemporarilyUnavailable": lambda d: TemporarilyUnavailable(str(d["message"])),
    "HoldNotFound": lambda d: HoldNotFound(str(d["message"])),
    "HoldExpired": lambda d: HoldExpired(str(d["message"])),
    "HoldCaptured": lambda d: HoldCaptured(str(d["message"])),
    "HoldReleased": lambda d: HoldReleased(str(d["message"])),
    "CaptureExceedsHold": lambda d: CaptureExceedsHold(str(d["message"])),
    "TooManyHolds": lambda d: TooManyHolds(str(d["message"])),
    "SpendLimitReached": lambda d: SpendLimitReached(int(d["limit"]), int(d["spent"]), str(d["month"])),
}
_REFUSAL_DETAILS = ("required", "balance", "available", "limit", "spent", "month", "message")


@dataclass(frozen=True)
class _Outcome:
    """What was decided for a change: applied (a result, maybe a replay), or refused with an error."""

    value: Mapping[str, Any] | None = None
    error: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def applied(cls, value: Mapping[str, Any]) -> _Outcome:
        return cls(value=value)

    @classmethod
    def refused(cls, exc: CreditsError) -> _Outcome:
        name = next(c.__name__ for c in type(exc).__mro__ if c.__name__ in _REFUSALS)
        return cls(error=name, details={**exc.details(), "message": str(exc)})

    def result(self) -> Mapping[str, Any]:
        if self.value is not None:
            return self.value
        raise _REFUSALS[str(self.error)](self.details)

    def attributes(self) -> dict[str, Any]:
        if self.value is not None:
            return dict(self.value)
        details = {k: v for k, v in self.details.items() if k in _REFUSAL_DETAILS}
        return {"error": self.error, **details}

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> _Outcome:
        """From the `outcome` map written on an intent."""
        plain = _plain(dict(item))
        if "error" in plain:
            return cls(error=str(plain["error"]), details=plain)
        return cls(value=plain)


def _lease_ms(pass_ms: int) -> int:
    """How long a combiner's lease lasts, given how long its passes take (MAX_LEASE_MS at most, so
    a dead combiner is still replaced well within its waiters' time budget)."""
    return min(MAX_LEASE_MS, max(LEASE_MS, 3 * pass_ms))


def _posted_value(posted: Posted) -> dict[str, Any]:
    return {
        "transaction_id": posted.transaction_id,
        "amount": posted.amount,
        "balance_after": posted.balance,
        "seq": posted.seq,
        "replayed": posted.replayed,
    }


def _posted(value: Mapping[str, Any]) -> Posted:
    return Posted(
        str(value["transaction_id"]),
        int(value["amount"]),
        int(value["balance_after"]),
        int(value["seq"]),
        bool(value.get("replayed", False)),
    )


def _ref_sk(entry: Entry) -> str | None:
    """The sort key of an entry's reference marker, in the client's or the system's key space."""
    return None if entry.reference_id is None else keys.ref_sk(entry.reference_id, system=entry.system_reference)


def _idem_sk(idempotency: Idempotency | None) -> str | None:
    return None if idempotency is None else keys.idem_sk(idempotency.key)


def _decision_of(intent: Mapping[str, Any] | None) -> _Outcome | None:
    """The decision written on an intent; None while it is queued."""
    if intent is None:  # pragma: no cover - only its own waiter removes an intent
        raise TemporarilyUnavailable("The outcome of this change is unknown; retry with the same key.")
    return _Outcome.from_item(intent["outcome"]) if "outcome" in intent else None


def _replay_outcome(
    marker: Mapping[str, Any], fingerprint_: str, reused: Callable[[str], CreditsError], result_field: str
) -> _Outcome:
    """A change whose key or reference is already used: its first result, or reused (409). A marker
    left by another kind of change (a charge's key sent to open a hold) is a different request. A
    key whose request was refused (a 402) replays that refusal while the marker lives."""
    if "refused" in marker and marker["fingerprint"] == fingerprint_:
        return _Outcome.from_item(marker["refused"])
    if marker["fingerprint"] != fingerprint_ or result_field not in marker:
        what = "Idempotency-Key" if reused is IdempotencyKeyReused else "referenceId"
        return _Outcome.refused(reused(f"This {what} was already used for a different request."))
    value = marker.get("result") or _posted_value(_posted_from_marker(marker))
    return _Outcome.applied({**value, "replayed": True})


class Ledger:
    """Posts entries to a user's ledger and reads it back; the DynamoDB client is injected."""

    def __init__(
        self,
        client: DynamoDBClient,
        table_name: str,
        *,
        max_attempts: int = 64,
        # as long as an invocation can wait and still answer: template.yaml's functions time out after
        # 15 s; a waiter gives up 3 s before that, so a slow store delays an answer rather than fails it
        time_budget: float = 12.0,
        base_delay: float = 0.004,
        max_delay: float = 0.2,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        default_threshold: int = DEFAULT_LOW_BALANCE_THRESHOLD,
        settings_rate: int = SETTINGS_CHANGES_PER_MINUTE,
    ) -> None:
        self.client = client
        self.table = table_name
        self.default_threshold = default_threshold  # LOW_BALANCE_THRESHOLD: for users who set none
        self.settings_rate = settings_rate  # settings changes a user may make per UTC minute
        # Bounds sized by tests/integration/test_concurrency.py and `make bench`: 16 writers on one
        # balance in DynamoDB Local needed up to 34 attempts; whichever bound comes first ends the retries.
        self.max_attempts = max_attempts
        if not 0 < time_budget <= MAX_TIME_BUDGET_SECONDS:
            # a longer wait would let a queued change outlive the memory of a refusal under its key
            raise ValueError(f"time_budget must be in (0, {MAX_TIME_BUDGET_SECONDS}] seconds")
        self.time_budget = time_budget
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.clock = clock
        self.sleep = sleep

    # ---- writes -------------------------------------------------------------------------------

    def charge(
        self,
        user_id: str,
        amount: int,
        *,
        description: str,
        reference_id: str | None = None,
        idempotency: Idempotency | None = None,
    ) -> Posted:
        """Spend credits for usage; InsufficientCredits when `available` does not cover it."""
        validate_amount(amount)
        entry = Entry(-amount, "usage", description, reference_id)
        return self.post(user_id, entry, Policy.USAGE, idempotency=idempotency)

    def grant(
        self,
        user_id: str,
        amount: int,
        *,
        type: str,
        description: str,
        reference_id: str | None = None,
        monetary_amount: int | None = None,
        currency: str | None = None,
        idempotency: Idempotency | None = None,
        extra: Sequence[dict[str, Any]] = (),
    ) -> Posted:
        """Add credits (purchase, gift, adjustment, dispute won)."""
        validate_amount(amount)
        entry = Entry(amount, type, description, reference_id, monetary_amount, currency)
        return self.post(user_id, entry, Policy.CREDIT, idempotency=idempotency, extra=extra)

    def claw_back(
        self,
        user_id: str,
        amount: int,
        *,
        type: str,
        description: str,
        reference_id: str,
        monetary_amount: int | None = None,
        currency: str | None = None,
        extra: Sequence[dict[str, Any]] = (),
    ) -> Posted:
        """Take back credits whose payment was refunded or disputed; may go below zero."""
        validate_amount(amount)
        entry = Entry(-amount, type, description, reference_id, monetary_amount, currency)
        return self.post(user_id, entry, Policy.CLAWBACK, extra=extra)

    def adjust(
        self,
        user_id: str,
        amount: int,
        *,
        description: str,
        reference_id: str | None = None,
        force_negative: bool = False,
        reason: str | None = None,
    ) -> Posted:
        """An operator's `adjustment` entry of a signed amount. A credit (amount > 0) is a grant; a
        debit never takes the balance, nor `available` (open holds count), below zero
        (InsufficientCredits, nothing written) unless `force_negative`, which needs a `reason`
        (kept on the entry) and then posts it like a clawback."""
        if type(amount) is not int or amount == 0:
            raise ValidationError("An adjustment must be a non-zero integer.", [{"field": "amount"}])
        validate_amount(abs(amount))
        if force_negative and (amount > 0 or not (reason or "").strip()):
            raise ValidationError("Only a debit may be forced below zero, and only with a reason.")
        if amount > 0:
            return self.grant(user_id, amount, type="adjustment", description=description, reference_id=reference_id)
        entry = Entry(amount, "adjustment", description, reference_id, reason=reason if force_negative else None)
        return self.post(user_id, entry, Policy.CLAWBACK if force_negative else Policy.ADJUSTMENT)

    def post(
        self,
        user_id: str,
        entry: Entry,
        policy: Policy,
        *,
        idempotency: Idempotency | None = None,
        extra: Sequence[dict[str, Any]] = (),
    ) -> Posted:
        """Write one entry atomically, retrying lost races; replays a known reference or key.

        `extra` items join the same transaction (e.g. a payment record's state change); when one
        of their conditions fails, ExtraConditionFailed tells the caller to re-read and decide again.
        """
        validate_token(user_id, "userId")
        if entry.type not in ENTRY_TYPES:
            raise ValidationError(f"Unknown transaction type {entry.type!r}.")
        if entry.reference_id is not None:
            validate_token(entry.reference_id, "referenceId")
        if idempotency is not None:
            validate_token(idempotency.key, "Idempotency-Key")
        op = _Op(_Kind.POST, entry, policy, idempotency, _entry_fingerprint(entry))
        return _posted(self._run(user_id, op, extra=extra))

    def reserve(
        self,
        user_id: str,
        amount: int,
        *,
        description: str,
        ttl_seconds: int = DEFAULT_HOLD_TTL_SECONDS,
        idempotency: Idempotency | None = None,
    ) -> Reserved:
        """Open a hold of `amount` credits for `ttl_seconds` (invariant 6): it counts against
        `available` until it is captured, released or expires. InsufficientCredits when it does
        not fit. A repeat with the same Idempotency-Key returns the same hold."""
        validate_token(user_id, "userId")
        validate_amount(amount)
        if type(ttl_seconds) is not int or not 1 <= ttl_seconds <= MAX_HOLD_TTL_SECONDS:
            raise ValidationError(
                f"ttlSeconds must be an integer from 1 to {MAX_HOLD_TTL_SECONDS}.", [{"field": "ttlSeconds"}]
            )
        if idempotency is not None:
            validate_token(idempotency.key, "Idempotency-Key")
        op = _Op(
            _Kind.RESERVE, idempotency=idempotency, amount=amount, ttl_seconds=ttl_seconds, description=description
        )
        v = self._run(user_id, op)
        return Reserved(
            v["hold_id"], v["amount"], v["expires_at_ms"], v["balance"], v["available"], bool(v.get("replayed"))
        )

    def capture(self, user_id: str, hold_id: str, amount: int | None = None, *, note: str | None = None) -> Captured:
        """End an open hold with ONE usage entry of `amount` (default: all of it; 0 posts nothing),
        reference `hold:<holdId>`; the rest is released. A repeat replays the first answer. `note`
        (at most MAX_NOTE_BYTES) is kept on the hold, written with its end."""
        validate_token(user_id, "userId")
        validate_token(hold_id, "holdId")
        if note is not None and len(note.encode("utf-8")) > MAX_NOTE_BYTES:
            raise ValidationError(f"A capture's note is at most {MAX_NOTE_BYTES} bytes.")
        if amount is not None and (type(amount) is not int or not 0 <= amount <= MAX_AMOUNT):
            raise ValidationError(f"amount must be an integer from 0 to {MAX_AMOUNT}.", [{"field": "amount"}])
        v = self._run(user_id, _Op(_Kind.CAPTURE, hold_id=hold_id, amount=amount, note=note))
        return Captured(
            hold_id, v["transaction_id"], v["charged"], v["balance"], v["available"], bool(v.get("replayed"))
        )

    def release(self, user_id: str, hold_id: str) -> Released:
        """End an open hold with no entry; a released hold's Idempotency-Key may be used again.
        Releasing an expired hold changes nothing and says so (it already counts for nothing)."""
        validate_token(user_id, "userId")
        validate_token(hold_id, "holdId")
        v = self._run(user_id, _Op(_Kind.RELEASE, hold_id=hold_id))
        return Released(hold_id, v["released"], v["balance"], v["available"], bool(v.get("replayed")))

    def _run(self, user_id: str, op: _Op, *, extra: Sequence[dict[str, Any]] = ()) -> Mapping[str, Any]:
        """Decide and write a change (`_decide`); the first refusal of a month by the user's spend
        limit is noted (`LIMIT#<month>`), once, for the Spend Limit Reached event."""
        try:
            return self._decide(user_id, op, extra)
        except SpendLimitReached as refused:
            self._note_limit(keys.user_pk(user_id), refused)
            raise

    def _note_limit(self, pk: str, refused: SpendLimitReached) -> None:
        """Best effort (the refusal stands either way): a conditional put, so the event is once."""
        item = {
            "pk": pk,
            "sk": keys.limit_sk(refused.month),
            "limit": refused.limit,
            "spent": refused.spent,
            "month": refused.month,
            "created_at": iso_utc(self.clock()),
            "expires_at": int(self.clock()) + LIMIT_NOTE_TTL_SECONDS,
        }
        with contextlib.suppress(ClientError, CreditsError):
            self._write(
                "put_item",
                {"TableName": self.table, "Item": to_item(item), "ConditionExpression": "attribute_not_exists(pk)"},
            )

    def _decide(self, user_id: str, op: _Op, extra: Sequence[dict[str, Any]]) -> Mapping[str, Any]:
        """Decide a change from one read and write it in ONE transaction, guarded by what was read;
        a lost race queues it for the combiner (group commit), which decides it the same way."""
        pk = keys.user_pk(user_id)
        deadline = time.monotonic() + self.time_budget
        for attempt in range(self.max_attempts):
            if time.monotonic() > deadline:
                break
            # the account and every item the change names, in one consistent read (one DynamoDB call)
            found = self._live(self._get_many(pk, [keys.ACCOUNT, *op.sks()]))
            snapshot = _snapshot(found.pop(keys.ACCOUNT, None))
            now = self.clock()
            work = _Work.of(snapshot, now)
            outcome, items = self._apply(pk, op, work, found, now)
            if outcome.error is not None:
                # A refusal writes at most its key's marker, so that nothing queued earlier under the
                # key can apply once the client was told "not charged"; if a marker appeared first,
                # decide again from it.
                if items and not self._remember_refusal(items[0]):
                    continue
                return outcome.result()
            if not items:
                return outcome.result()  # a replay, or nothing to write
            queue = not extra  # changes with items of their own retry alone (ADR 0004)
            if queue and snapshot.combining(int(now * 1000)):
                # A combiner is applying queued changes: a direct write would only lose to it.
                return self._queue(pk, op, deadline, snapshot)
            transact = [self._account_update(pk, work, now), *items, *extra]
            # The token makes a resend of this very request (lost response, timeout) a no-op for 10 min;
            # it is the id of what the request creates (fresh for every decision), so it is traceable.
            value = outcome.result()
            token = value.get("transaction_id") or (value["hold_id"] if op.kind is _Kind.RESERVE else None)
            request = {"TransactItems": transact, "ClientRequestToken": token or str(uuid.uuid4())}
            if self._commit(request, first_extra=len(transact) - len(extra)):
                return outcome.result()
            if queue:
                # Lost a race: the balance is contended. Queue the change and let one writer
                # apply every queued change in one transaction, instead of retrying alone.
                return self._queue(pk, op, deadline, None)
            self._backoff(attempt)
        raise TemporarilyUnavailable("The balance is busy; nothing was written. Please retry.")

    # ---- deciding a change (the same rules directly and in a combiner pass) -------------------

    def _apply(
        self, pk: str, op: _Op, work: _Work, found: dict[str, dict[str, Any]], now: float
    ) -> tuple[_Outcome, list[dict[str, Any]]]:
        """Decide one change against the account as `work` holds it and the items in `found`: its
        outcome, and the transaction items that write it (none for a replay; for a refusal, only the
        marker that remembers it under its Idempotency-Key). `work` and `found` are updated, so the
        next change of a combiner pass sees this one."""
        try:
            if op.kind is _Kind.POST:
                return self._apply_post(pk, op, work, found, now)
            if op.kind is _Kind.RESERVE:
                return self._apply_reserve(pk, op, work, found, now)
            return self._apply_end(pk, op, work, found, now)
        except (
            InsufficientCredits,
            SpendLimitReached,
            ValidationError,
            HoldNotFound,
            HoldEnded,
            CaptureExceedsHold,
            TooManyHolds,
        ) as no:
            refused = _Outcome.refused(no)
            idem = op.idempotency
            if idem is None:
                return refused, []
            # Once a key is answered "not done", nothing queued under it before the answer may apply
            # (an orphaned intent whose container died, a stale direct write): the refusal is kept on
            # the key's marker for REFUSAL_MEMORY_SECONDS and replayed to every change under the key,
            # and any write of the key's marker meanwhile fails its condition and is decided again.
            marker = {"fingerprint": idem.fingerprint, "refused": refused.attributes()}
            found[keys.idem_sk(idem.key)] = marker
            return refused, [self._idempotency_put(pk, idem, marker, now, ttl_seconds=REFUSAL_MEMORY_SECONDS)]

    def _apply_post(
        self, pk: str, op: _Op, work: _Work, found: dict[str, dict[str, Any]], now: float
    ) -> tuple[_Outcome, list[dict[str, Any]]]:
        entry, idem = op.entry, op.idempotency
        assert entry is not None and op.policy is not None
        idem_sk, ref_sk = _idem_sk(idem), _ref_sk(entry)
        if idem is not None and idem_sk in found:
            return _replay_outcome(found[idem_sk], idem.fingerprint, IdempotencyKeyReused, "transaction_id"), []
        if ref_sk is not None and ref_sk in found:
            return _replay_outcome(found[ref_sk], op.ref_fingerprint, ReferenceReused, "transaction_id"), []
        self._check_policy(work, entry, op.policy, int(now * 1000))
        if op.policy is Policy.USAGE:
            work.spend(-entry.amount)
        posted, items = self._append(pk, work, entry, idem, op.ref_fingerprint, now, found)
        return _Outcome.applied(_posted_value(posted)), items

    def _check_policy(self, work: _Work, entry: Entry, policy: Policy, now_ms: int) -> None:
        if policy is Policy.USAGE:
            # Invariants 3 and 6: usage never overdraws what is available (the balance less open
            # holds), and a negative balance blocks all usage.
            if entry.amount >= 0:
                raise ValidationError("A usage charge must be a debit.")
            available = work.available(now_ms)
            if work.balance < 0 or available + entry.amount < 0:
                raise InsufficientCredits(required=-entry.amount, balance=work.balance, available=available)
            work.check_limit(-entry.amount, now_ms)
        elif policy is Policy.CREDIT and entry.amount <= 0:
            raise ValidationError("A credit must be positive.")
        elif policy is Policy.CLAWBACK and entry.amount >= 0:
            raise ValidationError("A clawback must be a debit.")
        elif policy is Policy.ADJUSTMENT:
            # Invariants 3 and 6 for an operator's debit: neither the balance nor what is available
            # (open holds count) goes below zero. It is not usage: no spend limit, no month's spend.
            if entry.amount >= 0:
                raise ValidationError("An adjustment debit must be negative.")
            available = work.available(now_ms)
            if min(work.balance, available) + entry.amount < 0:
                raise InsufficientCredits(required=-entry.amount, balance=work.balance, available=available)

    def _append(
        self,
        pk: str,
        work: _Work,
        entry: Entry,
        idem: Idempotency | None,
        ref_fingerprint: str,
        now: float,
        found: dict[str, dict[str, Any]],
    ) -> tuple[Posted, list[dict[str, Any]]]:
        """The next ledger entry and its markers; a later change of the same pass with the same key
        or reference finds them in `found` and replays this one."""
        work.seq, work.balance = work.seq + 1, work.balance + entry.amount
        tx_id = str(uuid.uuid4())
        threshold = work.base.threshold if work.base.threshold is not None else self.default_threshold
        items = self._entry_items(pk, work.seq, work.balance, entry, idem, ref_fingerprint, now, tx_id, threshold)
        posted = Posted(tx_id, entry.amount, work.balance, work.seq)
        marker = {"transaction_id": tx_id, "amount": entry.amount, "balance_after": work.balance, "seq": work.seq}
        if idem is not None:
            found[keys.idem_sk(idem.key)] = {**marker, "fingerprint": idem.fingerprint}
        ref_sk = _ref_sk(entry)
        if ref_sk is not None:
            found[ref_sk] = {**marker, "fingerprint": ref_fingerprint}
        return posted, items

    def _apply_reserve(
        self, pk: str, op: _Op, work: _Work, found: dict[str, dict[str, Any]], now: float
    ) -> tuple[_Outcome, list[dict[str, Any]]]:
        idem, idem_sk = op.idempotency, _idem_sk(op.idempotency)
        if idem is not None and idem_sk is not None and idem_sk in found:
            return _replay_outcome(found[idem_sk], idem.fingerprint, IdempotencyKeyReused, "hold_id"), []
        assert op.amount is not None
        now_ms = int(now * 1000)
        work.prune(now_ms)
        available = work.available(now_ms)
        if work.balance < 0 or op.amount > available:
            raise InsufficientCredits(required=op.amount, balance=work.balance, available=available)
        work.check_limit(op.amount, now_ms)
        if len(work.holds) >= MAX_OPEN_HOLDS:
            raise TooManyHolds(f"An account keeps at most {MAX_OPEN_HOLDS} open holds; end some first.")
        hold_id = str(uuid.uuid4())
        until_ms = now_ms + op.ttl_seconds * 1000
        work.holds[hold_id] = (op.amount, until_ms)
        work.holds_changed = True
        value = {
            "hold_id": hold_id,
            "amount": op.amount,
            "expires_at_ms": until_ms,
            "balance": work.balance,
            "available": available - op.amount,
            "replayed": False,
        }
        hold = {
            "pk": pk,
            "sk": keys.hold_sk(hold_id),
            "hold_id": hold_id,
            "amount": op.amount,
            "state": "open",
            "until_ms": until_ms,
            "description": op.description,
            "idempotency_key": idem.key if idem else None,
            "created_at": iso_utc(now),
            # kept a week past its end, so a late capture is told "expired", never "not found"
            "expires_at": until_ms // 1000 + HOLD_RETENTION_SECONDS,
        }
        items = [
            {"Put": {"TableName": self.table, "Item": to_item(hold), "ConditionExpression": "attribute_not_exists(pk)"}}
        ]
        found[keys.hold_sk(hold_id)] = hold
        if idem is not None:
            marker = {"fingerprint": idem.fingerprint, "hold_id": hold_id, "result": value}
            items.append(self._idempotency_put(pk, idem, marker, now))
            found[keys.idem_sk(idem.key)] = marker
        return _Outcome.applied(value), items

    def _apply_end(
        self, pk: str, op: _Op, work: _Work, found: dict[str, dict[str, Any]], now: float
    ) -> tuple[_Outcome, list[dict[str, Any]]]:
        """Capture or release a hold: it ends once (invariant 7)."""
        assert op.hold_id is not None
        now_ms = int(now * 1000)
        sk = keys.hold_sk(op.hold_id)
        hold = found.get(sk)
        if hold is None:
            raise HoldNotFound("No such hold for this user.")
        capture = op.kind is _Kind.CAPTURE
        if hold["state"] == "captured":
            if capture and op.amount in (None, hold["captured"]):
                return _Outcome.applied({**hold["result"], "replayed": True}), []
            raise HoldCaptured(f"This hold was already captured, for {hold['captured']} credits.")
        if hold["state"] == "released":
            if not capture:
                return _Outcome.applied({**hold["result"], "replayed": True}), []
            raise HoldReleased("This hold was released; it can no longer be captured.")
        # The account's map decides whether a hold still counts (a writer whose clock ran ahead may have
        # pruned it already): one that no longer counts can no longer charge.
        if hold["until_ms"] <= now_ms or op.hold_id not in work.holds:
            if capture:
                raise HoldExpired(f"This hold expired at {iso_utc(hold['until_ms'] / 1000)}; it charges nothing.")
            # already counts for nothing: say so, write nothing
            nothing = {"hold_id": op.hold_id, "released": hold["amount"], "balance": work.balance}
            return _Outcome.applied({**nothing, "available": work.available(now_ms), "replayed": False}), []
        amount = hold["amount"] if op.amount is None or not capture else op.amount
        if amount > hold["amount"]:
            raise CaptureExceedsHold(f"The hold is for {hold['amount']} credits; {amount} cannot be captured.")
        if capture and amount > 0 and work.balance - amount < 0:
            # invariant 3: only a clawback takes a balance below zero (one came since the hold)
            raise InsufficientCredits(required=amount, balance=work.balance, available=work.available(now_ms))
        work.holds.pop(op.hold_id, None)
        work.holds_changed = True
        work.prune(now_ms)
        items: list[dict[str, Any]] = []
        if capture:
            transaction_id = None
            if amount > 0:
                entry = Entry(
                    -amount, "usage", hold.get("description", ""), f"hold:{op.hold_id}", system_reference=True
                )
                work.spend(amount)
                posted, items = self._append(pk, work, entry, None, _entry_fingerprint(entry), now, found)
                transaction_id = posted.transaction_id
            value: dict[str, Any] = {"hold_id": op.hold_id, "transaction_id": transaction_id, "charged": amount}
            ended = {"state": "captured", "captured": amount}
            if op.note is not None:
                ended["response"] = op.note
        else:
            value = {"hold_id": op.hold_id, "released": amount}
            ended = {"state": "released"}
            if hold.get("idempotency_key"):
                # a released hold charged nothing: its key is free for a retry that should charge
                idem_sk = keys.idem_sk(hold["idempotency_key"])
                items.append({"Delete": {"TableName": self.table, "Key": to_item({"pk": pk, "sk": idem_sk})}})
                found.pop(idem_sk, None)
        value.update({"balance": work.balance, "available": work.available(now_ms), "replayed": False})
        ended.update({"result": value, "ended_at": iso_utc(now)})
        items.append(
            {
                "Update": {
                    "TableName": self.table,
                    "Key": to_item({"pk": pk, "sk": sk}),
                    "UpdateExpression": "SET " + ", ".join(f"#{k} = :{k}" for k in ended),
                    "ConditionExpression": "#state = :open",  # ends once
                    "ExpressionAttributeNames": {f"#{k}": k for k in ended},
                    "ExpressionAttributeValues": to_item({":open": "open", **{f":{k}": v for k, v in ended.items()}}),
                }
            }
        )
        found[sk] = {**hold, **ended}
        return _Outcome.applied(value), items

    # ---- transaction items --------------------------------------------------------------------

    def _account_update(
        self, pk: str, work: _Work, now: float, *, combiner: str | None = None, pass_ms: int = 0
    ) -> dict[str, Any]:
        """The account's new balance, seq and holds, guarded by what was read (invariant 2: a write
        only lands if nobody changed the ledger or the holds since); for a combiner, also by its
        lease, which the update extends."""
        base = work.base
        values: dict[str, Any] = {":balance": work.balance, ":seq": work.seq, ":now": iso_utc(now)}
        if base.exists:
            condition = "seq = :expected_seq"
            values[":expected_seq"] = base.seq
        else:  # no ledger yet (the item may exist already, holding only a Stripe customer id)
            condition = "attribute_not_exists(seq)"
        if base.holds_rev:
            condition += " AND holds_rev = :expected_holds_rev"
            values[":expected_holds_rev"] = base.holds_rev
        else:
            condition += " AND attribute_not_exists(holds_rev)"
        # A decision made against a spend limit the user has changed since is made again. Only the
        # limit, and only for decisions that used it (charges, reserves): a settings change never
        # delays a purchase, a clawback, a capture or a release. The threshold an entry carries is
        # the one read with it; a change of it applies to the entries decided after it.
        if work.limit_used:
            if base.spend_limit is None:
                condition += " AND attribute_not_exists(monthly_spend_limit)"
            else:
                condition += " AND monthly_spend_limit = :expected_limit"
                values[":expected_limit"] = base.spend_limit
        update = "SET balance = :balance, seq = :seq, updated_at = :now, created_at = if_not_exists(created_at, :now)"
        if work.spent_changed:
            update += ", spent = :spent, spend_month = :month"
            values.update({":spent": work.spent, ":month": work.month})
        if work.holds_changed:
            update += ", holds = :holds, holds_rev = :holds_rev"
            values[":holds"] = {hold_id: {"a": a, "u": u} for hold_id, (a, u) in work.holds.items()}
            values[":holds_rev"] = base.holds_rev + 1
        if combiner is not None:
            condition = f"({condition}) AND combiner = :me"
            # extended from now (the pass has run this long already), for as long as passes take
            update += ", combiner_until = :until, combiner_pass_ms = :pass_ms"
            until = int(self.clock() * 1000) + _lease_ms(pass_ms)
            values.update({":me": combiner, ":until": until, ":pass_ms": pass_ms})
        return {
            "Update": {
                "TableName": self.table,
                "Key": to_item({"pk": pk, "sk": keys.ACCOUNT}),
                "UpdateExpression": update,
                "ConditionExpression": condition,
                "ExpressionAttributeValues": to_item(values),
            }
        }

    def _idempotency_put(
        self,
        pk: str,
        idempotency: Idempotency,
        fields: Mapping[str, Any],
        now: float,
        *,
        ttl_seconds: int = IDEMPOTENCY_TTL_SECONDS,
    ) -> dict[str, Any]:
        """An Idempotency-Key's marker: written once while it lives (TTL deletes lazily, so an
        expired marker counts as gone)."""
        return {
            "Put": {
                "TableName": self.table,
                "Item": to_item(
                    {
                        "pk": pk,
                        "sk": keys.idem_sk(idempotency.key),
                        "created_at": iso_utc(now),
                        "expires_at": int(now) + ttl_seconds,
                        **fields,
                    }
                ),
                "ConditionExpression": "attribute_not_exists(pk) OR expires_at < :now_epoch",
                "ExpressionAttributeValues": to_item({":now_epoch": int(now)}),
            }
        }

    def _entry_items(
        self,
        pk: str,
        seq: int,
        balance: int,
        entry: Entry,
        idempotency: Idempotency | None,
        ref_fingerprint: str,
        now: float,
        tx_id: str,
        threshold: int,
    ) -> list[dict[str, Any]]:
        """The ledger entry `TX#<seq>` and its reference and idempotency markers. The entry carries
        the low-balance threshold in force, so its events are derived from the entry alone."""
        now_iso = iso_utc(now)
        result = {"transaction_id": tx_id, "amount": entry.amount, "balance_after": balance, "seq": seq}
        items: list[dict[str, Any]] = [
            {
                "Put": {
                    "TableName": self.table,
                    "Item": to_item(
                        {
                            "pk": pk,
                            "sk": keys.tx_sk(seq),
                            "id": tx_id,
                            "seq": seq,
                            "amount": entry.amount,
                            "balance_after": balance,
                            "type": entry.type,
                            "description": entry.description,
                            "reference_id": entry.reference_id,
                            "reference_scope": "system" if entry.system_reference else None,
                            "monetary_amount": entry.monetary_amount,
                            "currency": entry.currency,
                            "reason": entry.reason,
                            "created_at": now_iso,
                            "low_balance_threshold": threshold,
                        }
                    ),
                    # Invariant 2: a ledger slot is written once.
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            },
        ]
        if entry.reference_id is not None:
            items.append(
                {
                    "Put": {
                        "TableName": self.table,
                        "Item": to_item(
                            {
                                "pk": pk,
                                "sk": _ref_sk(entry),
                                "fingerprint": ref_fingerprint,
                                "created_at": now_iso,
                                **result,
                            }
                        ),
                        # Invariant 4: a reference is used once per user, for ever.
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                }
            )
        if idempotency is not None:
            items.append(
                self._idempotency_put(pk, idempotency, {"fingerprint": idempotency.fingerprint, **result}, now)
            )
        return items

    # ---- group commit (contended balances; docs/adr/0004-group-commit.md) ------------------------

    def _queue(self, pk: str, op: _Op, deadline: float, seen: _Snapshot | None) -> Mapping[str, Any]:
        """Queue a change as an intent item and wait until the combiner (possibly us) decides it.

        One writer at a time holds the combiner lease (on the account item) and decides queued
        changes in batches, one transaction per batch; the others poll their intent and take the
        lease over if it lapses (a combiner that died). Exactly one of "decided" and "cancelled"
        wins: a decision is written onto the intent only if it has none and still exists, and a
        waiter that gives up cancels by deleting it only if it has no decision.
        """
        now = self.clock()
        remaining = max(deadline - time.monotonic(), 0.0)
        intent = _Intent(
            id=str(uuid.uuid4()),
            created_ms=int(now * 1000),
            # a crashed waiter's intent is not applied long after its client was answered: past
            # this moment a combiner refuses it instead
            apply_before_ms=int((now + remaining + INTENT_GRACE_SECONDS) * 1000),
            op=op,
        )
        try:
            self._put_intent(pk, intent, int(now))
            outcome = self._wait(pk, intent, deadline, seen)
        except Exception as failure:
            # Whatever went wrong, the client must not be told "not charged" while the intent can
            # still be applied: withdraw it, or answer the decision it already has.
            try:
                outcome = self._withdraw(pk, intent)
            except Exception:  # noqa: BLE001 - the withdrawal failed too: the outcome is unknown
                raise TemporarilyUnavailable(
                    "The outcome of this change is unknown. Retry with the same Idempotency-Key: "
                    "the change may have landed."
                ) from failure
            if outcome is None:  # withdrawn: nothing was written, nothing will be
                if isinstance(failure, CreditsError):
                    raise
                raise TemporarilyUnavailable(
                    "The credits store failed; nothing was written. Please retry."
                ) from failure
        if outcome is None:
            raise TemporarilyUnavailable("The balance is busy; nothing was written. Please retry.")
        return self._done(pk, intent, outcome)

    def _put_intent(self, pk: str, intent: _Intent, now: int) -> None:
        # Conditioned on absence: a resend after a lost answer must not wipe a decision already
        # written onto the intent (which would let it be decided, and applied, again).
        with contextlib.suppress(self.client.exceptions.ConditionalCheckFailedException):
            self._write(
                "put_item",
                {
                    "TableName": self.table,
                    "Item": to_item(intent.item(pk, now)),
                    "ConditionExpression": "attribute_not_exists(pk)",
                },
            )

    def _wait(self, pk: str, intent: _Intent, deadline: float, seen: _Snapshot | None) -> _Outcome | None:
        """Our intent's decision, serving as the combiner when the lease is free; None when we
        withdrew it at our deadline."""
        try_lease = seen is None or not seen.combining(int(self.clock() * 1000))
        pass_ms = seen.combiner_pass_ms if seen is not None else 0
        polls = 0
        while True:
            if try_lease and self._take_lease(pk, intent.id, _lease_ms(pass_ms)):
                outcome = self._serve(pk, intent, deadline)
                if outcome is not None:
                    return outcome
            if time.monotonic() > deadline:
                return self._withdraw(pk, intent)
            pause = max(POLL_SECONDS * min(1 + polls, 2), min(pass_ms / 2000, MAX_POLL_SECONDS))
            self.sleep(random.uniform(0.5, 1.5) * pause)
            polls += 1
            # our intent and the account in one read: a decision, or whether the combiner is gone
            found = self._get_many(pk, [intent.sk, keys.ACCOUNT])
            outcome = _decision_of(found.get(intent.sk))
            if outcome is not None:
                return outcome
            account = _snapshot(found.get(keys.ACCOUNT))
            try_lease, pass_ms = not account.combining(int(self.clock() * 1000)), account.combiner_pass_ms

    def _done(self, pk: str, intent: _Intent, outcome: _Outcome) -> Mapping[str, Any]:
        """Take our decided intent off the queue (its decision is in our hands now) and answer it."""
        with contextlib.suppress(ClientError, ConnectionError, HTTPClientError):
            self.client.delete_item(TableName=self.table, Key=to_item({"pk": pk, "sk": intent.sk}))
        return outcome.result()

    def _take_lease(self, pk: str, owner: str, lease_ms: int = LEASE_MS) -> bool:
        """Become the combiner if nobody is (or the last one's lease lapsed), for `lease_ms`."""
        now_ms = int(self.clock() * 1000)
        try:
            self._write(
                "update_item",
                {
                    "TableName": self.table,
                    "Key": to_item({"pk": pk, "sk": keys.ACCOUNT}),
                    "UpdateExpression": "SET combiner = :me, combiner_until = :until",
                    # ours already counts: a resend after a lost answer finds the lease ours
                    "ConditionExpression": (
                        "attribute_not_exists(combiner_until) OR combiner_until < :now OR combiner = :me"
                    ),
                    "ExpressionAttributeValues": to_item({":me": owner, ":until": now_ms + lease_ms, ":now": now_ms}),
                },
            )
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in (
                "ConditionalCheckFailedException",
                "TransactionConflictException",
            ):
                return False  # held by a live combiner (maybe committing right now)
            raise

    def _renew_lease(self, pk: str, owner: str, lease_ms: int) -> bool:
        """Extend our lease before a transaction that would otherwise outlast it (a slow pass);
        False when it is no longer ours."""
        try:
            self._write(
                "update_item",
                {
                    "TableName": self.table,
                    "Key": to_item({"pk": pk, "sk": keys.ACCOUNT}),
                    "UpdateExpression": "SET combiner_until = :until",
                    "ConditionExpression": "combiner = :me",
                    "ExpressionAttributeValues": to_item({":me": owner, ":until": int(self.clock() * 1000) + lease_ms}),
                },
                conflicts=True,
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def _release_lease(self, pk: str, owner: str) -> None:
        """Best effort: a lease we fail to release lapses by itself within LEASE_MS."""
        with contextlib.suppress(ClientError, CreditsError):
            self._write(
                "update_item",
                {
                    "TableName": self.table,
                    "Key": to_item({"pk": pk, "sk": keys.ACCOUNT}),
                    "UpdateExpression": "REMOVE combiner, combiner_until",
                    "ConditionExpression": "combiner = :me",
                    "ExpressionAttributeValues": to_item({":me": owner}),
                },
            )

    def _serve(self, pk: str, mine: _Intent, deadline: float) -> _Outcome | None:
        """Hold the lease and decide queued changes, pass after pass, until ours is decided and the
        queue is empty, or we served a little longer than our own change needed, or our deadline
        came. Our outcome, or None if it is not decided (the lease lapsed, or the deadline)."""
        outcome: _Outcome | None = None
        stop_at = deadline
        last_pass_ms = 0
        while True:
            started = time.monotonic()
            try:
                snapshot, intents = self._queued(pk)
                if snapshot.combiner != mine.id or not snapshot.combining(int(self.clock() * 1000)):
                    return outcome  # the lease lapsed and was taken over
                if outcome is None and all(i.id != mine.id for i in intents):
                    # decided before we held the lease (or beyond this read): read it and serve briefly
                    outcome = self._outcome(pk, mine)
                    if outcome is not None:
                        stop_at = min(stop_at, time.monotonic() + SERVE_AFTER_OWN_SECONDS)
                if not intents or time.monotonic() > stop_at:
                    self._release_lease(pk, mine.id)
                    return outcome
                decided = self._combine(pk, snapshot, intents, mine.id, last_pass_ms, started)
                last_pass_ms = int((time.monotonic() - started) * 1000)
                if decided is not None and mine.id in decided:
                    outcome = decided[mine.id]
                    stop_at = min(stop_at, time.monotonic() + SERVE_AFTER_OWN_SECONDS)
                # decided is None: a direct write moved the account; re-read and decide again
            except Exception:
                if outcome is None:
                    raise
                # Serving others failed after ours was decided: ours stands (the lease lapses).
                return outcome

    def _combine(
        self,
        pk: str,
        snapshot: _Snapshot,
        intents: list[_Intent],
        owner: str,
        last_pass_ms: int = 0,
        started: float | None = None,
    ) -> dict[str, _Outcome] | None:
        """One combiner pass: decide as many queued intents as fit in ONE transaction, in order, by
        the same rules as a direct change (`_apply`), and commit them together, guarded by the
        account's seq and holds and by our lease (which it extends).
        The decisions, by intent id; None when the account moved first."""
        found = self._markers(pk, intents)
        now = self.clock()
        now_ms = int(now * 1000)
        # How long a pass takes: the whole last one; on a first pass, twice its reads so far (its
        # transaction is still to come), or half the last combiner's (so an estimate decays).
        so_far = 0 if started is None else int((time.monotonic() - started) * 1000)
        pass_ms = last_pass_ms or max(2 * so_far, snapshot.combiner_pass_ms // 2)
        if snapshot.combiner_until - now_ms < max(pass_ms, LEASE_MS // 2) and not self._renew_lease(
            pk, owner, _lease_ms(pass_ms)
        ):
            return None  # our reads took most of the lease, and a waiter took it over meanwhile
        work = _Work.of(snapshot, now)
        items: list[dict[str, Any]] = []
        touched: set[str] = set()
        decided: dict[str, _Outcome] = {}
        for intent in intents:
            op = intent.op
            if 1 + len(items) + 1 + op.size() > MAX_TRANSACTION_ITEMS:
                break
            # One transaction may not touch an item twice: a change that shares a marker or a hold
            # with one already in this pass waits for the next pass (where it may replay it).
            writes = op.writes(found)
            if writes & touched:
                break
            touched |= writes
            new: list[dict[str, Any]] = []
            if intent.apply_before_ms < now_ms:
                outcome = _Outcome.refused(TemporarilyUnavailable("The balance is busy; nothing was written."))
            else:
                outcome, new = self._apply(pk, op, work, found, now)
            items += new
            decided[intent.id] = outcome
            items.append(self._decision(pk, intent, outcome))
        guard = self._account_update(pk, work, now, combiner=owner, pass_ms=pass_ms)
        request = {"TransactItems": [guard, *items], "ClientRequestToken": str(uuid.uuid4())}
        if self._commit(request, first_extra=len(request["TransactItems"])):
            return decided
        return None

    def _decision(self, pk: str, intent: _Intent, outcome: _Outcome) -> dict[str, Any]:
        """Write the decision onto the intent, only if it is still queued and undecided (a waiter
        that cancelled has deleted it: the pass fails, and is decided again without it)."""
        return {
            "Update": {
                "TableName": self.table,
                "Key": to_item({"pk": pk, "sk": intent.sk}),
                "UpdateExpression": "SET outcome = :outcome",
                "ConditionExpression": "attribute_exists(pk) AND attribute_not_exists(outcome)",
                "ExpressionAttributeValues": to_item({":outcome": outcome.attributes()}),
            }
        }

    def _queued(self, pk: str) -> tuple[_Snapshot, list[_Intent]]:
        """The account and the first queued intents, oldest first, in ONE consistent Query (intents
        sort right after the account item: `ACCOUNT`, `ACCOUNT#INTENT#<ms>#<id>`)."""
        items = self._with_retries(
            lambda: self.client.query(
                TableName=self.table,
                KeyConditionExpression="pk = :pk AND begins_with(sk, :account)",
                FilterExpression="attribute_not_exists(outcome)",  # decided ones wait for their waiter
                ExpressionAttributeValues=to_item({":pk": pk, ":account": keys.ACCOUNT}),
                ConsistentRead=True,
            ).get("Items", [])
        )
        account = None
        intents: list[_Intent] = []
        for raw in items:
            item = from_item(raw)
            if item["sk"] == keys.ACCOUNT:
                account = item
            elif len(intents) < MAX_INTENTS_PER_PASS:
                intents.append(_Intent.from_item(item))
        return _snapshot(account), intents

    def _markers(self, pk: str, intents: list[_Intent]) -> dict[str, dict[str, Any]]:
        """The reference and idempotency markers the intents name (one consistent batch read)."""
        sks = {sk for i in intents for sk in i.op.sks()}
        return self._live(self._get_many(pk, sorted(sks))) if sks else {}

    def _outcome(self, pk: str, intent: _Intent) -> _Outcome | None:
        """The decision on our intent, or None while it is queued."""
        return _decision_of(self._get_many(pk, [intent.sk]).get(intent.sk))

    def _withdraw(self, pk: str, intent: _Intent) -> _Outcome | None:
        """Give up waiting: delete the intent if it is still undecided (None: nothing was or will be
        written), else return its decision. A decision and a withdrawal exclude each other."""
        try:
            self._write(
                "delete_item",
                {
                    "TableName": self.table,
                    "Key": to_item({"pk": pk, "sk": intent.sk}),
                    "ConditionExpression": "attribute_not_exists(outcome)",
                },
                conflicts=True,  # a combiner's transaction on it in flight: ask again once it is done
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            outcome = self._outcome(pk, intent)
            assert outcome is not None  # the condition failed: it has a decision
            return outcome
        return None

    def _remember_refusal(self, put: dict[str, Any]) -> bool:
        """Write a refusal's marker under its Idempotency-Key (`_apply`); False when a marker of the
        key appeared since the decision (the change landed, or another answer): decide again."""
        try:
            self._write("put_item", put["Put"])
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def _write(self, operation: str, params: dict[str, Any], *, conflicts: bool = False) -> None:
        """A single-item write, retried on throttling and unknown outcomes (every one we make is
        conditional, so a resend of one that landed fails its condition, which the caller judges).
        With `conflicts`, a clash with a transaction in flight on the item is retried too."""
        extra = {"TransactionConflictException"} if conflicts else set()
        self._with_retries(lambda: getattr(self.client, operation)(**params), RETRIABLE_CODES | extra)

    def _with_retries(self, call: Callable[[], T], retriable: frozenset[str] | set[str] = RETRIABLE_CODES) -> T:
        """One DynamoDB call, retried with backoff on throttling and on unknown outcomes."""
        for attempt in range(self.max_attempts):
            try:
                return call()
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code", "") not in retriable:
                    raise
            except (ConnectionError, HTTPClientError):
                pass
            self._backoff(attempt)
        raise TemporarilyUnavailable("The credits store is unavailable. Please retry.")

    def _commit(self, request: dict[str, Any], *, first_extra: int) -> bool:
        """True when the transaction landed; False when a condition or conflict asks for a re-read."""
        for attempt in range(self.max_attempts):
            try:
                self.client.transact_write_items(**request)
                return True
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code == "TransactionCanceledException":
                    codes = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
                    if "ConditionalCheckFailed" in codes[:first_extra] or "TransactionConflict" in codes:
                        return False  # a lost race (seq moved, marker appeared): re-read and decide again
                    if "ConditionalCheckFailed" in codes[first_extra:]:
                        raise ExtraConditionFailed(codes.index("ConditionalCheckFailed") - first_extra) from exc
                    if any(c in RETRIABLE_CODES | {"ThrottlingError"} for c in codes):
                        self._backoff(attempt)
                        continue  # nothing was written; resend as is
                    return False
                if code not in RETRIABLE_CODES:
                    raise
            except (ConnectionError, HTTPClientError):
                pass  # the outcome is unknown: resending with the same token is safe
            self._backoff(attempt)
        raise TemporarilyUnavailable(
            "The credits store is unavailable. Retry with the same Idempotency-Key: the change may have landed."
        )

    def _backoff(self, attempt: int) -> None:
        """Full jitter: a random wait up to base * 2^attempt, capped."""
        self.sleep(random.uniform(0, min(self.max_delay, self.base_delay * (2**attempt))))

    # ---- reads --------------------------------------------------------------------------------

    def _live(self, found: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Read items without idempotency markers past their expiry (TTL deletes lazily: they are gone)."""
        now = int(self.clock())
        return {
            sk: item for sk, item in found.items() if not (sk.startswith(keys.IDEM) and item.get("expires_at", 0) < now)
        }

    def _batch_get(self, pk: str, sks: list[str]) -> dict[str, dict[str, Any]]:
        """Several items of one user in one consistent BatchGetItem (unprocessed keys asked again).

        Not a snapshot across items, and it need not be: every decision made from it is written
        under conditions (the account's seq, markers' absence) that fail if it went stale. Unlike
        TransactGetItems, it never collides with a transaction in flight.
        """
        found: dict[str, dict[str, Any]] = {}
        keys_ = [to_item({"pk": pk, "sk": sk}) for sk in dict.fromkeys(sks)]
        for start in range(0, len(keys_), 100):  # BatchGetItem reads at most 100 keys
            found.update(self._batch_get_chunk(keys_[start : start + 100]))
        return found

    def _batch_get_chunk(self, wanted: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        while wanted:
            request: dict[str, Any] = {self.table: {"Keys": wanted, "ConsistentRead": True}}
            response = self.client.batch_get_item(RequestItems=request)
            for raw in response.get("Responses", {}).get(self.table, []):
                item = from_item(raw)
                found[item["sk"]] = item
            unprocessed: dict[str, Any] = response.get("UnprocessedKeys") or {}
            wanted = unprocessed.get(self.table, {}).get("Keys", [])
            if wanted:
                self._backoff(0)
        return found

    def _get_many(self, pk: str, sks: list[str]) -> dict[str, dict[str, Any]]:
        """Items of one user by sort key, consistently: one GetItem, or one batch read for several."""
        if len(sks) > 1:
            return self._with_retries(lambda: self._batch_get(pk, sks))
        response = self._with_retries(
            lambda: self.client.get_item(
                TableName=self.table, Key=to_item({"pk": pk, "sk": sks[0]}), ConsistentRead=True
            )
        )
        return {item["sk"]: item for item in map(from_item, [response["Item"]] if "Item" in response else [])}

    def balance(self, user_id: str) -> int:
        """The current balance; 0 for a user who never had credits."""
        return self.account(user_id).balance

    def account(self, user_id: str) -> AccountView:
        """The balance, what is available of it and what open holds take (one consistent read)."""
        validate_token(user_id, "userId")
        snapshot = _snapshot(self._get_many(keys.user_pk(user_id), [keys.ACCOUNT]).get(keys.ACCOUNT))
        now_ms = int(self.clock() * 1000)
        held = snapshot.held(now_ms)
        open_ = {hold_id: until for hold_id, (_, until) in snapshot.holds.items() if until > now_ms}
        return AccountView(snapshot.balance, snapshot.balance - held, held, open_)

    def settings(self, user_id: str) -> Settings:
        """The user's low-balance threshold and monthly limit, and the month's usage so far."""
        validate_token(user_id, "userId")
        snapshot = _snapshot(self._get_many(keys.user_pk(user_id), [keys.ACCOUNT]).get(keys.ACCOUNT))
        now = self.clock()
        spent = _Work.of(snapshot, now).spent + snapshot.held(int(now * 1000))
        threshold = snapshot.threshold if snapshot.threshold is not None else self.default_threshold
        return Settings(threshold, snapshot.spend_limit, spent)

    def update_settings(
        self,
        user_id: str,
        *,
        low_balance_threshold: int | None = None,
        monthly_spend_limit: int | Unchanged | None = UNCHANGED,
    ) -> Settings:
        """Change a user's settings (None threshold: keep it; `monthly_spend_limit=None`: no limit).
        They live on the account item but never touch its balance, ledger or holds. At most
        `settings_rate` changes per user in a UTC minute: TooManyRequests past that."""
        validate_token(user_id, "userId")
        now = self.clock()
        sets = ["updated_at = :now", "created_at = if_not_exists(created_at, :now)"]
        removes: list[str] = []
        values: dict[str, Any] = {":now": iso_utc(now)}
        if low_balance_threshold is not None:
            if type(low_balance_threshold) is not int or not 0 <= low_balance_threshold <= MAX_AMOUNT:
                raise ValidationError("lowBalanceThreshold must be an integer from 0 to 1000000000.")
            sets.append("low_balance_threshold = :threshold")
            values[":threshold"] = low_balance_threshold
        if monthly_spend_limit is None:
            removes.append("monthly_spend_limit")
        elif not isinstance(monthly_spend_limit, Unchanged):
            validate_amount(monthly_spend_limit, "monthlySpendLimit")
            sets.append("monthly_spend_limit = :limit")
            values[":limit"] = monthly_spend_limit
        removed = " REMOVE " + ", ".join(removes) if removes else ""
        window = int(now) // 60  # the UTC minute, counted on the account item with the change
        values.update({":window": window, ":one": 1, ":max": self.settings_rate})
        counted = [
            # another change in this minute, while under the rate
            ("settings_changes = settings_changes + :one", "settings_window = :window AND settings_changes < :max"),
            # the first change of a minute
            (
                "settings_window = :window, settings_changes = :one",
                "attribute_not_exists(settings_window) OR settings_window <> :window",
            ),
        ]
        for count, condition in counted:
            try:
                self._write(
                    "update_item",
                    {
                        "TableName": self.table,
                        "Key": to_item({"pk": keys.user_pk(user_id), "sk": keys.ACCOUNT}),
                        "UpdateExpression": "SET " + ", ".join([*sets, count]) + removed,
                        "ConditionExpression": condition,
                        # each expression names only the values it uses, as DynamoDB requires
                        "ExpressionAttributeValues": to_item(
                            {k: v for k, v in values.items() if k != ":max" or k in condition}
                        ),
                    },
                    conflicts=True,  # a transaction in flight on the account: ask again once it is done
                )
                return self.settings(user_id)
            except self.client.exceptions.ConditionalCheckFailedException:
                continue
        raise TooManyRequests(
            f"Settings can be changed at most {self.settings_rate} times a minute; retry shortly.",
            retry_after=60 - int(now) % 60,
        )

    def holds(self, user_id: str) -> list[Hold]:
        """The open, unexpired holds, soonest to expire first."""
        view = self.account(user_id)
        if not view.open_holds:
            return []
        found = self._get_many(keys.user_pk(user_id), [keys.hold_sk(h) for h in view.open_holds])
        now_ms = int(self.clock() * 1000)
        holds = [_hold_from_item(item, now_ms) for item in found.values()]
        return sorted((h for h in holds if h.state == "open"), key=lambda h: (h.expires_at_ms, h.hold_id))

    def hold(self, user_id: str, hold_id: str) -> Hold | None:
        """One hold as it stands (state "expired" once past its end while still open), or None."""
        validate_token(user_id, "userId")
        validate_token(hold_id, "holdId")
        item = self._get_many(keys.user_pk(user_id), [keys.hold_sk(hold_id)]).get(keys.hold_sk(hold_id))
        return None if item is None else _hold_from_item(item, int(self.clock() * 1000))

    def transactions(
        self, user_id: str, *, limit: int = 20, cursor: str | None = None
    ) -> tuple[list[Transaction], str | None]:
        """One page of the ledger, newest first, and the cursor of the next page (None at the end)."""
        validate_token(user_id, "userId")
        if type(limit) is not int or not 1 <= limit <= 100:
            raise ValidationError("limit must be an integer from 1 to 100.", [{"field": "limit"}])
        pk = keys.user_pk(user_id)
        query: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :tx)",
            "ExpressionAttributeValues": to_item({":pk": pk, ":tx": keys.TX}),
            "ScanIndexForward": False,
            "Limit": limit,
        }
        if cursor:
            query["ExclusiveStartKey"] = to_item({"pk": pk, "sk": keys.tx_sk(_decode_cursor(cursor))})
        response = self.client.query(**query)
        entries = [_transaction_from_item(from_item(i)) for i in response.get("Items", [])]
        next_cursor = None
        if "LastEvaluatedKey" in response and entries and entries[-1].seq > 1:
            next_cursor = _encode_cursor(entries[-1].seq)
        return entries, next_cursor

    def history(self, user_id: str) -> list[Transaction]:
        """The whole ledger, oldest first (for audits and tests)."""
        pk = keys.user_pk(user_id)
        out: list[Transaction] = []
        start: dict[str, Any] | None = None
        while True:
            query: dict[str, Any] = {
                "TableName": self.table,
                "KeyConditionExpression": "pk = :pk AND begins_with(sk, :tx)",
                "ExpressionAttributeValues": to_item({":pk": pk, ":tx": keys.TX}),
                "ConsistentRead": True,
            }
            if start:
                query["ExclusiveStartKey"] = start
            response = self.client.query(**query)
            out.extend(_transaction_from_item(from_item(i)) for i in response.get("Items", []))
            start = response.get("LastEvaluatedKey")
            if not start:
                return out

    def audit(self, user_id: str) -> Audit:
        """Check invariant 2 for one user: seq 1..N gapless, running balance, account matches."""
        account = self._get_many(keys.user_pk(user_id), [keys.ACCOUNT]).get(keys.ACCOUNT) or {}
        entries = self.history(user_id)
        report = Audit(user_id, account.get("balance", 0), account.get("seq", 0), len(entries))
        running = 0
        for expected_seq, tx in enumerate(entries, start=1):
            if tx.seq != expected_seq:
                report.problems.append(f"seq {tx.seq} where {expected_seq} was expected")
            if tx.balance_after != running + tx.amount:
                report.problems.append(f"seq {tx.seq}: balance_after {tx.balance_after} != {running} + {tx.amount}")
            if type(tx.amount) is not int:
                report.problems.append(f"seq {tx.seq}: amount is not an integer")
            running = tx.balance_after
        if report.balance != running:
            report.problems.append(f"account balance {report.balance} != last balance_after {running}")
        if report.seq != len(entries):
            report.problems.append(f"account seq {report.seq} != {len(entries)} entries")
        return report


def _posted_from_marker(marker: Mapping[str, Any]) -> Posted:
    return Posted(
        transaction_id=marker["transaction_id"],
        amount=marker["amount"],
        balance=marker["balance_after"],
        seq=marker["seq"],
        replayed=True,
    )


def _hold_from_item(item: Mapping[str, Any], now_ms: int) -> Hold:
    state = item["state"]
    if state == "open" and item["until_ms"] <= now_ms:
        state = "expired"
    result = _plain(item.get("result") or {})
    return Hold(
        hold_id=item["hold_id"],
        amount=item["amount"],
        state=state,
        expires_at_ms=item["until_ms"],
        description=item.get("description", ""),
        captured=item.get("captured"),
        transaction_id=result.get("transaction_id"),
        response=item.get("response"),
        balance_after=result.get("balance"),
    )


def _entry_fingerprint(entry: Entry) -> str:
    """What a reference marker remembers of its change, to tell a replay from a different change."""
    return fingerprint(
        {
            "amount": entry.amount,
            "type": entry.type,
            "monetaryAmount": entry.monetary_amount,
            "currency": entry.currency,
        }
    )


def _transaction_from_item(item: Mapping[str, Any]) -> Transaction:
    return Transaction(
        id=item["id"],
        seq=item["seq"],
        amount=item["amount"],
        balance_after=item["balance_after"],
        type=item["type"],
        description=item.get("description", ""),
        reference_id=item.get("reference_id"),
        monetary_amount=item.get("monetary_amount"),
        currency=item.get("currency"),
        created_at=item["created_at"],
        system_reference=item.get("reference_scope") == "system",
        reason=item.get("reason"),
    )


def _encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"seq": seq}).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        seq = json.loads(base64.urlsafe_b64decode(padded.encode()))["seq"]
    except (binascii.Error, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise ValidationError("cursor is not valid.", [{"field": "cursor"}]) from exc
    if type(seq) is not int or not 1 <= seq < 10**keys.SEQ_DIGITS:
        raise ValidationError("cursor is not valid.", [{"field": "cursor"}])
    return seq
