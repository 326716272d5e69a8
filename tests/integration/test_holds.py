"""Holds on DynamoDB Local (AWS's own engine), through the functions, in container processes."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from tests.integration.conftest import LocalTables
from tests.support import fleet, http_event, invoke, load_function


def reserve_event(user: str, amount: int, key: str, ttl: int = 300) -> dict:
    body = {"userId": user, "amount": amount, "description": "job", "ttlSeconds": ttl}
    return http_event("POST", "/internal/credits/holds", sub=None, headers={"Idempotency-Key": key}, body=body)


def test_200_concurrent_reserves_of_1_against_100_credits_then_capturing_all(local_tables: LocalTables) -> None:
    ledger = local_tables.ledger()
    ledger.grant("holder", 100, type="purchase", description="pack", reference_id="pi_holds")

    with fleet("use_credits", 16) as containers:

        def hold(i: int) -> tuple[int, str | None]:
            status, body, _ = containers.invoke(reserve_event("holder", 1, f"k{i}"))
            if status == 402:
                assert body["error"]["code"] == "insufficient_credits"
            return status, body.get("holdId")

        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = list(pool.map(hold, range(200)))  # the account keeps at most 100 open holds

        assert Counter(status for status, _ in answers) == {201: 100, 402: 100}
        view = ledger.account("holder")
        assert (view.balance, view.available, view.held) == (100, 0, 100)
        assert len(ledger.history("holder")) == 1  # holds never touch the ledger

        def capture(hold_id: str) -> int:
            event = http_event(
                "POST", f"/internal/credits/holds/{hold_id}/capture", sub=None, body={"userId": "holder"}
            )
            return containers.invoke(event)[0]

        held = [hold_id for status, hold_id in answers if status == 201 and hold_id]
        with ThreadPoolExecutor(max_workers=16) as pool:
            assert Counter(pool.map(capture, held)) == {200: 100}

    view = ledger.account("holder")
    assert (view.balance, view.available, view.held) == (0, 0, 0)
    audit = ledger.audit("holder")
    assert audit.ok, audit.problems
    assert (audit.seq, audit.entries) == (101, 101)
    assert sorted(t.reference_id or "" for t in ledger.history("holder")[1:]) == sorted(f"hold:{h}" for h in held)


def test_concurrent_charges_and_reserves_never_take_available_below_zero(local_tables: LocalTables) -> None:
    ledger = local_tables.ledger()
    ledger.grant("mixed", 100, type="gift", description="seed")
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:  # what a user sees while it races: never a negative available
        while not done.is_set():
            seen.append(ledger.account("mixed").available)

    with fleet("use_credits", 12) as containers:

        def act(i: int) -> tuple[str, int]:
            if i % 2:
                event = http_event("POST", "/credits/use", sub="mixed", body={"action": "analyze"})  # 5
                return "charge", containers.invoke(event)[0]
            return "hold", containers.invoke(reserve_event("mixed", 3, f"h{i}"))[0]

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            with ThreadPoolExecutor(max_workers=12) as pool:
                outcomes = Counter(pool.map(act, range(80)))
        finally:
            done.set()
            watcher.join()

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
    assert ledger.audit("mixed").ok


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
    }
    expires = datetime.fromisoformat(hold["expiresAt"].replace("Z", "+00:00")).timestamp()
    time.sleep(max(expires - time.time(), 0) + 0.01)

    assert invoke(bal, http_event("GET", "/credits/balance", sub="brief"))[1] == {
        "balance": 10,
        "available": 10,
        "held": 0,
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
