"""The expiry sweep: what idle accounts owe their credit lots, written without anything else happening
to them (docs/adr/0010-credit-lots.md).

A lot's expiry and its "Credits Expiring Soon" announcement are written by the first write to the
account after their time. An account nobody writes to carries the time of its next one (`lots_due`,
Unix ms) and an index shard (`lots_shard`, `LOTS#0`..`LOTS#15`) on its account item: the sparse
index `LotsDueIndex` holds those accounts only, sorted by that time within each shard. Once a day
(functions/expire) each shard is queried, oldest due first, and every account whose time has come
is swept (`Ledger.sweep`) until it owes nothing more (one write takes a bounded number of entries
and announcements: an account still due after a sweep that wrote is swept again); the shard's Query
stops at the first account not yet due.

Safe to run twice, at the same time too: a sweep that finds nothing due writes nothing, and two
sweeps of one account write its entries once (the account's write is guarded by its seq). One
account (or one shard's Query) failing never stops the others: the failures are reported, so the
invocation fails once the rest is done (and is retried; what was swept is out of the index).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from credits import keys
from credits.ledger import MAX_LOTS
from credits.store import Key

# An account's sweeps in a row: each writes at most a few expiration entries and announcements (a
# transaction's worth). Bounded, so a fault can never loop.
MAX_SWEEPS_PER_ACCOUNT = MAX_LOTS + 1
# What tells whether an account is still due, and whether a sweep wrote to it: when it is next due,
# and the revision of its lots and holds (every write that changes the lots moves it).
_PENDING = ("lots_due", "holds_rev")


class DueIndex(Protocol):
    """What the sweep reads of the store (`credits.store.DynamoStore`): a sparse index's partition,
    page after page, in the order of its sort key, and a few attributes of one item."""

    def query_index(self, index: str, attr: str, value: str) -> Iterator[dict[str, Any]]: ...

    def get(self, key: Key, *, attributes: Sequence[str] = ()) -> dict[str, Any] | None: ...


class Sweeper(Protocol):
    """What the sweep asks of the ledger (`credits.ledger.Ledger`)."""

    def sweep(self, user_id: str) -> int: ...


@dataclass(frozen=True)
class Failure:
    """An account whose sweep failed, or a shard whose Query did (`user_id` None), and why."""

    shard: str
    user_id: str | None
    error: str


@dataclass
class SweepReport:
    """What one run did: the accounts swept, the expiration entries written, the failures, and
    whether it stopped before its deadline with shards or accounts left."""

    accounts: int = 0
    expirations: int = 0
    shards: int = 0  # shards whose Query was read to the end (or to the first account not yet due)
    failures: list[Failure] = field(default_factory=list)
    unfinished: bool = False

    @property
    def ok(self) -> bool:
        return not self.failures and not self.unfinished

    def body(self) -> dict[str, Any]:
        return {
            "accounts": self.accounts,
            "expirations": self.expirations,
            "shards": self.shards,
            "failed": len(self.failures),
            "unfinished": self.unfinished,
        }


def shards() -> list[str]:
    """Every partition of the lots-due index."""
    return [f"{keys.LOTS_DUE_PARTITION}{n}" for n in range(keys.LOTS_DUE_SHARDS)]


def due_accounts(store: DueIndex, shard: str, now_ms: int) -> Iterator[tuple[str, int]]:
    """The users of one shard whose accounts are due at `now_ms` and when, soonest first: the Query is
    read page after page and left at the first account not yet due (the index is sorted by `lots_due`)."""
    for item in store.query_index(keys.LOTS_DUE_INDEX, "lots_shard", shard):
        due = item.get("lots_due")
        if not isinstance(due, int) or due > now_ms:
            return
        pk = item.get("pk")
        if item.get("sk") == keys.ACCOUNT and isinstance(pk, str) and pk.startswith(keys.USER) and pk != keys.USER:
            yield pk[len(keys.USER) :], due


def sweep_account(store: DueIndex, ledger: Sweeper, user_id: str, due: int, now_ms: int) -> int:
    """Sweep one account (due at `due`, as the index said) until it owes nothing more at `now_ms`: again
    while it is still due after a sweep that changed it (a write takes a bounded number of entries and
    announcements), until one leaves it as it was. The expiration entries written."""
    key = (keys.user_pk(user_id), keys.ACCOUNT)
    before: tuple[Any, Any] = (due, None)
    written = 0
    for _ in range(MAX_SWEEPS_PER_ACCOUNT):
        written += ledger.sweep(user_id)
        item = store.get(key, attributes=_PENDING) or {}
        after = (item.get("lots_due"), item.get("holds_rev"))
        if not isinstance(after[0], int) or after[0] > now_ms or after == before:
            break
        before = after
    return written


def sweep_due(
    store: DueIndex,
    ledger: Sweeper,
    now_ms: int,
    *,
    go_on: Callable[[], bool] = lambda: True,
    on_failure: Callable[[Failure], None] = lambda _failure: None,
    on_swept: Callable[[str, int], None] = lambda _user, _expired: None,
) -> SweepReport:
    """Sweep every account of every shard due at `now_ms`. `go_on` is asked before each account (False:
    stop, the run is unfinished); `on_failure` hears of each failure as it happens, `on_swept` of
    each account swept (its user id and the expiration entries written)."""
    report = SweepReport()
    for shard in shards():
        try:
            for user_id, due in due_accounts(store, shard, now_ms):
                if not go_on():
                    report.unfinished = True
                    return report
                try:
                    expired = sweep_account(store, ledger, user_id, due, now_ms)
                except Exception as exc:  # noqa: BLE001 - one account's failure never stops the others
                    failure = Failure(shard, user_id, f"{type(exc).__name__}: {exc}")
                    report.failures.append(failure)
                    on_failure(failure)
                    continue
                report.accounts += 1
                report.expirations += expired
                on_swept(user_id, expired)
        except Exception as exc:  # noqa: BLE001 - the shard's Query failed: the other shards go on
            failure = Failure(shard, None, f"{type(exc).__name__}: {exc}")
            report.failures.append(failure)
            on_failure(failure)
            continue
        report.shards += 1
    return report
