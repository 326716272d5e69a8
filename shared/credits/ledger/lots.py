"""Credit lots: where an account's credits came from, the order they are spent in, and when they
expire. No I/O, no clock: the caller passes `now_ms`.

Every entry that adds credits adds them to a lot (`category` paid or promotional, `priority` 0-100,
an optional expiry). Spending draws from lots in the burn order: priority (lower first), then
soonest expiry (none last), then oldest. A hold draws its credits when it opens and keeps them
across an expiry; a release gives them back. Lots live on the account item, so a charge still
reads one item. The rules, with worked examples: docs/adr/0010-credit-lots.md.

The account's `debt` is what a clawback took beyond the credits it could find:
`debt = sum(remaining) + sum(held draws) - balance`, never negative; while it is above zero no lot
has anything left (credits added or given back repay it first).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from msgspec import Struct

from credits.ledger.values import (
    EXPIRED_LOT_MEMORY_SECONDS,
    MAX_LOT_LABEL,
    MAX_LOTS,
    LotTerms,
)

NEVER = 2**63  # sorts a lot without expiry after every dated one
NO_CURRENCY = "none"  # the finance report's row for credits sold for no money (granted, or from before lots)
LEGACY_LOT = "0"  # an account from before lots: its credits as one paid lot without expiry

Draws = dict[str, int]  # lot id -> credits


class Lot(Struct):
    id: str  # the seq of the entry that opened it
    category: str
    priority: int
    expires_ms: int | None
    granted: int
    remaining: int  # neither spent, nor held, nor expired (entries written)
    created_ms: int
    label: str = ""
    source: str | None = None  # a purchase's system reference: what its refunds draw first
    expired: int = 0  # credits of it that expired (expiration entries written)
    forgiven: int = 0  # of those, what refunds counted as gone already (rule 5)
    dispute_forgiven: int = 0  # what open dispute holds counted as gone already (a won dispute undoes it)
    warned: bool = False  # "Credits Expiring Soon" was announced
    expiries: int = 0  # expiration entries written for it so far
    # what its credits were bought for (the finance report): the currency, and `price_money` (minor
    # units) for `price_credits` credits; none for granted credits
    currency: str | None = None
    price_money: int = 0
    price_credits: int = 0

    @property
    def bucket(self) -> str:
        """The finance report's row it counts in: its currency, or NO_CURRENCY."""
        return self.currency or NO_CURRENCY

    def value(self, credits: int) -> int:
        """What `credits` of it were bought for, in minor units (rounded down; 0 for granted ones)."""
        return credits * self.price_money // self.price_credits if self.price_credits else 0

    def order(self) -> tuple[int, int, int, int]:
        """The burn order: priority, soonest expiry (none last), oldest."""
        return (self.priority, NEVER if self.expires_ms is None else self.expires_ms, self.created_ms, _number(self.id))

    def expired_at(self, now_ms: int) -> bool:
        return self.expires_ms is not None and self.expires_ms <= now_ms

    def remembered(self, now_ms: int) -> bool:
        """An expired purchase lot is remembered (empty) while a refund may still need it, and while
        an open dispute counted some of its expired credits (a won dispute gives back only the rest)."""
        if self.source is None or self.expires_ms is None:
            return False
        refundable = self.expired > self.forgiven and now_ms < self.expires_ms + EXPIRED_LOT_MEMORY_SECONDS * 1000
        return refundable or self.dispute_forgiven > 0


def _number(lot_id: str) -> int:
    return int(lot_id) if lot_id.isdigit() else 0


def ordered(lots: Mapping[str, Lot], now_ms: int) -> list[Lot]:
    """The lots that can be spent now, in burn order."""
    return sorted((lot for lot in lots.values() if lot.remaining > 0 and not lot.expired_at(now_ms)), key=Lot.order)


def spendable(lots: Mapping[str, Lot], now_ms: int) -> int:
    return sum(lot.remaining for lot in lots.values() if not lot.expired_at(now_ms))


def draw(lots: Mapping[str, Lot], amount: int, now_ms: int) -> Draws:
    """Take up to `amount` from the lots that can be spent, in burn order. What they do not cover is
    the caller's (a refusal, or a debt for a clawback)."""
    draws: Draws = {}
    for lot in ordered(lots, now_ms):
        if amount <= 0:
            break
        take = min(amount, lot.remaining)
        lot.remaining -= take
        draws[lot.id] = draws.get(lot.id, 0) + take
        amount -= take
    return draws


