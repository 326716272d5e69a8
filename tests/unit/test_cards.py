"""Saved cards (credits.cards) on moto: POST /credits/checkout with `saveCard` and POST /credits/cards
start the sessions that save a card; the webhook keeps the newest card once per account (a new one
ends a suspension of auto top-up), forgets a detached one, and ignores sessions that are not ours.
The whole way, Checkout to the account's `card`, runs on the Stripe emulator too."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pytest
import stripe

from credits import keys
from credits.cards import CardEvents, Cards, SavedCard
from credits.checkout import Customers
from credits.errors import ValidationError
from credits.ledger import Ledger, iso_utc
from credits.packages import Catalog, Package
from credits.payments import Outcome, Payments
from credits.store import DynamoStore, Write
from credits.stripe_gateway import StripeGateway
from credits.stripe_objects import CheckoutSession
from local.stripe_emulator import StripeEmulator
from tests import stripe_events as se
from tests.support import FakeContext, environment, http_event, invoke, load_function

KEY = "sk_test_cards_unit"
NOW = 1_800_000_000.0
UNICODE_USERS = ["jos\u00e9", "\u30e6\u30fc\u30b6\u30fc", "\U0001d4b0" * 63]


def card(pm: str = "pm_1", created: int = 1_700_000_000, customer: str = "cus_1", last4: str = "4242") -> SavedCard:
    return SavedCard(pm, "visa", last4, "fp_" + last4, 12, 2030, customer, created)


@dataclass
class Reader:
    """Stripe's answer to "which card did this session save", by session id; counts the reads."""

    cards: dict[str, SavedCard] = field(default_factory=dict)
    reads: list[str] = field(default_factory=list)

    def saved_card(self, session: CheckoutSession) -> SavedCard | None:
        self.reads.append(session.id)
        return self.cards.get(session.id)


class CountingStore(DynamoStore):
    """The table, counting the writes made through it."""

    writes: list[Write]

    def write(self, op: Write, *, conflicts: bool = False, once: bool = False) -> None:
        self.writes.append(op)
        super().write(op, conflicts=conflicts, once=once)


@dataclass
class World:
    payments: Payments
    cards: Cards
    reader: Reader
    store: CountingStore

    def deliver(self, event_type: str, obj: dict[str, Any], previous: dict[str, Any] | None = None) -> Outcome:
        event = se.event(event_type, obj)
        event["data"]["previous_attributes"] = previous
        return self.payments.handle(event)

    def account(self, user: str) -> dict[str, Any]:
        return self.store.get((keys.user_pk(user), keys.ACCOUNT)) or {}

    def card_writes(self) -> int:
        return sum(1 for op in self.store.writes if op.key[1] == keys.ACCOUNT)


@pytest.fixture
def world(moto_dynamodb: Any, ledger: Ledger) -> World:
    catalog = Catalog(moto_dynamodb, "credits")
    catalog.put(Package(id="starter", name="Starter", credits=100, price=500, currency="usd"))
    store = CountingStore(moto_dynamodb, "credits")
    store.writes = []
    cards, reader = Cards(store=store, clock=lambda: NOW), Reader()
    payments = Payments(ledger, catalog, cards=CardEvents(cards, lambda: reader))
    return World(payments, cards, reader, store)


def setup_session(user: str = "user-1", *, purpose: str | None = "card", session_id: str | None = None) -> dict:
    """A completed setup-mode session as Stripe sends it, started by POST /credits/cards (or not)."""
    obj = copy.deepcopy(se.OBJECTS["checkout.session"])
    metadata = {"userId": user, **({"purpose": purpose} if purpose else {})}
    obj.update(
        id=session_id or f"cs_test_{uuid.uuid4().hex[:24]}",
        mode="setup",
        status="complete",
        payment_status="no_payment_required",
        metadata=metadata,
        setup_intent=f"seti_{uuid.uuid4().hex[:24]}",
        payment_intent=None,
        customer="cus_1",
        currency="usd",
    )
    return obj


def saving_purchase(user: str = "user-1") -> dict:
    """A paid purchase made with `saveCard`."""
    session = se.session(user=user)
    session["metadata"]["saveCard"] = "true"
    return session


