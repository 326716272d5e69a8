"""Charging a saved card with the customer away (`StripeGateway.charge_saved_card`, for auto top-up)
against the Stripe emulator: a card saved through a setup-mode Checkout is charged once per
idempotency key whatever happens to the answer, and every decline (Stripe's test cards: declined,
insufficient funds, authentication required) is an answer with its code, not an error."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import stripe

from credits.errors import PaymentProviderError
from credits.stripe_gateway import StripeGateway
from local.stripe_emulator import StripeEmulator

KEY = "sk_test_off_session_unit"


@pytest.fixture
def emulator() -> Iterator[StripeEmulator]:
    emu = StripeEmulator(api_key=KEY, webhook_secret="whsec_off_session")  # no webhook URL
    emu.start()
    yield emu
    emu.stop()


def saved_card(emulator: StripeEmulator, test_card: str) -> tuple[str, str]:
    """A customer and the card they saved through a setup-mode Checkout Session (`test_card`)."""
    client = stripe.StripeClient(KEY, base_addresses={"api": emulator.base_url}, max_network_retries=0)
    customer = client.v1.customers.create(params={"metadata": {"userId": "ann"}})
    params: Any = {
        "mode": "setup",
        "customer": customer.id,
        "currency": "usd",
        "success_url": "http://localhost/ok",
        "cancel_url": "http://localhost/",
    }
    session = client.v1.checkout.sessions.create(params=params)
    emulator.pay(session.id, test_card)
    [card] = client.v1.customers.payment_methods.list(customer.id).data
    return customer.id, card.id


def charge(gateway: StripeGateway, customer: str, card: str, key: str, amount: int = 500) -> Any:
    return gateway.charge_saved_card(
        customer_id=customer,
        payment_method_id=card,
        amount=amount,
        currency="usd",
        idempotency_key=key,
        metadata={"topupId": "topup:ann:1"},
        description="Auto top-up: Starter",
    )


def test_a_saved_card_is_charged_once_per_key(emulator: StripeEmulator) -> None:
    customer, card = saved_card(emulator, "pm_card_visa")
    gateway = StripeGateway.connect(KEY, emulator.base_url)
    first = charge(gateway, customer, card, "topup-k-1")
    assert first.status == "succeeded" and first.payment_intent_id and first.failure_code is None
    assert charge(gateway, customer, card, "topup-k-1") == first  # the answer was lost: asked again
    intents = [e for e in emulator.events if e["type"] == "payment_intent.succeeded"]
    assert [e["data"]["object"]["id"] for e in intents] == [first.payment_intent_id]  # charged once
    with pytest.raises(PaymentProviderError):  # the same key for another amount: Stripe refuses it
        charge(gateway, customer, card, "topup-k-1", amount=900)


@pytest.mark.parametrize(
    ("test_card", "code"),
    [
        ("pm_card_chargeCustomerFail", "generic_decline"),  # the decline code, when there is one
        ("pm_card_authenticationRequired", "authentication_required"),
    ],
)
def test_a_decline_is_an_answer_with_its_code_and_is_replayed(
    emulator: StripeEmulator, test_card: str, code: str
) -> None:
    customer, card = saved_card(emulator, test_card)
    gateway = StripeGateway.connect(KEY, emulator.base_url)
    failed = charge(gateway, customer, card, "topup-k-2")
    assert failed.status == "failed" and failed.failure_code == code and failed.message
    assert charge(gateway, customer, card, "topup-k-2") == failed
    assert len([e for e in emulator.events if e["type"] == "payment_intent.payment_failed"]) == 1


def test_the_next_payment_can_be_made_to_fail_for_insufficient_funds(emulator: StripeEmulator) -> None:
    customer, card = saved_card(emulator, "pm_card_visa")
    request = urllib.request.Request(
        f"{emulator.base_url}/_emulator/next_off_session_payment",
        data=json.dumps({"outcome": "insufficient_funds"}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200
    gateway = StripeGateway.connect(KEY, emulator.base_url)
    assert charge(gateway, customer, card, "topup-k-3").failure_code == "insufficient_funds"
    assert charge(gateway, customer, card, "topup-k-4").status == "succeeded"  # only the next one
