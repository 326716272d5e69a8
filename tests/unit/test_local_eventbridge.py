"""The local EventBridge bus (local/eventbridge.py) through boto3's unchanged `events` client, pointed at
it by AWS_ENDPOINT_URL_EVENTBRIDGE as the events function is."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from local.eventbridge import LocalEventBridge

BUS = "credits-test"


@pytest.fixture
def bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalEventBridge]:
    with LocalEventBridge(bus_name=BUS, state_path=tmp_path / "events.json") as bridge:
        monkeypatch.setenv("AWS_ENDPOINT_URL_EVENTBRIDGE", bridge.endpoint)
        yield bridge


@pytest.fixture
def client(bus: LocalEventBridge) -> Any:
    return boto3.client("events", config=Config(retries={"mode": "standard", "max_attempts": 1}))


def entry(kind: str, user: str, bus_name: str = BUS, **detail: Any) -> dict[str, Any]:
    return {
        "Source": "credits",
        "DetailType": kind,
        "Detail": json.dumps({"eventId": f"{kind}-{user}", "userId": user, **detail}),
        "EventBusName": bus_name,
    }


def test_events_put_with_boto3_are_kept_as_a_rule_s_target_receives_them(bus: LocalEventBridge, client: Any) -> None:
    answer = client.put_events(
        Entries=[
            entry("Credits Purchased", "alice", credits=100),
            {**entry("Balance Low", "alice", balance=8, threshold=10), "Time": datetime(2026, 11, 26, 9, tzinfo=UTC)},
            entry("Balance Low", "bob", balance=3, threshold=10),
        ]
    )
    assert answer["FailedEntryCount"] == 0
    ids = [e["EventId"] for e in answer["Entries"]]
    assert len(set(ids)) == 3

    alice = bus.events(user_id="alice")
    assert [e["id"] for e in alice] == ids[:2]  # in the order they were put
    assert alice[1] == {
        "version": "0",
        "id": ids[1],
        "detail-type": "Balance Low",
        "source": "credits",
        "account": "000000000000",
        "time": "2026-11-26T09:00:00Z",
        "region": "us-east-1",
        "resources": [],
        "detail": {"eventId": "Balance Low-alice", "userId": "alice", "balance": 8, "threshold": 10},
    }
    assert [e["detail"]["userId"] for e in bus.events(detail_type="Balance Low")] == ["alice", "bob"]

    with urllib.request.urlopen(f"{bus.endpoint}/_local/events?userId=alice") as response:
        listed = json.loads(response.read())["events"]
    assert [e["id"] for e in listed] == [ids[1], ids[0]]  # newest first
    with urllib.request.urlopen(f"{bus.endpoint}/_local/events?limit=1") as response:
        assert [e["id"] for e in json.loads(response.read())["events"]] == [ids[2]]


def test_injected_failures_and_bad_entries_come_back_as_error_entries(bus: LocalEventBridge, client: Any) -> None:
    bus.fail_next(2, "ThrottlingException")
    answer = client.put_events(
        Entries=[entry("Balance Low", "alice"), entry("Balance Low", "bob"), entry("Balance Low", "carol")]
    )
    assert answer["FailedEntryCount"] == 2
    assert [e.get("ErrorCode") for e in answer["Entries"]] == ["ThrottlingException", "ThrottlingException", None]
    assert answer["Entries"][0]["ErrorMessage"]
    assert "EventId" in answer["Entries"][2]
    assert [e["detail"]["userId"] for e in bus.events()] == ["carol"]  # a failed entry is not kept

    answer = client.put_events(
        Entries=[
            entry("Balance Low", "alice", bus_name="default"),
            entry("Balance Low", "alice", bus_name=f"arn:aws:events:us-east-1:000000000000:event-bus/{BUS}"),
            {**entry("Balance Low", "alice"), "Detail": "not json"},
            {"Source": "credits", "Detail": "{}", "EventBusName": BUS},
        ]
    )
    assert answer["FailedEntryCount"] == 3
    assert [e.get("ErrorCode") for e in answer["Entries"]] == [
        "InvalidArgument",
        None,
        "MalformedDetail",
        "InvalidArgument",
    ]
    assert "default" in answer["Entries"][0]["ErrorMessage"]
    assert "DetailType" in answer["Entries"][3]["ErrorMessage"]


def test_a_call_with_more_than_ten_entries_is_refused_whole(bus: LocalEventBridge, client: Any) -> None:
    with pytest.raises(ClientError) as raised:
        client.put_events(Entries=[entry("Balance Low", f"user-{i}") for i in range(11)])
    assert raised.value.response["Error"]["Code"] == "ValidationException"
    assert bus.events() == []


def test_the_events_outlive_a_restart_when_kept_in_a_file(tmp_path: Path) -> None:
    path = tmp_path / "events.json"
    with LocalEventBridge(bus_name=BUS, state_path=path) as first:
        first.put_events({"Entries": [entry("Balance Low", "alice")]})
    with LocalEventBridge(bus_name=BUS, state_path=path) as second:
        assert [e["detail"]["userId"] for e in second.events()] == ["alice"]
        second.clear()
    with LocalEventBridge(bus_name=BUS, state_path=path) as third:
        assert third.events() == []
