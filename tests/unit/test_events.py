"""Events from stream records, shaped exactly as Lambda delivers a DynamoDB stream (moto writes the
items with the real ledger; the records wrap their NewImage in DynamoDB JSON)."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from credits import keys
from credits.config import publish_usage_events
from credits.errors import ConfigError
from credits.events import (
    DEAD_LETTER_MAX_BYTES,
    ENTRY_EVENTS,
    Unpublishable,
    dead_letter_body,
    dead_letter_message,
    events_of,
    record_events,
)
from credits.ledger import ENTRY_TYPES, Ledger, LotTerms, to_item
from tests import stripe_events as se
from tests.support import FakeContext, ManualClock, environment, load_function
from tests.unit.test_webhook import send

STREAM_ARN = "arn:aws:dynamodb:us-east-1:000000000000:table/credits/stream/2026-11-26T00:00:00.000"


def stream_records(client: Any, user: str, *, first_seq: int = 1) -> list[dict[str, Any]]:
    """The INSERT records the stream delivers for a user's items (ledger entries and notes)."""
    items = client.query(
        TableName="credits",
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues=to_item({":pk": keys.user_pk(user)}),
    )["Items"]
    records = []
    for n, item in enumerate(items, start=first_seq):
        records.append(
            {
                "eventID": f"e{n}",
                "eventName": "INSERT",
                "eventVersion": "1.1",
                "eventSource": "aws:dynamodb",
                "awsRegion": "us-east-1",
                "dynamodb": {
                    "ApproximateCreationDateTime": 1795650000.0,
                    "Keys": {"pk": item["pk"], "sk": item["sk"]},
                    "NewImage": item,
                    "SequenceNumber": f"{n:021d}",
                    "SizeBytes": 200,
                    "StreamViewType": "NEW_IMAGE",
                },
                "eventSourceARN": STREAM_ARN,
            }
        )
    return records


def kinds(client: Any, user: str, default_threshold: int = 10) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for record in stream_records(client, user):
        for event in events_of(record["dynamodb"]["Keys"], record["dynamodb"]["NewImage"], default_threshold):
            detail = {k: v for k, v in event.detail.items() if k not in ("eventId", "userId", "transactionId")}
            out.append((event.detail_type, detail))
    return out


@pytest.fixture
def ledger(moto_dynamodb) -> Ledger:
    return Ledger(moto_dynamodb, "credits", sleep=lambda _s: None)


def test_a_purchase_spending_through_the_threshold_and_a_refund_below_zero(ledger: Ledger, moto_dynamodb) -> None:
    ledger.grant(
        "ann", 100, type="purchase", description="Starter", reference_id="pi_1", monetary_amount=500, currency="usd"
    )
    ledger.charge("ann", 85, description="a")  # 15: still at or above 10
    ledger.charge("ann", 5, description="b")  # 10: exactly the threshold is not below it
    ledger.charge("ann", 1, description="c")  # 9: crosses
    ledger.charge("ann", 9, description="d")  # 0: already below, no second event
    ledger.claw_back("ann", 20, type="refund", description="refund", reference_id="r1")

    def used(credits: int, balance: int, description: str) -> tuple[str, dict[str, Any]]:
        return (
            "Credits Used",
            {"credits": credits, "balance": balance, "description": description, "referenceId": None},
        )

    assert kinds(moto_dynamodb, "ann") == [
        ("Credits Purchased", {"credits": 100, "balance": 100, "monetaryAmount": 500, "currency": "usd"}),
        used(85, 15, "a"),
        used(5, 10, "b"),
        used(1, 9, "c"),
        ("Balance Low", {"balance": 9, "threshold": 10}),
        used(9, 0, "d"),
        ("Credits Clawed Back", {"credits": 20, "reason": "refund", "balance": -20}),
        ("Balance Negative", {"balance": -20}),
    ]


def test_landing_exactly_on_zero_and_crossing_again_after_a_top_up(ledger: Ledger, moto_dynamodb) -> None:
    ledger.grant("bo", 5, type="gift", description="first entry: 0 -> 5, never was at the threshold")
    ledger.grant("bo", 5, type="gift", description="10")
    ledger.charge("bo", 10, description="10 -> 0")
    ledger.grant("bo", 50, type="adjustment", description="top-up")
    ledger.charge("bo", 45, description="50 -> 5")
    assert [k for k, _ in kinds(moto_dynamodb, "bo")] == [
        "Credits Granted",
        "Credits Granted",
        "Credits Used",
        "Balance Low",
        "Credits Granted",
        "Credits Used",
        "Balance Low",
    ]


