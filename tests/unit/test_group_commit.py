"""Group commit's items on moto: a pass takes each intent it decides off the queue and writes the
decision apart (`DECIDED#<id>`); a waiter reads it there and is done; a resent intent is never
decided twice; intents and decisions of the earlier version are honoured; a container that found an
account contended queues its next change there at once (docs/adr/0004-group-commit.md)."""

from __future__ import annotations

import uuid
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse, HTTPHeaders

from credits import keys
from credits.errors import InsufficientCredits, TemporarilyUnavailable
from credits.ledger import Entry, Ledger, Policy, Posted, from_item, to_item
from credits.ledger import intents as intent_items
from credits.ledger.group import poll_pause
from credits.ledger.intents import Intent, intent_put
from credits.ledger.rules import Change, Kind
from credits.ledger.values import CONTENDED_SECONDS, MAX_POLL_SECONDS, POLL_SECONDS
from credits.store import NEW, Put, Update, absent, exists
from tests.support import ManualClock, combine_once

USER = "gc"
PK = keys.user_pk(USER)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def ledger(moto_dynamodb: Any, clock: ManualClock) -> Ledger:
    mono = ManualClock(0.0)  # the ledger's monotonic clock, moved by its sleeps (no real waiting)

    def sleep(seconds: float) -> None:
        mono.now += seconds
        clock.now += seconds

    return Ledger(moto_dynamodb, "credits", clock=clock, sleep=sleep, monotonic=mono)


def calls_of(client: Any) -> list[str]:
    """Every DynamoDB operation `client` sends from now on, by name."""
    seen: list[str] = []
    client.meta.events.register("before-parameter-build.dynamodb", lambda model, **_: seen.append(model.name))
    return seen


def stored(client: Any, prefix: str) -> list[dict[str, Any]]:
    items = client.query(
        TableName="credits",
        KeyConditionExpression="pk = :pk AND begins_with(sk, :p)",
        ExpressionAttributeValues=to_item({":pk": PK, ":p": prefix}),
        ConsistentRead=True,
    )["Items"]
    return [from_item(i) for i in items]


def charge_intent(clock: ManualClock, amount: int) -> Intent:
    """A queued charge with no idempotency key and no reference: only the queue's own rules keep it
    once. Its waiter's window is 30 s."""
    now = clock.now
    change = Change(Kind.POST, Entry(-amount, "usage", "queued"), Policy.USAGE)
    return Intent(str(uuid.uuid4()), int(now * 1000), int((now + 30) * 1000), change)


def test_a_pass_takes_its_intents_off_the_queue_and_writes_each_decision_apart(
    ledger: Ledger, moto_dynamodb: Any, clock: ManualClock
) -> None:
    ledger.grant(USER, 10, type="gift", description="seed")
    first = charge_intent(clock, 4)
    clock.now += 0.01  # queued in this order
    second = charge_intent(clock, 7)
    for intent in (first, second):
        ledger.group.put_intent(PK, intent, int(clock.now))
    assert [i["format"] for i in stored(moto_dynamodb, keys.INTENT)] == [intent_items.FORMAT] * 2

    decided = combine_once(ledger, USER)

    assert stored(moto_dynamodb, keys.INTENT) == []  # the queue holds only undecided changes
    apart = {i["sk"]: i for i in stored(moto_dynamodb, keys.DECIDED)}
    assert set(apart) == {keys.decided_sk(first.id), keys.decided_sk(second.id)}
    assert all(i["expires_at"] > clock.now for i in apart.values())  # TTL removes them
    assert Posted.of(decided[first.id].result()).balance == 6
    with pytest.raises(InsufficientCredits):
        decided[second.id].result()
    assert intent_items.decision(apart[keys.decided_sk(first.id)]) == decided[first.id]
    assert [t.amount for t in ledger.history(USER)] == [10, -4]
    assert ledger.audit(USER).ok


