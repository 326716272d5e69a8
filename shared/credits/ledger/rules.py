"""The rules of the ledger: given the account as read and one change, decide the outcome and effects.

No I/O, no clock and no ids of its own (the caller passes `now` and `new_id`), no DynamoDB items:
`decide` returns an `Outcome` (a result, maybe a replay, or a refusal with its error code) and the
`Effect`s that write it (an entry posted, a hold opened or closed, a key remembered or freed);
`codec.writes` turns effects into the store's writes. The same rules decide a change directly
(`commit.py`) and in a combiner pass (`group.py`), where `Work` carries the account from one
change to the next and `found` the markers and holds each change wrote.

The invariants they keep (docs/design.md section 4) are named where they are kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any

from msgspec import Struct, structs

from credits import keys
from credits.errors import (
    CaptureExceedsHold,
    CreditsError,
    HoldCaptured,
    HoldEnded,
    HoldExpired,
    HoldNotFound,
    HoldReleased,
    IdempotencyKeyReused,
    InsufficientCredits,
    ReferenceReused,
    SpendLimitReached,
    TooManyHolds,
    ValidationError,
)
from credits.ledger import lots
from credits.ledger.account import MAX_EXPIRIES_PER_WRITE, Decision, Found, Work
from credits.ledger.outcomes import (
    Effect,
    EntryPosted,
    HoldClosed,
    HoldOpened,
    KeyFreed,
    KeyRemembered,
    Outcome,
)
from credits.ledger.values import (
    IDEMPOTENCY_TTL_SECONDS,
    MAX_OPEN_HOLDS,
    REFUSAL_MEMORY_SECONDS,
    Entry,
    Idempotency,
    LotTerms,
    Policy,
    entry_fingerprint,
    iso_ms,
    iso_utc,
)

# The refusals a rule may answer with; any other error is not a decision, it propagates.
REFUSALS = (
    InsufficientCredits,
    SpendLimitReached,
    ValidationError,
    HoldNotFound,
    HoldEnded,
    CaptureExceedsHold,
    TooManyHolds,
)


class Kind(Enum):
    POST = "post"  # a ledger entry (usage, credit, clawback)
    RESERVE = "reserve"  # open a hold
    CAPTURE = "capture"  # end a hold with one usage entry (or none, for 0)
    RELEASE = "release"  # end a hold with no entry
    SWEEP = "sweep"  # nothing of its own: write what the account owes (lots that expired; the daily sweep)


class Change(Struct, frozen=True):
    """One change to a user's account, decided directly or in a combiner pass."""

    kind: Kind
    entry: Entry | None = None  # POST
    policy: Policy | None = None  # POST
    idempotency: Idempotency | None = None  # POST, RESERVE
    ref_fingerprint: str = ""  # POST
    hold_id: str | None = None  # CAPTURE, RELEASE
    amount: int | None = None  # RESERVE: the amount held; CAPTURE: the amount asked (None: all of it)
    ttl_seconds: int = 0  # RESERVE
    description: str = ""  # RESERVE
    action: str | None = None  # RESERVE: the priced action (its capture's usage entry names it)
    note: str | None = None  # CAPTURE: kept on the hold with its end (the paywall's response, to replay)

    def sks(self) -> list[str]:
        """The items this change reads besides the account: its markers, or its hold."""
        sks = [] if self.entry is None else [ref_sk(self.entry)]
        sks.append(idem_sk(self.idempotency))
        if self.hold_id is not None:
            sks.append(keys.hold_sk(self.hold_id))
        return [sk for sk in sks if sk is not None]

    def writes(self, found: Mapping[str, Mapping[str, Any]]) -> set[str]:
        """The items besides the account and the ledger entry it would write, as `found` stands: none
        when a marker of it exists already (it replays or is refused) or its hold is not open."""
        if self.hold_id is None:
            sks = set(self.sks())
            return set() if sks & found.keys() else sks
        hold = found.get(keys.hold_sk(self.hold_id))
        if hold is None or hold["state"] != "open":
            return set()
        key = hold.get("idempotency_key")
        return {keys.hold_sk(self.hold_id)} | ({keys.idem_sk(key)} if key else set())

    def size(self) -> int:
        """The most transaction items it may write, besides the account and the decision."""
        if self.kind in (Kind.POST, Kind.RESERVE):
            return 2 + len(self.sks())  # TX (or HOLD), its markers, and the top-up it may start
        if self.kind is Kind.SWEEP:
            return 0
        # and what its credits coming back to lots that expired meanwhile may expire (two items each)
        # CAPTURE: HOLD, TX, its reference marker; RELEASE: HOLD and the freed key; and the note of a
        # debt its credits coming back repaid (`DebtRepaid`)
        return 4 + 2 * MAX_EXPIRIES_PER_WRITE