def test_the_users_own_threshold_is_written_with_each_entry_and_0_turns_it_off(ledger: Ledger, moto_dynamodb) -> None:
    ledger.update_settings("cy", low_balance_threshold=50)
    ledger.grant("cy", 60, type="gift", description="seed")
    ledger.charge("cy", 20, description="60 -> 40")
    ledger.update_settings("cy", low_balance_threshold=0)
    ledger.charge("cy", 40, description="40 -> 0")
    low = [(k, d) for k, d in kinds(moto_dynamodb, "cy", default_threshold=10) if k.startswith("Balance")]
    assert low == [("Balance Low", {"balance": 40, "threshold": 50})]
    ledger.update_settings("dee", low_balance_threshold=0)
    ledger.grant("dee", 5, type="gift", description="seed")
    ledger.charge("dee", 5, description="5 -> 0")
    assert [k for k, _ in kinds(moto_dynamodb, "dee")] == ["Credits Granted", "Credits Used"]  # no Balance Low


def test_a_months_first_spend_limit_refusal_is_one_event(ledger: Ledger, moto_dynamodb) -> None:
    ledger.grant("eve", 100, type="gift", description="seed")
    ledger.update_settings("eve", monthly_spend_limit=3)
    ledger.charge("eve", 3, description="a")
    for _ in range(3):
        with pytest.raises(Exception, match="limit"):
            ledger.charge("eve", 1, description="b")
    limit_events = [d for k, d in kinds(moto_dynamodb, "eve") if k == "Spend Limit Reached"]
    assert len(limit_events) == 1 and limit_events[0]["limit"] == 3 and limit_events[0]["spent"] == 3


class FakeEventBridge:
    """Records PutEvents; entries whose detail-type is in `fail` come back failed."""

    def __init__(self) -> None:
        self.put: list[dict[str, Any]] = []
        self.fail: set[str] = set()

    def put_events(self, *, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        results: list[dict[str, Any]] = []
        for entry in Entries:
            if entry["DetailType"] in self.fail:
                results.append({"ErrorCode": "InternalFailure", "ErrorMessage": "try again"})
            else:
                self.put.append(entry)
                results.append({"EventId": str(len(self.put))})
        return {"FailedEntryCount": sum("ErrorCode" in r for r in results), "Entries": results}


@pytest.fixture
def events_fn(moto_dynamodb) -> tuple[ModuleType, FakeEventBridge]:
    with environment(EVENT_BUS_NAME="credits-test"):
        module = load_function("events")
    fake = FakeEventBridge()
    module.publisher.client = fake
    return module, fake


def test_a_failed_entry_stops_its_batch_there_and_the_redelivery_publishes_the_rest_in_order_with_the_same_ids(
    ledger: Ledger, moto_dynamodb, events_fn: tuple[ModuleType, FakeEventBridge]
) -> None:
    """Lambda retries a shard from its first failed record: the records after it are reported failed
    unpublished, so each event goes out in ledger order, and once per delivery of its record."""
    module, fake = events_fn
    ledger.grant(
        "fay", 100, type="purchase", description="pack", reference_id="pi_2", monetary_amount=500, currency="usd"
    )
    ledger.charge("fay", 95, description="down")  # Balance Low
    ledger.claw_back("fay", 100, type="dispute", description="dispute", reference_id="d1")  # clawback, negative
    records = [r for r in stream_records(moto_dynamodb, "fay") if r["dynamodb"]["Keys"]["sk"]["S"].startswith("TX#")]
    assert len(records) == 3

    fake.fail = {"Balance Low"}
    answer = module.lambda_handler({"Records": records}, FakeContext())
    sequence = [r["dynamodb"]["SequenceNumber"] for r in records]
    assert answer == {"batchItemFailures": [{"itemIdentifier": sequence[1]}, {"itemIdentifier": sequence[2]}]}
    first = [(e["DetailType"], json.loads(e["Detail"])["eventId"]) for e in fake.put]
    assert [k for k, _ in first] == ["Credits Purchased", "Credits Used"]  # nothing after the failure

    fake.fail, fake.put = set(), []
    assert module.lambda_handler({"Records": records[1:]}, FakeContext()) == {"batchItemFailures": []}
    again = [(e["DetailType"], json.loads(e["Detail"])["eventId"]) for e in fake.put]
    assert [k for k, _ in again] == ["Credits Used", "Balance Low", "Credits Clawed Back", "Balance Negative"]
    assert again[0] == first[1]  # the event put twice carries the same eventId: drop duplicates by it
    assert all(e["Source"] == "credits" and e["EventBusName"] == "credits-test" for e in fake.put)
    low = json.loads(next(e["Detail"] for e in fake.put if e["DetailType"] == "Balance Low"))
    assert (low["userId"], low["balance"], low["threshold"]) == ("fay", 5, 10)


# ---- a record that can never be published is dead-lettered; the rest of the batch flows ------------------
#
# The shapes below are enumerated from what a stream record is (template.yaml's filter delivers only
# INSERTs of TX# and LIMIT# items, but nothing in the function may rely on it): each is either
# dead-lettered with its reason, or, when it is a well-formed record that carries no event by design
# (a MODIFY, a REMOVE, another item: what the filter never delivers), ignored.


def entry_item(client: Any, user: str, sk_prefix: str = "TX#") -> dict[str, Any]:
    """The newest item of a user whose sort key starts with `sk_prefix`, as DynamoDB JSON."""
    items = client.query(
        TableName="credits",
        KeyConditionExpression="pk = :pk AND begins_with(sk, :sk)",
        ExpressionAttributeValues=to_item({":pk": keys.user_pk(user), ":sk": sk_prefix}),
        ScanIndexForward=False,
    )["Items"]
    return dict(items[0])


def wrap(item: dict[str, Any], sequence: int, event_name: str = "INSERT") -> dict[str, Any]:
    """A stream record of an item, as Lambda delivers it."""
    return {
        "eventID": f"e{sequence}",
        "eventName": event_name,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": {
            "ApproximateCreationDateTime": 1795650000.0,
            "Keys": {"pk": item["pk"], "sk": item["sk"]},
            "NewImage": item,
            "SequenceNumber": f"{sequence:021d}",
            "SizeBytes": 200,
            "StreamViewType": "NEW_IMAGE",
        },
        "eventSourceARN": STREAM_ARN,
    }


