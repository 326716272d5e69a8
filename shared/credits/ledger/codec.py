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
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from credits import keys
from credits.errors import SpendLimitReached, ValidationError
from credits.ledger import lots as lots_
from credits.ledger.account import AccountState, Work
from credits.ledger.lots import Draws, Lot
from credits.ledger.outcomes import (
    DebtRepaid,
    Effect,
    EntryPosted,
    HoldClosed,
    HoldOpened,
    KeyFreed,
    KeyRemembered,
    LotWarned,
    TopUpStarted,
)
from credits.ledger.rules import ref_sk
from credits.ledger.topup import AutoTopUp, TopUpState
from credits.ledger.values import (
    EXPIRY_WARNING_DAYS,
    FREED_KEY_SECONDS,
    HOLD_RETENTION_SECONDS,
    IDEMPOTENCY_TTL_SECONDS,
    LIMIT_NOTE_TTL_SECONDS,
    AccountView,
    Hold,
    Idempotency,
    LotView,
    Transaction,
    iso_utc,
)
from credits.store import NEW, Cond, Put, Update, Write, absent, eq, exists, lt, plain

# ---- the account --------------------------------------------------------------------------------


def read_account(item: Mapping[str, Any] | None) -> AccountState:
    """The account item as the rules read it (absent, or holding only a Stripe customer id: empty)."""
    if item is None:
        return AccountState(exists=False, balance=0, seq=0)
    has_ledger = "seq" in item
    holds = plain(item.get("holds") or {})
    balance = item["balance"] if has_ledger else 0
    hold_ends = {hold_id: (h["a"], h["u"]) for hold_id, h in holds.items()}
    if "lots" in item:
        lots = {lot_id: read_lot(lot_id, fields) for lot_id, fields in plain(item["lots"]).items()}
        draws: dict[str, Draws] = {hold_id: dict(h.get("d") or {}) for hold_id, h in holds.items()}
    else:
        lots, draws = lots_.legacy(balance, hold_ends)
    return AccountState(
        exists=has_ledger,
        balance=balance,
        seq=item["seq"] if has_ledger else 0,
        combiner=item.get("combiner"),
        combiner_until=item.get("combiner_until", 0),
        combiner_pass_ms=item.get("combiner_pass_ms", 0),
        holds=hold_ends,
        holds_rev=item.get("holds_rev", 0),
        threshold=item.get("low_balance_threshold"),
        spend_limit=item.get("monthly_spend_limit"),
        spend_month=item.get("spend_month"),
        spent=item.get("spent", 0),
        lots=lots,
        draws=draws,
        lots_written="lots" in item,
        user_id=str(item.get("pk", ""))[len(keys.USER) :],
        ledger_month=item.get("ledger_month"),
        auto_top_up=AutoTopUp.read(plain(item.get("auto_top_up"))),
        topup=TopUpState(
            count=item.get("topup_count", 0),
            pending=item.get("topup_pending"),
            month=item.get("topup_month"),
            started=item.get("topup_started", 0),
            failures=item.get("topup_failures", 0),
            retry_after_ms=item.get("topup_retry_ms", 0),
            suspended=item.get("topup_suspended"),
        ),
        card_id=(plain(item.get("card")) or {}).get("id"),
    )


_LOT_FIELDS = {  # attribute on the account item's `lots` map -> Lot field (omitted when empty)
    "c": "category",
    "p": "priority",
    "x": "expires_ms",
    "g": "granted",
    "r": "remaining",
    "t": "created_ms",
    "n": "label",
    "s": "source",
    "e": "expired",
    "f": "forgiven",
    "fd": "dispute_forgiven",
    "w": "warned",
    "k": "expiries",
    "cu": "currency",
    "pm": "price_money",
    "pq": "price_credits",
}


def read_lot(lot_id: str, fields: Mapping[str, Any]) -> Lot:
    values = {name: fields[short] for short, name in _LOT_FIELDS.items() if short in fields}
    values["warned"] = bool(values.get("warned"))
    values.setdefault("expires_ms", None)
    return Lot(id=lot_id, **values)


