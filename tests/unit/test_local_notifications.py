"""GET /local/notifications on the local gateway: the signed-in user's events from the local bus."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from local.eventbridge import LocalEventBridge
from local.gateway import Gateway

BUS = "credits-test"


@pytest.fixture
def stack() -> Iterator[tuple[Gateway, LocalEventBridge]]:
    with LocalEventBridge(bus_name=BUS) as bus:
        gateway = Gateway(token_secret="test-secret", web_dir=None, event_bridge=bus)
        gateway.start(warm=False)
        try:
            yield gateway, bus
        finally:
            gateway.stop()


def put(bus: LocalEventBridge, kind: str, user: str, event_id: str, source: str = "credits", **detail: Any) -> None:
    answer = bus.put_events(
        {
            "Entries": [
                {
                    "Source": source,
                    "DetailType": kind,
                    "Detail": json.dumps({"eventId": event_id, "userId": user, **detail}),
                    "EventBusName": BUS,
                }
            ]
        }
    )
    assert answer["FailedEntryCount"] == 0


def get(gateway: Gateway, token: str | None) -> tuple[int, Any]:
    request = urllib.request.Request(f"{gateway.base_url}/local/notifications")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_user_sees_their_own_events_newest_first_each_once(stack: tuple[Gateway, LocalEventBridge]) -> None:
    gateway, bus = stack
    put(bus, "Credits Purchased", "alice", "e1", credits=100, balance=100)
    put(bus, "Balance Low", "bob", "e2", balance=3, threshold=10)
    put(bus, "Balance Low", "alice", "e3", balance=8, threshold=10)
    put(bus, "Balance Low", "alice", "e3", balance=8, threshold=10)  # delivered twice: at least once
    put(bus, "Something Else", "alice", "e4", source="another-service")

    status, body = get(gateway, gateway.tokens.issue("alice"))
    assert status == 200
    notes = body["notifications"]
    assert [(n["id"], n["detailType"]) for n in notes] == [("e3", "Balance Low"), ("e1", "Credits Purchased")]
    assert notes[0]["detail"] == {"eventId": "e3", "userId": "alice", "balance": 8, "threshold": 10}
    assert notes[0]["time"].endswith("Z")


def test_at_most_twenty_and_only_with_a_local_token(stack: tuple[Gateway, LocalEventBridge]) -> None:
    gateway, bus = stack
    for n in range(25):
        put(bus, "Balance Low", "alice", f"e{n}", balance=n, threshold=30)
    status, body = get(gateway, gateway.tokens.issue("alice"))
    assert status == 200
    assert [n["id"] for n in body["notifications"]] == [f"e{n}" for n in range(24, 4, -1)]

    assert get(gateway, None)[0] == 401
    assert get(gateway, "not-a-token")[0] == 401
    assert get(gateway, Gateway(token_secret="another-secret", web_dir=None).tokens.issue("alice"))[0] == 401
    assert get(gateway, gateway.tokens.issue("carol")) == (200, {"notifications": []})


def test_the_gateway_keeps_no_container_for_the_function_a_stream_invokes() -> None:
    gateway = Gateway(token_secret="test-secret", web_dir=None)
    try:
        assert "events" not in gateway.pools
        assert {"use_credits", "balance", "checkout", "webhook", "premium"} <= set(gateway.pools)
    finally:
        gateway.server.server_close()
        for pool in gateway.pools.values():
            pool.close()
