"""Purchases of expiring packages, and their refunds and disputes, on moto (docs/adr/0010-credit-lots.md,
rule 5): a purchase credits a lot of its own with the terms fixed at checkout; a refund or a dispute
never takes back that purchase's credits that had expired already, while the payment record keeps
counting the purchase's credits; and the payments audit and reconcile stay clean.

Every example starts on 1 Jan 2026 and moves the ledger's clock (which the payments read too).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest

from credits.checkout import session_metadata
from credits.ledger import Ledger
from credits.packages import Catalog, Package
from credits.payments import Outcome, Payments
from credits.reconcile import find_missing
from tests import stripe_events as se
from tests.support import ManualClock

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z
DAY = 86_400.0
DAY_MS = 86_400_000
USER = "user-1"
STARTER = Package(id="starter", name="Starter", credits=100, price=500, currency="usd", expires_in_days=30)
DAILY = Package(id="daily", name="Daily", credits=100, price=500, currency="usd", expires_in_days=1)
FOREVER = Package(id="forever", name="Forever", credits=100, price=500, currency="usd")


@dataclass
class Shop:
    """The ledger and payments on one clock, and what Stripe knows (for reconcile)."""

    ledger: Ledger
    payments: Payments
    catalog: Catalog
    clock: ManualClock
    sessions: list[dict[str, Any]] = field(default_factory=list)
    charges: dict[str, dict[str, Any]] = field(default_factory=dict)
    disputes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def at(self, days: float) -> Shop:
        self.clock.now = NOW + days * DAY
        return self

    def buy(self, pi: str, package: Package = STARTER, *, user: str = USER, sold: Package | None = None) -> Outcome:
        """A paid session of `package`, its terms fixed at checkout from `sold` (default: the package)."""
        session = se.session(user=user, package=package.id, payment_intent=pi, amount=package.price)
        session["metadata"] = session_metadata(user, sold or package)
        self.sessions.append(session)
        return self.payments.handle(se.event("checkout.session.completed", session))

    def refund(self, pi: str, total: int) -> Outcome:
        self.charges[pi] = se.charge(pi, refunded=total)
        return self.payments.handle(se.event("charge.refunded", self.charges[pi]))

    def dispute(self, pi: str, status: str = "needs_response") -> Outcome:
        self.disputes[pi] = se.dispute(pi, status=status)
        kind = "charge.dispute.created" if status == "needs_response" else "charge.dispute.closed"
        return self.payments.handle(se.event(kind, self.disputes[pi]))

    def entries(self, user: str = USER) -> list[tuple[str, int, int]]:
        """The ledger as (type, amount, expired_part)."""
        return [(t.type, t.amount, t.expired_part) for t in self.ledger.history(user)]

    def assert_clean(self, user: str = USER) -> None:
        """The ledger's audit, the payments audit, and reconcile: nothing wrong, nothing missing."""
        history = self.ledger.history(user)
        assert self.ledger.audit(user).problems == []
        assert self.payments.audit(user, history) == []
        assert find_missing(self.payments, _Stripe(self), int(NOW)) == []


class _Stripe:
    """What Stripe lists of the period: the shop's sessions, refunded charges and disputes."""

    def __init__(self, shop: Shop) -> None:
        self.shop = shop

    def sessions_since(self, created_gte: int) -> Iterable[dict[str, Any]]:
        return self.shop.sessions

    def refunded_charges_since(self, created_gte: int) -> Iterable[dict[str, Any]]:
        return self.shop.charges.values()

    def disputes_since(self, created_gte: int) -> Iterable[dict[str, Any]]:
        return self.shop.disputes.values()

    def changed_since(self, created_gte: int, types: list[str]) -> Iterable[dict[str, Any]]:
        return []


@pytest.fixture
def shop(moto_dynamodb: Any) -> Shop:
    clock = ManualClock(NOW)
    ledger = Ledger(moto_dynamodb, "credits", clock=clock)
    catalog = Catalog(moto_dynamodb, "credits")
    for package in (STARTER, DAILY, FOREVER):
        catalog.put(package)
    return Shop(ledger, Payments(ledger, catalog), catalog, clock)


