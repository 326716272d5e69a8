"""Auto top-up on DynamoDB Local and the Stripe emulator: charges racing from many use_credits
containers (each its own process) cross the threshold once; the top-up function, fed the table's
stream by the local event source mapping with every record delivered twice at once, charges the
saved card once; the webhook's payment_intent.succeeded, delivered twice, credits nothing more; and a
retry after a crash right after the PaymentIntent was created gets Stripe's first answer. The
payment's own cases on moto: tests/unit/test_topups.py."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
import stripe

from credits import keys
from credits.ledger import AutoTopUp, Ledger
from credits.ledger.topup import stripe_key
from credits.packages import Catalog, Package
from credits.store import DynamoStore
from credits.stripe_gateway import StripeGateway
from local.containers import ContainerPool
from local.streams import StreamPoller
from local.stripe_emulator import StripeEmulator
from tests import stripe_events as se
from tests.integration.conftest import LocalTables
from tests.support import Fleet, assert_audited, fleet, http_event, save_card, wait_until

API_KEY = "sk_test_auto_topup"
STARTER = Package(id="starter", name="Starter", credits=100, price=500, currency="usd")
# Cold starts of many containers on a busy 2-core machine take tens of seconds: a deadline for a hang.
DEADLINE = 180.0


@dataclass
class World:
    tables: LocalTables
    emulator: StripeEmulator
    ledger: Ledger
    store: DynamoStore
    stripe: stripe.StripeClient

    def save_card(self, user: str) -> dict[str, Any]:
        """A card saved through a setup-mode Checkout paid with pm_card_visa at the emulator, recorded
        on the user's account as the webhook records it; the account's card."""
        customer = self.stripe.v1.customers.create(params={"metadata": {"userId": user}})
        params: Any = {"mode": "setup", "customer": customer.id, "currency": "usd",
                       "success_url": "http://localhost/ok", "cancel_url": "http://localhost/"}  # fmt: skip
        session = self.stripe.v1.checkout.sessions.create(params=params)
        self.emulator.pay(session.id, "pm_card_visa")
        method = self.stripe.v1.customers.payment_methods.list(customer.id).data[0]
        save_card(self.store, user, method.id, customer.id)
        card = self.ledger.settings(user).card
        assert card is not None and card["id"] == method.id
        return dict(card)

    def top_ups(self, user: str) -> list[dict[str, Any]]:
        """The user's TOPUP# items, as the table holds them."""
        return self.store.query(keys.user_pk(user), keys.TOPUP).items

    def intent_events(self) -> list[dict[str, Any]]:
        """Every payment_intent.* event the emulator made, as Stripe's API lists them."""
        types = ["payment_intent.succeeded", "payment_intent.payment_failed", "payment_intent.created"]
        listed = self.stripe.v1.events.list(params={"types": types, "limit": 100})
        return [event.to_dict() for event in listed.data]

    def top_up_from_stream(self, deliver: Any, user: str, balance: int) -> None:
        """Deliver the table's stream as template.yaml's TopUps event does (only new TOPUP# items)
        until the user's top-up ended with `balance` credited; then nothing else waits in the stream."""
        poller = StreamPoller.for_function(
            "topup",
            endpoint=self.tables.endpoint,
            table_name=self.tables.credits,
            deliver=deliver,
            starting_position="TRIM_HORIZON",
            poll_interval=0.1,
        ).start()
        ledger = self.tables.ledger()
        try:
            wait_until(
                "the auto top-up to be credited",
                lambda: ledger.balance(user) == balance and ledger.top_ups(user)[1].pending is None,
                timeout=DEADLINE,
            )
        finally:
            poller.stop()
        assert poller.drain(timeout=DEADLINE) == 0  # no other top-up was waiting in the stream


