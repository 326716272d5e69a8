"""Races on DynamoDB Local (AWS's own engine): many containers charging one balance at once.

Every container is its own process (tests.support.fleet), as on Lambda: handlers run as threads of
one process would share Powertools' resolver state and misattribute requests.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from tests.integration.conftest import LocalTables
from tests.support import assert_audited, hammer, http_event


def test_300_concurrent_charges_against_200_credits_never_overdraw(local_tables: LocalTables) -> None:
    ledger = local_tables.ledger()
    ledger.grant("racer", 200, type="purchase", description="pack", reference_id="pi_race")

    events = [
        http_event("POST", "/credits/use", sub="racer", headers={"Idempotency-Key": f"k{i}"}, body={"action": "search"})
        for i in range(300)
    ]
    answers = hammer("use_credits", events, workers=16)

    assert Counter((a.status, a.code) for a in answers) == {(200, None): 200, (402, "insufficient_credits"): 100}
    assert_audited(ledger, "racer", balance=0, entries=201)


def test_concurrent_users_each_get_their_own_answers(local_tables: LocalTables) -> None:
    """Requests of different users racing through the same containers are never misattributed."""
    ledger = local_tables.ledger()
    users = [f"user-{n}" for n in range(8)]
    for n, user in enumerate(users):
        ledger.grant(user, 1000 + n, type="gift", description="seed")

    who = [users[i % len(users)] for i in range(160)]
    events = [http_event("POST", "/credits/use", sub=user, body={"action": "search"}) for user in who]
    answers = hammer("use_credits", events, workers=8)

    for n, user in enumerate(users):
        mine = [a.body["balance"] for asker, a in zip(who, answers, strict=True) if asker == user and a.status == 200]
        assert len(mine) == 20
        # Every answer a user got is a balance of their own ledger: 1000+n minus 1..20 charges.
        assert sorted(mine, reverse=True) == list(range(1000 + n - 1, 1000 + n - 21, -1)), (user, mine)
        assert ledger.balance(user) == 1000 + n - 20
        assert [t.amount for t in ledger.history(user)][1:] == [-1] * 20


def test_20_concurrent_requests_with_one_idempotency_key_charge_once(local_tables: LocalTables) -> None:
    ledger = local_tables.ledger()
    ledger.grant("clicker", 100, type="gift", description="welcome")
    headers = {"Idempotency-Key": "double-click"}
    events = [
        http_event("POST", "/credits/use", sub="clicker", headers=headers, body={"action": "generate"})
        for _ in range(20)
    ]
    # the same request reaches each of 20 containers at the same moment
    sent = hammer("use_credits", events, workers=20, at_once=True, pinned=True)
    answers = [(status, body) for status, body, _h in sent]  # replays differ in a header alone

    assert all(a == answers[0] for a in answers), answers
    assert answers[0][0] == 200 and answers[0][1]["charged"] == 10 and answers[0][1]["balance"] == 90
    assert [t.type for t in ledger.history("clicker")] == ["gift", "usage"]
    assert_audited(ledger, "clicker", balance=90)


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
