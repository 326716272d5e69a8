"""Events end to end on DynamoDB Local: charges race in container processes, the table's stream is
read as Lambda reads it, the events function runs in its own container, and EventBridge is the
local stand-in."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from credits.ledger import Ledger, LotTerms, iso_ms
from local.containers import Container
from local.eventbridge import LocalEventBridge
from local.streams import StreamPoller
from tests.integration.conftest import LocalTables
from tests.support import assert_audited, hammer, http_event


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
        monkeypatch.delenv("EVENTS_DEAD_LETTER_QUEUE_URL", raising=False)  # as in make dev: the poller keeps them
        container = Container("events")
        try:
            poller = StreamPoller.for_function(
                "events", endpoint=local_tables.endpoint, table_name=local_tables.credits, deliver=container.invoke
            )
            yield Events(bus, poller)
        finally:
            container.close()


def charge_concurrently(user: str, count: int, action: str = "search") -> Counter[tuple[int, str | None]]:
    events = [http_event("POST", "/credits/use", sub=user, body={"action": action}) for _ in range(count)]
    return Counter((a.status, a.code) for a in hammer("use_credits", events, workers=16, at_once=True))


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
    used = events.of("racer", "Credits Used")  # every charge, once, whatever order they landed in
    assert sorted(e["balance"] for e in used) == list(range(5, 105))
    assert {(e["credits"], e["description"], e["referenceId"]) for e in used} == {(1, "search", None)}
    assert len({e["eventId"] for e in used}) == len({e["transactionId"] for e in used}) == 100

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
    assert ledger.settings("capped").spent_this_month == 20
    reached = events.of("capped", "Spend Limit Reached")
    assert len(reached) == 1 and (reached[0]["limit"], reached[0]["spent"]) == (20, 20)
    assert_audited(ledger, "capped", balance=80)


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


def test_malformed_entries_are_dead_lettered_and_the_entries_after_them_are_published(
    local_tables: LocalTables, events: Events
) -> None:
    """Items no ledger writes, put between good entries of the same shard: each is dead-lettered with
    its reason, and what comes after it is published (it held nothing back)."""
    ledger = local_tables.ledger()
    ledger.grant("early", 100, type="purchase", description="pack", reference_id="pi_e", monetary_amount=500)
    good = {"id": {"S": "t1"}, "amount": {"N": "10"}, "balance_after": {"N": "10"}, "type": {"S": "gift"}}
    malformed = {
        "amount as a string": ("USER#mal", "TX#000000000001", {**good, "amount": {"S": "10"}}),
        "no balance_after": ("USER#mal", "TX#000000000002", {k: v for k, v in good.items() if k != "balance_after"}),
        "an unknown type": ("USER#mal", "TX#000000000003", {**good, "type": {"S": "bogus"}}),
        "an entry outside a user": ("PACKAGE#starter", "TX#000000000001", good),
        "a note's spent as a string": (
            "USER#mal",
            "LIMIT#2026-11",
            {"limit": {"N": "5"}, "spent": {"S": "5"}, "month": {"S": "2026-11"}},
        ),
    }
    for pk, sk, fields in malformed.values():
        item = {"pk": {"S": pk}, "sk": {"S": sk}, **fields}
        local_tables.client.put_item(TableName=local_tables.credits, Item=item)  # type: ignore[attr-defined]
    ledger.grant("late", 100, type="purchase", description="pack", reference_id="pi_l", monetary_amount=500)
    ledger.charge("late", 95, description="down")

    assert [e["credits"] for e in events.of("early", "Credits Purchased")] == [100]
    assert [e["credits"] for e in events.of("late", "Credits Purchased")] == [100]
    assert [e["balance"] for e in events.of("late", "Balance Low")] == [5]
    assert events.bus.events(user_id="mal") == []
    reasons = [m["reason"] for m in events.poller.dead_letters]
    assert reasons == [
        "NewImage.amount must be of type N, not S",
        "NewImage.balance_after is missing",
        "NewImage.type 'bogus' is not a ledger entry type",
        "a TX# item outside a user's partition (Keys.pk is not USER#<id>)",
        "NewImage.spent must be of type N, not S",
    ]
    for message, (pk, sk, _) in zip(events.poller.dead_letters, malformed.values(), strict=True):
        assert message["record"]["dynamodb"]["Keys"] == {"pk": {"S": pk}, "sk": {"S": sk}}
        assert message["sequenceNumber"] == message["record"]["dynamodb"]["SequenceNumber"]
        assert message["eventSourceARN"] == message["record"]["eventSourceARN"]


def test_a_lot_is_announced_once_before_it_expires_and_its_expiry_names_it(
    local_tables: LocalTables, events: Events
) -> None:
    """The lot's note and its expiration entry, through the table's stream and its filter as deployed."""
    ledger = local_tables.ledger()
    ledger.update_settings("lots", low_balance_threshold=0)
    expires = int(time.time() * 1000) + 4000
    ledger.grant("lots", 40, type="gift", description="trial", lot=LotTerms(expires_at_ms=expires, label="Trial"))
    ledger.grant("lots", 10, type="gift", description="kept")
    assert ledger.sweep("lots") == 0  # within its warning window: announced, nothing expired
    assert ledger.sweep("lots") == 0  # once
    deadline = time.monotonic() + 60
    while ledger.account("lots").balance != 10:  # the lot expired (reads leave it out at once)
        assert time.monotonic() < deadline, "the lot never expired"
        time.sleep(0.05)
    assert ledger.sweep("lots") == 1

    (soon,) = events.of("lots", "Credits Expiring Soon")
    assert (soon["lotId"], soon["credits"], soon["label"]) == ("1", 40, "Trial")
    assert soon["expiresAt"] == iso_ms(expires)
    (expired,) = events.of("lots", "Credits Expired")
    assert (expired["lotId"], expired["credits"], expired["balance"]) == ("1", 40, 10)
    assert expired["description"].startswith("Expired: 40 credits of Trial")
    assert events.poller.dead_letters == []