@pytest.fixture
def world(local_tables: LocalTables, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    emulator = StripeEmulator(api_key=API_KEY, webhook_secret=se.SECRET)  # events kept, sent by the tests
    emulator.start()
    try:
        # what every container started from now on inherits, as a deployed function's settings
        monkeypatch.setenv("STRIPE_SECRET_KEY", API_KEY)
        monkeypatch.setenv("STRIPE_API_BASE", emulator.base_url)
        monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", se.SECRET)
        client: Any = local_tables.client
        Catalog(client, local_tables.credits).put(STARTER)
        api = stripe.StripeClient(API_KEY, base_addresses={"api": emulator.base_url}, max_network_retries=0)
        yield World(local_tables, emulator, local_tables.ledger(), DynamoStore(client, local_tables.credits), api)
    finally:
        emulator.stop()


class DeliveredTwice:
    """The top-up function's event source mapping delivering every batch twice, to two containers
    (processes) at the same moment: a redelivery overlapping the first. Both answers count: a record
    either reports failed is delivered again."""

    def __init__(self, containers: Fleet) -> None:
        assert len(containers.containers) == 2
        self.containers = containers
        self.records: list[str] = []  # the sort keys delivered, once per batch
        self.answers: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any]) -> dict[str, Any]:
        barrier = threading.Barrier(2, timeout=DEADLINE)

        def send(i: int) -> dict[str, Any]:
            barrier.wait()
            return self.containers.containers[i].invoke(event)

        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(send, range(2)))
        failed = {f["itemIdentifier"] for answer in answers for f in answer.get("batchItemFailures", [])}
        with self._lock:
            self.records.extend(r["dynamodb"]["Keys"]["sk"]["S"] for r in event["Records"])
            self.answers.extend(answers)
        return {"batchItemFailures": [{"itemIdentifier": s} for s in sorted(failed)]}


def deliver_webhook_twice(event: dict[str, Any]) -> list[dict[str, Any]]:
    """Stripe's event, signed, reaches two webhook containers at the same moment (an overlapping
    retry), then each is sent it again (Stripe retrying a non-2xx, or redelivering): every second
    delivery must be answered 200. The answers' bodies, first deliveries then second."""
    with fleet("webhook", 2) as containers:
        first = containers.hammer([se.signed(event), se.signed(event)], at_once=True, pinned=True)
        assert {status for status, _, _ in first} <= {200, 503}, first  # busy at worst: retried
        again = [containers.on(i, se.signed(event)) for i in range(2)]
    assert [status for status, _, _ in again] == [200, 200], again
    return [body for status, body, _ in (*first, *again) if status == 200]


def test_100_racing_charges_from_16_containers_cross_the_threshold_once_and_top_up_once(world: World) -> None:
    user, ledger = "racer", world.ledger
    ledger.grant(user, 1000, type="gift", description="welcome")
    card = world.save_card(user)
    settings = {"autoTopUp": {"enabled": True, "threshold": 600, "packageId": "starter", "maxPerMonth": 5}}
    uses = [
        http_event(
            "POST", "/credits/use", sub=user, headers={"Idempotency-Key": f"use-{i}"}, body={"action": "analyze"}
        )
        for i in range(100)
    ]
    with fleet("use_credits", 16, setup="tests.support:patient") as use_credits:
        status, body, _ = use_credits.on(0, http_event("PUT", "/credits/settings", sub=user, body=settings))
        assert status == 200, body
        assert body["autoTopUp"] == settings["autoTopUp"] and body["card"]["last4"] == "4242"
        # 100 charges of 5 credits from 16 containers at once: 1000 -> 500, below 600 after the 81st
        answers = use_credits.hammer(uses, at_once=True)
    assert Counter(status for status, _, _ in answers) == {200: 100}, [a for a in answers if a.status != 200]
    assert sorted(a.body["balance"] for a in answers) == list(range(500, 1000, 5))  # each decided once
    [started] = world.top_ups(user)  # the one decision that crossed started one; no other did
    assert (started["state"], started["number"], started["package_id"]) == ("pending", 1, "starter")
    assert started["available"] < 600 <= started["available"] + 5  # started by the crossing charge
    assert ledger.top_ups(user)[1].pending == started["topup_id"] == f"topup:{user}:1"
    assert world.intent_events() == []  # nothing charged on the charge path

    # The stream to the top-up function (as make dev runs it), every record delivered twice at once
    with fleet("topup", 2) as containers:
        twice = DeliveredTwice(containers)
        world.top_up_from_stream(twice, user, 600)
    assert twice.records == ["TOPUP#000000000001"]
    assert twice.answers == [{"batchItemFailures": []}] * 2

    [paid] = world.intent_events()  # one PaymentIntent, paid once: the second delivery got its answer
    intent = paid["data"]["object"]
    assert paid["type"] == "payment_intent.succeeded"
    assert (intent["amount"], intent["currency"], intent["customer"], intent["payment_method"]) == (
        500, "usd", card["customer"], card["id"])  # fmt: skip
    assert intent["metadata"] == {"userId": user, "packageId": "starter", "topupId": f"topup:{user}:1",
                                  "credits": "100", "price": "500", "currency": "usd"}  # fmt: skip

    # Stripe's webhook for the payment, delivered twice (overlapping): it credits nothing more
    bodies = deliver_webhook_twice(paid)
    assert bodies and {b["outcome"] for b in bodies} == {"duplicate"}, bodies

    assert ledger.balance(user) == 1000 - 500 + 100
    purchases = [t for t in ledger.history(user) if t.type == "purchase"]
    assert [(t.amount, t.description, t.monetary_amount, t.currency, t.reference_id) for t in purchases] == [
        (100, "Auto top-up: Starter, 100 credits", 500, "usd", f"purchase:{intent['id']}")
    ]
    [item] = world.top_ups(user)
    assert (item["state"], item["payment_intent"], item["credits"], item["amount"], item["currency"]) == (
        "succeeded", intent["id"], 100, 500, "usd")  # fmt: skip
    state = ledger.top_ups(user)[1]
    assert (state.pending, state.count, state.failures, state.suspended) == (None, 1, 0, None)
    assert_audited(ledger, user, balance=600, available=600, held=0, entries=1 + 100 + 1)


