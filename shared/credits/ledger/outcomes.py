"""What a decision says and what it writes: the `Outcome` (a result, or a refusal by its stable error
code, stored as such on a decided intent or a refused key's marker) and the effects the rules return
(`rules.decide`), which `codec.writes` turns into the store's writes. No I/O."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from msgspec import Struct, field

from credits.errors import CreditsError, from_code
from credits.ledger.values import Entry, Idempotency

_REFUSAL_DETAILS = ("required", "balance", "available", "limit", "spent", "month", "message", "errors")


class Outcome(Struct, frozen=True):
    """What was decided for a change: applied (a result, maybe a replay), or refused: an error code."""

    value: Mapping[str, Any] | None = None
    error: str | None = None  # the refusal's stable code (credits.errors)
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def applied(cls, value: Mapping[str, Any]) -> Outcome:
        return cls(value=value)

    @classmethod
    def refused(cls, exc: CreditsError) -> Outcome:
        return cls(error=exc.code, details={**exc.details(), "message": str(exc)})

    def result(self) -> Mapping[str, Any]:
        if self.value is not None:
            return self.value
        raise from_code(str(self.error), self.details)

    def attributes(self) -> dict[str, Any]:
        """As stored: on a decided intent, and on a refused key's marker."""
        if self.value is not None:
            return dict(self.value)
        details = {k: v for k, v in self.details.items() if k in _REFUSAL_DETAILS}
        return {"error": self.error, **details}

    @classmethod
    def from_attributes(cls, stored: Mapping[str, Any]) -> Outcome:
        if "error" in stored:
            return cls(error=str(stored["error"]), details=dict(stored))
        return cls(value=dict(stored))


class EntryPosted(Struct, frozen=True):
    """Ledger entry `seq` (invariant 2) and its reference and idempotency markers (invariant 4)."""

    entry: Entry
    seq: int
    balance_after: int
    transaction_id: str
    threshold: int  # the low-balance threshold in force: the entry's events are derived from it alone
    idempotency: Idempotency | None
    ref_fingerprint: str
    # what the entry did to the lots (docs/adr/0010-credit-lots.md): the lots a debit drew from, the
    # lot a credit went to and the debt it repaid first, and the credits of a refund or a dispute
    # that had expired already (not taken back again), or that a won dispute found expired
    draws: Mapping[str, int] = field(default_factory=dict)
    lot: str | None = None
    repaid: Mapping[str, int] = field(default_factory=dict)
    expired_part: int = 0
    moved: Mapping[str, list[int]] = field(default_factory=dict)  # the same by bucket, for the finance report
    lot_price: tuple[int, int] | None = None  # a credit: what its credits were bought for (money, credits)
    gives_back: bool = False  # a won dispute (even one whose credits had all expired: amount 0)
    month: str = ""  # the month it counts in: its date's, never before the previous entry's

    def result(self) -> dict[str, Any]:
        return {
            "transaction_id": self.transaction_id,
            "amount": self.entry.amount,
            "balance_after": self.balance_after,
            "seq": self.seq,
        }


class KeyRemembered(Struct, frozen=True):
    """An Idempotency-Key's marker: a hold's result (kept a long time) or a refusal (kept a minute)."""

    idempotency: Idempotency
    fields: Mapping[str, Any]
    ttl_seconds: int


class HoldOpened(Struct, frozen=True):
    hold_id: str
    amount: int
    until_ms: int
    description: str
    idempotency_key: str | None
    action: str | None = None  # the priced action it reserves for: its capture's usage entry names it


class HoldClosed(Struct, frozen=True):
    """A hold's end, once (invariant 7): captured or released, with its result."""

    hold_id: str
    ended: Mapping[str, Any]


class KeyFreed(Struct, frozen=True):
    """A released hold charged nothing: its Idempotency-Key may be used again."""

    key: str


class LotWarned(Struct, frozen=True):
    """A lot's credits expire soon: announced once (the `Credits Expiring Soon` event)."""

    lot_id: str
    remaining: int
    expires_ms: int
    label: str


class DebtRepaid(Struct, frozen=True):
    """Credits a hold gave back repaid a debt (an earlier clawback's), with no entry of their own:
    noted once (`REPAID#<note>`) for the finance report, which counts them as clawed back."""

    note: str  # unique on the account: the holds revision of the write (12 digits), one note per write
    after_seq: int  # the ledger entry it came after (the ledger replays it in that place)
    repaid: Mapping[str, int]  # lot id -> credits
    moved: Mapping[str, list[int]]  # bucket -> [0, credits repaid, value change]
    month: str  # the month it counts in (as an entry written now would)


class TopUpStarted(Struct, frozen=True):
    """A decision spent the account below its auto top-up threshold: top-up `number` starts (its
    item `TOPUP#<number>`, written once; the account marks it pending in the same transaction)."""

    number: int
    topup_id: str
    package_id: str
    threshold: int
    available: int  # after the decision


Effect = EntryPosted | KeyRemembered | HoldOpened | HoldClosed | KeyFreed | LotWarned | DebtRepaid | TopUpStarted
