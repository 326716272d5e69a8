"""Group commit: a contended balance's changes, queued and decided in batches by one combiner.

One writer at a time holds the combiner lease (on the account item) and decides queued changes
(intents) in passes, one transaction per pass, by the same rules as a direct change; the others
poll for their decision and take the lease over if it lapses (a combiner that died). Exactly one of
"decided" and "withdrawn" wins: a pass takes an intent off the queue (writing its decision apart,
`DECIDED#<id>`) only if it is still there, and a waiter that gives up deletes it only if it is.
A container that queued for an account recently queues its next change there at once: under
contention the direct attempt would only lose. The reasoning, and the
measurements that sized the lease and polls: docs/adr/0004-group-commit.md, docs/design.md section 11.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from credits import keys
from credits.errors import CreditsError, TemporarilyUnavailable
from credits.ledger import codec
from credits.ledger import intents as intent_items
from credits.ledger.account import AccountState
from credits.ledger.context import Context
from credits.ledger.intents import Intent
from credits.ledger.outcomes import Outcome
from credits.ledger.rules import Change, Work, decide
from credits.ledger.values import (
    CONTENDED_SECONDS,
    INTENT_GRACE_SECONDS,
    LEASE_MS,
    MAX_INTENTS_PER_PASS,
    MAX_LEASE_MS,
    MAX_POLL_SECONDS,
    MAX_TRANSACTION_ITEMS,
    POLL_SECONDS,
    SERVE_AFTER_OWN_SECONDS,
)
from credits.store import ConditionFailed, Write


def lease_ms(pass_ms: int) -> int:
    """How long a combiner's lease lasts, given how long its passes take (MAX_LEASE_MS at most, so
    a dead combiner is still replaced well within its waiters' time budget)."""
    return min(MAX_LEASE_MS, max(LEASE_MS, 3 * pass_ms))


