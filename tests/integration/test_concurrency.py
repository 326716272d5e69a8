"""Races on DynamoDB Local (AWS's own engine): many containers charging one balance at once.

Every container is its own process (tests.support.fleet), as on Lambda: handlers run as threads of
one process would share Powertools' resolver state and misattribute requests.
"""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from tests.integration.conftest import LocalTables
from tests.support import fleet, http_event


def test_300_concurrent_charges_against_200_credits_never_overdraw(local_tables: LocalTables) -> None:
    ledger = local_tables.ledger()
    ledger.grant("racer", 200, type="purchase", description="pack", reference_id="pi_race")

    with fleet("use_credits", 16) as containers:

        def charge(i: int) -> int:
            event = http_event(
                "POST", "/credits/use", sub="racer", headers={"Idempotency-Key": f"k{i}"}, body={"action": "search"}
            )
            status, body, _h = containers.invoke(event)
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


def test_concurrent_users_each_get_their_own_answers(local_tables: LocalTables) -> None:
    """Requests of different users racing through the same containers are never misattributed."""
    ledger = local_tables.ledger()
    users = [f"user-{n}" for n in range(8)]
    for n, user in enumerate(users):
        ledger.grant(user, 1000 + n, type="gift", description="seed")

    with fleet("use_credits", 8) as containers:

        def charge(i: int) -> tuple[str, int, int]:
            user = users[i % len(users)]
            event = http_event("POST", "/credits/use", sub=user, body={"action": "search"})
            status, body, _h = containers.invoke(event)
            return user, status, body["balance"]

        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(charge, range(160)))

    for n, user in enumerate(users):
        mine = [balance for who, status, balance in answers if who == user and status == 200]
        assert len(mine) == 20
        # Every answer a user got is a balance of their own ledger: 1000+n minus 1..20 charges.
        assert sorted(mine, reverse=True) == list(range(1000 + n - 1, 1000 + n - 21, -1)), (user, mine)
        assert ledger.balance(user) == 1000 + n - 20
        assert [t.amount for t in ledger.history(user)][1:] == [-1] * 20


def test_20_concurrent_requests_with_one_idempotency_key_charge_once(local_tables: LocalTables) -> None:
    ledger = local_tables.ledger()
    ledger.grant("clicker", 100, type="gift", description="welcome")
    barrier = threading.Barrier(20)

    with fleet("use_credits", 20) as containers:

        def request(index: int) -> tuple[int, dict]:
            event = http_event(
                "POST",
                "/credits/use",
                sub="clicker",
                headers={"Idempotency-Key": "double-click"},
                body={"action": "generate"},
            )
            barrier.wait()
            status, body, _h = containers.on(index, event)
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
