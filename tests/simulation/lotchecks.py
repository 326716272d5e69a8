"""The model's checks of credit lots, run inside the commit checks (`commits.py`) for every
transaction that writes an account (invariants 9 to 11 of docs/design.md section 4):

- the writes of one commit are replayed in the order they were decided: what the account owed
  first (expired holds give back, expired lots get their `expiration` entry, lots about to expire
  are announced, empty lots close), then each change, and after each hold's end (what it gave back)
  and each credit, what that made due; every entry's draws, lot, repayment and expired part are what
  the rules give for the lots as they stood;
- an `expiration` entry is the remainder of a lot that had expired at the entry's time, once per
  lot and reference (`expire:<lot>`, then `expire:<lot>:<n>` for credits a hold gave back later),
  written by the first write after the expiry; an `EXPIRING#` note is written once per lot, when it
  enters the warning window with credits left;
- rule 5: a clawback naming its purchase takes that purchase's own lot first, never takes back the
  purchase's credits that had expired (`expired_part`, from the purchase's own record, not from
  the lot's memory), then other lots in burn order, then a debt; a won dispute gives back only what
  its dispute took; of a purchase's credits, those that expired and those taken back never add up
  to more than it bought (at every commit; a Stripe payment's at rest, its steps being ordered);
- after the commit the account's lots, each hold's draws, `lots_due` and `lots_shard` are exactly
  the model's, lots and holds hold the balance plus the debt, the debt is never negative, and while
  it is above zero no lot that counts has credits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from credits import keys
from credits.ledger.codec import due_shard
from tests.simulation import lotmodel as lm
from tests.simulation.lotmodel import Draws, MLot, Terms
from tests.simulation.records import Buy, Hold, User, iso_ms

if TYPE_CHECKING:
    from tests.simulation.store import Change


@dataclass
class LotPass:
    """One commit of an account, as the lot checks replay it."""

    t: int  # the decision time (Unix ms)
    month: str
    expirations: dict[int, Change]  # its expiration entries by seq, until a settle owes them
    notes: dict[str, Mapping[str, Any]]  # its EXPIRING# notes by lot
    order: list[str]  # the account's holds as read (their order: expired ones give back in it)
    announced: dict[str, tuple[int, int, str]] = field(default_factory=dict)  # lot -> (credits, expires, label)
    touched: set[str] = field(default_factory=set)  # purchases whose credits expired or were taken back
    overdrawn: bool = False  # a debit or hold was paid with expired credits (a known bug, reported)


class LotChecks:
    """The lot checks; the state is the `Model`'s (declared here)."""

    users: dict[str, User]
    buys: dict[str, Buy]
    disputed: set[str]  # purchases with a dispute's clawback on the ledger, not ended yet
    lot_stats: dict[str, int]
    now: Callable[[], float]
    fail: Callable[[str, str], None]
    known_bug: Callable[[str, str], None]
    _entry: Callable[..., None]
    _lot_pass: LotPass  # the commit being replayed

    # ---- a commit -------------------------------------------------------------------------------

    def _lots_begin(self, u: User, changes: list[Change], before: Mapping[str, Any], t: int, month: str) -> LotPass:
        expirations: dict[int, Change] = {}
        notes: dict[str, Mapping[str, Any]] = {}
        for ch in changes:
            sk, after = ch.key[1], ch.after
            if sk.startswith(keys.TX) and after is not None and after.get("type") == "expiration":
                expirations[after["seq"]] = ch
            elif sk.startswith(keys.EXPIRING):
                if ch.before is not None or after is None:
                    self.fail("expiry", f"{u.name}: the note {sk} was {'rewritten' if after else 'deleted'}")
                    raise AssertionError  # unreachable
                notes[sk[len(keys.EXPIRING) :]] = after
        true_ms = int(self.now() * 1000)
        for lot in u.lots.values():
            if lot.expires is not None and min(t, true_ms) < lot.expires <= max(t, true_ms):
                self.lot_stats["decided_across_an_expiry"] += 1  # a clock ahead or behind the true time
        lp = self._lot_pass = LotPass(t, month, expirations, notes, list(before.get("holds") or {}))
        self._settle(u, lp, first=True)
        return lp

    def _settle(self, u: User, lp: LotPass, *, first: bool = False) -> None:
        """What a write owes before its change (and after a hold's end): expired holds give back what
        they drew, lots that expired get their expiration entry, lots about to expire are announced,
        lots with nothing left close."""
        t = lp.t
        if first:
            for hold_id in lp.order:
                hold = u.open.get(hold_id)
                if hold is not None and hold.until_ms <= t:
                    del u.open[hold_id]
                    self._give_back(u, hold, hold.draws, t)
        due = [lot for lot in u.lots.values() if lot.gone(t) and lot.remaining > 0]
        recorded: set[str] = set()
        for _ in range(min(len(due), lm.MAX_EXPIRIES)):
            self._expiration(u, lp, due, recorded)
        soon = [
            lot
            for lot in u.lots.values()
            if lot.expires is not None
            and not lot.warned
            and lot.remaining > 0
            and lot.expires - lm.WARN_MS <= t < lot.expires
        ]
        for lot in sorted(soon, key=MLot.order)[: lm.MAX_EXPIRIES]:
            lot.warned = True
            lp.announced[lot.id] = (lot.remaining, int(lot.expires or 0), lot.label)
        held = lm.held_lots(h.draws for h in u.open.values())
        for lot in list(u.lots.values()):
            if lot.remaining == 0 and lot.id not in held and not lot.remembered(t):
                del u.lots[lot.id]

    def _expiration(self, u: User, lp: LotPass, due: list[MLot], recorded: set[str]) -> None:
        """The next entry must record the remainder of one of the lots that expired (invariant 9)."""
        t = lp.t
        ch = lp.expirations.pop(u.seq + 1, None)
        if ch is None:
            owed = ", ".join(f"lot {lot.id} ({lot.remaining} credits, expired at {lot.expires})" for lot in due)
            self.fail("expiry", f"{u.name}: the write at {t} left expired credits unrecorded: {owed}")
            raise AssertionError  # unreachable
        item = ch.after
        assert item is not None
        drawn = item.get("draws") or {}
        lot_id, n = next(iter(drawn.items())) if len(drawn) == 1 else ("?", 0)
        lot = u.lots.get(lot_id)
        what = f"{u.name}: expiration entry {item['seq']} of {item['amount']} (lot {lot_id}) at {t}"
        if lot is None or lot not in due or lot_id in recorded:
            state = "absent" if lot is None else f"expires at {lot.expires}, {lot.remaining} left"
            self.fail("expiry", f"{what}: the lot had not expired with credits left, or was recorded already ({state})")
            raise AssertionError  # unreachable
        if n != lot.remaining or item["amount"] != -n:
            self.fail("expiry", f"{what}: the lot's remainder at its expiry was {lot.remaining} (draws {drawn})")
        reference = f"expire:{lot_id}" if lot.expiries == 0 else f"expire:{lot_id}:{lot.expiries + 1}"
        if item.get("reference_id") != reference or item.get("reference_scope") != "system":
            self.fail("expiry", f"{what}: reference {item.get('reference_id')}, expected the system's {reference}")
        if item.get("description") != lm.expiry_text(lot, n):
            self.fail("expiry", f"{what}: described {item.get('description')!r}, not {lm.expiry_text(lot, n)!r}")
        self._entry(u, item, t, lp.month)
        lot.remaining = 0
        lot.expired += n
        lot.expiries += 1
        recorded.add(lot_id)
        buy = self.buys.get(lot.source or "")
        if buy is not None:  # the purchase's credits that expired (in whichever of its lots)
            buy.expired += n
            buy.expired_lots.add(lot_id)
            lp.touched.add(buy.source)
        self.lot_stats["expiration_entries"] += 1
        self.lot_stats["credits_expired"] += n

    def _give_back(self, u: User, hold: Hold, draws: Draws, t: int) -> None:
        """A hold's credits return to their lots, and repay a debt first."""
        if not draws:
            return
        for lot_id, n in draws.items():
            lot = u.lots.get(lot_id)
            if lot is None:
                self.fail(
                    "lots", f"{u.name}: hold {hold.hold_id} gives back {n} credits to lot {lot_id}, which is gone"
                )
                raise AssertionError  # unreachable
            lot.remaining += n
        owed = lm.debt(u.lots, (h.draws for h in u.open.values()), u.balance)
        if owed > 0:
            lm.draw(u.lots, owed, t)

    def _lots_end(self, u: User, lp: LotPass, pk: str, before: Mapping[str, Any], after: Mapping[str, Any]) -> None:
        t = lp.t
        if lp.expirations:
            extra = sorted(lp.expirations)
            self.fail(
                "expiry", f"{u.name}: expiration entries {extra} at {t} for lots not owed (not expired, or no credits)"
            )
        self._notes(u, lp)
        stored = after.get("lots") or {}
        mine = {lot.id: lot.stored() for lot in u.lots.values()}
        if stored != mine:
            diff = {
                i: (stored.get(i), mine.get(i)) for i in sorted(set(stored) | set(mine)) if stored.get(i) != mine.get(i)
            }
            self.fail("lots", f"{u.name}: after the commit at {t} the account's lots differ (stored, model): {diff}")
        for hold in u.open.values():  # what each open hold draws (a later clawback of the pass moves it)
            drew = ((after.get("holds") or {}).get(hold.hold_id) or {}).get("d") or {}
            if drew != hold.draws:
                self.fail(
                    "burn-order",
                    f"{u.name}: hold {hold.hold_id} of {hold.amount} draws {drew} after the commit at {t}, not "
                    f"{hold.draws} (the lots, in burn order, when it opened: {hold.standing})",
                )
            hold.standing = []
        holds = [h.draws for h in u.open.values()]
        owed = lm.debt(u.lots, holds, u.balance)
        if owed < 0:
            self.fail(
                "lots-sum", f"{u.name}: lots and holds hold {u.balance + owed}, less than the balance {u.balance}"
            )
        if owed > 0:
            self.lot_stats["commits_in_debt"] += 1
            full = [lot.id for lot in u.lots.values() if lot.remaining > 0 and not lot.gone(t)]
            if full:
                self.fail("lots-debt", f"{u.name}: owes {owed} (a clawback's) while lots {full} keep credits")
        self._due(u, lp, pk, before, after)
        for source in lp.touched:
            if not source.startswith("purchase:pi_"):  # a Stripe payment's: at rest (between its steps,
                self._taken_once(u, self.buys[source], t)  # refunds are settled before the dispute's)

    def _taken_once(self, u: User, buy: Buy, t: int) -> None:
        """Rule 5: a purchase's credits are gone once: those that expired and those its refunds and
        disputes took back (less what won disputes gave back) never add up to more than it bought."""
        if buy.expired + buy.taken <= buy.credits or buy.merged or buy.forgotten or buy.taken_twice:
            return
        buy.taken_twice = True  # reported once per purchase
        self.fail(
            "rule-5",
            f"{u.name}: of the {buy.credits} credits of {buy.source}, {buy.expired} expired and its refunds and "
            f"disputes took back {buy.taken} (at {t}): {buy.expired + buy.taken - buy.credits} were taken twice",
        )

    def _notes(self, u: User, lp: LotPass) -> None:
        if set(lp.notes) != set(lp.announced):
            self.fail(
                "expiry-note",
                f"{u.name}: at {lp.t} notes were written for lots {sorted(lp.notes)}; "
                f"lots {sorted(lp.announced)} entered the warning window unannounced",
            )
        for lot_id, (credits, expires, label) in lp.announced.items():
            note = lp.notes[lot_id]
            expected = {
                "lot_id": lot_id,
                "credits": credits,
                "expires_at_ms": expires,
                "label": label,
                "expires_at": expires // 1000 + lm.NOTE_RETENTION_S,
            }
            got = {k: note.get(k, "" if k == "label" else None) for k in expected}
            if got != expected or iso_ms(str(note.get("created_at"))) != lp.t:
                self.fail("expiry-note", f"{u.name}: note {note}, expected {expected} at {lp.t}")
            self.lot_stats["expiry_notes"] += 1

    def _due(self, u: User, lp: LotPass, pk: str, before: Mapping[str, Any], after: Mapping[str, Any]) -> None:
        """`lots_due` is when the account next owes a write nobody may make; absent when nothing is
        pending; `lots_shard` its index partition, with it."""
        expected = lm.due(u.lots, ((h.until_ms, h.draws) for h in u.open.values()))
        stored = after.get("lots_due")
        shard = after.get("lots_shard")
        if (stored is None) != (shard is None) or (shard is not None and shard != due_shard(pk)):
            self.fail("lots-due", f"{u.name}: lots_due {stored} with lots_shard {shard}")
        if stored == expected:
            return
        self.fail("lots-due", f"{u.name}: lots_due is {stored} after the commit at {lp.t}; the next due is {expected}")

    # ---- entries ----------------------------------------------------------------------------------

    def _lot_entry(self, u: User, item: Mapping[str, Any], t: int, spec: tuple[Any, ...]) -> None:
        """What a (non-expiration) entry did to the lots, before the model's balance moves."""
        kind = spec[0]
        what = f"{u.name}: entry {item['seq']} ({item['type']} {item['amount']}) at {t}"
        if kind == "credit":
            self._credit(u, item, t, spec[1], item["amount"], 0, what)
        elif kind == "burn":
            self._burn(u, item, t, exact=spec[1], what=what)
        elif kind == "capture":
            self._capture(u, item, spec[1], what)
        elif kind == "claw":
            self._claw(u, item, t, spec[1], spec[2], what)
        elif kind == "restore":
            self._restore(u, item, t, spec[1], spec[2], spec[3], what)

    def _credit(
        self, u: User, item: Mapping[str, Any], t: int, terms: Terms, amount: int, unforgiven: int, what: str
    ) -> None:
        if item.get("draws"):
            self.fail("lots", f"{what}: a credit with draws {item.get('draws')}")
        if item.get("expired_part", 0) != unforgiven:
            self.fail("rule-5", f"{what}: expired_part {item.get('expired_part')}, expected {unforgiven}")
        if amount <= 0:
            if item.get("lot") is not None or item.get("repaid"):
                self.fail("lots", f"{what}: nothing to add, yet lot {item.get('lot')} repaid {item.get('repaid')}")
            return
        if terms.expires is not None and terms.expires <= t:
            self.fail("lots-credit", f"{what}: credits added to a lot that expired at {terms.expires}")
        holds = [h.draws for h in u.open.values()]
        owed = lm.debt(u.lots, holds, u.balance)
        lots = dict(u.lots)
        terms = lm.priced(u.lots, terms, item)
        lot_id = lm.place(u.lots, terms, amount, str(item["seq"]), t, lm.held_lots(holds))
        target = u.lots[lot_id]
        if lot_id != str(item["seq"]) and target.expires is not None:  # joined a dated lot: at the bound
            self.lot_stats["credits_joining_a_lot_at_the_bound"] += 1
            for source in {target.source, terms.source} - {None}:
                if source in self.buys:
                    self.buys[source].merged = True
        for forgotten in lots.keys() - u.lots.keys():  # at the bound: a purchase's expired lot makes room
            buy = self.buys.get(lots[forgotten].source or "")
            if buy is not None:
                buy.forgotten = True
            self.lot_stats["lots_forgotten_at_the_bound"] += 1
        repaid = lm.draw(u.lots, owed, t) if owed > 0 else {}
        if item.get("lot") != lot_id:
            self.fail("lots-credit", f"{what}: added to lot {item.get('lot')}, the rules put {terms} in lot {lot_id}")
        if (item.get("repaid") or {}) != repaid:
            self.fail(
                "lots-debt", f"{what}: repaid {item.get('repaid')} of a debt of {owed}; the burn order gives {repaid}"
            )
        self.lot_stats["credits_added"] += 1

    def _burn(self, u: User, item: Mapping[str, Any], t: int, *, exact: bool, what: str) -> None:
        """A debit without a purchase: drawn in burn order as the lots stood (invariant 10); usage and
        an operator's debit must be covered; a clawback leaves the rest as a debt."""
        need = -item["amount"]
        standing = [(lot.id, lot.remaining) for lot in lm.spendable(u.lots, t)]
        expected = lm.draw(u.lots, need, t)
        self._compare_draws(u, item, expected, standing, what, exact=exact)

    def _compare_draws(
        self,
        u: User,
        item: Mapping[str, Any],
        expected: Draws,
        standing: list[tuple[str, int]],
        what: str,
        *,
        exact: bool,
    ) -> None:
        got = dict(item.get("draws") or {})
        if exact and sum(got.values()) != -item["amount"]:
            u.uncovered.add(item["seq"])
            self._uncovered(u, f"{what}: draws {got} do not add up to the amount")
        if got == expected:
            return
        earlier = [lot_id for lot_id, left in standing if left and lot_id not in got]
        self.fail(
            "burn-order",
            f"{what}: drew {got}; the lots as they stood, in burn order (lot, credits): {standing} give {expected}"
            + (f" (lots {earlier} still had credits)" if earlier else ""),
        )

    def _capture(self, u: User, item: Mapping[str, Any], hold: Hold, what: str) -> None:
        """A capture takes from what its hold drew, in burn order, expired lots included; what a
        clawback took from its hold comes from the lots that count, in burn order."""
        missing = [lot_id for lot_id in hold.draws if lot_id not in u.lots]
        if missing:
            self.fail("lots", f"{what}: hold {hold.hold_id} drew from lots {missing}, which are gone")
        amount = -item["amount"]
        spent, _ = lm.consume(u.lots, hold.draws, amount)
        total = dict(spent)
        short = amount - sum(spent.values())
        if short > 0:
            for lot_id, n in lm.draw(u.lots, short, self._lot_pass.t).items():
                total[lot_id] = total.get(lot_id, 0) + n
        if dict(item.get("draws") or {}) != total:
            self.fail(
                "burn-order",
                f"{what}: took {item.get('draws')} of hold {hold.hold_id}'s {hold.draws} (and the lots), not {total}",
            )
        if sum(total.values()) != amount:
            self.fail("lots-draws", f"{what}: draws {total} do not add up to the amount")
        hold.spent = spent

    def _uncovered(self, u: User, detail: str, invariant: str = "lots-draws") -> None:
        """Usage, an operator's debit or a hold not covered by the lots that count (paid with credits
        that expired, or that nobody has)."""
        self.fail(invariant, detail)

    def _claw(self, u: User, item: Mapping[str, Any], t: int, source: str, asked: int, what: str) -> None:
        """Rule 5: the purchase's credits first (what is left in its lots, then what open holds drew
        from them: those holds draw from the other lots instead), its expired credits never taken
        back (counted once, recorded or not), then the other lots in burn order, then a debt."""
        buy = self.buys.get(source)
        dispute = item["type"] == "dispute"
        mine = lm.source_lots(u.lots, source)
        standing = [(lot.id, lot.remaining) for lot in lm.spendable(u.lots, t)]
        need = asked
        draws: Draws = {}
        for lot in mine:
            if need and not lot.gone(t) and lot.remaining:
                draws[lot.id] = take = min(need, lot.remaining)
                lot.remaining -= take
                need -= take
        if need and mine:
            held = lm.take_held(u.lots, {h.hold_id: h.draws for h in u.open.values()}, mine, need, t)
            for h in u.open.values():
                h.clawed |= sum(h.draws.values()) < h.amount  # its capture draws the rest (or is refused)
            for lot_id, n in held.items():
                draws[lot_id] = draws.get(lot_id, 0) + n
                need -= n
            if held:
                self.lot_stats["clawbacks_of_held_credits"] += 1
        forgiven = 0
        for lot in mine:
            # what of it expired (an expired lot's remainder too) and no refund counted yet (a
            # dispute also leaves out what open disputes counted)
            gone = lot.expired + (lot.remaining if lot.gone(t) else 0) - lot.forgiven
            n = max(0, min(need - forgiven, gone - (lot.dforgiven if dispute else 0)))
            if dispute:
                lot.dforgiven += n
            else:
                lot.forgiven += n
            forgiven += n
        if buy is not None:
            # from the purchase's own record: what of it expired and was not counted as gone yet
            # (a lot forgotten at the bound, or past the memory, claws back as any credits: ADR 0010)
            memory = bool(mine) or buy.expires is None or t < buy.expires + lm.MEMORY_MS
            counted = buy.forgiven + (buy.dforgiven if dispute else 0)
            # its credits that expired: recorded, and left in its lots that had expired by now
            pending = sum(lot.remaining for lot in mine if lot.gone(t))
            owed = max(0, min(need, buy.expired + pending - counted)) if memory else 0
            if forgiven != owed and not buy.forgotten:
                self.fail(
                    "rule-5",
                    f"{what}: of {source}, {buy.expired + pending} credits expired and {counted} were counted as "
                    f"gone; this {item['type']} must count {owed} more as gone, the lots allow {forgiven}",
                )
            if dispute:
                buy.dforgiven += forgiven
            else:
                buy.forgiven += forgiven
            buy.asked += asked
        need -= forgiven
        for lot_id, n in lm.draw(u.lots, need, t).items():
            draws[lot_id] = draws.get(lot_id, 0) + n
        if item.get("expired_part", 0) != forgiven or item["amount"] != forgiven - asked:
            self.fail(
                "rule-5",
                f"{what}: asked {asked} of {source}; {forgiven} of it had expired and must not be taken back "
                f"(posted {item['amount']}, expired_part {item.get('expired_part', 0)})",
            )
        got = dict(item.get("draws") or {})
        for lot in mine:
            if draws.get(lot.id, 0) != got.get(lot.id, 0):
                self.fail(
                    "rule-5",
                    f"{what}: took {got.get(lot.id, 0)} from its purchase's lot {lot.id}, not "
                    f"{draws.get(lot.id, 0)} first",
                )
        self._compare_draws(u, item, draws, standing, what, exact=False)
        if dispute:
            self.disputed.add(source)
        if buy is not None:
            buy.taken -= item["amount"]
            if dispute:
                buy.dispute = (asked, -item["amount"])
            self._lot_pass.touched.add(source)
        self.lot_stats["clawbacks_of_lots"] += 1
        if forgiven:
            self.lot_stats["clawbacks_finding_credits_expired"] += 1

    def _restore(
        self, u: User, item: Mapping[str, Any], t: int, source: str, asked: int, terms: Terms, what: str
    ) -> None:
        """A won dispute gives back only what its dispute took: the credits its dispute found expired
        stay expired."""
        buy = self.buys.get(source)
        self.disputed.discard(source)
        unforgiven = 0
        for lot in lm.source_lots(u.lots, source):
            n = min(asked - unforgiven, lot.dforgiven)
            lot.dforgiven -= n
            unforgiven += n
        # (a lot forgotten at the bound gives back as any credits: ADR 0010)
        if buy is not None and unforgiven != min(asked, buy.dforgiven) and not buy.forgotten:
            owed = asked - min(asked, buy.dforgiven)
            self.fail(
                "rule-5",
                f"{what}: the disputes of {source} counted {buy.dforgiven} of its expired credits as gone; a "
                f"won dispute of {asked} gives back {owed}, the lots give {asked - unforgiven}",
            )
        if item["amount"] != asked - unforgiven:
            self.fail("rule-5", f"{what}: a won dispute of {asked} of {source} must give back {asked - unforgiven}")
        if buy is not None:
            buy.dforgiven -= unforgiven
            buy.taken -= item["amount"]
            if (
                buy.dispute is not None
                and buy.dispute[0] == asked
                and item["amount"] != buy.dispute[1]
                and not buy.forgotten
            ):
                self.fail(
                    "rule-5", f"{what}: its dispute took {buy.dispute[1]}; the won dispute gives back {item['amount']}"
                )
            buy.dispute = None
        if unforgiven:
            self.lot_stats["won_disputes_finding_credits_expired"] += 1
        self._credit(u, item, t, terms, asked - unforgiven, unforgiven, what)

    # ---- holds ------------------------------------------------------------------------------------

    def _lot_hold_opened(self, u: User, hold: Hold, after: Mapping[str, Any], t: int) -> None:
        """A hold draws its credits when it opens, in burn order, and keeps them."""
        standing = [(lot.id, lot.remaining) for lot in lm.spendable(u.lots, t)]
        hold.draws = lm.draw(u.lots, hold.amount, t)
        if sum(hold.draws.values()) != hold.amount:
            hold.short = True
            self._uncovered(u, f"{u.name}: hold {hold.hold_id} of {hold.amount} at {t} drew {hold.draws}")
        hold.standing = standing  # what its draws are checked against at the end of the commit

    def _lot_hold_ended(self, u: User, hold: Hold, lp: LotPass) -> None:
        """What the hold did not charge goes back to its lots; what comes back to a lot that expired
        meanwhile expires now."""
        rest = {lot_id: n - hold.spent.get(lot_id, 0) for lot_id, n in hold.draws.items()}
        self._give_back(u, hold, {lot_id: n for lot_id, n in rest.items() if n}, lp.t)
        hold.spent = {}
        self._settle(u, lp)

    def _new_buy(self, u: User, item: Mapping[str, Any], terms: Terms) -> None:
        if terms.source is not None and terms.source not in self.buys:
            buy = self.buys[terms.source] = Buy(terms.source, u.name, item["amount"], item.get("lot"), terms.expires)
            lot = u.lots.get(str(item.get("lot")))
            buy.merged = lot is not None and lot.source != terms.source and lot.expires is not None
