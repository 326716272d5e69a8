"""Buying credits for real, offline: DynamoDB Local, the Stripe emulator and the local gateway."""

from __future__ import annotations

import json
import sys
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from credits.__main__ import main as credits_cli
from credits.checkout import Customers
from credits.ledger import Ledger
from local.gateway import Gateway
from local.stripe_emulator import StripeEmulator
from local.template import ROOT
from tests import stripe_events as se
from tests.integration.conftest import LocalTables
from tests.support import environment, fleet

API_KEY = "sk_test_local_emulator"

# A request waits for a container; on a loaded 2-core machine several cold starts at once (each
# process imports boto3, Powertools and pydantic) take tens of seconds. The deadline is for a hang.
REQUEST_DEADLINE = 120


@dataclass
class Stack:
    tables: LocalTables
    stripe: StripeEmulator
    gateway: Gateway
    ledger: Ledger

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.gateway.base_url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_DEADLINE) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def money(self, token: str) -> tuple[int, dict[str, int]]:
        """GET /credits/balance: its status, and the balance, what is available and what is held."""
        status, body = self.call("GET", "/credits/balance", token=token)
        return status, {name: body[name] for name in ("balance", "available", "held")}

    def sign_in(self, user: str) -> str:
        status, body = self.call("POST", "/local/sign-in", {"user": user})
        assert status == 200
        return str(body["token"])


@pytest.fixture
def stack(local_tables: LocalTables) -> Iterator[Stack]:
    stripe = StripeEmulator(api_key=API_KEY, webhook_secret=se.SECRET)
    stripe.start()
    with environment(
        STRIPE_SECRET_KEY=API_KEY,
        STRIPE_API_BASE=stripe.base_url,
        STRIPE_WEBHOOK_SECRET=se.SECRET,
        CHECKOUT_SUCCESS_URL="http://localhost/?checkout=success&session_id={CHECKOUT_SESSION_ID}",
        CHECKOUT_CANCEL_URL="http://localhost/?checkout=cancelled",
    ):
        assert credits_cli(["packages", "import", str(ROOT / "local/packages.example.json"), "--sync-stripe"]) == 0
        gateway = Gateway(token_secret="test-secret", web_dir=None)
        gateway.start()
        stripe.webhook_url = gateway.base_url + "/webhook"
        try:
            yield Stack(local_tables, stripe, gateway, local_tables.ledger())
        finally:
            gateway.stop()
            stripe.stop()


def test_worked_example_buy_spend_refund(stack: Stack) -> None:
    """Alice buys Starter (100 credits for $5), spends analyze, gets half refunded: 45 left."""
    token = stack.sign_in("alice")
    status, body = stack.call("GET", "/credit-packages")
    assert status == 200
    starter = next(p for p in body["packages"] if p["id"] == "starter")
    assert (starter["credits"], starter["price"], starter["currency"]) == (100, 500, "usd")

    assert stack.money(token) == (200, {"balance": 0, "available": 0, "held": 0})
    status, checkout = stack.call("POST", "/credits/checkout", {"packageId": "starter"}, token=token)
    assert status == 201
    assert checkout["checkoutUrl"].startswith(stack.stripe.base_url)
    assert checkout["sessionId"].startswith("cs_test_")

    stack.stripe.pay(checkout["sessionId"])
    assert stack.stripe.deliveries[-1][1] == 200
    assert stack.money(token) == (200, {"balance": 100, "available": 100, "held": 0})

    status, spent = stack.call("POST", "/credits/use", {"action": "analyze"}, token=token)
    assert (status, spent["charged"], spent["balance"]) == (200, 5, 95)

    stack.stripe.refund(checkout["sessionId"], 250)
    assert stack.money(token) == (200, {"balance": 45, "available": 45, "held": 0})

    status, page = stack.call("GET", "/credits/transactions", token=token)
    assert [(t["type"], t["amount"], t["balanceAfter"]) for t in page["transactions"]] == [
        ("refund", -50, 45),
        ("usage", -5, 95),
        ("purchase", 100, 100),
    ]
    assert page["transactions"][2]["monetaryAmount"] == 500
    assert stack.ledger.audit("alice").ok