def image(field: str, value: Any) -> Any:
    """A change of a ledger entry record: its NewImage's `field` set to `value` (None: removed)."""

    def change(record: dict[str, Any]) -> dict[str, Any]:
        if value is None:
            del record["dynamodb"]["NewImage"][field]
        else:
            record["dynamodb"]["NewImage"][field] = value
        return record

    return change


def stream(field: str | None = None, key: str | None = None, value: Any = None) -> Any:
    """A change of a record: `dynamodb[field]` (or `dynamodb.Keys[key]`) set to `value` (None: removed)."""

    def change(record: dict[str, Any]) -> dict[str, Any]:
        target, name = (record["dynamodb"]["Keys"], key) if key else (record["dynamodb"], field)
        if value is None:
            del target[name]
        else:
            target[name] = value
        return record

    return change


def limit_note(change: Any) -> Any:
    """A change applied to the user's LIMIT# note's record instead of their ledger entry's."""
    change.record = "note"
    return change


def expiry_note(change: Any) -> Any:
    """A change applied to a user's EXPIRING# note's record (a lot about to expire)."""
    change.record = "expiring"
    return change


def expiration(draws: Any) -> Any:
    """A change making the ledger entry's record an expiration entry with these `draws`."""
    return lambda r: image("draws", draws)(image("type", {"S": "expiration"})(r))


DEAD_LETTERED: dict[str, tuple[Any, str]] = {
    # what                      (the change to a good entry's record, the reason given)
    "garbage: not an object": (lambda r: "\x00garbage", "not a stream record"),
    "garbage: a list": (lambda r: [r], "not a stream record"),
    "an unknown eventName": (lambda r: {**r, "eventName": "UPSERT"}, "eventName is not INSERT"),
    "no eventName": (lambda r: {k: v for k, v in r.items() if k != "eventName"}, "eventName is not INSERT"),
    "no dynamodb object": (lambda r: {k: v for k, v in r.items() if k != "dynamodb"}, "no dynamodb object"),
    "no SequenceNumber": (stream("SequenceNumber"), "SequenceNumber is missing"),
    "no Keys": (stream("Keys"), "no dynamodb.Keys"),
    "no sort key": (stream(key="sk"), "Keys.sk is missing"),
    "a numeric sort key": (stream(key="sk", value={"N": "1"}), "Keys.sk must be of type S, not N"),
    "no partition key": (stream(key="pk"), "Keys.pk is missing"),
    "an entry outside a user's partition": (
        stream(key="pk", value={"S": "PACKAGE#starter"}),
        "outside a user's partition",
    ),
    "no NewImage": (stream("NewImage"), "no dynamodb.NewImage"),
    "NewImage not an object": (stream("NewImage", value="AAAA"), "no dynamodb.NewImage"),
    "amount missing": (image("amount", None), "NewImage.amount is missing"),
    "balance_after missing": (image("balance_after", None), "NewImage.balance_after is missing"),
    "type missing": (image("type", None), "NewImage.type is missing"),
    "id missing": (image("id", None), "NewImage.id is missing"),
    "amount as a string": (image("amount", {"S": "5"}), "NewImage.amount must be of type N, not S"),
    "amount not a number": (image("amount", {"N": "five"}), "NewImage.amount is not a number"),
    "amount not an integer": (image("amount", {"N": "1.5"}), "NewImage.amount is not an integer"),
    "amount infinite": (image("amount", {"N": "Infinity"}), "NewImage.amount is not an integer"),
    "amount a JSON number": (image("amount", {"N": 5}), "NewImage.amount is not a DynamoDB number"),
    "amount not an attribute value": (image("amount", "5"), "NewImage.amount is not a DynamoDB attribute value"),
    "balance_after a map": (image("balance_after", {"M": {}}), "balance_after must be of type N, not M"),
    "an unknown transaction type": (image("type", {"S": "bogus"}), "'bogus' is not a ledger entry type"),
    "a mistyped threshold": (image("low_balance_threshold", {"S": "10"}), "low_balance_threshold must be of type N"),
    "a mistyped currency": (image("currency", {"N": "840"}), "NewImage.currency must be of type S, not N"),
    "a limit note without its limit": (limit_note(image("limit", None)), "NewImage.limit is missing"),
    "a limit note's spent as a string": (limit_note(image("spent", {"S": "3"})), "NewImage.spent must be of type N"),
    "an expiry note without its lot": (expiry_note(image("lot_id", None)), "NewImage.lot_id is missing"),
    "an expiry note of another lot than its key's": (
        expiry_note(image("lot_id", {"S": "99"})),
        "NewImage.lot_id is not the lot its key names",
    ),
    "an expiry note's credits as a string": (
        expiry_note(image("credits", {"S": "5"})),
        "NewImage.credits must be of type N, not S",
    ),
    "an expiry note without its expiry": (expiry_note(image("expires_at_ms", None)), "expires_at_ms is missing"),
    "an expiry note's expiry past the year 9999": (
        expiry_note(image("expires_at_ms", {"N": "1" + "0" * 20})),
        "NewImage.expires_at_ms is not a time",
    ),
    "an expiry note's label as a number": (expiry_note(image("label", {"N": "1"})), "NewImage.label must be of type S"),
    "an expiry note outside a user's partition": (
        expiry_note(stream(key="pk", value={"S": "PACKAGE#starter"})),
        "a EXPIRING# item outside a user's partition",
    ),
    "an expiration's draws of two lots": (
        expiration({"M": {"1": {"N": "2"}, "2": {"N": "1"}}}),
        "NewImage.draws of an expiration does not name one lot",
    ),
    "an expiration's draws as a list": (expiration({"L": []}), "NewImage.draws must be of type M, not L"),
    "an expiration's drawn credits as a string": (
        expiration({"M": {"1": {"S": "3"}}}),
        "NewImage.draws.1 must be of type N, not S",
    ),
}