def lots(shop: Shop, user: str = USER) -> list[tuple[int, int | None, str]]:
    """The lots that count now: (credits left, expires at in Unix ms, label)."""
    return [(lot.remaining, lot.expires_at_ms, lot.label) for lot in shop.ledger.account(user).lots]


def refund_record(shop: Shop, pi: str) -> tuple[int, int]:
    record = shop.payments.record(pi)
    assert record is not None
    return record.credits_refunded, record.credits_disputed


# ---- the purchase ------------------------------------------------------------------------------


def test_a_purchase_credits_a_lot_of_its_own_that_expires_its_days_after_it_is_credited(shop: Shop) -> None:
    outcome = shop.at(0.5).buy("pi_1")
    assert (outcome.kind, outcome.credits) == ("granted", 100)
    assert lots(shop) == [(100, int((NOW + 0.5 * DAY) * 1000) + 30 * DAY_MS, "Starter")]
    record = shop.payments.record("pi_1")
    assert record is not None and (record.package_name, record.expires_in_days) == ("Starter", 30)

    assert shop.at(30.5).ledger.balance(USER) == 0  # from the moment it expires
    assert shop.ledger.sweep(USER) == 1
    assert shop.entries() == [("purchase", 100, 0), ("expiration", -100, 0)]
    shop.assert_clean()


def test_a_package_without_expiry_credits_credits_that_never_expire(shop: Shop) -> None:
    shop.buy("pi_1", FOREVER)
    assert lots(shop) == [(100, None, "Forever")]
    assert shop.at(3650).ledger.balance(USER) == 100


def test_the_terms_are_those_fixed_at_checkout_whatever_the_catalog_says_later(shop: Shop) -> None:
    shop.catalog.put(STARTER.model_copy(update={"expires_in_days": None}))  # after the checkout
    shop.buy("pi_fixed", STARTER)
    assert lots(shop) == [(100, int(NOW * 1000) + 30 * DAY_MS, "Starter")]

    shop.catalog.put(FOREVER.model_copy(update={"expires_in_days": 7}))
    shop.buy("pi_never", FOREVER, user="user-2")  # sold without expiry: stays so
    assert lots(shop, "user-2") == [(100, None, "Forever")]


def test_a_session_that_fixed_its_terms_before_expiry_existed_never_expires(shop: Shop) -> None:
    session = se.session(package="starter", payment_intent="pi_old")
    session["metadata"].update(price="500", currency="usd")  # credits, price, currency: no expiresInDays
    assert shop.payments.handle(se.event("checkout.session.completed", session)).kind == "granted"
    assert lots(shop) == [(100, None, "Starter")]


def test_a_session_without_fixed_terms_is_sold_on_the_catalogs_terms(shop: Shop) -> None:
    session = se.session(package="starter", payment_intent="pi_older")  # metadata: credits only
    assert shop.payments.handle(se.event("checkout.session.completed", session)).kind == "granted"
    assert lots(shop) == [(100, int(NOW * 1000) + 30 * DAY_MS, "Starter")]


@pytest.mark.parametrize("days", ["0", "3651", "-1", "30.5", "thirty", ""])
def test_an_expiry_the_product_never_wrote_is_not_a_term_of_sale(shop: Shop, days: str) -> None:
    """Terms that do not read back whole are not used: the catalog's current terms decide."""
    session = se.session(package="forever", payment_intent="pi_odd")
    session["metadata"] = {**session_metadata(USER, FOREVER), "expiresInDays": days}
    assert shop.payments.handle(se.event("checkout.session.completed", session)).kind == "granted"
    assert lots(shop) == [(100, None, "Forever")]


def test_a_purchase_delivered_again_later_is_credited_once(shop: Shop) -> None:
    shop.buy("pi_1")
    session = shop.sessions[0]
    again = shop.at(2).payments.handle(se.event("checkout.session.async_payment_succeeded", session))
    assert (again.kind, again.credits) == ("duplicate", 0)
    assert lots(shop) == [(100, int(NOW * 1000) + 30 * DAY_MS, "Starter")]  # the first lot, its first expiry
    shop.assert_clean()