def consume(lots: Mapping[str, Lot], held: Draws, amount: int) -> tuple[Draws, Draws]:
    """A capture: `amount` of a hold's draws, in burn order (expired lots too: a hold keeps what it
    reserved), and the rest to give back."""
    spent: Draws = {}
    rest = dict(held)
    for lot_id in sorted(held, key=lambda i: lots[i].order() if i in lots else (0, 0, 0, 0)):
        take = min(amount, rest[lot_id])
        if take:
            spent[lot_id] = take
            rest[lot_id] -= take
            amount -= take
    return spent, {lot_id: n for lot_id, n in rest.items() if n}


def give_back(lots: dict[str, Lot], draws: Draws, now_ms: int) -> None:
    """A hold's credits return to their lots (an expired lot's return expire at the next settle)."""
    for lot_id, n in draws.items():
        lot = lots.get(lot_id)
        if lot is None:  # cannot happen: a lot stays while a hold draws on it; keep the credits anyway
            lots[lot_id] = lot = Lot(lot_id, "paid", 50, None, n, 0, now_ms)
        lot.remaining += n


def repay(lots: Mapping[str, Lot], debt: int, now_ms: int) -> Draws:
    """Credits that arrive or come back while the account owes (a clawback took more than it found)
    pay that first, from the lots that count, in burn order (a lot that expired pays nothing)."""
    return draw(lots, debt, now_ms) if debt > 0 else {}


def place(lots: dict[str, Lot], terms: LotTerms, amount: int, lot_id: str, now_ms: int, held: set[str]) -> str:
    """Add `amount` credits with `terms`; the id of the lot that holds them. Credits without expiry join
    the open lot of the same category, priority, source and price (a purchase's credits stay its own,
    so its refunds find them); at MAX_LOTS a forgotten expired lot makes room, else they join the lot
    at their price that expires last (never sooner than their own terms), else a lot of their own."""
    priority, expires = terms.rank, terms.expires_at_ms
    target = None
    if expires is None:
        target = next(
            (
                lot
                for lot in lots.values()
                if lot.expires_ms is None
                and lot.category == terms.category
                and lot.priority == priority
                and lot.source == terms.source
                and _same_price(lot, terms)
            ),
            None,
        )
    if target is None and len(lots) >= MAX_LOTS:
        _make_room(lots, now_ms, held)
        if len(lots) >= MAX_LOTS:  # (past it when credits at another price had to get a lot)
            target = _latest(lots, terms)
    if target is None:
        label = terms.label[:MAX_LOT_LABEL]
        money, credits = terms.price or (0, 0)
        lots[lot_id] = Lot(
            lot_id,
            terms.category,
            priority,
            expires,
            amount,
            amount,
            now_ms,
            label,
            terms.source,
            currency=terms.currency,
            price_money=money,
            price_credits=credits,
        )
        return lot_id
    target.granted += amount
    target.remaining += amount
    return target.id


def _make_room(lots: dict[str, Lot], now_ms: int, held: set[str]) -> bool:
    """Forget an expired purchase lot remembered for refunds: the oldest, one no open dispute counted
    first (never one a hold still draws on). False when there is none."""
    for lot in sorted(lots.values(), key=lambda lot: (lot.dispute_forgiven > 0, lot.expires_ms or NEVER)):
        if lot.remaining == 0 and lot.id not in held and lot.expired_at(now_ms):
            del lots[lot.id]
            return True
    return False


def _same_price(lot: Lot, terms: LotTerms) -> bool:
    """Credits join a lot only at the same price in the same currency (the finance report values a
    lot's credits at one price)."""
    money, credits = terms.price or (0, 0)
    return lot.currency == terms.currency and lot.price_money * credits == money * lot.price_credits


def _latest(lots: dict[str, Lot], terms: LotTerms) -> Lot | None:
    """At the bound: the lot at the same price that expires last takes the credits (the same category's
    first), and expires no sooner than they would have (paid if either is). None when no lot has their
    price: they get a lot of their own, past the bound (one per price at most)."""
    priced = [lot for lot in lots.values() if _same_price(lot, terms)]
    if not priced:
        return None
    same = [lot for lot in priced if lot.category == terms.category] or priced
    target = max(same, key=lambda lot: (NEVER if lot.expires_ms is None else lot.expires_ms, -lot.created_ms))
    expires = terms.expires_at_ms
    if target.expires_ms is not None and (expires is None or expires > target.expires_ms):
        target.expires_ms = expires
    if terms.category == "paid":
        target.category = "paid"
    return target


