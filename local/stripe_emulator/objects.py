"""Stripe's objects as the emulator makes them: ids, Stripe's full shape of each kind (shapes.json,
copied from Stripe's OpenAPI example objects) with our values filled in, amounts in money, and the
errors Stripe answers with."""

from __future__ import annotations

import json
import secrets
import string
import time
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

Json = dict[str, Any]

API_VERSION = "2026-10-28.endive"  # what stripe-python 16.1.0 declares (stripe.api_version)
DAY = 86400
ZERO_DECIMAL = "bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf"  # no minor unit
SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥", "krw": "₩", "inr": "₹", "cad": "CA$", "aud": "A$"}
BANK = "us_bank_account"  # the delayed ("pay later") payment method
ALNUM = string.ascii_letters + string.digits


class EmulatorError(Exception):
    """A Stripe-shaped API error, or a control action the current state does not allow."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        code: str | None = None,
        param: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.kind = status, message, code, param, kind

    def body(self) -> Json:
        """The error as Stripe's JSON body."""
        error: Json = {"type": self.kind, "message": self.message, "code": self.code}
        if self.code:
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        return {"error": {**error, "param": self.param} if self.param else error}


@dataclass
class Checkout:
    """Emulator-side bookkeeping for one Checkout Session (in setup mode: no price nor product, and
    pi_metadata and pi_description are setup_intent_data's)."""

    price: str
    product_name: str
    pi_metadata: dict[str, str]
    pi_description: str | None
    method: str = "card"
    charge: str | None = None
    dispute: str | None = None
    setup_future_usage: str | None = None  # payment_intent_data's: the card is saved when paid
    payment_method: str | None = None  # the card saved when paid (a PaymentMethod id)


def new_id(prefix: str, length: int = 24) -> str:
    """A Stripe-looking object id such as ``ch_3Kx...``."""
    return f"{prefix}_" + "".join(secrets.choice(ALNUM) for _ in range(length))


def snapshot(obj: Any) -> Any:
    """A deep, JSON-clean copy of an object as it is right now."""
    return json.loads(json.dumps(obj))


def format_amount(amount: int, currency: str) -> str:
    """Minor units for display: 500 usd is "$5.00", 500 jpy is "¥500"."""
    cur = currency.lower()
    symbol = SYMBOLS.get(cur, cur.upper() + " ")
    if cur in ZERO_DECIMAL.split():
        return f"{symbol}{amount:,}"
    return f"{symbol}{amount // 100:,}.{amount % 100:02d}"


@cache
def _shapes() -> dict[str, Json]:
    """The fixed part of each kind's shape (shapes.json, next to this module)."""
    shapes: dict[str, Json] = json.loads(resources.files(__package__).joinpath("shapes.json").read_text("utf-8"))
    return shapes


def shape(kind: str, **values: Any) -> Json:
    """A new object of the kind: Stripe's full shape with our values filled in."""
    return {**snapshot(_shapes()[kind]), **values}


# ---- the objects, with our values --------------------------------------------------------------------


def customer(p: Json) -> Json:
    """A customer object, from POST /v1/customers' parameters."""
    return shape(
        "customer",
        id=new_id("cus", 14),
        created=int(time.time()),
        description=p.get("description"),
        email=p.get("email"),
        invoice_prefix=secrets.token_hex(4).upper(),
        metadata=p.get("metadata", {}),
        name=p.get("name"),
    )


def product(name: str, p: Json) -> Json:
    """A product object."""
    now = int(time.time())
    return shape(
        "product",
        id=new_id("prod", 14),
        active=p.get("active", True),
        created=now,
        description=p.get("description"),
        metadata=p.get("metadata", {}),
        name=name,
        updated=now,
    )


def price(product_id: str, currency: str, amount: int, p: Json) -> Json:
    """A one-time price object."""
    return shape(
        "price",
        id=new_id("price"),
        active=p.get("active", True),
        created=int(time.time()),
        currency=currency,
        lookup_key=p.get("lookup_key"),
        metadata=p.get("metadata", {}),
        nickname=p.get("nickname"),
        product=product_id,
        unit_amount=amount,
        unit_amount_decimal=str(amount),
    )


