"""The ledger's items in the table: each stored item's write and read, side by side.

The key layout is `credits.keys` (docs/design.md section 3). Here: the account item (read into an
`AccountState`, written by one guarded update), ledger entries `TX#<seq>` and their markers, holds,
the spend-limit note, queued changes (intents) with their decisions, and the combiner lease. Every
write is a `credits.store` write object; the store renders it for DynamoDB (or the simulator's table).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from credits import keys
from credits.errors import SpendLimitReached, ValidationError
from credits.ledger.outcomes import Effect, EntryPosted, HoldClosed, HoldOpened, KeyFreed, KeyRemembered, Outcome
from credits.ledger.rules import AccountState, Change, Kind, Work, ref_sk
from credits.ledger.values import (
    HOLD_RETENTION_SECONDS,
    IDEMPOTENCY_TTL_SECONDS,
    INTENT_TTL_SECONDS,
    LIMIT_NOTE_TTL_SECONDS,
    AccountView,
    Entry,
    Hold,
    Idempotency,
    Policy,
    Transaction,
    iso_utc,
)
from credits.store import NEW, Cond, Delete, Put, Update, Write, absent, eq, exists, lt, plain

# ---- the account --------------------------------------------------------------------------------


def read_account(item: Mapping[str, Any] | None) -> AccountState:
    """The account item as the rules read it (absent, or holding only a Stripe customer id: empty)."""
    if item is None:
        return AccountState(exists=False, balance=0, seq=0)
    has_ledger = "seq" in item
    holds = plain(item.get("holds") or {})
    return AccountState(
        exists=has_ledger,
        balance=item["balance"] if has_ledger else 0,
        seq=item["seq"] if has_ledger else 0,
        combiner=item.get("combiner"),
        combiner_until=item.get("combiner_until", 0),
        combiner_pass_ms=item.get("combiner_pass_ms", 0),
        holds={hold_id: (h["a"], h["u"]) for hold_id, h in holds.items()},
        holds_rev=item.get("holds_rev", 0),
        threshold=item.get("low_balance_threshold"),
        spend_limit=item.get("monthly_spend_limit"),
        spend_month=item.get("spend_month"),
        spent=item.get("spent", 0),
    )


def account_view(item: Mapping[str, Any] | None, now_ms: int) -> AccountView:
    """The balance, what is available of it and what open holds take (invariant 6), from the item."""
    state = read_account(item)
    held = state.held(now_ms)
    open_ = {hold_id: until for hold_id, (_, until) in state.holds.items() if until > now_ms}
    return AccountView(state.balance, state.balance - held, held, open_)


def account_update(
    pk: str, work: Work, now: float, *, combiner: str | None = None, lease_until: int = 0, pass_ms: int = 0
) -> Update:
    """The account's new balance, seq and holds, guarded by what was read (invariant 2: a write only
    lands if nobody changed the ledger or the holds since); for a combiner, also by its lease, which
    the update extends to `lease_until`."""
    base = work.base
    # the ledger's head as read (no ledger yet: the item may exist, holding only a customer id)
    guard: Cond = eq("seq", base.seq) if base.exists else absent("seq")
    # the open holds as read
    guard &= eq("holds_rev", base.holds_rev) if base.holds_rev else absent("holds_rev")
    # A decision made against a spend limit the user has changed since is made again. Only the limit,
    # and only for decisions that used it (charges, reserves): a settings change never delays a
    # purchase, a clawback, a capture or a release. The threshold an entry carries is the one read
    # with it; a change of it applies to the entries decided after it.
    if work.limit_used:
        limit = base.spend_limit
        guard &= absent("monthly_spend_limit") if limit is None else eq("monthly_spend_limit", limit)
    sets: dict[str, Any] = {"balance": work.balance, "seq": work.seq, "updated_at": iso_utc(now)}
    if work.spent_changed:
        sets.update(spent=work.spent, spend_month=work.month)
    if work.holds_changed:
        sets["holds"] = {hold_id: {"a": a, "u": u} for hold_id, (a, u) in work.holds.items()}
        sets["holds_rev"] = base.holds_rev + 1
    if combiner is not None:
        guard &= eq("combiner", combiner)  # our lease, extended for as long as passes take
        sets.update(combiner_until=lease_until, combiner_pass_ms=pass_ms)
    return Update(
        (pk, keys.ACCOUNT),
        set=sets,
        set_if_absent={"created_at": iso_utc(now)},
        condition=guard,
    )


# ---- what a decision writes ---------------------------------------------------------------------


def writes(pk: str, effects: Sequence[Effect], now: float) -> list[Write]:
    """The store writes of a decision's effects, in order."""
    out: list[Write] = []
    for effect in effects:
        if isinstance(effect, EntryPosted):
            out += entry_writes(pk, effect, now)
        elif isinstance(effect, KeyRemembered):
            out.append(key_marker(pk, effect.idempotency, effect.fields, now, effect.ttl_seconds))
        elif isinstance(effect, HoldOpened):
            out.append(hold_put(pk, effect, now))
        elif isinstance(effect, HoldClosed):
            # ends once (invariant 7)
            out.append(Update((pk, keys.hold_sk(effect.hold_id)), set=effect.ended, condition=eq("state", "open")))
        elif isinstance(effect, KeyFreed):
            out.append(Delete((pk, keys.idem_sk(effect.key))))
    return out


