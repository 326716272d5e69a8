"""The model's credit lots, written from the rules (docs/design.md section 16 and invariants 9 to
11, docs/adr/0010-credit-lots.md), never by calling `credits.ledger.lots`.

What an account's lots must be: every credit adds to a lot (credits without expiry join the open
lot of the same category and priority, else a new lot named by the entry's seq); every debit draws
in the burn order (priority, soonest expiry with none last, oldest) from the lots that have not
expired; a hold draws when it opens and keeps its credits across an expiry, and what it gives back
repays a debt first; an expired lot counts for nothing from its expiry on, and the next write
records its remainder in an `expiration` entry (at most `MAX_EXPIRIES` a write, the rest with the
next); a lot about to expire is announced once; a lot with nothing left, nothing held and nothing a
refund may still need closes. The debt is what lots and holds hold beyond the balance.

Plain functions over `MLot`s (the `User` in `records.py` keeps them); the checks are in `commits.py`
and `lotchecks.py`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

NEVER = 2**63  # a lot without expiry sorts after every dated one
DAY_MS = 86_400_000
WARN_MS = 7 * DAY_MS  # "Credits Expiring Soon" this long before a lot expires
MAX_EXPIRIES = 8  # expiration entries (and announcements) one write makes; the rest go with the next
MAX_LOTS = 50  # lots an account keeps; past it new credits join an existing lot
MEMORY_MS = 180 * DAY_MS  # an expired purchase lot is remembered this long for its refunds
MAX_LABEL = 60
DEFAULT_PRIORITY = {"paid": 50, "promotional": 10}
NOTE_RETENTION_S = 7 * 86_400  # an expiring-lot note outlives the lot's expiry by a week

Draws = dict[str, int]


@dataclass(frozen=True, slots=True)
class Terms:
    """What a credit's lot is: category, priority, expiry (Unix ms), label, purchase it answers for."""

    category: str = "paid"
    priority: int = 50
    expires: int | None = None
    label: str = ""
    source: str | None = None
    currency: str | None = None  # bought in (None: granted)
    price: tuple[int, int] | None = None  # (minor units, credits)


@dataclass(slots=True, eq=False)
class MLot:
    id: str
    category: str
    priority: int
    expires: int | None
    granted: int
    remaining: int
    created: int
    label: str = ""
    source: str | None = None
    expired: int = 0  # credits recorded by its expiration entries
    forgiven: int = 0  # of those, what refunds counted as gone already
    dforgiven: int = 0  # what open disputes counted as gone already (a won dispute undoes it)
    warned: bool = False
    expiries: int = 0  # its expiration entries so far
    currency: str | None = None
    price: tuple[int, int] = (0, 0)  # what its credits were bought for: (minor units, credits)

    def order(self) -> tuple[int, int, int, int]:
        return (
            self.priority,
            NEVER if self.expires is None else self.expires,
            self.created,
            int(self.id) if self.id.isdigit() else 0,
        )

    def gone(self, t: int) -> bool:
        """Expired at `t` (Unix ms): it counts for nothing from its expiry on."""
        return self.expires is not None and self.expires <= t

    def remembered(self, t: int) -> bool:
        """An expired purchase lot stays (empty) while a refund may still need it, or while a dispute
        counted some of its expired credits (a won dispute gives back only the rest)."""
        if self.source is None or self.expires is None:
            return False
        return (self.expired > self.forgiven and t < self.expires + MEMORY_MS) or self.dforgiven > 0

    def stored(self) -> dict[str, Any]:
        """As the account item keeps it (docs/design.md section 3): empty fields left out."""
        out: dict[str, Any] = {
            "c": self.category,
            "p": self.priority,
            "g": self.granted,
            "r": self.remaining,
            "t": self.created,
        }
        for short, value in (
            ("x", self.expires),
            ("n", self.label),
            ("s", self.source),
            ("e", self.expired),
            ("f", self.forgiven),
            ("fd", self.dforgiven),
            ("w", 1 if self.warned else 0),
            ("k", self.expiries),
            ("cu", self.currency),
            ("pm", self.price[0]),
            ("pq", self.price[1]),
        ):
            if value:
                out[short] = value
        return out


def spendable(lots: Mapping[str, MLot], t: int) -> list[MLot]:
    """The lots a debit may draw from at `t`, in burn order."""
    return sorted((lot for lot in lots.values() if lot.remaining > 0 and not lot.gone(t)), key=MLot.order)


def draw(lots: Mapping[str, MLot], amount: int, t: int) -> Draws:
    """Take up to `amount` in burn order; what the lots cannot cover is left (a debt, or a refusal)."""
    taken: Draws = {}
    for lot in spendable(lots, t):
        if amount <= 0:
            break
        n = min(amount, lot.remaining)
        lot.remaining -= n
        taken[lot.id] = taken.get(lot.id, 0) + n
        amount -= n
    return taken