# ---- refunds (rule 5) ----------------------------------------------------------------------------


def test_bought_100_spent_30_70_expired_a_full_refund_takes_back_the_30(shop: Shop) -> None:
    shop.buy("pi_1")
    shop.ledger.charge(USER, 30, description="usage")
    outcome = shop.at(31).refund("pi_1", 500)
    assert (outcome.kind, outcome.credits) == ("clawed_back", 30)
    assert shop.entries() == [("purchase", 100, 0), ("usage", -30, 0), ("expiration", -70, 0), ("refund", -30, 70)]
    assert shop.ledger.balance(USER) == -30  # what was spent of refunded credits is owed
    assert refund_record(shop, "pi_1") == (100, 0)  # the purchase's credits, all refunded
    shop.assert_clean()


def test_bought_100_spent_80_a_half_refund_takes_50(shop: Shop) -> None:
    shop.buy("pi_1")
    shop.ledger.charge(USER, 80, description="usage")
    outcome = shop.at(1).refund("pi_1", 250)
    assert (outcome.kind, outcome.credits) == ("clawed_back", 50)
    assert shop.entries()[-1] == ("refund", -50, 0)
    assert shop.ledger.balance(USER) == -30
    assert refund_record(shop, "pi_1") == (50, 0)
    shop.assert_clean()


def test_two_purchases_a_refund_of_the_older_takes_what_is_left_of_it_then_the_newer(shop: Shop) -> None:
    shop.buy("pi_old")
    shop.at(1).buy("pi_new")
    shop.ledger.charge(USER, 50, description="usage")  # the older expires sooner: spent first
    outcome = shop.at(2).refund("pi_old", 500)
    assert (outcome.kind, outcome.credits) == ("clawed_back", 100)
    [*_, refund] = shop.ledger.history(USER)
    assert (refund.amount, refund.expired_part, sorted(refund.draws.values())) == (-100, 0, [50, 50])
    assert lots(shop) == [(50, int((NOW + DAY) * 1000) + 30 * DAY_MS, "Starter")]  # the newer's rest
    shop.assert_clean()


def test_two_purchases_a_refund_of_the_older_after_it_expired_takes_only_what_was_spent(shop: Shop) -> None:
    shop.buy("pi_old", DAILY)
    shop.buy("pi_new", FOREVER)
    shop.ledger.charge(USER, 50, description="usage")  # from the older (it expires; the newer does not)
    outcome = shop.at(2).refund("pi_old", 500)
    assert (outcome.kind, outcome.credits) == ("clawed_back", 50)
    assert shop.entries()[-2:] == [("expiration", -50, 0), ("refund", -50, 50)]
    assert shop.ledger.balance(USER) == 50
    shop.assert_clean()


def test_refunds_of_credits_that_all_expired_take_nothing_and_the_record_still_counts_them(shop: Shop) -> None:
    shop.buy("pi_1", DAILY)
    shop.ledger.grant(USER, 100, type="gift", description="welcome")
    shop.ledger.charge(USER, 40, description="usage")  # from the purchase: it expires sooner
    first = shop.at(2).refund("pi_1", 250)  # 50 credits, all of them expired already
    assert (first.kind, first.credits) == ("noted", 0)
    second = shop.refund("pi_1", 500)  # 50 more: 10 expired already, 40 spent
    assert (second.kind, second.credits) == ("clawed_back", 40)
    assert shop.entries()[3:] == [("expiration", -60, 0), ("refund", 0, 50), ("refund", -40, 10)]
    assert shop.ledger.balance(USER) == 60
    assert refund_record(shop, "pi_1") == (100, 0)
    shop.assert_clean()


def test_a_refund_before_the_purchase_lands_is_applied_to_its_lot(shop: Shop) -> None:
    shop.refund("pi_1", 250)  # the purchase's event comes later
    outcome = shop.buy("pi_1")
    assert (outcome.kind, outcome.credits) == ("granted", 100)
    assert shop.entries() == [("purchase", 100, 0), ("refund", -50, 0)]
    assert lots(shop) == [(50, int(NOW * 1000) + 30 * DAY_MS, "Starter")]
    shop.assert_clean()