def key_marker(
    pk: str, idempotency: Idempotency, fields: Mapping[str, Any], now: float, ttl_seconds: int = IDEMPOTENCY_TTL_SECONDS
) -> Put:
    """An Idempotency-Key's marker: written once while it lives (TTL deletes lazily, so an expired
    marker counts as gone)."""
    item = {
        "pk": pk,
        "sk": keys.idem_sk(idempotency.key),
        "created_at": iso_utc(now),
        "expires_at": int(now) + ttl_seconds,
    }
    return Put({**item, **fields}, NEW | lt("expires_at", int(now)))


def entry_writes(pk: str, posted: EntryPosted, now: float) -> list[Write]:
    """The ledger entry `TX#<seq>` and its reference and idempotency markers."""
    entry, result, created = posted.entry, posted.result(), iso_utc(now)
    item = {
        "pk": pk,
        "sk": keys.tx_sk(posted.seq),
        "id": posted.transaction_id,
        "seq": posted.seq,
        "amount": entry.amount,
        "balance_after": posted.balance_after,
        "type": entry.type,
        "description": entry.description,
        "reference_id": entry.reference_id,
        "reference_scope": "system" if entry.system_reference else None,
        "monetary_amount": entry.monetary_amount,
        "currency": entry.currency,
        "reason": entry.reason,
        "created_at": created,
        "low_balance_threshold": posted.threshold,
    }
    out: list[Write] = [Put(item, NEW)]  # invariant 2: a ledger slot is written once
    reference = ref_sk(entry)
    if reference is not None:
        # invariant 4: a reference is used once per user, for ever
        marker = {"pk": pk, "sk": reference, "fingerprint": posted.ref_fingerprint, "created_at": created, **result}
        out.append(Put(marker, NEW))
    if posted.idempotency is not None:
        out.append(key_marker(pk, posted.idempotency, {"fingerprint": posted.idempotency.fingerprint, **result}, now))
    return out


def transaction(item: Mapping[str, Any]) -> Transaction:
    return Transaction(
        id=item["id"],
        seq=item["seq"],
        amount=item["amount"],
        balance_after=item["balance_after"],
        type=item["type"],
        description=item.get("description", ""),
        reference_id=item.get("reference_id"),
        monetary_amount=item.get("monetary_amount"),
        currency=item.get("currency"),
        created_at=item["created_at"],
        system_reference=item.get("reference_scope") == "system",
        reason=item.get("reason"),
    )


def hold_put(pk: str, opened: HoldOpened, now: float) -> Put:
    item = {
        "pk": pk,
        "sk": keys.hold_sk(opened.hold_id),
        "hold_id": opened.hold_id,
        "amount": opened.amount,
        "state": "open",
        "until_ms": opened.until_ms,
        "description": opened.description,
        "idempotency_key": opened.idempotency_key,
        "created_at": iso_utc(now),
        # kept a week past its end, so a late capture is told "expired", never "not found"
        "expires_at": opened.until_ms // 1000 + HOLD_RETENTION_SECONDS,
    }
    return Put(item, NEW)


def hold(item: Mapping[str, Any], now_ms: int) -> Hold:
    """A hold as read: "expired" once past its end while still open (invariant 7, at read time)."""
    state = item["state"]
    if state == "open" and item["until_ms"] <= now_ms:
        state = "expired"
    result = plain(item.get("result") or {})
    return Hold(
        hold_id=item["hold_id"],
        amount=item["amount"],
        state=state,
        expires_at_ms=item["until_ms"],
        description=item.get("description", ""),
        captured=item.get("captured"),
        transaction_id=result.get("transaction_id"),
        response=item.get("response"),
        balance_after=result.get("balance"),
    )


def live(found: dict[str, dict[str, Any]], now: float) -> dict[str, dict[str, Any]]:
    """Read items without idempotency markers past their expiry (TTL deletes lazily: they are gone)."""
    return {
        sk: item
        for sk, item in found.items()
        if not (sk.startswith(keys.IDEM) and item.get("expires_at", 0) < int(now))
    }


def limit_note(pk: str, refused: SpendLimitReached, now: float) -> Put:
    """The month's first refusal by the user's spend limit: written once, for its event."""
    item = {
        "pk": pk,
        "sk": keys.limit_sk(refused.month),
        "limit": refused.limit,
        "spent": refused.spent,
        "month": refused.month,
        "created_at": iso_utc(now),
        "expires_at": int(now) + LIMIT_NOTE_TTL_SECONDS,
    }
    return Put(item, NEW)


# ---- queued changes (group commit) --------------------------------------------------------------