IGNORED: dict[str, Any] = {
    # records the filter never delivers and that carry no event by design (each a change of the
    # LIMIT# note's INSERT, which as it is would be published)
    "a REMOVE of a note (its TTL)": lambda r: stream("NewImage")({**r, "eventName": "REMOVE"}),
    "a REMOVE with an image": lambda r: {**r, "eventName": "REMOVE"},
    "a MODIFY of a note": lambda r: {**r, "eventName": "MODIFY"},
    "a MODIFY of a ledger entry": lambda r: stream(key="sk", value={"S": "TX#000000000002"})(
        {**r, "eventName": "MODIFY"}
    ),
    "a MODIFY of the account": lambda r: stream(key="sk", value={"S": "ACCOUNT"})({**r, "eventName": "MODIFY"}),
    "an INSERT of the account": stream(key="sk", value={"S": "ACCOUNT"}),
    "an INSERT of a reference": stream(key="sk", value={"S": "REF#doc-1"}),
    "an INSERT of an idempotency key": stream(key="sk", value={"S": "IDEM#key-1"}),
    "an INSERT of a hold": stream(key="sk", value={"S": "HOLD#h1"}),
    "a REMOVE of an expiry note (its TTL)": lambda r: stream(key="sk", value={"S": "EXPIRING#1"})(
        {**r, "eventName": "REMOVE"}
    ),
    "a MODIFY of an expiry note": lambda r: stream(key="sk", value={"S": "EXPIRING#1"})({**r, "eventName": "MODIFY"}),
    "an INSERT of a package": lambda r: stream(key="pk", value={"S": "PACKAGE#starter"})(
        stream(key="sk", value={"S": "PACKAGE"})(r)
    ),
}


class Bus(FakeEventBridge):
    """FakeEventBridge that can also raise instead of answering (throttled, the network)."""

    def __init__(self) -> None:
        super().__init__()
        self.raises: list[Exception] = []

    def put_events(self, *, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        if self.raises:
            raise self.raises.pop(0)
        return super().put_events(Entries=Entries)


class BrokenQueue:
    """An SQS client whose SendMessage fails (the queue is unreachable)."""

    def __init__(self) -> None:
        self.calls = 0

    def send_message(self, *, QueueUrl: str, MessageBody: str) -> Any:
        self.calls += 1
        raise EndpointConnectionError(endpoint_url=QueueUrl)


@dataclass
class Function:
    module: ModuleType
    bus: Bus
    sqs: Any
    queue_url: str

    def __call__(self, records: list[Any]) -> Any:
        return self.module.lambda_handler({"Records": records}, FakeContext("events"))

    def dead_letters(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        while True:
            messages = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10).get("Messages", [])
            if not messages:
                return found
            for message in messages:
                found.append(json.loads(message["Body"]))
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])

    def published(self) -> list[tuple[str, str]]:
        return [(json.loads(e["Detail"])["userId"], e["DetailType"]) for e in self.bus.put]


