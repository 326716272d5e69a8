"""POST /credits/checkout (functions/checkout) on moto and the Stripe emulator, for every user id the
ledger accepts (1 to 255 bytes of printable UTF-8): what we send Stripe stays within Stripe's limits
(an ASCII Idempotency-Key of at most 255 characters, metadata, client_reference_id), and the paid
session credits that user, through the webhook and through reconcile."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from credits.ledger import Ledger
from credits.packages import Catalog
from credits.payments import Payments
from credits.reconcile import find_missing
from credits.stripe_gateway import StripeGateway
from local.stripe_emulator import StripeEmulator
from tests import stripe_events as se
from tests.support import FakeContext, environment, http_event, invoke, load_function

KEY = "sk_test_checkout_unit"
SUBS = {
    "latin-1": "jos\u00e9",
    "not-latin-1": "\u30e6\u30fc\u30b6\u30fc",  # ユーザー: no Latin-1 header can carry it
    "255-ascii": "u" * 255,  # 255 characters: customer-<sub> would be 264, client_reference_id over 200
    "255-bytes-of-3": "\u30e6" * 85,
    "252-bytes-of-4": "\U0001d4b0" * 63,
}


@pytest.fixture
def emulator(moto_dynamodb: Any) -> Iterator[StripeEmulator]:
    emu = StripeEmulator(api_key=KEY, webhook_secret=se.SECRET)  # no webhook URL: the test delivers
    emu.start()
    yield emu
    emu.stop()


@pytest.fixture
def checkout(webhook: ModuleType, emulator: StripeEmulator) -> ModuleType:
    """The checkout function; the `webhook` fixture put the `starter` package in the catalog."""
    with environment(
        STRIPE_SECRET_KEY=KEY,
        STRIPE_API_BASE=emulator.base_url,
        CHECKOUT_SUCCESS_URL="http://localhost/?session_id={CHECKOUT_SESSION_ID}",
        CHECKOUT_CANCEL_URL="http://localhost/",
    ):
        return load_function("checkout")


def buy(checkout: ModuleType, sub: str) -> tuple[int, dict[str, Any]]:
    status, body, _ = invoke(checkout, http_event("POST", "/credits/checkout", sub=sub, body={"packageId": "starter"}))
    return status, body


@pytest.mark.parametrize("sub", SUBS.values(), ids=SUBS.keys())
def test_any_user_id_can_buy_and_is_credited(
    checkout: ModuleType, webhook: ModuleType, emulator: StripeEmulator, ledger: Ledger, sub: str
) -> None:
    status, body = buy(checkout, sub)
    assert status == 201, body

    session = emulator._objects[body["sessionId"]]
    customer = emulator._objects[session["customer"]]
    assert customer["metadata"] == {"userId": sub}  # the user id itself is kept, in metadata
    assert session["metadata"]["userId"] == sub
    assert emulator._checkouts[session["id"]].pi_metadata["userId"] == sub
    assert session["client_reference_id"] == (sub if len(sub) <= 200 else None)
    # The customer's key is derived from the user id: ASCII, 73 characters, whatever the id. (The
    # other keys are stripe-python's own, a UUID on each POST it may retry.)
    assert "customer-" + hashlib.sha256(sub.encode()).hexdigest() in emulator._idempotency
    assert all(key.isascii() and len(key) <= 255 for key in emulator._idempotency)

    [completed] = emulator.pay(body["sessionId"])
    response = webhook.lambda_handler(se.signed(completed), FakeContext())
    answer = json.loads(response["body"])
    assert (response["statusCode"], answer["outcome"], answer["credits"]) == (200, "granted", 100)
    assert ledger.balance(sub) == 100

    status, again = buy(checkout, sub)  # the customer is the user's one customer, reused
    assert status == 201 and emulator._objects[again["sessionId"]]["customer"] == session["customer"]


@pytest.mark.parametrize("sub", SUBS.values(), ids=SUBS.keys())
def test_the_customer_key_makes_concurrent_first_checkouts_one_customer(emulator: StripeEmulator, sub: str) -> None:
    gateway = StripeGateway.connect(KEY, emulator.base_url)
    assert gateway.create_customer(sub) == gateway.create_customer(sub)
    assert gateway.create_customer(sub + "x") != gateway.create_customer(sub)


def test_a_purchase_whose_webhook_never_came_is_found_for_a_long_user_id(
    checkout: ModuleType, emulator: StripeEmulator, moto_dynamodb: Any, ledger: Ledger
) -> None:
    """Without a client_reference_id (over Stripe's 200 characters), reconcile finds the user in metadata."""
    sub = SUBS["255-ascii"]
    since = int(time.time()) - 60
    status, body = buy(checkout, sub)
    assert status == 201
    emulator.pay(body["sessionId"])

    payments = Payments(ledger, Catalog(moto_dynamodb, "credits"), moto_dynamodb, "credits")
    [missing] = find_missing(payments, StripeGateway.connect(KEY, emulator.base_url), since)
    assert (missing.kind, missing.user_id) == ("purchase", sub)
