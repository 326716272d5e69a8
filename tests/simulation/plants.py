"""Known bugs, monkeypatched into the real code for one run, to prove the simulator catches them.

- `capture-ignores-expiry`: a capture does not check its hold's expiry (`credits.ledger.rules`): a
  hold past its end, or one an earlier change pruned from the account, is captured anyway.
- `apply-withdrawn-intent`: a combiner applies an intent after its waiter withdrew it: the pass's
  delete of the intent no longer requires it to exist (`intents.decision_writes` without
  `exists(pk)`: it deletes nothing and writes `DECIDED#<id>` all the same), and a withdrawal that
  clashes with a pass in flight counts as withdrawn instead of waiting for the pass
  (`GroupCommit.withdraw`).
- `double-refund-clawback`: a settlement step (a refund's clawback) is posted, then its record
  updated in a second write, and its reference is fresh per attempt instead of unique per step: a
  delivery whose answer was lost after the entry landed leaves the record behind, and the
  redelivery (or a concurrent duplicate) posts the clawback again under a new reference.

- `expired-lot-counts-on-read`: a read counts the credits of lots that expired (and are not
  recorded yet) in the balance (`codec.counted` returns the stored balance).
- `refund-claws-back-expired`: a refund's or dispute's clawback no longer counts its purchase's
  expired credits as gone (`rules._debit` sees the purchase's lot as if none of it had expired).
- `draws-wrong-order`: debits and holds draw from the oldest lot first, whatever its priority and
  expiry (`lots.ordered`).
- `topup-ignores-backoff`: a top-up starts within the hour after a failure (`topup.starts` does not
  look at `retry_after_ms`).
- `topup-while-pending`: a crossing starts a top-up while another is pending (`topup.starts` does not
  look at `pending`): two charges on one card for one crossing.

`planted(name)` patches for the duration of a `with` block and restores the originals.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from msgspec import structs

from credits import keys, payments
from credits.errors import CreditsError
from credits.ledger import Entry, Posted, codec, group, intents, lots, rules, topup
from credits.ledger.intents import Intent
from credits.ledger.rules import Change, Decision, Found, Kind, Outcome, Work
from credits.settlement import PaymentRecord, Step
from credits.store import ConditionFailed, Delete, Write, absent

PLANTS = (
    "capture-ignores-expiry",
    "apply-withdrawn-intent",
    "double-refund-clawback",
    "expired-lot-counts-on-read",
    "refund-claws-back-expired",
    "draws-wrong-order",
    "topup-ignores-backoff",
    "topup-while-pending",
)


def _capture_ignores_expiry() -> list[tuple[Any, str, Any]]:
    original = rules._end

    def _end(change: Change, work: Work, found: Found, ctx: Decision) -> Any:
        if change.kind is Kind.CAPTURE and change.hold_id is not None:
            sk = keys.hold_sk(change.hold_id)
            hold = found.get(sk)
            if hold is not None and hold["state"] == "open":
                # BUG: the hold's end is not looked at
                found[sk] = {**hold, "until_ms": max(hold["until_ms"], ctx.now_ms + 1)}
                work.holds.setdefault(change.hold_id, (hold["amount"], hold["until_ms"]))
        return original(change, work, found, ctx)

    return [(rules, "_end", _end)]


def _apply_withdrawn_intent() -> list[tuple[Any, str, Any]]:
    original = intents.decision_writes

    def decision_writes(pk: str, intent: Intent, outcome: Outcome, now: int) -> list[Write]:
        taken, *decided = original(pk, intent, outcome, now)
        # BUG: no `exists("pk")`: a withdrawn (deleted) intent is decided all the same
        return [Delete(taken.key, absent("outcome")), *decided]

    def withdraw(self: group.GroupCommit, pk: str, intent: Intent) -> Outcome | None:
        try:
            self.ctx.store.write(intents.withdrawal(pk, intent))  # BUG: does not wait out a pass in flight
        except ConditionFailed:
            # BUG: a clash with a pass in flight (no decision on the intent yet) counts as withdrawn
            return self.outcome(pk, intent)
        return None

    return [(intents, "decision_writes", decision_writes), (group.GroupCommit, "withdraw", withdraw)]


def _double_refund_clawback() -> list[tuple[Any, str, Any]]:
    fresh = itertools.count(1)

    def _take(self: payments.Payments, user_id: str, record: PaymentRecord, step: Step) -> Posted | None:
        # BUG: a reference fresh per attempt, not unique per step ...
        entry = structs.replace(
            step.entry(int(self.clock() * 1000)),
            reference_id=f"settle:{record.payment_id}:{step.state.settle_steps}.{next(fresh)}",
        )
        try:
            posted = self.ledger.post(user_id, entry, step.policy)
        except CreditsError:
            raise
        # ... and the record's state in a second write, after the entry
        try:
            self.store.write(payments.state_update(record, step))
        except ConditionFailed:
            return None
        return posted

    return [(payments.Payments, "_take", _take)]


def _expired_lot_counts_on_read() -> list[tuple[Any, str, Any]]:
    def counted(work: Work, now_ms: int) -> int:
        return work.balance  # BUG: what expired lots hold still counts until a write records it

    return [(codec, "counted", counted)]


def _refund_claws_back_expired() -> list[tuple[Any, str, Any]]:
    original = rules._debit

    def _debit(change: Change, entry: Entry, work: Work, found: Found, ctx: Decision) -> Any:
        mine = lots.source_lots(work.lots, entry.source)
        expired = [lot.expired for lot in mine]
        for lot in mine:
            lot.expired = lot.forgiven + lot.dispute_forgiven  # BUG: its expired credits are forgotten
        try:
            return original(change, entry, work, found, ctx)
        finally:
            for lot, n in zip(mine, expired, strict=True):
                lot.expired = n

    return [(rules, "_debit", _debit)]


def _draws_wrong_order() -> list[tuple[Any, str, Any]]:
    def ordered(lots_: Mapping[str, lots.Lot], now_ms: int) -> list[lots.Lot]:
        live = (lot for lot in lots_.values() if lot.remaining > 0 and not lot.expired_at(now_ms))
        return sorted(live, key=lambda lot: lot.created_ms)  # BUG: the oldest first, priority and expiry aside

    return [(lots, "ordered", ordered)]


def _topup_ignores(**ignored: Any) -> Callable[[], list[tuple[Any, str, Any]]]:
    def patches() -> list[tuple[Any, str, Any]]:
        original = topup.starts

        def starts(settings: Any, state: topup.TopUpState, before: int, after: int, month: str, now_ms: int) -> bool:
            return original(settings, structs.replace(state, **ignored), before, after, month, now_ms)  # BUG

        return [(topup, "starts", starts)]

    return patches


_PATCHES: Mapping[str, Callable[[], list[tuple[Any, str, Any]]]] = {
    "capture-ignores-expiry": _capture_ignores_expiry,
    "apply-withdrawn-intent": _apply_withdrawn_intent,
    "double-refund-clawback": _double_refund_clawback,
    "expired-lot-counts-on-read": _expired_lot_counts_on_read,
    "refund-claws-back-expired": _refund_claws_back_expired,
    "draws-wrong-order": _draws_wrong_order,
    "topup-ignores-backoff": _topup_ignores(retry_after_ms=0),
    "topup-while-pending": _topup_ignores(pending=None),
}


@contextlib.contextmanager
def planted(name: str | None) -> Iterator[None]:
    """Patch the bug `name` in (None: nothing) while the block runs."""
    if name is None:
        yield
        return
    if name not in _PATCHES:
        raise ValueError(f"unknown plant {name!r}; known: {', '.join(PLANTS)}")
    patches = _PATCHES[name]()
    saved = [(target, attr, getattr(target, attr)) for target, attr, _ in patches]
    try:
        for target, attr, value in patches:
            setattr(target, attr, value)
        yield
    finally:
        for target, attr, value in saved:
            setattr(target, attr, value)
