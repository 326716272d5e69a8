"""The one DynamoDB adapter: every read and write of the credits table goes through a `Store`.

It owns what every caller needs and none should repeat (docs/design.md section 2):
- the codec between Python values and DynamoDB attribute maps (`to_item`, `from_item`: numbers
  come back as `int`, in nested maps and lists too);
- structured conditions and updates (`eq`, `absent`, `Update(set=...)`), rendered to expressions
  with every attribute name and value as a placeholder, so no name is ever a reserved word problem
  and no caller writes an expression string by hand;
- retries with full-jitter backoff on throttling and on unknown outcomes (a lost answer, a timeout:
  every write we make is conditional or carries a ClientRequestToken, so a resend is safe);
- error translation: after its retries a throttled or unreachable store is the domain's
  `TemporarilyUnavailable` (503, retriable); a failed condition is `ConditionFailed` (single writes)
  or `TransactionCancelled` with a reason per item; any other AWS error is `StoreError`, a bug of
  ours (500). No botocore exception type is named outside this module.

`DynamoStore` talks to DynamoDB; the simulator's in-memory store (tests/simulation) implements the
same interface, with the same condition semantics (`holds`).
"""

from credits.store.dynamodb import AWS_ERRORS, RETRIABLE_CODES, DynamoStore, domain_error, render
from credits.store.interface import (
    NEW,
    Cond,
    ConditionFailed,
    Delete,
    Key,
    Page,
    Put,
    Store,
    StoreError,
    TransactionCancelled,
    Update,
    Write,
    absent,
    eq,
    every,
    exists,
    from_item,
    gt,
    lt,
    ne,
    plain,
    to_item,
)

__all__ = [
    "AWS_ERRORS",
    "NEW",
    "RETRIABLE_CODES",
    "Cond",
    "ConditionFailed",
    "Delete",
    "DynamoStore",
    "Key",
    "Page",
    "Put",
    "Store",
    "StoreError",
    "TransactionCancelled",
    "Update",
    "Write",
    "absent",
    "domain_error",
    "eq",
    "every",
    "exists",
    "from_item",
    "gt",
    "lt",
    "ne",
    "plain",
    "render",
    "to_item",
]
