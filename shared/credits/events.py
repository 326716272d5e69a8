"""Events (DESIGN.md section 11): what a ledger entry, or a month's first spend-limit refusal, announces.

Derived from the stream record's new item alone (an entry's amount, balance_after, type and the
low-balance threshold written with it), so the result never depends on the order or the timing of
processing, and a redelivered record gives events with the same `eventId`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from credits import keys
from credits.ledger import from_item


class EventBridgeClient(Protocol):
    """The one call of boto3's `events` client the publisher makes."""

    def put_events(self, *, Entries: Any) -> Any: ...


SOURCE = "credits"
PUT_EVENTS_MAX = 10  # entries per PutEvents call


@dataclass(frozen=True)
class Event:
    detail_type: str
    detail: Mapping[str, Any]  # with eventId and userId


class PublishFailed(Exception):
    """EventBridge did not take every event of a record: the record is retried."""


def _event_id(pk: str, sk: str, kind: str) -> str:
    """The same id on every delivery of the same fact, so consumers drop duplicates."""
    return hashlib.sha256(f"{pk}\n{sk}\n{kind}".encode()).hexdigest()[:32]


def events_of(keys_: Mapping[str, Any], new_image: Mapping[str, Any], default_threshold: int) -> list[Event]:
    """The events of one stream record (`Keys` and `NewImage` in DynamoDB JSON); [] for anything else."""
    key = from_item(keys_)
    pk, sk = str(key["pk"]), str(key["sk"])
    if not pk.startswith(keys.USER):
        return []
    user = pk[len(keys.USER) :]
    item = from_item(new_image)

    def event(kind: str, **detail: Any) -> Event:
        return Event(kind, {"eventId": _event_id(pk, sk, kind), "userId": user, **detail})

    if sk.startswith(keys.LIMIT):
        return [event("Spend Limit Reached", limit=item["limit"], spent=item["spent"], month=item["month"])]
    if not sk.startswith(keys.TX):
        return []
    amount, balance, kind, tx = item["amount"], item["balance_after"], item["type"], item["id"]
    before = balance - amount  # before a user's first entry, the balance counts as 0
    threshold = item.get("low_balance_threshold", default_threshold)
    found: list[Event] = []
    if kind == "purchase":
        found.append(
            event(
                "Credits Purchased",
                transactionId=tx,
                credits=amount,
                balance=balance,
                monetaryAmount=item.get("monetary_amount"),
                currency=item.get("currency"),
            )
        )
    if kind in ("refund", "dispute") and amount < 0:
        found.append(event("Credits Clawed Back", transactionId=tx, credits=-amount, reason=kind, balance=balance))
    if threshold > 0 and before >= threshold > balance:
        found.append(event("Balance Low", balance=balance, threshold=threshold, transactionId=tx))
    if before >= 0 > balance:
        found.append(event("Balance Negative", balance=balance, transactionId=tx))
    return found


class Publisher:
    """Puts events on the bus; the EventBridge client is injected."""

    def __init__(self, client: EventBridgeClient, bus_name: str) -> None:
        self.client = client
        self.bus = bus_name

    def publish(self, events: list[Event]) -> None:
        """Every event, or PublishFailed (a retry puts all of them again, with the same eventIds)."""
        for start in range(0, len(events), PUT_EVENTS_MAX):
            chunk = events[start : start + PUT_EVENTS_MAX]
            response = self.client.put_events(
                Entries=[
                    {
                        "Source": SOURCE,
                        "DetailType": e.detail_type,
                        "Detail": json.dumps(e.detail, separators=(",", ":")),
                        "EventBusName": self.bus,
                    }
                    for e in chunk
                ]
            )
            failed = response.get("FailedEntryCount", 0)
            if failed:
                codes = sorted({str(x.get("ErrorCode")) for x in response.get("Entries", []) if x.get("ErrorCode")})
                raise PublishFailed(f"{failed} of {len(chunk)} events were not put ({', '.join(codes)})")
