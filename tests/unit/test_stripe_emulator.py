"""The local Stripe emulator, driven by the real stripe-python client and a real webhook receiver."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import pytest
import stripe

from local.stripe_emulator import (
    API_VERSION,
    SESSION_PARAMS,
    EmulatorError,
    StripeEmulator,
    format_amount,
    parse_form,
    validate,
)

API_KEY = "sk_test_emulator_unit"
META = {"userId": "user-1", "packageId": "pack"}
SECRET = "whsec_emulator_unit"
ROOT = Path(__file__).resolve().parents[2]


class Receiver:
    """A webhook endpoint that records every delivery and answers with a chosen status."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers.items()), body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhook"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def events(self) -> list[stripe.Event]:
        """Every delivery, verified as the webhook function verifies it."""
        return [
            stripe.Webhook.construct_event(body, headers["Stripe-Signature"], SECRET, tolerance=300)
            for headers, body in self.requests
        ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.close()


@pytest.fixture
def emulator(receiver: Receiver) -> Iterator[StripeEmulator]:
    emu = StripeEmulator(api_key=API_KEY, webhook_secret=SECRET, webhook_url=receiver.url)
    emu.start()
    yield emu
    emu.stop()


@pytest.fixture
def client(emulator: StripeEmulator) -> stripe.StripeClient:
    return stripe.StripeClient(API_KEY, base_addresses={"api": emulator.base_url}, max_network_retries=0)


def create_session(client: stripe.StripeClient, params: dict[str, Any]) -> stripe.checkout.Session:
    """POST /v1/checkout/sessions with loosely typed parameters (some tests send invalid ones)."""
    return client.v1.checkout.sessions.create(params=cast(Any, params))


def make_session(
    client: stripe.StripeClient, amount: int = 1000, currency: str = "usd", **extra: Any
) -> stripe.checkout.Session:
    """A session for a freshly created package price, with the metadata the credits system sets."""
    product = client.v1.products.create(params={"name": "Credits pack", "metadata": {"packageId": "pack"}})
    price = client.v1.prices.create(params={"product": product.id, "unit_amount": amount, "currency": currency})
    return create_session(
        client,
        {
            "mode": "payment",
            "line_items": [{"price": price.id, "quantity": 1}],
            "success_url": "http://localhost:3000/done?session={CHECKOUT_SESSION_ID}",
            "cancel_url": "http://localhost:3000/cancelled",
            "client_reference_id": "user-1",
            "metadata": META,
            "payment_intent_data": {"metadata": META},
            **extra,
        },
    )


def metadata(obj: Any) -> dict[str, str]:
    """An object's metadata as a plain dict."""
    return obj.metadata.to_dict() if obj.metadata else {}


def send(
    method: str,
    url: str,
    data: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request without following redirects."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    payload = body if body is not None else (urllib.parse.urlencode(data).encode() if data else None)
    all_headers = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    conn.request(method, path, body=payload, headers=all_headers)
    response = conn.getresponse()
    result = response.status, dict(response.getheaders()), response.read()
    conn.close()
    return result


# ---- pure helpers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "currency", "shown"),
    [
        (500, "usd", "$5.00"),
        (500, "jpy", "¥500"),
        (123456, "eur", "€1,234.56"),
        (500, "krw", "₩500"),
        (7, "chf", "CHF 0.07"),
    ],
)
def test_format_amount(amount: int, currency: str, shown: str) -> None:
    assert format_amount(amount, currency) == shown


def test_parse_form_nests_brackets_and_validate_builds_lists() -> None:
    pairs = [
        ("line_items[0][price_data][product_data][name]", "Pack"),
        ("line_items[0][price_data][currency]", "usd"),
        ("line_items[0][price_data][unit_amount]", "500"),
        ("expand[]", "a"),
        ("expand[]", "b"),
        ("metadata[userId]", "u1"),
        ("mode", "payment"),
        ("success_url", "http://x"),
    ]
    params = validate(parse_form(pairs), SESSION_PARAMS)

    assert params["line_items"] == [
        {"price_data": {"currency": "usd", "unit_amount": 500, "product_data": {"name": "Pack"}}}
    ]
    assert params["expand"] == ["a", "b"]
    assert params["metadata"] == {"userId": "u1"}


def test_sign_is_what_stripe_verifies(emulator: StripeEmulator) -> None:
    payload = b'{"id": "evt_1", "object": "event"}'
    now = int(time.time())
    header = emulator.sign(payload, now)

    assert header.startswith(f"t={now},v1=")
    assert stripe.WebhookSignature.verify_header(payload.decode(), header, SECRET, tolerance=300)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header('{"id": "evt_2"}', header, SECRET, tolerance=300)
    stale = emulator.sign(payload, now - 3600)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(payload.decode(), stale, SECRET, 300)


# ---- the REST API, through stripe-python -------------------------------------------------------------


def test_api_version_matches_the_client_library() -> None:
    assert stripe.api_version == API_VERSION


def test_customer_product_price_search_and_list(client: stripe.StripeClient) -> None:
    customer = client.v1.customers.create(
        params={"email": "ada@example.com", "name": "Ada", "metadata": {"userId": "user-1"}}
    )
    product = client.v1.products.create(
        params={"name": "100 credits", "description": "Starter", "metadata": {"packageId": "p100"}}
    )
    client.v1.products.create(params={"name": "500 credits", "metadata": {"packageId": "p500"}})
    price = client.v1.prices.create(
        params={
            "product": product.id,
            "unit_amount": 500,
            "currency": "usd",
            "lookup_key": "p100",
            "metadata": {"packageId": "p100"},
        }
    )

    assert customer.id.startswith("cus_") and customer.email == "ada@example.com"
    assert metadata(client.v1.customers.retrieve(customer.id)) == {"userId": "user-1"}
    assert client.v1.products.retrieve(product.id).name == "100 credits"
    found = client.v1.products.search(params={"query": "metadata['packageId']:'p100'"})
    assert found.to_dict()["object"] == "search_result" and [p.id for p in found.data] == [product.id]
    listed = client.v1.prices.list(params={"lookup_keys": ["p100"], "active": True})
    assert listed.to_dict()["object"] == "list" and [p.id for p in listed.data] == [price.id]
    assert listed.data[0].unit_amount == 500 and listed.data[0].type == "one_time"
    assert client.v1.prices.list(params={"lookup_keys": ["nope"]}).data == []
    assert client.v1.prices.retrieve(price.id).product == product.id


def test_lookup_key_is_unique_unless_transferred(client: stripe.StripeClient) -> None:
    product = client.v1.products.create(params={"name": "Pack"})
    first = client.v1.prices.create(
        params={"product": product.id, "unit_amount": 500, "currency": "usd", "lookup_key": "pack"}
    )
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.prices.create(
            params={"product": product.id, "unit_amount": 600, "currency": "usd", "lookup_key": "pack"}
        )
    assert info.value.param == "lookup_key"

    second = client.v1.prices.create(
        params={
            "product": product.id,
            "unit_amount": 600,
            "currency": "usd",
            "lookup_key": "pack",
            "transfer_lookup_key": True,
        }
    )

    assert [p.id for p in client.v1.prices.list(params={"lookup_keys": ["pack"]}).data] == [second.id]
    assert client.v1.prices.retrieve(first.id).lookup_key is None


def test_session_with_price(client: stripe.StripeClient, emulator: StripeEmulator) -> None:
    customer = client.v1.customers.create(params={"email": "ada@example.com"})

    session = make_session(client, customer=customer.id)

    assert session.id.startswith("cs_test_") and session.object == "checkout.session"
    assert (session.status, session.payment_status, session.mode) == ("open", "unpaid", "payment")
    assert (session.amount_subtotal, session.amount_total, session.currency) == (1000, 1000, "usd")
    assert session.customer == customer.id and session.client_reference_id == "user-1"
    assert metadata(session) == META
    assert session.payment_intent is None and session.livemode is False
    assert session.url == f"{emulator.base_url}/checkout/{session.id}"
    assert session.expires_at - session.created == 24 * 3600
    again = client.v1.checkout.sessions.retrieve(session.id)
    assert again.id == session.id and again.status == "open"


def test_session_with_price_data(client: stripe.StripeClient) -> None:
    session = create_session(
        client,
        {
            "mode": "payment",
            "line_items": [
                {
                    "price_data": {
                        "currency": "jpy",
                        "unit_amount": 500,
                        "product_data": {"name": "500 credits"},
                    }
                }
            ],
            "success_url": "http://localhost/ok",
            "payment_method_types": ["card"],
        },
    )

    assert (session.amount_total, session.currency, session.payment_method_types) == (500, "jpy", ["card"])
    hidden = client.v1.products.search(params={"query": "metadata['x']:'y'"})  # inline products are hidden
    assert hidden.data == []


def test_idempotency_key_replays_and_guards_parameters(client: stripe.StripeClient) -> None:
    first = client.v1.customers.create(params={"email": "a@example.com"}, options={"idempotency_key": "k1"})
    replay = client.v1.customers.create(params={"email": "a@example.com"}, options={"idempotency_key": "k1"})

    assert replay.id == first.id
    assert replay.last_response is not None and replay.last_response.headers["Idempotent-Replayed"] == "true"
    with pytest.raises(stripe.IdempotencyError):
        client.v1.customers.create(params={"email": "b@example.com"}, options={"idempotency_key": "k1"})
    other = client.v1.customers.create(params={"email": "a@example.com"}, options={"idempotency_key": "k2"})
    assert other.id != first.id


# ---- Stripe's limits on what we send it, answered as Stripe answers them ------------------------------


def post_customer(emulator: StripeEmulator, data: dict[str, str], headers: dict[str, str] | None = None) -> Any:
    """POST /v1/customers by hand: (status, the JSON body)."""
    auth = {"Authorization": f"Bearer {API_KEY}", **(headers or {})}
    status, _, body = send("POST", f"{emulator.base_url}/v1/customers", data, auth)
    return status, json.loads(body)


def test_an_idempotency_key_of_1_to_255_characters_is_accepted(client: stripe.StripeClient) -> None:
    longest = "k" * 255
    first = client.v1.customers.create(params={"email": "a@example.com"}, options={"idempotency_key": longest})
    again = client.v1.customers.create(params={"email": "a@example.com"}, options={"idempotency_key": longest})
    assert again.id == first.id


@pytest.mark.parametrize("length", [256, 1000])
def test_an_idempotency_key_over_255_characters_is_refused_as_stripe_does(
    client: stripe.StripeClient, emulator: StripeEmulator, length: int
) -> None:
    with pytest.raises(stripe.IdempotencyError) as info:
        client.v1.customers.create(params={"email": "a@example.com"}, options={"idempotency_key": "k" * length})
    assert info.value.http_status == 400

    status, body = post_customer(emulator, {"email": "a@example.com"}, {"Idempotency-Key": "k" * length})
    assert status == 400
    assert body["error"]["type"] == "idempotency_error"
    assert body["error"]["message"] == (
        f"Idempotent key length is {length} characters long, which is outside accepted lengths. Idempotent "
        "Keys must be 1-255 characters long. If you're looking for a decent generator, try using a UUID "
        "defined by IETF RFC 4122."
    )
    assert emulator._all("customer") == []  # nothing was created


def test_an_empty_idempotency_key_is_refused_too(emulator: StripeEmulator) -> None:
    status, body = post_customer(emulator, {"email": "a@example.com"}, {"Idempotency-Key": ""})
    assert (status, body["error"]["type"]) == (400, "idempotency_error")
    assert body["error"]["message"].startswith("Idempotent key length is 0 characters long")


def test_metadata_at_stripe_s_limits_is_accepted(client: stripe.StripeClient) -> None:
    """50 keys, a key of 40 characters, a value of 500 characters (characters, not bytes)."""
    fifty = {f"key{i}": str(i) for i in range(48)} | {"k" * 40: "v", "long": "\u30e6" * 500}
    customer = client.v1.customers.create(params={"metadata": fifty})
    assert metadata(customer) == fifty


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        (
            {f"key{i}": "v" for i in range(51)},
            "Metadata can have up to 50 keys, but you've set 51. Email us at support+metadata@stripe.com "
            "for more information.",
        ),
        (
            {"k" * 41: "v"},
            f"Metadata keys can have up to 40 characters, but you passed in a key that is 41 characters. "
            f"Invalid key: {'k' * 41}",
        ),
        (
            {"userId": "v" * 501},
            f"Metadata values can have up to 500 characters, but you passed in a value that is 501 "
            f"characters. Invalid value: {'v' * 501}",
        ),
        (
            {"userId": "\u30e6" * 501},
            f"Metadata values can have up to 500 characters, but you passed in a value that is 501 "
            f"characters. Invalid value: {chr(0x30E6) * 501}",
        ),
    ],
    ids=["51-keys", "41-character-key", "501-character-value", "501-characters-not-ascii"],
)
def test_metadata_over_stripe_s_limits_is_refused_as_stripe_does(
    client: stripe.StripeClient, emulator: StripeEmulator, meta: dict[str, str], message: str
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.customers.create(params={"metadata": meta})
    assert (info.value.http_status, info.value.param) == (400, "metadata")
    assert info.value.error is not None and info.value.error.type == "invalid_request_error"
    assert info.value.error.message == message

    base = {"mode": "payment", "line_items": [{"price": "price_missing"}], "success_url": "http://x"}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"metadata": meta}, "metadata"),
        ({"payment_intent_data": {"metadata": meta}}, "payment_intent_data[metadata]"),
    ]
    for params, param in cases:
        with pytest.raises(stripe.InvalidRequestError) as info:
            create_session(client, {**base, **params})
        assert (info.value.http_status, info.value.param, info.value.user_message) == (400, param, message)
    assert emulator._all("customer") == [] and emulator._all("checkout.session") == []