def ref_sk(entry: Entry) -> str | None:
    """The sort key of an entry's reference marker, in the client's or the system's key space."""
    return None if entry.reference_id is None else keys.ref_sk(entry.reference_id, system=entry.system_reference)


def idem_sk(idempotency: Idempotency | None) -> str | None:
    return None if idempotency is None else keys.idem_sk(idempotency.key)


def decide(change: Change, work: Work, found: Found, ctx: Decision) -> tuple[Outcome, list[Effect]]:
    """Decide one change against the account as `work` holds it and the items in `found`: its outcome,
    and the effects that write it (none for a replay; for a refusal under an Idempotency-Key, only the
    marker that remembers it). `work` and `found` are updated, so the next change of a combiner pass
    sees this one. The account's own due entries (lots that expired) are settled first, once per
    `work`: they are in `work.settled`, written with whatever writes the account. A charge or a hold
    that spends the account below its auto top-up threshold starts one top-up (`TopUpStarted`,
    credits.ledger.topup)."""
    if not work.is_settled:
        work.settle(ctx)
    spends = change.kind is Kind.RESERVE or change.policy is Policy.USAGE
    before = work.available(ctx.now_ms)
    outcome, effects = _decide(change, work, found, ctx)
    if spends and outcome.error is None and effects:
        started = work.top_up(before, ctx)
        if started is not None:
            effects.append(started)
    return outcome, effects


def _decide(change: Change, work: Work, found: Found, ctx: Decision) -> tuple[Outcome, list[Effect]]:
    try:
        if change.kind is Kind.POST:
            return _post(change, work, found, ctx)
        if change.kind is Kind.RESERVE:
            return _reserve(change, work, found, ctx)
        if change.kind is Kind.SWEEP:
            return Outcome.applied({"expired": sum(1 for e in work.settled if isinstance(e, EntryPosted))}), []
        return _end(change, work, found, ctx)
    except REFUSALS as no:
        refused = Outcome.refused(no)
        idem = change.idempotency
        if idem is None:
            return refused, []
        # Once a key is answered "not done", nothing queued under it before the answer may apply (an
        # orphaned intent whose container died, a stale direct write): the refusal is kept on the key's
        # marker for REFUSAL_MEMORY_SECONDS and replayed to every change under the key, and any write of
        # the key's marker meanwhile fails its condition and is decided again (invariant 4).
        marker = {"fingerprint": idem.fingerprint, "refused": refused.attributes()}
        found[keys.idem_sk(idem.key)] = marker
        return refused, [KeyRemembered(idem, marker, REFUSAL_MEMORY_SECONDS)]


def replay(marker: Mapping[str, Any], fingerprint: str, reused: type[CreditsError], result_field: str) -> Outcome:
    """A change whose key or reference is already used: its first result, or reused (409). A marker
    left by another kind of change (a charge's key sent to open a hold) is a different request. A
    key whose request was refused (a 402) replays that refusal while the marker lives."""
    if "refused" in marker and marker["fingerprint"] == fingerprint:
        return Outcome.from_attributes(marker["refused"])
    if marker["fingerprint"] != fingerprint or result_field not in marker:
        what = "Idempotency-Key" if reused is IdempotencyKeyReused else "referenceId"
        return Outcome.refused(reused(f"This {what} was already used for a different request."))
    value = marker.get("result") or {
        "transaction_id": marker["transaction_id"],
        "amount": marker["amount"],
        "balance_after": marker["balance_after"],
        "seq": marker["seq"],
    }
    return Outcome.applied({**value, "replayed": True})


def _post(change: Change, work: Work, found: Found, ctx: Decision) -> tuple[Outcome, list[Effect]]:
    entry, idem = change.entry, change.idempotency
    assert entry is not None and change.policy is not None
    idem_key, ref_key = idem_sk(idem), ref_sk(entry)
    if idem is not None and idem_key in found:
        return replay(found[str(idem_key)], idem.fingerprint, IdempotencyKeyReused, "transaction_id"), []
    if ref_key is not None and ref_key in found:
        return replay(found[ref_key], change.ref_fingerprint, ReferenceReused, "transaction_id"), []
    check_policy(work, entry, change.policy, ctx.now_ms)
    if change.policy is Policy.USAGE:
        work.spend(-entry.amount)
    decided = _credit if entry.amount > 0 else _debit
    posted = decided(change, entry, work, found, ctx)
    return Outcome.applied({**posted.result(), "replayed": False}), [posted]


