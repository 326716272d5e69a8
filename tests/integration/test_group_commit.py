"""Group commit on DynamoDB Local: a hot balance answered without 503s, a combiner that dies, and a
waiter that gives up while its change is being applied (docs/adr/0004-group-commit.md)."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from credits import keys
from credits.errors import InsufficientCredits, TemporarilyUnavailable
from credits.ledger import Entry, Idempotency, Ledger, Policy, Posted, fingerprint, from_item, to_item
from credits.ledger.intents import Intent, intent_put
from credits.ledger.outcomes import Outcome
from credits.ledger.rules import Change, Kind
from credits.ledger.values import LEASE_MS
from tests.integration.conftest import LocalTables
from tests.support import assert_audited, combine_once, fleet, http_event


def charge_event(user: str, key: str) -> dict:
    return http_event("POST", "/credits/use", sub=user, headers={"Idempotency-Key": key}, body={"action": "search"})


def test_32_containers_600_charges_against_500_all_answered_and_replayable(local_tables: LocalTables) -> None:
    ledger = local_tables.ledger()
    ledger.grant("hot", 500, type="gift", description="seed")

    with fleet("use_credits", 32) as containers:
        first = [(a.status, a.body) for a in containers.hammer([charge_event("hot", f"key-{i}") for i in range(600)])]
        statuses = Counter(status for status, _ in first)
        assert statuses == {200: 500, 402: 100}, statuses

        # every key replays its first answer (a 402 wrote nothing, so it is refused again)
        again = containers.hammer([charge_event("hot", f"key-{i}") for i in range(600)])
    assert [(a.status, a.body) for a in again] == first

    assert_audited(ledger, "hot", balance=0, entries=501)
    assert sorted(body["balance"] for status, body in first if status == 200) == list(range(500))
    assert stored(local_tables, "hot", keys.INTENT) == []  # every pass took the intents it decided off the queue
    # each decision apart, for its waiter to read (TTL removes it); none written for nothing
    decisions = stored(local_tables, "hot", keys.DECIDED)
    assert all("outcome" in d and d["expires_at"] > time.time() for d in decisions)


def stored(local_tables: LocalTables, user: str, prefix: str) -> list[dict[str, Any]]:
    """The user's items under `prefix`, as stored (one consistent Query)."""
    items = local_tables.client.query(  # type: ignore[attr-defined]
        TableName=local_tables.credits,
        KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
        ExpressionAttributeValues=to_item({":pk": keys.user_pk(user), ":prefix": prefix}),
        ConsistentRead=True,
    )["Items"]
    return [from_item(item) for item in items]


def test_a_combiner_that_dies_mid_pass_leaves_every_waiter_answered(local_tables: LocalTables) -> None:
    """The combiner took the lease and read the queue, then died before its transaction.

    Its lease is taken with a clock an hour ahead, so it stays live however long this test takes to see
    the queued changes (renewing it every 50 ms instead failed whenever this thread stalled for a lease,
    on a loaded machine: a waiter took over first); it dies when the test says, its lease lapsed."""
    ledger = local_tables.ledger()
    ledger.grant("orphaned", 100, type="gift", description="seed")
    pk = keys.user_pk("orphaned")
    client: Any = local_tables.client
    dying = Ledger(client, local_tables.credits, clock=lambda: time.time() + 3600)

    def read_the_queue_then_die() -> None:
        give_up = time.monotonic() + 60
        intents: list[Intent] = []
        while not intents and time.monotonic() < give_up:
            _snapshot, intents = dying.group.queued(pk)  # the pass's read...
            if not intents:
                time.sleep(0.05)
        assert intents  # ...saw queued changes; then it dies, before its transaction:
        lapsed = Ledger(client, local_tables.credits, clock=lambda: time.time() - 2 * LEASE_MS / 1000)
        assert lapsed.group.take_lease(pk, "combiner-that-dies")  # its lease ran out a lease ago

    with fleet("use_credits", 8) as containers:
        assert dying.group.take_lease(pk, "combiner-that-dies")  # its lease is live when the charges arrive
        events = [charge_event("orphaned", f"o-{i}") for i in range(30)]
        answers = containers.hammer(events, meanwhile=read_the_queue_then_die)

    assert Counter(status for status, _, _ in answers) == {200: 30}
    assert_audited(ledger, "orphaned", balance=70)
    assert sorted(body["balance"] for _, body, _ in answers) == list(range(70, 100))


