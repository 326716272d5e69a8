"""The credits table in memory, with DynamoDB's semantics as `credits.store.Store` promises them.

`MemoryStore` is the table itself: no yields, no faults. The simulator's containers reach it only
through `ActorStore` (`tests/simulation/scheduler.py`), which makes every call a yield point and
injects the faults; the invariant checks read it directly.

What it keeps of DynamoDB:
- items keyed (pk, sk) holding plain Python values (numbers are `int`; a `float` anywhere is refused
  as boto3's serializer refuses it); a `Put` leaves out None values; an `Update` creates an absent
  item (`set`, `set_if_absent` = if_not_exists, `add` = attr + n from 0, `increment` = attr + n on
  an attribute that must exist, `remove`); conditions by `Cond.holds`;
- `transact`: all or nothing; more than 100 items, two items on one key, an empty transaction or an
  item over 400 KB is a `StoreError` (DynamoDB's ValidationException); conditions are checked when
  the transaction is prepared and its items are applied when it commits, and while it is in flight
  another transaction naming one of its items is cancelled ("conflict"), and a single write to one
  of them conflicts too (`ConditionFailed`, or retried by a `conflicts=True` caller) — DynamoDB's
  TransactionConflict; a resend of a token that committed within 10 minutes (virtual time) succeeds
  without applying again, with other items it is a `StoreError` (IdempotentParameterMismatch);
- `query`: sorted by sk (code points: UTF-8 byte order), `begins_with` prefix, forward or backward,
  `after` (ExclusiveStartKey), `limit` counted BEFORE the `without` filter, at most 1 MB read per
  page, `last_sk` whenever the page stopped at the limit or at 1 MB;
- TTL: an item whose `expires_at` (Unix seconds) passed is deleted lazily, some random time later
  (DynamoDB deletes within days), never while a transaction holds it.

Every mutation is reported to the observers (the invariant checks) with its items before and after,
in the order of the writes.
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from credits.store import (
    Cond,
    ConditionFailed,
    Delete,
    Key,
    Page,
    Put,
    StoreError,
    TransactionCancelled,
    Write,
)

MAX_TRANSACTION_ITEMS = 100
MAX_ITEM_BYTES = 400 * 1024
PAGE_BYTES = 1024 * 1024
TOKEN_SECONDS = 600.0

Item = dict[str, Any]


# ---- values -----------------------------------------------------------------------------------


_SCALARS = frozenset({str, int, bool, type(None), bytes})


def copy_value(value: Any) -> Any:
    """A copy as DynamoDB would hand it back: maps and lists fresh, scalars shared (immutable)."""
    t = type(value)
    if t is dict:
        return {k: v if type(v) in _SCALARS else copy_value(v) for k, v in value.items()}
    if t is list:
        return [v if type(v) in _SCALARS else copy_value(v) for v in value]
    return value


def copy_item(item: Mapping[str, Any]) -> Item:
    return {k: v if type(v) in _SCALARS else copy_value(v) for k, v in item.items()}


def check_value(value: Any, where: str) -> None:
    """What boto3's serializer accepts: str, int, bool, None, bytes, non-empty sets, maps, lists."""
    t = type(value)
    if t in _SCALARS:
        return
    if t is dict:
        for k, v in value.items():
            if type(k) is not str:
                raise StoreError(f"{where}: a map key must be a string")
            if type(v) not in _SCALARS:
                check_value(v, where)
        return
    if t is list:
        for v in value:
            if type(v) not in _SCALARS:
                check_value(v, where)
        return
    if t is float:
        raise StoreError(f"{where}: Float types are not supported. Use Decimal types instead.")
    if t in (set, frozenset):
        if not value:
            raise StoreError(f"{where}: an empty set is not a valid value")
        return
    raise StoreError(f"{where}: unsupported type {t.__name__}")


