"""Events (docs/design.md section 10): what a ledger entry, or a month's first spend-limit refusal, announces.

Every ledger entry announces what it is, one event by its type (`ENTRY_EVENTS`): `purchase` Credits
Purchased; `usage` Credits Used (unless usage events are switched off: PUBLISH_USAGE_EVENTS); `gift`
and `adjustment` Credits Granted; a `refund` or `dispute` that takes credits Credits Clawed Back, one
that gives them back (a dispute closed in the user's favour: a positive `dispute` entry with the
system reference `settle:<payment>:<step>`) Credits Restored; `expiration` Credits Expired (with the
lot it expired, from the entry's `draws`). Any entry may also announce Balance Low and Balance
Negative (never switched off). A credit lot about to expire is announced once, by its note
(`EXPIRING#<lot>`, written once per lot): Credits Expiring Soon (docs/adr/0010-credit-lots.md). An
auto top-up's end, the one MODIFY of its `TOPUP#<n>` item, is Auto Top-Up Succeeded or Auto Top-Up
Failed (credits.topup_events).

Derived from the stream record's new item alone (an entry's amount, balance_after, type and the
low-balance threshold written with it), so the result never depends on the order or the timing of
processing, and a redelivered record gives events with the same `eventId`.

A stream record is one of three things (`record_events`):

- **events**: an INSERT of a user's ledger entry (`TX#`), spend-limit note (`LIMIT#`) or expiry note
  (`EXPIRING#`), or a MODIFY of a user's top-up (`TOPUP#`), whose fields read as the ledger writes
  them (possibly none, e.g. a charge that crossed nothing);
- **ignored** (None): a well-formed record that carries no event by design and that the stream's
  filter (template.yaml) never delivers: a REMOVE (TTL deletions of notes and holds), a MODIFY of
  any other item, an INSERT of any other item (the account, references, holds, a pending top-up...);
- **unpublishable** (`Unpublishable`, with the reason): anything else. It will read the same way on
  every delivery, so retrying it would only hold back the shard's later records: it is dead-lettered
  (`dead_letter_message`, `DeadLetterQueue`), and the events it should have carried are rebuilt
  from the ledger.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from credits import keys
from credits.ledger import ENTRY_TYPES, iso_ms


class EventBridgeClient(Protocol):
    """The one call of boto3's `events` client the publisher makes."""

    def put_events(self, *, Entries: Any) -> Any: ...


class SQSClient(Protocol):
    """The one call of boto3's `sqs` client the dead-letter queue makes."""

    def send_message(self, *, QueueUrl: str, MessageBody: str) -> Any: ...


SOURCE = "credits"
# The event each ledger entry type announces (a refund or dispute: Clawed Back when it takes credits,
# Restored when it gives them back). Every type of credits.ledger.ENTRY_TYPES has one.
ENTRY_EVENTS: Mapping[str, tuple[str, ...]] = {
    "purchase": ("Credits Purchased",),
    "usage": ("Credits Used",),
    "gift": ("Credits Granted",),
    "adjustment": ("Credits Granted",),
    "refund": ("Credits Clawed Back", "Credits Restored"),
    "dispute": ("Credits Clawed Back", "Credits Restored"),
    "expiration": ("Credits Expired",),
}
USAGE_EVENT = "Credits Used"  # the one event PUBLISH_USAGE_EVENTS=false leaves out
PUT_EVENTS_MAX = 10  # entries per PutEvents call
EVENT_NAMES = frozenset({"INSERT", "MODIFY", "REMOVE"})
EXPIRING_EVENT = "Credits Expiring Soon"  # a lot's note (EXPIRING#<lot>), once per lot
EVENT_ITEMS = (keys.TX, keys.LIMIT, keys.EXPIRING)  # sort key prefixes of the items with events (the filter)
DEAD_LETTER_MAX_BYTES = 256 * 1024  # what every SQS queue takes (new queues take 1 MiB)
_NUMBER_MAX_CHARS = 64  # DynamoDB numbers have at most 38 digits and an exponent of 3


@dataclass(frozen=True)
class Event:
    detail_type: str
    detail: Mapping[str, Any]  # with eventId and userId


class PublishFailed(Exception):
    """EventBridge did not take every event of a record: the record is retried."""