# ---- disputes --------------------------------------------------------------------------------------


def test_a_dispute_opened_after_expiry_then_won_gives_back_exactly_what_it_took(shop: Shop) -> None:
    shop.buy("pi_1", DAILY)
    shop.ledger.grant(USER, 50, type="gift", description="welcome")
    shop.ledger.charge(USER, 30, description="usage")  # from the purchase: it expires sooner
    held = shop.at(2).dispute("pi_1")
    assert (held.kind, held.credits) == ("clawed_back", 30)
    assert shop.ledger.balance(USER) == 20
    assert refund_record(shop, "pi_1") == (0, 100)
    shop.assert_clean()

    won = shop.at(3).dispute("pi_1", "won")
    assert (won.kind, won.credits) == ("restored", 30)
    assert shop.entries()[3:] == [("expiration", -70, 0), ("dispute", -30, 70), ("dispute", 30, 70)]
    assert shop.ledger.balance(USER) == 50
    # given back on the purchase's terms, counted from the day the dispute was won
    assert lots(shop) == [(30, int((NOW + 3 * DAY) * 1000) + DAY_MS, "Daily"), (20, None, "welcome")]
    assert refund_record(shop, "pi_1") == (0, 0)
    shop.assert_clean()


def test_a_refund_after_a_won_dispute_takes_back_the_credits_given_back_not_those_that_expired(shop: Shop) -> None:
    shop.buy("pi_1", DAILY)
    shop.ledger.grant(USER, 50, type="gift", description="welcome")
    shop.ledger.charge(USER, 30, description="usage")
    shop.at(2).dispute("pi_1")
    shop.at(3).dispute("pi_1", "won")
    refund = shop.refund("pi_1", 500)
    assert (refund.kind, refund.credits) == ("clawed_back", 30)
    assert shop.entries()[-1] == ("refund", -30, 70)
    assert shop.ledger.balance(USER) == 20  # the 30 spent of the refunded purchase, as if never disputed
    assert lots(shop) == [(20, None, "welcome")]
    shop.assert_clean()


def test_a_dispute_of_credits_that_all_expired_then_won_moves_nothing(shop: Shop) -> None:
    shop.buy("pi_1", DAILY)
    held = shop.at(2).dispute("pi_1")
    assert (held.kind, held.credits) == ("noted", 0)
    shop.assert_clean()
    won = shop.dispute("pi_1", "won")
    assert (won.kind, won.credits) == ("noted", 0)
    assert shop.entries() == [("purchase", 100, 0), ("expiration", -100, 0), ("dispute", 0, 100), ("dispute", 0, 100)]
    assert shop.ledger.balance(USER) == 0
    shop.assert_clean()


def test_a_dispute_won_before_expiry_gives_the_credits_back_on_the_purchases_terms(shop: Shop) -> None:
    shop.buy("pi_1")
    shop.at(5).dispute("pi_1")
    assert shop.ledger.balance(USER) == 0
    won = shop.at(10).dispute("pi_1", "won")
    assert (won.kind, won.credits) == ("restored", 100)
    assert lots(shop) == [(100, int((NOW + 10 * DAY) * 1000) + 30 * DAY_MS, "Starter")]
    shop.assert_clean()


def test_a_lost_dispute_after_expiry_keeps_only_what_was_spent(shop: Shop) -> None:
    shop.buy("pi_1", DAILY)
    shop.ledger.grant(USER, 50, type="gift", description="welcome")
    shop.ledger.charge(USER, 30, description="usage")
    lost = shop.at(2).dispute("pi_1", "lost")
    assert (lost.kind, lost.credits) == ("clawed_back", 30)
    assert shop.entries()[-1] == ("dispute", -30, 70)
    assert shop.ledger.balance(USER) == 20
    assert refund_record(shop, "pi_1") == (0, 100)
    shop.assert_clean()