def size_of(value: Any) -> int:
    """DynamoDB's size of a value, roughly: strings by their UTF-8 length, numbers by their digits,
    maps and lists by their text (names, values and punctuation: DynamoDB counts a few bytes per
    element)."""
    t = type(value)
    if t is str:
        return len(value) if value.isascii() else len(value.encode("utf-8"))
    if t is int:
        return len(str(value)) // 2 + 2
    if t is bool or value is None:
        return 1
    return len(repr(value))


def item_size(item: Mapping[str, Any]) -> int:
    """Names and values: roughly what DynamoDB counts."""
    return sum(len(k) + size_of(v) for k, v in item.items())


# ---- the table --------------------------------------------------------------------------------


class Partition:
    """One partition's items, and their sort keys in order: in buckets by their first two
    characters (`TX`, `HO`, `ID`, `AC`, ...), so that a new marker is not inserted in front of a
    user's whole ledger, and a ledger entry is appended at the end of its own bucket."""

    __slots__ = ("buckets", "items", "sizes")

    def __init__(self) -> None:
        self.items: dict[str, Item] = {}
        self.buckets: dict[str, list[str]] = {}  # sk[:2] -> sort keys, sorted
        self.sizes: dict[str, int] = {}

    def sorted_keys(self, prefix: str) -> list[str]:
        """The sorted sort keys that may start with `prefix` (a superset: callers filter)."""
        if len(prefix) >= 2:
            return self.buckets.get(prefix[:2], [])
        return [sk for b in sorted(self.buckets) if b.startswith(prefix) for sk in self.buckets[b]]

    def add(self, sk: str) -> None:
        bucket = self.buckets.get(sk[:2])
        if bucket is None:
            self.buckets[sk[:2]] = [sk]
        elif not bucket or sk > bucket[-1]:
            bucket.append(sk)
        else:
            bisect.insort(bucket, sk)

    def discard(self, sk: str) -> None:
        bucket = self.buckets[sk[:2]]
        del bucket[bisect.bisect_left(bucket, sk)]


@dataclass(slots=True)
class Change:
    """One item a mutation touched: as it was, and as it is (None: absent)."""

    key: Key
    before: Item | None
    after: Item | None
    op: Write | None  # None for a TTL deletion


@dataclass
class Prepared:
    """A transaction whose conditions held: what it will write, and the items it holds meanwhile."""

    ops: tuple[Write, ...]
    token: str
    results: list[tuple[Key, Item | None, int]]  # each item as it will be, and its size


Observer = Callable[[str, list[Change]], None]


