"""A refusal under an Idempotency-Key is remembered for a minute, then the key is free again
(the rule of docs/adr/0004-group-commit.md: nothing queued before a 402 may charge the key after it)."""

from __future__ import annotations

import pytest

from credits import keys
from credits.errors import IdempotencyKeyReused, InsufficientCredits, TooManyHolds
from credits.ledger import REFUSAL_MEMORY_SECONDS, Idempotency, Ledger, fingerprint
from credits.ledger.group import Intent
from credits.ledger.rules import Change, Kind
from tests.support import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def ledger(moto_dynamodb, clock: ManualClock) -> Ledger:
    return Ledger(moto_dynamodb, "credits", clock=clock, sleep=lambda _s: None)


def key(name: str, **request: object) -> Idempotency:
    return Idempotency(name, fingerprint({"route": "POST /credits/use", **request}))


def test_a_402_under_a_key_is_replayed_for_a_minute_then_the_key_can_succeed(
    ledger: Ledger, clock: ManualClock
) -> None:
    ledger.grant("ada", 3, type="gift", description="seed")
    analyze = key("k-1", action="analyze")
    with pytest.raises(InsufficientCredits):
        ledger.charge("ada", 5, description="analyze", idempotency=analyze)

    ledger.grant("ada", 100, type="purchase", description="Starter", reference_id="pi_1")
    clock.now += REFUSAL_MEMORY_SECONDS - 1
    with pytest.raises(InsufficientCredits) as replayed:  # the same answer, though credits came
        ledger.charge("ada", 5, description="analyze", idempotency=analyze)
    assert (replayed.value.required, replayed.value.balance) == (5, 3)  # as it was answered
    with pytest.raises(IdempotencyKeyReused):  # another request under the key meanwhile
        ledger.charge("ada", 1, description="search", idempotency=key("k-1", action="search"))

    clock.now += 2  # the minute is over: the key is free
    posted = ledger.charge("ada", 5, description="analyze", idempotency=analyze)
    assert (posted.amount, posted.balance, posted.replayed) == (-5, 98, False)
    again = ledger.charge("ada", 5, description="analyze", idempotency=analyze)
    assert (again.transaction_id, again.replayed) == (posted.transaction_id, True)
    assert [t.type for t in ledger.history("ada")] == ["gift", "purchase", "usage"]
    assert ledger.audit("ada").ok


def test_a_refused_reserve_under_a_key_is_remembered_too(
    ledger: Ledger, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("credits.ledger.rules.MAX_OPEN_HOLDS", 1)
    ledger.grant("bo", 10, type="gift", description="seed")
    first = ledger.reserve("bo", 1, description="one")
    hold = Idempotency("h-2", fingerprint({"paywall": "POST /reports"}))
    with pytest.raises(TooManyHolds):
        ledger.reserve("bo", 1, description="two", idempotency=hold)
    ledger.release("bo", first.hold_id)
    with pytest.raises(TooManyHolds):  # replayed while remembered
        ledger.reserve("bo", 1, description="two", idempotency=hold)
    clock.now += REFUSAL_MEMORY_SECONDS + 1
    assert ledger.reserve("bo", 1, description="two", idempotency=hold).amount == 1
    assert ledger.account("bo").held == 1


def test_a_released_holds_key_is_free_for_a_new_request_but_never_for_an_orphan_queued_before(
    ledger: Ledger, clock: ManualClock
) -> None:
    """A reserve whose container died right after queueing it (its intent orphaned), retried and
    answered directly, then released: the release frees the key for a NEW request, but a combiner
    that finds the orphan afterwards refuses it instead of opening a second hold for the same
    request (found by the simulator, seed 1)."""
    ledger.grant("cy", 10, type="gift", description="seed")
    job = Idempotency("h-job", fingerprint({"paywall": "POST /jobs"}))
    change = Change(Kind.RESERVE, idempotency=job, amount=4, ttl_seconds=300, description="job")
    pk, now_ms = keys.user_pk("cy"), int(clock.now * 1000)
    group = ledger.committer.group
    orphan = Intent("orphan", now_ms, now_ms + 14_000, change)
    group.put_intent(pk, orphan, int(clock.now))  # ... and the container died

    clock.now += 1
    first = ledger.reserve("cy", 4, description="job", idempotency=job)  # the client's retry
    ledger.release("cy", first.hold_id)
    clock.now += 1
    assert group.take_lease(pk, "combiner")
    state, queued = group.queued(pk)
    decided = group.combine(pk, state, queued, "combiner")
    group.release_lease(pk, "combiner")
    assert decided is not None and decided["orphan"].error == "temporarily_unavailable"
    stored = group.outcome(pk, orphan)  # off the queue, its decision apart for its (gone) waiter
    assert group.queued(pk)[1] == [] and stored is not None and stored.error == "temporarily_unavailable"
    assert ledger.holds("cy") == [] and ledger.account("cy").available == 10  # no second hold

    again = ledger.reserve("cy", 4, description="job", idempotency=job)  # a new request: free
    assert (again.replayed, again.hold_id != first.hold_id, ledger.account("cy").available) == (False, True, 6)