def consume(lots: Mapping[str, MLot], held: Draws, amount: int) -> tuple[Draws, Draws]:
    """A capture of `amount` from a hold's draws, in burn order (expired lots too: a hold keeps what
    it drew); and what is left to give back."""
    spent: Draws = {}
    rest = dict(held)
    for lot_id in sorted(held, key=lambda i: lots[i].order()):
        n = min(amount, rest[lot_id])
        if n:
            spent[lot_id] = n
            rest[lot_id] -= n
            amount -= n
    return spent, {lot_id: n for lot_id, n in rest.items() if n}


def debt(lots: Mapping[str, MLot], hold_draws: Iterable[Draws], balance: int) -> int:
    """What lots and holds hold beyond the balance: what a clawback took that no lot had (signed: a
    negative debt means credits on the balance that no lot holds)."""
    return sum(lot.remaining for lot in lots.values()) + sum(sum(d.values()) for d in hold_draws) - balance


def place(lots: dict[str, MLot], terms: Terms, amount: int, lot_id: str, t: int, held: set[str]) -> str:
    """Add credits: without expiry to the open lot of their category and priority, else to a new lot;
    at MAX_LOTS an expired lot with nothing left and nothing held makes room (one no dispute counted
    first, the soonest expired first), else they join the same category's lot that expires last and
    make it expire no sooner than their own terms."""
    if terms.expires is None:
        for lot in lots.values():
            if (
                lot.expires is None
                and lot.category == terms.category
                and lot.priority == terms.priority
                and lot.source == terms.source
                and same_price(lot, terms)
            ):
                lot.granted += amount
                lot.remaining += amount
                return lot.id
    if len(lots) >= MAX_LOTS:
        for lot in sorted(lots.values(), key=lambda lot: (lot.dforgiven > 0, lot.expires or NEVER)):
            if lot.remaining == 0 and lot.id not in held and lot.gone(t):
                del lots[lot.id]
                break
    priced = [lot for lot in lots.values() if same_price(lot, terms)]
    if len(lots) >= MAX_LOTS and priced:  # else a lot of their own, past the bound
        same = [lot for lot in priced if lot.category == terms.category] or priced
        target = max(same, key=lambda lot: (NEVER if lot.expires is None else lot.expires, -lot.created))
        if target.expires is not None and (terms.expires is None or terms.expires > target.expires):
            target.expires = terms.expires
        if terms.category == "paid":
            target.category = "paid"
        target.granted += amount
        target.remaining += amount
        return target.id
    lots[lot_id] = MLot(
        lot_id,
        terms.category,
        terms.priority,
        terms.expires,
        amount,
        amount,
        t,
        terms.label[:MAX_LABEL],
        terms.source,
        currency=terms.currency,
        price=terms.price or (0, 0),
    )
    return lot_id


def same_price(lot: MLot, terms: Terms) -> bool:
    """Credits join only a lot bought at the same price in the same currency (or granted, as they)."""
    money, credits = terms.price or (0, 0)
    return lot.currency == terms.currency and lot.price[0] * credits == money * lot.price[1]


def priced(lots: Mapping[str, MLot], terms: Terms, item: Mapping[str, Any]) -> Terms:
    """A credit's currency and price from its entry: a purchase's own, a won dispute's its purchase's."""
    # the credits its money paid for: a won dispute's include those it found expired (not given back)
    currency, money = item.get("currency"), item.get("monetary_amount")
    amount = item["amount"] + (item.get("expired_part") or 0)
    if currency is None or not money or amount <= 0:
        return terms
    # (a won dispute whose purchase lot is gone: the payment's price, which the entry records)
    recorded = item.get("lot_price")
    price = (int(recorded[0]), int(recorded[1])) if recorded else (money, amount)
    for lot in source_lots(lots, item.get("source") or terms.source):
        if lot.price[1] and lot.currency == currency:
            price = lot.price
            break
    return dataclasses.replace(terms, currency=currency, price=price)


def source_lots(lots: Mapping[str, MLot], source: str | None) -> list[MLot]:
    """A purchase's lots, oldest first: its own, and those a won dispute gave its credits back to."""
    if source is None:
        return []
    return sorted((lot for lot in lots.values() if lot.source == source), key=lambda lot: int(lot.id))