class GroupCommit:
    """The queue of one store: queue a change and wait for its decision, serving as the combiner."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        # accounts this container found contended lately: until when (monotonic), and how long a pass took
        self._contended: dict[str, tuple[float, int]] = {}

    def contended(self, pk: str) -> int | None:
        """How long a combiner's pass takes on `pk`, if this container found it contended in the last
        CONTENDED_SECONDS (then a change is queued at once: a direct attempt would only lose); None
        otherwise."""
        seen = self._contended.get(pk)
        if seen is None:
            return None
        if seen[0] < self.ctx.monotonic():
            del self._contended[pk]
            return None
        return seen[1]

    def found_contended(self, pk: str, pass_ms: int) -> None:
        """Another writer was on `pk` (a live combiner, a lost race, or others queued with us)."""
        if len(self._contended) > 1000:  # a container serves many users: forget the stale ones
            now = self.ctx.monotonic()
            self._contended = {k: v for k, v in self._contended.items() if v[0] >= now}
        self._contended[pk] = (self.ctx.monotonic() + CONTENDED_SECONDS, pass_ms)

    def queue(
        self, pk: str, change: Change, deadline: float, seen: AccountState | None, pass_ms: int | None = None
    ) -> Mapping[str, Any]:
        """Queue a change as an intent and wait until the combiner (possibly us) decides it. `seen`:
        the account as the direct path read it (None: not read, or stale); `pass_ms`: queued at once
        on an account found contended, whose passes take that long (a combiner is presumed live)."""
        ctx = self.ctx
        now = ctx.clock()
        remaining = max(deadline - ctx.monotonic(), 0.0)
        # a crashed waiter's intent is not applied long after its client was answered: past
        # `apply_before_ms` a combiner refuses it instead
        intent = Intent(ctx.new_id(), int(now * 1000), int((now + remaining + INTENT_GRACE_SECONDS) * 1000), change)
        try:
            self.put_intent(pk, intent, int(now))
            outcome = self.wait(pk, intent, deadline, seen, pass_ms)
        except Exception as failure:
            # Whatever went wrong, the client must not be told "not charged" while the intent can
            # still be applied: withdraw it, or answer the decision it already has.
            try:
                outcome = self.withdraw(pk, intent)
            except Exception:  # noqa: BLE001 - the withdrawal failed too: the outcome is unknown
                raise TemporarilyUnavailable(
                    "The outcome of this change is unknown. Retry with the same Idempotency-Key: "
                    "the change may have landed."
                ) from failure
            if outcome is None:  # withdrawn: nothing was written, nothing will be
                if isinstance(failure, CreditsError):
                    raise
                raise TemporarilyUnavailable(
                    "The credits store failed; nothing was written. Please retry."
                ) from failure
        if outcome is None:
            raise TemporarilyUnavailable("The balance is busy; nothing was written. Please retry.")
        return outcome.result()

    def put_intent(self, pk: str, intent: Intent, now: int) -> None:
        with contextlib.suppress(ConditionFailed):  # a resend of ours after a lost answer
            self.ctx.store.write(intent_items.intent_put(pk, intent, now))

    def wait(
        self, pk: str, intent: Intent, deadline: float, seen: AccountState | None, pass_ms: int | None = None
    ) -> Outcome | None:
        """Our intent's decision, serving as the combiner when the lease is free; None when we
        withdrew it at our deadline."""
        ctx = self.ctx
        if seen is not None:
            try_lease, pass_ms = not seen.combining(ctx.now_ms()), seen.combiner_pass_ms
        else:  # not read: take the lease (a lost race) unless a combiner is presumed live (`pass_ms`)
            try_lease, pass_ms = pass_ms is None, pass_ms or 0
        polls = 0
        while True:
            if try_lease and self.take_lease(pk, intent.id, lease_ms(pass_ms)):
                outcome = self.serve(pk, intent, deadline)
                if outcome is not None:
                    return outcome
            if ctx.monotonic() > deadline:
                return self.withdraw(pk, intent)
            ctx.sleep(ctx.uniform(0.8, 1.2) * poll_pause(pass_ms, polls))
            polls += 1
            # our decision, our intent and the account in one read: decided, or whether the combiner is gone
            found = ctx.store.get_many(pk, [keys.decided_sk(intent.id), intent.sk, keys.ACCOUNT])
            outcome = self._decided(pk, intent, found)
            account = codec.read_account(found.get(keys.ACCOUNT))
            combining = account.combining(ctx.now_ms())
            if combining and account.combiner != intent.id:
                self.found_contended(pk, account.combiner_pass_ms)
            if outcome is not None:
                return outcome
            try_lease, pass_ms = not combining, account.combiner_pass_ms

    def take_lease(self, pk: str, owner: str, lease: int = LEASE_MS) -> bool:
        """Become the combiner if nobody is (or the last one's lease lapsed), for `lease` ms."""
        try:
            self.ctx.store.write(codec.lease_take(pk, owner, self.ctx.now_ms(), lease))
        except ConditionFailed:
            return False  # held by a live combiner (maybe committing right now)
        return True

    def renew_lease(self, pk: str, owner: str, lease: int) -> bool:
        """Extend our lease before a transaction that would otherwise outlast it (a slow pass);
        False when it is no longer ours."""
        try:
            self.ctx.store.write(codec.lease_renew(pk, owner, self.ctx.now_ms() + lease), conflicts=True)
        except ConditionFailed:
            return False
        return True

    def release_lease(self, pk: str, owner: str) -> None:
        """Best effort: a lease we fail to release lapses by itself within its length."""
        with contextlib.suppress(CreditsError, ConditionFailed):
            self.ctx.store.write(codec.lease_release(pk, owner))

    def serve(self, pk: str, mine: Intent, deadline: float) -> Outcome | None:
        """Hold the lease and decide queued changes, pass after pass, until ours is decided and the
        queue is empty, or we served a little longer than our own change needed, or our deadline
        came. Our outcome, or None if it is not decided (the lease lapsed, or the deadline)."""
        ctx = self.ctx
        outcome: Outcome | None = None
        stop_at = deadline
        last_pass_ms = 0
        while True:
            started = ctx.monotonic()
            try:
                state, intents = self.queued(pk)
                if state.combiner != mine.id or not state.combining(ctx.now_ms()):
                    return outcome  # the lease lapsed and was taken over
                if outcome is None and all(i.id != mine.id for i in intents):
                    # decided before we held the lease (or beyond this read): read it and serve briefly
                    outcome = self.outcome(pk, mine)
                    if outcome is not None:
                        stop_at = min(stop_at, ctx.monotonic() + SERVE_AFTER_OWN_SECONDS)
                if not intents or ctx.monotonic() > stop_at:
                    self.release_lease(pk, mine.id)
                    return outcome
                decided = self.combine(pk, state, intents, mine.id, last_pass_ms, started)
                last_pass_ms = int((ctx.monotonic() - started) * 1000)
                if len(intents) > 1:  # others queued with us: the account is contended
                    self.found_contended(pk, last_pass_ms)
                if decided is not None and mine.id in decided:
                    outcome = decided[mine.id]
                    stop_at = min(stop_at, ctx.monotonic() + SERVE_AFTER_OWN_SECONDS)
                # decided is None: a direct write moved the account; re-read and decide again
            except Exception:
                if outcome is None:
                    raise
                # Serving others failed after ours was decided: ours stands (the lease lapses).
                return outcome

    def combine(
        self,
        pk: str,
        state: AccountState,
        intents: list[Intent],
        owner: str,
        last_pass_ms: int = 0,
        started: float | None = None,
    ) -> dict[str, Outcome] | None:
        """One combiner pass: decide as many queued intents as fit in ONE transaction, in order, by
        the same rules as a direct change, and commit them together, guarded by the account's seq
        and holds and by our lease (which it extends). The decisions by intent id; None when the
        account moved first."""
        ctx = self.ctx
        read = self.markers(pk, intents)
        now = ctx.clock()
        resent = {sk for sk in read if sk.startswith(keys.DECIDED)}
        found = codec.live({sk: item for sk, item in read.items() if sk not in resent}, now)
        now_ms = int(now * 1000)
        # How long a pass takes: the whole last one; on a first pass, twice its reads so far (its
        # transaction is still to come), or half the last combiner's (so an estimate decays).
        so_far = 0 if started is None else int((ctx.monotonic() - started) * 1000)
        pass_ms = last_pass_ms or max(2 * so_far, state.combiner_pass_ms // 2)
        if state.combiner_until - now_ms < max(pass_ms, LEASE_MS // 2) and not self.renew_lease(
            pk, owner, lease_ms(pass_ms)
        ):
            return None  # our reads took most of the lease, and a waiter took it over meanwhile
        work = Work.of(state, now)
        decision = ctx.decision(now)
        work.settle(decision)  # what the account owed first (lots that expired), written with the pass
        writes: list[Write] = []
        touched: set[str] = set()
        decided: dict[str, Outcome] = {}
        for intent in intents:
            change = intent.change
            owed = len(codec.writes(pk, work.settled, now))
            if 1 + owed + len(writes) + 2 + change.size() > MAX_TRANSACTION_ITEMS:
                break
            if keys.decided_sk(intent.id) in resent:
                writes.append(intent_items.resent(pk, intent))  # decided already: never twice
                continue
            # One transaction may not touch an item twice: a change that shares a marker or a hold
            # with one already in this pass waits for the next pass (where it may replay it).
            touches = change.writes(found)
            if touches & touched:
                break
            touched |= touches
            key = change.idempotency.key if change.idempotency is not None else None
            # past its waiter's deadline, or queued under a key a release freed since: its request
            # was answered (a crashed waiter's orphan), so it never applies
            if intent.apply_before_ms < now_ms or (key and codec.freed_before(read, key, intent.created_ms)):
                outcome = Outcome.refused(TemporarilyUnavailable("The balance is busy; nothing was written."))
            else:
                outcome, effects = decide(change, work, found, decision)
                writes += codec.writes(pk, effects, now)
            decided[intent.id] = outcome
            writes += intent_items.decision_writes(pk, intent, outcome, int(now))
        lease_until = ctx.now_ms() + lease_ms(pass_ms)
        guard = codec.account_update(
            pk, work, now, combiner=owner, lease_until=lease_until, pass_ms=pass_ms, warn_ms=ctx.warn_ms
        )
        all_writes = [guard, *codec.writes(pk, work.settled, now), *writes]
        return decided if ctx.commit(all_writes, token=ctx.new_id(), first_extra=len(all_writes)) else None

    def queued(self, pk: str) -> tuple[AccountState, list[Intent]]:
        """The account and the first queued intents, oldest first, in ONE consistent Query (intents
        sort right after the account item: `ACCOUNT`, `ACCOUNT#INTENT#<ms>#<id>`). Intents of an
        earlier version are left to their own version's combiners (decided ones are filtered out)."""
        page = self.ctx.store.query(pk, keys.ACCOUNT, without="outcome")
        account = None
        intents: list[Intent] = []
        for item in page.items:
            if item["sk"] == keys.ACCOUNT:
                account = item
            elif len(intents) < MAX_INTENTS_PER_PASS and intent_items.decided_apart(item):
                intents.append(intent_items.intent(item))
        return codec.read_account(account), intents

    def markers(self, pk: str, intents: list[Intent]) -> dict[str, dict[str, Any]]:
        """The reference and idempotency markers the intents name, and any decision already written
        for one of them (a resent intent), as stored: one consistent batch read."""
        sks = {sk for i in intents for sk in (keys.decided_sk(i.id), *i.change.sks())}
        return self.ctx.store.get_many(pk, sorted(sks)) if sks else {}

    def outcome(self, pk: str, intent: Intent) -> Outcome | None:
        """The decision on our intent, or None while it is queued."""
        return self._decided(pk, intent, self.ctx.store.get_many(pk, [keys.decided_sk(intent.id), intent.sk]))

    def withdraw(self, pk: str, intent: Intent) -> Outcome | None:
        """Give up waiting: delete the intent if it is still undecided (None: nothing was or will be
        written), else return its decision. A decision and a withdrawal exclude each other."""
        try:
            # a combiner's transaction on it in flight: ask again once it is done
            self.ctx.store.write(intent_items.withdrawal(pk, intent), conflicts=True)
        except ConditionFailed:  # an earlier version's combiner wrote its decision onto the intent
            return self.outcome(pk, intent)
        # Gone from the queue now; but what we deleted may not have been undecided (a pass removes the
        # intent it decides, and a resend of our put that landed after it queued a copy), and a put of
        # ours still in flight may land later. The withdrawal's own `DECIDED#<id>`, written only if a
        # pass wrote none, settles both: from now on any copy is taken off by a pass, never decided.
        try:
            self.ctx.store.write(intent_items.tombstone(pk, intent, int(self.ctx.clock())))
        except ConditionFailed:  # a pass decided it first
            return self._written_decision(pk, intent)
        return None

    def _decided(self, pk: str, intent: Intent, found: Mapping[str, Mapping[str, Any]]) -> Outcome | None:
        """Our decision in a read of `DECIDED#<id>` and the intent; None while the intent is queued."""
        outcome = intent_items.decision(found.get(keys.decided_sk(intent.id))) or intent_items.decision(
            found.get(intent.sk)  # an earlier version's combiner wrote it onto the intent
        )
        if outcome is not None or intent.sk in found:
            return outcome
        # Neither: a batch read is not a snapshot, so the pass that took the intent off the queue may
        # have landed between our reads of the two items; its decision is there now.
        return self._written_decision(pk, intent)

    def _written_decision(self, pk: str, intent: Intent) -> Outcome:
        """The decision a pass wrote for our intent, which it took off the queue: read `DECIDED#<id>`.
        None there: the intent's put failed (it may never have landed), and only a retry under the
        key can tell what happened."""
        decided = keys.decided_sk(intent.id)
        outcome = intent_items.decision(self.ctx.store.get_many(pk, [decided]).get(decided))
        if outcome is None:
            raise TemporarilyUnavailable("The outcome of this change is unknown; retry with the same key.") from None
        return outcome


def poll_pause(pass_ms: int, polls: int) -> float:
    """How long a waiter sleeps before looking for its decision: a decision comes once per pass, so
    the first look two passes and a half after queueing (the pass in flight, then the one that reads
    our intent, and room for passes that run late on a busy store: a look any earlier mostly finds
    nothing and costs the store a read), the next ones half a pass apart; POLL_SECONDS (then twice
    as long) when passes are not known yet; never more than MAX_POLL_SECONDS."""
    if pass_ms <= 0:
        return POLL_SECONDS * min(1 + polls, 2)
    pause = pass_ms / 1000 * (2.5 if polls == 0 else 0.5)
    return min(max(pause, POLL_SECONDS), MAX_POLL_SECONDS)