def lot_fields(lot: Lot) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for short, name in _LOT_FIELDS.items():
        value = getattr(lot, name)
        if name in ("category", "priority", "granted", "remaining", "created_ms"):
            out[short] = value
        elif value:
            out[short] = 1 if value is True else value
    return out


def due_shard(pk: str) -> str:
    """The partition of the lots-due index an account is in (spread so no index partition is hot)."""
    return f"{keys.LOTS_DUE_PARTITION}{zlib.crc32(pk.encode()) % keys.LOTS_DUE_SHARDS}"


def counted(work: Work, now_ms: int) -> int:
    """The balance a read answers: what lots that expired still hold counts for nothing (invariant 9)."""
    return work.spendable(now_ms)


def account_view(item: Mapping[str, Any] | None, now_ms: int) -> AccountView:
    """The balance, what is available of it and what open holds take (invariant 6), from the item."""
    state = read_account(item)
    # the account as the next write will see it: expired holds gave their credits back (a debt first)
    work = Work.of(state, now_ms / 1000)
    work.prune(now_ms)
    held = work.held(now_ms)
    balance = counted(work, now_ms)
    open_ = {hold_id: until for hold_id, (_, until) in work.holds.items()}
    live = sorted((lot for lot in work.lots.values() if not lot.expired_at(now_ms)), key=Lot.order)
    # what each lot holds now: its remaining and what open holds drew from it
    shown = []
    for lot in live:
        drawn = sum(d.get(lot.id, 0) for d in work.draws.values())
        if lot.remaining or drawn:
            shown.append(
                LotView(
                    lot.id,
                    lot.category,
                    lot.priority,
                    lot.expires_ms,
                    lot.granted,
                    lot.remaining,
                    drawn,
                    lot.created_ms,
                    lot.label,
                )
            )
    return AccountView(balance, balance - held, held, open_, tuple(shown))


