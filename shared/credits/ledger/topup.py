"""Auto top-up, the ledger's part: when to start one, exactly once per crossing. No I/O, no clock.

A user who turned auto top-up on (`AutoTopUp`: a threshold, a package, at most `max_per_month` a
UTC month) gets one top-up started by the decision that spends `available` below the threshold: a
charge or a hold (a capture never lowers `available`: its hold did; and not a refund's clawback, an
expiry or an operator's debit: those never charge a card). The decision marks it pending on the
account in the same transaction (`TopUpState.pending`, id `topup:<user>:<n>`, `n` counting the
user's top-ups) and writes the item `TOPUP#<n>` for the payment to start from. While one is pending no other starts, so
racing charges (directly or in a combiner pass, each decided against the account as the last one
left it) start one between them.

No new one starts for an hour after a failure (`BACKOFF_MS`), none after `MAX_FAILURES` failures in a
row (`suspended`, until a new card is saved or the user turns it on again), none past `max_per_month`
started in the month, and nothing turns it on by itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from msgspec import Struct

MAX_FAILURES = 3  # in a row: then auto top-up is suspended
BACKOFF_MS = 3_600_000  # after a failure, no new attempt for an hour
MAX_PER_MONTH = 31
STRIPE_KEY_MAX = 255


class AutoTopUp(Struct, frozen=True):
    """The user's settings: below `threshold` credits available, buy `package_id`, at most
    `max_per_month` times a UTC month."""

    enabled: bool
    threshold: int
    package_id: str
    max_per_month: int

    def stored(self) -> dict[str, Any]:
        return {"e": self.enabled, "t": self.threshold, "p": self.package_id, "m": self.max_per_month}

    @classmethod
    def read(cls, fields: Mapping[str, Any] | None) -> AutoTopUp | None:
        if not fields:
            return None
        return cls(bool(fields["e"]), int(fields["t"]), str(fields["p"]), int(fields["m"]))


class TopUpState(Struct):
    """Where the user's top-ups stand, on the account item (`topup_*` attributes)."""

    count: int = 0  # top-ups ever started: the next one is number count + 1
    pending: str | None = None  # the id of the one in flight
    month: str | None = None  # the UTC month `started` counts
    started: int = 0
    failures: int = 0  # in a row
    retry_after_ms: int = 0
    suspended: str | None = None  # why it stopped (the last failure's code), until cleared

    def started_in(self, month: str) -> int:
        return self.started if self.month == month else 0


def topup_id(user_id: str, number: int) -> str:
    return f"topup:{user_id}:{number}"


def stripe_key(user_id: str, number: int) -> str:
    """The idempotency key sent to Stripe for top-up `number`: safe in an HTTP header and short,
    whatever the user id (1..255 bytes of printable UTF-8) is: its SHA-256, not the id itself."""
    digest = hashlib.sha256(user_id.encode()).hexdigest()
    return f"topup-{digest}-{number}"


def starts(settings: AutoTopUp | None, state: TopUpState, before: int, after: int, month: str, now_ms: int) -> bool:
    """Whether a decision that took `available` from `before` to `after` starts a top-up."""
    if settings is None or not settings.enabled or state.suspended is not None or state.pending is not None:
        return False
    if not after < settings.threshold or not after < before:
        return False  # not below the threshold, or not spent by this decision
    if now_ms < state.retry_after_ms:
        return False  # backing off after a failure
    return state.started_in(month) < settings.max_per_month


def start(state: TopUpState, user_id: str, month: str) -> str:
    """Mark the next top-up pending (counted in `month`); its id."""
    state.started = state.started_in(month) + 1
    state.month = month
    state.count += 1
    state.pending = topup_id(user_id, state.count)
    return state.pending