class MemoryStore:
    """The table. `clock` is the true (virtual) time: TTL and the memory of tokens use it."""

    def __init__(self, clock: Callable[[], float], ttl_delay: Callable[[], float] | None = None) -> None:
        self.clock = clock
        self.ttl_delay = ttl_delay or (lambda: 0.0)
        self.partitions: dict[str, Partition] = {}
        self.inflight: dict[Key, Prepared] = {}
        self.tokens: dict[str, tuple[tuple[Write, ...], float]] = {}
        self._token_order: deque[tuple[float, str]] = deque()
        self._ttl: list[tuple[float, int, str, str, int]] = []  # (delete at, n, pk, sk, expires_at)
        self._ttl_n = 0
        self.observers: list[Observer] = []
        self.writes = 0
        self.transactions = 0
        self.ttl_deleted = 0
        self.largest_transaction = 0

    # ---- raw item access (the checks) ---------------------------------------------------------

    def item(self, key: Key) -> Item | None:
        """The stored item itself (not a copy): for the checks, which never change it."""
        part = self.partitions.get(key[0])
        return None if part is None else part.items.get(key[1])

    def partition(self, pk: str) -> Partition | None:
        return self.partitions.get(pk)

    def items_with_prefix(self, pk: str, prefix: str) -> Iterator[Item]:
        part = self.partitions.get(pk)
        if part is None:
            return
        sks = part.sorted_keys(prefix)
        i = bisect.bisect_left(sks, prefix)
        while i < len(sks) and sks[i].startswith(prefix):
            yield part.items[sks[i]]
            i += 1

    # ---- reads --------------------------------------------------------------------------------

    def get(self, key: Key) -> Item | None:
        item = self.item(key)
        return None if item is None else copy_item(item)

    def get_many(self, pk: str, sks: Sequence[str]) -> dict[str, Item]:
        part = self.partitions.get(pk)
        if part is None:
            return {}
        found: dict[str, Item] = {}
        for sk in sks:
            item = part.items.get(sk)
            if item is not None and sk not in found:
                found[sk] = copy_item(item)
        return found

    def query(
        self,
        pk: str,
        prefix: str,
        *,
        forward: bool = True,
        limit: int | None = None,
        after: str | None = None,
        without: str | None = None,
    ) -> Page:
        if limit is not None and limit < 1:
            raise StoreError("Limit must be at least 1")
        part = self.partitions.get(pk)
        if part is None:
            return Page([], None)
        sks = part.sorted_keys(prefix)
        lo = bisect.bisect_left(sks, prefix)
        hi = bisect.bisect_left(sks, prefix + _LAST, lo)  # every key that starts with the prefix
        if forward:
            start = lo if after is None else max(lo, bisect.bisect_right(sks, after))
            order: Iterator[int] = iter(range(start, hi))
        else:
            stop = hi if after is None else min(hi, bisect.bisect_left(sks, after))
            order = iter(range(stop - 1, lo - 1, -1))
        items: list[Item] = []
        size = 0
        last: str | None = None
        for read, i in enumerate(order, start=1):
            sk = sks[i]
            item = part.items[sk]
            size += part.sizes[sk]
            if without is None or without not in item:
                items.append(copy_item(item))
            if (limit is not None and read >= limit) or size >= PAGE_BYTES:
                last = sk
                break
        return Page(items, last)

    def query_index(self, index: str, attr: str, value: str) -> Iterator[Item]:
        """A sparse index: every item carrying `attr` = `value` (by pk, then sk)."""
        for pk in sorted(self.partitions):
            part = self.partitions[pk]
            for sk in part.sorted_keys(""):
                item = part.items[sk]
                if item.get(attr) == value:
                    yield copy_item(item)

    def scan(self, where: Cond, attributes: Sequence[str] = ()) -> Iterator[Item]:
        for pk in sorted(self.partitions):
            part = self.partitions[pk]
            for sk in part.sorted_keys(""):
                item = part.items[sk]
                if where.holds(item):
                    out = copy_item(item)
                    yield {a: out[a] for a in attributes if a in out} if attributes else out

    # ---- writes -------------------------------------------------------------------------------

    def write(self, op: Write, *, conflicts: bool = False, once: bool = False) -> None:
        """One conditional write (a caller that waits out transactions in flight does so before;
        nothing here is retried, `once` or not)."""
        key = _key_of(op)
        if key in self.inflight:
            raise ConditionFailed("TransactionConflict")
        before = self.item(key)
        if op.condition is not None and not op.condition.holds(before):
            raise ConditionFailed(type(op).__name__)
        after, size = _apply(op, key, before, self._size(key))
        self._install(key, after, size)
        self.writes += 1
        self._notify("write", [Change(key, before, after, op)])

    def prepare(self, ops: Sequence[Write], token: str) -> Prepared | None:
        """Validate a transaction and check its conditions; None when `token` already committed it
        (a resend: nothing to do). TransactionCancelled when a condition failed or an item is held
        by a transaction in flight."""
        if not ops:
            raise StoreError("a transaction needs at least one item")
        if len(ops) > MAX_TRANSACTION_ITEMS:
            raise StoreError(f"a transaction holds at most {MAX_TRANSACTION_ITEMS} items, not {len(ops)}")
        if not token or len(token) > 36:
            raise StoreError("ClientRequestToken must be 1 to 36 characters")
        ops = tuple(ops)
        known = self.tokens.get(token)
        if known is not None and self.clock() - known[1] <= TOKEN_SECONDS:
            if known[0] != ops:
                raise StoreError("IdempotentParameterMismatch: the token was used for another transaction")
            return None
        keys = [_key_of(op) for op in ops]
        if len(set(keys)) != len(keys):
            raise StoreError("Transaction request cannot include multiple operations on one item")
        reasons = ["None"] * len(ops)
        failed = False
        results: list[tuple[Key, Item | None, int]] = []
        for i, (op, key) in enumerate(zip(ops, keys, strict=True)):
            if key in self.inflight:
                reasons[i] = "conflict"
                failed = True
                continue
            before = self.item(key)
            if op.condition is not None and not op.condition.holds(before):
                reasons[i] = "condition"
                failed = True
                continue
            results.append((key, *_apply(op, key, before, self._size(key))))
        if failed:
            raise TransactionCancelled([r if r != "None" else "" for r in reasons])
        prepared = Prepared(ops, token, results)
        for key in keys:
            self.inflight[key] = prepared
        return prepared

    def commit(self, prepared: Prepared) -> None:
        """Apply a prepared transaction (its items were held: nothing changed them meanwhile)."""
        changes: list[Change] = []
        for (key, after, size), op in zip(prepared.results, prepared.ops, strict=True):
            del self.inflight[key]
            before = self.item(key)
            self._install(key, after, size)
            changes.append(Change(key, before, after, op))
        now = self.clock()
        self.tokens[prepared.token] = (prepared.ops, now)
        self._token_order.append((now, prepared.token))
        while self._token_order and now - self._token_order[0][0] > TOKEN_SECONDS:
            _, old = self._token_order.popleft()
            known = self.tokens.get(old)
            if known is not None and now - known[1] > TOKEN_SECONDS:
                del self.tokens[old]
        self.transactions += 1
        self.largest_transaction = max(self.largest_transaction, len(changes))
        self._notify("transact", changes)

    def abandon(self, prepared: Prepared) -> None:
        """Forget a prepared transaction that will never commit (the run is stopping)."""
        for key, _, _ in prepared.results:
            if self.inflight.get(key) is prepared:
                del self.inflight[key]

    def transact(self, ops: Sequence[Write], *, token: str) -> None:
        """Prepare and commit at once (no transaction in flight meanwhile): for setup and checks."""
        prepared = self.prepare(ops, token)
        if prepared is not None:
            self.commit(prepared)

    # ---- TTL ----------------------------------------------------------------------------------

    def sweep_ttl(self) -> None:
        """Delete the expired items whose (random) time to be deleted has come."""
        now = self.clock()
        heap = self._ttl
        while heap and heap[0][0] <= now:
            _, _, pk, sk, expires_at = heapq.heappop(heap)
            key = (pk, sk)
            item = self.item(key)
            if item is None or item.get("expires_at") != expires_at or expires_at >= now:
                continue
            if key in self.inflight:
                self._schedule_ttl(pk, sk, expires_at, now + 1.0)
                continue
            self._install(key, None, 0)
            self.ttl_deleted += 1
            self._notify("ttl", [Change(key, item, None, None)])

    def _schedule_ttl(self, pk: str, sk: str, expires_at: int, at: float) -> None:
        self._ttl_n += 1
        heapq.heappush(self._ttl, (at, self._ttl_n, pk, sk, expires_at))

    # ---- internals ----------------------------------------------------------------------------

    def _size(self, key: Key) -> int:
        part = self.partitions.get(key[0])
        return 0 if part is None else part.sizes.get(key[1], 0)

    def _install(self, key: Key, item: Item | None, size: int) -> None:
        pk, sk = key
        part = self.partitions.get(pk)
        if item is None:
            if part is not None and sk in part.items:
                del part.items[sk]
                del part.sizes[sk]
                part.discard(sk)
            return
        if part is None:
            part = self.partitions[pk] = Partition()
        if sk not in part.items:
            part.add(sk)
        part.items[sk] = item
        part.sizes[sk] = size
        expires_at = item.get("expires_at")
        if type(expires_at) is int:
            self._schedule_ttl(pk, sk, expires_at, expires_at + self.ttl_delay())

    def _notify(self, kind: str, changes: list[Change]) -> None:
        for observer in self.observers:
            observer(kind, changes)


