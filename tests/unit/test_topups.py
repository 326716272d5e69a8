"""Auto top-up's payment (credits.topups and the webhook's payment_intent events) on moto and the
Stripe emulator: a started top-up charges the saved card once per top-up whatever is redelivered,
credits the package once through the purchase path (history row, refunds and disputes like a
purchase's), and every failure ends it with its code and a sentence for the user. The racing
containers and the stream: tests/integration/test_auto_topup.py."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import stripe

from credits import keys, reconcile
from credits.cards import Cards, SavedCard
from credits.errors import PaymentProviderError
from credits.events import record_events
from credits.ledger import AutoTopUp, Ledger
from credits.ledger.topup import BACKOFF_MS, stripe_key
from credits.packages import Catalog, Package
from credits.payments import Payments
from credits.store import DynamoStore, Update, to_item
from credits.stripe_gateway import StripeGateway
from credits.stripe_objects import PaymentMethod
from credits.topups import TopUps
from local.stripe_emulator import StripeEmulator
from tests.support import ManualClock

KEY = "sk_test_topups_unit"
START = datetime.fromisoformat("2027-03-10T12:00:00+00:00").timestamp()


@pytest.fixture
def emulator() -> Iterator[StripeEmulator]:
    emu = StripeEmulator(api_key=KEY, webhook_secret="whsec_topups")  # events recorded, not sent
    emu.start()
    yield emu
    emu.stop()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


class World:
    def __init__(self, moto_dynamodb: Any, emulator: StripeEmulator, clock: ManualClock) -> None:
        self.emulator = emulator
        self.store = DynamoStore(moto_dynamodb, "credits")
        self.ledger = Ledger(moto_dynamodb, "credits", clock=clock)
        self.payments = Payments(self.ledger, Catalog(moto_dynamodb, "credits"), moto_dynamodb, "credits")
        self.gateway = StripeGateway.connect(KEY, emulator.base_url)
        self.top_ups = TopUps(self.payments, self.gateway)
        self.stripe = stripe.StripeClient(KEY, base_addresses={"api": emulator.base_url}, max_network_retries=0)

    def save_card(self, user: str, test_card: str) -> None:
        """A card saved through a setup-mode Checkout at the emulator, recorded on the account."""
        customer = self.stripe.v1.customers.create(params={"metadata": {"userId": user}})
        params: Any = {"mode": "setup", "customer": customer.id, "currency": "usd",
                       "success_url": "http://localhost/ok", "cancel_url": "http://localhost/"}  # fmt: skip
        session = self.stripe.v1.checkout.sessions.create(params=params)
        self.emulator.pay(session.id, test_card)
        method = self.stripe.v1.customers.payment_methods.list(customer.id).data[0]
        card = SavedCard.of(PaymentMethod.model_validate(method.to_dict()))
        assert card is not None and Cards.on(self.store).save(user, card)  # as the webhook saves it

    def started(self, user: str = "ann") -> list[dict[str, Any]]:
        return self.store.query(keys.user_pk(user), keys.TOPUP).items

    def pay_pending(self, user: str = "ann") -> Any:
        """What the top-up function does with the newest TOPUP# record."""
        return self.top_ups.start(user, self.started(user)[-1])

    def intents(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.emulator.events if e["type"] == kind]

    def next_payment(self, outcome: str) -> None:
        request = urllib.request.Request(
            f"{self.emulator.base_url}/_emulator/next_off_session_payment",
            data=json.dumps({"outcome": outcome}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200


@pytest.fixture
def world(moto_dynamodb: Any, emulator: StripeEmulator, clock: ManualClock) -> World:
    w = World(moto_dynamodb, emulator, clock)
    w.payments.catalog.put(Package(id="starter", name="Starter", credits=100, price=500, currency="usd"))
    w.ledger.grant("ann", 100, type="gift", description="welcome")
    w.save_card("ann", "pm_card_visa")
    w.ledger.update_settings("ann", auto_top_up=AutoTopUp(True, 50, "starter", 5))
    return w


def modified(item: dict[str, Any]) -> dict[str, Any]:
    """The stream's record of the TOPUP# item's change (NEW_IMAGE)."""
    keys_ = to_item({"pk": item["pk"], "sk": item["sk"]})
    return {"eventName": "MODIFY", "dynamodb": {"Keys": keys_, "NewImage": to_item(item), "SequenceNumber": "1"}}


def card_customer(world: World) -> str:
    card = world.ledger.settings("ann").card
    assert card is not None
    return str(card["customer"])


def balance(world: World, user: str = "ann") -> int:
    return world.ledger.balance(user)


def test_a_crossing_charges_the_card_once_and_credits_the_package_once(world: World) -> None:
    world.ledger.charge("ann", 60, description="a batch job")  # 40: crosses 50
    outcome = world.pay_pending()
    assert (outcome.kind, outcome.credits, balance(world)) == ("granted", 100, 140)
    [paid] = world.intents("payment_intent.succeeded")
    intent = paid["data"]["object"]
    assert (intent["amount"], intent["currency"], intent["customer"]) == (500, "usd", card_customer(world))
    assert intent["metadata"]["topupId"] == "topup:ann:1" and intent["metadata"]["credits"] == "100"

    assert world.pay_pending().kind == "duplicate"  # the record redelivered: nothing more
    assert world.payments.handle(paid).kind == "duplicate"  # the webhook: nothing more
    assert world.payments.handle(paid).kind == "duplicate"  # and again
    assert balance(world) == 140 and len(world.intents("payment_intent.succeeded")) == 1
    [item] = world.started()
    assert (item["state"], item["payment_intent"], item["credits"], item["amount"]) == (
        "succeeded", intent["id"], 100, 500)  # fmt: skip
    [row] = [t for t in world.ledger.history("ann") if t.type == "purchase"]
    assert (row.description, row.amount, row.monetary_amount, row.currency) == (
        "Auto top-up: Starter, 100 credits", 100, 500, "usd")  # fmt: skip
    assert world.ledger.top_ups("ann")[1].pending is None
    assert world.ledger.audit("ann").ok


def test_a_crash_after_the_intent_was_created_charges_once_on_the_retry(world: World) -> None:
    world.ledger.charge("ann", 60, description="a")
    item = world.started()[-1]
    package = world.payments.catalog.active("starter")
    metadata = {"userId": "ann", "packageId": "starter", "topupId": "topup:ann:1", **package.sale_terms()}
    world.gateway.charge_saved_card(  # the first delivery got this far, then its container died
        customer_id=world.ledger.settings("ann").card["customer"],  # type: ignore[index]
        payment_method_id=world.ledger.settings("ann").card["id"],  # type: ignore[index]
        amount=500, currency="usd", idempotency_key=stripe_key("ann", 1), metadata=metadata,
        description="Auto top-up: Starter",
    )  # fmt: skip
    assert world.top_ups.start("ann", item).kind == "granted"  # the retry: Stripe's first answer
    assert len(world.intents("payment_intent.succeeded")) == 1 and balance(world) == 140


def test_succeeded_delivered_twice_and_after_its_refund_credits_once_and_claws_back_once(world: World) -> None:
    world.ledger.charge("ann", 60, description="a")
    world.pay_pending()
    [paid] = world.intents("payment_intent.succeeded")
    refund_events = world.emulator.refund_payment_intent(paid["data"]["object"]["id"])
    [refunded] = [e for e in refund_events if e["type"] == "charge.refunded"]
    assert world.payments.handle(refunded).kind == "clawed_back"
    assert world.payments.handle(paid).kind == "duplicate"  # late and out of order
    assert world.payments.handle(refunded).kind == "duplicate"
    assert world.payments.handle(paid).kind == "duplicate"
    assert balance(world) == 40  # credited once (140), clawed back once
    assert world.ledger.audit("ann").ok


def test_the_webhook_credits_a_top_up_whose_function_never_recorded_it(world: World) -> None:
    """Paid at Stripe, then the function's answer was lost for good: payment_intent.succeeded credits it."""
    world.ledger.charge("ann", 60, description="a")
    card = world.ledger.settings("ann").card
    assert card is not None
    package = world.payments.catalog.active("starter")
    world.gateway.charge_saved_card(
        customer_id=card["customer"], payment_method_id=card["id"], amount=500, currency="usd",
        idempotency_key=stripe_key("ann", 1), description="Auto top-up: Starter",
        metadata={"userId": "ann", "packageId": "starter", "topupId": "topup:ann:1", **package.sale_terms()},
    )  # fmt: skip
    [paid] = world.intents("payment_intent.succeeded")
    assert world.payments.handle(paid).kind == "granted" and balance(world) == 140
    assert world.ledger.top_ups("ann")[1].pending is None and world.started()[-1]["state"] == "succeeded"


def test_three_declines_in_a_row_suspend_it_with_a_sentence_each_and_max_per_month_holds(
    world: World, clock: ManualClock
) -> None:
    world.ledger.charge("ann", 60, description="a")  # 40
    for attempt in (1, 2, 3):
        world.next_payment("decline")
        outcome = world.pay_pending()
        assert outcome.kind == "failed" and balance(world) == 40 - 2 * (attempt - 1)  # no credits came
        world.ledger.charge("ann", 1, description="within the hour")
        assert len(world.started()) == attempt  # backing off: none started
        clock.now += BACKOFF_MS / 1000
        world.ledger.charge("ann", 1, description="an hour later")
    items = world.started()
    assert [(i["state"], i["code"], i["attempt"], i["suspended"]) for i in items] == [
        ("failed", "generic_decline", 1, False),
        ("failed", "generic_decline", 2, False),
        ("failed", "generic_decline", 3, True),
    ]
    assert all(i["message"] == "Your card was declined." and i["payment_intent"] for i in items)
    state = world.ledger.top_ups("ann")[1]
    assert state.suspended == "generic_decline" and state.pending is None and len(world.started()) == 3
    announced = [record_events(modified(i), 10) or [] for i in items]  # what the events function publishes
    assert [[(e.detail_type, e.detail["attempt"], e.detail["suspended"]) for e in each] for each in announced] == [
        [("Auto Top-Up Failed", 1, False)],
        [("Auto Top-Up Failed", 2, False)],
        [("Auto Top-Up Failed", 3, True)],
    ]
    assert world.payments.handle(world.intents("payment_intent.payment_failed")[0]).kind == "failed"
    assert world.ledger.top_ups("ann")[1].failures == 3  # a late webhook of a failure ends nothing twice
    world.ledger.charge("ann", 1, description="suspended")
    assert len(world.started()) == 3

    # a new card ends the suspension (and its back-off): the next crossing pays; maxPerMonth (5) is the end
    world.save_card("ann", "pm_card_visa")
    state = world.ledger.top_ups("ann")[1]
    assert (state.suspended, state.failures, state.retry_after_ms) == (None, 0, 0)
    world.ledger.charge("ann", 1, description="again")
    assert world.pay_pending().kind == "granted"
    while world.ledger.account("ann").available >= 50:
        world.ledger.charge("ann", 10, description="spending")
    assert len(world.started()) == 5  # 3 failed + 1 paid this month, then the 5th starts
    assert world.pay_pending().kind == "granted"
    while world.ledger.account("ann").available >= 50:
        world.ledger.charge("ann", 10, description="spending")
    world.ledger.charge("ann", 1, description="below again")
    assert len(world.started()) == 5 and world.ledger.top_ups("ann")[1].pending is None  # 5 of 5


def test_authentication_required_ends_the_attempt_and_tells_the_user_to_buy_by_hand(world: World) -> None:
    world.next_payment("authentication_required")
    world.ledger.charge("ann", 60, description="a")
    outcome = world.pay_pending()
    assert outcome.kind == "failed" and balance(world) == 40
    [item] = world.started()
    assert (item["state"], item["code"], item["suspended"]) == ("failed", "authentication_required", False)
    assert "buy credits on the page" in item["message"]
    assert world.ledger.top_ups("ann")[1].pending is None


def test_a_removed_card_or_package_ends_the_top_up_with_its_reason(world: World) -> None:
    world.ledger.charge("ann", 60, description="a")
    world.payments.catalog.put(world.payments.catalog.active("starter").model_copy(update={"active": False}))
    assert world.pay_pending().kind == "failed"
    assert world.started()[-1]["code"] == "package_unavailable"
    assert world.intents("payment_intent.succeeded") == [] and balance(world) == 40


def test_a_payment_intent_that_is_not_a_top_up_is_ignored(world: World) -> None:
    intent = {"id": "pi_x", "status": "succeeded", "amount": 500, "currency": "usd", "metadata": {"userId": "ann"}}
    event = {"id": "evt_x", "type": "payment_intent.succeeded", "data": {"object": intent}}
    assert world.payments.handle(event).kind == "ignored" and balance(world) == 100


def test_reconcile_finds_and_credits_a_top_up_whose_webhook_never_came(world: World) -> None:
    world.ledger.charge("ann", 60, description="a")
    card = world.ledger.settings("ann").card
    assert card is not None
    package = world.payments.catalog.active("starter")
    world.gateway.charge_saved_card(  # paid at Stripe; the function and the webhook never got the answer
        customer_id=card["customer"], payment_method_id=card["id"], amount=500, currency="usd",
        idempotency_key=stripe_key("ann", 1), description="Auto top-up: Starter",
        metadata={"userId": "ann", "packageId": "starter", "topupId": "topup:ann:1", **package.sale_terms()},
    )  # fmt: skip
    since = int(time.time()) - 3600
    [missing] = reconcile.find_missing(world.payments, world.gateway, since)
    assert (missing.kind, missing.user_id) == ("purchase", "ann") and "topup:ann:1" in missing.detail
    [(_, outcome)] = list(reconcile.apply(world.payments, [missing]))
    assert getattr(outcome, "kind", None) == "granted" and balance(world) == 140
    assert world.started()[-1]["state"] == "succeeded"
    assert reconcile.find_missing(world.payments, world.gateway, since) == []  # a second run: nothing


class DiesAfterStripe:
    """A top-up function whose container dies right after Stripe answered (or Stripe's answer was lost)."""

    def __init__(self, gateway: StripeGateway) -> None:
        self.gateway = gateway

    def charge_saved_card(self, **charge: Any) -> Any:
        self.gateway.charge_saved_card(**charge)
        raise PaymentProviderError("the answer was lost")  # retriable: the record is retried


def test_a_retry_after_a_lost_answer_pays_the_first_terms_even_if_the_package_changed(world: World) -> None:
    world.ledger.charge("ann", 60, description="a")
    with pytest.raises(PaymentProviderError):
        TopUps(world.payments, DiesAfterStripe(world.gateway)).start("ann", world.started()[-1])
    assert world.ledger.top_ups("ann")[1].pending == "topup:ann:1" and balance(world) == 40  # retried later
    world.payments.catalog.put(Package(id="starter", name="Starter+", credits=120, price=700, currency="usd"))
    outcome = world.pay_pending()  # the redelivery: Stripe's first answer, for the terms then
    assert (outcome.kind, outcome.credits, balance(world)) == ("granted", 100, 140)
    [paid] = world.intents("payment_intent.succeeded")
    assert paid["data"]["object"]["amount"] == 500 and world.started()[-1]["state"] == "succeeded"
    assert world.ledger.top_ups("ann")[1].failures == 0


def test_turned_off_after_the_crossing_charges_nothing_and_counts_no_failure(world: World) -> None:
    world.ledger.charge("ann", 60, description="a")
    world.ledger.update_settings("ann", auto_top_up=AutoTopUp(False, 50, "starter", 5))
    outcome = world.pay_pending()
    assert outcome.kind == "ignored" and balance(world) == 40
    assert [e for e in world.emulator.events if e["type"].startswith("payment_intent.")] == []  # nothing charged
    [item] = world.started()
    assert (item["state"], item["code"]) == ("cancelled", "turned_off")
    assert record_events(modified(item), 10) == []  # no event: nothing was paid or declined
    state = world.ledger.top_ups("ann")[1]
    assert (state.pending, state.failures, state.retry_after_ms) == (None, 0, 0)


def test_turned_off_while_a_charge_is_decided_starts_no_top_up(world: World, moto_dynamodb: Any) -> None:
    """The user turns auto top-up off between a charge's read and its write: the charge is decided
    again against the settings in force, and starts nothing."""
    turned_off: list[bool] = []

    def turn_off_once(**_: Any) -> None:
        if not turned_off:
            turned_off.append(True)
            world.store.write(Update((keys.user_pk("ann"), keys.ACCOUNT), set={"auto_top_up": AutoTopUp(
                False, 50, "starter", 5).stored()}))  # fmt: skip

    moto_dynamodb.meta.events.register("before-call.dynamodb.TransactWriteItems", turn_off_once)
    try:
        world.ledger.charge("ann", 60, description="crossing")
    finally:
        moto_dynamodb.meta.events.unregister("before-call.dynamodb.TransactWriteItems", turn_off_once)
    assert turned_off and balance(world) == 40  # charged once
    assert world.started() == [] and world.ledger.top_ups("ann")[1].pending is None
