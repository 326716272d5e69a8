"""Auto top-ups' events: the one MODIFY of a `TOPUP#<n>` item (pending -> succeeded or failed) becomes
Auto Top-Up Succeeded or Auto Top-Up Failed (credits.topup_events, through credits.events.record_events).
The records are shaped exactly as Lambda delivers a NEW_IMAGE stream (no old image)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

import pytest

from credits.events import Event, Unpublishable, record_events
from credits.ledger import to_item
from credits.topup_events import event_id
from local.streams import StreamPoller, check_pattern, keep
from local.template import stream_source
from tests.support import FakeContext, environment, load_function
from tests.unit.test_events import FakeEventBridge, wrap

TOPUP_SK = "TOPUP#000000000007"
TOPUP_ID = "topup:ann:7"
STARTED: dict[str, Any] = {
    "pk": "USER#ann",
    "sk": TOPUP_SK,
    "topup_id": TOPUP_ID,
    "number": 7,
    "package_id": "starter",
    "threshold": 20,
    "available": 15,
    "state": "pending",
    "created_at": "2026-12-01T10:00:00.000Z",
}
PAID: dict[str, Any] = {
    "state": "succeeded",
    "finished_at": "2026-12-01T10:00:03.000Z",
    "payment_intent": "pi_topup_7",
    "credits": 100,
    "amount": 500,
    "currency": "usd",
    "package_name": "Starter",
}
DECLINED: dict[str, Any] = {
    "state": "failed",
    "finished_at": "2026-12-01T10:00:03.000Z",
    "code": "card_declined",
    "message": "Your card was declined.",
    "attempt": 1,
    "suspended": False,
    "payment_intent": "pi_topup_7",
}


def topup_record(sequence: int = 2, event_name: str = "MODIFY", **ended: Any) -> dict[str, Any]:
    """A stream record of ann's top-up 7: its INSERT (`event_name` INSERT, pending) or its end."""
    return wrap(to_item({**STARTED, **ended}), sequence, event_name)