def _key_of(op: Write) -> Key:
    if isinstance(op, Put):
        item = op.item
        pk, sk = item.get("pk"), item.get("sk")
        if type(pk) is not str or type(sk) is not str or not pk or not sk:
            raise StoreError("a Put needs non-empty string pk and sk")
        return (pk, sk)
    key = op.key
    if type(key) is not tuple or len(key) != 2 or not all(type(k) is str and k for k in key):
        raise StoreError(f"malformed key {key!r}")
    return key


_MISSING = object()
_LAST = "\U0010ffff"  # sorts after any character a key holds


def _value(v: Any, key: Key, name: str) -> Any:
    """A value to store: checked as boto3 would serialize it, and copied if it is a map or list."""
    if type(v) in _SCALARS:
        return v
    try:
        check_value(v, "")
    except StoreError as exc:
        raise StoreError(f"{key} {name}{exc}") from None
    return copy_value(v)


def _apply(op: Write, key: Key, before: Item | None, before_size: int = 0) -> tuple[Item | None, int]:
    """The item once `op` is applied to `before` (a fresh dict; `before` is left alone), and its
    size; an item over 400 KB is a StoreError."""
    if isinstance(op, Delete):
        return None, 0
    if isinstance(op, Put):
        item = {k: _value(v, key, k) for k, v in op.item.items() if v is not None}
        return item, _checked_size(key, item_size(item))
    sets, once, increments, removes, adds = op.set, op.set_if_absent, op.increment, op.remove, op.add
    if not (sets or once or increments or removes or adds):
        raise StoreError("an Update needs at least one action")
    if once or increments or removes or adds:
        named = [*sets, *once, *increments, *removes, *adds]
        if len(set(named)) != len(named):
            raise StoreError(f"Update {key}: two actions on one attribute")
    for part in (sets, once, increments, removes, adds):
        if "pk" in part or "sk" in part:
            raise StoreError(f"Update {key}: the key cannot be updated")
    # a shallow copy: a stored value is never changed in place (only replaced), so versions may
    # share them; reads hand out deep copies
    if before is not None:
        item = dict(before)
        size = before_size
    else:
        item = {"pk": key[0], "sk": key[1]}
        size = item_size(item)
    for k, v in sets.items():
        if v is None:  # boto3 leaves the value out: the expression names a value that is not given
            raise StoreError(f"Update {key}: no value for {k}")
        v = _value(v, key, k)
        old = item.get(k, _MISSING)
        size += size_of(v) - (size_of(old) if old is not _MISSING else -len(k))
        item[k] = v
    for k, v in once.items():
        if v is None:
            raise StoreError(f"Update {key}: no value for {k}")
        if k not in item:
            v = _value(v, key, k)
            size += len(k) + size_of(v)
            item[k] = v
    for k, n in increments.items():
        old = item.get(k)
        if type(n) is not int or type(old) is not int:
            raise StoreError(f"Update {key}: {k} + {n} on an attribute that is not a number")
        item[k] = old + n
        size += size_of(old + n) - size_of(old)
    for k, n in adds.items():
        had = k in item
        old = item.get(k, 0)
        if type(n) is not int or type(old) is not int:
            raise StoreError(f"Update {key}: {k} + {n} on an attribute that is not a number")
        item[k] = old + n
        size += size_of(old + n) - (size_of(old) if had else -len(k))
    for k in removes:
        if k in item:
            size -= len(k) + size_of(item.pop(k))
    return item, _checked_size(key, size)


def _checked_size(key: Key, size: int) -> int:
    if size > MAX_ITEM_BYTES:
        raise StoreError(f"Item size of {key} ({size} bytes) has exceeded the maximum allowed size")
    return size
