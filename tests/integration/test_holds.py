"""Holds on DynamoDB Local (AWS's own engine), through the functions, in container processes."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import datetime

from tests.integration.conftest import LocalTables
from tests.support import assert_audited, fleet, http_event, invoke, load_function


def reserve_event(user: str, amount: int, key: str, ttl: int = 300) -> dict:
    body = {"userId": user, "amount": amount, "description": "job", "ttlSeconds": ttl}
    return http_event("POST", "/internal/credits/holds", sub=None, headers={"Idempotency-Key": key}, body=body)


def test_200_concurrent_reserves_of_1_against_100_credits_then_capturing_all(local_tables: LocalTables) -> None:
    ledger = local_tables.ledger()
    ledger.grant("holder", 100, type="purchase", description="pack", reference_id="pi_holds")

    with fleet("use_credits", 16) as containers:
        # the account keeps at most 100 open holds
        answers = containers.hammer([reserve_event("holder", 1, f"k{i}") for i in range(200)])

        assert Counter((a.status, a.code) for a in answers) == {(201, None): 100, (402, "insufficient_credits"): 100}
        assert_audited(ledger, "holder", balance=100, available=0, held=100, entries=1)  # holds never touch the ledger

        held = [a.body["holdId"] for a in answers if a.status == 201]
        captures = containers.hammer(
            [
                http_event("POST", f"/internal/credits/holds/{h}/capture", sub=None, body={"userId": "holder"})
                for h in held
            ]
        )
        assert Counter(a.status for a in captures) == {200: 100}

    assert_audited(ledger, "holder", balance=0, available=0, held=0, entries=101)
    assert sorted(t.reference_id or "" for t in ledger.history("holder")[1:]) == sorted(f"hold:{h}" for h in held)


def test_concurrent_charges_and_reserves_never_take_available_below_zero(local_tables: LocalTables) -> None:
    ledger = local_tables.ledger()
    ledger.grant("mixed", 100, type="gift", description="seed")
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:  # what a user sees while it races: never a negative available
        while not done.is_set():
            seen.append(ledger.account("mixed").available)

    kinds = ["charge" if i % 2 else "hold" for i in range(80)]
    events = [
        http_event("POST", "/credits/use", sub="mixed", body={"action": "analyze"})  # 5
        if kind == "charge"
        else reserve_event("mixed", 3, f"h{i}")
        for i, kind in enumerate(kinds)
    ]
    with fleet("use_credits", 12) as containers:
        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            answers = containers.hammer(events)
        finally:
            done.set()
            watcher.join()
    outcomes = Counter((kind, a.status) for kind, a in zip(kinds, answers, strict=True))

    assert set(outcomes) <= {("charge", 200), ("charge", 402), ("hold", 201), ("hold", 402)}
    charged, held = 5 * outcomes["charge", 200], 3 * outcomes["hold", 201]
    view = ledger.account("mixed")
    assert (view.balance, view.held) == (100 - charged, held)
    assert view.available == 100 - charged - held >= 0
    assert min(seen) >= 0
    # nothing was refused while it would have fit: every 402 saw less available than it needed
    if outcomes["hold", 402]:
        assert view.available < 3
    if outcomes["charge", 402]:
        assert view.available < 5
    assert_audited(ledger, "mixed")


def test_a_hold_of_one_second_stops_counting_when_it_expires(local_tables: LocalTables) -> None:
    ledger = local_tables.ledger()
    ledger.grant("brief", 10, type="gift", description="seed")
    use, bal = load_function("use_credits"), load_function("balance")

    status, hold, _ = invoke(use, reserve_event("brief", 8, "brief-1", ttl=1))
    assert status == 201
    assert invoke(bal, http_event("GET", "/credits/balance", sub="brief"))[1] == {
        "balance": 10,
        "available": 2,
        "held": 8,
        "expiring": [],
        "byCategory": {"paid": 10, "promotional": 0},  # what is left, and what the hold drew
    }
    expires = datetime.fromisoformat(hold["expiresAt"].replace("Z", "+00:00")).timestamp()
    time.sleep(max(expires - time.time(), 0) + 0.01)

    assert invoke(bal, http_event("GET", "/credits/balance", sub="brief"))[1] == {
        "balance": 10,
        "available": 10,
        "held": 0,
        "expiring": [],
        "byCategory": {"paid": 10, "promotional": 0},  # the expired hold's credits are back
    }
    assert invoke(bal, http_event("GET", "/credits/holds", sub="brief"))[1] == {"holds": []}
    capture = http_event(
        "POST", f"/internal/credits/holds/{hold['holdId']}/capture", sub=None, body={"userId": "brief"}
    )
    status, body, _ = invoke(use, capture)
    assert (status, body["error"]["code"]) == (409, "hold_expired")
    assert [t.amount for t in ledger.history("brief")] == [10]
    status, body, _ = invoke(use, http_event("POST", "/credits/use", sub="brief", body={"action": "generate"}))
    assert (status, body["balance"]) == (200, 0)  # all ten are spendable again, at once