def test_a_client_reference_id_of_200_characters_is_accepted(client: stripe.StripeClient) -> None:
    session = make_session(client, client_reference_id="\u30e6" * 200)
    assert session.client_reference_id == "\u30e6" * 200


def test_a_client_reference_id_over_200_characters_is_refused_as_stripe_does(
    client: stripe.StripeClient, emulator: StripeEmulator
) -> None:
    reference = "a" * 100 + "b" * 101
    with pytest.raises(stripe.InvalidRequestError) as info:
        make_session(client, client_reference_id=reference)
    assert (info.value.http_status, info.value.param) == (400, "client_reference_id")
    assert info.value.error is not None and info.value.error.type == "invalid_request_error"
    assert info.value.user_message == "Invalid string: aaaaaaaaaa...bbbbbbbbbb; must be at most 200 characters"
    assert emulator._all("checkout.session") == []


@pytest.mark.parametrize(
    ("params", "param", "code"),
    [
        ({"bogus": "1"}, "bogus", "parameter_unknown"),
        (
            {"line_items": [{"price": "price_missing", "bogus": "1"}]},
            "line_items[0][bogus]",
            "parameter_unknown",
        ),
        ({"mode": None}, "mode", "parameter_missing"),
        ({"success_url": None}, "success_url", "parameter_missing"),
        ({"line_items": [{"price": "price_missing"}]}, "line_items[0][price]", "resource_missing"),
        (
            {"line_items": [{"price": "price_missing", "quantity": "x"}]},
            "line_items[0][quantity]",
            "parameter_invalid_integer",
        ),
    ],
)
def test_session_validation(client: stripe.StripeClient, params: dict[str, Any], param: str, code: str) -> None:
    base: dict[str, Any] = {
        "mode": "payment",
        "line_items": [{"price": "price_missing"}],
        "success_url": "http://x",
    }

    with pytest.raises(stripe.InvalidRequestError) as info:
        create_session(client, {**base, **params})

    assert (info.value.param, info.value.code, info.value.http_status) == (param, code, 400)


def test_session_refuses_quantities_and_other_modes(client: stripe.StripeClient) -> None:
    product = client.v1.products.create(params={"name": "Pack"})
    existing = client.v1.prices.create(params={"product": product.id, "unit_amount": 100, "currency": "usd"}).id
    cases: list[tuple[dict[str, Any], str]] = [
        ({"line_items": [{"price": existing, "quantity": 2}]}, "line_items[0][quantity]"),
        ({"mode": "subscription"}, "mode"),
        ({"line_items": [{"price": existing}, {"price": existing}]}, "line_items"),
    ]
    for extra, param in cases:
        with pytest.raises(stripe.InvalidRequestError) as info:
            create_session(
                client,
                {"mode": "payment", "line_items": [{"price": existing}], "success_url": "http://x", **extra},
            )
        assert info.value.param == param