@pytest.fixture
def function(moto_dynamodb) -> Function:
    """The events function with a dead-letter queue (moto's SQS), as the stack configures it."""
    import boto3

    sqs = boto3.client("sqs")
    url = sqs.create_queue(QueueName="events-dlq")["QueueUrl"]
    with environment(EVENT_BUS_NAME="credits-test", EVENTS_DEAD_LETTER_QUEUE_URL=url):
        module = load_function("events")
    bus = Bus()
    module.publisher.client = bus
    return Function(module, bus, sqs, url)


@pytest.fixture
def batch(ledger: Ledger, moto_dynamodb) -> dict[str, Any]:
    """Good records around the one a test breaks: ann's and cy's purchases, and bo's entry and note."""
    for user in ("ann", "cy"):
        ledger.grant(user, 100, type="purchase", description="pack", reference_id=f"pi_{user}", currency="usd")
    ledger.grant("bo", 100, type="purchase", description="pack", reference_id="pi_bo", monetary_amount=500)
    ledger.update_settings("bo", monthly_spend_limit=3)
    ledger.charge("bo", 3, description="up to the limit")
    with pytest.raises(Exception, match="limit"):
        ledger.charge("bo", 1, description="refused: the month's LIMIT# note")
    tomorrow = int(ledger.clock() * 1000) + 86_400_000
    ledger.grant("di", 10, type="gift", description="trial", lot=LotTerms(expires_at_ms=tomorrow, label="Trial"))
    ledger.sweep("di")  # within the warning window: the lot's EXPIRING# note
    return {
        "before": wrap(entry_item(moto_dynamodb, "ann"), 1),
        "entry": wrap(entry_item(moto_dynamodb, "bo"), 2),
        "note": wrap(entry_item(moto_dynamodb, "bo", "LIMIT#"), 2),
        "expiring": wrap(entry_item(moto_dynamodb, "di", "EXPIRING#"), 2),
        "after": wrap(entry_item(moto_dynamodb, "cy"), 3),
    }


@pytest.mark.parametrize("shape", DEAD_LETTERED)
def test_a_malformed_record_is_dead_lettered_with_its_reason_and_the_rest_of_the_batch_is_published(
    shape: str, function: Function, batch: dict[str, Any]
) -> None:
    change, reason = DEAD_LETTERED[shape]
    good = copy.deepcopy(batch[getattr(change, "record", "entry")])
    bad = change(copy.deepcopy(good))

    assert function([batch["before"], bad, batch["after"]]) == {"batchItemFailures": []}

    assert function.published() == [("ann", "Credits Purchased"), ("cy", "Credits Purchased")]
    (letter,) = function.dead_letters()
    assert reason in letter["reason"]
    assert letter["record"] == bad  # the record itself, as delivered
    assert letter["function"] == "events" and letter["deadLetteredAt"].endswith("Z")
    if isinstance(bad, dict) and "dynamodb" in bad and "SequenceNumber" in bad["dynamodb"]:
        assert (letter["sequenceNumber"], letter["eventID"], letter["eventSourceARN"]) == (
            "000000000000000000002",
            "e2",
            STREAM_ARN,
        )
    # the same record without the change would have been published: the change is what is wrong
    assert function([good]) == {"batchItemFailures": []} and function.dead_letters() == []


@pytest.mark.parametrize("shape", IGNORED)
def test_a_record_that_carries_no_event_by_design_is_ignored(
    shape: str, function: Function, batch: dict[str, Any]
) -> None:
    record = IGNORED[shape](copy.deepcopy(batch["note"]))
    assert function([batch["before"], record, batch["after"]]) == {"batchItemFailures": []}
    assert function.published() == [("ann", "Credits Purchased"), ("cy", "Credits Purchased")]
    assert function.dead_letters() == []
    # the note's INSERT itself is published: the change is what makes it carry no event
    assert function([batch["note"]]) == {"batchItemFailures": []}
    assert function.published()[2:] == [("bo", "Spend Limit Reached")]


def test_dead_letters_are_logged_and_counted(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, function: Function, batch: dict[str, Any]
) -> None:
    bad = image("amount", {"S": "5"})(copy.deepcopy(batch["entry"]))
    assert function([batch["before"], bad, bad]) == {"batchItemFailures": []}
    logged = [r for r in caplog.records if r.getMessage() == "a record that can never be published was dead-lettered"]
    assert [(r.levelname, getattr(r, "sequenceNumber", None)) for r in logged] == [
        ("ERROR", "000000000000000000002")
    ] * 2
    assert all("amount must be of type N" in getattr(r, "reason", "") for r in logged)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    (emf,) = [x for x in lines if "_aws" in x]  # the metrics, flushed at the end of the invocation
    assert emf["EventsDeadLettered"] in (2, 2.0, [1.0, 1.0], [1, 1])
    assert len(function.dead_letters()) == 2


