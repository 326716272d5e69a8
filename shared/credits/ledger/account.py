"""The account as the rules see it: what one read tells (`AccountState`) and what a pass of decisions
makes of it (`Work`): the ledger's head, open holds and what they drew, the credit lots, the month's
spend, and the entries the account owes before anything else is decided (lots that expired).
No I/O: `codec.py` reads and writes the item; `rules.py` decides changes against a `Work`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from msgspec import Struct, field, structs

from credits import keys
from credits.errors import SpendLimitReached
from credits.ledger import lots as lots_
from credits.ledger import topup as topup_
from credits.ledger.lots import Draws, Lot
from credits.ledger.outcomes import DebtRepaid, Effect, EntryPosted, LotWarned, TopUpStarted
from credits.ledger.topup import AutoTopUp, TopUpState
from credits.ledger.values import EXPIRY_WARNING_DAYS, Entry, Idempotency, entry_fingerprint, month_of

Found = dict[str, dict[str, Any]]  # the markers and holds a change names, as read (by sort key)
# expiration entries (2 items each) and announcements (1 item) one settling adds, each; the rest go
# with the next write (reads leave expired lots out meanwhile)
MAX_EXPIRIES_PER_WRITE = 8


class Decision(Struct):
    """The context of deciding: the time, fresh ids, the threshold for users who set none, and how
    long before a lot expires its credits are announced."""

    now: float
    new_id: Callable[[], str]
    default_threshold: int
    warn_ms: int = EXPIRY_WARNING_DAYS * 86_400_000

    @property
    def now_ms(self) -> int:
        return int(self.now * 1000)


class AccountState(Struct):
    """What one read of the account tells: the ledger's head, the open holds, the lots, the lease."""

    exists: bool
    balance: int
    seq: int
    combiner: str | None = None  # who holds the combiner lease (group commit), until when (Unix ms)
    combiner_until: int = 0
    combiner_pass_ms: int = 0  # how long the last combiner pass took (it sizes the next lease)
    # open holds as last written, hold id -> (amount, expires at in Unix ms); expired ones count for
    # nothing from that millisecond on, whether or not a write has pruned them yet (invariant 7)
    holds: dict[str, tuple[int, int]] = field(default_factory=dict)
    holds_rev: int = 0  # moves with every change of `holds` or the lots: a write guards it like `seq`
    # the user's settings (docs/design.md section 10) and the usage posted in `spend_month` (YYYY-MM)
    threshold: int | None = None
    spend_limit: int | None = None
    spend_month: str | None = None
    spent: int = 0
    lots: dict[str, Lot] = field(default_factory=dict)  # credit lots, by id (docs/adr/0010-credit-lots.md)
    draws: dict[str, Draws] = field(default_factory=dict)  # hold id -> the credits it drew, by lot
    lots_written: bool = True  # False: an account from before lots (its lots are derived on read)
    user_id: str = ""
    ledger_month: str | None = None  # the month of the last entry (entries never go back a month)
    auto_top_up: AutoTopUp | None = None  # the user's auto top-up settings (credits.ledger.topup)
    topup: TopUpState = field(default_factory=TopUpState)
    card_id: str | None = None  # the saved card auto top-up charges (credits.cards), if any

    def combining(self, now_ms: int) -> bool:
        return self.combiner is not None and self.combiner_until > now_ms

    def held(self, now_ms: int) -> int:
        return sum(amount for amount, until in self.holds.values() if until > now_ms)