def session(session_id: str, p: Json, unit_price: Json | None, base_url: str) -> Json:
    """An open Checkout Session for one unit of the price, paid on the emulator's page at `base_url`;
    in setup mode (no price), one that saves a card there."""
    now, customer_id = int(time.time()), p.get("customer")
    amount = unit_price["unit_amount"] if unit_price else None
    given = (
        "cancel_url",
        "client_reference_id",
        "customer_email",
        "locale",
        "metadata",
        "payment_method_types",
        "success_url",
    )
    return shape(
        "checkout.session",
        id=session_id,
        amount_subtotal=amount,
        amount_total=amount,
        created=now,
        currency=unit_price["currency"] if unit_price else p.get("currency"),
        customer=customer_id,
        customer_creation=None if customer_id else "if_required",
        expires_at=p.get("expires_at", now + DAY),
        mode=p["mode"],
        payment_status="unpaid" if unit_price else "no_payment_required",
        url=f"{base_url}/checkout/{session_id}",
        **{k: p[k] for k in given if k in p},
    )


def payment_intent(checkout_session: Json, checkout: Checkout) -> Json:
    """The PaymentIntent Checkout creates when the customer pays."""
    intent_id, delayed = new_id("pi"), checkout.method != "card"
    return shape(
        "payment_intent",
        id=intent_id,
        amount=checkout_session["amount_total"],
        client_secret=f"{intent_id}_secret_{new_id('s')[2:]}",
        created=int(time.time()),
        currency=checkout_session["currency"],
        customer=checkout_session["customer"],
        description=checkout.pi_description,
        metadata=dict(checkout.pi_metadata),
        payment_method_types=[checkout.method],
        processing={"type": checkout.method} if delayed else None,
        status="processing" if delayed else "requires_confirmation",
    )


def charge(checkout_session: Json, checkout: Checkout, intent: Json) -> Json:
    """A succeeded charge carrying the intent's metadata, as Stripe copies it."""
    charge_id, amount, method = new_id("ch"), intent["amount"], checkout.method
    details = shape(method, fingerprint=secrets.token_hex(8))
    if method == "card":
        details.update(
            amount_authorized=amount,
            exp_year=time.gmtime().tm_year + 3,
            network_transaction_id=str(secrets.randbelow(10**15)),
            overcapture={"maximum_amount_capturable": amount, "status": "unavailable"},
        )
    else:
        details["mandate"] = new_id("mandate")
    made = intent_charge(intent, charge_id, intent["payment_method"] or new_id("pm"), method, details)
    billing = checkout_session["customer_details"] or {}
    made["billing_details"].update({k: billing.get(k) for k in ("address", "email", "name")})
    return made


def intent_charge(intent: Json, charge_id: str, payment_method: str, kind: str, details: Json) -> Json:
    """A succeeded charge of a PaymentIntent, carrying its metadata as Stripe copies it, paid with
    `payment_method` of `kind` (its `details`, kept by reference: a caller may add to them)."""
    made = shape(
        "charge",
        id=charge_id,
        amount=intent["amount"],
        amount_captured=intent["amount"],
        balance_transaction=new_id("txn"),
        created=int(time.time()),
        currency=intent["currency"],
        customer=intent["customer"],
        description=intent["description"],
        metadata=dict(intent["metadata"]),
        payment_intent=intent["id"],
        payment_method=payment_method,
        payment_method_details={kind: details, "type": kind},
    )
    made["refunds"]["url"] = f"/v1/charges/{charge_id}/refunds"
    return made


def refund(paid: Json, amount: int, method: str) -> Json:
    """A succeeded refund of `amount` of the charge `paid`, back to the payment `method`."""
    return shape(
        "refund",
        id=new_id("re"),
        amount=amount,
        balance_transaction=new_id("txn"),
        charge=paid["id"],
        created=int(time.time()),
        currency=paid["currency"],
        customer=paid["customer"],
        payment_intent=paid["payment_intent"],
        payment_method=paid["payment_method"],
        destination_details={"type": method, method: {"reference": None}},
    )


def dispute(paid: Json) -> Json:
    """A fraud chargeback of the whole charge `paid`, its evidence due in 7 days."""
    now = int(time.time())
    made = shape(
        "dispute",
        id=new_id("dp"),
        amount=paid["amount"],
        charge=paid["id"],
        created=now,
        currency=paid["currency"],
        payment_intent=paid["payment_intent"],
    )
    made["evidence_details"]["due_by"] = now + 7 * DAY
    return made


def event(kind: str, obj: Json) -> Json:
    """A new event of the kind carrying a snapshot of the object."""
    return {
        "id": new_id("evt"),
        "object": "event",
        "api_version": API_VERSION,
        "created": int(time.time()),
        "data": {"object": snapshot(obj)},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": kind,
    }