@pytest.mark.parametrize(
    "failure",
    [
        ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, "PutEvents"),
        EndpointConnectionError(endpoint_url="https://events.us-east-1.amazonaws.com"),
        ReadTimeoutError(endpoint_url="https://events.us-east-1.amazonaws.com"),
        "partial",
    ],
    ids=["throttled", "no network", "timeout", "a partial PutEvents failure"],
)
def test_a_transient_failure_is_still_retried_and_never_dead_lettered(
    failure: Any, function: Function, batch: dict[str, Any]
) -> None:
    records = [batch["before"], batch["note"], batch["after"]]
    if failure == "partial":
        function.bus.fail = {"Spend Limit Reached"}
        failed = records[1:]
    else:
        function.bus.raises = [failure]
        failed = records
    answer = function(records)
    # the failed record and every later one (unpublished): the shard is retried from it, in order
    assert answer == {"batchItemFailures": [{"itemIdentifier": r["dynamodb"]["SequenceNumber"]} for r in failed]}
    assert function.dead_letters() == []


def test_when_the_dead_letter_cannot_be_sent_the_record_is_retried_never_dropped(
    function: Function, batch: dict[str, Any]
) -> None:
    broken = BrokenQueue()
    function.module.dead_letters.client = broken
    bad = image("type", {"S": "bogus"})(copy.deepcopy(batch["entry"]))
    answer = function([batch["before"], bad, batch["after"]])
    retried = [
        {"itemIdentifier": "000000000000000000002"},
        {"itemIdentifier": batch["after"]["dynamodb"]["SequenceNumber"]},
    ]
    assert answer == {"batchItemFailures": retried}  # it, and what comes after it, in order
    assert broken.calls == 1
    assert function.published() == [("ann", "Credits Purchased")]

    # a record that names no sequence number cannot be reported alone: the whole batch is retried
    with pytest.raises(RuntimeError, match="batch is retried"):
        function([batch["before"], "garbage"])


def test_without_a_queue_the_record_is_reported_failed_and_handed_back_to_the_invoker(
    moto_dynamodb, batch: dict[str, Any]
) -> None:
    with environment(EVENT_BUS_NAME="credits-test", EVENTS_DEAD_LETTER_QUEUE_URL=None):
        module = load_function("events")
    module.publisher.client = Bus()
    assert module.dead_letters is None
    bad = stream("NewImage")(copy.deepcopy(batch["entry"]))
    answer = module.lambda_handler({"Records": [batch["before"], bad]}, FakeContext("events"))
    assert answer["batchItemFailures"] == [{"itemIdentifier": "000000000000000000002"}]
    (handed,) = answer["deadLetters"]
    assert handed["itemIdentifier"] == "000000000000000000002"
    assert handed["message"]["reason"] == "no dynamodb.NewImage (the stream must be NEW_IMAGE)"
    assert handed["message"]["record"] == bad


def test_a_dead_letter_too_large_for_sqs_keeps_its_reason_and_the_start_of_its_record() -> None:
    record = {"eventName": "INSERT", "dynamodb": {"SequenceNumber": "7", "NewImage": {"x": {"S": "é" * 400_000}}}}
    message = dead_letter_message(record, "because", function="events", now=0.0)
    body = dead_letter_body(message)
    assert len(body.encode()) <= DEAD_LETTER_MAX_BYTES and body.isascii()
    kept = json.loads(body)
    assert (kept["reason"], kept["sequenceNumber"], kept["record"]) == ("because", "7", None)
    assert kept["recordTruncated"]["start"].startswith('{"eventName":"INSERT"')
    assert kept["deadLetteredAt"] == "1970-01-01T00:00:00.000Z"
    small = json.loads(dead_letter_body(dead_letter_message({"eventName": "é"}, "r", function="f", now=0.0)))
    assert small["record"] == {"eventName": "é"} and small["eventName"] == "é"


def test_record_events_reads_only_what_the_ledger_writes(batch: dict[str, Any]) -> None:
    entry = batch["entry"]
    assert [e.detail_type for e in record_events(entry, 10) or []] == ["Credits Used"]  # it crossed nothing
    assert record_events(entry, 10, publish_usage=False) == []
    assert [e.detail_type for e in record_events(batch["before"], 10) or []] == ["Credits Purchased"]
    assert record_events({**entry, "eventName": "REMOVE"}, 10) is None
    with pytest.raises(Unpublishable, match="amount is not an integer"):
        record_events(image("amount", {"N": "1e1000"})(copy.deepcopy(entry)), 10)
    with pytest.raises(Unpublishable, match="amount is not a DynamoDB number"):
        record_events(image("amount", {"N": "1" * 65})(copy.deepcopy(entry)), 10)
    optional_null = image("currency", {"NULL": True})(copy.deepcopy(batch["before"]))
    (purchase,) = record_events(optional_null, 10) or []
    assert purchase.detail["currency"] is None


