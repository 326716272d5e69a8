"""Missed-payment recovery: the Stripe emulator drops webhook deliveries (an endpoint down for longer
than Stripe retries); `credits reconcile` finds what the ledger misses and `--apply` applies it once,
through the webhook's own path, even while the webhook delivers the same event."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from credits.checkout import CheckoutUrls, Customers, session_metadata, start_checkout
from credits.cli import main as credits_cli
from credits.errors import CreditsError
from credits.ledger import Ledger
from credits.packages import Catalog
from credits.payments import Outcome
from credits.reconcile import apply, find_missing
from credits.stripe_gateway import StripeGateway
from local.gateway import Gateway
from local.stripe_emulator import StripeEmulator
from local.template import ROOT
from tests import stripe_events as se
from tests.integration.conftest import LocalTables
from tests.support import environment

API_KEY = "sk_test_reconcile"


@dataclass
class Stack:
    stripe: StripeEmulator
    gateway: Gateway
    ledger: Ledger
    tables: LocalTables

    def buy(self, user: str, package: str = "starter") -> str:
        """A checkout session of `user` for `package`, started as POST /credits/checkout starts it."""
        client: Any = self.tables.client
        started = start_checkout(
            Catalog(client, self.tables.credits),
            Customers(client, self.tables.credits),
            StripeGateway.connect(API_KEY, self.stripe.base_url),
            CheckoutUrls("http://localhost/ok?session_id={CHECKOUT_SESSION_ID}", "http://localhost/no"),
            user,
            package,
        )
        return str(started["sessionId"])


def reconcile(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = credits_cli(["reconcile", *args])
    return code, capsys.readouterr().out


@pytest.fixture
def stack(local_tables: LocalTables) -> Iterator[Stack]:
    stripe = StripeEmulator(api_key=API_KEY, webhook_secret=se.SECRET)
    stripe.start()
    with environment(STRIPE_SECRET_KEY=API_KEY, STRIPE_API_BASE=stripe.base_url, STRIPE_WEBHOOK_SECRET=se.SECRET):
        assert credits_cli(["packages", "import", str(ROOT / "local/packages.example.json"), "--sync-stripe"]) == 0
        gateway = Gateway(token_secret="test-secret", web_dir=None)
        gateway.start(warm=False)
        stripe.webhook_url = gateway.base_url + "/webhook"
        try:
            yield Stack(stripe, gateway, local_tables.ledger(), local_tables)
        finally:
            gateway.stop()
            stripe.stop()


def test_a_purchase_whose_webhook_never_came_is_found_and_credited_once(stack: Stack, capsys) -> None:
    session = stack.buy("alice")
    stack.stripe.drop_deliveries = True
    stack.stripe.pay(session)
    assert stack.stripe.deliveries[-1][1] == 0  # never delivered
    assert stack.ledger.balance("alice") == 0

    code, out = reconcile(capsys, "--since", "1h")
    assert code == 1  # a dry run that finds something missing
    assert f"purchase  alice                session {session}: starter paid, not credited" in out
    assert stack.ledger.balance("alice") == 0  # a dry run writes nothing

    code, out = reconcile(capsys, "--since", "1h", "--apply")
    assert code == 0
    assert f"applied purchase {session}: granted (100 credits)" in out
    assert stack.ledger.balance("alice") == 100

    code, out = reconcile(capsys, "--since", "1h", "--apply")
    assert code == 0 and nothing_missing(stack, out)
    # The endpoint comes back and Stripe delivers the event after all: credited once, still.
    stack.stripe.drop_deliveries = False
    event = next(e for e in stack.stripe.events if e["type"] == "checkout.session.completed")
    assert stack.stripe.deliver(event) == 200
    assert stack.ledger.balance("alice") == 100
    assert [t.type for t in stack.ledger.history("alice")] == ["purchase"]
    assert credits_cli(["audit", "alice"]) == 0


def nothing_missing(stack: Stack, out: str) -> bool:
    """Whether a run printed that it found nothing (since the start of its period, a time)."""
    return (
        re.fullmatch(rf"nothing missing since [0-9-]+ [0-9:]+ UTC \(table {stack.tables.credits}\)\n", out) is not None
    )


def test_missed_refunds_and_disputes_are_applied_as_their_events_would_have(stack: Stack, capsys) -> None:
    session = stack.buy("bob")
    stack.stripe.pay(session)  # delivered: 100 credits
    assert stack.ledger.balance("bob") == 100
    stack.stripe.drop_deliveries = True
    stack.stripe.refund(session, 250)  # half the money back: 50 credits taken back
    stack.stripe.dispute(session)  # the rest disputed: held

    code, out = reconcile(capsys, "--since", "1h")
    assert code == 1
    lines = [line.split()[0] for line in out.splitlines()[1:-1]]
    assert lines == ["refund", "dispute"]

    assert reconcile(capsys, "--since", "1h", "--apply")[0] == 0
    assert stack.ledger.balance("bob") == 0
    assert [(t.type, t.amount) for t in stack.ledger.history("bob")] == [
        ("purchase", 100),
        ("refund", -50),
        ("dispute", -50),
    ]

    stack.stripe.close_dispute(session, "won")  # also missed: the held credits come back
    code, out = reconcile(capsys, "--since", "1h")
    assert code == 1 and "(won): the ledger knows needs_response" in out
    assert reconcile(capsys, "--since", "1h", "--apply")[0] == 0
    assert stack.ledger.balance("bob") == 50
    assert reconcile(capsys, "--since", "1h")[0] == 0
    assert credits_cli(["audit", "bob"]) == 0


def test_a_purchase_outside_the_period_or_not_paid_is_not_reported(stack: Stack, capsys) -> None:
    unpaid = stack.buy("carol")
    later = stack.buy("carol")
    stack.stripe.drop_deliveries = True
    stack.stripe.pay_later(later)  # completed, but the money is not there yet: nothing is owed
    code, out = reconcile(capsys, "--since", "1h")
    assert code == 0 and nothing_missing(stack, out)
    assert unpaid and stack.ledger.balance("carol") == 0
    stack.stripe.async_succeed(later)  # now it is paid, and its event was dropped too
    code, out = reconcile(capsys, "--since", "1h", "--apply")
    assert code == 0 and f"applied purchase {later}: granted (100 credits)" in out
    assert stack.ledger.balance("carol") == 100


def test_reconcile_and_the_webhook_racing_on_one_purchase_credit_it_once(stack: Stack) -> None:
    """The CLI in its own process applies what it found missing while Stripe's late deliveries reach
    the webhook's container for the same purchases (newest first, against the CLI's oldest first)."""
    sessions = [stack.buy("dave") for _ in range(10)]
    stack.stripe.drop_deliveries = True
    for session in sessions:
        stack.stripe.pay(session)
    stack.stripe.drop_deliveries = False
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'shared'}:{ROOT}"}
    cli = subprocess.Popen(
        [sys.executable, "-m", "credits", "reconcile", "--since", "1h", "--apply"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert cli.stdout is not None
    first = cli.stdout.readline()  # printed once it has found them, before it applies any
    assert first.startswith("10 missing since"), first
    late = [e for e in stack.stripe.events if e["type"] == "checkout.session.completed"]
    for event in reversed(late):
        assert stack.stripe.deliver(event) == 200
    out, _ = cli.communicate(timeout=60)
    assert cli.returncode == 0, out
    outcomes = [line.split(": ")[-1] for line in out.splitlines() if line.startswith("  applied")]
    assert len(outcomes) == 10 and set(outcomes) <= {"granted (100 credits)", "duplicate"}
    assert stack.ledger.balance("dave") == 1000
    assert [t.type for t in stack.ledger.history("dave")] == ["purchase"] * 10
    assert credits_cli(["audit", "dave"]) == 0


def test_every_page_of_stripe_s_lists_is_read(stack: Stack) -> None:
    """More sessions than one page (100) holds: all are seen, newest first, within the period."""
    made = [stack.buy(f"user-{i}") for i in range(105)]
    stripe = StripeGateway.connect(API_KEY, stack.stripe.base_url)
    seen = [s["id"] for s in stripe.sessions_since(int(time.time()) - 3600)]
    assert seen == made[::-1]
    assert list(stripe.sessions_since(int(time.time()) + 60)) == []


def test_late_changes_to_objects_made_before_the_period_are_found_by_their_events(stack: Stack) -> None:
    """A bank debit that clears, and a dispute that closes, after the period began for objects made
    before it: the lists by creation time do not hold them; their events do."""
    payments = stack.tables.payments()
    stripe = StripeGateway.connect(API_KEY, stack.stripe.base_url)
    slow, disputed = stack.buy("erin"), stack.buy("erin")
    stack.stripe.pay_later(slow)  # delivered: waiting for the money
    stack.stripe.pay(disputed)  # delivered: 100 credits
    stack.stripe.dispute(disputed)  # delivered: held
    assert stack.ledger.balance("erin") == 0
    time.sleep(1.1)
    period_start = int(time.time())  # everything above was made before the period
    stack.stripe.drop_deliveries = True
    stack.stripe.async_succeed(slow)
    stack.stripe.close_dispute(disputed, "won")

    missing = find_missing(payments, stripe, period_start)
    assert [(m.kind, m.stripe_id) for m in missing] == [("purchase", slow), ("dispute", missing[1].stripe_id)]
    assert "(won): the ledger knows needs_response" in missing[1].detail
    outcomes = [outcome for _, outcome in apply(payments, missing)]
    assert [o.kind for o in outcomes if isinstance(o, Outcome)] == ["granted", "restored"]
    assert stack.ledger.balance("erin") == 200
    assert find_missing(payments, stripe, period_start) == []


def test_one_item_that_cannot_be_applied_does_not_hold_back_the_others(stack: Stack) -> None:
    """A missing purchase whose payment is on record for another user is refused (as the webhook
    refuses it), and the purchase after it is still applied."""
    payments = stack.tables.payments()
    stripe = StripeGateway.connect(API_KEY, stack.stripe.base_url)
    first, second = stack.buy("frank"), stack.buy("frank")
    stack.stripe.drop_deliveries = True
    stack.stripe.pay(first)
    stack.stripe.pay(second)
    missing = find_missing(payments, stripe, int(time.time()) - 60)
    assert {m.stripe_id for m in missing} == {first, second}
    broken = next(m for m in missing if m.stripe_id == first)
    stack.tables.client.update_item(  # type: ignore[attr-defined]
        TableName=stack.tables.credits,
        Key={"pk": {"S": f"PAYMENT#{broken.payment_id}"}, "sk": {"S": "PAYMENT"}},
        UpdateExpression="SET granted = :t, user_id = :u",
        ExpressionAttributeValues={":t": {"BOOL": True}, ":u": {"S": "someone-else"}},
    )
    results = {m.stripe_id: outcome for m, outcome in apply(payments, missing)}
    assert isinstance(results[first], CreditsError)
    applied = results[second]
    assert isinstance(applied, Outcome) and applied.kind == "granted"
    assert stack.ledger.balance("frank") == 100


def test_a_missed_purchase_of_an_expiring_package_is_credited_on_the_terms_of_its_session(stack: Stack, capsys) -> None:
    """`team` expires 365 days after purchase (local/packages.example.json); its session fixed that at
    checkout. Applied by reconcile days later, the purchase still gets the session's terms, counted
    from when it is credited; then a missed refund is applied, and the audits stay clean."""
    client: Any = stack.tables.client
    team = Catalog(client, stack.tables.credits).active("team")
    metadata = session_metadata("grace", team)
    session = StripeGateway.connect(API_KEY, stack.stripe.base_url).client.v1.checkout.sessions.create(
        params={
            "mode": "payment",
            "client_reference_id": "grace",
            "line_items": [{"price": str(team.stripe_price_id), "quantity": 1}],
            "metadata": metadata,
            "payment_intent_data": {"metadata": metadata},
            "success_url": "http://localhost/ok",
            "cancel_url": "http://localhost/no",
        }
    )
    Catalog(client, stack.tables.credits).put(team.model_copy(update={"expires_in_days": 7}))  # changed since
    stack.stripe.drop_deliveries = True
    stack.stripe.pay(session.id)
    stack.stripe.refund(session.id, 9000)  # half the money: 2,500 credits

    before = int(time.time() * 1000)
    code, out = reconcile(capsys, "--since", "1h", "--apply")
    assert code == 0 and f"applied purchase {session.id}: granted (5,000 credits)" in out
    [lot] = stack.ledger.account("grace").lots
    assert (lot.remaining, lot.label) == (2500, "Team")
    assert before + 365 * 86_400_000 <= (lot.expires_at_ms or 0) <= int(time.time() * 1000) + 365 * 86_400_000
    assert [(t.type, t.amount) for t in stack.ledger.history("grace")] == [("purchase", 5000), ("refund", -2500)]
    assert reconcile(capsys, "--since", "1h")[0] == 0
    assert credits_cli(["audit", "grace"]) == 0
