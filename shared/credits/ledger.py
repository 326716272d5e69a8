"""The credit ledger: every balance change, and the invariants that keep money right.

INVARIANTS (DESIGN.md section 4), kept by `Ledger.post` and checked by `Ledger.audit`:

1. All or nothing: the account update, its ledger entry `TX#<seq>` and its `REF#` / `IDEM#`
   markers are ONE TransactWriteItems. No balance change without its entry, nor the reverse.
2. Gapless ledger: entries carry seq 1..N; balance_after[n] = balance_after[n-1] + amount[n];
   the account holds balance_after[N] and seq N. The write is conditioned on the seq just read,
   so a concurrent writer makes it fail, and the loser re-reads and retries.
3. No overdraft by usage: a usage charge larger than the balance, or against a negative balance,
   raises InsufficientCredits and writes nothing. Only a clawback may go below zero.
4. Exactly once: a reference id is unique per user (REF# marker); an idempotency key is unique
   per user while its marker lives (IDEM# marker, at least 24 hours). Both are written in the
   same transaction as the change, so a retry, concurrent or after a crash, replays the result.
5. Integer money: amounts are Python ints, validated, stored as DynamoDB numbers.
"""

from __future__ import annotations

import base64
import binascii
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
from typing import TYPE_CHECKING, Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

