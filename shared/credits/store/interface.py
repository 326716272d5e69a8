"""The store's interface: values, structured conditions and writes, the errors, the `Store` protocol.

Everything here is plain Python: `credits.store.dynamodb` renders it for DynamoDB, and the
simulator's in-memory table (tests/simulation) evaluates it directly with the same semantics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any, Protocol

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from msgspec import Struct, field

from credits.errors import InternalError

Key = tuple[str, str]  # (pk, sk)
_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


# ---- values -----------------------------------------------------------------------------------


def to_item(values: Mapping[str, Any]) -> dict[str, Any]:
    """Python values to a DynamoDB attribute map (None values are left out)."""
    return {k: _serializer.serialize(v) for k, v in values.items() if v is not None}


def from_item(item: Mapping[str, Any]) -> dict[str, Any]:
    """A DynamoDB attribute map to Python values, numbers as int (in nested maps and lists too)."""
    return {k: plain(_deserializer.deserialize(v)) for k, v in item.items()}


def plain(value: Any) -> Any:
    """Nested DynamoDB values as plain Python: Decimal numbers as int, maps and lists recursively."""
    if isinstance(value, Decimal):
        return int(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


# ---- conditions and writes --------------------------------------------------------------------


class Cond(Struct, frozen=True):
    """A condition on one item: a comparison, `attribute_(not_)exists`, or AND/OR of conditions."""

    op: str  # "=", "<>", "<", "<=", ">", ">=", "exists", "absent", "AND", "OR"
    attr: str = ""
    value: Any = None
    parts: tuple[Cond, ...] = ()

    def __and__(self, other: Cond) -> Cond:
        return Cond("AND", parts=(self, other))

    def __or__(self, other: Cond) -> Cond:
        return Cond("OR", parts=(self, other))

    def holds(self, item: Mapping[str, Any] | None) -> bool:
        """DynamoDB's semantics on plain values: a comparison with a missing attribute is false."""
        if self.op == "AND":
            return all(p.holds(item) for p in self.parts)
        if self.op == "OR":
            return any(p.holds(item) for p in self.parts)
        present = item is not None and self.attr in item
        if self.op == "exists":
            return present
        if self.op == "absent":
            return not present
        if not present or item is None:
            return False
        return _COMPARE[self.op](item[self.attr], self.value)


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: bool(a == b),
    "<>": lambda a, b: bool(a != b),
    "<": lambda a, b: bool(a < b),
    "<=": lambda a, b: bool(a <= b),
    ">": lambda a, b: bool(a > b),
    ">=": lambda a, b: bool(a >= b),
}


def eq(attr: str, value: Any) -> Cond:
    return Cond("=", attr, value)


def ne(attr: str, value: Any) -> Cond:
    return Cond("<>", attr, value)


def lt(attr: str, value: Any) -> Cond:
    return Cond("<", attr, value)


def gt(attr: str, value: Any) -> Cond:
    return Cond(">", attr, value)


def exists(attr: str) -> Cond:
    return Cond("exists", attr)


def absent(attr: str) -> Cond:
    return Cond("absent", attr)


NEW = absent("pk")  # the item does not exist yet: written once


class Put(Struct, frozen=True):
    """Write a whole item (it carries its `pk` and `sk`; None values are left out)."""

    item: Mapping[str, Any]
    condition: Cond | None = None

    @property
    def key(self) -> Key:
        return (str(self.item["pk"]), str(self.item["sk"]))


class Update(Struct, frozen=True):
    """Change some attributes of an item, creating it when absent (as DynamoDB's UpdateItem does)."""

    key: Key
    set: Mapping[str, Any] = field(default_factory=dict)
    set_if_absent: Mapping[str, Any] = field(default_factory=dict)  # if_not_exists(attr, value)
    increment: Mapping[str, int] = field(default_factory=dict)  # attr = attr + n (the attribute must exist)
    remove: tuple[str, ...] = ()
    condition: Cond | None = None
    add: Mapping[str, int] = field(default_factory=dict)  # attr = attr + n, from 0 when absent (a counter)


class Delete(Struct, frozen=True):
    key: Key
    condition: Cond | None = None


Write = Put | Update | Delete


class ConditionFailed(Exception):
    """A single write's condition was false (or, unless retried, a transaction held the item):
    nothing was written."""


class TransactionCancelled(Exception):
    """A transaction wrote nothing: `reasons[i]` is "condition" (item i's condition was false),
    "conflict" (another transaction held item i), another DynamoDB code, or "" for no reason."""

    def __init__(self, reasons: Sequence[str]) -> None:
        super().__init__(f"transaction cancelled: {list(reasons)}")
        self.reasons = list(reasons)

    def condition_failed(self, start: int = 0, stop: int | None = None) -> bool:
        return "condition" in self.reasons[start:stop]

    @property
    def conflict(self) -> bool:
        return "conflict" in self.reasons


class StoreError(InternalError):
    """DynamoDB refused a request for a reason no retry changes (a malformed request): our bug."""


class Page(Struct, frozen=True):
    items: list[dict[str, Any]]
    last_sk: str | None  # where the next page starts (None: this was the last)


class Store(Protocol):
    """What the ledger, payments, packages and checkout need of the table (one per container)."""

    def get_many(self, pk: str, sks: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Items of one partition by sort key, consistently, as plain values, keyed by sk."""
        ...

    def get(self, key: Key) -> dict[str, Any] | None: ...

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
        """One page of a partition's items whose sk starts with `prefix` (consistent read), after
        sort key `after`; `without`: only items lacking that attribute (a filter: a page may hold
        fewer than `limit` items)."""
        ...

    def write(self, op: Write, *, conflicts: bool = False, once: bool = False) -> None:
        """One conditional write; ConditionFailed when its condition is false. With `conflicts`, a
        clash with a transaction in flight on the item is retried too; with `once`, nothing is
        retried (a best-effort clean-up that must never delay an answer)."""
        ...

    def transact(self, ops: Sequence[Write], *, token: str) -> None:
        """All or nothing; TransactionCancelled when a condition failed or another transaction held
        an item. A resend under the same token within minutes is a no-op that succeeds."""
        ...


def every(store: Store, pk: str, prefix: str, *, after: str | None = None) -> Iterator[dict[str, Any]]:
    """A partition's items whose sk starts with `prefix`, after sort key `after`, in sort-key order,
    page after page (consistent reads); stop iterating to stop reading."""
    while True:
        page = store.query(pk, prefix, after=after)
        yield from page.items
        if page.last_sk is None:
            return
        after = page.last_sk