def take_held(lots: Mapping[str, MLot], holds: Mapping[str, Draws], mine: list[MLot], need: int, t: int) -> Draws:
    """A clawback takes its purchase's credits that open holds drew (holds by id, the purchase's lots
    oldest first); the hold draws as much from the other lots instead, in burn order, as far as they
    cover (the rest its capture draws then). What it took, by the purchase's lot."""
    taken: Draws = {}
    for hold_id in sorted(holds):
        held = holds[hold_id]
        for lot in mine:
            want = min(held.get(lot.id, 0), need - sum(taken.values()))
            if want <= 0:
                continue
            held[lot.id] -= want
            if not held[lot.id]:
                del held[lot.id]
            for lot_id, n in draw(lots, want, t).items():
                held[lot_id] = held.get(lot_id, 0) + n
            taken[lot.id] = taken.get(lot.id, 0) + want
    return taken


def held_lots(hold_draws: Iterable[Draws]) -> set[str]:
    return {lot_id for d in hold_draws for lot_id, n in d.items() if n}


def due(lots: Mapping[str, MLot], holds: Iterable[tuple[int, Draws]]) -> int | None:
    """When the account next owes a write nobody may make (`lots_due`): an announcement, an expiry,
    or a hold's credits coming back to a lot that expired; None when nothing is pending."""
    holds = list(holds)
    times: list[int] = []
    for lot in lots.values():
        if lot.expires is None:
            continue
        if lot.remaining > 0:
            times.append(lot.expires if lot.warned else lot.expires - WARN_MS)
        times.extend(max(lot.expires, until) for until, d in holds if d.get(lot.id))
    return min(times) if times else None


def pruned(lots: Mapping[str, MLot], holds: list[tuple[int, Draws]], balance: int, t: int) -> dict[str, MLot]:
    """The lots as the next write will see them at `t` (copies): the holds that expired (`holds`: the
    account's, in its map's order) gave their credits back, each repaying a debt from the lots that
    count."""
    after = {lot_id: dataclasses.replace(lot) for lot_id, lot in lots.items()}
    kept = list(holds)
    for hold in holds:
        until, d = hold
        if until > t:
            continue
        kept.remove(hold)
        for lot_id, n in d.items():
            if lot_id in after:
                after[lot_id].remaining += n
        owed = debt(after, (k[1] for k in kept), balance)
        if d and owed > 0:
            draw(after, owed, t)
    return after


def gone(lots: Mapping[str, MLot], holds: list[tuple[int, Draws]], balance: int, t: int) -> int:
    """The credits that count for nothing at `t` and wait for their expiration entry: what is left in
    lots that expired once the expired holds gave back (what they drew from an expired lot comes back
    to expire)."""
    if all(until > t for until, _ in holds):  # nothing to give back: the lots as they are
        return sum(lot.remaining for lot in lots.values() if lot.gone(t))
    return sum(lot.remaining for lot in pruned(lots, holds, balance, t).values() if lot.gone(t))


def expiry_text(lot: MLot, n: int) -> str:
    """An expiration entry's description: "Expired: 70 credits of Starter (bought 3 Jan 2026)"."""
    when = datetime.fromtimestamp(lot.created / 1000, UTC)
    how = "bought" if lot.source else "granted"
    label = lot.label or ("Purchased credits" if lot.source else "Credits")
    return f"Expired: {n} credits of {label} ({how} {when.day} {when.strftime('%b %Y')})"


@dataclass(frozen=True)
class View:
    """What a read of the account must answer at `t`: expired lots (and what expired holds drew from
    them) left out of the balance; the lots that count, in burn order, as the next write will see
    them (expired holds gave their credits back, repaying a debt first), with what open holds drew."""

    balance: int
    available: int
    held: int
    open_holds: dict[str, int]
    lots: tuple[tuple[Any, ...], ...]  # (id, category, priority, expires, granted, remaining, held, created, label)


def view(balance: int, lots: Mapping[str, MLot], holds: Mapping[str, tuple[int, int, Draws]], t: int) -> View:
    """`holds`: the account's map (hold id -> amount, until, draws) in its order, expired ones included."""
    after = pruned(lots, [(until, d) for _, until, d in holds.values()], balance, t)
    gone_ = sum(lot.remaining for lot in after.values() if lot.gone(t))
    open_ = {hold_id: until for hold_id, (_, until, _) in holds.items() if until > t}
    held = sum(amount for amount, until, _ in holds.values() if until > t)
    drawn: Draws = {}
    for _, until, d in holds.values():
        if until > t:
            for lot_id, n in d.items():
                drawn[lot_id] = drawn.get(lot_id, 0) + n
    shown = []
    for lot in sorted((lot for lot in after.values() if not lot.gone(t)), key=MLot.order):
        if lot.remaining or drawn.get(lot.id):
            shown.append(
                (
                    lot.id,
                    lot.category,
                    lot.priority,
                    lot.expires,
                    lot.granted,
                    lot.remaining,
                    drawn.get(lot.id, 0),
                    lot.created,
                    lot.label,
                )
            )
    return View(balance - gone_, balance - gone_ - held, held, open_, tuple(shown))