def _credit(change: Change, entry: Entry, work: Work, found: Found, ctx: Decision) -> EntryPosted:
    """Credits go to a lot (after repaying a debt). A won dispute gives back only what its hold took:
    credits its hold found expired already come back expired (rule 5, docs/adr/0010-credit-lots.md)."""
    if entry.lot is not None and entry.lot.expires_at_ms is not None and entry.lot.expires_at_ms <= ctx.now_ms:
        raise ValidationError("expiresAt must be in the future.", [{"field": "expiresAt"}])
    unforgiven = 0
    if entry.type == "dispute":
        for lot in lots.source_lots(work.lots, entry.source):
            n = min(entry.amount - unforgiven, lot.dispute_forgiven)
            lot.dispute_forgiven -= n
            unforgiven += n
    amount = entry.amount - unforgiven
    facts: dict[str, Any] = {"expired_part": unforgiven, "gives_back": entry.type == "dispute"}
    if amount > 0:
        debt = work.debt()
        terms = priced(entry.lot or LotTerms(label=entry.description), entry, work)
        held = lots.held_lots(work.draws.values())
        facts["lot"] = lots.place(work.lots, terms, amount, str(work.seq + 1), ctx.now_ms, held)
        facts["lot_price"] = terms.price
        facts["repaid"] = lots.repay(work.lots, debt, ctx.now_ms)
    work.lots_changed = True
    posted_entry = entry if amount == entry.amount else structs.replace(entry, amount=amount)
    posted = work.append(posted_entry, change.idempotency, change.ref_fingerprint, found, ctx, **facts)
    work.settle(ctx)  # a lot granted inside its warning window is announced with its grant
    return posted


def priced(terms: LotTerms, entry: Entry, work: Work) -> LotTerms:
    """The currency and the price the credits were bought at (the finance report values them so): a
    purchase's own; a won dispute's those of its purchase (its lot's, or the payment's when the lot
    is gone); none for credits granted."""
    if entry.currency is None or not entry.monetary_amount or entry.amount <= 0:
        return terms
    price = terms.price or (entry.monetary_amount, entry.amount)
    for lot in lots.source_lots(work.lots, terms.source or entry.source):
        if lot.price_credits and lot.currency == entry.currency:
            price = (lot.price_money, lot.price_credits)
            break
    return structs.replace(terms, currency=entry.currency, price=price)


def _debit(change: Change, entry: Entry, work: Work, found: Found, ctx: Decision) -> EntryPosted:
    """A debit draws from the lots in burn order (invariant 10). A refund's or a dispute's clawback
    takes its purchase's credits first: what is left in its lots, then what open holds drew from them
    (the holds draw from other lots instead); it never takes back what of it expired already, recorded
    or not; the rest comes from the other lots, then as a debt (rule 5, invariant 11)."""
    need, now_ms = -entry.amount, ctx.now_ms
    purchase = lots.source_lots(work.lots, entry.source)
    draws: lots.Draws = {}
    for lot in purchase:
        if need and not lot.expired_at(now_ms) and lot.remaining:
            draws[lot.id] = taken = min(need, lot.remaining)
            lot.remaining -= taken
            need -= taken
    if need and purchase:
        need -= work.take_held(purchase, need, now_ms, draws)
    forgiven = 0
    for lot in purchase:
        # what of the purchase expired (an expired lot's remainder too: its entry may wait for a later
        # write) and no refund counted yet; a dispute's hold also leaves out what open disputes
        # counted (a won dispute gives only that back; a refund may still count it)
        gone = lot.expired + (lot.remaining if lot.expired_at(now_ms) else 0) - lot.forgiven
        if entry.type == "dispute":
            n = max(0, min(need, gone - lot.dispute_forgiven))
            lot.dispute_forgiven += n
        else:
            n = max(0, min(need, gone))
            lot.forgiven += n
        forgiven += n
        need -= n
    for lot_id, n in lots.draw(work.lots, need, now_ms).items():
        draws[lot_id] = draws.get(lot_id, 0) + n
    work.lots_changed = True
    posted_entry = entry if not forgiven else structs.replace(entry, amount=entry.amount + forgiven)
    return work.append(
        posted_entry, change.idempotency, change.ref_fingerprint, found, ctx, draws=draws, expired_part=forgiven
    )


