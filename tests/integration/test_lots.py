"""Credit lots on DynamoDB Local (AWS's own engine), through the use_credits function, every container
its own process: charges racing across a promotional lot's expiry, holds outliving their lot, and
what a charge costs on an account with many lots."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

from benchmarks.contention import PROFILE_HEADER, seed_lots
from credits.keys import EXPIRING, user_pk
from credits.ledger import Ledger, LotTerms, Transaction
from tests.integration.conftest import LocalTables
from tests.support import Answer, Fleet, assert_audited, fleet, http_event, wait_until

PROMO, HOUR, NEVER = 1000, 30, 5000  # credits of each lot of the racing account
AFTER_EXPIRY = 32  # charges the lot without expiry serves, after the promotional lot expired and the hour's ran out


def now_ms() -> int:
    return int(time.time() * 1000)


def created_ms(entry: Transaction) -> int:
    """When the entry was decided (its `created_at`, milliseconds)."""
    return round(datetime.fromisoformat(entry.created_at.replace("Z", "+00:00")).timestamp() * 1000)


def charge(user: str, key: str) -> dict[str, Any]:
    return http_event("POST", "/credits/use", sub=user, headers={"Idempotency-Key": key}, body={"action": "search"})


def charge_until(containers: Fleet, user: str, done: Callable[[], bool], *, timeout: float = 180.0) -> list[Answer]:
    """Every container charges `user` 1 credit after another, each request with its own
    Idempotency-Key, until `done()` (polled meanwhile) says so; the answers, in the order they came."""
    stop = threading.Event()
    numbers = itertools.count()
    answers: list[Answer] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def writer() -> None:
        try:
            while not stop.is_set():
                answer = containers.invoke(charge(user, f"lot-race-{next(numbers)}"))
                with lock:
                    answers.append(answer)
        except BaseException as failure:  # noqa: BLE001 - reported by the test below
            failures.append(failure)
            stop.set()

    threads = [threading.Thread(target=writer) for _ in containers.containers]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    try:
        while not stop.is_set() and not done():
            assert time.monotonic() < deadline, f"the charges did not get there in {timeout:.0f} s"
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not failures, failures
    return answers


def warm_up(containers: Fleet) -> None:
    """Every container answers a request first (its first one opens its connections and loads what
    boto3 loads lazily), so a race starts at full speed the moment the lots it is about are granted.
    Each asks for a user of its own who has no credits: no contention, and nothing is written."""
    count = len(containers.containers)
    events = [http_event("POST", "/credits/use", sub=f"warm-up-{i}", body={"action": "search"}) for i in range(count)]
    warm = containers.hammer(events, pinned=True)
    assert [a.code for a in warm] == ["insufficient_credits"] * count, [a.body for a in warm]


def lot_of(ledger: Ledger, user: str, seq: int) -> str:
    """The lot the credit entry `seq` opened."""
    lot = ledger.history(user)[seq - 1].lot
    assert lot is not None
    return lot


def expiring_notes(tables: LocalTables, user: str) -> list[str]:
    """The lots announced as expiring soon (the `EXPIRING#<lot>` items)."""
    client: Any = tables.client
    items = client.query(
        TableName=tables.credits,
        KeyConditionExpression="pk = :pk AND begins_with(sk, :sk)",
        ExpressionAttributeValues={":pk": {"S": user_pk(user)}, ":sk": {"S": EXPIRING}},
        ConsistentRead=True,
    )["Items"]
    return sorted(item["lot_id"]["S"] for item in items)


def account_item(tables: LocalTables, user: str) -> dict[str, Any]:
    client: Any = tables.client
    key = {"pk": {"S": user_pk(user)}, "sk": {"S": "ACCOUNT"}}
    item: dict[str, Any] = client.get_item(TableName=tables.credits, Key=key, ConsistentRead=True)["Item"]
    return item


def test_32_containers_charging_across_a_promotional_lots_expiry_spend_or_expire_each_credit_once(
    local_tables: LocalTables,
) -> None:
    ledger, user = local_tables.ledger(), "lot-racer"
    with fleet("use_credits", 32, setup="tests.support:patient") as containers:
        warm_up(containers)
        # the lots: paid without expiry, paid for an hour, and a promotional one that expires in 2 s
        # (spent first: promotional credits burn before paid ones)
        ledger.grant(user, NEVER, type="purchase", description="Pack", reference_id="pi_never", lot=LotTerms())
        hour_expires = now_ms() + 3_600_000
        hour_terms = LotTerms(expires_at_ms=hour_expires, label="Monthly")
        ledger.grant(user, HOUR, type="purchase", description="Monthly", reference_id="pi_hour", lot=hour_terms)
        promo_expires = now_ms() + 2_000
        promo_terms = LotTerms(category="promotional", expires_at_ms=promo_expires, label="Welcome bonus")
        ledger.grant(user, PROMO, type="gift", description="Welcome bonus", lot=promo_terms)
        never, hour, promo = (lot_of(ledger, user, seq) for seq in (1, 2, 3))

        def spent_well_past_the_expiry() -> bool:
            """The promotional lot expired and its expiration entry is written, the hour's lot ran out
            after it, and the lot without expiry served AFTER_EXPIRY charges since."""
            lots = {lot.lot_id: lot for lot in ledger.account(user).lots}
            if promo in lots or hour in lots or never not in lots or lots[never].remaining > NEVER - AFTER_EXPIRY:
                return False
            return any(t.reference_id == f"expire:{promo}" for t in ledger.history(user))

        answers = charge_until(containers, user, spent_well_past_the_expiry)

    # every request was charged 1 credit: no 402 (there were credits to spare), no 5xx
    assert Counter(a.status for a in answers) == {200: len(answers)}, Counter((a.status, a.code) for a in answers)
    assert {a.body["charged"] for a in answers} == {1}
    history = ledger.history(user)
    usage = [t for t in history if t.type == "usage"]
    expirations = [t for t in history if t.type == "expiration"]
    assert [t.type for t in history[:3]] == ["purchase", "purchase", "gift"]
    assert len(history) == 3 + len(usage) + len(expirations)
    # each answer is one entry, each entry one answer (nothing charged twice, nothing lost)
    assert sorted(t.id for t in usage) == sorted(a.body["transactionId"] for a in answers)

    # Replay the ledger in seq order: the promotional lot paid every charge decided before its expiry,
    # and none after; then the paid lots paid, the one that expires soonest first; the expiration
    # entry took exactly what the promotional lot had left. (The promotional lot never ran out.)
    left = {promo: PROMO, hour: HOUR, never: NEVER}
    drawn: Counter[str] = Counter()
    for entry in history[3:]:
        at = created_ms(entry)
        if entry.type == "expiration":
            assert (entry.reference_id, entry.system_reference) == (f"expire:{promo}", True), entry
            assert at >= promo_expires, entry
            assert dict(entry.draws) == {promo: left[promo]} and entry.amount == -left[promo], (entry, left)
            left[promo] = 0
            continue
        assert entry.amount == -1 and len(entry.draws) == 1, entry
        ((lot, n),) = entry.draws.items()
        if lot == promo:
            # `<=`: created_at, in whole milliseconds, may show a decision made in the last
            # millisecond before the expiry as the expiry itself
            assert at <= promo_expires, entry
        else:
            assert at >= promo_expires, entry  # no paid credit while the promotional lot could pay
            assert lot == hour or left[hour] == 0, (entry, left)  # the paid lot that expires first, first
        assert left[lot] >= n, (entry, left)
        left[lot] -= n
        drawn[lot] += n

    (expired,) = expirations
    assert expired.seq > max(t.seq for t in usage if promo in t.draws)
    assert expired.amount == -(PROMO - drawn[promo]) < 0  # exactly its remainder
    assert drawn[promo] > 0 and drawn[hour] == HOUR and drawn[never] >= AFTER_EXPIRY  # the charges spanned the expiry

    # every credit was spent or expired exactly once
    view = ledger.account(user)
    granted = PROMO + HOUR + NEVER
    assert -sum(t.amount for t in usage + expirations) == granted - view.balance == len(usage) + PROMO - drawn[promo]
    assert [(lot.lot_id, lot.remaining) for lot in view.lots] == [(never, left[never])]
    assert left == {promo: 0, hour: 0, never: view.balance}
    assert_audited(ledger, user, balance=view.balance, available=view.balance, held=0, entries=len(history))
    # both dated lots were announced once, however many writers raced; nothing is pending any more
    assert expiring_notes(local_tables, user) == sorted([promo, hour])
    assert "lots_due" not in account_item(local_tables, user)


def hold_event(user: str, amount: int, key: str) -> dict[str, Any]:
    body = {"userId": user, "amount": amount, "description": "render", "ttlSeconds": 300}
    return http_event("POST", "/internal/credits/holds", sub=None, headers={"Idempotency-Key": key}, body=body)


def end_event(user: str, hold_id: str, end: str) -> dict[str, Any]:
    return http_event("POST", f"/internal/credits/holds/{hold_id}/{end}", sub=None, body={"userId": user})


def test_holds_keep_their_credits_across_their_lots_expiry_and_what_comes_back_expires(
    local_tables: LocalTables,
) -> None:
    ledger, user = local_tables.ledger(), "lot-holder"
    ledger.grant(user, 100, type="purchase", description="Pack", reference_id="pi_holder")
    with fleet("use_credits", 10) as containers:
        started = time.monotonic()
        warm_up(containers)
        # the lot expires in 4 s, or more on a machine so busy that warming up took more than a second:
        # the holds must all be reserved before it expires
        expires = now_ms() + max(4_000, int(4_000 * (time.monotonic() - started)))
        terms = LotTerms(category="promotional", expires_at_ms=expires, label="Launch bonus")
        ledger.grant(user, 30, type="gift", description="Launch bonus", lot=terms)
        promo = lot_of(ledger, user, 2)

        # ten holds of 2 credits, racing: all drawn from the promotional lot (spent first)
        reserved = containers.hammer([hold_event(user, 2, f"render-{i}") for i in range(10)])
        assert [a.status for a in reserved] == [201] * 10, [a.body for a in reserved]
        lots = {lot.lot_id: lot for lot in ledger.account(user).lots}
        assert now_ms() < expires, "the holds were not all reserved before the lot expired: slow machine?"
        assert (lots[promo].remaining, lots[promo].held) == (10, 20)

        # the lot expires: from that millisecond on its 10 unheld credits count for nothing, while the
        # holds keep the 20 they drew
        def expired() -> bool:
            return all(lot.lot_id != promo for lot in ledger.account(user).lots)

        wait_until("the promotional lot to expire", expired, timeout=120.0)
        view = ledger.account(user)
        assert (view.balance, view.held, view.available) == (120, 20, 100)

        # half the holds are captured and charge their 2 credits; the other half are released, and
        # their credits, back in a lot that expired meanwhile, expire then
        holds = [a.body["holdId"] for a in reserved]
        captured, released = holds[:5], holds[5:]
        ends = containers.hammer(
            [end_event(user, h, "capture") for h in captured] + [end_event(user, h, "release") for h in released]
        )

    assert [(a.status, a.body.get("charged")) for a in ends[:5]] == [(200, 2)] * 5, [a.body for a in ends]
    assert [(a.status, a.body.get("released")) for a in ends[5:]] == [(200, 2)] * 5, [a.body for a in ends]
    history = ledger.history(user)[2:]
    usage = [t for t in history if t.type == "usage"]
    assert sorted(t.reference_id or "" for t in usage) == sorted(f"hold:{h}" for h in captured)
    assert sorted(t.id for t in usage) == sorted(a.body["transactionId"] for a in ends[:5])
    assert all(t.amount == -2 and dict(t.draws) == {promo: 2} for t in usage), usage
    # the first write after the expiry expired the lot's 10 unheld credits; each release the 2 it gave back
    expirations = [t for t in history if t.type == "expiration"]
    assert [(t.reference_id, t.amount, dict(t.draws)) for t in expirations] == [
        (f"expire:{promo}", -10, {promo: 10}),
        *[(f"expire:{promo}:{n}", -2, {promo: 2}) for n in range(2, 7)],
    ]
    assert expirations[0].seq == 3 and all(created_ms(t) >= expires for t in expirations)
    assert all(t.system_reference and t.description.startswith("Expired: ") for t in expirations)
    assert_audited(ledger, user, balance=100, available=100, held=0, entries=2 + 1 + 5 + 5)
    assert [(lot.category, lot.remaining, lot.expires_at_ms) for lot in ledger.account(user).lots] == [
        ("paid", 100, None)
    ]
    assert "lots_due" not in account_item(local_tables, user)


def test_an_uncontended_charge_on_an_account_with_20_lots_is_two_dynamodb_calls(local_tables: LocalTables) -> None:
    """The benchmark's account with 20 open lots, and its call counter (`benchmarks.contention`)."""
    ledger, user = local_tables.ledger(), "many-lots"
    seed_lots(ledger, user, 500)
    before = ledger.account(user).lots
    assert len(before) == 20 and sum(lot.remaining for lot in before) == 500
    with fleet("use_credits", 1, setup="benchmarks.contention:instrument") as one:
        for i in range(3):
            answer = one.invoke(charge(user, f"few-calls-{i}"))
            assert (answer.status, answer.body["balance"]) == (200, 499 - i)
            # the account and the key's marker in one read, the change in one transaction
            assert operations(answer) == {"BatchGetItem": 1, "TransactWriteItems": 1}
        no_key = http_event("POST", "/credits/use", sub=user, body={"action": "search"})
        answer = one.invoke(no_key)
        assert (answer.status, answer.body["balance"]) == (200, 496)
        assert operations(answer) == {"GetItem": 1, "TransactWriteItems": 1}
    after = ledger.account(user).lots
    # the lot that expires soonest paid all four; all 20 lots are still open
    assert [lot.lot_id for lot in after] == [lot.lot_id for lot in before]
    assert [lot.remaining for lot in after] == [before[0].remaining - 4] + [lot.remaining for lot in before[1:]]
    assert_audited(ledger, user, balance=496, entries=20 + 4)


def operations(answer: Answer) -> dict[str, int]:
    """The DynamoDB calls an invocation made, by operation (`benchmarks.contention.instrument`)."""
    calls: dict[str, int] = json.loads(answer.headers[PROFILE_HEADER])["operations"]
    return calls