def test_a_resent_intent_is_taken_off_the_queue_by_the_next_pass_never_decided_twice(
    ledger: Ledger, moto_dynamodb: Any, clock: ManualClock
) -> None:
    """The intent's put landed, its answer was lost, and the resend landed again after a pass had
    decided it and taken it off the queue: the next pass finds its decision and only deletes it."""
    ledger.grant(USER, 10, type="gift", description="seed")
    intent = charge_intent(clock, 3)
    ledger.group.put_intent(PK, intent, int(clock.now))
    decided = combine_once(ledger, USER)
    assert Posted.of(decided[intent.id].result()).balance == 7
    (decision,) = stored(moto_dynamodb, keys.DECIDED)

    ledger.group.put_intent(PK, intent, int(clock.now))  # the resend: the intent is queued again
    assert [i.id for i in ledger.group.queued(PK)[1]] == [intent.id]
    clock.now += 1
    assert combine_once(ledger, USER) == {}  # nothing decided again ...

    assert stored(moto_dynamodb, keys.INTENT) == []  # ... and the resent intent is gone
    assert stored(moto_dynamodb, keys.DECIDED) == [decision]  # its decision as the first pass wrote it
    assert ledger.balance(USER) == 7
    assert [t.amount for t in ledger.history(USER)] == [10, -3]  # one charge
    assert ledger.audit(USER).ok
    assert ledger.group.outcome(PK, intent) == decided[intent.id]  # what its waiter answers


def test_a_waiter_that_gives_up_on_a_resent_intent_answers_its_decision(
    ledger: Ledger, moto_dynamodb: Any, clock: ManualClock
) -> None:
    """The resend of the intent's put landed after the pass that decided (and applied) it; its waiter
    reaches its deadline (or its store fails) before a poll finds the decision, and withdraws: the
    withdrawal deletes the resent copy, but the change WAS applied: the answer must be the decision,
    never "nothing was written"."""
    ledger.grant(USER, 10, type="gift", description="seed")
    intent = charge_intent(clock, 3)
    ledger.group.put_intent(PK, intent, int(clock.now))
    decided = combine_once(ledger, USER)
    ledger.group.put_intent(PK, intent, int(clock.now))  # the resend, after the pass took it off

    outcome = ledger.group.withdraw(PK, intent)

    assert [t.amount for t in ledger.history(USER)] == [10, -3]  # the change was applied ...
    assert outcome == decided[intent.id]  # ... so the answer is its decision, not a 503