def check_policy(work: Work, entry: Entry, policy: Policy, now_ms: int) -> None:
    """How an entry may move the balance (invariants 3, 6 and 8); raises the refusal."""
    if policy is Policy.USAGE:
        # Invariants 3 and 6: usage never overdraws what is available (the balance less open
        # holds), and a negative balance blocks all usage.
        if entry.amount >= 0:
            raise ValidationError("A usage charge must be a debit.")
        available = work.available(now_ms)
        balance = work.spendable(now_ms)
        if balance < 0 or available + entry.amount < 0:
            raise InsufficientCredits(required=-entry.amount, balance=balance, available=available)
        work.check_limit(-entry.amount, now_ms)
    elif policy is Policy.CREDIT and entry.amount <= 0:
        raise ValidationError("A credit must be positive.")
    elif policy is Policy.CLAWBACK and entry.amount >= 0:
        raise ValidationError("A clawback must be a debit.")
    elif policy is Policy.ADJUSTMENT:
        # Invariants 3 and 6 for an operator's debit: neither the balance nor what is available
        # (open holds count) goes below zero. It is not usage: no spend limit, no month's spend.
        if entry.amount >= 0:
            raise ValidationError("An adjustment debit must be negative.")
        available = work.available(now_ms)
        balance = work.spendable(now_ms)
        if min(balance, available) + entry.amount < 0:
            raise InsufficientCredits(required=-entry.amount, balance=balance, available=available)


def _reserve(change: Change, work: Work, found: Found, ctx: Decision) -> tuple[Outcome, list[Effect]]:
    """Open a hold (invariant 6): it counts against `available` until it ends or expires."""
    idem, idem_key = change.idempotency, idem_sk(change.idempotency)
    if idem is not None and idem_key is not None and idem_key in found:
        return replay(found[idem_key], idem.fingerprint, IdempotencyKeyReused, "hold_id"), []
    assert change.amount is not None
    now_ms = ctx.now_ms
    work.prune(now_ms)
    available = work.available(now_ms)
    balance = work.spendable(now_ms)
    if balance < 0 or change.amount > available:
        raise InsufficientCredits(required=change.amount, balance=balance, available=available)
    work.check_limit(change.amount, now_ms)
    if len(work.holds) >= MAX_OPEN_HOLDS:
        raise TooManyHolds(f"An account keeps at most {MAX_OPEN_HOLDS} open holds; end some first.")
    opened = HoldOpened(
        ctx.new_id(),
        change.amount,
        now_ms + change.ttl_seconds * 1000,
        change.description,
        idem.key if idem else None,
        change.action,
    )
    work.holds[opened.hold_id] = (opened.amount, opened.until_ms)
    work.draws[opened.hold_id] = lots.draw(work.lots, opened.amount, now_ms)  # it keeps them (ADR 0010)
    work.holds_changed = work.lots_changed = True
    value = {
        "hold_id": opened.hold_id,
        "amount": opened.amount,
        "expires_at_ms": opened.until_ms,
        "balance": balance,
        "available": available - opened.amount,
        "replayed": False,
    }
    found[keys.hold_sk(opened.hold_id)] = {
        "hold_id": opened.hold_id,
        "amount": opened.amount,
        "state": "open",
        "until_ms": opened.until_ms,
        "description": opened.description,
        "action": opened.action,
        "idempotency_key": opened.idempotency_key,
    }
    effects: list[Effect] = [opened]
    if idem is not None:
        marker = {"fingerprint": idem.fingerprint, "hold_id": opened.hold_id, "result": value}
        effects.append(KeyRemembered(idem, marker, IDEMPOTENCY_TTL_SECONDS))
        found[keys.idem_sk(idem.key)] = marker
    return Outcome.applied(value), effects


def _end(change: Change, work: Work, found: Found, ctx: Decision) -> tuple[Outcome, list[Effect]]:
    """Capture or release a hold: it ends once (invariant 7)."""
    assert change.hold_id is not None
    hold = found.get(keys.hold_sk(change.hold_id))
    if hold is None:
        raise HoldNotFound("No such hold for this user.")
    if hold["state"] != "open":
        return _ended_already(change, hold), []
    # The account's map decides whether a hold still counts (a writer whose clock ran ahead may have
    # pruned it already): one that no longer counts can no longer charge.
    if hold["until_ms"] <= ctx.now_ms or change.hold_id not in work.holds:
        if change.kind is Kind.CAPTURE:
            raise HoldExpired(f"This hold expired at {iso_ms(hold['until_ms'])}; it charges nothing.")
        # already counts for nothing: say so, write nothing
        nothing = {"hold_id": change.hold_id, "released": hold["amount"], "balance": work.spendable(ctx.now_ms)}
        return Outcome.applied({**nothing, "available": work.available(ctx.now_ms), "replayed": False}), []
    if change.kind is Kind.CAPTURE:
        value, ended, effects = _capture(change, hold, work, found, ctx)
    else:
        value, ended, effects = _release(change, hold, work, found, ctx)
    balance, available = work.spendable(ctx.now_ms), work.available(ctx.now_ms)
    value.update({"balance": balance, "available": available, "replayed": False})
    ended.update({"result": value, "ended_at": iso_utc(ctx.now)})
    effects.append(HoldClosed(change.hold_id, ended))
    found[keys.hold_sk(change.hold_id)] = {**hold, **ended}
    return Outcome.applied(value), effects