class Unpublishable(ValueError):
    """A stream record that can never become events (the same on every delivery): it is dead-lettered."""


def _event_id(pk: str, sk: str, kind: str) -> str:
    """The same id on every delivery of the same fact, so consumers drop duplicates."""
    return hashlib.sha256(f"{pk}\n{sk}\n{kind}".encode()).hexdigest()[:32]


# ---- reading a record strictly: a field is there with its type, or the record is unpublishable ---------


def _value(image: Mapping[str, Any], name: str, kind: str, where: str) -> Any:
    """The data of attribute `name` of DynamoDB type `kind`, None when absent (or NULL)."""
    attribute = image.get(name)
    if attribute is None:
        return None
    if not isinstance(attribute, Mapping) or len(attribute) != 1:
        raise Unpublishable(f"{where}.{name} is not a DynamoDB attribute value")
    ((found, data),) = attribute.items()
    if found == "NULL" and data is True:
        return None
    if found != kind:
        raise Unpublishable(f"{where}.{name} must be of type {kind}, not {str(found)[:10]}")
    return data


def _string(image: Mapping[str, Any], name: str, where: str, *, required: bool = True) -> str | None:
    data = _value(image, name, "S", where)
    if data is None:
        if required:
            raise Unpublishable(f"{where}.{name} is missing")
        return None
    if not isinstance(data, str) or not data:
        raise Unpublishable(f"{where}.{name} is not a non-empty string")
    return data


def _integer(image: Mapping[str, Any], name: str, where: str, *, required: bool = True) -> int | None:
    data = _value(image, name, "N", where)
    if data is None:
        if required:
            raise Unpublishable(f"{where}.{name} is missing")
        return None
    if not isinstance(data, str) or len(data) > _NUMBER_MAX_CHARS:
        raise Unpublishable(f"{where}.{name} is not a DynamoDB number")
    try:
        number = Decimal(data)
    except InvalidOperation:
        raise Unpublishable(f"{where}.{name} is not a number") from None
    if not number.is_finite() or number.adjusted() > 125 or number != number.to_integral_value():
        raise Unpublishable(f"{where}.{name} is not an integer")  # never rounded into a wrong event
    return int(number)


def _text(image: Mapping[str, Any], name: str, where: str) -> str:
    """A text attribute that may be empty (an entry's description): "" when absent."""
    data = _value(image, name, "S", where)
    if data is None:
        return ""
    if not isinstance(data, str):
        raise Unpublishable(f"{where}.{name} is not a string")
    return data


def sequence_number(record: Any) -> str | None:
    """A record's `SequenceNumber` (what Lambda's partial batch failures name), None if it has none."""
    stream = record.get("dynamodb") if isinstance(record, Mapping) else None
    sequence = stream.get("SequenceNumber") if isinstance(stream, Mapping) else None
    return sequence if isinstance(sequence, str) and sequence.isascii() and sequence.isdigit() else None


def record_events(record: Any, default_threshold: int, *, publish_usage: bool = True) -> list[Event] | None:
    """The events of one stream record as Lambda delivers it; None for a record that carries no event
    by design; Unpublishable (with the reason) for a record that can never be turned into events."""
    if not isinstance(record, Mapping):
        raise Unpublishable("not a stream record (a JSON object is expected)")
    name = record.get("eventName")
    if name not in EVENT_NAMES:
        raise Unpublishable("eventName is not INSERT, MODIFY or REMOVE")
    if name == "REMOVE":
        return None  # TTL deletions: the filter never delivers these
    stream = record.get("dynamodb")
    if not isinstance(stream, Mapping):
        raise Unpublishable("no dynamodb object")
    if sequence_number(record) is None:
        raise Unpublishable("dynamodb.SequenceNumber is missing or not a sequence number")
    keys_ = stream.get("Keys")
    if not isinstance(keys_, Mapping):
        raise Unpublishable("no dynamodb.Keys")
    sk = _string(keys_, "sk", "Keys")
    assert sk is not None
    modified = name == "MODIFY"
    if not sk.startswith(keys.TOPUP if modified else EVENT_ITEMS):
        return None  # another item, or another change of it: the filter never delivers it
    new_image = stream.get("NewImage")
    if not isinstance(new_image, Mapping):
        raise Unpublishable("no dynamodb.NewImage (the stream must be NEW_IMAGE)")
    if modified:
        from credits.topup_events import topup_events  # here, not at the top: it builds on this module

        return topup_events(keys_, new_image)  # a top-up's end: its one MODIFY
    return events_of(keys_, new_image, default_threshold, publish_usage=publish_usage)