def test_wrong_api_key_is_an_authentication_error(emulator: StripeEmulator) -> None:
    wrong = stripe.StripeClient(
        "sk_test_wrong_key_1234", base_addresses={"api": emulator.base_url}, max_network_retries=0
    )

    with pytest.raises(stripe.AuthenticationError) as info:
        wrong.v1.customers.create(params={"email": "a@example.com"})

    assert info.value.http_status == 401 and "Invalid API Key provided" in str(info.value)
    status, _, body = send("GET", f"{emulator.base_url}/v1/customers/cus_x")
    assert status == 401 and json.loads(body)["error"]["type"] == "invalid_request_error"


def test_unknown_object_and_unknown_path(client: stripe.StripeClient, emulator: StripeEmulator) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.checkout.sessions.retrieve("cs_test_missing")
    assert (info.value.code, info.value.http_status) == ("resource_missing", 404)

    auth = {"Authorization": f"Bearer {API_KEY}"}
    status, headers, body = send("GET", f"{emulator.base_url}/v1/nothing", headers=auth)
    assert status == 404 and headers["Request-Id"].startswith("req_")
    assert json.loads(body)["error"]["message"].startswith("Unrecognized request URL")


def test_an_emulator_bug_is_a_500_and_the_server_keeps_serving(
    client: stripe.StripeClient, emulator: StripeEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(params: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("bug")

    monkeypatch.setattr(emulator, "_create_customer", broken)
    status, headers, body = send(
        "POST",
        f"{emulator.base_url}/v1/customers",
        {"email": "a@example.com"},
        {"Authorization": f"Bearer {API_KEY}"},
    )

    assert status == 500 and json.loads(body)["error"]["type"] == "api_error"
    assert headers["Stripe-Should-Retry"] == "false"
    monkeypatch.undo()
    customer = client.v1.customers.create(params={"email": "a@example.com"})
    assert customer.last_response is not None
    assert str(customer.last_response.request_id).startswith("req_")


# ---- payments and their webhooks ---------------------------------------------------------------------


def test_pay_delivers_signed_completed_event(
    client: stripe.StripeClient, emulator: StripeEmulator, receiver: Receiver
) -> None:
    session = make_session(client)

    events = emulator.pay(session.id)

    assert [e["type"] for e in events] == ["checkout.session.completed"]
    headers, body = receiver.requests[0]
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert headers["User-Agent"] == "Stripe/1.0 (+https://stripe.com/docs/webhooks)"
    assert body == json.dumps(events[0], indent=2).encode()
    [event] = receiver.events()
    assert event.type == "checkout.session.completed" and event.id == events[0]["id"]
    assert event.api_version == stripe.api_version and event.livemode is False
    paid = event.data.object
    assert (paid.status, paid.payment_status) == ("complete", "paid")
    assert paid.payment_intent.startswith("pi_") and paid.url is None
    assert metadata(paid) == META
    assert emulator.deliveries == [(event.id, 200)]
    intent = client.v1.payment_intents.retrieve(paid.payment_intent)
    assert intent.status == "succeeded" and metadata(intent) == META
    charge = client.v1.charges.retrieve(str(intent.latest_charge))
    assert (charge.amount, charge.amount_captured, charge.paid) == (1000, 1000, True)
    assert charge.status == "succeeded" and charge.refunded is False and charge.amount_refunded == 0
    assert metadata(charge) == META and charge.payment_intent == intent.id
    assert client.v1.checkout.sessions.retrieve(session.id).payment_status == "paid"
    listed = client.v1.checkout.sessions.list(params={"payment_intent": intent.id})
    assert [s.id for s in listed.data] == [session.id]
    expanded = client.v1.checkout.sessions.retrieve(session.id, params={"expand": ["payment_intent"]})
    assert cast(stripe.PaymentIntent, expanded.payment_intent).id == intent.id


def test_paying_twice_is_refused(client: stripe.StripeClient, emulator: StripeEmulator) -> None:
    session = make_session(client)
    emulator.pay(session.id)

    with pytest.raises(EmulatorError, match="complete"):
        emulator.pay(session.id)
    with pytest.raises(EmulatorError, match="complete"):
        emulator.pay_later(session.id)
    assert len(emulator.events) == 1


def test_pay_later_then_async_succeed(
    client: stripe.StripeClient, emulator: StripeEmulator, receiver: Receiver
) -> None:
    session = make_session(client)

    emulator.pay_later(session.id)
    intent_id = client.v1.checkout.sessions.retrieve(session.id).payment_intent
    pending = client.v1.payment_intents.retrieve(str(intent_id))
    emulator.async_succeed(session.id)

    completed, succeeded = receiver.events()
    assert completed.type == "checkout.session.completed"
    assert (completed.data.object.status, completed.data.object.payment_status) == ("complete", "unpaid")
    assert pending.status == "processing" and pending.latest_charge is None
    assert succeeded.type == "checkout.session.async_payment_succeeded"
    assert succeeded.data.object.payment_status == "paid"
    assert succeeded.data.object.payment_intent == intent_id
    charge = client.v1.charges.retrieve(str(client.v1.payment_intents.retrieve(str(intent_id)).latest_charge))
    assert charge.payment_method_details is not None
    assert charge.payment_method_details.type == "us_bank_account"
    assert charge.metadata["userId"] == "user-1"
    with pytest.raises(EmulatorError):
        emulator.async_succeed(session.id)


def test_pay_later_then_async_fail(client: stripe.StripeClient, emulator: StripeEmulator, receiver: Receiver) -> None:
    session = make_session(client)
    emulator.pay_later(session.id)

    [event] = emulator.async_fail(session.id)

    assert event["type"] == "checkout.session.async_payment_failed"
    assert event["data"]["object"]["payment_status"] == "unpaid"
    assert [e.type for e in receiver.events()][-1] == "checkout.session.async_payment_failed"
    with pytest.raises(EmulatorError, match="no successful charge"):
        emulator.refund(session.id)
    with pytest.raises(EmulatorError):
        emulator.async_succeed(session.id)


def test_async_events_need_a_pending_payment(client: stripe.StripeClient, emulator: StripeEmulator) -> None:
    session = make_session(client)
    with pytest.raises(EmulatorError, match="pending"):
        emulator.async_succeed(session.id)
    emulator.pay(session.id)
    with pytest.raises(EmulatorError, match="pending"):
        emulator.async_fail(session.id)


def test_refunds_are_cumulative(client: stripe.StripeClient, emulator: StripeEmulator, receiver: Receiver) -> None:
    session = make_session(client, amount=1000)
    with pytest.raises(EmulatorError, match="no successful charge"):
        emulator.refund(session.id, 100)
    emulator.pay(session.id)

    charges = [emulator.refund(session.id, 300)[0]["data"]["object"] for _ in range(2)]
    with pytest.raises(
        EmulatorError, match=r"^Refund amount \(\$4\.01\) is greater than unrefunded amount on charge \(\$4\.00\)\.$"
    ):
        emulator.refund(session.id, 401)
    with pytest.raises(EmulatorError, match=r"^Refund amount \(\$0\.00\) must be positive\.$"):
        emulator.refund(session.id, 0)
    charges.append(emulator.refund(session.id)[0]["data"]["object"])

    assert [c["amount_refunded"] for c in charges] == [300, 600, 1000]
    assert [c["refunded"] for c in charges] == [False, False, True]
    refunds = [[r["amount"] for r in c["refunds"]["data"]] for c in charges]
    assert refunds == [[300], [300, 300], [400, 300, 300]]  # newest first, as Stripe lists them
    assert all(c["metadata"] == META for c in charges)
    assert [e.type for e in receiver.events()] == ["checkout.session.completed"] + ["charge.refunded"] * 3
    with pytest.raises(EmulatorError, match="already been refunded"):
        emulator.refund(session.id)
    refund_id = charges[-1]["refunds"]["data"][0]["id"]
    assert client.v1.refunds.retrieve(refund_id).amount == 400


def test_dispute_then_close(client: stripe.StripeClient, emulator: StripeEmulator, receiver: Receiver) -> None:
    session = make_session(client, amount=1000)
    with pytest.raises(EmulatorError):
        emulator.dispute(session.id)
    emulator.pay(session.id)
    with pytest.raises(EmulatorError, match="no dispute"):
        emulator.close_dispute(session.id, "won")

    [created] = emulator.dispute(session.id)
    with pytest.raises(EmulatorError, match="charged back"):
        emulator.refund(session.id)
    with pytest.raises(EmulatorError, match="Invalid status"):
        emulator.close_dispute(session.id, "maybe")
    [closed] = emulator.close_dispute(session.id, "won")

    opened = created["data"]["object"]
    charge = client.v1.charges.retrieve(opened["charge"])
    assert created["type"] == "charge.dispute.created" and opened["id"].startswith("dp_")
    assert (opened["status"], opened["amount"], opened["reason"]) == ("needs_response", 1000, "fraudulent")
    assert opened["payment_intent"] == charge.payment_intent and charge.disputed is True
    assert closed["type"] == "charge.dispute.closed" and closed["data"]["object"]["status"] == "won"
    assert [e.type for e in receiver.events()][-2:] == ["charge.dispute.created", "charge.dispute.closed"]
    with pytest.raises(EmulatorError, match="already closed"):
        emulator.close_dispute(session.id, "lost")
    assert emulator.refund(session.id, 100)[0]["data"]["object"]["amount_refunded"] == 100  # won: refundable


def test_expire(client: stripe.StripeClient, emulator: StripeEmulator) -> None:
    session = make_session(client)

    [event] = emulator.expire(session.id)

    assert event["type"] == "checkout.session.expired" and event["data"]["object"]["status"] == "expired"
    with pytest.raises(EmulatorError):
        emulator.pay(session.id)


def test_unreachable_or_failing_webhook(
    client: stripe.StripeClient, emulator: StripeEmulator, receiver: Receiver
) -> None:
    first, second, third = make_session(client), make_session(client), make_session(client)
    emulator.webhook_url = None
    emulator.pay(first.id)
    emulator.webhook_url = "http://127.0.0.1:9/unreachable"
    emulator.pay(second.id)
    emulator.webhook_url = receiver.url
    receiver.status = 500
    emulator.pay(third.id)

    assert [status for _, status in emulator.deliveries] == [0, 0, 500]
    receiver.status = 200
    assert emulator.deliver(emulator.events[0]) == 200
    assert emulator.deliveries[-1] == (emulator.events[0]["id"], 200)
    assert len(emulator.events) == 3


# ---- control endpoints over HTTP ---------------------------------------------------------------------


def test_control_endpoints(client: stripe.StripeClient, emulator: StripeEmulator, receiver: Receiver) -> None:
    session = make_session(client, amount=1000)
    control = f"{emulator.base_url}/_emulator/sessions/{session.id}"

    status, headers, body = send("POST", f"{control}/pay")
    paid = json.loads(body)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert paid["deliveries"] == [[paid["events"][0], 200]]
    status, _, body = send("POST", f"{control}/refund", {"amount": "250"})
    assert status == 200 and json.loads(body)["deliveries"][0][1] == 200
    status, _, body = send(
        "POST", f"{control}/refund", body=b'{"amount": 250}', headers={"Content-Type": "application/json"}
    )
    assert status == 200
    assert emulator.events[-1]["data"]["object"]["amount_refunded"] == 500
    status, _, body = send("POST", f"{control}/refund", {"amount": "501"})
    assert status == 400 and json.loads(body)["error"]["code"] == "amount_too_large"
    assert send("POST", f"{control}/pay")[0] == 400
    assert send("POST", f"{control}/close_dispute", {"status": "won"})[0] == 400
    assert send("POST", f"{control}/dispute")[0] == 200
    assert send("POST", f"{control}/close_dispute", {"status": "lost"})[0] == 200
    assert emulator.events[-1]["data"]["object"]["status"] == "lost"
    assert send("POST", f"{emulator.base_url}/_emulator/sessions/cs_test_nope/pay")[0] == 404
    assert send("POST", f"{control}/explode")[0] == 404

    status, _, body = send("POST", f"{emulator.base_url}/_emulator/events/{paid['events'][0]}/redeliver")
    assert status == 200 and json.loads(body)["deliveries"] == [[paid["events"][0], 200]]
    assert receiver.requests[-1][1] == receiver.requests[0][1]  # the same event, byte for byte
    assert send("POST", f"{emulator.base_url}/_emulator/events/evt_nope/redeliver")[0] == 404
    listed = json.loads(send("GET", f"{emulator.base_url}/_emulator/events")[2])
    assert [e["id"] for e in listed["events"]] == [e["id"] for e in emulator.events]


def test_control_pay_later_and_async_over_http(client: stripe.StripeClient, emulator: StripeEmulator) -> None:
    session = make_session(client)
    control = f"{emulator.base_url}/_emulator/sessions/{session.id}"

    assert send("POST", f"{control}/pay_later")[0] == 200
    assert send("POST", f"{control}/async_succeed")[0] == 200
    assert send("POST", f"{control}/async_fail")[0] == 400

    assert [e["type"] for e in emulator.events] == [
        "checkout.session.completed",
        "checkout.session.async_payment_succeeded",
    ]


# ---- hosted checkout page ----------------------------------------------------------------------------


@pytest.mark.parametrize(("amount", "currency", "shown"), [(500, "usd", "$5.00"), (500, "jpy", "¥500")])
def test_checkout_page_shows_the_amount(client: stripe.StripeClient, amount: int, currency: str, shown: str) -> None:
    session = make_session(client, amount=amount, currency=currency)

    status, headers, body = send("GET", session.url or "")

    page = body.decode()
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert "Local Stripe emulator — no real payment" in page and "Credits pack" in page
    assert f'<p class="amount" id="amount">{shown}</p>' in page
    for button in ('id="pay"', 'id="pay-later"', 'id="cancel"'):
        assert button in page
    assert f'formaction="/checkout/{session.id}/pay_later"' in page and 'name="viewport"' in page


def test_checkout_page_pay_redirects_to_success(
    client: stripe.StripeClient, emulator: StripeEmulator, receiver: Receiver
) -> None:
    session = make_session(client)

    status, headers, _ = send("POST", f"{emulator.base_url}/checkout/{session.id}/pay")

    assert status == 303 and headers["Location"] == f"http://localhost:3000/done?session={session.id}"
    assert [e.type for e in receiver.events()] == ["checkout.session.completed"]
    assert receiver.events()[0].data.object.payment_status == "paid"
    page = send("GET", f"{emulator.base_url}/checkout/{session.id}")[2].decode()
    assert "already paid" in page and 'id="pay"' not in page
    status, _, body = send("POST", f"{emulator.base_url}/checkout/{session.id}/pay")
    assert status == 409 and "already paid" in body.decode()


def test_checkout_page_pay_later_and_cancel(
    client: stripe.StripeClient, emulator: StripeEmulator, receiver: Receiver
) -> None:
    later, cancelled = make_session(client), make_session(client)

    cancel = send("POST", f"{emulator.base_url}/checkout/{cancelled.id}/cancel")
    assert cancel[0] == 303 and cancel[1]["Location"] == "http://localhost:3000/cancelled"
    assert receiver.requests == [] and client.v1.checkout.sessions.retrieve(cancelled.id).status == "open"

    status, headers, _ = send("POST", f"{emulator.base_url}/checkout/{later.id}/pay_later")
    assert status == 303 and headers["Location"].endswith(later.id)
    assert receiver.events()[0].data.object.payment_status == "unpaid"
    assert "still processing" in send("GET", f"{emulator.base_url}/checkout/{later.id}")[2].decode()
    assert send("GET", f"{emulator.base_url}/checkout/cs_test_nope")[0] == 404


# ---- command line ------------------------------------------------------------------------------------


# Seconds for the command line to start serving, or to stop, on a loaded 2-core machine.
PROCESS_DEADLINE = 60.0
# What a background job of a non-interactive shell, nohup or a CI runner does before it runs a command:
# SIGINT ignored, which the command inherits. Then `python -c LAUNCHER <python arguments>` runs Python.
IGNORING_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


def first_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The first line the process prints, waiting at most `timeout` seconds (a process that hangs
    before printing does not hang the test)."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline() if proc.stdout else ""), daemon=True)
    reader.start()
    reader.join(timeout)
    assert lines, f"nothing printed within {timeout} s"
    return lines[0]


@contextmanager
def command_line(
    receiver: Receiver, *, sigint_ignored: bool = False, extra: tuple[str, ...] = ()
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`python -m local.stripe_emulator` in its own process, started as a person starts it, or with
    SIGINT ignored as a background job, nohup or a CI runner starts it; yields the process and its
    base URL once it serves. It is never left running: killed at the end if it still runs."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = ["-m", "local.stripe_emulator", "--port", "0", "--webhook-url", receiver.url]
    args += ["--webhook-secret", SECRET, "--api-key", API_KEY, *extra]
    launch = [sys.executable, *(["-c", IGNORING_SIGINT] if sigint_ignored else []), *args]
    with subprocess.Popen(launch, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            banner = first_line(proc, PROCESS_DEADLINE)
            assert banner.startswith("Stripe emulator on http://"), banner
            yield proc, banner.split(" on ")[1].split(",")[0]
        finally:
            if proc.poll() is None:
                proc.kill()  # whatever failed, nothing is left behind (the `with` then reaps it)


def stopped_by(proc: subprocess.Popen[str], signum: int) -> str:
    """Send the signal and wait for the process to end; its standard error."""
    proc.send_signal(signum)
    _out, err = proc.communicate(timeout=PROCESS_DEADLINE)
    return err


def test_command_line_serves_until_interrupted(receiver: Receiver) -> None:
    with command_line(receiver) as (proc, base_url):
        client = stripe.StripeClient(API_KEY, base_addresses={"api": base_url}, max_network_retries=0)
        session = make_session(client)
        assert send("POST", f"{base_url}/_emulator/sessions/{session.id}/pay")[0] == 200
        assert [e.type for e in receiver.events()] == ["checkout.session.completed"]
        err = stopped_by(proc, signal.SIGINT)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_the_launcher_really_starts_python_with_sigint_ignored() -> None:
    """The premise of the next test: what IGNORING_SIGINT runs inherits SIGINT ignored."""
    shown = subprocess.run(
        [sys.executable, "-c", IGNORING_SIGINT, "-c", "import signal; print(signal.getsignal(signal.SIGINT))"],
        capture_output=True,
        text=True,
        timeout=PROCESS_DEADLINE,
    )
    assert shown.stdout.strip() == str(signal.SIG_IGN), shown.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_and_sigterm_stop_it_even_when_started_with_sigint_ignored(receiver: Receiver, signum: int) -> None:
    """A background job of a non-interactive shell, nohup or a CI runner starts the command line with
    SIGINT ignored (so Python installs no KeyboardInterrupt): Ctrl-C still stops it cleanly."""
    with command_line(receiver, sigint_ignored=True) as (proc, base_url):
        assert send("GET", f"{base_url}/_emulator/events")[0] == 200  # it serves
        err = stopped_by(proc, signum)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_state_kept_in_a_file_survives_a_restart(tmp_path: Any) -> None:
    """`make dev` keeps the emulator's customers and prices, as the database keeps their ids."""
    path = tmp_path / "stripe.json"
    first = StripeEmulator(api_key=API_KEY, webhook_secret=SECRET, state_path=path)
    first.start()
    client = stripe.StripeClient(API_KEY, base_addresses={"api": first.base_url}, max_network_retries=0)
    customer = client.v1.customers.create(params={"metadata": {"userId": "u1"}})
    product = client.v1.products.create(params={"name": "Starter"})
    price = client.v1.prices.create(params={"product": product.id, "unit_amount": 500, "currency": "usd"})
    first.stop()

    second = StripeEmulator(api_key=API_KEY, webhook_secret=SECRET, state_path=path)
    second.start()
    try:
        client = stripe.StripeClient(API_KEY, base_addresses={"api": second.base_url}, max_network_retries=0)
        assert client.v1.customers.retrieve(customer.id).id == customer.id
        session = create_session(
            client,
            {
                "mode": "payment",
                "customer": customer.id,
                "line_items": [{"price": price.id, "quantity": 1}],
                "success_url": "http://localhost/ok",
            },
        )
        assert session.amount_total == 500
    finally:
        second.stop()


def test_every_change_is_in_the_state_file_as_it_happens(tmp_path: Path, receiver: Receiver) -> None:
    """Not only at a clean stop: what the ledger may already have recorded (a payment whose webhook
    was delivered) is on disk before the webhook is sent. The file is replaced whole, never left
    half-written (a temporary file in the same folder, renamed over it)."""
    path = tmp_path / "stripe.json"
    emulator = StripeEmulator(api_key=API_KEY, webhook_secret=SECRET, webhook_url=receiver.url, state_path=path)
    emulator.start()
    try:
        client = stripe.StripeClient(API_KEY, base_addresses={"api": emulator.base_url}, max_network_retries=0)
        product = client.v1.products.create(params={"name": "Starter"})
        assert product.id in json.loads(path.read_text())["objects"]
        session = make_session(client)
        emulator.pay(session.id)
        kept = json.loads(path.read_text())  # no stop(): as after a crash
        assert kept["objects"][session.id]["payment_status"] == "paid"
        assert kept["checkouts"][session.id]["charge"] in kept["objects"]
        assert [e["type"] for e in kept["events"]] == ["checkout.session.completed"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["stripe.json"]  # no temporary file left
    finally:
        emulator.stop()


def test_payments_survive_a_kill_9_of_the_emulator(tmp_path: Path, receiver: Receiver) -> None:
    """After a crash (`kill -9`), its payments are there on restart: they can be refunded and disputed."""
    state = ("--state", str(tmp_path / "stripe-emulator.json"))
    with command_line(receiver, extra=state) as (proc, base_url):
        client = stripe.StripeClient(API_KEY, base_addresses={"api": base_url}, max_network_retries=0)
        session = make_session(client)
        assert send("POST", f"{base_url}/_emulator/sessions/{session.id}/pay")[0] == 200
        proc.kill()  # SIGKILL: no clean stop, nothing saved then
        proc.wait(timeout=PROCESS_DEADLINE)
    with command_line(receiver, extra=state) as (proc, base_url):
        client = stripe.StripeClient(API_KEY, base_addresses={"api": base_url}, max_network_retries=0)
        assert client.v1.checkout.sessions.retrieve(session.id).payment_status == "paid"
        assert send("POST", f"{base_url}/_emulator/sessions/{session.id}/refund", {"amount": "300"})[0] == 200
        assert send("POST", f"{base_url}/_emulator/sessions/{session.id}/dispute")[0] == 200
        err = stopped_by(proc, signal.SIGTERM)
    assert proc.returncode == 0, err
    assert [e.type for e in receiver.events()] == [
        "checkout.session.completed",
        "charge.refunded",
        "charge.dispute.created",
    ]


def test_lists_page_as_stripe_s_do_and_deliveries_can_be_dropped(
    emulator: StripeEmulator, client: stripe.StripeClient, receiver: Receiver
) -> None:
    """Newest first, `limit` pages with has_more, `starting_after` continues, `created` narrows; refunds
    and disputes list too. With deliveries dropped (the control endpoint), events are made, not sent."""
    sessions = [make_session(client) for _ in range(5)]
    first = client.v1.checkout.sessions.list(params={"limit": 2})
    assert [s.id for s in first.data] == [sessions[4].id, sessions[3].id] and first.has_more
    rest = client.v1.checkout.sessions.list(params={"limit": 100, "starting_after": first.data[-1].id})
    assert [s.id for s in rest.data] == [s.id for s in sessions[2::-1]] and not rest.has_more
    every = [s.id for s in client.v1.checkout.sessions.list(params={"limit": 2}).auto_paging_iter()]
    assert every == [s.id for s in sessions[::-1]]
    future = int(time.time()) + 60
    assert client.v1.checkout.sessions.list(params={"created": {"gte": future}}).data == []

    status, _, body = send("POST", f"{emulator.base_url}/_emulator/webhooks", {"drop": "true"})
    assert (status, json.loads(body)) == (200, {"dropDeliveries": True})
    emulator.pay(sessions[0].id)
    emulator.refund(sessions[0].id, 300)
    emulator.dispute(sessions[0].id)
    assert receiver.requests == [] and {status for _, status in emulator.deliveries} == {0}
    refunds = client.v1.refunds.list(params={"created": {"gte": future - 120}})
    assert [(r.amount, r.status) for r in refunds.data] == [(300, "succeeded")]
    disputes = client.v1.disputes.list(params={"limit": 10})
    assert [d.status for d in disputes.data] == ["needs_response"]
    assert disputes.data[0].payment_intent == refunds.data[0].payment_intent

    send("POST", f"{emulator.base_url}/_emulator/webhooks", {"drop": "false"})
    emulator.close_dispute(sessions[0].id, "won")
    assert [e.type for e in receiver.events()] == ["charge.dispute.closed"]


# ---- the package itself ---------------------------------------------------------------------------


def test_the_object_shapes_are_data_next_to_the_code_and_every_kind_is_made_from_them() -> None:
    """shapes.json (Stripe's example objects), not a string in Python: each kind the emulator makes
    has every field of its shape, our values filled in."""
    from importlib import resources

    from local.stripe_emulator import shape

    shapes = json.loads(resources.files("local.stripe_emulator").joinpath("shapes.json").read_text("utf-8"))
    assert {"customer", "product", "price", "checkout.session", "payment_intent", "charge", "refund", "dispute"} <= set(
        shapes
    )
    for kind, fields in shapes.items():
        made = shape(kind, id="x_1")
        assert set(made) == set(fields) | {"id"}, kind
        assert made is not shapes[kind] and made["id"] == "x_1"
    charge = shape("charge")
    charge["refunds"]["data"].append("changed")
    assert shape("charge")["refunds"]["data"] == []  # each object is a copy


def test_the_package_stays_in_pieces_a_reader_can_hold() -> None:
    """No module of local/stripe_emulator over 500 lines, no class over 300."""
    import ast

    for path in sorted((ROOT / "local" / "stripe_emulator").glob("*.py")):
        text = path.read_text()
        assert len(text.splitlines()) <= 500, path.name
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                assert node.end_lineno is not None and node.end_lineno - node.lineno < 300, (path.name, node.name)


# ---- saved cards and off-session payments (auto top-up) ---------------------------------------------


def new_customer(client: stripe.StripeClient) -> str:
    return client.v1.customers.create(params={"email": "ada@example.com", "metadata": {"userId": "user-1"}}).id


def setup_session(client: stripe.StripeClient, customer: str | None, **extra: Any) -> stripe.checkout.Session:
    """A setup-mode session, as stripe-python sends it."""
    return create_session(
        client,
        {
            "mode": "setup",
            "customer": customer,
            "currency": "usd",
            "success_url": "http://localhost:3000/saved?session={CHECKOUT_SESSION_ID}",
            "cancel_url": "http://localhost:3000/cancelled",
            **extra,
        },
    )


def save_card(client: stripe.StripeClient, emulator: StripeEmulator, customer: str, card: str = "pm_card_visa") -> str:
    """Save one of Stripe's test cards through a setup-mode session (the control's pay); its PaymentMethod id."""
    session = setup_session(client, customer)
    status, _, body = send("POST", f"{emulator.base_url}/_emulator/sessions/{session.id}/pay", {"payment_method": card})
    assert status == 200, body
    setup_intent = client.v1.setup_intents.retrieve(str(client.v1.checkout.sessions.retrieve(session.id).setup_intent))
    return str(setup_intent.payment_method)


def charge_off_session(
    client: stripe.StripeClient, customer: str, payment_method: str, key: str | None = None, amount: int = 500
) -> stripe.PaymentIntent:
    """What auto top-up sends: a PaymentIntent confirmed off-session with a saved card."""
    return client.v1.payment_intents.create(
        params={
            "amount": amount,
            "currency": "usd",
            "customer": customer,
            "payment_method": payment_method,
            "off_session": True,
            "confirm": True,
            "metadata": META,
            "description": "Auto top-up",
        },
        options={"idempotency_key": key} if key else {},
    )


def event_types(receiver: Receiver) -> list[str]:
    return [e.type for e in receiver.events()]


def test_a_setup_mode_session_saves_a_card_for_the_customer(
    client: stripe.StripeClient, emulator: StripeEmulator, receiver: Receiver
) -> None:
    customer = new_customer(client)
    session = setup_session(client, customer, metadata={"userId": "user-1"})
    assert (session.mode, session.status, session.payment_status) == ("setup", "open", "no_payment_required")
    assert session.amount_total is None and session.currency == "usd" and session.setup_intent is None
    page = send("GET", session.url or "")[2].decode()
    assert 'id="pay"' in page and "Save card" in page and 'id="pay-later"' not in page

    redirect = send("POST", f"{emulator.base_url}/checkout/{session.id}/pay")

    assert redirect[0] == 303 and redirect[1]["Location"] == f"http://localhost:3000/saved?session={session.id}"
    [completed] = receiver.events()
    assert completed.type == "checkout.session.completed"
    done = completed.data.object
    assert (done.status, done.mode, done.payment_intent) == ("complete", "setup", None)
    setup_intent = client.v1.setup_intents.retrieve(done.setup_intent)
    assert setup_intent.id.startswith("seti_") and setup_intent.status == "succeeded"
    assert (setup_intent.customer, setup_intent.usage) == (customer, "off_session")
    card = client.v1.payment_methods.retrieve(str(setup_intent.payment_method))
    assert card.id.startswith("pm_") and (card.object, card.type, card.customer) == ("payment_method", "card", customer)
    assert card.card is not None and (card.card.brand, card.card.last4) == ("visa", "4242")
    assert card.card.exp_month == 12 and card.card.exp_year > time.gmtime().tm_year and card.card.fingerprint
    second = client.v1.payment_methods.retrieve(save_card(client, emulator, customer))
    assert second.card is not None and second.card.fingerprint == card.card.fingerprint  # the same card number
    listed = client.v1.customers.payment_methods.list(customer, params={"type": "card"})
    assert [m.id for m in listed.data] == [second.id, card.id]
    assert client.v1.customers.payment_methods.list(new_customer(client)).data == []
    assert "saved a card" in send("GET", f"{emulator.base_url}/checkout/{session.id}")[2].decode()
    [summary] = [
        s
        for s in json.loads(send("GET", f"{emulator.base_url}/_emulator/sessions")[2])["sessions"]
        if s["id"] == session.id
    ]
    assert (summary["mode"], summary["state"], summary["paymentMethod"], summary["actions"]) == (
        "setup",
        "saved",
        card.id,
        [],
    )


def test_a_setup_mode_session_is_checked_as_stripe_checks_it(client: stripe.StripeClient) -> None:
    customer = new_customer(client)
    with pytest.raises(stripe.InvalidRequestError) as info:
        setup_session(client, customer, currency=None)
    assert (info.value.param, info.value.code) == ("currency", "parameter_missing")
    with_types = setup_session(client, customer, currency=None, payment_method_types=["card"])
    assert with_types.currency is None and with_types.payment_method_types == ["card"]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"line_items": [{"price": "price_x"}]}, "line_items"),
        ({"payment_intent_data": {"setup_future_usage": "off_session"}}, "payment_intent_data"),
    ]
    for extra, param in cases:
        with pytest.raises(stripe.InvalidRequestError) as info:
            setup_session(client, customer, **extra)
        assert info.value.param == param


def test_setup_future_usage_saves_the_card_the_customer_paid_with(
    client: stripe.StripeClient, emulator: StripeEmulator, receiver: Receiver
) -> None:
    customer = new_customer(client)
    session = make_session(
        client, customer=customer, payment_intent_data={"metadata": META, "setup_future_usage": "off_session"}
    )

    emulator.pay(session.id)

    [completed] = receiver.events()
    assert completed.type == "checkout.session.completed" and completed.data.object.payment_status == "paid"
    intent = client.v1.payment_intents.retrieve(completed.data.object.payment_intent)
    assert (intent.status, intent.setup_future_usage) == ("succeeded", "off_session")
    card = client.v1.payment_methods.retrieve(str(intent.payment_method))
    assert card.customer == customer and card.card is not None and card.card.last4 == "4242"
    charge = client.v1.charges.retrieve(str(intent.latest_charge))
    assert charge.payment_method == card.id and charge.customer == customer
    assert [m.id for m in client.v1.customers.payment_methods.list(customer).data] == [card.id]
    with pytest.raises(stripe.InvalidRequestError) as info:
        make_session(client, payment_intent_data={"setup_future_usage": "sometimes"})
    assert info.value.param == "payment_intent_data[setup_future_usage]"


def test_a_payment_without_setup_future_usage_saves_nothing(
    client: stripe.StripeClient, emulator: StripeEmulator
) -> None:
    customer = new_customer(client)
    emulator.pay(make_session(client, customer=customer).id)
    assert client.v1.customers.payment_methods.list(customer).data == []


def test_a_card_that_stripe_declines_is_not_saved_and_the_session_stays_open(
    client: stripe.StripeClient, emulator: StripeEmulator, receiver: Receiver
) -> None:
    customer = new_customer(client)
    session = setup_session(client, customer)
    control = f"{emulator.base_url}/_emulator/sessions/{session.id}/pay"

    status, _, body = send("POST", control, {"payment_method": "pm_card_chargeDeclined"})

    assert (status, json.loads(body)["error"]["code"]) == (402, "card_declined")
    status, _, body = send("POST", control, {"payment_method": "pm_card_nope"})
    assert (status, json.loads(body)["error"]["code"]) == (400, "resource_missing")
    assert client.v1.checkout.sessions.retrieve(session.id).status == "open" and receiver.requests == []
    assert client.v1.customers.payment_methods.list(customer).data == []


def test_detaching_a_saved_card_sends_payment_method_detached(
    client: stripe.StripeClient, emulator: StripeEmulator, receiver: Receiver
) -> None:
    customer = new_customer(client)
    card = save_card(client, emulator, customer)

    detached = client.v1.payment_methods.detach(card)

    assert detached.id == card and detached.customer is None
    assert event_types(receiver) == ["checkout.session.completed", "payment_method.detached"]
    event = receiver.events()[-1]
    assert event.data.object.id == card and event.data.object.customer is None
    assert event.data.to_dict()["previous_attributes"] == {"customer": customer}
    assert client.v1.payment_methods.retrieve(card).customer is None
    assert client.v1.customers.payment_methods.list(customer).data == []
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.payment_methods.detach(card)
    assert info.value.http_status == 400 and "not attached to a customer" in str(info.value.user_message)
    with pytest.raises(stripe.InvalidRequestError) as info:
        charge_off_session(client, customer, card)
    assert info.value.param == "payment_method" and "may not be used again" in str(info.value.user_message)
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.payment_methods.detach("pm_missing")
    assert (info.value.http_status, info.value.code) == (404, "resource_missing")
    assert event_types(receiver) == ["checkout.session.completed", "payment_method.detached"]


def test_an_off_session_payment_with_a_saved_card_succeeds(
    client: stripe.StripeClient, emulator: StripeEmulator, receiver: Receiver
) -> None:
    customer = new_customer(client)
    card = save_card(client, emulator, customer)

    intent = charge_off_session(client, customer, card, amount=700)

    assert intent.id.startswith("pi_") and intent.status == "succeeded"
    assert (intent.amount, intent.amount_received, intent.currency) == (700, 700, "usd")
    assert (intent.customer, intent.payment_method, intent.description) == (customer, card, "Auto top-up")
    assert metadata(intent) == META
    charge = client.v1.charges.retrieve(str(intent.latest_charge))
    assert charge.id.startswith("ch_") and (charge.status, charge.paid, charge.amount) == ("succeeded", True, 700)
    assert (charge.payment_intent, charge.customer, charge.payment_method) == (intent.id, customer, card)
    assert metadata(charge) == META and charge.currency == "usd"
    assert event_types(receiver) == ["checkout.session.completed", "payment_intent.succeeded"]
    succeeded = receiver.events()[-1]
    assert succeeded.data.object.id == intent.id and succeeded.data.object.status == "succeeded"
    assert client.v1.payment_intents.retrieve(intent.id).latest_charge == charge.id

    control = f"{emulator.base_url}/_emulator/payment_intents/{intent.id}"
    assert send("POST", f"{control}/refund", {"amount": "200"})[0] == 200
    assert send("POST", f"{control}/dispute")[0] == 200
    assert send("POST", f"{control}/refund")[0] == 400  # charged back
    assert send("POST", f"{control}/close_dispute", {"status": "won"})[0] == 200
    [refunded] = emulator.refund_payment_intent(intent.id)

    assert event_types(receiver)[2:] == [
        "charge.refunded",
        "charge.dispute.created",
        "charge.dispute.closed",
        "charge.refunded",
    ]
    first_refund, opened = receiver.events()[2].data.object, receiver.events()[3].data.object
    assert (first_refund.id, first_refund.amount_refunded, first_refund.refunded) == (charge.id, 200, False)
    assert (opened.charge, opened.payment_intent, opened.amount) == (charge.id, intent.id, 700)
    assert refunded["data"]["object"]["amount_refunded"] == 700 and refunded["data"]["object"]["refunded"] is True
    refunds = client.v1.refunds.list(params={"payment_intent": intent.id})
    assert [r.amount for r in refunds.data] == [500, 200]
    assert send("POST", f"{control}/explode")[0] == 404
    assert send("POST", f"{emulator.base_url}/_emulator/payment_intents/pi_nope/refund")[0] == 404


def test_refund_by_payment_intent_works_for_checkout_payments_too(
    client: stripe.StripeClient, emulator: StripeEmulator, receiver: Receiver
) -> None:
    session = make_session(client)
    emulator.pay(session.id)
    intent = str(client.v1.checkout.sessions.retrieve(session.id).payment_intent)

    emulator.dispute_payment_intent(intent)
    emulator.close_payment_intent_dispute(intent, "lost")

    assert event_types(receiver) == ["checkout.session.completed", "charge.dispute.created", "charge.dispute.closed"]
    [summary] = json.loads(send("GET", f"{emulator.base_url}/_emulator/sessions")[2])["sessions"]
    assert summary["dispute"] == "lost" and "refund" not in summary["actions"]


@pytest.mark.parametrize(
    ("card", "code", "decline_code", "message"),
    [
        ("pm_card_chargeDeclined", "card_declined", "generic_decline", "Your card was declined."),
        (
            "pm_card_chargeDeclinedInsufficientFunds",
            "card_declined",
            "insufficient_funds",
            "Your card has insufficient funds.",
        ),
        (
            "pm_card_authenticationRequired",
            "authentication_required",
            "authentication_required",
            "Your card was declined. This transaction requires authentication.",
        ),
    ],
)
def test_stripe_s_test_cards_decline_off_session_as_stripe_does(
    client: stripe.StripeClient,
    emulator: StripeEmulator,
    receiver: Receiver,
    card: str,
    code: str,
    decline_code: str,
    message: str,
) -> None:
    customer = new_customer(client)

    with pytest.raises(stripe.CardError) as info:
        charge_off_session(client, customer, card)

    assert (info.value.http_status, info.value.code, info.value.user_message) == (402, code, message)
    error = info.value.error
    assert error is not None and (error.type, error.decline_code) == ("card_error", decline_code)
    assert error.payment_intent is not None and error.payment_intent.status == "requires_payment_method"
    intent = client.v1.payment_intents.retrieve(error.payment_intent.id)
    assert intent.status == "requires_payment_method" and intent.payment_method is None
    assert intent.last_payment_error is not None
    assert (intent.last_payment_error.code, intent.last_payment_error.decline_code) == (code, decline_code)
    assert metadata(intent) == META and intent.customer == customer
    failed = client.v1.charges.retrieve(str(intent.latest_charge))
    assert (failed.status, failed.paid, failed.failure_code) == ("failed", False, code)
    assert event_types(receiver) == ["payment_intent.payment_failed"]
    sent = receiver.events()[0].data.object
    assert sent.id == intent.id and sent.last_payment_error.decline_code == decline_code
    status, _, body = send("POST", f"{emulator.base_url}/_emulator/payment_intents/{intent.id}/refund")
    assert (status, json.loads(body)["error"]["code"]) == (400, "no_charge")


@pytest.mark.parametrize(
    ("card", "code"),
    [("pm_card_chargeCustomerFail", "card_declined"), ("pm_card_authenticationRequired", "authentication_required")],
)
def test_a_saved_card_charges_as_the_test_card_it_was_saved_from(
    client: stripe.StripeClient, emulator: StripeEmulator, receiver: Receiver, card: str, code: str
) -> None:
    customer = new_customer(client)
    saved = save_card(client, emulator, customer, card)

    with pytest.raises(stripe.CardError) as info:
        charge_off_session(client, customer, saved)

    assert info.value.code == code
    assert event_types(receiver) == ["checkout.session.completed", "payment_intent.payment_failed"]
    assert client.v1.payment_methods.retrieve(saved).customer == customer  # still saved


def test_an_off_session_payment_is_checked_as_stripe_checks_it(
    client: stripe.StripeClient, emulator: StripeEmulator, receiver: Receiver
) -> None:
    customer, other = new_customer(client), new_customer(client)
    card = save_card(client, emulator, customer)
    base: dict[str, Any] = {"amount": 500, "currency": "usd", "customer": customer, "payment_method": card}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"amount": None}, "amount"),
        ({"currency": None}, "currency"),
        ({"customer": "cus_missing", "off_session": True, "confirm": True}, "customer"),
        ({"payment_method": "pm_missing", "off_session": True, "confirm": True}, "payment_method"),
        ({"customer": other, "off_session": True, "confirm": True}, "customer"),
        ({"off_session": True}, "off_session"),
        ({"confirm": True}, "return_url"),
        ({"bogus": "1"}, "bogus"),
    ]
    for extra, param in cases:
        with pytest.raises(stripe.InvalidRequestError) as info:
            client.v1.payment_intents.create(params=cast(Any, {**base, **extra}))
        assert (info.value.http_status, info.value.param) == (400, param), extra
    unconfirmed = client.v1.payment_intents.create(params=cast(Any, base))
    assert unconfirmed.status == "requires_confirmation" and unconfirmed.latest_charge is None
    assert event_types(receiver) == ["checkout.session.completed"]


