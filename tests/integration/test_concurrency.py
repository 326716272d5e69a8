"""Races on DynamoDB Local (AWS's own engine): many containers charging one balance at once."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from tests.integration.conftest import LocalTables
from tests.support import http_event, invoke, load_function


def test_300_concurrent_charges_against_200_credits_never_overdraw(local_tables: LocalTables) -> None:
    ledger = local_tables.ledger()
    ledger.grant("racer", 200, type="purchase", description="pack", reference_id="pi_race")
    containers = [load_function("use_credits") for _ in range(16)]  # one app per thread, as on Lambda
    local = threading.local()
    counter = iter(range(10**6))
    lock = threading.Lock()

    def charge(_: int) -> int:
        if not hasattr(local, "fn"):
            with lock:
                local.fn = containers[next(counter)]
        status, body, _h = invoke(local.fn, http_event("POST", "/credits/use", sub="racer", body={"action": "search"}))
        if status == 402:
            assert body["error"]["code"] == "insufficient_credits"
        return status

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = Counter(pool.map(charge, range(300)))

    assert statuses == {200: 200, 402: 100}
    assert ledger.balance("racer") == 0
    audit = ledger.audit("racer")
    assert audit.ok, audit.problems
    assert (audit.seq, audit.entries) == (201, 201)


def test_20_concurrent_requests_with_one_idempotency_key_charge_once(local_tables: LocalTables) -> None:
    ledger = local_tables.ledger()
    ledger.grant("clicker", 100, type="gift", description="welcome")
    containers = [load_function("use_credits") for _ in range(20)]
    barrier = threading.Barrier(20)

    def request(fn_index: int) -> tuple[int, dict]:
        barrier.wait()
        status, body, _h = invoke(
            containers[fn_index],
            http_event(
                "POST",
                "/credits/use",
                sub="clicker",
                headers={"Idempotency-Key": "double-click"},
                body={"action": "generate"},
            ),
        )
        return status, body

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(request, range(20)))

    assert all(a == answers[0] for a in answers), answers
    assert answers[0][0] == 200 and answers[0][1]["charged"] == 10 and answers[0][1]["balance"] == 90
    assert ledger.balance("clicker") == 90
    assert [t.type for t in ledger.history("clicker")] == ["gift", "usage"]
    assert ledger.audit("clicker").ok


def test_concurrent_grants_and_charges_keep_the_ledger_gapless(local_tables: LocalTables) -> None:
    ledger = local_tables.ledger()
    ledger.grant("mixed", 50, type="gift", description="seed")

    def work(i: int) -> str:
        if i % 3 == 0:
            ledger.grant("mixed", 2, type="adjustment", description=f"top-up {i}")
            return "grant"
        try:
            ledger.charge("mixed", 3, description=f"charge {i}")
            return "charge"
        except Exception as exc:  # noqa: BLE001 - counted below by kind
            return type(exc).__name__

    with ThreadPoolExecutor(max_workers=12) as pool:
        outcomes = Counter(pool.map(work, range(120)))

    assert set(outcomes) <= {"grant", "charge", "InsufficientCredits"}
    expected = 50 + 2 * outcomes["grant"] - 3 * outcomes["charge"]
    assert ledger.balance("mixed") == expected >= 0
    assert ledger.audit("mixed").ok