def test_a_charge_whose_intent_put_was_resent_after_its_pass_is_never_answered_not_written(
    ledger: Ledger, moto_dynamodb: Any, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The waiter's intent put lands; its answer is lost, and while the store resends it a combiner
    (another container) decides and applies the charge; the resend lands again. The waiter's first
    poll then fails (a throttled read): it withdraws, and must answer the charge, not "nothing
    written" (its withdrawal deletes the resent copy, then reads the decision)."""
    ledger.grant(USER, 10, type="gift", description="seed")
    combiner = Ledger(boto3.client("dynamodb"), "credits", clock=clock)
    assert combiner.group.take_lease(PK, "combiner")
    seen, _ = ledger.group.queued(PK)
    write = ledger.store.write

    def lost_answer_resent(op: Any, **kwargs: Any) -> None:
        write(op, **kwargs)
        if isinstance(op, Put) and op.key[1].startswith(keys.INTENT):
            snapshot, intents = combiner.group.queued(PK)
            assert combiner.group.combine(PK, snapshot, intents, "combiner")  # decided, off the queue
            write(op, **kwargs)  # the resend (its condition holds again: the intent is gone)

    get_many, polls = ledger.store.get_many, []

    def poll_throttled(*args: Any) -> Any:
        polls.append(args)
        if len(polls) == 1:
            raise TemporarilyUnavailable("The credits store is unavailable. Please retry.")
        return get_many(*args)  # the store is back

    monkeypatch.setattr(ledger.store, "write", lost_answer_resent)
    monkeypatch.setattr(ledger.store, "get_many", poll_throttled)
    change = Change(Kind.POST, Entry(-3, "usage", "queued"), Policy.USAGE)
    try:
        result = ledger.group.queue(PK, change, ledger.ctx.monotonic() + 5, seen)
    finally:
        monkeypatch.undo()
        assert [t.amount for t in ledger.history(USER)] == [10, -3]  # charged, whatever it answers
    assert (result["amount"], result["balance_after"]) == (-3, 7)


def test_a_waiter_whose_intent_never_landed_withdraws_and_nothing_is_written(
    ledger: Ledger, moto_dynamodb: Any, clock: ManualClock
) -> None:
    """The intent's put failed (it never landed): the withdrawal finds nothing to delete and no
    decision, so the answer is "nothing was written", and no pass can apply it later."""
    ledger.grant(USER, 10, type="gift", description="seed")
    intent = charge_intent(clock, 3)
    assert ledger.group.withdraw(PK, intent) is None
    assert combine_once(ledger, USER) == {}
    assert ledger.balance(USER) == 10 and [t.amount for t in ledger.history(USER)] == [10]


@pytest.mark.parametrize("queued_first", [False, True], ids=["lands-after-the-withdrawal", "copy-lands-after"])
def test_a_put_that_lands_after_its_withdrawal_is_never_applied(
    ledger: Ledger, moto_dynamodb: Any, clock: ManualClock, queued_first: bool
) -> None:
    """The waiter's put is held up in flight (a lost answer, or the store gave up on it) and the
    waiter withdraws, answering "nothing was written"; then the put lands (or, when the first copy
    was queued and withdrawn, a resend lands again). The withdrawal's own `DECIDED#<id>` makes the
    next pass take that intent off the queue undecided: nothing is charged, ever."""
    ledger.grant(USER, 10, type="gift", description="seed")
    intent = charge_intent(clock, 3)
    if queued_first:
        ledger.group.put_intent(PK, intent, int(clock.now))
    assert ledger.group.withdraw(PK, intent) is None  # answered: 503, nothing was written
    ledger.group.put_intent(PK, intent, int(clock.now))  # the put in flight lands now
    assert [i.id for i in ledger.group.queued(PK)[1]] == [intent.id]
    assert combine_once(ledger, USER) == {}  # taken off, not decided
    assert stored(moto_dynamodb, keys.INTENT) == []
    assert ledger.balance(USER) == 10 and [t.amount for t in ledger.history(USER)] == [10]
    assert ledger.audit(USER).ok


def test_a_waiter_reads_its_decision_apart_and_makes_no_clean_up_call(
    ledger: Ledger, moto_dynamodb: Any, clock: ManualClock
) -> None:
    """Queued behind a live combiner, the waiter sleeps; meanwhile the combiner (another container)
    decides it. Its one poll finds `DECIDED#<id>` and it answers: its intent write and that poll are
    all it sent (no delete: the pass took the intent off the queue; TTL removes the decision)."""
    ledger.grant(USER, 10, type="gift", description="seed")
    combiner = Ledger(boto3.client("dynamodb"), "credits", clock=clock)
    assert combiner.group.take_lease(PK, "combiner")
    seen, _ = ledger.group.queued(PK)
    assert seen.combining(int(clock.now * 1000))
    change = Change(Kind.POST, Entry(-3, "usage", "queued"), Policy.USAGE)

    def a_pass_meanwhile(seconds: float) -> None:
        snapshot, intents = combiner.group.queued(PK)
        if intents:
            assert combiner.group.combine(PK, snapshot, intents, "combiner")
        clock.now += seconds

    ledger.sleep = a_pass_meanwhile
    calls = calls_of(moto_dynamodb)
    result = ledger.group.queue(PK, change, ledger.ctx.monotonic() + 5, seen)

    assert (result["amount"], result["balance_after"]) == (-3, 7)
    assert calls == ["PutItem", "BatchGetItem"]  # the intent, one poll: no clean-up call
    assert stored(moto_dynamodb, keys.INTENT) == []
    (decision,) = stored(moto_dynamodb, keys.DECIDED)
    assert decision["outcome"]["transaction_id"] == result["transaction_id"]
    assert [t.amount for t in ledger.history(USER)] == [10, -3]


def earlier_intent(intent: Intent, now: int) -> Put:
    """An intent as the earlier version wrote it: no `format` (its combiners decide it in place)."""
    item = dict(intent_put(PK, intent, now).item)
    del item["format"]
    return Put(item, NEW)


def test_an_earlier_versions_intent_is_left_undecided_and_its_waiter_can_withdraw_it(
    ledger: Ledger, moto_dynamodb: Any, clock: ManualClock
) -> None:
    ledger.grant(USER, 10, type="gift", description="seed")
    old, new = charge_intent(clock, 2), charge_intent(clock, 3)
    ledger.store.write(earlier_intent(old, int(clock.now)))
    ledger.group.put_intent(PK, new, int(clock.now))
    assert [i.id for i in ledger.group.queued(PK)[1]] == [new.id]  # the old one is not ours to decide

    assert set(combine_once(ledger, USER)) == {new.id}
    [left] = stored(moto_dynamodb, keys.INTENT)
    assert left["intent_id"] == old.id and "outcome" not in left  # undecided, still queued
    assert [d["sk"] for d in stored(moto_dynamodb, keys.DECIDED)] == [keys.decided_sk(new.id)]

    assert ledger.group.withdraw(PK, old) is None  # withdrawn: its answer is 503, nothing written
    assert stored(moto_dynamodb, keys.INTENT) == []
    assert combine_once(ledger, USER) == {}
    assert [t.amount for t in ledger.history(USER)] == [10, -3]
    assert ledger.audit(USER).ok


def test_a_decision_an_earlier_combiner_wrote_onto_the_intent_is_read_by_a_new_waiter(
    ledger: Ledger, moto_dynamodb: Any, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """During a deploy a combiner of the earlier version decides a new waiter's intent: it writes the
    decision onto the intent (and leaves it queued). The new waiter reads it there, in a poll or
    when it withdraws, and no new combiner decides that intent again."""
    ledger.grant(USER, 10, type="gift", description="seed")
    intent = charge_intent(clock, 3)
    ledger.group.put_intent(PK, intent, int(clock.now))

    def onto_the_intent(pk: str, queued: Intent, outcome: Any, now: int) -> list[Update]:
        # the earlier version's `decision_update`
        cond = exists("pk") & absent("outcome")
        return [Update((pk, queued.sk), set={"outcome": outcome.attributes()}, condition=cond)]

    with monkeypatch.context() as earlier:
        earlier.setattr(intent_items, "decision_writes", onto_the_intent)
        decided = combine_once(ledger, USER)
    assert Posted.of(decided[intent.id].result()).balance == 7
    assert stored(moto_dynamodb, keys.DECIDED) == []

    assert ledger.group.take_lease(PK, "busy")  # a live combiner: the waiter polls
    seen, queued = ledger.group.queued(PK)
    assert queued == []  # decided: out of the queue's reads
    calls = calls_of(moto_dynamodb)
    outcome = ledger.group.wait(PK, intent, ledger.ctx.monotonic() + 5, seen)
    assert outcome == decided[intent.id] and calls == ["BatchGetItem"]
    assert ledger.group.withdraw(PK, intent) == decided[intent.id]  # a withdrawal finds it too
    ledger.group.release_lease(PK, "busy")

    assert combine_once(ledger, USER) == {}
    assert [t.amount for t in ledger.history(USER)] == [10, -3]
    assert ledger.audit(USER).ok


def conflict_once(client: Any) -> None:
    """The next TransactWriteItems is cancelled by a conflict (another writer won the race)."""
    reasons = [{"Code": "TransactionConflict"}, {"Code": "None"}]
    parsed = {"Error": {"Code": "TransactionCanceledException", "Message": "injected"}, "CancellationReasons": reasons}
    pending = [(AWSResponse("http://dynamodb.local", 400, HTTPHeaders(), None), parsed)]
    client.meta.events.register(
        "before-call.dynamodb.TransactWriteItems", lambda **_: pending.pop() if pending else None
    )


def test_a_container_that_lost_a_race_queues_its_next_change_at_once_for_a_second(
    ledger: Ledger, moto_dynamodb: Any
) -> None:
    ledger.grant(USER, 100, type="gift", description="seed")
    calls = calls_of(moto_dynamodb)
    ledger.charge(USER, 1, description="fresh")
    assert calls == ["GetItem", "TransactWriteItems"]  # not contended: a read and one transaction

    calls.clear()
    conflict_once(moto_dynamodb)
    assert ledger.charge(USER, 2, description="loses its race").balance == 97
    assert calls[:3] == ["GetItem", "TransactWriteItems", "PutItem"]  # the direct attempt lost: queued

    calls.clear()
    assert ledger.charge(USER, 3, description="contended").balance == 94
    assert calls[0] == "PutItem"  # queued at once: no direct read, no direct transaction
    assert calls.count("TransactWriteItems") == 1  # the pass that decided it

    ledger.sleep(CONTENDED_SECONDS + 0.1)  # a quiet second later the account is not contended
    calls.clear()
    assert ledger.charge(USER, 4, description="quiet again").balance == 90
    assert calls == ["GetItem", "TransactWriteItems"]
    assert [t.amount for t in ledger.history(USER)] == [100, -1, -2, -3, -4]
    assert ledger.audit(USER).ok


def test_a_waiters_polls_follow_the_passes_within_bounds() -> None:
    """A decision comes once per pass: the first look waits out more than a pass (the one in flight,
    then the one that reads the intent), the next ones come sooner; never faster than POLL_SECONDS,
    never slower than MAX_POLL_SECONDS; passes not known yet: POLL_SECONDS, then twice that."""
    assert (poll_pause(0, 0), poll_pause(0, 1), poll_pause(0, 9)) == (POLL_SECONDS, 2 * POLL_SECONDS, 2 * POLL_SECONDS)
    for pass_ms in (1, 40, 120, 300, 900, 5000):
        for polls in range(4):
            assert POLL_SECONDS <= poll_pause(pass_ms, polls) <= MAX_POLL_SECONDS
    assert poll_pause(200, 0) > 0.2 > poll_pause(200, 1)
