"""Auto top-up, the ledger's part, on moto: the decision that spends `available` below the threshold
starts exactly one top-up (the account marks it pending and `TOPUP#<n>` is written in the same
transaction); none while one is pending, none an hour after a failure, none after three failures in
a row (until the user turns it on again), never more than `maxPerMonth` in a UTC month; refunds never
start one. A charge that does not cross is still one read and a transaction of two items; one that
crosses is one transaction more item. The racing containers, the payment and the webhook:
tests/integration/test_auto_topup.py."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from credits import keys
from credits.errors import CardRequired, ValidationError
from credits.ledger import Ledger
from credits.ledger.account import AccountState, Decision, Work
from credits.ledger.lots import legacy
from credits.ledger.outcomes import TopUpStarted
from credits.ledger.rules import Change, Kind, decide
from credits.ledger.topup import BACKOFF_MS, AutoTopUp, stripe_key
from credits.ledger.values import Entry, Policy
from credits.store import DynamoStore, Update
from tests.support import ManualClock, save_card

START = datetime.fromisoformat("2027-03-10T12:00:00+00:00").timestamp()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def ledger(moto_dynamodb: Any, clock: ManualClock) -> Ledger:
    ledger = Ledger(moto_dynamodb, "credits", clock=clock)
    ledger.grant("ann", 100, type="gift", description="welcome")
    save_card(DynamoStore(moto_dynamodb, "credits"), "ann")
    ledger.update_settings("ann", auto_top_up=AutoTopUp(True, 50, "starter", 3))
    return ledger


def topups(moto_dynamodb: Any, user: str = "ann") -> list[dict[str, Any]]:
    store = DynamoStore(moto_dynamodb, "credits")
    return store.query(keys.user_pk(user), keys.TOPUP).items


def pending(ledger: Ledger, user: str = "ann") -> str | None:
    return ledger.top_ups(user)[1].pending


def test_the_charge_that_crosses_the_threshold_starts_one_top_up(ledger: Ledger, moto_dynamodb: Any) -> None:
    ledger.charge("ann", 40, description="a")  # 60 left: above 50
    assert topups(moto_dynamodb) == [] and pending(ledger) is None
    ledger.charge("ann", 20, description="b")  # 40 left: crosses
    assert pending(ledger) == "topup:ann:1"
    [item] = topups(moto_dynamodb)
    assert (item["topup_id"], item["package_id"], item["threshold"], item["available"]) == (
        "topup:ann:1",
        "starter",
        50,
        40,
    )
    ledger.charge("ann", 5, description="c")  # still below, one is pending: no other
    hold = ledger.reserve("ann", 5, description="d")
    ledger.capture("ann", hold.hold_id)
    assert len(topups(moto_dynamodb)) == 1

    # the top-up's credits came and it ended: the next crossing starts the next one
    ledger.grant("ann", 100, type="gift", description="as if bought")
    paid = {"payment_intent": "pi_1", "credits": 100}
    assert ledger.finish_top_up("ann", "topup:ann:1", details=paid) is not None
    assert ledger.finish_top_up("ann", "topup:ann:1", details=paid) is None  # a repeated delivery: nothing
    [item] = topups(moto_dynamodb)
    assert (item["state"], item["payment_intent"], item["credits"]) == ("succeeded", "pi_1", 100)
    ledger.charge("ann", 80, description="e")  # 130 -> 50: not below
    assert pending(ledger) is None
    ledger.charge("ann", 1, description="f")  # 49: crosses
    assert pending(ledger) == "topup:ann:2" and len(topups(moto_dynamodb)) == 2


def test_a_hold_that_crosses_starts_it_and_a_refund_never_does(ledger: Ledger, moto_dynamodb: Any) -> None:
    ledger.claw_back("ann", 60, type="refund", description="refund", reference_id="r1")  # 40: a refund
    assert pending(ledger) is None
    ledger.grant("ann", 60, type="gift", description="back")  # 100
    ledger.reserve("ann", 55, description="a long job")  # available 45
    assert pending(ledger) == "topup:ann:1"


def test_failures_back_off_an_hour_and_the_third_in_a_row_suspends_until_turned_on_again(
    ledger: Ledger, clock: ManualClock, moto_dynamodb: Any
) -> None:
    ledger.charge("ann", 60, description="a")  # 40: #1
    state = ledger.finish_top_up("ann", "topup:ann:1", failure="card_declined")
    assert state is not None and (state.failures, state.suspended) == (1, None)
    ledger.charge("ann", 1, description="b")  # within the hour: nothing
    assert pending(ledger) is None
    clock.now += BACKOFF_MS / 1000
    ledger.charge("ann", 1, description="c")  # an hour later: #2
    assert pending(ledger) == "topup:ann:2"
    ledger.finish_top_up("ann", "topup:ann:2", failure="insufficient_funds")
    clock.now += BACKOFF_MS / 1000
    ledger.charge("ann", 1, description="d")  # #3
    state = ledger.finish_top_up("ann", "topup:ann:3", failure="card_declined")
    assert state is not None and (state.failures, state.suspended) == (3, "card_declined")
    clock.now += 10 * BACKOFF_MS / 1000
    ledger.charge("ann", 1, description="e")
    assert pending(ledger) is None and len(topups(moto_dynamodb)) == 3  # suspended

    clock.now += 40 * 86_400  # next month: maxPerMonth is not what stops it
    ledger.charge("ann", 1, description="f")
    assert pending(ledger) is None
    ledger.update_settings("ann", auto_top_up=AutoTopUp(True, 50, "starter", 3))  # the user turns it on
    settings, state = ledger.top_ups("ann")
    assert settings == AutoTopUp(True, 50, "starter", 3) and (state.failures, state.suspended) == (0, None)
    ledger.charge("ann", 1, description="g")
    assert pending(ledger) == "topup:ann:4"
    ledger.finish_top_up("ann", "topup:ann:4")
    assert ledger.top_ups("ann")[1].failures == 0


def test_never_more_than_max_per_month_started_in_a_utc_month(
    ledger: Ledger, clock: ManualClock, moto_dynamodb: Any
) -> None:
    ledger.charge("ann", 60, description="a")  # 40
    for n in (1, 2, 3):
        assert pending(ledger) == f"topup:ann:{n}"
        ledger.finish_top_up("ann", f"topup:ann:{n}")
        ledger.charge("ann", 1, description="again")  # still below: the next one (a package too small)
    assert pending(ledger) is None and len(topups(moto_dynamodb)) == 3  # March: 3 of 3
    clock.now = datetime.fromisoformat("2027-04-01T00:00:00+00:00").timestamp()
    ledger.charge("ann", 1, description="April")
    assert pending(ledger) == "topup:ann:4"


def test_turned_off_or_never_on_starts_nothing(ledger: Ledger, moto_dynamodb: Any) -> None:
    ledger.update_settings("ann", auto_top_up=AutoTopUp(False, 50, "starter", 3))
    ledger.charge("ann", 90, description="a")
    ledger.grant("bob", 100, type="gift", description="welcome")
    ledger.charge("bob", 90, description="a")
    assert topups(moto_dynamodb) == [] and topups(moto_dynamodb, "bob") == []
    ledger.update_settings("ann", auto_top_up=None)
    assert ledger.top_ups("ann") == (None, ledger.top_ups("ann")[1])


@pytest.mark.parametrize(
    "settings",
    [
        AutoTopUp(True, -1, "starter", 3),
        AutoTopUp(True, 50, "", 3),
        AutoTopUp(True, 50, "s", 0),
        AutoTopUp(True, 50, "s", 32),
    ],
)
def test_bad_settings_are_refused_and_write_nothing(ledger: Ledger, settings: AutoTopUp) -> None:
    with pytest.raises(ValidationError):
        ledger.update_settings("ann", auto_top_up=settings)
    assert ledger.top_ups("ann")[0] == AutoTopUp(True, 50, "starter", 3)


def test_a_charge_costs_the_same_calls_and_a_crossing_one_item_more(ledger: Ledger, moto_dynamodb: Any) -> None:
    calls: list[tuple[str, int]] = []

    def count(model: Any, params: dict[str, Any], **_: Any) -> None:
        calls.append((model.name, len(params.get("TransactItems", []))))

    moto_dynamodb.meta.events.register("before-parameter-build.dynamodb", count)
    ledger.charge("ann", 10, description="above")
    assert calls == [("GetItem", 0), ("TransactWriteItems", 2)]  # the account and the entry
    calls.clear()
    ledger.charge("ann", 50, description="crossing")
    assert calls == [("GetItem", 0), ("TransactWriteItems", 3)]  # and TOPUP#1, in the same transaction


def test_the_key_sent_to_stripe_is_short_and_header_safe_whatever_the_user_id() -> None:
    long_id = "ü" * 120 + "\u00a0x:y"
    key = stripe_key(long_id, 12)
    assert len(key) <= 255 and key.isascii() and key.isprintable() and key.endswith("-12")
    assert stripe_key(long_id, 12) == key and stripe_key(long_id + "z", 12) != key


def test_in_one_combiner_pass_the_first_decision_below_the_threshold_starts_it_and_no_other() -> None:
    """Twelve charges of 10 decided one after the other on ONE `Work` (a combiner pass) from 100,
    threshold 50: the sixth (to 40) starts top-up 1; the others see it pending."""
    lots, draws = legacy(100, {})
    state = AccountState(
        exists=True, balance=100, seq=1, lots=lots, draws=draws, user_id="ann",
        auto_top_up=AutoTopUp(True, 50, "starter", 3), card_id="pm_1",
    )  # fmt: skip
    work = Work.of(state, START)
    ids = iter(range(1000))
    started = []
    for n in range(12):
        change = Change(Kind.POST, entry=Entry(-10, "usage", f"charge {n}"), policy=Policy.USAGE)
        outcome, effects = decide(change, work, {}, Decision(START, lambda: f"id-{next(ids)}", 5))
        started += [(n, e.topup_id, e.available) for e in effects if isinstance(e, TopUpStarted)]
        assert outcome.error is None if n < 10 else outcome.error == "insufficient_credits"
    assert started == [(5, "topup:ann:1", 40)]
    assert (work.topup.pending, work.topup.count, work.topup_changed) == ("topup:ann:1", 1, True)


def test_failures_are_recorded_on_the_top_up_and_the_third_says_it_suspended(
    ledger: Ledger, clock: ManualClock, moto_dynamodb: Any
) -> None:
    for n in (1, 2, 3):
        ledger.charge("ann", 60 if n == 1 else 1, description=f"crossing {n}")
        ledger.finish_top_up("ann", f"topup:ann:{n}", failure="card_declined", details={"message": "Declined."})
        clock.now += BACKOFF_MS / 1000
    ended = [(i["state"], i["code"], i["attempt"], i["suspended"], i["message"]) for i in topups(moto_dynamodb)]
    assert ended == [
        ("failed", "card_declined", 1, False, "Declined."),
        ("failed", "card_declined", 2, False, "Declined."),
        ("failed", "card_declined", 3, True, "Declined."),
    ]


def test_turning_it_on_needs_a_saved_card_and_a_removed_card_starts_nothing(moto_dynamodb: Any) -> None:
    ledger = Ledger(moto_dynamodb, "credits")
    ledger.grant("bob", 100, type="gift", description="welcome")
    with pytest.raises(CardRequired):
        ledger.update_settings("bob", auto_top_up=AutoTopUp(True, 50, "starter", 3))
    assert ledger.top_ups("bob")[0] is None
    ledger.update_settings("bob", auto_top_up=AutoTopUp(False, 50, "starter", 3))  # off: no card needed
    store = DynamoStore(moto_dynamodb, "credits")
    save_card(store, "bob")
    ledger.update_settings("bob", auto_top_up=AutoTopUp(True, 50, "starter", 3))
    store.write(Update((keys.user_pk("bob"), keys.ACCOUNT), remove=("card",)))  # detached at Stripe
    ledger.charge("bob", 90, description="a")
    assert topups(moto_dynamodb, "bob") == [] and pending(ledger, "bob") is None
