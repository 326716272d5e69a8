"""A key that was answered "not charged" is never charged later by a change queued before the answer.

The attack: a request queued behind a busy combiner (its intent written) loses its container; the
client's retry with the same Idempotency-Key takes the direct path and is answered 402; later a
combiner pass would apply the orphaned intent, still inside its window, and charge the key the
client was told was not charged. Both orders of the race are forced here (docs/adr/0004-group-commit.md).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from credits import keys
from credits.errors import InsufficientCredits
from credits.ledger import Ledger
from credits.ledger.intents import Intent
from credits.ledger.outcomes import Outcome
from credits.store import Write
from local.containers import Container, ContainerError
from tests.integration.conftest import LocalTables
from tests.support import fleet, http_event

USER = "answered"
KEY = "k-answered"
BUSY = "a-busy-combiner"


def analyze(key: str) -> dict:
    return http_event("POST", "/credits/use", sub=USER, headers={"Idempotency-Key": key}, body={"action": "analyze"})


def queued(ledger: Ledger) -> list[Intent]:
    return ledger.group.queued(keys.user_pk(USER))[1]


def orphan_a_queued_charge(local_tables: LocalTables) -> Intent:
    """R1: analyze (5 credits) under KEY, queued behind a live combiner; its container is killed -9
    once its intent is in the table."""
    ledger = local_tables.ledger()
    pk = keys.user_pk(USER)
    container = Container("use_credits", setup="tests.support:patient")
    try:
        with ThreadPoolExecutor(1) as pool:
            assert ledger.group.take_lease(pk, BUSY)
            pending = pool.submit(container.invoke, analyze(KEY))
            give_up = time.monotonic() + 60
            intents: list[Intent] = []
            while not intents:
                assert time.monotonic() < give_up, "the request never queued"
                assert ledger.group.take_lease(pk, BUSY)  # the busy combiner stays live meanwhile
                intents = queued(ledger)
                time.sleep(0.02)
            container.process.kill()  # the container dies while its change waits in the queue
            with pytest.raises(ContainerError):
                pending.result(timeout=60)
    finally:
        container.close()
    ledger.group.release_lease(pk, BUSY)  # the busy combiner finished without reaching it
    (intent,) = intents
    assert intent.change.idempotency is not None and intent.change.idempotency.key == KEY
    return intent


def serve_the_queue(ledger: Ledger, orphan: Intent) -> Outcome:
    """The user's next contended request (a grant of 1 that finds a live lease) serves the queue:
    its pass takes the orphan off the queue and writes its decision apart (`DECIDED#<id>`)."""
    pk = keys.user_pk(USER)
    assert ledger.group.take_lease(pk, BUSY)
    ledger.grant(USER, 1, type="gift", description="next request", reference_id="next")
    assert queued(ledger) == []
    decision = ledger.group.outcome(pk, orphan)
    assert decision is not None
    return decision


def test_a_key_answered_402_is_never_charged_by_its_orphaned_queued_change(local_tables: LocalTables) -> None:
    ledger = local_tables.ledger()
    ledger.grant(USER, 5, type="gift", description="seed")
    orphan = orphan_a_queued_charge(local_tables)

    hold = ledger.reserve(USER, 5, description="another request holds the balance")
    with fleet("use_credits", 1) as containers:
        status, body, _ = containers.invoke(analyze(KEY))  # the client's retry: direct path
    assert (status, body["error"]["code"], body["error"]["available"]) == (402, "insufficient_credits", 0)
    ledger.release(USER, hold.hold_id)

    decision = serve_the_queue(ledger, orphan)

    assert decision.value is None, decision  # refused: the key was answered 402
    assert int(time.time() * 1000) < orphan.apply_before_ms  # the orphan was still inside its window
    assert ledger.balance(USER) == 6  # 5, nothing charged under the key, plus the next request's 1
    assert [t.type for t in ledger.history(USER)] == ["gift", "gift"]
    audit = ledger.audit(USER)
    assert audit.ok, audit.problems


def test_a_402_written_while_a_combiner_decides_the_orphan_makes_that_pass_decide_again(
    local_tables: LocalTables, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other order: the combiner reads the queue and the markers before the retry's 402 is
    recorded, and commits after it. Its pass must fail and decide the orphan again, as refused."""
    ledger = local_tables.ledger()
    ledger.grant(USER, 5, type="gift", description="seed")
    orphan = orphan_a_queued_charge(local_tables)
    pk = keys.user_pk(USER)
    hold = ledger.reserve(USER, 5, description="another request holds the balance")

    combiner = local_tables.ledger()
    markers_read, refusal_recorded = threading.Event(), threading.Event()
    read_markers = combiner.group.markers

    def markers_then_wait(pk_: str, intents: list[Intent]) -> dict:
        found = read_markers(pk_, intents)
        markers_read.set()
        assert refusal_recorded.wait(60)
        return found

    monkeypatch.setattr(combiner.group, "markers", markers_then_wait)
    passes: list[object] = []

    def one_pass() -> None:
        assert combiner.group.take_lease(pk, BUSY)
        snapshot, intents = combiner.group.queued(pk)
        now_ms = int(time.time() * 1000)
        assert snapshot.balance - snapshot.held(now_ms) == 5  # the hold is released: the orphan fits
        passes.append(combiner.group.combine(pk, snapshot, intents, BUSY))

    retry = local_tables.ledger()
    remember = retry.committer._remember

    def release_then_race(item: Write) -> bool:
        """The retry decided 402 against the hold; before it records the refusal, the hold is released
        and a combiner reads the queue."""
        ledger.release(USER, hold.hold_id)
        racer.start()
        assert markers_read.wait(60)
        recorded = remember(item)
        refusal_recorded.set()
        return recorded

    monkeypatch.setattr(retry.committer, "_remember", release_then_race)
    racer = threading.Thread(target=one_pass)
    with pytest.raises(InsufficientCredits):  # the same request as the orphan's, retried
        retry.charge(USER, 5, description="analyze", idempotency=orphan.change.idempotency)
    racer.join(60)
    assert passes == [None]  # the pass lost: the refusal's marker appeared under it

    assert serve_the_queue(ledger, orphan).value is None  # decided again: refused
    assert ledger.balance(USER) == 6
    assert [t.type for t in ledger.history(USER)] == ["gift", "gift"]
    assert ledger.audit(USER).ok


def test_an_orphan_applied_before_the_retry_makes_the_retry_answer_the_charge(local_tables: LocalTables) -> None:
    """The remaining order: the queue is served first, so the key WAS charged, and the retry says so."""
    ledger = local_tables.ledger()
    ledger.grant(USER, 5, type="gift", description="seed")
    orphan = orphan_a_queued_charge(local_tables)
    applied = serve_the_queue(ledger, orphan)
    assert applied.value is not None and applied.value["amount"] == -5
    assert ledger.balance(USER) == 1

    with fleet("use_credits", 1) as containers:
        status, body, headers = containers.invoke(analyze(KEY))
    usage = [t for t in ledger.history(USER) if t.type == "usage"]
    assert (status, headers.get("Idempotent-Replayed")) == (200, "true")
    assert (body["charged"], body["transactionId"]) == (5, usage[0].id)
    assert applied.value["transaction_id"] == usage[0].id  # the retry answered the orphan's decision
    assert len(usage) == 1
    assert ledger.audit(USER).ok
