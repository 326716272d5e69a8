"""functions/reconcile (the daily schedule) on moto and the Stripe emulator: a paid purchase whose
webhook never came is counted (the alarm's metric) and, with RECONCILE_APPLY=true, credited once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from credits.checkout import CheckoutUrls, Customers, start_checkout
from credits.ledger import Ledger
from credits.packages import Catalog, Package
from credits.stripe_gateway import StripeGateway
from local.stripe_emulator import StripeEmulator
from tests.support import FakeContext, environment, load_function

KEY = "sk_test_reconcile_fn"


@pytest.fixture
def stripe(moto_dynamodb: Any) -> Iterator[StripeEmulator]:
    emulator = StripeEmulator(api_key=KEY, webhook_secret="whsec_x")  # no webhook URL: nothing is delivered
    emulator.start()
    with environment(STRIPE_SECRET_KEY=KEY, STRIPE_API_BASE=emulator.base_url, POWERTOOLS_METRICS_DISABLED="false"):
        yield emulator
    emulator.stop()


def paid_session(client: Any, emulator: StripeEmulator, user: str) -> str:
    gateway = StripeGateway.connect(KEY, emulator.base_url)
    catalog = Catalog(client, "credits")
    catalog.put(gateway.sync_package(Package(id="starter", name="Starter", credits=100, price=500, currency="usd")))
    urls = CheckoutUrls("http://localhost/?session_id={CHECKOUT_SESSION_ID}", "http://localhost/")
    session = str(start_checkout(catalog, Customers(client, "credits"), gateway, urls, user, "starter")["sessionId"])
    emulator.pay(session)
    return session


def metric(output: str, name: str) -> list[float]:
    """The values of one metric in the function's EMF output."""
    found = [json.loads(line) for line in output.splitlines() if line.startswith('{"_aws"')]
    return [value for blob in found if name in blob for value in blob[name]]


def test_a_missed_purchase_is_counted_then_applied_when_told_to(moto_dynamodb, stripe, capsys) -> None:
    paid_session(moto_dynamodb, stripe, "alice")
    assert stripe.deliveries == [(stripe.events[-1]["id"], 0)]  # the webhook never heard of it

    reporting = load_function("reconcile")
    answer = reporting.lambda_handler({"source": "aws.scheduler"}, FakeContext())
    assert (answer["missing"], answer["applied"]) == (1, 0)
    assert metric(capsys.readouterr().out, "PaymentsMissing") == [1.0]
    ledger = Ledger(moto_dynamodb, "credits")
    assert ledger.balance("alice") == 0

    with environment(RECONCILE_APPLY="true"):
        applying = load_function("reconcile")
    answer = applying.lambda_handler({"source": "aws.scheduler"}, FakeContext())
    assert (answer["missing"], answer["applied"]) == (1, 1)
    assert ledger.balance("alice") == 100
    again = applying.lambda_handler({"source": "aws.scheduler"}, FakeContext())
    assert (again["missing"], again["applied"]) == (0, 0)
    assert metric(capsys.readouterr().out, "PaymentsMissing") == [1.0, 0.0]
    assert ledger.balance("alice") == 100 and ledger.audit("alice").ok


def test_a_window_beyond_stripe_s_30_days_fails_the_cold_start(moto_dynamodb, stripe) -> None:
    with environment(RECONCILE_WINDOW="31d"), pytest.raises(Exception, match="30d"):
        load_function("reconcile")