def events_of(
    keys_: Mapping[str, Any], new_image: Mapping[str, Any], default_threshold: int, *, publish_usage: bool = True
) -> list[Event]:
    """The events of an INSERT (`Keys` and `NewImage` in DynamoDB JSON): [] for an item that is neither
    a ledger entry nor a note (spend limit, expiry); Unpublishable for a user's entry or note that
    does not read as the ledger writes it. `publish_usage` False leaves out Credits Used (only)."""
    pk, sk = _string(keys_, "pk", "Keys"), _string(keys_, "sk", "Keys")
    assert pk is not None and sk is not None
    if not sk.startswith(EVENT_ITEMS):
        return []
    if not pk.startswith(keys.USER) or pk == keys.USER:
        raise Unpublishable(f"a {sk.split('#')[0]}# item outside a user's partition (Keys.pk is not USER#<id>)")
    user = pk[len(keys.USER) :]

    def event(kind: str, **detail: Any) -> Event:
        return Event(kind, {"eventId": _event_id(pk, sk, kind), "userId": user, **detail})

    where = "NewImage"
    note = _note(sk, new_image)
    if note is not None:
        return [event(note[0], **note[1])]
    tx = _string(new_image, "id", where)
    kind = _string(new_image, "type", where)
    amount, balance = _integer(new_image, "amount", where), _integer(new_image, "balance_after", where)
    assert amount is not None and balance is not None
    if kind not in ENTRY_TYPES:
        raise Unpublishable(f"NewImage.type {str(kind)[:40]!r} is not a ledger entry type")
    threshold = _integer(new_image, "low_balance_threshold", where, required=False)
    threshold = default_threshold if threshold is None else threshold
    monetary_amount = _integer(new_image, "monetary_amount", where, required=False)
    currency = _string(new_image, "currency", where, required=False)
    description = _text(new_image, "description", where)
    reference = _string(new_image, "reference_id", where, required=False)
    before = balance - amount  # before a user's first entry, the balance counts as 0
    found: list[Event] = []
    if kind == "purchase":
        found.append(
            event(
                "Credits Purchased",
                transactionId=tx,
                credits=amount,
                balance=balance,
                monetaryAmount=monetary_amount,
                currency=currency,
            )
        )
    elif kind == "usage":
        if publish_usage:
            found.append(
                event(
                    USAGE_EVENT,
                    transactionId=tx,
                    credits=-amount,
                    balance=balance,
                    description=description,
                    referenceId=reference,
                )
            )
    elif kind in ("gift", "adjustment"):
        found.append(
            event(
                "Credits Granted",
                transactionId=tx,
                credits=amount,  # signed: an adjustment may take credits away
                type=kind,
                balance=balance,
                description=description,
                referenceId=reference,
            )
        )
    elif kind in ("refund", "dispute") and amount < 0:
        found.append(event("Credits Clawed Back", transactionId=tx, credits=-amount, reason=kind, balance=balance))
    elif kind in ("refund", "dispute"):
        # a dispute closed in the user's favour (won, withdrawn, prevented) gives the held credits back
        found.append(
            event(
                "Credits Restored",
                transactionId=tx,
                credits=amount,
                reason=kind,
                balance=balance,
                monetaryAmount=monetary_amount,
                currency=currency,
                description=description,
            )
        )
    elif kind == "expiration":
        lot = _expired_lot(new_image, where)
        found.append(
            event(
                "Credits Expired",
                transactionId=tx,
                credits=-amount,
                balance=balance,
                lotId=lot,
                description=description,
            )
        )
    return found + _crossings(event, before, balance, threshold, tx)


def _crossings(event: Callable[..., Event], before: int, balance: int, threshold: int, tx: str | None) -> list[Event]:
    """What an entry's move of the balance crossed: the low-balance threshold, zero."""
    found: list[Event] = []
    if threshold > 0 and before >= threshold > balance:
        found.append(event("Balance Low", balance=balance, threshold=threshold, transactionId=tx))
    if before >= 0 > balance:
        found.append(event("Balance Negative", balance=balance, transactionId=tx))
    return found


