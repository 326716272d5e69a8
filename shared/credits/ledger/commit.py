"""The commit path: read the account and the change's markers once, decide by the rules, and write
the decision in ONE transaction guarded by what was read (invariants 1 and 2).

A lost race (the guard failed) queues the change for group commit (`group.py`) instead of retrying
alone; a combiner already at work gets the change queued at once. A refusal under an
Idempotency-Key is remembered on the key's marker before it is answered (invariant 4).
The flow from the HTTP request to here: docs/design.md section 5.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

from credits import keys
from credits.errors import (
    CardRequired,
    CreditsError,
    SpendLimitReached,
    TemporarilyUnavailable,
    TooManyRequests,
    ValidationError,
)
from credits.ledger import codec
from credits.ledger.context import Context
from credits.ledger.group import GroupCommit
from credits.ledger.rules import Change, Kind, Work, decide
from credits.ledger.topup import BACKOFF_MS, MAX_FAILURES, MAX_PER_MONTH, AutoTopUp, TopUpState
from credits.ledger.values import MAX_AMOUNT, UNCHANGED, Unchanged, iso_utc, validate_amount, validate_token
from credits.store import ConditionFailed, TransactionCancelled, Update, Write, absent, eq, exists, lt, ne


class Committer:
    def __init__(self, ctx: Context, group: GroupCommit) -> None:
        self.ctx = ctx
        self.group = group

    def run(self, user_id: str, change: Change, extra: Sequence[Write] = ()) -> Mapping[str, Any]:
        """Decide and write a change; the first refusal of a month by the user's spend limit is noted
        (`LIMIT#<month>`), once, for the Spend Limit Reached event."""
        try:
            return self.decide_and_write(user_id, change, extra)
        except SpendLimitReached as refused:
            # best effort (the refusal stands either way): a conditional put, so the event is once
            with contextlib.suppress(CreditsError, ConditionFailed):
                self.ctx.store.write(codec.limit_note(keys.user_pk(user_id), refused, self.ctx.clock()))
            raise

    def decide_and_write(self, user_id: str, change: Change, extra: Sequence[Write]) -> Mapping[str, Any]:
        """`extra` writes join the transaction (a payment record's state change): a change with
        items of its own retries alone, never queued (docs/adr/0004-group-commit.md)."""
        ctx = self.ctx
        pk = keys.user_pk(user_id)
        deadline = ctx.monotonic() + ctx.time_budget
        queue = not extra
        pass_ms = self.group.contended(pk) if queue else None
        if pass_ms is not None:
            # contended lately (seen from this container): a direct attempt would only lose; the
            # combiner decides it by the same rules, from the markers it reads itself
            return self.group.queue(pk, change, deadline, None, pass_ms)
        for attempt in range(ctx.max_attempts):
            if ctx.monotonic() > deadline:
                break
            # the account and every item the change names, in one consistent read (one store call)
            found = codec.live(ctx.store.get_many(pk, [keys.ACCOUNT, *change.sks()]), ctx.clock())
            state = codec.read_account(found.pop(keys.ACCOUNT, None))
            now = ctx.clock()
            work = Work.of(state, now)
            outcome, effects = decide(change, work, found, ctx.decision(now))
            writes = codec.writes(pk, effects, now)
            if outcome.error is not None:
                # A refusal writes at most its key's marker, so that nothing queued earlier under the
                # key can apply once the client was told "not charged"; if a marker appeared first,
                # decide again from it.
                if writes and not self._remember(writes[0]):
                    continue
                return outcome.result()
            if not writes and change.kind is not Kind.SWEEP:
                return outcome.result()  # a replay, or nothing to write
            # what the account owed first (lots that expired): written with the change, never alone
            writes = codec.writes(pk, work.settled, now) + writes
            if not writes:
                return outcome.result()  # a sweep of an account with nothing due
            if queue and state.combining(int(now * 1000)):
                self.group.found_contended(pk, state.combiner_pass_ms)
                return self.group.queue(pk, change, deadline, state)  # a direct write would only lose
            transact = [codec.account_update(pk, work, now, warn_ms=ctx.warn_ms), *writes, *extra]
            # The token makes a resend of this very request (lost answer, timeout) a no-op for 10 min;
            # it is the id of what the request creates (fresh for every decision), so it is traceable.
            value = outcome.result()
            token = value.get("transaction_id") or (value["hold_id"] if change.kind is Kind.RESERVE else None)
            if ctx.commit(transact, token=token or ctx.new_id(), first_extra=len(transact) - len(extra)):
                return value
            if queue:
                # Lost a race: the balance is contended. Queue the change and let one writer apply
                # every queued change in one transaction, instead of retrying alone.
                self.group.found_contended(pk, state.combiner_pass_ms)
                return self.group.queue(pk, change, deadline, None)
            ctx.backoff(attempt)
        raise TemporarilyUnavailable("The balance is busy; nothing was written. Please retry.")

    def _remember(self, marker: Write) -> bool:
        """Write a refusal's marker under its Idempotency-Key; False when a marker of the key appeared
        since the decision (the change landed, or another answer): decide again."""
        try:
            self.ctx.store.write(marker)
        except ConditionFailed:
            return False
        return True


def update_settings(
    ctx: Context,
    user_id: str,
    rate: int,
    low_balance_threshold: int | None = None,
    monthly_spend_limit: int | Unchanged | None = UNCHANGED,
    auto_top_up: AutoTopUp | Unchanged | None = UNCHANGED,
) -> None:
    """Change a user's settings on the account item, never touching its balance, ledger or holds;
    at most `rate` changes per user in a UTC minute (TooManyRequests past that). Turning auto top-up
    on (the user's own request: nothing else does) ends a suspension after failed payments."""
    now = ctx.clock()
    sets: dict[str, Any] = {"updated_at": iso_utc(now)}
    remove: tuple[str, ...] = ()
    if auto_top_up is None:
        remove += ("auto_top_up",)
    elif not isinstance(auto_top_up, Unchanged):
        sets["auto_top_up"] = validate_auto_top_up(auto_top_up).stored()
        if auto_top_up.enabled:
            sets["topup_failures"] = 0
            remove += ("topup_suspended",)
    # turned on only with a saved card to charge (written with the card still there: a card removed
    # meanwhile is CardRequired, never an auto top-up with nothing to charge)
    needs_card = not isinstance(auto_top_up, Unchanged) and auto_top_up is not None and auto_top_up.enabled
    if low_balance_threshold is not None:
        if type(low_balance_threshold) is not int or not 0 <= low_balance_threshold <= MAX_AMOUNT:
            raise ValidationError("lowBalanceThreshold must be an integer from 0 to 1000000000.")
        sets["low_balance_threshold"] = low_balance_threshold
    if monthly_spend_limit is None:
        remove += ("monthly_spend_limit",)
    elif not isinstance(monthly_spend_limit, Unchanged):
        sets["monthly_spend_limit"] = validate_amount(monthly_spend_limit, "monthlySpendLimit")
    window = int(now) // 60  # the UTC minute, counted on the account item with the change
    key = (keys.user_pk(user_id), keys.ACCOUNT)
    # The change carries its own id: a resend after a lost answer (the store retries it) finds it
    # written and fails its condition, instead of counting (or refusing) the same change twice.
    change_id = ctx.new_id()
    sets["settings_change_id"] = change_id
    not_yet = absent("settings_change_id") | ne("settings_change_id", change_id)
    if needs_card:
        not_yet &= exists("card")
    first = {"created_at": iso_utc(now)}
    counted = [
        # another change in this minute, while under the rate
        Update(
            key,
            sets,
            first,
            {"settings_changes": 1},
            remove,
            eq("settings_window", window) & lt("settings_changes", rate) & not_yet,
        ),
        # the first change of a minute
        Update(
            key,
            {**sets, "settings_window": window, "settings_changes": 1},
            first,
            {},
            remove,
            (absent("settings_window") | ne("settings_window", window)) & not_yet,
        ),
    ]
    for update in counted:
        try:
            # a transaction in flight on the account: ask again once it is done
            ctx.store.write(update, conflicts=True)
            return
        except ConditionFailed:
            continue
    account = ctx.store.get_many(key[0], [keys.ACCOUNT]).get(keys.ACCOUNT) or {}
    if account.get("settings_change_id") == change_id:
        return  # it landed: the answer to its first attempt was lost
    if needs_card and "card" not in account:
        raise CardRequired("Save a card before turning auto top-up on; nothing was changed.")
    raise TooManyRequests(
        f"Settings can be changed at most {rate} times a minute; retry shortly.", retry_after=60 - int(now) % 60
    )


FINISH_ATTEMPTS = 8  # reads of a top-up's end racing settings changes (each one moves the failures)


def validate_auto_top_up(settings: AutoTopUp) -> AutoTopUp:
    """A threshold of 0..MAX_AMOUNT credits, a package id, and 1..31 top-ups a month."""
    if type(settings.threshold) is not int or not 0 <= settings.threshold <= MAX_AMOUNT:
        raise ValidationError("autoTopUp.threshold must be an integer from 0 to 1000000000.")
    validate_token(settings.package_id, "autoTopUp.packageId")
    if type(settings.max_per_month) is not int or not 1 <= settings.max_per_month <= MAX_PER_MONTH:
        raise ValidationError(f"autoTopUp.maxPerMonth must be an integer from 1 to {MAX_PER_MONTH}.")
    return settings


def finish_top_up(
    ctx: Context, user_id: str, topup_id: str, failure: str | None, details: Mapping[str, Any], *, cancel: bool = False
) -> TopUpState | None:
    """End the pending top-up `topup_id`: paid (`failure` None: the failures in a row start again from
    0), failed with a code (no new one for BACKOFF_MS; the MAX_FAILURES-th in a row suspends auto
    top-up), or cancelled with no payment made (`cancel`: the user turned it off before it was paid,
    or an operator ended it; no failure counted). One transaction: the account's pending mark goes,
    and its `TOPUP#<n>` item says how it ended (state, `details`, the attempt and whether it
    suspended): the stream announces it from there, once. The state after; None when it was not
    pending (ended before: a repeated delivery)."""
    key = (keys.user_pk(user_id), keys.ACCOUNT)
    topup_key = (key[0], keys.topup_sk(topup_number(topup_id)))
    for _ in range(FINISH_ATTEMPTS):
        now = ctx.clock()
        state = codec.read_account(ctx.store.get_many(key[0], [keys.ACCOUNT]).get(keys.ACCOUNT)).topup
        if state.pending != topup_id:
            return None
        guard = eq("topup_pending", topup_id)
        ended: dict[str, Any] = {**details, "finished_at": iso_utc(now)}
        if cancel:
            sets: dict[str, Any] = {"updated_at": iso_utc(now)}
            remove: tuple[str, ...] = ("topup_pending",)
            ended.update(state="cancelled", code=failure or "cancelled")
        elif failure is None:
            state.failures, state.retry_after_ms = 0, 0
            sets = {"topup_failures": 0, "updated_at": iso_utc(now)}
            remove = ("topup_pending", "topup_retry_ms")
            ended["state"] = "succeeded"
        else:
            failures = eq("topup_failures", state.failures)
            guard &= failures if state.failures else failures | absent("topup_failures")
            state.failures += 1
            state.retry_after_ms = int(now * 1000) + BACKOFF_MS
            sets = {"topup_failures": state.failures, "topup_retry_ms": state.retry_after_ms}
            sets["updated_at"] = iso_utc(now)
            if state.failures >= MAX_FAILURES:
                state.suspended = sets["topup_suspended"] = failure
            remove = ("topup_pending",)
            ended.update(state="failed", code=failure, attempt=state.failures, suspended=state.suspended is not None)
        state.pending = None
        try:
            account = Update(key, sets, {}, {}, remove, guard)
            ctx.store.transact(
                [account, Update(topup_key, set=ended, condition=eq("state", "pending"))], token=ctx.new_id()
            )
            return state
        except TransactionCancelled:
            continue  # ended meanwhile, a settings change moved the failures, or a write in flight: read again
    raise TemporarilyUnavailable("The account kept changing; nothing was written.")


def topup_number(topup_id: str) -> int:
    """n of `topup:<user>:<n>` (the user id may hold colons: n is after the last one)."""
    number = topup_id.rpartition(":")[2]
    if not topup_id.startswith("topup:") or not number.isdigit():
        raise ValidationError("Not an auto top-up id.")
    return int(number)