def test_the_same_idempotency_key_replays_a_payment_and_sends_its_webhook_once(
    client: stripe.StripeClient, emulator: StripeEmulator, receiver: Receiver
) -> None:
    customer = new_customer(client)
    card = save_card(client, emulator, customer)

    first = charge_off_session(client, customer, card, key="topup-1")
    again = charge_off_session(client, customer, card, key="topup-1")

    assert again.id == first.id and again.status == "succeeded"
    assert again.last_response is not None and again.last_response.headers["Idempotent-Replayed"] == "true"
    assert event_types(receiver) == ["checkout.session.completed", "payment_intent.succeeded"]
    request = receiver.events()[-1].request
    assert request is not None and request.idempotency_key == "topup-1"
    assert client.v1.charges.retrieve(str(first.latest_charge)).payment_intent == first.id
    with pytest.raises(stripe.IdempotencyError) as info:
        charge_off_session(client, customer, card, key="topup-1", amount=600)
    assert info.value.http_status == 400
    other = charge_off_session(client, customer, card, key="topup-2")
    assert other.id != first.id
    assert event_types(receiver)[1:] == ["payment_intent.succeeded", "payment_intent.succeeded"]


def test_a_declined_payment_is_replayed_for_its_idempotency_key_too(
    client: stripe.StripeClient, emulator: StripeEmulator, receiver: Receiver
) -> None:
    customer = new_customer(client)
    declines: list[stripe.CardError] = []
    for _ in range(2):
        with pytest.raises(stripe.CardError) as info:
            charge_off_session(client, customer, "pm_card_chargeDeclinedInsufficientFunds", key="topup-declined")
        declines.append(info.value)

    first, again = (e.error.payment_intent for e in declines if e.error is not None)
    assert first is not None and again is not None and again.id == first.id
    assert declines[1].headers is not None and declines[1].headers["Idempotent-Replayed"] == "true"
    assert [e.code for e in declines] == ["card_declined", "card_declined"]
    assert event_types(receiver) == ["payment_intent.payment_failed"]
    with pytest.raises(stripe.IdempotencyError):
        charge_off_session(client, customer, "pm_card_visa", key="topup-declined")
    assert len(emulator._all("payment_intent")) == 1