def _note(sk: str, new_image: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """A note's event and its detail (a month's spend-limit note, a lot's expiry note); None for a
    ledger entry."""
    where = "NewImage"
    if sk.startswith(keys.LIMIT):
        limit, spent, month = (
            _integer(new_image, "limit", where),
            _integer(new_image, "spent", where),
            _string(new_image, "month", where),
        )
        return "Spend Limit Reached", {"limit": limit, "spent": spent, "month": month}
    if sk.startswith(keys.EXPIRING):
        return EXPIRING_EVENT, _expiring(sk, new_image)
    return None


def _expiring(sk: str, new_image: Mapping[str, Any]) -> dict[str, Any]:
    """Credits Expiring Soon's detail from a lot's note: its lot (the note's key names it too), the
    credits that expire, when (ISO 8601 UTC) and the lot's label."""
    where = "NewImage"
    lot = _string(new_image, "lot_id", where)
    if sk != keys.expiring_sk(str(lot)):
        raise Unpublishable(f"{where}.lot_id is not the lot its key names")
    credits = _integer(new_image, "credits", where)
    expires_ms = _integer(new_image, "expires_at_ms", where)
    assert expires_ms is not None
    if not 0 < expires_ms < _LAST_MS:
        raise Unpublishable(f"{where}.expires_at_ms is not a time")
    return {
        "lotId": lot,
        "credits": credits,
        "expiresAt": iso_ms(expires_ms),
        "label": _text(new_image, "label", where),
    }


_LAST_MS = 253_402_300_800_000  # 10000-01-01T00:00:00Z: an expiry beyond it is no time


def _expired_lot(new_image: Mapping[str, Any], where: str) -> str | None:
    """The lot an expiration entry expired (the one key of its `draws`, a map of lot id to credits);
    None for an entry written without draws (before lots)."""
    draws = _value(new_image, "draws", "M", where)
    if draws is None:
        return None
    if not isinstance(draws, Mapping) or len(draws) != 1:
        raise Unpublishable(f"{where}.draws of an expiration does not name one lot")
    ((lot, _),) = draws.items()
    if not isinstance(lot, str) or not lot:
        raise Unpublishable(f"{where}.draws names no lot")
    _integer(draws, lot, f"{where}.draws")  # the credits: a number, as the ledger writes them
    return lot


# ---- publishing and dead-lettering ------------------------------------------------------------------


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


def dead_letter_message(record: Any, reason: str, *, function: str, now: float) -> dict[str, Any]:
    """What the dead-letter queue keeps of a record that can never be published: why, which record
    (the stream's ARN, the record's sequence number and eventID; Lambda's records do not name their
    shard), and the record itself as delivered."""
    fields = record if isinstance(record, Mapping) else {}

    def text(name: str) -> str | None:
        value = fields.get(name)
        return value[:2048] if isinstance(value, str) else None

    return {
        "reason": reason[:1000],
        "eventSourceARN": text("eventSourceARN"),
        "sequenceNumber": sequence_number(record),
        "eventID": text("eventID"),
        "eventName": text("eventName"),
        "function": function,
        "deadLetteredAt": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "record": record,
    }


def dead_letter_body(message: Mapping[str, Any]) -> str:
    """A dead letter as an SQS message body: ASCII JSON (only characters SQS takes), at most
    DEAD_LETTER_MAX_BYTES; a record too large to fit is cut to the start of its JSON (its keys)."""
    body = json.dumps(message, default=str, separators=(",", ":"))
    if len(body) <= DEAD_LETTER_MAX_BYTES:
        return body
    record = json.dumps(message.get("record"), default=str, separators=(",", ":"))
    cut = {**message, "record": None, "recordTruncated": {"bytes": len(record), "start": record[: 64 * 1024]}}
    return json.dumps(cut, default=str, separators=(",", ":"))


class DeadLetterQueue:
    """Sends dead letters to an SQS queue; the client is injected. Raises whatever the send raises,
    so the record is reported failed and retried, never dropped."""

    def __init__(self, client: SQSClient, queue_url: str) -> None:
        self.client = client
        self.url = queue_url

    def send(self, message: Mapping[str, Any]) -> None:
        self.client.send_message(QueueUrl=self.url, MessageBody=dead_letter_body(message))