def detached(pm: str, customer: str | None = "cus_1") -> tuple[dict, dict | None]:
    """A payment_method.detached object (customer null, as Stripe sends it) and its previous_attributes."""
    method = {
        "id": pm,
        "object": "payment_method",
        "type": "card",
        "created": 1_700_000_000,
        "customer": None,
        "card": {"brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2030, "fingerprint": "fp"},
    }
    return method, ({"customer": customer} if customer else None)


# ---- the webhook keeps the newest card ---------------------------------------------------------------


def test_a_setup_session_saves_its_card_once_as_the_account_s_card_map(world: World) -> None:
    session = setup_session()
    world.reader.cards[session["id"]] = card()

    first = world.deliver("checkout.session.completed", session)
    again = world.deliver("checkout.session.completed", session)  # delivered twice (another event id)

    assert (first.kind, first.user_id) == ("card_saved", "user-1")
    assert (again.kind, again.credits) == ("duplicate", 0)
    assert world.card_writes() == 1
    assert world.account("user-1")["card"] == {
        "id": "pm_1",
        "brand": "visa",
        "last4": "4242",
        "fingerprint": "fp_4242",
        "exp_month": 12,
        "exp_year": 2030,
        "customer": "cus_1",
        "created": 1_700_000_000,
        "saved_at": iso_utc(NOW),
    }
    assert world.cards.card("user-1") == card()


def test_a_newer_card_replaces_it_and_ends_the_suspension_and_the_back_off(world: World, moto_dynamodb: Any) -> None:
    assert world.cards.save("user-1", card("pm_old", created=100))
    moto_dynamodb.update_item(  # three failed top-ups with the old card
        TableName="credits",
        Key={"pk": {"S": keys.user_pk("user-1")}, "sk": {"S": keys.ACCOUNT}},
        UpdateExpression="SET topup_suspended = :s, topup_failures = :f, topup_retry_ms = :r",
        ExpressionAttributeValues={":s": {"S": "insufficient_funds"}, ":f": {"N": "3"}, ":r": {"N": "123"}},
    )
    session = setup_session()
    world.reader.cards[session["id"]] = card("pm_new", created=200, last4="0341")

    assert world.deliver("checkout.session.completed", session).kind == "card_saved"

    account = world.account("user-1")
    assert (account["card"]["id"], account["card"]["last4"]) == ("pm_new", "0341")
    assert account["topup_failures"] == 0
    assert "topup_suspended" not in account and "topup_retry_ms" not in account


def test_an_older_card_arriving_late_changes_nothing(world: World, moto_dynamodb: Any) -> None:
    assert world.cards.save("user-1", card("pm_new", created=200))
    moto_dynamodb.update_item(
        TableName="credits",
        Key={"pk": {"S": keys.user_pk("user-1")}, "sk": {"S": keys.ACCOUNT}},
        UpdateExpression="SET topup_suspended = :s",
        ExpressionAttributeValues={":s": {"S": "card_declined"}},
    )
    before = world.account("user-1")
    session = setup_session()
    world.reader.cards[session["id"]] = card("pm_old", created=100)

    outcome = world.deliver("checkout.session.completed", session)

    assert outcome.kind == "duplicate" and "older" in outcome.detail
    assert world.account("user-1") == before  # still the newer card, still suspended
    assert not world.cards.save("user-1", card("pm_new", created=200))  # the same card: nothing written


def test_a_purchase_with_save_card_is_credited_and_saves_its_card(world: World, ledger: Ledger) -> None:
    session = saving_purchase()
    world.reader.cards[session["id"]] = card()

    first = world.deliver("checkout.session.completed", session)
    again = world.deliver("checkout.session.completed", session)

    assert (first.kind, first.credits) == ("granted", 100) and first.detail.endswith("card pm_1 saved")
    assert again.kind == "duplicate" and "saved card already" in again.detail
    assert ledger.balance("user-1") == 100
    assert world.cards.card("user-1") == card()
    assert world.reader.reads == [session["id"], session["id"]]  # a retry after a failed read saves it


def test_detached_removes_only_the_account_s_card(world: World) -> None:
    Customers(store=world.store).link("user-1", "cus_1")
    world.cards.save("user-1", card("pm_1"))

    other = world.deliver("payment_method.detached", *detached("pm_other"))
    unknown = world.deliver("payment_method.detached", *detached("pm_1", customer="cus_unknown"))
    no_customer = world.deliver("payment_method.detached", *detached("pm_1", customer=None))
    assert [o.kind for o in (other, unknown, no_customer)] == ["ignored"] * 3
    assert world.cards.card("user-1") == card("pm_1")

    removed = world.deliver("payment_method.detached", *detached("pm_1"))
    assert (removed.kind, removed.user_id) == ("card_removed", "user-1")
    assert world.cards.card("user-1") is None and "card" not in world.account("user-1")
    assert world.deliver("payment_method.detached", *detached("pm_1")).kind == "ignored"  # again: nothing


def test_a_detached_event_that_is_not_a_payment_method_is_a_validation_error(world: World) -> None:
    with pytest.raises(ValidationError):
        world.deliver("payment_method.detached", {"id": "pm_1"}, {"customer": "cus_1"})


def test_sessions_that_are_not_ours_save_nothing_and_read_no_card(world: World, ledger: Ledger) -> None:
    foreign = setup_session(purpose=None)
    other_purpose = setup_session(purpose="subscription")
    plain = se.session()  # a purchase without saveCard
    for session in (foreign, other_purpose, plain):
        world.reader.cards[session["id"]] = card()

    outcomes = [world.deliver("checkout.session.completed", s) for s in (foreign, other_purpose, plain)]

    assert [o.kind for o in outcomes] == ["ignored", "ignored", "granted"]
    assert world.reader.reads == [] and world.cards.card("user-1") is None
    assert ledger.balance("user-1") == 100  # a setup-mode session is never a purchase


def test_a_setup_session_that_saved_no_card_is_ignored(world: World) -> None:
    outcome = world.deliver("checkout.session.completed", setup_session())
    assert outcome.kind == "ignored" and world.card_writes() == 0


@pytest.mark.parametrize("user", UNICODE_USERS)
def test_a_card_for_a_user_id_in_any_script(world: World, user: str) -> None:
    Customers(store=world.store).link(user, "cus_1")
    session = setup_session(user)
    world.reader.cards[session["id"]] = card()

    assert world.deliver("checkout.session.completed", session).user_id == user
    assert world.cards.card(user) == card()
    assert world.deliver("payment_method.detached", *detached("pm_1")).user_id == user
    assert world.cards.card(user) is None


def test_without_a_card_reader_card_events_are_ignored_and_purchases_still_credit(
    webhook: ModuleType, ledger: Ledger
) -> None:
    """The `webhook` fixture has no Stripe key: no card is read, nothing fails."""

    def send(event_type: str, obj: dict) -> dict:
        response = webhook.lambda_handler(se.signed(se.event(event_type, obj)), FakeContext())
        assert response["statusCode"] == 200
        return json.loads(response["body"])

    assert send("checkout.session.completed", setup_session())["outcome"] == "ignored"
    assert send("payment_method.detached", detached("pm_1")[0])["outcome"] == "ignored"
    assert send("checkout.session.completed", saving_purchase())["outcome"] == "granted"
    assert ledger.balance("user-1") == 100


# ---- the routes, and the whole way on the Stripe emulator ------------------------------------------


@pytest.fixture
def emulator(moto_dynamodb: Any) -> Iterator[StripeEmulator]:
    emu = StripeEmulator(api_key=KEY, webhook_secret=se.SECRET)  # no webhook URL: the test delivers
    emu.start()
    yield emu
    emu.stop()


@pytest.fixture
def catalog(moto_dynamodb: Any) -> Catalog:
    found = Catalog(moto_dynamodb, "credits")
    found.put(Package(id="starter", name="Starter", credits=100, price=500, currency="usd"))
    return found


@pytest.fixture
def functions(catalog: Catalog, emulator: StripeEmulator) -> tuple[ModuleType, ModuleType]:
    """The checkout and webhook functions, both with the emulator's key."""
    with environment(
        STRIPE_SECRET_KEY=KEY,
        STRIPE_API_BASE=emulator.base_url,
        STRIPE_WEBHOOK_SECRET=se.SECRET,
        CHECKOUT_SUCCESS_URL="http://localhost/?session_id={CHECKOUT_SESSION_ID}",
        CHECKOUT_CANCEL_URL="http://localhost/",
    ):
        return load_function("checkout"), load_function("webhook")


def deliver(webhook: ModuleType, event: dict) -> dict:
    response = webhook.lambda_handler(se.signed(event), FakeContext())
    assert response["statusCode"] == 200, response
    return json.loads(response["body"])


def test_save_card_asks_stripe_to_keep_the_card_and_says_so_in_metadata(
    functions: tuple[ModuleType, ModuleType], emulator: StripeEmulator
) -> None:
    checkout, _ = functions
    saving = invoke(checkout, http_event("POST", "/credits/checkout", body={"packageId": "starter", "saveCard": True}))
    plain = invoke(checkout, http_event("POST", "/credits/checkout", body={"packageId": "starter", "saveCard": False}))
    assert saving.status == plain.status == 201

    session = emulator._objects[saving.body["sessionId"]]
    assert emulator._checkouts[session["id"]].setup_future_usage == "off_session"
    assert session["metadata"]["saveCard"] == emulator._checkouts[session["id"]].pi_metadata["saveCard"] == "true"
    assert emulator._checkouts[plain.body["sessionId"]].setup_future_usage is None
    assert "saveCard" not in emulator._objects[plain.body["sessionId"]]["metadata"]
    for bad in ("true", 1, None):
        refused = invoke(
            checkout, http_event("POST", "/credits/checkout", body={"packageId": "starter", "saveCard": bad})
        )
        assert (refused.status, refused.code) == (400, "validation_error")


def test_the_cards_route_starts_a_setup_session_for_the_user_s_customer(
    functions: tuple[ModuleType, ModuleType], emulator: StripeEmulator, catalog: Catalog
) -> None:
    checkout, _ = functions
    started = invoke(checkout, http_event("POST", "/credits/cards", sub="\u30e6\u30fc\u30b6\u30fc"))
    assert started.status == 200 and set(started.body) == {"checkoutUrl", "sessionId"}
    session = emulator._objects[started.body["sessionId"]]
    assert (session["mode"], session["currency"], session["url"]) == ("setup", "usd", started.body["checkoutUrl"])
    assert session["metadata"] == {"userId": "\u30e6\u30fc\u30b6\u30fc", "purpose": "card"}
    assert session["success_url"] == "http://localhost/?session_id={CHECKOUT_SESSION_ID}"
    bought = invoke(
        checkout, http_event("POST", "/credits/checkout", sub="\u30e6\u30fc\u30b6\u30fc", body={"packageId": "starter"})
    )
    assert emulator._objects[bought.body["sessionId"]]["customer"] == session["customer"]  # one customer

    catalog.put(Package(id="euro", name="Euro", credits=100, price=400, currency="eur"))  # first on sale now
    assert (
        emulator._objects[invoke(checkout, http_event("POST", "/credits/cards", body={})).body["sessionId"]]["currency"]
        == "eur"
    )
    for package in catalog.all():
        catalog.put(package.model_copy(update={"active": False}))
    none_on_sale = invoke(checkout, http_event("POST", "/credits/cards"))
    assert emulator._objects[none_on_sale.body["sessionId"]]["currency"] == "usd"


@pytest.mark.parametrize(
    ("body", "code"),
    [({"packageId": "starter"}, "validation_error"), ([], "invalid_json"), ("{", "invalid_json")],
    ids=["a-field", "not-an-object", "not-json"],
)
def test_the_cards_route_refuses_a_body_it_cannot_use(
    functions: tuple[ModuleType, ModuleType], emulator: StripeEmulator, body: Any, code: str
) -> None:
    checkout, _ = functions
    event = http_event("POST", "/credits/cards", raw_body=body) if isinstance(body, str) else None
    refused = invoke(checkout, event or http_event("POST", "/credits/cards", body=body))
    assert (refused.status, refused.code) == (400, code)
    assert not [o for o in emulator._objects.values() if o["object"] == "checkout.session"]  # nothing started


def test_the_cards_route_needs_a_user(functions: tuple[ModuleType, ModuleType]) -> None:
    assert invoke(functions[0], http_event("POST", "/credits/cards", sub=None)).status == 401


def test_a_purchase_with_save_card_paid_by_visa_saves_visa_4242(
    functions: tuple[ModuleType, ModuleType], emulator: StripeEmulator, ledger: Ledger, moto_dynamodb: Any
) -> None:
    checkout, webhook = functions
    started = invoke(checkout, http_event("POST", "/credits/checkout", body={"packageId": "starter", "saveCard": True}))
    [completed] = emulator.pay(started.body["sessionId"], "pm_card_visa")

    answer = deliver(webhook, completed)

    assert (answer["outcome"], answer["credits"]) == ("granted", 100)
    assert ledger.balance("user-1") == 100
    saved = Cards(moto_dynamodb, "credits").card("user-1")
    assert saved is not None and (saved.brand, saved.last4) == ("visa", "4242")
    intent = emulator._objects[emulator._objects[started.body["sessionId"]]["payment_intent"]]
    assert (saved.id, saved.customer) == (intent["payment_method"], intent["customer"])
    assert deliver(webhook, {**completed, "id": "evt_again"})["outcome"] == "duplicate"

    client = stripe.StripeClient(KEY, base_addresses={"api": emulator.base_url}, max_network_retries=0)
    client.v1.payment_methods.detach(saved.id)
    assert deliver(webhook, emulator.events[-1])["outcome"] == "card_removed"
    assert Cards(moto_dynamodb, "credits").card("user-1") is None


def test_a_card_saved_on_the_setup_page_is_the_account_s_card(
    functions: tuple[ModuleType, ModuleType], emulator: StripeEmulator, ledger: Ledger, moto_dynamodb: Any
) -> None:
    checkout, webhook = functions
    started = invoke(checkout, http_event("POST", "/credits/cards"))
    [completed] = emulator.pay(started.body["sessionId"], "pm_card_visa")

    assert deliver(webhook, completed)["outcome"] == "card_saved"

    saved = Cards(moto_dynamodb, "credits").card("user-1")
    assert saved is not None and (saved.brand, saved.last4, saved.exp_month) == ("visa", "4242", 12)
    assert ledger.balance("user-1") == 0  # nothing sold


def test_the_gateway_reads_no_card_from_a_purchase_that_saved_none(
    functions: tuple[ModuleType, ModuleType], emulator: StripeEmulator
) -> None:
    """Paid without `saveCard` (the card is not attached to the customer) or by bank debit: no card."""
    checkout, _ = functions
    gateway = StripeGateway.connect(KEY, emulator.base_url)
    plain = invoke(checkout, http_event("POST", "/credits/checkout", body={"packageId": "starter"}))
    [paid] = emulator.pay(plain.body["sessionId"])
    saving = invoke(checkout, http_event("POST", "/credits/checkout", body={"packageId": "starter", "saveCard": True}))
    [by_bank] = emulator.pay_later(saving.body["sessionId"])
    unpaid = emulator._objects[invoke(checkout, http_event("POST", "/credits/cards")).body["sessionId"]]

    for session in (paid["data"]["object"], by_bank["data"]["object"], unpaid):
        assert gateway.saved_card(CheckoutSession.model_validate(session)) is None


def test_stripe_unreachable_for_the_card_is_a_502_and_the_event_comes_again(
    catalog: Catalog, ledger: Ledger, moto_dynamodb: Any
) -> None:
    """The purchase is credited; the card is read again when Stripe retries (the event is not kept as done)."""
    with environment(STRIPE_SECRET_KEY=KEY, STRIPE_API_BASE="http://127.0.0.1:9", STRIPE_WEBHOOK_SECRET=se.SECRET):
        webhook = load_function("webhook")
    event = se.event("checkout.session.completed", saving_purchase())
    for _ in range(2):
        response = webhook.lambda_handler(se.signed(event), FakeContext())
        assert response["statusCode"] == 502
        assert json.loads(response["body"])["error"]["code"] == "payment_provider_error"
    assert ledger.balance("user-1") == 100 and Cards(moto_dynamodb, "credits").card("user-1") is None