from credits import keys
from credits.errors import (
    IdempotencyKeyReused,
    InsufficientCredits,
    ReferenceReused,
    TemporarilyUnavailable,
    ValidationError,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

MAX_AMOUNT = 1_000_000_000
MAX_KEY_LENGTH = 255
IDEMPOTENCY_TTL_SECONDS = 48 * 3600  # Stripe keeps keys 24 h; we keep them twice as long.
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

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


class Policy(Enum):
    """How an entry may move the balance."""

    USAGE = "usage"  # a debit that must be covered by a non-negative balance
    CREDIT = "credit"  # a positive amount
    CLAWBACK = "clawback"  # a debit that may take the balance below zero (refund, dispute)


@dataclass(frozen=True)
class Entry:
    """One change to post: a signed amount and what it is."""

    amount: int
    type: str
    description: str
    reference_id: str | None = None
    monetary_amount: int | None = None
    currency: str | None = None


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


def validate_token(value: str, name: str) -> str:
    """A user id, reference id or idempotency key: 1..255 printable characters."""
    if not 0 < len(value) <= MAX_KEY_LENGTH or not value.isprintable():
        raise ValidationError(
            f"{name} must be 1 to {MAX_KEY_LENGTH} printable characters.",
            [{"field": name, "issue": f"must be 1 to {MAX_KEY_LENGTH} printable characters"}],
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
    """A DynamoDB attribute map to Python values, numbers as int."""
    out: dict[str, Any] = {}
    for k, v in item.items():
        value = _deserializer.deserialize(v)
        out[k] = int(value) if isinstance(value, Decimal) else value
    return out


def iso_utc(now: float) -> str:
    """A Unix time as ISO 8601 UTC with milliseconds, as every stored timestamp is written."""
    return datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class _Snapshot:
    exists: bool
    balance: int
    seq: int
    reference: dict[str, Any] | None
    idempotency: dict[str, Any] | None


class Ledger:
    """Posts entries to a user's ledger and reads it back; the DynamoDB client is injected."""

    def __init__(
        self,
        client: DynamoDBClient,
        table_name: str,
        *,
        max_attempts: int = 64,
        time_budget: float = 8.0,
        base_delay: float = 0.004,
        max_delay: float = 0.2,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.table = table_name
        # Bounds sized by tests/integration/test_concurrency.py and `make bench`: 16 writers on one
        # balance in DynamoDB Local needed up to 34 attempts; whichever bound comes first ends the retries.
        self.max_attempts = max_attempts
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
        """Spend credits for usage; InsufficientCredits when the balance does not cover it."""
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
        ref_fingerprint = fingerprint(
            {
                "amount": entry.amount,
                "type": entry.type,
                "monetaryAmount": entry.monetary_amount,
                "currency": entry.currency,
            }
        )
        deadline = time.monotonic() + self.time_budget
        for attempt in range(self.max_attempts):
            if time.monotonic() > deadline:
                break
            snapshot = self._read(user_id, entry.reference_id, idempotency)
            replay = self._replay(snapshot, idempotency, ref_fingerprint)
            if replay is not None:
                return replay
            self._check_policy(snapshot, entry, policy)
            request, posted = self._transaction(user_id, snapshot, entry, idempotency, ref_fingerprint, extra)
            if self._commit(request, first_extra=len(request["TransactItems"]) - len(extra)):
                return posted
            self._backoff(attempt)
        raise TemporarilyUnavailable("The balance is busy; nothing was written. Please retry.")

    def _check_policy(self, snapshot: _Snapshot, entry: Entry, policy: Policy) -> None:
        if policy is Policy.USAGE:
            # Invariant 3: usage never overdraws, and a negative balance blocks all usage.
            if entry.amount >= 0:
                raise ValidationError("A usage charge must be a debit.")
            if snapshot.balance < 0 or snapshot.balance + entry.amount < 0:
                raise InsufficientCredits(required=-entry.amount, balance=snapshot.balance)
        elif policy is Policy.CREDIT and entry.amount <= 0:
            raise ValidationError("A credit must be positive.")
        elif policy is Policy.CLAWBACK and entry.amount >= 0:
            raise ValidationError("A clawback must be a debit.")

    def _replay(self, snapshot: _Snapshot, idempotency: Idempotency | None, ref_fingerprint: str) -> Posted | None:
        if idempotency is not None and snapshot.idempotency is not None:
            if snapshot.idempotency["fingerprint"] != idempotency.fingerprint:
                raise IdempotencyKeyReused("This Idempotency-Key was already used for a different request.")
            return _posted_from_marker(snapshot.idempotency)
        if snapshot.reference is not None:
            if snapshot.reference["fingerprint"] != ref_fingerprint:
                raise ReferenceReused("This referenceId was already used for a different change.")
            return _posted_from_marker(snapshot.reference)
        return None

    def _transaction(
        self,
        user_id: str,
        snapshot: _Snapshot,
        entry: Entry,
        idempotency: Idempotency | None,
        ref_fingerprint: str,
        extra: Sequence[dict[str, Any]],
    ) -> tuple[dict[str, Any], Posted]:
        now = self.clock()
        now_iso = iso_utc(now)
        pk = keys.user_pk(user_id)
        seq = snapshot.seq + 1
        balance = snapshot.balance + entry.amount
        tx_id = str(uuid.uuid4())
        posted = Posted(tx_id, entry.amount, balance, seq)
        result = {"transaction_id": tx_id, "amount": entry.amount, "balance_after": balance, "seq": seq}

        # Invariant 2: the write only lands if nobody posted since we read. Each part named:
        if snapshot.exists:
            account_unchanged = "seq = :expected_seq"
            account_condition = account_unchanged
        else:
            # No ledger yet (the item may exist already, holding only a Stripe customer id).
            account_has_no_ledger = "attribute_not_exists(seq)"
            account_condition = account_has_no_ledger
        values: dict[str, Any] = {":balance": balance, ":seq": seq, ":now": now_iso}
        if snapshot.exists:
            values[":expected_seq"] = snapshot.seq
        items: list[dict[str, Any]] = [
            {
                "Update": {
                    "TableName": self.table,
                    "Key": to_item({"pk": pk, "sk": keys.ACCOUNT}),
                    "UpdateExpression": (
                        "SET balance = :balance, seq = :seq, updated_at = :now, "
                        "created_at = if_not_exists(created_at, :now)"
                    ),
                    "ConditionExpression": account_condition,
                    "ExpressionAttributeValues": to_item(values),
                }
            },
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
                            "monetary_amount": entry.monetary_amount,
                            "currency": entry.currency,
                            "created_at": now_iso,
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
                                "sk": keys.ref_sk(entry.reference_id),
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
            key_unused = "attribute_not_exists(pk)"
            key_expired = "expires_at < :now_epoch"  # TTL deletes lazily; an expired marker is gone
            items.append(
                {
                    "Put": {
                        "TableName": self.table,
                        "Item": to_item(
                            {
                                "pk": pk,
                                "sk": keys.idem_sk(idempotency.key),
                                "fingerprint": idempotency.fingerprint,
                                "created_at": now_iso,
                                "expires_at": int(now) + IDEMPOTENCY_TTL_SECONDS,
                                **result,
                            }
                        ),
                        "ConditionExpression": f"{key_unused} OR {key_expired}",
                        "ExpressionAttributeValues": to_item({":now_epoch": int(now)}),
                    }
                }
            )
        items.extend(extra)
        # The token makes a resend of this very request (lost response, timeout) a no-op for 10 min.
        request = {"TransactItems": items, "ClientRequestToken": tx_id}
        return request, posted

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

    def _read(self, user_id: str, reference_id: str | None, idempotency: Idempotency | None) -> _Snapshot:
        """The account and the markers, in one consistent read (one DynamoDB call)."""
        pk = keys.user_pk(user_id)
        sks = [keys.ACCOUNT]
        if reference_id is not None:
            sks.append(keys.ref_sk(reference_id))
        if idempotency is not None:
            sks.append(keys.idem_sk(idempotency.key))
        found = self._get_many(pk, sks)
        account = found.get(keys.ACCOUNT)
        marker = found.get(keys.idem_sk(idempotency.key)) if idempotency else None
        if marker is not None and marker.get("expires_at", 0) < int(self.clock()):
            marker = None  # expired, awaiting TTL deletion
        has_ledger = account is not None and "seq" in account
        return _Snapshot(
            exists=has_ledger,
            balance=account["balance"] if account and has_ledger else 0,
            seq=account["seq"] if account and has_ledger else 0,
            reference=found.get(keys.ref_sk(reference_id)) if reference_id else None,
            idempotency=marker,
        )

    def _get_many(self, pk: str, sks: list[str]) -> dict[str, dict[str, Any]]:
        for attempt in range(self.max_attempts):
            try:
                if len(sks) == 1:
                    response = self.client.get_item(
                        TableName=self.table, Key=to_item({"pk": pk, "sk": sks[0]}), ConsistentRead=True
                    )
                    items = [response["Item"]] if "Item" in response else []
                else:
                    got = self.client.transact_get_items(
                        TransactItems=[
                            {"Get": {"TableName": self.table, "Key": to_item({"pk": pk, "sk": sk})}} for sk in sks
                        ]
                    )
                    items = [r["Item"] for r in got["Responses"] if r.get("Item")]
                return {item["sk"]: item for item in map(from_item, items)}
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code not in RETRIABLE_CODES | {"TransactionCanceledException"}:
                    raise
            except (ConnectionError, HTTPClientError):
                pass
            self._backoff(attempt)
        raise TemporarilyUnavailable("The credits store is unavailable. Please retry.")

    def balance(self, user_id: str) -> int:
        """The current balance; 0 for a user who never had credits."""
        validate_token(user_id, "userId")
        account = self._get_many(keys.user_pk(user_id), [keys.ACCOUNT]).get(keys.ACCOUNT) or {}
        return int(account.get("balance", 0))

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
    )


def _encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"seq": seq}).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        seq = json.loads(base64.urlsafe_b64decode(padded.encode()))["seq"]
    except (binascii.Error, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise ValidationError("cursor is not valid.", [{"field": "cursor"}]) from exc
    if type(seq) is not int or seq < 1:
        raise ValidationError("cursor is not valid.", [{"field": "cursor"}])
    return seq