def queue(ledger: Ledger, user: str, amount: int, key: str) -> Intent:
    """A change queued as a waiter would queue it (the waiter itself is played by the test)."""
    now = time.time()
    entry = Entry(-amount, "usage", "queued")
    intent = Intent(
        id=str(uuid.uuid4()),
        created_ms=int(now * 1000),
        apply_before_ms=int((now + 30) * 1000),
        change=Change(Kind.POST, entry, Policy.USAGE, Idempotency(key, fingerprint({"key": key})), "rf"),
    )
    ledger.store.write(intent_put(keys.user_pk(user), intent, int(now)))
    return intent


def test_a_waiter_that_cancels_after_its_change_was_applied_answers_the_applied_result(
    local_tables: LocalTables,
) -> None:
    ledger = local_tables.ledger()
    ledger.grant("late", 10, type="gift", description="seed")
    intent = queue(ledger, "late", 3, "k-late")
    decided = combine_once(ledger, "late")
    assert stored(local_tables, "late", keys.INTENT) == []  # the pass took it off the queue ...
    assert [d["sk"] for d in stored(local_tables, "late", keys.DECIDED)] == [keys.decided_sk(intent.id)]  # ... decided
    outcome = ledger.group.withdraw(keys.user_pk("late"), intent)  # gives up just after the combiner committed
    assert outcome is not None and outcome.value is not None
    posted = Posted.of(outcome.result())
    assert posted.transaction_id == Posted.of(decided[intent.id].result()).transaction_id
    assert (posted.amount, posted.balance) == (-3, 7)
    assert ledger.balance("late") == 7 and ledger.audit("late").ok


def test_a_waiter_that_cancels_first_is_never_applied(local_tables: LocalTables) -> None:
    ledger = local_tables.ledger()
    ledger.grant("early", 10, type="gift", description="seed")
    intent = queue(ledger, "early", 3, "k-early")
    assert ledger.group.withdraw(keys.user_pk("early"), intent) is None  # withdrawn: the answer is 503
    assert combine_once(ledger, "early") == {}  # nothing left to decide
    assert stored(local_tables, "early", keys.INTENT) == []
    # the withdrawal's own mark: a put of it still in flight would be taken off, never decided
    (withdrawn,) = stored(local_tables, "early", keys.DECIDED)
    assert (withdrawn["sk"], withdrawn.get("withdrawn"), "outcome" in withdrawn) == (
        keys.decided_sk(intent.id),
        True,
        False,
    )
    assert ledger.balance("early") == 10
    assert [t.type for t in ledger.history("early")] == ["gift"]


class CommitGate:
    """A combiner's DynamoDB client whose first transaction waits for `before_commit`: the test puts
    another operation exactly between the combiner's read and decisions and its commit."""

    def __init__(self, client: Any, before_commit: Callable[[], None]) -> None:
        self._client = client
        self._before_commit: Callable[[], None] | None = before_commit

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def transact_write_items(self, **request: Any) -> Any:
        before, self._before_commit = self._before_commit, None
        if before is not None:
            before()
        return self._client.transact_write_items(**request)