def account_update(
    pk: str,
    work: Work,
    now: float,
    *,
    combiner: str | None = None,
    lease_until: int = 0,
    pass_ms: int = 0,
    warn_ms: int = EXPIRY_WARNING_DAYS * 86_400_000,
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
    # A top-up started against settings or a card the user has changed since (turned it off, removed
    # the card) is decided again: only the user's settings as in force ever start one.
    if work.topup_changed and base.auto_top_up is not None:
        guard &= eq("auto_top_up", base.auto_top_up.stored()) & exists("card")
    sets: dict[str, Any] = {"balance": work.balance, "seq": work.seq, "updated_at": iso_utc(now)}
    if work.spent_changed:
        sets.update(spent=work.spent, spend_month=work.month)
    remove: tuple[str, ...] = ()
    if work.holds_changed or work.lots_changed:
        sets["holds"] = {hold_id: _hold_fields(work, hold_id) for hold_id in work.holds}
        sets["holds_rev"] = base.holds_rev + 1
        # when the account next owes a write: its lots move it, and so does a hold's end (a capture
        # of all of a hold changes no lot)
        until = {hold_id: u for hold_id, (_, u) in work.holds.items()}
        due = lots_.due_ms(work.lots, work.draws, until, warn_ms)
        if due is None:
            remove = ("lots_due", "lots_shard")
        else:
            sets.update(lots_due=due, lots_shard=due_shard(pk))
    if work.lots_changed:
        sets["lots"] = {lot_id: lot_fields(lot) for lot_id, lot in work.lots.items()}
    if work.ledger_month is not None and work.ledger_month != base.ledger_month:
        sets["ledger_month"] = work.ledger_month  # once a month: entries never go back a month
    if work.topup_changed:  # a top-up started: pending until the payment's outcome ends it
        state = work.topup
        sets.update(
            topup_count=state.count, topup_pending=state.pending, topup_month=state.month, topup_started=state.started
        )
    if combiner is not None:
        guard &= eq("combiner", combiner)  # our lease, extended for as long as passes take
        sets.update(combiner_until=lease_until, combiner_pass_ms=pass_ms)
    return Update(
        (pk, keys.ACCOUNT),
        set=sets,
        set_if_absent={"created_at": iso_utc(now)},
        remove=remove,
        condition=guard,
    )


def _hold_fields(work: Work, hold_id: str) -> dict[str, Any]:
    amount, until = work.holds[hold_id]
    draws = {lot_id: n for lot_id, n in work.draws.get(hold_id, {}).items() if n}
    return {"a": amount, "u": until, **({"d": draws} if draws else {})}


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
            # Freed for a new request under the key, but kept (as `freed_ms`) while an intent queued
            # under it before the release could still be decided: a combiner refuses such an orphan
            # (the request it belonged to was answered) instead of applying it again.
            freed = {"freed_ms": int(now * 1000), "expires_at": int(now) + FREED_KEY_SECONDS}
            out.append(Update((pk, keys.idem_sk(effect.key)), set=freed))
        elif isinstance(effect, LotWarned):
            out.append(expiring_note(pk, effect, now))
        elif isinstance(effect, TopUpStarted):
            started = {
                "pk": pk,
                "sk": keys.topup_sk(effect.number),
                "topup_id": effect.topup_id,
                "number": effect.number,
                "package_id": effect.package_id,
                "threshold": effect.threshold,
                "available": effect.available,
                "state": "pending",
                "created_at": iso_utc(now),
            }
            out.append(Put(started, NEW))
        elif isinstance(effect, DebtRepaid):
            note = {
                "pk": pk,
                "sk": keys.repaid_sk(effect.note),
                "after_seq": effect.after_seq,
                "month": effect.month,
                "repaid": dict(effect.repaid),
                "moved": dict(effect.moved),
                "created_at": iso_utc(now),
            }
            out.append(Put(note, NEW))
    return out


def expiring_note(pk: str, warned: LotWarned, now: float) -> Put:
    """A lot's credits expire soon: written once (its `Credits Expiring Soon` event)."""
    item = {
        "pk": pk,
        "sk": keys.expiring_sk(warned.lot_id),
        "lot_id": warned.lot_id,
        "credits": warned.remaining,
        "expires_at_ms": warned.expires_ms,
        "label": warned.label,
        "created_at": iso_utc(now),
        "expires_at": warned.expires_ms // 1000 + HOLD_RETENTION_SECONDS,
    }
    return Put(item, NEW)


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
    return Put({**item, **fields}, NEW | lt("expires_at", int(now)) | exists("freed_ms"))


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
        "action": entry.action,
        "created_at": created,
        "low_balance_threshold": posted.threshold,
        # what it did to the lots (docs/adr/0010-credit-lots.md)
        "draws": dict(posted.draws) or None,
        "lot": posted.lot,
        "repaid": dict(posted.repaid) or None,
        "expired_part": posted.expired_part or None,
        "moved": dict(posted.moved) or None,
        "lot_price": list(posted.lot_price) if posted.lot_price else None,
        "gives_back": posted.gives_back or None,
        "month": posted.month or None,
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
        draws=plain(item.get("draws") or {}),
        lot=item.get("lot"),
        expired_part=item.get("expired_part", 0),
        action=item.get("action"),
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
        "action": opened.action,
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
    """Read items without idempotency markers past their expiry (TTL deletes lazily: they are gone)
    or freed by a release (a new request may use the key)."""
    return {
        sk: item
        for sk, item in found.items()
        if not (sk.startswith(keys.IDEM) and (item.get("expires_at", 0) < int(now) or "freed_ms" in item))
    }


def freed_before(found: Mapping[str, Mapping[str, Any]], key: str, created_ms: int) -> bool:
    """Whether the key's marker, as read (before `live`), was freed by a release after `created_ms`:
    an intent queued under it then belongs to a request that was answered."""
    marker = found.get(keys.idem_sk(key))
    return marker is not None and int(marker.get("freed_ms", -1)) >= created_ms


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