def test_stripe_retrying_every_event_changes_nothing(stack: Stack) -> None:
    token = stack.sign_in("bob")
    _, checkout = stack.call("POST", "/credits/checkout", {"packageId": "pro"}, token=token)
    stack.stripe.pay_later(checkout["sessionId"])
    assert stack.ledger.balance("bob") == 0
    stack.stripe.async_succeed(checkout["sessionId"])
    stack.stripe.refund(checkout["sessionId"], 1000)
    for evt in list(stack.stripe.events):
        assert stack.stripe.deliver(evt) == 200
    assert stack.ledger.balance("bob") == 1200 - 240
    assert [t.type for t in stack.ledger.history("bob")] == ["purchase", "refund"]


def test_a_user_gets_one_stripe_customer_even_when_checkouts_race(stack: Stack) -> None:
    token = stack.sign_in("carol")
    barrier = threading.Barrier(8)

    def start(_: int) -> tuple[int, Any]:
        barrier.wait()
        return stack.call("POST", "/credits/checkout", {"packageId": "starter"}, token=token)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(start, range(8)))
    assert Counter(status for status, _ in results) == {201: 8}
    customer = Customers(stack.tables.client, stack.tables.credits).get("carol")  # type: ignore[arg-type]
    assert customer is not None
    sessions = {body["sessionId"] for _, body in results}
    assert len(sessions) == 8
    status, listed = 0, None
    request = urllib.request.Request(
        f"{stack.stripe.base_url}/v1/checkout/sessions?customer={customer}&limit=100",
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        status, listed = response.status, json.loads(response.read())
    assert status == 200
    assert {s["id"] for s in listed["data"]} == sessions  # every session went to the one customer


def test_a_package_without_stripe_ids_is_sold_with_price_data(stack: Stack) -> None:
    from credits.packages import Catalog, Package

    catalog = Catalog(stack.tables.client, stack.tables.credits)  # type: ignore[arg-type]
    catalog.put(Package(id="adhoc", name="Ad hoc", credits=30, price=300, currency="eur"))
    token = stack.sign_in("frank")
    status, checkout = stack.call("POST", "/credits/checkout", {"packageId": "adhoc"}, token=token)
    assert status == 201
    stack.stripe.pay(checkout["sessionId"])
    assert stack.ledger.balance("frank") == 30
    [purchase] = stack.ledger.history("frank")
    assert (purchase.monetary_amount, purchase.currency) == (300, "eur")


def test_unknown_or_inactive_packages_are_404(stack: Stack) -> None:
    token = stack.sign_in("dave")
    status, body = stack.call("POST", "/credits/checkout", {"packageId": "nope"}, token=token)
    assert (status, body["error"]["code"]) == (404, "package_not_found")
    from credits.packages import Catalog, Package

    catalog = Catalog(stack.tables.client, stack.tables.credits)  # type: ignore[arg-type]
    catalog.put(Package(id="retired", name="Retired", credits=1, price=100, currency="usd", active=False))
    status, body = stack.call("POST", "/credits/checkout", {"packageId": "retired"}, token=token)
    assert (status, body["error"]["code"]) == (404, "package_not_found")
    status, body = stack.call("POST", "/credits/checkout", {"packageId": 5}, token=token)
    assert (status, body["error"]["code"]) == (400, "validation_error")
    assert stack.call("POST", "/credits/checkout", {"packageId": "starter"})[0] == 401


def test_stripe_down_is_502_and_nothing_is_written(stack: Stack) -> None:
    token = stack.sign_in("erin")
    stack.stripe.stop()
    status, body = stack.call("POST", "/credits/checkout", {"packageId": "starter"}, token=token)
    assert (status, body["error"]["code"]) == (502, "payment_provider_error")
    assert Customers(stack.tables.client, stack.tables.credits).get("erin") is None  # type: ignore[arg-type]
    assert stack.ledger.balance("erin") == 0


def test_internal_routes_are_not_reachable_through_the_public_gateway(stack: Stack) -> None:
    token = stack.sign_in("mallory")
    body = {"userId": "mallory", "amount": 1000, "type": "gift", "description": "free money"}
    assert stack.call("POST", "/internal/credits/grant", body, token=token)[0] == 403
    assert stack.ledger.balance("mallory") == 0


def starter_on_sale(tables: LocalTables) -> None:
    from credits.packages import Catalog, Package

    Catalog(tables.client, tables.credits).put(  # type: ignore[arg-type]
        Package(id="starter", name="Starter", credits=100, price=500, currency="usd")
    )


def deliver_at_once(events: list[dict[str, Any]], *, redeliver: bool = True) -> list[tuple[int, dict[str, Any]]]:
    """Each event, signed, reaches its own webhook container (a process) at the same moment; the
    first answers. With `redeliver`, Stripe then delivers every one again, and each must be 200."""
    with environment(STRIPE_WEBHOOK_SECRET=se.SECRET), fleet("webhook", len(events)) as containers:
        answers = containers.hammer([se.signed(evt) for evt in events], at_once=True, pinned=True)
        first = [(status, body) for status, body, _ in answers]
        if redeliver:
            for i, evt in enumerate(events):
                assert containers.on(i, se.signed(evt))[0] == 200, first
    return first


def test_ten_concurrent_deliveries_of_one_event_credit_once(local_tables: LocalTables) -> None:
    """Ten containers receive the same event at the same moment (Stripe retries overlapping)."""
    starter_on_sale(local_tables)
    evt = se.event("checkout.session.completed", se.session(user="zoe"))
    statuses = [status for status, _ in deliver_at_once([evt] * 10)]
    # Overlapping duplicates get a retriable non-2xx; Stripe delivers them again later (200 each).
    assert set(statuses) <= {200, 503} and 200 in statuses
    ledger = local_tables.ledger()
    assert ledger.balance("zoe") == 100
    assert [t.type for t in ledger.history("zoe")] == ["purchase"]


def test_completed_and_async_succeeded_racing_credit_once(local_tables: LocalTables) -> None:
    starter_on_sale(local_tables)
    session = se.session(user="yan")
    events = [
        se.event("checkout.session.completed", session),
        se.event("checkout.session.async_payment_succeeded", session),
    ]
    responses = deliver_at_once(events, redeliver=False)
    assert [status for status, _ in responses] == [200, 200]
    assert sorted(body["outcome"] for _, body in responses) == ["duplicate", "granted"]
    assert local_tables.ledger().balance("yan") == 100


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_refunds_and_a_dispute_racing_in_any_order_settle_exactly(local_tables: LocalTables, seed: int) -> None:
    """Five containers receive a purchase's refunds and dispute at once, in a shuffled order."""
    import random

    starter_on_sale(local_tables)
    user, pi = f"racer-{seed}", f"pi_race_{seed}"
    events = [
        se.event("checkout.session.completed", se.session(user=user, payment_intent=pi)),
        se.event("charge.refunded", se.charge(pi, refunded=200)),
        se.event("charge.refunded", se.charge(pi, refunded=500)),
        se.event("charge.dispute.created", se.dispute(pi)),
        se.event("charge.dispute.closed", se.dispute(pi, status="won")),
    ]
    random.Random(seed).shuffle(events)
    deliver_at_once(events)  # then Stripe retries whatever did not answer 2xx, and may redeliver the rest

    ledger = local_tables.ledger()
    history = ledger.history(user)
    assert ledger.balance(user) == 0  # fully refunded; the won dispute gives nothing back on top
    assert sum(t.amount for t in history if t.type == "purchase") == 100
    assert sum(t.amount for t in history if t.type == "refund") == -100
    assert sum(t.amount for t in history if t.type == "dispute") == 0
    assert ledger.audit(user).ok


def test_concurrent_users_through_the_gateway_each_see_only_their_own_account(stack: Stack) -> None:
    """Many users at once through the local gateway: every answer is about the user who asked."""
    users = [f"crowd-{n}" for n in range(6)]
    tokens = {user: stack.sign_in(user) for user in users}
    for n, user in enumerate(users):
        stack.ledger.grant(user, 1000 * (n + 1), type="gift", description="seed")

    def ask(i: int) -> tuple[str, str, int, Any]:
        user = users[(i // 2) % len(users)]  # each user asks both kinds of question
        if i % 2:
            status, body = stack.call("GET", "/credits/balance", token=tokens[user])
            return user, "balance", status, body
        status, body = stack.call("POST", "/credits/use", {"action": "search"}, token=tokens[user])
        return user, "use", status, body

    switching = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: any state shared between requests shows
    try:
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(ask, range(240)))
    finally:
        sys.setswitchinterval(switching)

    for user, kind, status, body in answers:
        n = users.index(user)
        assert status == 200, (user, kind, body)
        # 1000*(n+1) minus at most 20 charges: a balance of anyone else is thousands away
        assert 1000 * (n + 1) - 20 <= body["balance"] <= 1000 * (n + 1), (user, kind, body)
    for n, user in enumerate(users):
        assert stack.ledger.balance(user) == 1000 * (n + 1) - 20
        assert stack.ledger.audit(user).ok


@pytest.mark.parametrize("seed", [4, 5])
def test_two_disputes_and_a_refund_racing_in_any_order_take_everything(local_tables: LocalTables, seed: int) -> None:
    """Dispute B won while dispute A is lost, with a partial refund, delivered at once in any order."""
    import random

    starter_on_sale(local_tables)
    user, pi = f"disputed-{seed}", f"pi_two_{seed}"
    events = [
        se.event("checkout.session.completed", se.session(user=user, payment_intent=pi)),
        se.event("charge.refunded", se.charge(pi, refunded=200)),
        se.event("charge.dispute.created", se.dispute(pi, dispute_id=f"dp_a{seed}")),
        se.event("charge.dispute.created", se.dispute(pi, dispute_id=f"dp_b{seed}")),
        se.event("charge.dispute.closed", se.dispute(pi, dispute_id=f"dp_b{seed}", status="won")),
        se.event("charge.dispute.closed", se.dispute(pi, dispute_id=f"dp_a{seed}", status="lost")),
    ]
    random.Random(seed).shuffle(events)
    first = [status for status, _ in deliver_at_once(events)]
    assert set(first) <= {200, 503}, first  # busy at worst, never refused

    ledger = local_tables.ledger()
    history = ledger.history(user)
    assert ledger.balance(user) == 0  # 40 refunded, the other 60 held by the lost dispute
    assert sum(t.amount for t in history if t.type == "refund") == -40
    assert sum(t.amount for t in history if t.type == "dispute") == -60
    assert ledger.audit(user).ok and local_tables.payments().audit(user, history) == []


@pytest.mark.parametrize("seed", [6, 7])
def test_an_expiring_purchases_refund_and_dispute_racing_settle_against_its_lot(
    local_tables: LocalTables, seed: int
) -> None:
    """A purchase of a package whose credits expire in 30 days (the term fixed in its session), then a
    partial refund, a dispute opened and won and a full refund, delivered at once in any order."""
    import random
    import time

    from credits.checkout import session_metadata
    from credits.packages import Catalog, Package

    monthly = Package(id="monthly", name="Monthly", credits=100, price=500, currency="usd", expires_in_days=30)
    Catalog(local_tables.client, local_tables.credits).put(monthly)  # type: ignore[arg-type]
    user, pi = f"expiring-{seed}", f"pi_lot_{seed}"
    session = se.session(user=user, package="monthly", payment_intent=pi)
    session["metadata"] = session_metadata(user, monthly)
    ledger = local_tables.ledger()
    ledger.grant(user, 40, type="gift", description="welcome")  # what a refund takes after the purchase's lot
    before = int(time.time() * 1000)
    deliver_at_once([se.event("checkout.session.completed", session)], redeliver=False)
    after = int(time.time() * 1000)
    [lot] = [lot for lot in ledger.account(user).lots if lot.label == "Monthly"]
    assert lot.remaining == 100 and before + 30 * 86_400_000 <= (lot.expires_at_ms or 0) <= after + 30 * 86_400_000
    ledger.charge(user, 70, description="usage")  # from the purchase's lot (it expires; the gift does not)

    events = [
        se.event("charge.refunded", se.charge(pi, refunded=200)),
        se.event("charge.dispute.created", se.dispute(pi)),
        se.event("charge.dispute.closed", se.dispute(pi, status="won")),
        se.event("charge.refunded", se.charge(pi, refunded=500)),
    ]
    random.Random(seed).shuffle(events)
    first = [status for status, _ in deliver_at_once(events)]
    assert set(first) <= {200, 503}, first

    history = ledger.history(user)
    assert ledger.balance(user) == 40 + 100 - 70 - 100  # refunded in full; the gift pays what was spent
    assert sum(t.amount for t in history if t.type == "refund") == -100
    assert sum(t.amount for t in history if t.type == "dispute") == 0
    assert ledger.audit(user).ok and local_tables.payments().audit(user, history) == []