class Work(Struct):
    """The account as a pass of decisions changes it (one change directly, many in a combiner pass)."""

    base: AccountState
    balance: int
    seq: int
    holds: dict[str, tuple[int, int]]
    month: str
    spent: int  # usage posted this month (captures and charges; open holds count on top)
    lots: dict[str, Lot] = field(default_factory=dict)
    draws: dict[str, Draws] = field(default_factory=dict)
    holds_changed: bool = False
    lots_changed: bool = False
    spent_changed: bool = False
    limit_used: bool = False  # a decision of this pass was made against the user's spend limit
    # what the account owed before any change (expirations, warnings), written with the first write
    settled: list[Effect] = field(default_factory=list)
    is_settled: bool = False
    topup: TopUpState = field(default_factory=TopUpState)
    topup_changed: bool = False
    ledger_month: str | None = None

    @classmethod
    def of(cls, state: AccountState, now: float) -> Work:
        month = month_of(now)
        if state.spend_month is not None and state.spend_month > month:
            month = state.spend_month  # a writer whose clock is behind never goes back a month
        spent = state.spent if state.spend_month == month else 0  # a new month starts from 0
        lots = {lot_id: structs.replace(lot) for lot_id, lot in state.lots.items()}
        draws = {hold_id: dict(d) for hold_id, d in state.draws.items()}
        work = cls(state, state.balance, state.seq, dict(state.holds), month, spent, lots, draws)
        work.topup = structs.replace(state.topup)
        work.ledger_month = state.ledger_month
        work.lots_changed = not state.lots_written and bool(lots)
        return work

    def top_up(self, before: int, ctx: Decision) -> TopUpStarted | None:
        """A decision took `available` from `before` to what it is now: the top-up it starts, if any
        (the account marks it pending: no other starts until it ends)."""
        settings, month = self.base.auto_top_up, month_of(ctx.now)
        if (
            settings is None
            or self.base.card_id is None
            or not topup_.starts(settings, self.topup, before, self.available(ctx.now_ms), month, ctx.now_ms)
        ):
            return None
        started = topup_.start(self.topup, self.base.user_id, month)
        self.topup_changed = True
        return TopUpStarted(
            self.topup.count, started, settings.package_id, settings.threshold, self.available(ctx.now_ms)
        )

    def spend(self, amount: int) -> None:
        self.spent += amount
        self.spent_changed = True

    def check_limit(self, amount: int, now_ms: int) -> None:
        """Invariant 8: usage this month (posted, plus open holds) never passes the user's limit."""
        limit = self.base.spend_limit
        self.limit_used = True  # the write is guarded by the limit as read (None included)
        if limit is not None and self.spent + self.held(now_ms) + amount > limit:
            raise SpendLimitReached(limit=limit, spent=self.spent + self.held(now_ms), month=self.month)

    def held(self, now_ms: int) -> int:
        return sum(amount for amount, until in self.holds.values() if until > now_ms)

    def spendable(self, now_ms: int) -> int:
        """The balance less what is left in lots that expired and whose entries are still to be
        written (one write records at most MAX_EXPIRIES_PER_WRITE of them): nothing decides on those."""
        return self.balance - sum(lot.remaining for lot in self.lots.values() if lot.expired_at(now_ms))

    def available(self, now_ms: int) -> int:
        return self.spendable(now_ms) - self.held(now_ms)

    def debt(self) -> int:
        """What a clawback took beyond the credits it found (repaid first by credits that arrive)."""
        inside = sum(lot.remaining for lot in self.lots.values()) + sum(sum(d.values()) for d in self.draws.values())
        return max(0, inside - self.balance)

    def prune(self, now_ms: int) -> None:
        """Forget expired holds, so the account item never grows with the number of holds ever made;
        what they drew goes back to its lots."""
        expired = [hold_id for hold_id, (_, until) in self.holds.items() if until <= now_ms]
        for hold_id in expired:
            del self.holds[hold_id]
            self.give_back(self.draws.pop(hold_id, {}), now_ms)
        self.holds_changed |= bool(expired)

    def give_back(self, draws: Draws, now_ms: int) -> None:
        """A hold's credits come back (it ended, or expired) to their lots; a debt is repaid first.
        What repays it with no entry of its own is noted (`DebtRepaid`), for the finance report."""
        if draws:
            lots_.give_back(self.lots, draws, now_ms)
            repaid = lots_.repay(self.lots, self.debt(), now_ms)
            self.lots_changed = True
            if repaid:
                self._note_repaid(repaid, now_ms)

    def entry_month(self, now: float) -> str:
        """The month an entry written now counts in: its date's, never before the account's previous
        entry's (a container whose clock is behind never writes into a month already left)."""
        self.ledger_month = max(month_of(now), self.ledger_month or "")
        return self.ledger_month

    def _note_repaid(self, repaid: Draws, now_ms: int) -> None:
        """One `DebtRepaid` note per write, however many holds give back (a write stays one item more):
        its repayments and their figures added up (a write is one month; its moves are contiguous in
        the ledger's order, so their value changes add up the same in any order)."""
        moved = lots_.moved(self.lots, self.draws.values(), {}, None, repaid)
        for i, effect in enumerate(self.settled):
            if isinstance(effect, DebtRepaid):
                total = dict(effect.repaid)
                for lot_id, n in repaid.items():
                    total[lot_id] = total.get(lot_id, 0) + n
                rows = {row: list(v) for row, v in effect.moved.items()}
                for row, values in moved.items():
                    rows[row] = [a + b for a, b in zip(rows.get(row, [0, 0, 0]), values, strict=True)]
                self.settled[i] = structs.replace(effect, repaid=total, moved=rows)
                return
        note = f"{self.base.holds_rev + 1:012d}"
        self.settled.append(DebtRepaid(note, self.seq, repaid, moved, self.entry_month(now_ms / 1000)))

    def take_held(self, lots: list[Lot], need: int, now_ms: int, draws: Draws) -> int:
        """A clawback takes its purchase's credits that open holds drew (`lots`: the purchase's). Each
        such hold keeps what it reserved: it draws as much from the other lots instead, in burn order,
        as far as they cover; what they do not, its capture draws when it comes (or is refused for
        credits), and its release gives nothing back. Added to the clawback's `draws` as taken from
        the purchase's lots; returns how many."""
        taken = 0
        for hold_id in sorted(self.draws):
            held = self.draws[hold_id]
            for lot in lots:
                want = min(held.get(lot.id, 0), need - taken)
                if want <= 0:
                    continue
                held[lot.id] -= want
                if not held[lot.id]:
                    del held[lot.id]
                for lot_id, n in lots_.draw(self.lots, want, now_ms).items():
                    held[lot_id] = held.get(lot_id, 0) + n
                draws[lot.id] = draws.get(lot.id, 0) + want
                taken += want
                self.holds_changed = True
        return taken

    # ---- entries ---------------------------------------------------------------------------

    def append(
        self,
        entry: Entry,
        idem: Idempotency | None,
        ref_fingerprint: str,
        found: Found,
        ctx: Decision,
        **lots_facts: Any,
    ) -> EntryPosted:
        """The next ledger entry; a later change of the same pass with the same key or reference finds
        its markers in `found` and replays this one."""
        self.seq, self.balance = self.seq + 1, self.balance + entry.amount
        lots_facts["month"] = self.entry_month(ctx.now)
        lot = lots_facts.get("lot")
        lots_facts["moved"] = lots_.moved(
            self.lots,
            self.draws.values(),
            lots_facts.get("draws", {}),
            None if lot is None else (lot, entry.amount),
            lots_facts.get("repaid", {}),
        )
        threshold = self.base.threshold if self.base.threshold is not None else ctx.default_threshold
        posted = EntryPosted(
            entry, self.seq, self.balance, ctx.new_id(), threshold, idem, ref_fingerprint, **lots_facts
        )
        if idem is not None:
            found[keys.idem_sk(idem.key)] = {**posted.result(), "fingerprint": idem.fingerprint}
        if entry.reference_id is not None:
            found[keys.ref_sk(entry.reference_id, system=entry.system_reference)] = {
                **posted.result(),
                "fingerprint": ref_fingerprint,
            }
        return posted

    def settle(self, ctx: Decision) -> list[Effect]:
        """Before a change is decided (and after a hold's credits come back): expired holds give back
        what they drew, lots that expired get their expiration entry (invariant 9), lots about to
        expire are announced once, and lots with nothing left close. Returns the new effects; they
        are also kept in `settled` (a write of the account writes them)."""
        now_ms = ctx.now_ms
        self.prune(now_ms)
        new: list[Effect] = []
        due = sorted((lot for lot in self.lots.values() if lot.expired_at(now_ms) and lot.remaining > 0), key=Lot.order)
        for lot in due[:MAX_EXPIRIES_PER_WRITE]:
            n, lot.remaining = lot.remaining, 0
            lot.expired += n
            lot.expiries += 1
            reference = f"expire:{lot.id}" if lot.expiries == 1 else f"expire:{lot.id}:{lot.expiries}"
            entry = Entry(-n, "expiration", expiry_description(lot, n), reference, system_reference=True)
            new.append(self.append(entry, None, entry_fingerprint(entry), {}, ctx, draws={lot.id: n}))
        soon = [
            lot
            for lot in self.lots.values()
            if lot.expires_ms is not None
            and not lot.warned
            and lot.remaining > 0
            and lot.expires_ms - ctx.warn_ms <= now_ms < lot.expires_ms
        ]
        for lot in sorted(soon, key=Lot.order)[:MAX_EXPIRIES_PER_WRITE]:  # the rest with the next write
            lot.warned = True
            new.append(LotWarned(lot.id, lot.remaining, int(lot.expires_ms or 0), lot.label))
        held = lots_.held_lots(self.draws.values())
        for lot in list(self.lots.values()):
            if lot.remaining == 0 and lot.id not in held and not lot.remembered(now_ms):
                del self.lots[lot.id]
                self.lots_changed = True
        self.lots_changed |= bool(new)
        self.settled += new
        self.is_settled = True
        return new


def expiry_description(lot: Lot, n: int) -> str:
    """ "Expired: 70 credits of Starter (bought 3 Jan 2026)"."""
    when = datetime.fromtimestamp(lot.created_ms / 1000, UTC)
    how = "bought" if lot.source else "granted"
    label = lot.label or ("Purchased credits" if lot.source else "Credits")
    return f"Expired: {n} credits of {label} ({how} {when.day} {when:%b %Y})"