@dataclass(frozen=True)
class Intent:
    """A queued change: everything a combiner needs to decide and post it."""

    id: str
    created_ms: int
    apply_before_ms: int
    change: Change

    @property
    def sk(self) -> str:
        return keys.intent_sk(self.created_ms, self.id)


def intent_put(pk: str, intent: Intent, now: int) -> Put:
    """Conditioned on absence: a resend after a lost answer must not wipe a decision already written
    onto the intent (which would let it be decided, and applied, again)."""
    item = {
        "pk": pk,
        "sk": intent.sk,
        "intent_id": intent.id,
        "apply_before_ms": intent.apply_before_ms,
        **change_fields(intent.change),
        "expires_at": now + INTENT_TTL_SECONDS,  # never left behind, whatever happens
    }
    return Put(item, NEW)


def intent(item: Mapping[str, Any]) -> Intent:
    return Intent(
        id=item["intent_id"],
        created_ms=int(item["sk"].split("#")[2]),
        apply_before_ms=item["apply_before_ms"],
        change=change_from_fields(item),
    )


def change_fields(change: Change) -> dict[str, Any]:
    """A change as stored on its intent (None values are not written)."""
    e, idem = change.entry, change.idempotency
    return {
        "kind": change.kind.value,
        "amount": e.amount if e is not None else change.amount,
        "type": e.type if e is not None else None,
        "description": e.description if e is not None else change.description,
        "reference_id": e.reference_id if e is not None else None,
        "system_reference": (e.system_reference or None) if e is not None else None,
        "reason": e.reason if e is not None else None,
        "monetary_amount": e.monetary_amount if e is not None else None,
        "currency": e.currency if e is not None else None,
        "policy": change.policy.value if change.policy is not None else None,
        "idempotency_key": idem.key if idem else None,
        "idempotency_fingerprint": idem.fingerprint if idem else None,
        "ref_fingerprint": change.ref_fingerprint,
        "hold_id": change.hold_id,
        "ttl_seconds": change.ttl_seconds or None,
        "note": change.note,
    }


def change_from_fields(item: Mapping[str, Any]) -> Change:
    kind = Kind(item.get("kind", Kind.POST.value))
    key = item.get("idempotency_key")
    idempotency = None if key is None else Idempotency(key, item["idempotency_fingerprint"])
    if kind is not Kind.POST:
        return Change(
            kind,
            idempotency=idempotency,
            hold_id=item.get("hold_id"),
            amount=item.get("amount"),
            ttl_seconds=item.get("ttl_seconds", 0),
            description=item.get("description", ""),
            note=item.get("note"),
        )
    entry = Entry(
        item["amount"],
        item["type"],
        item.get("description", ""),
        item.get("reference_id"),
        item.get("monetary_amount"),
        item.get("currency"),
        system_reference=bool(item.get("system_reference")),
        reason=item.get("reason"),
    )
    return Change(kind, entry, Policy(item["policy"]), idempotency, item.get("ref_fingerprint", ""))


def decision_update(pk: str, intent: Intent, outcome: Outcome) -> Update:
    """Write the decision onto the intent, only if it is still queued and undecided (a waiter that
    cancelled has deleted it: the pass fails, and is decided again without it)."""
    return Update((pk, intent.sk), set={"outcome": outcome.attributes()}, condition=exists("pk") & absent("outcome"))


def decision(item: Mapping[str, Any]) -> Outcome | None:
    """The decision written on an intent; None while it is queued."""
    return Outcome.from_attributes(plain(dict(item["outcome"]))) if "outcome" in item else None


def withdrawal(pk: str, intent: Intent) -> Delete:
    """A waiter gives up: its intent goes only while undecided (a decision and a withdrawal exclude each other)."""
    return Delete((pk, intent.sk), absent("outcome"))


# ---- the combiner lease (on the account item) --------------------------------------------------


def lease_take(pk: str, owner: str, now_ms: int, lease_ms: int) -> Update:
    """Become the combiner if nobody is, or the last one's lease lapsed; ours already counts (a resend
    after a lost answer finds the lease ours)."""
    free = absent("combiner_until") | lt("combiner_until", now_ms) | eq("combiner", owner)
    return Update((pk, keys.ACCOUNT), set={"combiner": owner, "combiner_until": now_ms + lease_ms}, condition=free)


def lease_renew(pk: str, owner: str, until_ms: int) -> Update:
    return Update((pk, keys.ACCOUNT), set={"combiner_until": until_ms}, condition=eq("combiner", owner))


def lease_release(pk: str, owner: str) -> Update:
    return Update((pk, keys.ACCOUNT), remove=("combiner", "combiner_until"), condition=eq("combiner", owner))


# ---- pages --------------------------------------------------------------------------------------


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"seq": seq}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        seq = json.loads(base64.urlsafe_b64decode(padded.encode()))["seq"]
    except (binascii.Error, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise ValidationError("cursor is not valid.", [{"field": "cursor"}]) from exc
    if type(seq) is not int or not 1 <= seq < 10**keys.SEQ_DIGITS:
        raise ValidationError("cursor is not valid.", [{"field": "cursor"}])
    return seq
