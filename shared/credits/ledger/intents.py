"""Queued changes (group commit) as stored: each intent's write and read side by side, with the
decision a combiner writes for it and a waiter's withdrawal (docs/adr/0004-group-commit.md).

A combiner's pass takes a decided intent off the queue and writes its decision as `DECIDED#<id>`,
outside the queue's key range: the queue holds only undecided changes (a pass's Query reads nothing
else), and the waiter reads its decision and is done (TTL removes it) with no clean-up call of its own.
Intents of an earlier version (no `format`) had their decision written onto them: a waiter still
reads one there, and a combiner leaves such intents to their own version's combiners."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from msgspec import Struct

from credits import keys
from credits.ledger.outcomes import Outcome
from credits.ledger.rules import Change, Kind
from credits.ledger.values import INTENT_TTL_SECONDS, Entry, Idempotency, LotTerms, Policy
from credits.store import NEW, Delete, Put, Write, absent, exists, plain

FORMAT = 2  # decided apart, as `DECIDED#<id>` (see the module's docstring)


class Intent(Struct, frozen=True):
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
        "format": FORMAT,
        **change_fields(intent.change),
        "expires_at": now + INTENT_TTL_SECONDS,  # never left behind, whatever happens
    }
    return Put(item, NEW)


def decided_apart(item: Mapping[str, Any]) -> bool:
    """An intent of this version, whose decision a pass writes as `DECIDED#<id>`."""
    return item.get("format") == FORMAT


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
        "source": e.source if e is not None else None,
        "action": e.action if e is not None else change.action,
        **(_terms_fields(e.lot) if e is not None and e.lot is not None else {}),
    }


def _terms_fields(terms: LotTerms) -> dict[str, Any]:
    return {
        "lot_category": terms.category,
        "lot_priority": terms.priority,
        "lot_expires_ms": terms.expires_at_ms,
        "lot_label": terms.label,
        "lot_source": terms.source,
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
            action=item.get("action"),
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
        lot=None
        if "lot_category" not in item
        else LotTerms(
            item["lot_category"],
            item.get("lot_priority"),
            item.get("lot_expires_ms"),
            item.get("lot_label", ""),
            item.get("lot_source"),
        ),
        source=item.get("source"),
        action=item.get("action"),
    )
    return Change(kind, entry, Policy(item["policy"]), idempotency, item.get("ref_fingerprint", ""))


def decision_writes(pk: str, intent: Intent, outcome: Outcome, now: int) -> list[Write]:
    """Take the intent off the queue, only if it is still there and undecided (a waiter that gave up
    has deleted it: the pass fails, and is decided again without it), and write its decision for the
    waiter, once (a resent intent decided before cannot be decided again: see `resent`)."""
    decided = {
        "pk": pk,
        "sk": keys.decided_sk(intent.id),
        "outcome": outcome.attributes(),
        "expires_at": now + INTENT_TTL_SECONDS,
    }
    return [Delete((pk, intent.sk), exists("pk") & absent("outcome")), Put(decided, NEW)]


def resent(pk: str, intent: Intent) -> Delete:
    """An intent whose decision (or withdrawal: `tombstone`) is already written: a resend of its put
    (after a lost answer) that landed after the pass took it off the queue, or after its waiter gave
    up. Removed, never decided (again)."""
    return Delete((pk, intent.sk))


def tombstone(pk: str, intent: Intent, now: int) -> Put:
    """A withdrawn intent's `DECIDED#<id>`, written once it left the queue, only if no pass decided it
    first: a put of the intent still in flight that lands later is then taken off by the next pass as
    a resend, never decided (its waiter answered "nothing was written")."""
    item = {"pk": pk, "sk": keys.decided_sk(intent.id), "withdrawn": True, "expires_at": now + INTENT_TTL_SECONDS}
    return Put(item, NEW)


def decision(item: Mapping[str, Any] | None) -> Outcome | None:
    """The decision in a `DECIDED#<id>` item (or written onto an intent of an earlier version); None
    when there is none (yet)."""
    if item is None or "outcome" not in item:
        return None
    return Outcome.from_attributes(plain(dict(item["outcome"])))


def withdrawal(pk: str, intent: Intent) -> Delete:
    """A waiter gives up: its intent goes, unless an earlier version's combiner wrote a decision onto
    it. A pass takes an intent off the queue only if it is still there, so a decision and a
    withdrawal exclude each other; whether a pass came first, the waiter learns from its `tombstone`."""
    return Delete((pk, intent.sk), absent("outcome"))