def test_a_top_up_whose_first_delivery_died_after_creating_the_intent_is_paid_once(world: World) -> None:
    user, ledger = "crash", world.ledger
    ledger.grant(user, 100, type="gift", description="welcome")
    card = world.save_card(user)
    ledger.update_settings(user, auto_top_up=AutoTopUp(True, 50, "starter", 5))
    ledger.charge(user, 60, description="a batch job")  # 40: below 50, a top-up starts
    [started] = world.top_ups(user)
    assert (started["topup_id"], started["number"], started["state"]) == (f"topup:{user}:1", 1, "pending")

    # The first delivery got as far as Stripe's answer, then its container died: the intent exists,
    # paid, and nothing was recorded (made here as credits.topups makes it, with the top-up's key).
    metadata = {"userId": user, "packageId": "starter", "topupId": f"topup:{user}:1", **STARTER.sale_terms()}
    first = StripeGateway.connect(API_KEY, world.emulator.base_url).charge_saved_card(
        customer_id=str(card["customer"]), payment_method_id=str(card["id"]), amount=500, currency="usd",
        idempotency_key=stripe_key(user, 1), metadata=metadata, description="Auto top-up: Starter",
    )  # fmt: skip
    assert first.status == "succeeded" and first.payment_intent_id
    assert ledger.balance(user) == 40 and ledger.top_ups(user)[1].pending == f"topup:{user}:1"

    # The record delivered again, to a new container: Stripe's first answer, credited now
    pool = ContainerPool("topup", limit=1)
    try:
        pool.warm()
        world.top_up_from_stream(pool.invoke, user, 140)
    finally:
        pool.close()

    [paid] = world.intent_events()  # the one the first delivery made; the retry made none
    assert (paid["type"], paid["data"]["object"]["id"]) == ("payment_intent.succeeded", first.payment_intent_id)
    bodies = deliver_webhook_twice(paid)  # and Stripe's webhook for it, twice: nothing more
    assert bodies and {b["outcome"] for b in bodies} == {"duplicate"}, bodies

    assert ledger.balance(user) == 140
    [purchase] = [t for t in ledger.history(user) if t.type == "purchase"]
    assert (purchase.amount, purchase.description, purchase.reference_id) == (
        100, "Auto top-up: Starter, 100 credits", f"purchase:{first.payment_intent_id}")  # fmt: skip
    [item] = world.top_ups(user)
    assert (item["state"], item["payment_intent"]) == ("succeeded", first.payment_intent_id)
    assert_audited(ledger, user, balance=140, entries=3)