@pytest.mark.parametrize("cancelled_first", [4, 0, 2], ids=["cancel-wins", "combine-wins", "each-its-own"])
def test_cancel_and_combine_racing_exactly_one_wins_and_the_answer_says_which(
    local_tables: LocalTables, cancelled_first: int
) -> None:
    """Waiters give up (withdraw their queued changes) while a combiner decides them, in each order on
    purpose: `cancelled_first` of the four withdraw after the combiner read the queue and decided,
    just before its transaction is sent (the cancel wins: that transaction fails, and the combiner's
    next pass, as `_serve` makes it, decides the others); the rest withdraw just after it landed (the
    combine wins). Each answer says which won, as the balance and the ledger have it."""
    ledger = local_tables.ledger()
    ledger.grant("racing", 1000, type="gift", description="seed")
    pk = keys.user_pk("racing")
    intents = [queue(ledger, "racing", 1, f"r-{i}") for i in range(4)]
    early, late = intents[:cancelled_first], intents[cancelled_first:]
    answers: dict[str, Outcome | None] = {}

    def withdraw(batch: list[Intent]) -> None:
        for intent in batch:
            answers[intent.id] = ledger.group.withdraw(pk, intent)

    gate: Any = CommitGate(local_tables.client, lambda: withdraw(early))
    combiner = Ledger(gate, local_tables.credits)
    decided = combine_once(combiner, "racing")  # the withdrawals of `early` land just before its commit
    if early:
        assert decided == {}  # its transaction failed on the withdrawn changes: nothing of it was written
        decided = combine_once(combiner, "racing")  # its next pass decides what is still queued
    withdraw(late)  # too late: these were applied

    assert set(decided) == {intent.id for intent in late}
    assert [answers[intent.id] for intent in early] == [None] * len(early)  # "nothing was written" (503)
    posted = []
    for intent in late:
        answer = answers[intent.id]
        assert answer is not None  # the applied charge, not a withdrawal
        posted.append(Posted.of(answer.result()))
        assert posted[-1] == Posted.of(decided[intent.id].result())  # the combiner's decision, as it is
    assert [p.amount for p in posted] == [-1] * len(late)
    assert sorted(p.balance for p in posted) == list(range(1000 - len(late), 1000))  # one after another
    history = ledger.history("racing")
    assert [t.type for t in history] == ["gift"] + ["usage"] * len(late)
    assert sorted(t.id for t in history if t.type == "usage") == sorted(p.transaction_id for p in posted)
    assert ledger.balance("racing") == 1000 - len(late)
    assert ledger.audit("racing").ok
    assert combine_once(ledger, "racing") == {}  # nothing left that could be applied later
    assert stored(local_tables, "racing", keys.INTENT) == []
    decisions = {d["sk"]: d for d in stored(local_tables, "racing", keys.DECIDED)}
    assert sorted(decisions) == sorted(keys.decided_sk(intent.id) for intent in intents)
    # the decided carry their outcome; the withdrawn only their waiter's mark
    assert all("outcome" in decisions[keys.decided_sk(intent.id)] for intent in late)
    assert all(decisions[keys.decided_sk(intent.id)].get("withdrawn") for intent in early)
    assert all("outcome" not in decisions[keys.decided_sk(intent.id)] for intent in early)


def test_refusals_in_a_batch_are_402_and_write_nothing(local_tables: LocalTables) -> None:
    ledger = local_tables.ledger()
    ledger.grant("tight", 5, type="gift", description="seed")
    big, small, same_key = (
        queue(ledger, "tight", 4, "a"),
        queue(ledger, "tight", 4, "b"),
        queue(ledger, "tight", 4, "a"),
    )
    decided = combine_once(ledger, "tight")
    assert Posted.of(decided[big.id].result()).balance == 1
    with pytest.raises(InsufficientCredits) as refused:
        decided[small.id].result()
    assert (refused.value.required, refused.value.balance) == (4, 1)
    replay = Posted.of(decided[same_key.id].result())  # the same key in the same batch replays the first
    assert replay.transaction_id == Posted.of(decided[big.id].result()).transaction_id and replay.replayed
    assert [t.amount for t in ledger.history("tight")] == [5, -4]


def test_a_combiner_whose_later_pass_fails_still_answers_its_own_charge(
    local_tables: LocalTables, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its own change landed in the first pass; serving the others then fails: it answers 200."""
    ledger = local_tables.ledger()
    ledger.grant("served", 10, type="gift", description="seed")
    pk = keys.user_pk("served")
    mine = queue(ledger, "served", 2, "mine")
    real_combine, real_queued = ledger.group.combine, ledger.group.queued
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

    monkeypatch.setattr(ledger.group, "combine", combine_then_more_arrive)
    monkeypatch.setattr(ledger.group, "queued", queued_then_throttled)
    assert ledger.group.take_lease(pk, mine.id)
    outcome = ledger.group.serve(pk, mine, time.monotonic() + 5)
    assert outcome is not None and Posted.of(outcome.result()).balance == 8
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
    assert ledger.group.take_lease(pk, "someone-else")

    def fails(*_a, **_k):
        raise TemporarilyUnavailable("throttled")

    monkeypatch.setattr(ledger.store, "get_many", fails)
    snapshot, _ = ledger.group.queued(pk)
    entry = Entry(-3, "usage", "flaky")
    with pytest.raises(TemporarilyUnavailable):
        ledger.group.queue(pk, Change(Kind.POST, entry, Policy.USAGE, None, "rf"), time.monotonic() + 5, snapshot)
    monkeypatch.undo()
    ledger.group.release_lease(pk, "someone-else")
    assert combine_once(ledger, "flaky") == {}  # nothing left that could be applied later
    assert ledger.balance("flaky") == 10
