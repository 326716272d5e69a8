"""Events end to end on DynamoDB Local: charges race in container processes, the table's stream is
read as Lambda reads it, the events function runs in its own container, and EventBridge is the
local stand-in."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from credits.ledger import Ledger
from local.containers import Container
from local.eventbridge import LocalEventBridge
from local.streams import StreamPoller
from tests.integration.conftest import LocalTables
from tests.support import fleet, http_event


@dataclass
class Events:
    bus: LocalEventBridge
    poller: StreamPoller

    def of(self, user: str, kind: str) -> list[dict[str, Any]]:
        self.poller.drain(timeout=60)
        found = [e["detail"] for e in self.bus.events(user_id=user, detail_type=kind)]
        return [json.loads(d) if isinstance(d, str) else d for d in found]


@pytest.fixture
def events(local_tables: LocalTables, monkeypatch: pytest.MonkeyPatch) -> Iterator[Events]:
    with LocalEventBridge(bus_name="credits-test") as bus:
        monkeypatch.setenv("EVENT_BUS_NAME", "credits-test")
        monkeypatch.setenv("AWS_ENDPOINT_URL_EVENTBRIDGE", bus.endpoint)
        container = Container("events")
        try:
            poller = StreamPoller.for_function(
                "events", endpoint=local_tables.endpoint, table_name=local_tables.credits, deliver=container.invoke
            )
            yield Events(bus, poller)
        finally:
            container.close()


def charge_concurrently(user: str, count: int, action: str = "search") -> Counter[tuple[int, str | None]]:
    barrier = threading.Barrier(16)
    with fleet("use_credits", 16) as containers:

        def charge(i: int) -> tuple[int, str | None]:
            if i < 16:
                barrier.wait()
            status, body, _ = containers.invoke(http_event("POST", "/credits/use", sub=user, body={"action": action}))
            return status, (body.get("error") or {}).get("code")

        with ThreadPoolExecutor(max_workers=16) as pool:
            return Counter(pool.map(charge, range(count)))


def test_100_racing_charges_through_the_threshold_fire_balance_low_once_and_again_after_a_top_up(
    local_tables: LocalTables, events: Events
) -> None:
    ledger = local_tables.ledger()
    ledger.grant(
        "racer", 105, type="purchase", description="pack", reference_id="pi_1", monetary_amount=500, currency="usd"
    )
    assert charge_concurrently("racer", 100) == {(200, None): 100}
    low = events.of("racer", "Balance Low")
    assert [(e["balance"], e["threshold"]) for e in low] == [(9, 10)]
    purchased = events.of("racer", "Credits Purchased")
    assert [(e["credits"], e["balance"], e["monetaryAmount"], e["currency"]) for e in purchased] == [
        (105, 105, 500, "usd")
    ]

    ledger.grant("racer", 50, type="purchase", description="again", reference_id="pi_2")
    for _ in range(50):
        ledger.charge("racer", 1, description="down again")
    assert len(events.of("racer", "Balance Low")) == 2
    assert len({e["eventId"] for e in events.of("racer", "Balance Low")}) == 2


def test_a_threshold_of_0_fires_nothing(local_tables: LocalTables, events: Events) -> None:
    ledger = local_tables.ledger()
    ledger.update_settings("quiet", low_balance_threshold=0)
    ledger.grant("quiet", 20, type="gift", description="seed")
    assert charge_concurrently("quiet", 20) == {(200, None): 20}
    assert events.of("quiet", "Balance Low") == []


def test_50_racing_charges_against_a_limit_of_20(local_tables: LocalTables, events: Events) -> None:
    ledger = local_tables.ledger()
    ledger.grant("capped", 100, type="gift", description="seed")
    ledger.update_settings("capped", monthly_spend_limit=20)
    assert charge_concurrently("capped", 50) == {(200, None): 20, (402, "spend_limit_reached"): 30}
    assert ledger.balance("capped") == 80 and ledger.settings("capped").spent_this_month == 20
    reached = events.of("capped", "Spend Limit Reached")
    assert len(reached) == 1 and (reached[0]["limit"], reached[0]["spent"]) == (20, 20)
    assert ledger.audit("capped").ok


def test_a_new_month_starts_from_zero(local_tables: LocalTables) -> None:
    clock = [1_796_083_140.0]  # 2026-11-30 23:59 UTC
    ledger = Ledger(local_tables.client, local_tables.credits, clock=lambda: clock[0])  # type: ignore[arg-type]
    ledger.grant("monthly", 100, type="gift", description="seed")
    ledger.update_settings("monthly", monthly_spend_limit=20)
    ledger.charge("monthly", 20, description="november")
    assert ledger.settings("monthly").spent_this_month == 20
    clock[0] += 120  # December
    assert ledger.settings("monthly").spent_this_month == 0
    assert ledger.charge("monthly", 20, description="december").balance == 60


def test_redelivered_records_publish_the_same_event_ids(local_tables: LocalTables, events: Events) -> None:
    ledger = local_tables.ledger()
    ledger.grant("twice", 10, type="gift", description="seed")
    events.bus.fail_next(1)  # the first put fails: the record is retried
    ledger.charge("twice", 5, description="down")
    low = events.of("twice", "Balance Low")
    assert len(low) == 1 and low[0]["balance"] == 5
