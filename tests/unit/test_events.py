"""Events from stream records, shaped exactly as Lambda delivers a DynamoDB stream (moto writes the
items with the real ledger; the records wrap their NewImage in DynamoDB JSON)."""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import pytest

from credits import keys
from credits.events import events_of
from credits.ledger import Ledger, to_item
from tests.support import FakeContext, environment, load_function

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
    assert kinds(moto_dynamodb, "ann") == [
        ("Credits Purchased", {"credits": 100, "balance": 100, "monetaryAmount": 500, "currency": "usd"}),
        ("Balance Low", {"balance": 9, "threshold": 10}),
        ("Credits Clawed Back", {"credits": 20, "reason": "refund", "balance": -20}),
        ("Balance Negative", {"balance": -20}),
    ]


def test_landing_exactly_on_zero_and_crossing_again_after_a_top_up(ledger: Ledger, moto_dynamodb) -> None:
    ledger.grant("bo", 5, type="gift", description="first entry: 0 -> 5, never was at the threshold")
    ledger.grant("bo", 5, type="gift", description="10")
    ledger.charge("bo", 10, description="10 -> 0")
    ledger.grant("bo", 50, type="adjustment", description="top-up")
    ledger.charge("bo", 45, description="50 -> 5")
    assert [k for k, _ in kinds(moto_dynamodb, "bo")] == ["Balance Low", "Balance Low"]


def test_the_users_own_threshold_is_written_with_each_entry_and_0_turns_it_off(ledger: Ledger, moto_dynamodb) -> None:
    ledger.update_settings("cy", low_balance_threshold=50)
    ledger.grant("cy", 60, type="gift", description="seed")
    ledger.charge("cy", 20, description="60 -> 40")
    ledger.update_settings("cy", low_balance_threshold=0)
    ledger.charge("cy", 40, description="40 -> 0")
    assert kinds(moto_dynamodb, "cy", default_threshold=10) == [("Balance Low", {"balance": 40, "threshold": 50})]
    ledger.update_settings("dee", low_balance_threshold=0)
    ledger.grant("dee", 5, type="gift", description="seed")
    ledger.charge("dee", 5, description="5 -> 0")
    assert kinds(moto_dynamodb, "dee") == []


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


def test_a_failed_entry_fails_its_record_only_and_a_redelivery_repeats_the_same_event_ids(
    ledger: Ledger, moto_dynamodb, events_fn: tuple[ModuleType, FakeEventBridge]
) -> None:
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
    assert answer == {"batchItemFailures": [{"itemIdentifier": records[1]["dynamodb"]["SequenceNumber"]}]}
    first = [(e["DetailType"], json.loads(e["Detail"])["eventId"]) for e in fake.put]
    assert [k for k, _ in first] == ["Credits Purchased", "Credits Clawed Back", "Balance Negative"]

    fake.fail, fake.put = set(), []
    assert module.lambda_handler({"Records": records}, FakeContext()) == {"batchItemFailures": []}
    again = [(e["DetailType"], json.loads(e["Detail"])["eventId"]) for e in fake.put]
    assert set(first) <= set(again) and len(again) == 4
    assert all(e["Source"] == "credits" and e["EventBusName"] == "credits-test" for e in fake.put)
    low = json.loads(next(e["Detail"] for e in fake.put if e["DetailType"] == "Balance Low"))
    assert (low["userId"], low["balance"], low["threshold"]) == ("fay", 5, 10)
