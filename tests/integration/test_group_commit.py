"""Group commit on DynamoDB Local: a hot balance answered without 503s, a combiner that dies, and a
waiter that gives up while its change is being applied (docs/adr/0004-group-commit.md)."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from credits import keys
from credits.errors import InsufficientCredits, TemporarilyUnavailable
from credits.ledger import Entry, Idempotency, Ledger, Policy, _Intent, _Kind, _Op, _posted, fingerprint, to_item
from tests.integration.conftest import LocalTables
from tests.support import fleet, http_event


def charge_event(user: str, key: str) -> dict:
    return http_event("POST", "/credits/use", sub=user, headers={"Idempotency-Key": key}, body={"action": "search"})


def test_32_containers_600_charges_against_500_all_answered_and_replayable(local_tables: LocalTables) -> None:
    ledger = local_tables.ledger()
    ledger.grant("hot", 500, type="gift", description="seed")

    with fleet("use_credits", 32) as containers:

        def charge(i: int) -> tuple[int, dict]:
            status, body, _ = containers.invoke(charge_event("hot", f"key-{i}"))
            return status, body

        with ThreadPoolExecutor(32) as pool:
            first = list(pool.map(charge, range(600)))
        statuses = Counter(status for status, _ in first)
        assert statuses == {200: 500, 402: 100}, statuses

        # every key replays its first answer (a 402 wrote nothing, so it is refused again)
        with ThreadPoolExecutor(32) as pool:
            again = list(pool.map(charge, range(600)))
    assert again == first

    assert ledger.balance("hot") == 0
    audit = ledger.audit("hot")
    assert audit.ok, audit.problems
    assert audit.entries == 501
    assert sorted(body["balance"] for status, body in first if status == 200) == list(range(500))
    queued = local_tables.client.query(  # type: ignore[attr-defined]
        TableName=local_tables.credits,
        KeyConditionExpression="pk = :pk AND begins_with(sk, :intent)",
        ExpressionAttributeValues=to_item({":pk": "USER#hot", ":intent": keys.INTENT}),
        ConsistentRead=True,
    )["Items"]
    assert queued == []  # every waiter took its decided intent off the queue


def test_a_combiner_that_dies_mid_pass_leaves_every_waiter_answered(local_tables: LocalTables) -> None:
    """The combiner took the lease and read the queue, then died before its transaction."""
    ledger = local_tables.ledger()
    ledger.grant("orphaned", 100, type="gift", description="seed")
    pk = keys.user_pk("orphaned")

    with fleet("use_credits", 8) as containers:
        assert ledger._take_lease(pk, "combiner-that-dies")  # its lease is live when the charges arrive
        with ThreadPoolExecutor(8) as pool:
            pending = [pool.submit(containers.invoke, charge_event("orphaned", f"o-{i}")) for i in range(30)]
            give_up = time.monotonic() + 10
            intents: list[_Intent] = []
            while not intents and time.monotonic() < give_up:
                assert ledger._take_lease(pk, "combiner-that-dies")  # renewed while it is alive
                _snapshot, intents = ledger._queued(pk)  # the pass's read...
                time.sleep(0.05)
            assert intents  # ...saw queued changes; then it dies, before its transaction
            answers = [f.result() for f in pending]

    assert Counter(status for status, _, _ in answers) == {200: 30}
    assert ledger.balance("orphaned") == 70
    assert ledger.audit("orphaned").ok
    assert sorted(body["balance"] for _, body, _ in answers) == list(range(70, 100))


def queue(ledger: Ledger, user: str, amount: int, key: str) -> _Intent:
    """A change queued as a waiter would queue it (the waiter itself is played by the test)."""
    now = time.time()
    entry = Entry(-amount, "usage", "queued")
    intent = _Intent(
        id=str(uuid.uuid4()),
        created_ms=int(now * 1000),
        apply_before_ms=int((now + 30) * 1000),
        op=_Op(_Kind.POST, entry, Policy.USAGE, Idempotency(key, fingerprint({"key": key})), "rf"),
    )
    ledger._write("put_item", {"TableName": ledger.table, "Item": to_item(intent.item(keys.user_pk(user), int(now)))})
    return intent


def combine_once(ledger: Ledger, user: str) -> dict:
    pk = keys.user_pk(user)
    owner = str(uuid.uuid4())
    assert ledger._take_lease(pk, owner)
    try:
        snapshot, intents = ledger._queued(pk)
        return ledger._combine(pk, snapshot, intents, owner) or {}
    finally:
        ledger._release_lease(pk, owner)


def test_a_waiter_that_cancels_after_its_change_was_applied_answers_the_applied_result(
    local_tables: LocalTables,
) -> None:
    ledger = local_tables.ledger()
    ledger.grant("late", 10, type="gift", description="seed")
    intent = queue(ledger, "late", 3, "k-late")
    decided = combine_once(ledger, "late")
    outcome = ledger._withdraw(keys.user_pk("late"), intent)  # gives up just after the combiner committed
    assert outcome is not None and outcome.value is not None
    posted = _posted(outcome.result())
    assert posted.transaction_id == _posted(decided[intent.id].result()).transaction_id
    assert (posted.amount, posted.balance) == (-3, 7)
    assert ledger.balance("late") == 7 and ledger.audit("late").ok


def test_a_waiter_that_cancels_first_is_never_applied(local_tables: LocalTables) -> None:
    ledger = local_tables.ledger()
    ledger.grant("early", 10, type="gift", description="seed")
    intent = queue(ledger, "early", 3, "k-early")
    assert ledger._withdraw(keys.user_pk("early"), intent) is None  # withdrawn: the answer is 503
    assert combine_once(ledger, "early") == {}  # nothing left to decide
    assert ledger.balance("early") == 10
    assert [t.type for t in ledger.history("early")] == ["gift"]


def test_cancel_and_combine_racing_exactly_one_wins_and_the_answer_says_which(local_tables: LocalTables) -> None:
    ledger = local_tables.ledger()
    ledger.grant("racing", 1000, type="gift", description="seed")
    cancelled, applied = 0, 0
    for round_ in range(25):
        intents = [queue(ledger, "racing", 1, f"r{round_}-{i}") for i in range(4)]
        barrier = threading.Barrier(2)
        answers: dict[str, object] = {}

        def cancel_all(
            batch: list[_Intent] = intents, into: dict[str, object] = answers, start: threading.Barrier = barrier
        ) -> None:
            start.wait()
            for intent in batch:
                into[intent.id] = ledger._withdraw(keys.user_pk("racing"), intent)

        def combine(start: threading.Barrier = barrier) -> None:
            start.wait()
            for _ in range(20):
                try:
                    combine_once(ledger, "racing")
                    return
                except AssertionError:  # the lease is busy: try again
                    time.sleep(0.01)

        threads = [threading.Thread(target=cancel_all), threading.Thread(target=combine)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        history = {t.id for t in ledger.history("racing")}
        for intent in intents:
            answer = answers[intent.id]
            if answer is None:
                cancelled += 1
            else:
                applied += 1
                assert answer.result().transaction_id in history  # type: ignore[attr-defined]
    usage = [t for t in ledger.history("racing") if t.type == "usage"]
    assert len(usage) == applied and cancelled + applied == 100
    assert ledger.balance("racing") == 1000 - applied
    assert ledger.audit("racing").ok


def test_refusals_in_a_batch_are_402_and_write_nothing(local_tables: LocalTables) -> None:
    ledger = local_tables.ledger()
    ledger.grant("tight", 5, type="gift", description="seed")
    big, small, same_key = (
        queue(ledger, "tight", 4, "a"),
        queue(ledger, "tight", 4, "b"),
        queue(ledger, "tight", 4, "a"),
    )
    decided = combine_once(ledger, "tight")
    assert _posted(decided[big.id].result()).balance == 1
    with pytest.raises(InsufficientCredits) as refused:
        decided[small.id].result()
    assert (refused.value.required, refused.value.balance) == (4, 1)
    replay = _posted(decided[same_key.id].result())  # the same key in the same batch replays the first
    assert replay.transaction_id == _posted(decided[big.id].result()).transaction_id and replay.replayed
    assert [t.amount for t in ledger.history("tight")] == [5, -4]


def test_a_combiner_whose_later_pass_fails_still_answers_its_own_charge(
    local_tables: LocalTables, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its own change landed in the first pass; serving the others then fails: it answers 200."""
    ledger = local_tables.ledger()
    ledger.grant("served", 10, type="gift", description="seed")
    pk = keys.user_pk("served")
    mine = queue(ledger, "served", 2, "mine")
    real_combine, real_queued = ledger._combine, ledger._queued
    reads: list[int] = []

    def combine_then_more_arrive(*args, **kwargs):
        decided = real_combine(*args, **kwargs)
        queue(ledger, "served", 1, f"other-{len(reads)}")  # the queue never empties
        return decided

    def queued_then_throttled(pk_: str):
        reads.append(1)
        if len(reads) > 1:
            raise TemporarilyUnavailable("throttled")
        return real_queued(pk_)

    monkeypatch.setattr(ledger, "_combine", combine_then_more_arrive)
    monkeypatch.setattr(ledger, "_queued", queued_then_throttled)
    assert ledger._take_lease(pk, mine.id)
    outcome = ledger._serve(pk, mine, time.monotonic() + 5)
    assert outcome is not None and _posted(outcome.result()).balance == 8
    assert ledger.balance("served") == 8


def test_a_waiter_whose_store_fails_withdraws_its_change_before_answering(
    local_tables: LocalTables, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Polls fail while another combiner holds the lease: the answer is 503 and the change is
    withdrawn, so no combiner can apply it after the client was told it failed."""
    ledger = local_tables.ledger()
    ledger.sleep = lambda _s: None
    ledger.grant("flaky", 10, type="gift", description="seed")
    pk = keys.user_pk("flaky")
    assert ledger._take_lease(pk, "someone-else")

    def fails(*_a, **_k):
        raise TemporarilyUnavailable("throttled")

    monkeypatch.setattr(ledger, "_get_many", fails)
    snapshot, _ = ledger._queued(pk)
    entry = Entry(-3, "usage", "flaky")
    with pytest.raises(TemporarilyUnavailable):
        ledger._queue(pk, _Op(_Kind.POST, entry, Policy.USAGE, None, "rf"), time.monotonic() + 5, snapshot)
    monkeypatch.undo()
    ledger._release_lease(pk, "someone-else")
    assert combine_once(ledger, "flaky") == {}  # nothing left that could be applied later
    assert ledger.balance("flaky") == 10