def source_lots(lots: Mapping[str, Lot], source: str | None) -> list[Lot]:
    """A purchase's lots, oldest first: its own, and those a won dispute gave its credits back to."""
    if source is None:
        return []
    return sorted((lot for lot in lots.values() if lot.source == source), key=lambda lot: _number(lot.id))


Moved = dict[str, list[int]]  # bucket -> [credits in (+) or out (-) for the entry's kind, repaid, value change]


def moved(
    lots: Mapping[str, Lot],
    hold_draws: Iterable[Draws],
    taken: Mapping[str, int],
    placed: tuple[str, int] | None,
    repaid: Mapping[str, int],
) -> Moved:
    """What one entry did to the credits in lots (remaining and held), by bucket, as the finance report
    counts it: the credits it took (`taken`, negative) or placed (positive), what of them repaid a debt
    (positive: taken for an earlier clawback), and the change of their value at the lots' prices.
    Called with the lots as the entry leaves them."""
    inside: dict[str, int] = {}
    for draws in hold_draws:
        for lot_id, n in draws.items():
            inside[lot_id] = inside.get(lot_id, 0) + n
    change: dict[str, int] = {lot_id: -n for lot_id, n in taken.items()}
    if placed is not None:
        change[placed[0]] = change.get(placed[0], 0) + placed[1]
    for lot_id, n in repaid.items():
        change[lot_id] = change.get(lot_id, 0) - n
    out: Moved = {}
    for lot_id, delta in change.items():
        lot = lots.get(lot_id)
        bucket = lot.bucket if lot is not None else NO_CURRENCY
        row = out.setdefault(bucket, [0, 0, 0])
        if lot is not None:
            now = lot.remaining + inside.get(lot_id, 0)
            row[2] += lot.value(now) - lot.value(now - delta)
    for lot_id, n in taken.items():
        out[_bucket(lots, lot_id)][0] -= n
    if placed is not None:
        out[_bucket(lots, placed[0])][0] += placed[1]
    for lot_id, n in repaid.items():
        out[_bucket(lots, lot_id)][1] += n
    return {bucket: row for bucket, row in out.items() if any(row)}


def _bucket(lots: Mapping[str, Lot], lot_id: str) -> str:
    lot = lots.get(lot_id)
    return lot.bucket if lot is not None else NO_CURRENCY


def held_lots(draws: Iterable[Draws]) -> set[str]:
    return {lot_id for d in draws for lot_id, n in d.items() if n}


def due_ms(
    lots: Mapping[str, Lot], hold_draws: Mapping[str, Draws], hold_until: Mapping[str, int], warn_ms: int
) -> int | None:
    """When this account next needs a write nobody may make: a warning, an expiry, or a hold's credits
    returning to an expired lot. None when nothing is pending."""
    times: list[int] = []
    for lot in lots.values():
        if lot.expires_ms is None:
            continue
        if lot.remaining > 0:
            times.append(lot.expires_ms if lot.warned else lot.expires_ms - warn_ms)
        for hold_id, draws in hold_draws.items():
            if draws.get(lot.id):
                times.append(max(lot.expires_ms, hold_until.get(hold_id, 0)))
    return min(times) if times else None


def legacy(balance: int, holds: Mapping[str, tuple[int, int]]) -> tuple[dict[str, Lot], dict[str, Draws]]:
    """The lots of an account written before lots: its credits as one paid lot without expiry, each
    open hold drawing its amount from it (what a clawback took beyond them is the debt)."""
    held = sum(amount for amount, _ in holds.values())
    remaining = max(0, balance - held)
    lots = (
        {LEGACY_LOT: Lot(LEGACY_LOT, "paid", 50, None, remaining + held, remaining, 0, "Credits")}
        if balance > 0 or holds
        else {}
    )
    draws = {hold_id: {LEGACY_LOT: amount} for hold_id, (amount, _) in holds.items()}
    return lots, draws