# ---- every ledger entry announces itself --------------------------------------------------------------


def test_every_entry_announces_what_it_is(ledger: Ledger, moto_dynamodb) -> None:
    ledger.update_settings("gus", low_balance_threshold=0)  # only the entries' own events
    ledger.grant(
        "gus", 50, type="purchase", description="pack", reference_id="pi_g", monetary_amount=500, currency="usd"
    )
    ledger.charge("gus", 5, description="analyze", reference_id="doc-1")
    hold = ledger.reserve("gus", 10, description="generate")
    ledger.capture("gus", hold.hold_id, 4)
    ledger.grant("gus", 7, type="gift", description="welcome", reference_id="promo-1")
    ledger.grant("gus", 3, type="adjustment", description="support")
    ledger.claw_back("gus", 20, type="refund", description="refund", reference_id="r1")
    assert kinds(moto_dynamodb, "gus") == [
        ("Credits Purchased", {"credits": 50, "balance": 50, "monetaryAmount": 500, "currency": "usd"}),
        ("Credits Used", {"credits": 5, "balance": 45, "description": "analyze", "referenceId": "doc-1"}),
        (
            "Credits Used",
            {"credits": 4, "balance": 41, "description": "generate", "referenceId": f"hold:{hold.hold_id}"},
        ),
        (
            "Credits Granted",
            {"credits": 7, "type": "gift", "balance": 48, "description": "welcome", "referenceId": "promo-1"},
        ),
        (
            "Credits Granted",
            {"credits": 3, "type": "adjustment", "balance": 51, "description": "support", "referenceId": None},
        ),
        ("Credits Clawed Back", {"credits": 20, "reason": "refund", "balance": 31}),
    ]
    # each carries the entry's id, and the same eventId on every delivery of the same record
    records = [r for r in stream_records(moto_dynamodb, "gus") if r["dynamodb"]["Keys"]["sk"]["S"].startswith("TX#")]
    once = [e.detail for r in records for e in record_events(r, 10) or []]
    again = [e.detail for r in copy.deepcopy(records) for e in record_events(r, 10) or []]
    assert once == again and len({d["eventId"] for d in once}) == len(once) == 6
    assert [d["transactionId"] for d in once] == [r["dynamodb"]["NewImage"]["id"]["S"] for r in records]


def test_a_dispute_closed_in_the_users_favour_restores_the_credits_and_says_so(
    webhook: ModuleType, ledger: Ledger, moto_dynamodb
) -> None:
    """Posted as payments.py posts it: a positive `dispute` entry, reference settle:<payment>:<step>."""
    send(webhook, "checkout.session.completed", se.session(payment_intent="pi_won"))
    send(webhook, "charge.dispute.created", se.dispute("pi_won"))
    send(webhook, "charge.dispute.closed", se.dispute("pi_won", status="won"))
    restored = ledger.history("user-1")[-1]
    assert (restored.type, restored.amount, restored.reference_id) == ("dispute", 100, "settle:pi_won:2")
    found = kinds(moto_dynamodb, "user-1")
    assert [k for k, _ in found] == ["Credits Purchased", "Credits Clawed Back", "Balance Low", "Credits Restored"]
    detail = found[-1][1]
    assert {k: detail[k] for k in ("credits", "reason", "balance", "currency")} == {
        "credits": 100,
        "reason": "dispute",
        "balance": 100,
        "currency": "usd",
    }
    assert detail["description"].endswith("won): credits restored") and detail["monetaryAmount"] == 500


def test_a_lot_is_announced_once_before_it_expires_then_its_expiry_names_it(moto_dynamodb) -> None:
    clock = ManualClock(1_790_000_000.0)  # 2026-09-21T14:13:20Z
    ledger = Ledger(moto_dynamodb, "credits", clock=clock, sleep=lambda _s: None)
    ledger.update_settings("hal", low_balance_threshold=0)
    expires = int(clock.now * 1000) + 10 * 86_400_000  # 2026-10-01T14:13:20Z
    ledger.grant("hal", 30, type="gift", description="trial", lot=LotTerms(expires_at_ms=expires, label="Trial"))
    ledger.grant("hal", 5, type="gift", description="kept")
    clock.now += 4 * 86_400  # 6 days before its expiry: within the 7 days' warning
    assert ledger.sweep("hal") == 0
    clock.now += 86_400
    ledger.charge("hal", 1, description="a")  # the lot is spent first; it was announced already
    clock.now += 6 * 86_400  # expired
    assert ledger.sweep("hal") == 1 and ledger.sweep("hal") == 0
    assert kinds(moto_dynamodb, "hal") == [
        (
            "Credits Expiring Soon",
            {"lotId": "1", "credits": 30, "expiresAt": "2026-10-01T14:13:20.000Z", "label": "Trial"},
        ),
        (
            "Credits Granted",
            {"credits": 30, "type": "gift", "balance": 30, "description": "trial", "referenceId": None},
        ),
        ("Credits Granted", {"credits": 5, "type": "gift", "balance": 35, "description": "kept", "referenceId": None}),
        ("Credits Used", {"credits": 1, "balance": 34, "description": "a", "referenceId": None}),
        (
            "Credits Expired",
            {
                "credits": 29,
                "balance": 5,
                "lotId": "1",
                "description": "Expired: 29 credits of Trial (granted 21 Sep 2026)",
            },
        ),
    ]
    # an expiration entry without draws (none is written so since lots) still announces itself
    entry_keys, entry_image = _entry("expiration", -2)
    (expired,) = events_of(entry_keys, entry_image, 0)
    assert (expired.detail["credits"], expired.detail["lotId"]) == (2, None)