def new_image(change: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def apply(record: dict[str, Any]) -> dict[str, Any]:
        change(record["dynamodb"]["NewImage"])
        return record

    return apply


def set_(name: str, value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return new_image(lambda image: image.__setitem__(name, value))


def drop(name: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return new_image(lambda image: image.pop(name))


def key(name: str, value: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def apply(record: dict[str, Any]) -> dict[str, Any]:
        record["dynamodb"]["Keys"][name] = record["dynamodb"]["NewImage"][name] = {"S": value}
        return record

    return apply


# ---- the events, exactly ------------------------------------------------------------------------------


def test_a_paid_top_up_announces_auto_top_up_succeeded() -> None:
    assert record_events(topup_record(**PAID), 10) == [
        Event(
            "Auto Top-Up Succeeded",
            {
                "eventId": event_id(TOPUP_ID, "succeeded"),
                "userId": "ann",
                "topUpId": "topup:ann:7",
                "packageId": "starter",
                "packageName": "Starter",
                "credits": 100,
                "amount": 500,
                "currency": "usd",
                "paymentIntentId": "pi_topup_7",
            },
        )
    ]


def test_a_declined_top_up_announces_auto_top_up_failed() -> None:
    assert record_events(topup_record(**DECLINED), 10) == [
        Event(
            "Auto Top-Up Failed",
            {
                "eventId": event_id(TOPUP_ID, "failed"),
                "userId": "ann",
                "topUpId": "topup:ann:7",
                "packageId": "starter",
                "code": "card_declined",
                "message": "Your card was declined.",
                "attempt": 1,
                "suspended": False,
                "paymentIntentId": "pi_topup_7",
            },
        )
    ]


def test_the_failure_that_suspends_auto_top_up_says_so_and_no_payment_intent_is_null() -> None:
    suspending: dict[str, Any] = {
        **DECLINED,
        "code": "no_card",
        "message": "Save a card to top up automatically.",
        "attempt": 3,
        "suspended": True,
        "payment_intent": None,  # none was created: the attribute is not written
    }
    (failed,) = record_events(topup_record(**suspending), 10) or []
    assert failed == Event(
        "Auto Top-Up Failed",
        {
            "eventId": event_id(TOPUP_ID, "failed"),
            "userId": "ann",
            "topUpId": "topup:ann:7",
            "packageId": "starter",
            "code": "no_card",
            "message": "Save a card to top up automatically.",
            "attempt": 3,
            "suspended": True,
            "paymentIntentId": None,
        },
    )
    written_null = set_("payment_intent", {"NULL": True})(topup_record(**suspending))
    assert record_events(written_null, 10) == [failed]


def test_a_user_id_with_colons_is_read_from_the_key() -> None:
    record = key("pk", "USER#org:team:1")(topup_record(**PAID))
    record = set_("topup_id", {"S": "topup:org:team:1:7"})(record)
    (paid,) = record_events(record, 10) or []
    assert (paid.detail["userId"], paid.detail["topUpId"]) == ("org:team:1", "topup:org:team:1:7")


def test_a_redelivered_record_gives_the_same_event_ids_and_each_end_its_own() -> None:
    for ended in (PAID, DECLINED):
        record = topup_record(**ended)
        once, again = record_events(record, 10), record_events(copy.deepcopy(record), 10)
        assert once == again and once is not None and len(once) == 1
    paid_id = event_id(TOPUP_ID, "succeeded")
    assert len(paid_id) == 32 and int(paid_id, 16) >= 0
    ids = {
        paid_id,
        event_id(TOPUP_ID, "failed"),
        event_id("topup:ann:8", "succeeded"),
        event_id("topup:bo:7", "succeeded"),
    }
    assert len(ids) == 4  # another end, another top-up, another user: another event


def test_a_started_top_up_carries_no_event() -> None:
    assert record_events(topup_record(event_name="INSERT"), 10) is None  # pending: the filter never delivers it
    assert record_events(topup_record(), 10) == []  # a MODIFY still pending (the ledger writes none): nothing
    assert record_events(topup_record(event_name="REMOVE", **PAID), 10) is None
    # a MODIFY of anything else is still no event
    assert record_events(key("sk", "LIMIT#2026-12")(topup_record(**PAID)), 10) is None
    assert record_events(key("sk", "TX#000000000007")(topup_record(**PAID)), 10) is None


# ---- a top-up's record that does not read as the ledger writes it is unpublishable ----------------------

MALFORMED: dict[str, tuple[dict[str, Any], Callable[[dict[str, Any]], Any], str]] = {
    # what                          (its end, the change, the reason given)
    "no state": (PAID, drop("state"), "NewImage.state is missing"),
    "an unknown state": (
        PAID,
        set_("state", {"S": "refunded"}),
        "'refunded' is not pending, succeeded, failed or cancelled",
    ),
    "a state as a number": (PAID, set_("state", {"N": "1"}), "NewImage.state must be of type S, not N"),
    "no topup_id": (PAID, drop("topup_id"), "NewImage.topup_id is missing"),
    "another top-up's id": (PAID, set_("topup_id", {"S": "topup:ann:8"}), "topup_id is not the top-up its key"),
    "another user's id": (DECLINED, set_("topup_id", {"S": "topup:bo:7"}), "topup_id is not the top-up its key"),
    "another number": (PAID, set_("number", {"N": "8"}), "NewImage.number is not the number its key names"),
    "no number": (PAID, drop("number"), "NewImage.number is missing"),
    "a key of 11 digits": (PAID, key("sk", "TOPUP#00000000007"), "Keys.sk is not TOPUP#<12 digits>"),
    "a key not of digits": (PAID, key("sk", "TOPUP#00000000000x"), "Keys.sk is not TOPUP#<12 digits>"),
    "outside a user's partition": (PAID, key("pk", "PACKAGE#starter"), "a TOPUP# item outside a user's partition"),
    "no package_id": (PAID, drop("package_id"), "NewImage.package_id is missing"),
    "paid: no package_name": (PAID, drop("package_name"), "NewImage.package_name is missing"),
    "paid: no payment_intent": (PAID, drop("payment_intent"), "NewImage.payment_intent is missing"),
    "paid: credits as a string": (PAID, set_("credits", {"S": "100"}), "NewImage.credits must be of type N, not S"),
    "paid: amount not an integer": (PAID, set_("amount", {"N": "5.5"}), "NewImage.amount is not an integer"),
    "paid: no currency": (PAID, drop("currency"), "NewImage.currency is missing"),
    "failed: no code": (DECLINED, drop("code"), "NewImage.code is missing"),
    "failed: an empty message": (DECLINED, set_("message", {"S": ""}), "NewImage.message is not a non-empty string"),
    "failed: no attempt": (DECLINED, drop("attempt"), "NewImage.attempt is missing"),
    "failed: attempt 0": (DECLINED, set_("attempt", {"N": "0"}), "NewImage.attempt is not 1 or more"),
    "failed: no suspended": (DECLINED, drop("suspended"), "NewImage.suspended is missing"),
    "failed: suspended as text": (
        DECLINED,
        set_("suspended", {"S": "true"}),
        "NewImage.suspended must be of type BOOL, not S",
    ),
    "failed: suspended not a boolean": (DECLINED, set_("suspended", {"BOOL": 1}), "suspended is not a boolean"),
    "failed: payment_intent a number": (
        DECLINED,
        set_("payment_intent", {"N": "7"}),
        "NewImage.payment_intent must be of type S, not N",
    ),
    "no NewImage": (PAID, lambda r: r["dynamodb"].pop("NewImage"), "no dynamodb.NewImage"),
}


@pytest.mark.parametrize("shape", MALFORMED)
def test_a_malformed_top_up_record_is_unpublishable_with_its_reason(shape: str) -> None:
    ended, change, reason = MALFORMED[shape]
    good = topup_record(**ended)
    assert record_events(good, 10)  # the change is what is wrong
    bad = copy.deepcopy(good)
    change(bad)
    with pytest.raises(Unpublishable) as raised:
        record_events(bad, 10)
    assert reason in str(raised.value)


# ---- through the events function ----------------------------------------------------------------------


@pytest.fixture
def events_fn(moto_dynamodb) -> tuple[ModuleType, FakeEventBridge, Any, str]:
    """The events function with its dead-letter queue (moto's SQS), as the stack configures it."""
    import boto3

    sqs = boto3.client("sqs")
    url = sqs.create_queue(QueueName="events-dlq")["QueueUrl"]
    with environment(EVENT_BUS_NAME="credits-test", EVENTS_DEAD_LETTER_QUEUE_URL=url):
        module = load_function("events")
    bus = FakeEventBridge()
    module.publisher.client = bus
    return module, bus, sqs, url


def test_the_function_publishes_top_ups_ends_and_dead_letters_a_malformed_one(
    events_fn: tuple[ModuleType, FakeEventBridge, Any, str],
) -> None:
    module, bus, sqs, url = events_fn
    started = topup_record(1, "INSERT")
    paid = topup_record(2, **PAID)
    bad = drop("suspended")(topup_record(3, **DECLINED))
    declined = key("pk", "USER#bo")(set_("topup_id", {"S": "topup:bo:7"})(topup_record(4, **DECLINED)))
    records = [started, paid, bad, declined]

    assert module.lambda_handler({"Records": records}, FakeContext("events")) == {"batchItemFailures": []}
    published = [(e["Source"], e["EventBusName"], e["DetailType"], json.loads(e["Detail"])) for e in bus.put]
    assert [(s, b, t, d["userId"]) for s, b, t, d in published] == [
        ("credits", "credits-test", "Auto Top-Up Succeeded", "ann"),
        ("credits", "credits-test", "Auto Top-Up Failed", "bo"),
    ]
    assert published[0][3] == (record_events(paid, 10) or [])[0].detail
    assert published[1][3]["suspended"] is False and published[1][3]["paymentIntentId"] == "pi_topup_7"
    (letter,) = [json.loads(m["Body"]) for m in sqs.receive_message(QueueUrl=url).get("Messages", [])]
    assert letter["reason"] == "NewImage.suspended is missing"
    assert (letter["sequenceNumber"], letter["eventName"], letter["record"]) == (f"{3:021d}", "MODIFY", bad)

    # redelivered: the same events, with the same eventIds (consumers drop duplicates by them)
    assert module.lambda_handler({"Records": records[1:2]}, FakeContext("events")) == {"batchItemFailures": []}
    assert json.loads(bus.put[-1]["Detail"]) == published[0][3]


# ---- the stream's filter (template.yaml), on AWS and in make dev's poller -------------------------------


def test_the_filter_delivers_a_top_ups_modify_only() -> None:
    patterns = stream_source("events").patterns
    for pattern in patterns:
        check_pattern(pattern)  # nothing in them that the local poller would get wrong
    assert keep(patterns, topup_record(**PAID)) and keep(patterns, topup_record(**DECLINED))
    assert not keep(patterns, topup_record(event_name="INSERT"))  # started: pending, no event
    assert not keep(patterns, topup_record(event_name="REMOVE"))
    for sk in ("TX#000000000001", "LIMIT#2026-12", "EXPIRING#1", "ACCOUNT", "HOLD#h1"):
        assert not keep(patterns, key("sk", sk)(topup_record(**PAID))), sk  # a MODIFY of anything else
        if sk.startswith(("TX#", "LIMIT#", "EXPIRING#")):
            assert keep(patterns, key("sk", sk)(topup_record(event_name="INSERT"))), sk  # their INSERTs still are


class TopUpStream:
    """DescribeTable, DescribeStream, GetShardIterator and GetRecords of one shard holding what
    DynamoDB Local's stream holds after a top-up started and ended (GetRecords' shapes: datetimes)."""

    def __init__(self) -> None:
        account = {"pk": {"S": "USER#ann"}, "sk": {"S": "ACCOUNT"}}
        self.records = [
            topup_record(1, "INSERT"),
            wrap({**account, "topup_pending": {"S": TOPUP_ID}}, 2, "MODIFY"),
            topup_record(3, **PAID),
            wrap(account, 4, "MODIFY"),
        ]
        for record in self.records:
            del record["awsRegion"], record["eventSourceARN"]
            record["dynamodb"]["ApproximateCreationDateTime"] = datetime(2026, 12, 1, 10, tzinfo=UTC)

    def describe_table(self, TableName: str) -> dict[str, Any]:
        return {"Table": {"StreamSpecification": {"StreamEnabled": True}, "LatestStreamArn": "arn:stream"}}

    def describe_stream(self, StreamArn: str, **_: Any) -> dict[str, Any]:
        return {"StreamDescription": {"StreamArn": StreamArn, "Shards": [{"ShardId": "only"}]}}

    def get_shard_iterator(self, StreamArn: str, ShardId: str, ShardIteratorType: str, **args: Any) -> dict[str, Any]:
        return {"ShardIterator": str(int(args.get("SequenceNumber", 0)))}

    def get_records(self, ShardIterator: str, Limit: int) -> dict[str, Any]:
        after = int(ShardIterator)
        found = [copy.deepcopy(r) for r in self.records if int(r["dynamodb"]["SequenceNumber"]) > after]
        return {"Records": found, "NextShardIterator": str(len(self.records))}


def test_make_devs_stream_poller_delivers_the_top_ups_modify_to_the_function(
    events_fn: tuple[ModuleType, FakeEventBridge, Any, str],
) -> None:
    module, bus, _, _ = events_fn
    delivered: list[list[tuple[str, str]]] = []

    def deliver(event: dict[str, Any]) -> Any:
        delivered.append([(r["eventName"], r["dynamodb"]["Keys"]["sk"]["S"]) for r in event["Records"]])
        return module.lambda_handler(event, FakeContext("events"))

    fake = TopUpStream()
    poller = StreamPoller.for_function(
        "events", endpoint="http://unused", table_name="credits", deliver=deliver, dynamodb=fake, streams=fake
    )
    assert poller.drain(timeout=10, quiet=0.2) == 1
    assert delivered == [[("MODIFY", TOPUP_SK)]]
    assert [(e["DetailType"], json.loads(e["Detail"])["topUpId"]) for e in bus.put] == [
        ("Auto Top-Up Succeeded", TOPUP_ID)
    ]
    assert poller.dead_letters == []