def test_the_control_decides_the_next_off_session_payment_only(
    client: stripe.StripeClient, emulator: StripeEmulator, receiver: Receiver
) -> None:
    customer = new_customer(client)
    card = save_card(client, emulator, customer)
    control = f"{emulator.base_url}/_emulator/next_off_session_payment"

    assert json.loads(send("GET", control)[2]) == {"nextOffSessionPayment": None}
    for outcome, code, decline_code in [
        ("decline", "card_declined", "generic_decline"),
        ("insufficient_funds", "card_declined", "insufficient_funds"),
        ("authentication_required", "authentication_required", "authentication_required"),
    ]:
        status, _, body = send("POST", control, {"outcome": outcome})
        assert (status, json.loads(body)) == (200, {"nextOffSessionPayment": outcome})
        with pytest.raises(stripe.CardError) as info:
            charge_off_session(client, customer, card)
        assert info.value.code == code and info.value.error is not None
        assert info.value.error.decline_code == decline_code
        assert charge_off_session(client, customer, card).status == "succeeded"  # the next one only

    send("POST", control, body=b'{"outcome": "succeed"}', headers={"Content-Type": "application/json"})
    assert charge_off_session(client, customer, "pm_card_chargeDeclined").status == "succeeded"
    with pytest.raises(stripe.CardError):
        charge_off_session(client, customer, "pm_card_chargeDeclined")
    send("POST", control, {"outcome": "decline"})
    assert send("POST", control, {"outcome": "card"})[0] == 200  # back to what the card does
    assert charge_off_session(client, customer, card).status == "succeeded"
    status, _, body = send("POST", control, {"outcome": "maybe"})
    assert (status, json.loads(body)["error"]["param"]) == (400, "outcome")
    assert json.loads(send("GET", control)[2]) == {"nextOffSessionPayment": None}
    assert event_types(receiver).count("payment_intent.payment_failed") == 4