def test_a_lots_note_is_published_once_per_delivery_with_the_same_event_id(
    function: Function, batch: dict[str, Any]
) -> None:
    note = batch["expiring"]
    assert function([batch["before"], note]) == {"batchItemFailures": []}
    assert function([note]) == {"batchItemFailures": []}  # redelivered
    first, again = [json.loads(e["Detail"]) for e in function.bus.put if e["DetailType"] == "Credits Expiring Soon"]
    assert first == again and (first["userId"], first["lotId"], first["credits"], first["label"]) == (
        "di",
        "1",
        10,
        "Trial",
    )
    assert first["expiresAt"].endswith("Z") and function.dead_letters() == []


def _entry(kind: str, amount: int) -> tuple[dict[str, Any], dict[str, Any]]:
    keys_ = {"pk": {"S": "USER#ivy"}, "sk": {"S": "TX#000000000002"}}
    image = {
        **keys_,
        "id": {"S": "tx-1"},
        "type": {"S": kind},
        "amount": {"N": str(amount)},
        "balance_after": {"N": "1000"},
        "description": {"S": ""},  # a captured hold without a description writes ""
    }
    return keys_, image


@pytest.mark.parametrize("kind", sorted(ENTRY_TYPES))
@pytest.mark.parametrize("sign", [1, -1])
def test_each_entry_type_has_exactly_one_entry_event_whatever_its_sign(kind: str, sign: int) -> None:
    keys_, image = _entry(kind, 5 * sign)
    found = [e.detail_type for e in events_of(keys_, image, 0)]
    assert len(found) == 1 and found[0] in ENTRY_EVENTS[kind], found
    if kind in ("refund", "dispute"):
        assert found == ["Credits Clawed Back" if sign < 0 else "Credits Restored"]
    assert set(ENTRY_EVENTS) == ENTRY_TYPES


def test_usage_events_can_be_switched_off_and_nothing_else_is(ledger: Ledger, moto_dynamodb) -> None:
    ledger.grant("jo", 12, type="gift", description="seed")
    ledger.charge("jo", 5, description="down")  # 7: Balance Low
    records = [r for r in stream_records(moto_dynamodb, "jo") if r["dynamodb"]["Keys"]["sk"]["S"].startswith("TX#")]
    on = [[e.detail_type for e in record_events(r, 10) or []] for r in records]
    off = [[e.detail_type for e in record_events(r, 10, publish_usage=False) or []] for r in records]
    assert on == [["Credits Granted"], ["Credits Used", "Balance Low"]]
    assert off == [["Credits Granted"], ["Balance Low"]]
    low_on, low_off = record_events(records[1], 10), record_events(records[1], 10, publish_usage=False)
    assert low_on is not None and low_off is not None and low_on[1] == low_off[0]  # the same event, same eventId

    for value, publishes in (("false", False), ("FALSE", False), ("true", True), (None, True)):
        with environment(EVENT_BUS_NAME="credits-test", PUBLISH_USAGE_EVENTS=value):
            module = load_function("events")
        bus = FakeEventBridge()
        module.publisher.client = bus
        assert module.lambda_handler({"Records": records}, FakeContext()) == {"batchItemFailures": []}
        published = [e["DetailType"] for e in bus.put]
        assert published == ["Credits Granted", *(["Credits Used"] if publishes else []), "Balance Low"], value


@pytest.mark.parametrize("value", ["no", "0", "yes please"])
def test_a_mistyped_usage_switch_stops_the_function_at_cold_start(value: str) -> None:
    with pytest.raises(ConfigError, match="PUBLISH_USAGE_EVENTS"):
        publish_usage_events({"PUBLISH_USAGE_EVENTS": value})
    assert publish_usage_events({}) is True and publish_usage_events({"PUBLISH_USAGE_EVENTS": " "}) is True