def _ended_already(change: Change, hold: Mapping[str, Any]) -> Outcome:
    """A hold that ended: the same end replays its answer; a different one is refused (409)."""
    capture = change.kind is Kind.CAPTURE
    if hold["state"] == "captured":
        if capture and change.amount in (None, hold["captured"]):
            return Outcome.applied({**hold["result"], "replayed": True})
        raise HoldCaptured(f"This hold was already captured, for {hold['captured']} credits.")
    if not capture:
        return Outcome.applied({**hold["result"], "replayed": True})
    raise HoldReleased("This hold was released; it can no longer be captured.")


def _close(change: Change, work: Work, ctx: Decision, keep: lots.Draws) -> None:
    """The hold leaves the account; `keep` of its credits go back to their lots (those of lots that
    expired meanwhile expire now: `work.settled`)."""
    assert change.hold_id is not None
    work.holds.pop(change.hold_id, None)
    work.draws.pop(change.hold_id, None)
    work.holds_changed = True
    work.give_back(keep, ctx.now_ms)
    work.settle(ctx)


def _capture(
    change: Change, hold: Mapping[str, Any], work: Work, found: Found, ctx: Decision
) -> tuple[dict[str, Any], dict[str, Any], list[Effect]]:
    """ONE usage entry of the amount captured (none for 0), reference `hold:<id>` (a system one)."""
    amount = hold["amount"] if change.amount is None else change.amount
    if amount > hold["amount"]:
        raise CaptureExceedsHold(f"The hold is for {hold['amount']} credits; {amount} cannot be captured.")
    if amount > 0 and work.spendable(ctx.now_ms) - amount < 0:
        # invariant 3: only a clawback takes a balance below zero (one came since the hold)
        balance = work.spendable(ctx.now_ms)
        raise InsufficientCredits(required=amount, balance=balance, available=work.available(ctx.now_ms))
    held = work.draws.get(str(change.hold_id), {})
    # what of the amount its hold no longer draws (a clawback took its purchase's credits from it)
    # comes from the lots that count, in burn order
    short = max(0, amount - sum(held.values()))
    if short > lots.spendable(work.lots, ctx.now_ms):
        balance = work.spendable(ctx.now_ms)
        raise InsufficientCredits(required=amount, balance=balance, available=work.available(ctx.now_ms))
    spent, rest = lots.consume(work.lots, held, amount)
    for lot_id, n in lots.draw(work.lots, short, ctx.now_ms).items():
        spent[lot_id] = spent.get(lot_id, 0) + n
        work.lots_changed = True
    work.draws[str(change.hold_id)] = rest  # the hold draws only the rest now (`_close` gives it back)
    effects: list[Effect] = []
    transaction_id = None
    if amount > 0:
        entry = Entry(
            -amount,
            "usage",
            hold.get("description", ""),
            f"hold:{change.hold_id}",
            system_reference=True,
            action=hold.get("action"),
        )
        work.spend(amount)
        posted = work.append(entry, None, entry_fingerprint(entry), found, ctx, draws=spent)
        effects.append(posted)
        transaction_id = posted.transaction_id
    _close(change, work, ctx, rest)
    ended: dict[str, Any] = {"state": "captured", "captured": amount}
    if change.note is not None:
        ended["response"] = change.note
    return {"hold_id": change.hold_id, "transaction_id": transaction_id, "charged": amount}, ended, effects


def _release(
    change: Change, hold: Mapping[str, Any], work: Work, found: Found, ctx: Decision
) -> tuple[dict[str, Any], dict[str, Any], list[Effect]]:
    _close(change, work, ctx, work.draws.get(str(change.hold_id), {}))
    effects: list[Effect] = []
    if hold.get("idempotency_key"):
        # a released hold charged nothing: its key is free for a retry that should charge
        effects.append(KeyFreed(hold["idempotency_key"]))
        found.pop(keys.idem_sk(hold["idempotency_key"]), None)
    return {"hold_id": change.hold_id, "released": hold["amount"]}, {"state": "released"}, effects
