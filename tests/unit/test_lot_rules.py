"""Credit lots as worked examples: the burn order, expiry, holds across an expiry, and refunds of
expiring purchases (docs/adr/0010-credit-lots.md). The pure rules only: no store, no moto.

Each example starts from an empty account on 1 Jan 2026, applies changes in order (each decided on
the account as the previous ones left it, as the direct path does), and checks what the ledger
says: the entries posted, what each drew from which lot, and the balance a read shows.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import pytest
from msgspec import structs

from credits import keys
from credits.ledger.account import AccountState, Decision, Work
from credits.ledger.codec import account_view, lot_fields, read_account
from credits.ledger.outcomes import EntryPosted, HoldClosed, HoldOpened, LotWarned, Outcome
from credits.ledger.rules import Change, Kind, decide
from credits.ledger.values import MAX_LOTS, Entry, LotTerms, Policy, entry_fingerprint

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z
DAY = 86_400.0


@dataclass
class Account:
    """One account between changes, as the next read returns it."""

    state: AccountState = field(default_factory=lambda: AccountState(exists=True, balance=0, seq=0))
    clock: float = NOW
    entries: list[EntryPosted] = field(default_factory=list)
    warned: list[LotWarned] = field(default_factory=list)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def at(self, seconds: float) -> Account:
        self.clock = NOW + seconds
        return self

    def apply(self, change: Change) -> Outcome:
        work = Work.of(self.state, self.clock)
        ctx = Decision(self.clock, lambda: f"h{next(self.ids)}", 10)
        outcome, effects = decide(change, work, {**self.found}, ctx)
        if outcome.error is not None or not (effects or work.settled or change.kind is Kind.SWEEP):
            return outcome  # nothing written
        for effect in [*work.settled, *effects]:
            if isinstance(effect, EntryPosted):
                self.entries.append(effect)
            elif isinstance(effect, LotWarned):
                self.warned.append(effect)
        # the account as written, and read back
        item: dict[str, Any] = {
            "seq": work.seq,
            "balance": work.balance,
            "holds": {h: {"a": a, "u": u, "d": work.draws.get(h, {})} for h, (a, u) in work.holds.items()},
            "lots": {lot_id: lot_fields(lot) for lot_id, lot in work.lots.items()},
        }
        self.state = read_account(item)
        for effect in effects:  # the hold items, as the next change reads them
            if isinstance(effect, HoldOpened):
                self.found[keys.hold_sk(effect.hold_id)] = {
                    "hold_id": effect.hold_id,
                    "amount": effect.amount,
                    "state": "open",
                    "until_ms": effect.until_ms,
                    "description": "job",
                    "idempotency_key": None,
                }
            elif isinstance(effect, HoldClosed):
                self.found[keys.hold_sk(effect.hold_id)].update(effect.ended)
        return outcome

    found: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def view(self) -> Any:
        item = {
            "seq": self.state.seq,
            "balance": self.state.balance,
            "holds": {h: {"a": a, "u": u, "d": self.state.draws.get(h, {})} for h, (a, u) in self.state.holds.items()},
            "lots": {lot_id: lot_fields(lot) for lot_id, lot in self.state.lots.items()},
        }
        return account_view(item, int(self.clock * 1000))

    def lines(self) -> list[str]:
        """Each entry as a line: seq, amount, type, reference, draws (or the lot a credit went to)."""
        out = []
        for e in sorted(self.entries, key=lambda e: e.seq):
            ref = f" {e.entry.reference_id}" if e.entry.reference_id else ""
            what = f" from {dict(e.draws)}" if e.draws else (f" to lot {e.lot}" if e.lot else "")
            gone = f" ({e.expired_part} expired already)" if e.expired_part else ""
            out.append(f"{e.seq}: {e.entry.amount:+} {e.entry.type}{ref}{what}{gone}")
        return out


def grant(
    amount: int,
    category: str = "paid",
    *,
    priority: int | None = None,
    expires_in: float | None = None,
    at: float = 0.0,
    source: str | None = None,
    kind: str = "gift",
) -> Change:
    expires = None if expires_in is None else int((NOW + at + expires_in) * 1000)
    entry = Entry(
        amount,
        kind,
        "credits",
        source if kind == "purchase" else None,
        system_reference=kind == "purchase",
        lot=LotTerms(category, priority, expires, "Starter" if source else "Welcome", source),
    )
    return Change(Kind.POST, entry, Policy.CREDIT, None, entry_fingerprint(entry))


def purchase(amount: int, payment: str, *, expires_in: float | None = None, at: float = 0.0) -> Change:
    return grant(amount, expires_in=expires_in, at=at, source=f"purchase:{payment}", kind="purchase")


def charge(amount: int) -> Change:
    entry = Entry(-amount, "usage", "generate")
    return Change(Kind.POST, entry, Policy.USAGE, None, entry_fingerprint(entry))


def claw(amount: int, payment: str, kind: str = "refund", step: int = 1) -> Change:
    entry = Entry(
        -amount, kind, "refund", f"settle:{payment}:{step}", system_reference=True, source=f"purchase:{payment}"
    )
    return Change(Kind.POST, entry, Policy.CLAWBACK, None, entry_fingerprint(entry))


def restore(amount: int, payment: str, step: int) -> Change:
    entry = Entry(
        amount,
        "dispute",
        "dispute won",
        f"settle:{payment}:{step}",
        system_reference=True,
        source=f"purchase:{payment}",
    )
    return Change(Kind.POST, entry, Policy.CREDIT, None, entry_fingerprint(entry))


def reserve(amount: int, ttl: int = 3600) -> Change:
    return Change(Kind.RESERVE, amount=amount, ttl_seconds=ttl, description="job")


def capture(hold_id: str, amount: int | None = None) -> Change:
    return Change(Kind.CAPTURE, hold_id=hold_id, amount=amount)


def release(hold_id: str) -> Change:
    return Change(Kind.RELEASE, hold_id=hold_id)


# ---- the burn order: priority, then soonest expiry (none last), then oldest -----------------------


def test_promotional_credits_go_first_then_the_paid_lot_that_expires_soonest() -> None:
    """promo 50 (priority 10, 30 days), paid 100 (a year), paid 30 (never); charge 60 -> promo 50, year 10"""
    a = Account()
    a.apply(grant(50, "promotional", expires_in=30 * DAY))
    a.apply(grant(100, expires_in=365 * DAY))
    a.apply(grant(30))
    assert a.apply(charge(60)).error is None
    assert a.lines()[-1] == "4: -60 usage from {'1': 50, '2': 10}"
    assert (a.view.balance, a.view.available) == (120, 120)


@pytest.mark.parametrize(
    ("lots", "amount", "drawn"),
    [
        # same priority: soonest expiry first
        ([(20, 50, 10 * DAY), (20, 50, 5 * DAY)], 25, {"2": 20, "1": 5}),
        # credits without expiry last, even when older
        ([(20, 50, None), (20, 50, 5 * DAY)], 10, {"2": 10}),
        # priority beats expiry: priority 10 expiring in 100 days before priority 50 expiring tomorrow
        ([(20, 50, 1 * DAY), (20, 10, 100 * DAY)], 25, {"2": 20, "1": 5}),
        # same priority and expiry: the oldest first
        ([(20, 50, 5 * DAY), (20, 50, 5 * DAY)], 25, {"1": 20, "2": 5}),
    ],
    ids=["soonest-expiry", "no-expiry-last", "priority-first", "oldest-first"],
)
def test_the_burn_order(lots: list[tuple[int, int, float | None]], amount: int, drawn: dict[str, int]) -> None:
    a = Account()
    for n, (credits, priority, expires_in) in enumerate(lots):
        a.at(n).apply(grant(credits, priority=priority, expires_in=expires_in))  # from NOW: n s apart, same expiry
    a.at(len(lots)).apply(charge(amount))
    assert dict(a.entries[-1].draws) == drawn


def test_credits_without_expiry_of_one_category_and_priority_are_one_lot() -> None:
    a = Account()
    a.apply(grant(30))
    a.apply(grant(20))
    a.apply(grant(5, "promotional"))
    assert [(lot.lot_id, lot.category, lot.remaining) for lot in a.view.lots] == [
        ("3", "promotional", 5),
        ("1", "paid", 50),
    ]


def test_past_the_lot_bound_a_grant_joins_the_lot_that_expires_last_and_never_expires_sooner() -> None:
    a = Account()
    for n in range(MAX_LOTS):
        a.apply(grant(1, expires_in=(n + 1) * DAY))
    a.apply(grant(7, expires_in=(MAX_LOTS + 10) * DAY))
    assert len(a.state.lots) == MAX_LOTS
    last = a.state.lots[str(MAX_LOTS)]
    assert (last.remaining, last.expires_ms) == (8, int((NOW + (MAX_LOTS + 10) * DAY) * 1000))


def test_an_account_from_before_lots_spends_its_credits_as_one_paid_lot_without_expiry() -> None:
    a = Account(state=read_account({"seq": 3, "balance": 100, "holds": {}}))
    a.apply(charge(10))
    assert a.lines()[-1] == "4: -10 usage from {'0': 10}"
    assert [(lot.lot_id, lot.category, lot.expires_at_ms, lot.remaining) for lot in a.view.lots] == [
        ("0", "paid", None, 90)
    ]


# ---- expiry: at read time; its entry with the first write after it -------------------------------


def test_an_expired_lot_counts_for_nothing_the_millisecond_it_expires() -> None:
    a = Account()
    a.apply(grant(50, "promotional", expires_in=2))
    a.apply(grant(10))
    assert a.at(1.999).view.balance == 60
    assert (a.at(2).view.balance, a.view.available) == (10, 10)
    refused = a.apply(charge(11))
    assert refused.error == "insufficient_credits"
    assert a.lines() == ["1: +50 gift to lot 1", "2: +10 gift to lot 2"]  # a refusal writes nothing


def test_the_first_write_after_an_expiry_writes_its_entry_once() -> None:
    a = Account()
    a.apply(grant(50, "promotional", expires_in=2))
    a.apply(grant(10))
    a.apply(charge(20))  # promo 50 -> 30
    a.at(3).apply(charge(5))
    a.apply(charge(1))
    assert a.lines()[3:] == [
        "4: -30 expiration expire:1 from {'1': 30}",
        "5: -5 usage from {'2': 5}",
        "6: -1 usage from {'2': 1}",
    ]
    assert a.entries[3].entry.description == "Expired: 30 credits of Welcome (granted 1 Jan 2026)"
    assert a.view.balance == 4


def test_a_sweep_writes_what_an_idle_account_owes_and_a_second_writes_nothing() -> None:
    a = Account()
    a.apply(grant(50, expires_in=DAY))
    a.at(DAY).apply(Change(Kind.SWEEP))
    assert a.lines()[-1] == "2: -50 expiration expire:1 from {'1': 50}"
    a.at(DAY + 1).apply(Change(Kind.SWEEP))
    assert len(a.entries) == 2
    assert a.state.lots == {}


def test_a_lot_is_announced_once_when_it_enters_the_warning_window() -> None:
    a = Account()
    a.apply(grant(40, expires_in=10 * DAY))
    a.at(2 * DAY).apply(charge(1))
    assert a.warned == []
    a.at(3 * DAY).apply(charge(1))  # 7 days before
    a.at(4 * DAY).apply(charge(1))
    assert [(w.lot_id, w.remaining) for w in a.warned] == [("1", 39)]


# ---- holds keep what they reserved across an expiry ----------------------------------------------


def test_a_lot_that_expires_between_a_reserve_and_its_capture_still_pays_the_capture() -> None:
    """promo 50 (2 s); reserve 30; 3 s later capture 30 -> charged; the other 20 expired"""
    a = Account()
    a.apply(grant(50, "promotional", expires_in=2))
    hold = a.apply(reserve(30)).result()["hold_id"]
    assert (a.at(3).view.balance, a.view.available) == (30, 0)
    captured = a.apply(capture(hold))
    assert captured.value is not None and captured.value["charged"] == 30
    assert a.lines()[1:] == [
        "2: -20 expiration expire:1 from {'1': 20}",
        f"3: -30 usage hold:{hold} from {{'1': 30}}",
    ]
    assert a.view.balance == 0 and a.state.lots == {}


def test_credits_a_hold_gives_back_to_a_lot_that_expired_meanwhile_expire_then() -> None:
    a = Account()
    a.apply(grant(50, "promotional", expires_in=2))
    a.apply(grant(10))
    hold = a.apply(reserve(30)).result()["hold_id"]
    a.at(3).apply(capture(hold, 12))
    assert a.lines()[2:] == [
        "3: -20 expiration expire:1 from {'1': 20}",
        f"4: -12 usage hold:{hold} from {{'1': 12}}",
        "5: -18 expiration expire:1:2 from {'1': 18}",
    ]
    assert a.view.balance == 10


def test_a_hold_that_expires_after_its_lot_gives_back_nothing_spendable() -> None:
    a = Account()
    a.apply(grant(50, "promotional", expires_in=2))
    a.apply(reserve(30, ttl=5))
    assert a.at(6).view.balance == 0
    a.apply(grant(1))
    # the hold ended first (its credits went back to the lot), then the lot expired: one entry
    assert a.lines()[1:] == ["2: -50 expiration expire:1 from {'1': 50}", "3: +1 gift to lot 3"]
    assert a.view.balance == 1


# ---- rule 5: refunds and disputes never claw back what expired -----------------------------------


def test_bought_100_spent_30_70_expired_full_refund_takes_back_30() -> None:
    a = Account()
    a.apply(purchase(100, "pi_1", expires_in=30 * DAY))
    a.apply(grant(50))  # other credits the refund may take from
    a.apply(charge(30))
    a.at(31 * DAY).apply(claw(100, "pi_1"))
    assert a.lines()[3:] == [
        "4: -70 expiration expire:1 from {'1': 70}",
        "5: -30 refund settle:pi_1:1 from {'2': 30} (70 expired already)",
    ]
    assert a.view.balance == 20


def test_bought_100_spent_80_half_refund_takes_the_purchases_20_first_then_30_from_other_lots() -> None:
    a = Account()
    a.apply(grant(100, "promotional", expires_in=10 * DAY))
    a.apply(purchase(100, "pi_1"))
    a.apply(charge(100))  # the promotional lot
    a.apply(charge(80))  # the purchase: 20 left
    a.apply(grant(40, expires_in=10 * DAY))  # its own lot (credits without expiry would join the purchase's)
    a.apply(claw(50, "pi_1"))
    assert a.lines()[-1] == "6: -50 refund settle:pi_1:1 from {'2': 20, '5': 30}"
    assert a.view.balance == 10


def test_two_purchases_refund_of_the_older_takes_what_is_left_of_it_then_the_newer() -> None:
    a = Account()
    a.apply(purchase(100, "pi_old", expires_in=30 * DAY))
    a.apply(purchase(100, "pi_new", expires_in=60 * DAY))
    a.apply(charge(50))  # the older expires sooner: spent first
    a.apply(claw(100, "pi_old"))
    assert a.lines()[-1] == "4: -100 refund settle:pi_old:1 from {'1': 50, '2': 50}"
    assert [(lot.lot_id, lot.remaining) for lot in a.view.lots] == [("2", 50)]


def test_a_refund_beyond_every_credit_is_a_debt_that_credits_arriving_repay_first() -> None:
    a = Account()
    a.apply(purchase(100, "pi_1"))
    a.apply(charge(90))
    a.apply(claw(100, "pi_1"))
    assert (a.view.balance, a.view.available) == (-90, -90)
    a.apply(grant(100, expires_in=DAY))
    assert a.entries[-1].repaid == {"4": 90}
    assert [(lot.lot_id, lot.remaining) for lot in a.view.lots] == [("4", 10)]
    a.at(DAY).apply(Change(Kind.SWEEP))
    assert a.lines()[-1] == "5: -10 expiration expire:4 from {'4': 10}"
    assert a.view.balance == 0  # only what was left after repaying the debt expired


def test_a_dispute_after_expiry_holds_only_what_was_spent_and_a_won_dispute_gives_back_exactly_that() -> None:
    a = Account()
    a.apply(purchase(100, "pi_1", expires_in=DAY))
    a.apply(grant(50))
    a.apply(charge(30))
    a.at(2 * DAY).apply(claw(100, "pi_1", kind="dispute"))
    a.apply(restore(100, "pi_1", step=2))
    assert a.lines()[3:] == [
        "4: -70 expiration expire:1 from {'1': 70}",
        "5: -30 dispute settle:pi_1:1 from {'2': 30} (70 expired already)",
        "6: +30 dispute settle:pi_1:2 to lot 2 (70 expired already)",  # paid, no expiry: joins lot 2
    ]
    assert a.view.balance == 50


def test_a_second_partial_refund_does_not_count_the_same_expired_credits_twice() -> None:
    a = Account()
    a.apply(purchase(100, "pi_1", expires_in=DAY))
    a.apply(grant(100))
    a.apply(charge(40))  # the purchase expires sooner: spent first
    a.at(2 * DAY).apply(claw(50, "pi_1", step=1))  # 60 expired: all 50 of these were gone already
    a.apply(claw(50, "pi_1", step=2))  # 10 more expired, 40 spent
    assert a.lines()[3:] == [
        "4: -60 expiration expire:1 from {'1': 60}",
        "5: +0 refund settle:pi_1:1 (50 expired already)",
        "6: -40 refund settle:pi_1:2 from {'2': 40} (10 expired already)",
    ]
    assert a.view.balance == 60


def test_lots_and_draws_survive_the_account_item_unchanged() -> None:
    a = Account()
    a.apply(purchase(100, "pi_1", expires_in=DAY))
    a.apply(grant(5, "promotional", priority=3))
    hold = a.apply(reserve(20)).result()["hold_id"]
    before = {lot_id: structs.asdict(lot) for lot_id, lot in a.state.lots.items()}
    again = read_account(
        {
            "seq": a.state.seq,
            "balance": a.state.balance,
            "holds": {h: {"a": x, "u": u, "d": a.state.draws[h]} for h, (x, u) in a.state.holds.items()},
            "lots": {lot_id: lot_fields(lot) for lot_id, lot in a.state.lots.items()},
        }
    )
    assert {lot_id: structs.asdict(lot) for lot_id, lot in again.lots.items()} == before
    assert again.draws == {hold: {"2": 5, "1": 15}}  # the promotional lot (priority 3) first


def test_a_refund_after_a_lost_dispute_takes_only_what_was_spent_and_the_release_squares_it() -> None:
    """bought 100 (1 day), spent 30, 70 expired; dispute lost (holds 100), then refunded in full:
    the settlement posts the hold, the refund, then releases the hold. The user ends with what the
    other lot had left: 50 - 30 = 20."""
    a = Account()
    a.apply(purchase(100, "pi_1", expires_in=DAY))
    a.apply(grant(50))
    a.apply(charge(30))
    a.at(2 * DAY).apply(claw(100, "pi_1", kind="dispute", step=1))
    a.apply(claw(100, "pi_1", step=2))
    a.apply(restore(100, "pi_1", step=3))
    assert a.lines()[3:] == [
        "4: -70 expiration expire:1 from {'1': 70}",
        "5: -30 dispute settle:pi_1:1 from {'2': 30} (70 expired already)",
        "6: -30 refund settle:pi_1:2 from {'2': 20} (70 expired already)",
        "7: +30 dispute settle:pi_1:3 to lot 7 (70 expired already)",
    ]
    assert a.view.balance == 20


def test_more_expired_lots_than_one_write_records_still_count_for_nothing() -> None:
    """12 lots of 10 expire at once; a write records 8 of them: the other 4 still pay nothing."""
    a = Account()
    for n in range(12):
        a.apply(grant(10, expires_in=DAY + n))
    a.apply(grant(5))
    a.at(2 * DAY)
    assert (a.view.balance, a.view.available) == (5, 5)
    assert a.apply(charge(6)).error == "insufficient_credits"
    assert a.apply(charge(5)).error is None
    expired = [line for line in a.lines() if "expiration" in line]
    assert len(expired) == 8  # the rest with the next write
    assert a.lines()[-1].endswith("usage from {'13': 5}")
    a.apply(Change(Kind.SWEEP))
    assert len([line for line in a.lines() if "expiration" in line]) == 12
    assert a.view.balance == 0


# ---- rule 5 with holds, disputes, a purchase's second lot and expiries not yet recorded -----------


def test_a_refund_takes_what_a_hold_drew_from_its_purchase_and_the_hold_draws_other_credits_instead() -> None:
    """own 100 (no expiry), bought 200 expiring, a hold of 39 (from the purchase: it expires sooner);
    the dispute takes 161 left in the purchase and the 39 the hold drew, which now draws from the own
    credits; the purchase expires, the hold is released: the own 100 are all there."""
    a = Account()
    a.apply(grant(100))
    a.apply(purchase(200, "pi_1", expires_in=DAY))
    hold = a.apply(reserve(39, ttl=3 * 86_400)).result()["hold_id"]
    assert a.state.draws[hold] == {"2": 39}
    a.apply(claw(200, "pi_1", kind="dispute"))
    assert a.lines()[-1] == "3: -200 dispute settle:pi_1:1 from {'2': 200}"
    assert a.state.draws[hold] == {"1": 39}
    assert (a.view.balance, a.view.available) == (100, 61)
    a.at(2 * DAY).apply(release(hold))
    assert (a.view.balance, a.view.available) == (100, 100)
    assert not [line for line in a.lines() if "expiration" in line]  # nothing of the purchase was left


def test_a_hold_whose_purchase_credits_a_refund_took_captures_from_other_credits_or_is_refused() -> None:
    a = Account()
    a.apply(purchase(100, "pi_1", expires_in=DAY))
    hold = a.apply(reserve(30)).result()["hold_id"]
    a.apply(claw(100, "pi_1"))  # no other credits: the hold keeps its 30, drawing from nothing
    assert a.lines()[-1] == "2: -100 refund settle:pi_1:1 from {'1': 100}"
    assert (a.view.balance, a.state.draws[hold]) == (0, {})
    assert a.apply(capture(hold, 10)).error == "insufficient_credits"
    a.apply(grant(25))
    assert a.apply(capture(hold, 10)).error is None
    assert a.lines()[-1] == f"4: -10 usage hold:{hold} from {{'3': 10}}"
    assert a.view.balance == 15


@pytest.mark.parametrize("refund_first", [True, False])
def test_credits_a_hold_gives_back_to_a_lot_that_expired_expire_whatever_the_account_owes(refund_first: bool) -> None:
    """A refund beyond every free credit leaves a debt while a hold keeps credits of a dated lot; the
    lot expires; whether the hold ends before or after the refund, its credits expire (they never
    pay the debt after their expiry: a long hold is no way to keep expiring credits)."""
    a = Account()
    a.apply(grant(50, expires_in=DAY))
    a.apply(purchase(100, "pi_1"))
    hold = a.apply(reserve(50, ttl=3 * 86_400)).result()["hold_id"]  # the dated lot first
    a.apply(charge(100))  # the purchase, spent
    a.at(2 * DAY)
    steps = [claw(100, "pi_1"), release(hold)]
    for step in steps if refund_first else reversed(steps):
        a.apply(step)
    assert a.view.balance == -100  # 50 + 100 - 100 spent - 100 refunded - 50 expired
    assert [line.split(": ", 1)[1] for line in a.lines() if "expiration" in line] == [
        "-50 expiration expire:1 from {'1': 50}"
    ]


def test_a_refund_counts_its_purchases_expired_credits_even_when_their_entry_waits_for_a_later_write() -> None:
    """Nine lots expire together; a write records eight. The purchase's lot is the ninth: its refund
    still counts its 50 expired credits as gone, and the next write records their expiry once."""
    a = Account()
    for n in range(8):
        a.apply(grant(10, expires_in=DAY - 100 + n))  # these expire first: recorded first
    a.apply(purchase(50, "pi_1", expires_in=DAY))
    a.apply(grant(100))
    a.at(2 * DAY).apply(claw(50, "pi_1"))
    assert a.lines()[-1] == "19: +0 refund settle:pi_1:1 (50 expired already)"
    a.apply(Change(Kind.SWEEP))
    assert a.lines()[-1] == "20: -50 expiration expire:9 from {'9': 50}"
    assert a.view.balance == 100  # the other credits untouched


def test_a_refund_after_a_won_dispute_counts_what_expired_in_the_credits_the_dispute_gave_back() -> None:
    """The won dispute's credits go to a second lot of the purchase; when they expire too, a refund
    counts them as gone like those of the first."""
    a = Account()
    a.apply(grant(100))
    a.apply(purchase(100, "pi_1", expires_in=DAY))
    a.apply(claw(100, "pi_1", kind="dispute", step=1))
    won = restore(100, "pi_1", step=2).entry
    assert won is not None
    dated = structs.replace(won, lot=LotTerms("paid", None, int((NOW + 2 * DAY) * 1000), "Starter", "purchase:pi_1"))
    a.apply(Change(Kind.POST, dated, Policy.CREDIT, None, entry_fingerprint(dated)))
    a.apply(charge(30))  # the dispute's lot expires first: spent first
    a.at(3 * DAY).apply(claw(100, "pi_1", step=3))
    assert a.lines()[-2:] == [
        "6: -70 expiration expire:4 from {'4': 70}",
        "7: -30 refund settle:pi_1:3 from {'1': 30} (70 expired already)",
    ]
    assert a.view.balance == 70  # 100 own - 30 spent; the purchase: 70 expired, 30 taken back


def test_purchases_without_expiry_keep_their_own_lots_so_a_refund_takes_the_refunded_ones() -> None:
    """A welcome promotion (5 days), two purchases without expiry, the second refunded: the refund
    takes the second purchase's own credits, never the promotion (which would keep paid credits and
    let the promotion's expire unused)."""
    a = Account()
    a.apply(grant(50, "promotional", expires_in=5 * DAY))
    a.apply(purchase(100, "pi_1"))
    a.apply(purchase(100, "pi_2"))
    assert [(lot.lot_id, lot.remaining) for lot in a.view.lots] == [("1", 50), ("2", 100), ("3", 100)]
    a.apply(claw(100, "pi_2"))
    assert a.lines()[-1] == "4: -100 refund settle:pi_2:1 from {'3': 100}"
    a.at(6 * DAY).apply(Change(Kind.SWEEP))
    assert a.view.balance == 100  # the first purchase; the promotion expired unused
