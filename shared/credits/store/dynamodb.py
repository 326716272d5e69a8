"""The Store on DynamoDB: expressions rendered from structured writes, retries, error translation."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError

from credits.errors import InternalError, TemporarilyUnavailable
from credits.store.interface import (
    Cond,
    ConditionFailed,
    Key,
    Page,
    Put,
    StoreError,
    TransactionCancelled,
    Update,
    Write,
    absent,
    from_item,
    to_item,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

# DynamoDB errors after which the same request, resent (with the same ClientRequestToken), is safe.
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
# A transaction item's cancellation reasons that mean "nothing was written; resend as is".
_RETRIABLE_REASONS = frozenset({"ThrottlingError", "ProvisionedThroughputExceeded", "RequestLimitExceeded"})
# The exception types a caller's own AWS calls may raise (a team's code behind the paywall):
# http.py answers them through `domain_error`.
AWS_ERRORS: tuple[type[Exception], ...] = (ClientError, BotoCoreError)
MAX_BATCH_GET = 100  # BatchGetItem reads at most 100 keys

T = TypeVar("T")

# ---- expressions ------------------------------------------------------------------------------


class _Expression:
    """Placeholders for one request: every attribute name is `#nK`, every value `:vK`."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.values: dict[str, Any] = {}

    def name(self, attr: str) -> str:
        for placeholder, known in self.names.items():
            if known == attr:
                return placeholder
        placeholder = f"#n{len(self.names)}"
        self.names[placeholder] = attr
        return placeholder

    def value(self, value: Any) -> str:
        placeholder = f":v{len(self.values)}"
        self.values[placeholder] = value
        return placeholder

    def condition(self, cond: Cond) -> str:
        if cond.op in ("AND", "OR"):
            return "(" + f" {cond.op} ".join(self.condition(p) for p in cond.parts) + ")"
        if cond.op == "exists":
            return f"attribute_exists({self.name(cond.attr)})"
        if cond.op == "absent":
            return f"attribute_not_exists({self.name(cond.attr)})"
        return f"{self.name(cond.attr)} {cond.op} {self.value(cond.value)}"

    def update(self, op: Update) -> str:
        sets = [f"{self.name(k)} = {self.value(v)}" for k, v in op.set.items()]
        sets += [f"{(n := self.name(k))} = if_not_exists({n}, {self.value(v)})" for k, v in op.set_if_absent.items()]
        sets += [f"{(n := self.name(k))} = {n} + {self.value(v)}" for k, v in op.increment.items()]
        zero = self.value(0) if op.add else ""
        sets += [f"{(n := self.name(k))} = if_not_exists({n}, {zero}) + {self.value(v)}" for k, v in op.add.items()]
        text = "SET " + ", ".join(sets) if sets else ""
        if op.remove:
            text += " REMOVE " + ", ".join(self.name(k) for k in op.remove)
        return text.strip()

    def attach(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.names:
            request["ExpressionAttributeNames"] = dict(self.names)
        if self.values:
            request["ExpressionAttributeValues"] = to_item(self.values)
        return request


def _key(key: Key) -> dict[str, Any]:
    return to_item({"pk": key[0], "sk": key[1]})


def render(op: Write, table: str) -> tuple[str, dict[str, Any]]:
    """A write as the (operation, request) of DynamoDB's API; the request is also a transaction item."""
    expression = _Expression()
    if isinstance(op, Put):
        request: dict[str, Any] = {"TableName": table, "Item": to_item(op.item)}
        kind = "Put"
    elif isinstance(op, Update):
        request = {"TableName": table, "Key": _key(op.key), "UpdateExpression": expression.update(op)}
        kind = "Update"
    else:
        request = {"TableName": table, "Key": _key(op.key)}
        kind = "Delete"
    if op.condition is not None:
        request["ConditionExpression"] = expression.condition(op.condition)
    return kind, expression.attach(request)


# ---- DynamoDB ---------------------------------------------------------------------------------


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def domain_error(exc: Exception) -> InternalError | TemporarilyUnavailable:
    """A botocore failure as the domain sees it: retriable (throttled, unreachable) or our bug (a
    request DynamoDB or botocore itself refuses: a malformed parameter, missing credentials)."""
    if isinstance(exc, ClientError):
        if _code(exc) not in RETRIABLE_CODES:
            return StoreError(f"DynamoDB refused the request: {_code(exc)}")
    elif not isinstance(exc, (ConnectionError, HTTPClientError)):
        return StoreError(f"The AWS client failed: {type(exc).__name__}")
    return TemporarilyUnavailable("A service this request needs is unavailable. Please retry.")


_REASONS = {"ConditionalCheckFailed": "condition", "TransactionConflict": "conflict", "None": ""}


class DynamoStore:
    """The Store on DynamoDB: one table, retries bounded by `max_attempts`, full-jitter backoff."""

    def __init__(
        self,
        client: DynamoDBClient,
        table: str,
        *,
        max_attempts: int = 64,
        base_delay: float = 0.004,
        max_delay: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.client = client
        self.table = table
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.sleep = sleep
        self.rng = rng  # None: the random module's own generator (credits.aws reseeds it after a restore)

    def backoff(self, attempt: int) -> None:
        """Full jitter: a random wait up to base * 2^attempt, capped."""
        self.sleep((self.rng or random).uniform(0, min(self.max_delay, self.base_delay * (2**attempt))))

    def _call(self, call: Callable[[], T], retriable: frozenset[str] = RETRIABLE_CODES, attempts: int = 0) -> T:
        """One DynamoDB call, retried with backoff on throttling and on unknown outcomes."""
        for attempt in range(attempts or self.max_attempts):
            try:
                return call()
            except ClientError as exc:
                if _code(exc) not in retriable:
                    raise
            except (ConnectionError, HTTPClientError):
                pass
            self.backoff(attempt)
        raise TemporarilyUnavailable("The credits store is unavailable. Please retry.")

    def _translated(self, call: Callable[[], T], retriable: frozenset[str] = RETRIABLE_CODES) -> T:
        try:
            return self._call(call, retriable)
        except ClientError as exc:
            raise domain_error(exc) from exc
        except BotoCoreError as exc:  # a client-side failure no retry of ours covers
            raise domain_error(exc) from exc

    # ---- reads

    def get(self, key: Key, *, attributes: Sequence[str] = ()) -> dict[str, Any] | None:
        request: dict[str, Any] = {"TableName": self.table, "Key": _key(key), "ConsistentRead": True}
        if attributes:
            expression = _Expression()
            request["ProjectionExpression"] = ", ".join(expression.name(a) for a in attributes)
            expression.attach(request)
        response = self._translated(lambda: self.client.get_item(**request))
        return from_item(response["Item"]) if "Item" in response else None

    def get_many(self, pk: str, sks: Sequence[str]) -> dict[str, dict[str, Any]]:
        """One GetItem, or consistent BatchGetItems for several (unprocessed keys asked again).

        Not a snapshot across items, and it need not be: every decision made from it is written
        under conditions (the account's seq, markers' absence) that fail if it went stale. Unlike
        TransactGetItems, it never collides with a transaction in flight.
        """
        wanted = list(dict.fromkeys(sks))
        if len(wanted) == 1:
            item = self.get((pk, wanted[0]))
            return {} if item is None else {wanted[0]: item}
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(wanted), MAX_BATCH_GET):
            chunk = [_key((pk, sk)) for sk in wanted[start : start + MAX_BATCH_GET]]
            found.update(self._translated(partial(self._batch_get, chunk)))
        return found

    def _batch_get(self, wanted: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
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
                self.backoff(0)
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
        expression = _Expression()
        request: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": f"{expression.name('pk')} = {expression.value(pk)} AND "
            f"begins_with({expression.name('sk')}, {expression.value(prefix)})",
            "ConsistentRead": True,
            "ScanIndexForward": forward,
        }
        if without is not None:
            request["FilterExpression"] = expression.condition(absent(without))
        if limit is not None:
            request["Limit"] = limit
        if after is not None:
            request["ExclusiveStartKey"] = _key((pk, after))
        response = self._translated(lambda: self.client.query(**expression.attach(request)))
        last = response.get("LastEvaluatedKey")
        return Page([from_item(i) for i in response.get("Items", [])], from_item(last)["sk"] if last else None)

    def query_index(self, index: str, attr: str, value: str) -> Iterator[dict[str, Any]]:
        """Every item of a sparse index partition (`attr` = `value`), page after page."""
        expression = _Expression()
        request: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": index,
            "KeyConditionExpression": f"{expression.name(attr)} = {expression.value(value)}",
        }
        return self._every_page(self.client.query, expression.attach(request), None)

    def scan(
        self, where: Cond, attributes: Sequence[str] = (), *, after: Key | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every item of the table matching `where`, consistently, in the table's order, from just after
        the item `after` (an operator's listing, never a request path)."""
        expression = _Expression()
        request: dict[str, Any] = {
            "TableName": self.table,
            "FilterExpression": expression.condition(where),
            "ConsistentRead": True,
        }
        if attributes:
            request["ProjectionExpression"] = ", ".join(expression.name(a) for a in attributes)
        return self._every_page(self.client.scan, expression.attach(request), _key(after) if after else None)

    def _every_page(
        self, call: Callable[..., Any], request: dict[str, Any], start: dict[str, Any] | None
    ) -> Iterator[dict[str, Any]]:
        """The items of a Query or Scan, page after page, from `start` (an exclusive start key)."""
        while True:
            page = {**request, "ExclusiveStartKey": start} if start else request
            response = self._translated(partial(call, **page))
            yield from (from_item(i) for i in response.get("Items", []))
            start = response.get("LastEvaluatedKey")
            if not start:
                return

    # ---- writes

    def write(self, op: Write, *, conflicts: bool = False, once: bool = False) -> None:
        kind, request = render(op, self.table)
        call: dict[str, Callable[..., Any]] = {
            "Put": self.client.put_item,
            "Update": self.client.update_item,
            "Delete": self.client.delete_item,
        }
        retriable = RETRIABLE_CODES | {"TransactionConflictException"} if conflicts else RETRIABLE_CODES
        try:
            self._call(lambda: call[kind](**request), retriable, 1 if once else 0)
        except ClientError as exc:
            if _code(exc) in ("ConditionalCheckFailedException", "TransactionConflictException"):
                # a transaction in flight on the item (not retried without `conflicts`): the item is
                # changing under us, which a caller judges like a condition that failed
                raise ConditionFailed(kind) from exc
            raise domain_error(exc) from exc
        except BotoCoreError as exc:
            raise domain_error(exc) from exc

    def transact(self, ops: Sequence[Write], *, token: str) -> None:
        items = [dict([render(op, self.table)]) for op in ops]
        for attempt in range(self.max_attempts):
            try:
                self.client.transact_write_items(TransactItems=items, ClientRequestToken=token)  # type: ignore[arg-type]
                return
            except ClientError as exc:
                if _code(exc) == "TransactionCanceledException":
                    codes = [str(r.get("Code", "None")) for r in exc.response.get("CancellationReasons", [])]
                    # a failed condition or a conflict is an answer (re-read and decide again); only a
                    # transaction cancelled for throttling alone is resent as it is
                    raced = any(c in ("ConditionalCheckFailed", "TransactionConflict") for c in codes)
                    if raced or not any(c in _RETRIABLE_REASONS for c in codes):
                        raise TransactionCancelled([_REASONS.get(c, c) for c in codes]) from exc
                elif _code(exc) not in RETRIABLE_CODES:
                    raise domain_error(exc) from exc
            except (ConnectionError, HTTPClientError):
                pass  # the outcome is unknown: resending with the same token is safe
            except BotoCoreError as exc:
                raise domain_error(exc) from exc
            self.backoff(attempt)
        raise TemporarilyUnavailable(
            "The credits store is unavailable. Retry with the same Idempotency-Key: the change may have landed."
        )