def test_an_intent_read_with_its_payment_method_expanded_carries_the_saved_card(
    client: stripe.StripeClient, emulator: StripeEmulator
) -> None:
    """What the webhook reads to keep a saved card (StripeGateway.saved_card): the SetupIntent of a
    setup-mode session, or the PaymentIntent of a purchase with setup_future_usage, with
    `expand[]=payment_method`, as stripe-python sends it and as a plain query string."""
    customer = new_customer(client)
    expand: Any = {"expand": ["payment_method"]}
    setup = client.v1.setup_intents.retrieve(_setup_intent_of(client, emulator, customer), params=expand)
    session = make_session(
        client, customer=customer, payment_intent_data={"metadata": META, "setup_future_usage": "off_session"}
    )
    emulator.pay(session.id)
    paid = client.v1.checkout.sessions.retrieve(session.id)
    intent = client.v1.payment_intents.retrieve(str(paid.payment_intent), params=expand)

    for method in (setup.payment_method, intent.payment_method):
        assert isinstance(method, stripe.PaymentMethod) and method.customer == customer
        assert method.card is not None and (method.card.brand, method.card.last4) == ("visa", "4242")
    auth = {"Authorization": f"Bearer {API_KEY}"}
    status, _, body = send(
        "GET", f"{emulator.base_url}/v1/setup_intents/{setup.id}?expand[]=payment_method", headers=auth
    )
    assert status == 200 and json.loads(body)["payment_method"]["card"]["last4"] == "4242"
    status, _, body = send(
        "GET", f"{emulator.base_url}/v1/payment_intents/{intent.id}?expand[]=payment_method", headers=auth
    )
    assert status == 200 and json.loads(body)["payment_method"]["customer"] == customer
    unexpanded = client.v1.payment_intents.retrieve(intent.id).payment_method
    assert isinstance(unexpanded, str) and unexpanded.startswith("pm_")  # an id unless expanded


def _setup_intent_of(client: stripe.StripeClient, emulator: StripeEmulator, customer: str) -> str:
    """The SetupIntent of a setup-mode session paid with pm_card_visa."""
    session = setup_session(client, customer)
    emulator.pay(session.id)
    return str(client.v1.checkout.sessions.retrieve(session.id).setup_intent)
