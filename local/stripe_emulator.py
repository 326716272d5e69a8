"""Local Stripe emulator: the slice of Stripe's API the credits system calls, a hosted checkout page and
signed webhook deliveries, so the whole purchase flow runs offline and deterministically.

    python -m local.stripe_emulator --port 12111 --webhook-url URL --webhook-secret whsec_x --api-key sk_x
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import html
import http.client
import json
import logging
import os
import re
import secrets
import signal
import string
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

Json = dict[str, Any]
Reply = tuple[int, dict[str, str], bytes]

API_VERSION = "2026-10-28.endive"  # what stripe-python 16.1.0 declares (stripe.api_version)
USER_AGENT = "Stripe/1.0 (+https://stripe.com/docs/webhooks)"
DELIVERY_TIMEOUT = 30.0
DAY = 86400
ZERO_DECIMAL = "bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf"  # no minor unit
SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥", "krw": "₩", "inr": "₹", "cad": "CA$", "aud": "A$"}
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # what stops the command line (main)
BANK = "us_bank_account"  # the delayed ("pay later") payment method
_ALNUM = string.ascii_letters + string.digits
# Stripe's limits, in characters, on what a client sends it (https://docs.stripe.com/api/metadata,
# /api/idempotent_requests, /api/checkout/sessions/create#create_checkout_session-client_reference_id).
METADATA_MAX_KEYS, METADATA_MAX_KEY, METADATA_MAX_VALUE = 50, 40, 500
IDEMPOTENCY_KEY_MAX = 255
CLIENT_REFERENCE_ID_MAX = 200
logger = logging.getLogger(__name__)

# Accepted parameters: "str" | "int" | "bool" | "meta" (string map) | "list" (of strings) | a dict
# (sub-object) | [dict] (list of sub-objects). Anything else is refused as parameter_unknown, as Stripe does.
_EXPAND: Json = {"expand": "list"}
CUSTOMER_PARAMS: Json = {"email": "str", "name": "str", "description": "str", "metadata": "meta", **_EXPAND}
PRODUCT_PARAMS: Json = {"name": "str", "description": "str", "metadata": "meta", "active": "bool", **_EXPAND}
PRICE_PARAMS: Json = {
    "product": "str",
    "unit_amount": "int",
    "currency": "str",
    "lookup_key": "str",
    "metadata": "meta",
    "active": "bool",
    "nickname": "str",
    "transfer_lookup_key": "bool",
    **_EXPAND,
}
PRICE_DATA: Json = {
    "currency": "str",
    "unit_amount": "int",
    "product_data": {"name": "str", "metadata": "meta"},
}
SESSION_PARAMS: Json = {
    "mode": "str",
    "customer": "str",
    "customer_email": "str",
    "client_reference_id": "str",
    "locale": "str",
    "line_items": [{"price": "str", "quantity": "int", "price_data": PRICE_DATA}],
    "success_url": "str",
    "cancel_url": "str",
    "metadata": "meta",
    "payment_method_types": "list",
    "expires_at": "int",
    "payment_intent_data": {"metadata": "meta", "description": "str"},
    **_EXPAND,
}
PRICE_LIST_PARAMS: Json = {
    "lookup_keys": "list",
    "active": "bool",
    "product": "str",
    "limit": "int",
    **_EXPAND,
}
# Lists page as Stripe's do: newest first, `limit` (1-100), `starting_after` / `ending_before` an id of
# the list, `created[gt|gte|lt|lte]` in Unix seconds.
_PAGES: Json = {
    "limit": "int",
    "starting_after": "str",
    "ending_before": "str",
    "created": {"gt": "int", "gte": "int", "lt": "int", "lte": "int"},
}
SESSION_LIST_PARAMS: Json = {"payment_intent": "str", "customer": "str", "status": "str", **_PAGES, **_EXPAND}
REFUND_LIST_PARAMS: Json = {"charge": "str", "payment_intent": "str", **_PAGES, **_EXPAND}
DISPUTE_LIST_PARAMS: Json = {"charge": "str", "payment_intent": "str", **_PAGES, **_EXPAND}
EVENT_LIST_PARAMS: Json = {"type": "str", "types": "list", **_PAGES, **_EXPAND}
SEARCH_PARAMS: Json = {"query": "str", "limit": "int", **_EXPAND}
COLLECTIONS = {
    "customers": "customer",
    "products": "product",
    "prices": "price",
    "payment_intents": "payment_intent",
    "charges": "charge",
    "refunds": "refund",
    "disputes": "dispute",
    "events": "event",
    "checkout/sessions": "checkout.session",
}
_METADATA_QUERY = re.compile(r"""\s*metadata\[(['"])(?P<key>[^'"]+)\1\]\s*:\s*(['"])(?P<value>.*)\3\s*""")
_FORM_KEY = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")

# The fixed part of each object's shape, copied from Stripe's OpenAPI example objects; the builders below
# fill in the fields that carry our values.
_SHAPES: dict[str, Json] = json.loads("""{
"customer": {"id": null, "object": "customer", "address": null, "balance": 0, "created": 0, "currency": null,
  "default_source": null, "delinquent": false, "description": null, "discount": null, "email": null,
  "invoice_prefix": null, "invoice_settings": {"custom_fields": null, "default_payment_method": null,
  "footer": null, "rendering_options": null}, "livemode": false, "metadata": {}, "name": null,
  "next_invoice_sequence": 1, "phone": null, "preferred_locales": [], "shipping": null, "tax_exempt": "none",
  "test_clock": null},
"product": {"id": null, "object": "product", "active": true, "created": 0, "default_price": null,
  "description": null, "images": [], "livemode": false, "marketing_features": [], "metadata": {},
  "name": null, "package_dimensions": null, "shippable": null, "statement_descriptor": null, "tax_code": null,
  "type": "service", "unit_label": null, "updated": 0, "url": null},
"price": {"id": null, "object": "price", "active": true, "billing_scheme": "per_unit", "created": 0,
  "currency": null, "custom_unit_amount": null, "livemode": false, "lookup_key": null, "metadata": {},
  "nickname": null, "product": null, "recurring": null, "tax_behavior": "unspecified", "tiers_mode": null,
  "transform_quantity": null, "type": "one_time", "unit_amount": 0, "unit_amount_decimal": "0"},
"checkout.session": {"id": null, "object": "checkout.session", "adaptive_pricing": {"enabled": false},
  "after_expiration": null, "allow_promotion_codes": null, "amount_subtotal": 0, "amount_total": 0,
  "automatic_tax": {"enabled": false, "liability": null, "provider": null, "status": null},
  "billing_address_collection": null, "cancel_url": null, "client_reference_id": null, "client_secret": null,
  "collected_information": null, "consent": null, "consent_collection": null, "created": 0, "currency": null,
  "currency_conversion": null, "custom_fields": [], "custom_text": {"after_submit": null,
  "shipping_address": null, "submit": null, "terms_of_service_acceptance": null}, "customer": null,
  "customer_account": null, "customer_creation": null, "customer_details": null, "customer_email": null,
  "discounts": [], "expires_at": 0, "integration_identifier": null, "invoice": null,
  "invoice_creation": {"enabled": false, "invoice_data": {"account_tax_ids": null, "custom_fields": null,
  "description": null, "footer": null, "issuer": null, "metadata": {}, "rendering_options": null}},
  "livemode": false, "locale": null, "managed_payments": null, "metadata": {}, "mode": "payment",
  "origin_context": null, "payment_intent": null, "payment_link": null,
  "payment_method_collection": "if_required", "payment_method_configuration_details": null,
  "payment_method_options": {}, "payment_method_types": ["card"], "payment_status": "unpaid",
  "permissions": null, "phone_number_collection": {"enabled": false}, "recovered_from": null,
  "saved_payment_method_options": null, "setup_intent": null, "shipping_address_collection": null,
  "shipping_cost": null, "shipping_options": [], "status": "open", "submit_type": null, "subscription": null,
  "success_url": null, "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
  "ui_mode": "hosted", "url": null, "wallet_options": null},
"customer_details": {"address": {"city": null, "country": "US", "line1": null, "line2": null,
  "postal_code": "94103", "state": null}, "business_name": null, "email": null, "individual_name": null,
  "name": null, "phone": null, "tax_exempt": "none", "tax_ids": []},
"payment_intent": {"id": null, "object": "payment_intent", "amount": 0, "amount_capturable": 0,
  "amount_details": {"tip": {}}, "amount_received": 0, "application": null, "application_fee_amount": null,
  "automatic_payment_methods": null, "canceled_at": null, "cancellation_reason": null,
  "capture_method": "automatic_async", "client_secret": null, "confirmation_method": "automatic",
  "created": 0, "currency": null, "customer": null, "customer_account": null, "description": null,
  "excluded_payment_method_types": null, "last_payment_error": null, "latest_charge": null,
  "livemode": false, "managed_payments": null, "metadata": {}, "next_action": null, "on_behalf_of": null,
  "payment_method": null, "payment_method_configuration_details": null, "payment_method_options": {},
  "payment_method_types": ["card"], "processing": null, "receipt_email": null, "review": null,
  "setup_future_usage": null, "shipping": null, "source": null, "statement_descriptor": null,
  "statement_descriptor_suffix": null, "status": "requires_payment_method", "transfer_data": null,
  "transfer_group": null},
"charge": {"id": null, "object": "charge", "amount": 0, "amount_captured": 0, "amount_refunded": 0,
  "application": null, "application_fee": null, "application_fee_amount": null, "balance_transaction": null,
  "billing_details": {"address": null, "email": null, "name": null, "phone": null, "tax_id": null},
  "calculated_statement_descriptor": null, "captured": true, "created": 0, "currency": null,
  "customer": null, "description": null, "disputed": false, "failure_balance_transaction": null,
  "failure_code": null, "failure_message": null, "fraud_details": {}, "livemode": false, "metadata": {},
  "on_behalf_of": null, "outcome": {"advice_code": null, "network_advice_code": null,
  "network_decline_code": null, "network_status": "approved_by_network", "reason": null,
  "risk_level": "normal", "risk_score": 20, "seller_message": "Payment complete.", "type": "authorized"},
  "paid": true, "payment_intent": null, "payment_method": null, "payment_method_details": null,
  "receipt_email": null, "receipt_number": null, "receipt_url": null, "refunded": false,
  "refunds": {"object": "list", "data": [], "has_more": false, "total_count": 0, "url": null},
  "review": null, "shipping": null, "source": null, "source_transfer": null, "statement_descriptor": null,
  "statement_descriptor_suffix": null, "status": "succeeded", "transfer_data": null, "transfer_group": null},
"card": {"amount_authorized": 0, "authorization_code": null, "brand": "visa", "checks":
  {"address_line1_check": null, "address_postal_code_check": "pass", "cvc_check": "pass"}, "country": "US",
  "exp_month": 12, "exp_year": 2030, "extended_authorization": {"status": "disabled"}, "fingerprint": null,
  "funding": "credit", "incremental_authorization": {"status": "unavailable"}, "installments": null,
  "last4": "4242", "mandate": null, "multicapture": {"status": "unavailable"}, "network": "visa",
  "network_token": {"used": false}, "network_transaction_id": null, "overcapture":
  {"maximum_amount_capturable": 0, "status": "unavailable"}, "regulated_status": "unregulated",
  "three_d_secure": null, "wallet": null},
"us_bank_account": {"account_holder_type": "individual", "account_type": "checking",
  "bank_name": "STRIPE TEST BANK", "fingerprint": null, "last4": "6789", "mandate": null,
  "payment_reference": null, "routing_number": "110000000"},
"refund": {"id": null, "object": "refund", "amount": 0, "balance_transaction": null, "charge": null,
  "created": 0, "currency": null, "customer": null, "customer_account": null, "destination_details": null,
  "metadata": {}, "payment_intent": null, "payment_method": null, "reason": "requested_by_customer",
  "receipt_number": null, "source_transfer_reversal": null, "status": "succeeded", "transfer_reversal": null},
"dispute": {"id": null, "object": "dispute", "amount": 0, "balance_transactions": [], "charge": null,
  "created": 0, "currency": null, "enhanced_eligibility_types": [], "evidence": {"access_activity_log": null,
  "billing_address": null, "cancellation_policy": null, "cancellation_policy_disclosure": null,
  "cancellation_rebuttal": null, "customer_communication": null, "customer_email_address": null,
  "customer_name": null, "customer_purchase_ip": null, "customer_signature": null,
  "duplicate_charge_documentation": null, "duplicate_charge_explanation": null, "duplicate_charge_id": null,
  "enhanced_evidence": {}, "product_description": null, "receipt": null, "refund_policy": null,
  "refund_policy_disclosure": null, "refund_refusal_explanation": null, "service_date": null,
  "service_documentation": null, "shipping_address": null, "shipping_carrier": null, "shipping_date": null,
  "shipping_documentation": null, "shipping_tracking_number": null, "uncategorized_file": null,
  "uncategorized_text": null}, "evidence_details": {"due_by": 0, "enhanced_eligibility": {},
  "has_evidence": false, "past_due": false, "submission_count": 0}, "is_charge_refundable": false,
  "livemode": false, "metadata": {}, "payment_intent": null, "payment_method_details": {"type": "card",
  "card": {"brand": "visa", "case_type": "chargeback", "network": "visa", "network_reason_code": "10.4"}},
  "reason": "fraudulent", "status": "needs_response"}
}""")


def shape(kind: str, **values: Any) -> Json:
    """A new object of the kind: Stripe's full shape with our values filled in."""
    return {**snapshot(_SHAPES[kind]), **values}


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


def _missing(param: str) -> EmulatorError:
    """Stripe's error for an absent required parameter."""
    return EmulatorError(f"Missing required param: {param}.", code="parameter_missing", param=param)


def _at_most(p: Json, param: str, limit: int) -> None:
    """Stripe's error for a string parameter longer than its limit (in characters)."""
    value = p.get(param)
    if isinstance(value, str) and len(value) > limit:
        shown = f"{value[:10]}...{value[-10:]}"  # Stripe shows the ends of a long value
        raise EmulatorError(f"Invalid string: {shown}; must be at most {limit} characters", param=param)


def new_id(prefix: str, length: int = 24) -> str:
    """A Stripe-looking object id such as ``ch_3Kx...``."""
    return f"{prefix}_" + "".join(secrets.choice(_ALNUM) for _ in range(length))


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


def parse_form(pairs: list[tuple[str, str]]) -> Json:
    """Nest bracketed form keys (``a[b][0][c]=v``) into dicts; list indexes stay keys until validated."""
    root: Json = {}
    for key, value in pairs:
        match = _FORM_KEY.fullmatch(key)
        if not match:
            raise EmulatorError(f"Invalid parameter name: {key}", param=key)
        *path, last = [match.group(1), *re.findall(r"\[([^\[\]]*)\]", match.group(2))]
        node = root
        for part in path:
            node = node.setdefault(part or str(len(node)), {})
            if not isinstance(node, dict):
                raise EmulatorError(f"Invalid object: {key}", param=key)
        if isinstance(node.get(last), dict):
            raise EmulatorError(f"Invalid object: {key}", param=key)
        node[last or str(len(node))] = value
    return root


def validate(params: Json, schema: Json, prefix: str = "") -> Json:
    """Refuse unknown parameters; convert form strings to the types the schema names."""
    out: Json = {}
    for key, value in params.items():
        name = f"{prefix}[{key}]" if prefix else key
        if key not in schema:
            raise EmulatorError(f"Received unknown parameter: {name}", code="parameter_unknown", param=name)
        out[key] = _coerce(value, schema[key], name)
    return out


def _coerce(value: Any, spec: Any, name: str) -> Any:
    """Check and convert one parameter value against its spec."""
    if isinstance(spec, list):
        items = _array(value, name)
        return [validate(_object(v, name), spec[0], f"{name}[{i}]") for i, v in enumerate(items)]
    if isinstance(spec, dict):
        return validate(_object(value, name), spec, name)
    if spec == "meta":
        if value == "":  # Stripe's way to send an empty map
            return {}
        return _metadata(_object(value, name), name)
    if spec == "list":
        items = _array(value, name)
        if not all(isinstance(item, str) for item in items):
            raise EmulatorError(f"Invalid array: {name}", param=name)
        return items
    if not isinstance(value, str):
        raise EmulatorError(f"Invalid {spec}: {name} must be a single value", param=name)
    if spec == "int":
        if not re.fullmatch(r"-?\d+", value):
            raise EmulatorError(f"Invalid integer: {value}", code="parameter_invalid_integer", param=name)
        return int(value)
    if spec == "bool":
        if value not in ("true", "false"):
            raise EmulatorError(f"Invalid boolean: {value}", param=name)
        return value == "true"
    return value


def _metadata(entries: Json, name: str) -> dict[str, str]:
    """A metadata map within Stripe's limits (in characters), or Stripe's own error for the first
    limit it breaks: at most 50 keys, keys of at most 40 characters, values of at most 500."""
    if len(entries) > METADATA_MAX_KEYS:
        raise EmulatorError(
            f"Metadata can have up to {METADATA_MAX_KEYS} keys, but you've set {len(entries)}. Email us at "
            "support+metadata@stripe.com for more information.",
            param=name,
        )
    for key, value in entries.items():
        if len(key) > METADATA_MAX_KEY:
            raise EmulatorError(
                f"Metadata keys can have up to {METADATA_MAX_KEY} characters, but you passed in a key that is "
                f"{len(key)} characters. Invalid key: {key}",
                param=name,
            )
        if not isinstance(value, str):  # a nested map (metadata[a][b]=v)
            raise EmulatorError(f"Invalid metadata: {name}[{key}] must be a string", param=name)
        if len(value) > METADATA_MAX_VALUE:
            raise EmulatorError(
                f"Metadata values can have up to {METADATA_MAX_VALUE} characters, but you passed in a value that "
                f"is {len(value)} characters. Invalid value: {value}",
                param=name,
            )
    return dict(entries)


def _object(value: Any, name: str) -> Json:
    """The value as a sub-object, or Stripe's "Invalid object" error."""
    if not isinstance(value, dict):
        raise EmulatorError(f"Invalid object: {name}", param=name)
    return value


def _array(value: Any, name: str) -> list[Any]:
    """An index-keyed dict from the form parser, as a list."""
    if isinstance(value, dict) and value and all(key.isdigit() for key in value):
        return [value[key] for key in sorted(value, key=int)]
    raise EmulatorError(f"Invalid array: {name}", param=name)


@dataclass
class _Checkout:
    """Emulator-side bookkeeping for one Checkout Session."""

    price: str
    product_name: str
    pi_metadata: dict[str, str]
    pi_description: str | None
    method: str = "card"
    charge: str | None = None
    dispute: str | None = None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Stripe counts a redirect from a webhook endpoint as a failed delivery; so do we."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        """Never follow."""
        return None


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


class StripeEmulator:
    """An in-process fake of Stripe: REST subset, hosted checkout page, and signed webhook events."""

    ROUTES: ClassVar[list[tuple[str, re.Pattern[str], str, str]]] = [
        (verb, re.compile(path), kind, handler)
        for verb, path, kind, handler in [
            ("POST", r"/v1/customers", "api", "_create_customer"),
            ("POST", r"/v1/products", "api", "_create_product"),
            ("GET", r"/v1/products/search", "api", "_search_products"),
            ("POST", r"/v1/prices", "api", "_create_price"),
            ("GET", r"/v1/prices", "api", "_list_prices"),
            ("POST", r"/v1/checkout/sessions", "api", "_create_session"),
            ("GET", r"/v1/checkout/sessions", "api", "_list_sessions"),
            ("GET", r"/v1/refunds", "api", "_list_refunds"),
            ("GET", r"/v1/disputes", "api", "_list_disputes"),
            ("GET", r"/v1/events", "api", "_list_events"),
            ("GET", r"/v1/(" + "|".join(COLLECTIONS) + r")/([^/]+)", "api", "_retrieve"),
            ("POST", r"/_emulator/sessions/([^/]+)/(\w+)", "control", "_control_session"),
            ("GET", r"/_emulator/sessions", "control", "_control_sessions"),
            ("POST", r"/_emulator/events/([^/]+)/redeliver", "control", "_control_redeliver"),
            ("GET", r"/_emulator/events", "control", "_control_events"),
            ("POST", r"/_emulator/webhooks", "control", "_control_webhooks"),
            ("GET", r"/checkout/([^/]+)", "page", "_checkout_page"),
            ("POST", r"/checkout/([^/]+)/(pay|pay_later|cancel)", "page", "_checkout_action"),
        ]
    ]

    def __init__(
        self,
        *,
        api_key: str,
        webhook_secret: str,
        webhook_url: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        state_path: Path | None = None,
    ) -> None:
        self.api_key, self.webhook_secret, self.webhook_url = api_key, webhook_secret, webhook_url
        # where `make dev` keeps customers, prices, sessions, payments and events across restarts and
        # crashes: written after every change (`_save`)
        self.state_path = state_path
        self.host, self.port, self.verbose = host, port, False
        self.base_url = f"http://{self._public_host()}:{port}"
        self.events: list[Json] = []
        self.deliveries: list[tuple[str, int]] = []
        # While True, events are made but never sent (as when the webhook endpoint is down for longer
        # than Stripe retries): what `credits reconcile` exists to find. Status 0 in `deliveries`.
        self.drop_deliveries = False
        self._objects: dict[str, Json] = {}
        self._checkouts: dict[str, _Checkout] = {}
        self._inline: set[str] = set()  # made from price_data: never listed or searched
        self._idempotency: dict[str, tuple[str, bytes, str]] = {}
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle and webhooks ----------------------------------------------------------------------

    def start(self) -> str:
        """Serve in a daemon thread; returns the base URL."""
        self._load()
        handler = type("Handler", (_Handler,), {"emulator": self})
        self._server = ThreadingHTTPServer((self.host, self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.base_url = f"http://{self._public_host()}:{self.port}"
        server = self._server
        self._thread = threading.Thread(target=lambda: server.serve_forever(poll_interval=0.05), daemon=True)
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        """Stop serving and release the port (saving the state first, when kept)."""
        self._save()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _save(self) -> None:
        """Write the state, when kept: after every change (a crash of `make dev` loses none of it, as
        DynamoDB Local loses no write), atomically (a temporary file in the same folder, flushed to
        disk, then renamed over the old one: a crash mid-write leaves the previous state whole)."""
        if self.state_path is None:
            return
        with self._lock:  # one writer at a time, and the file always holds a state that was current
            state = {
                "objects": self._objects,
                "checkouts": {k: asdict(v) for k, v in self._checkouts.items()},
                "inline": sorted(self._inline),
                "events": self.events,
            }
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.state_path.with_name(self.state_path.name + ".tmp")
            with tmp.open("w") as handle:
                handle.write(json.dumps(state))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.state_path)
            _fsync_dir(self.state_path.parent)  # the rename itself survives a power cut

    def _load(self) -> None:
        if self.state_path is None or not self.state_path.exists():
            return
        state = json.loads(self.state_path.read_text())
        with self._lock:
            self._objects = state["objects"]
            self._checkouts = {k: _Checkout(**v) for k, v in state["checkouts"].items()}
            self._inline = set(state["inline"])
            self.events = state["events"]

    def _public_host(self) -> str:
        """The host to put in URLs (a wildcard bind is reached through loopback)."""
        return "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host

    def sign(self, payload: bytes, timestamp: int | None = None) -> str:
        """A Stripe-Signature header value for the payload."""
        ts = int(time.time()) if timestamp is None else timestamp
        mac = hmac.new(self.webhook_secret.encode(), f"{ts}.".encode() + payload, hashlib.sha256)
        return f"t={ts},v1={mac.hexdigest()}"

    def deliver(self, event: Json) -> int:
        """POST the event, signed, to webhook_url; returns the HTTP status (0 if unset or unreachable)."""
        with self._lock:
            if event["id"] not in self._objects:
                self._objects[event["id"]] = event
                self.events.append(event)
                self._save()
        payload = json.dumps(event, indent=2).encode()
        status = 0 if self.drop_deliveries else self._post(payload)
        with self._lock:
            self.deliveries.append((event["id"], status))
        return status

    def _post(self, payload: bytes) -> int:
        """Send one webhook request and wait for the answer."""
        if not self.webhook_url:
            return 0
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": USER_AGENT,
            "Stripe-Signature": self.sign(payload),
            "Accept": "*/*; q=0.5, application/xml",
            "Cache-Control": "no-cache",
        }
        request = urllib.request.Request(self.webhook_url, data=payload, headers=headers, method="POST")
        try:
            with _OPENER.open(request, timeout=DELIVERY_TIMEOUT) as response:
                response.read()
                return int(response.status)
        except urllib.error.HTTPError as exc:
            exc.close()
            return exc.code
        except (OSError, http.client.HTTPException, ValueError):
            return 0

    def _emit(self, kind: str, obj: Json) -> Json:
        """Record a new event carrying a snapshot of the object."""
        event: Json = {
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
        self._objects[event["id"]] = event
        self.events.append(event)
        return event

    def _act(self, change: Callable[..., list[Json]], *args: Any) -> tuple[list[Json], list[tuple[str, int]]]:
        """Change state under the lock, then deliver the events outside it (the webhook may call back)."""
        with self._lock:
            try:
                events = change(*args)
            finally:
                self._save()  # kept before any webhook is sent: what the ledger may record, survives
        return events, [(event["id"], self.deliver(event)) for event in events]

    # ---- control: simulate the customer, the bank and the card network -------------------------------

    def pay(self, session_id: str) -> list[Json]:
        """Card payment: the session completes as paid; sends checkout.session.completed."""
        return self._act(self._complete, session_id, "card")[0]

    def pay_later(self, session_id: str) -> list[Json]:
        """Delayed method (bank debit): completes unpaid; sends checkout.session.completed."""
        return self._act(self._complete, session_id, BANK)[0]

    def async_succeed(self, session_id: str) -> list[Json]:
        """The delayed payment clears; sends checkout.session.async_payment_succeeded."""
        return self._act(self._settle, session_id, True)[0]

    def async_fail(self, session_id: str) -> list[Json]:
        """The delayed payment fails; sends checkout.session.async_payment_failed."""
        return self._act(self._settle, session_id, False)[0]

    def refund(self, session_id: str, amount: int | None = None) -> list[Json]:
        """Refund part or (None) the rest of the charge; sends charge.refunded."""
        return self._act(self._refund, session_id, amount)[0]

    def dispute(self, session_id: str) -> list[Json]:
        """Open a fraud chargeback for the whole charge; sends charge.dispute.created."""
        return self._act(self._dispute, session_id)[0]

    def close_dispute(self, session_id: str, status: str) -> list[Json]:
        """Close the dispute as "won" or "lost"; sends charge.dispute.closed."""
        return self._act(self._close_dispute, session_id, status)[0]

    def expire(self, session_id: str) -> list[Json]:
        """Expire an open session; sends checkout.session.expired."""
        return self._act(self._expire, session_id)[0]

    def _get(self, kind: str, obj_id: str, *, param: str = "id", status: int = 404) -> Json:
        """A stored object of the given type, or Stripe's resource_missing error."""
        obj = self._objects.get(obj_id)
        if obj is None or obj["object"] != kind:
            raise EmulatorError(f"No such {kind}: '{obj_id}'", status=status, code="resource_missing", param=param)
        return obj

    def _checkout(self, session_id: str) -> tuple[Json, _Checkout]:
        """A session and its bookkeeping."""
        return self._get("checkout.session", session_id, param="session"), self._checkouts[session_id]

    def _complete(self, session_id: str, method: str) -> list[Json]:
        """The customer submits the checkout form with a card or a delayed method."""
        session, checkout = self._checkout(session_id)
        if session["status"] != "open" or session["expires_at"] <= time.time():
            state = session["status"] if session["status"] != "open" else "expired"
            raise EmulatorError(f"Checkout session {session_id} is {state}.", code="session_not_open")
        checkout.method = method
        intent = self._store(self._payment_intent(session, checkout))
        customer = self._objects.get(session["customer"] or "", {})
        email = customer.get("email") or session["customer_email"] or "customer@example.com"
        session.update(
            status="complete",
            payment_intent=intent["id"],
            url=None,
            customer_details=shape("customer_details", email=email, name=customer.get("name")),
        )
        if method == "card":
            self._charge_succeeded(session, checkout, intent)
        return [self._emit("checkout.session.completed", session)]

    def _settle(self, session_id: str, succeeded: bool) -> list[Json]:
        """A pending delayed payment clears or fails."""
        session, checkout = self._checkout(session_id)
        intent = self._objects.get(session["payment_intent"] or "")
        if intent is None or intent["status"] != "processing":
            raise EmulatorError(
                f"Checkout session {session_id} has no pending delayed payment.", code="payment_not_pending"
            )
        if succeeded:
            self._charge_succeeded(session, checkout, intent)
            return [self._emit("checkout.session.async_payment_succeeded", session)]
        intent.update(
            status="requires_payment_method",
            processing=None,
            last_payment_error={
                "code": "insufficient_funds",
                "message": "The customer's account has insufficient funds to cover this payment.",
                "type": "card_error",
                "decline_code": None,
                "doc_url": None,
                "param": None,
            },
        )
        return [self._emit("checkout.session.async_payment_failed", session)]

    def _charge_succeeded(self, session: Json, checkout: _Checkout, intent: Json) -> None:
        """Money moved: create the charge and mark the intent and the session paid."""
        charge = self._store(self._charge(session, checkout, intent))
        checkout.charge = charge["id"]
        intent.update(
            status="succeeded",
            amount_received=intent["amount"],
            latest_charge=charge["id"],
            processing=None,
            payment_method=charge["payment_method"],
        )
        session["payment_status"] = "paid"

    def _paid_charge(self, session_id: str) -> tuple[_Checkout, Json]:
        """The session's successful charge, or an error if nothing was paid."""
        _, checkout = self._checkout(session_id)
        if checkout.charge is None:
            raise EmulatorError(f"Checkout session {session_id} has no successful charge.", code="no_charge")
        return checkout, self._objects[checkout.charge]

    def _refund(self, session_id: str, amount: int | None) -> list[Json]:
        """Refund the charge; amount_refunded stays cumulative."""
        checkout, charge = self._paid_charge(session_id)
        remaining = charge["amount_captured"] - charge["amount_refunded"]
        if checkout.dispute and self._objects[checkout.dispute]["status"] in ("needs_response", "lost"):
            raise EmulatorError(
                f"Charge {charge['id']} has been charged back; cannot issue a refund.", code="charge_disputed"
            )
        if remaining <= 0:
            raise EmulatorError(f"Charge {charge['id']} has already been refunded.", code="charge_already_refunded")
        amount = remaining if amount is None else amount
        if not 0 < amount <= remaining:
            raise EmulatorError(
                # as Stripe says it, in money: "Refund amount ($9.99) is greater than unrefunded amount on
                # charge ($2.50)"
                f"Refund amount ({format_amount(amount, charge['currency'])}) is greater than unrefunded amount "
                f"on charge ({format_amount(remaining, charge['currency'])})."
                if amount > remaining
                else f"Refund amount ({format_amount(amount, charge['currency'])}) must be positive.",
                code="amount_too_large",
                param="amount",
            )
        refund = self._store(
            shape(
                "refund",
                id=new_id("re"),
                amount=amount,
                balance_transaction=new_id("txn"),
                charge=charge["id"],
                created=int(time.time()),
                currency=charge["currency"],
                customer=charge["customer"],
                payment_intent=charge["payment_intent"],
                payment_method=charge["payment_method"],
                destination_details={"type": checkout.method, checkout.method: {"reference": None}},
            )
        )
        charge["refunds"]["data"].insert(0, refund)
        charge["refunds"]["total_count"] = len(charge["refunds"]["data"])
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] >= charge["amount_captured"]
        return [self._emit("charge.refunded", charge)]

    def _dispute(self, session_id: str) -> list[Json]:
        """The cardholder's bank opens a chargeback."""
        checkout, charge = self._paid_charge(session_id)
        if checkout.dispute:
            raise EmulatorError(f"Charge {charge['id']} is already disputed.", code="charge_disputed")
        now = int(time.time())
        dispute = self._store(
            shape(
                "dispute",
                id=new_id("dp"),
                amount=charge["amount"],
                charge=charge["id"],
                created=now,
                currency=charge["currency"],
                payment_intent=charge["payment_intent"],
            )
        )
        dispute["evidence_details"]["due_by"] = now + 7 * DAY
        checkout.dispute, charge["disputed"] = dispute["id"], True
        return [self._emit("charge.dispute.created", dispute)]

    def _close_dispute(self, session_id: str, status: str) -> list[Json]:
        """The network decides the dispute."""
        checkout, charge = self._paid_charge(session_id)
        if status not in ("won", "lost"):
            raise EmulatorError(f"Invalid status: {status!r} (expected 'won' or 'lost').", param="status")
        if checkout.dispute is None:
            raise EmulatorError(f"Charge {charge['id']} has no dispute to close.", code="no_dispute")
        dispute = self._objects[checkout.dispute]
        if dispute["status"] in ("won", "lost"):
            raise EmulatorError(f"Dispute {dispute['id']} is already closed.", code="dispute_closed")
        dispute["status"] = status
        return [self._emit("charge.dispute.closed", dispute)]

    def _expire(self, session_id: str) -> list[Json]:
        """An open session expires."""
        session, _ = self._checkout(session_id)
        if session["status"] != "open":
            raise EmulatorError(
                f"Checkout session {session_id} is {session['status']}, not open.", code="session_not_open"
            )
        session.update(status="expired", url=None)
        return [self._emit("checkout.session.expired", session)]

    # ---- object shapes (those of Stripe's OpenAPI fixtures, with our values) -------------------------

    def _store(self, obj: Json) -> Json:
        """Keep an object so it can be retrieved, listed and expanded."""
        self._objects[obj["id"]] = obj
        return obj

    def _all(self, kind: str) -> list[Json]:
        """Stored objects of one type, newest first, without inline (price_data) ones."""
        objects = reversed(self._objects.values())
        return [o for o in objects if o["object"] == kind and o["id"] not in self._inline]

    def _product(self, name: str, p: Json) -> Json:
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

    def _price(self, product: str, currency: str, amount: int, p: Json) -> Json:
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
            product=product,
            unit_amount=amount,
            unit_amount_decimal=str(amount),
        )

    def _payment_intent(self, session: Json, checkout: _Checkout) -> Json:
        """The PaymentIntent Checkout creates when the customer pays."""
        intent_id, delayed = new_id("pi"), checkout.method != "card"
        return shape(
            "payment_intent",
            id=intent_id,
            amount=session["amount_total"],
            client_secret=f"{intent_id}_secret_{new_id('s')[2:]}",
            created=int(time.time()),
            currency=session["currency"],
            customer=session["customer"],
            description=checkout.pi_description,
            metadata=dict(checkout.pi_metadata),
            payment_method_types=[checkout.method],
            processing={"type": checkout.method} if delayed else None,
            status="processing" if delayed else "requires_confirmation",
        )

    def _charge(self, session: Json, checkout: _Checkout, intent: Json) -> Json:
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
        charge = shape(
            "charge",
            id=charge_id,
            amount=amount,
            amount_captured=amount,
            balance_transaction=new_id("txn"),
            created=int(time.time()),
            currency=intent["currency"],
            customer=intent["customer"],
            description=intent["description"],
            metadata=dict(intent["metadata"]),
            payment_intent=intent["id"],
            payment_method=new_id("pm"),
            payment_method_details={method: details, "type": method},
        )
        billing = session["customer_details"] or {}
        charge["billing_details"].update({k: billing.get(k) for k in ("address", "email", "name")})
        charge["refunds"]["url"] = f"/v1/charges/{charge_id}/refunds"
        return charge

    def _session(self, session_id: str, p: Json, price: Json) -> Json:
        """An open Checkout Session for one unit of the price."""
        now, amount, customer = int(time.time()), price["unit_amount"], p.get("customer")
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
            currency=price["currency"],
            customer=customer,
            customer_creation=None if customer else "if_required",
            expires_at=p.get("expires_at", now + DAY),
            url=f"{self.base_url}/checkout/{session_id}",
            **{k: p[k] for k in given if k in p},
        )

    # ---- Stripe REST endpoints (run under the lock) --------------------------------------------------

    def _create_customer(self, params: Json) -> Json:
        """POST /v1/customers."""
        p = validate(params, CUSTOMER_PARAMS)
        return self._store(
            shape(
                "customer",
                id=new_id("cus", 14),
                created=int(time.time()),
                description=p.get("description"),
                email=p.get("email"),
                invoice_prefix=secrets.token_hex(4).upper(),
                metadata=p.get("metadata", {}),
                name=p.get("name"),
            )
        )

    def _create_product(self, params: Json) -> Json:
        """POST /v1/products."""
        p = validate(params, PRODUCT_PARAMS)
        if not p.get("name"):
            raise _missing("name")
        return self._store(self._product(p["name"], p))

    def _create_price(self, params: Json) -> Json:
        """POST /v1/prices; a lookup_key is unique unless transfer_lookup_key moves it, as in Stripe."""
        p = validate(params, PRICE_PARAMS)
        if "product" not in p:
            raise _missing("product")
        self._get("product", p["product"], param="product", status=400)
        currency, amount = self._money(p, "")
        key = p.get("lookup_key")
        holders = [x for x in self._all("price") if key and x["lookup_key"] == key]
        if holders and not p.get("transfer_lookup_key"):
            raise EmulatorError(f"A price (`{holders[0]['id']}`) already uses that lookup key.", param="lookup_key")
        for holder in holders:
            holder["lookup_key"] = None
        return self._store(self._price(p["product"], currency, amount, p))

    def _money(self, p: Json, prefix: str) -> tuple[str, int]:
        """Validated (currency, unit_amount) of a price or of price_data."""

        def name(field: str) -> str:
            return f"{prefix}[{field}]" if prefix else field

        for field in ("currency", "unit_amount"):
            if field not in p:
                raise _missing(name(field))
        if not re.fullmatch(r"[a-zA-Z]{3}", p["currency"]):
            raise EmulatorError(f"Invalid currency: {p['currency']}", param=name("currency"))
        if p["unit_amount"] < 0:
            raise EmulatorError("Invalid non-negative integer", param=name("unit_amount"))
        return p["currency"].lower(), p["unit_amount"]

    def _list_prices(self, params: Json) -> Json:
        """GET /v1/prices filtered by lookup_keys, active and product."""
        p = validate(params, PRICE_LIST_PARAMS)
        return self._list(
            [
                x
                for x in self._all("price")
                if ("lookup_keys" not in p or x["lookup_key"] in p["lookup_keys"])
                and all(x[f] == p[f] for f in ("active", "product") if f in p)
            ],
            p,
            "/v1/prices",
        )

    def _search_products(self, params: Json) -> Json:
        """GET /v1/products/search, for the one query form ``metadata['key']:'value'``."""
        p = validate(params, SEARCH_PARAMS)
        match = _METADATA_QUERY.fullmatch(p.get("query", ""))
        if not match:
            raise EmulatorError(
                "This emulator supports only search queries of the form metadata['key']:'value'.",
                param="query",
            )
        found = [x for x in self._all("product") if x["metadata"].get(match["key"]) == match["value"]]
        return {**self._list(found, p, "/v1/products/search"), "object": "search_result", "next_page": None}

    def _create_session(self, params: Json) -> Json:
        """POST /v1/checkout/sessions for exactly one unit of a price or of price_data."""
        p = validate(params, SESSION_PARAMS)
        for required in ("mode", "line_items", "success_url"):
            if required not in p:
                raise _missing(required)
        if p["mode"] != "payment":
            raise EmulatorError(f"Invalid mode: {p['mode']} (the emulator supports payment).", param="mode")
        _at_most(p, "client_reference_id", CLIENT_REFERENCE_ID_MAX)
        if len(p["line_items"]) != 1:
            raise EmulatorError("This emulator supports exactly one line item.", param="line_items")
        item = p["line_items"][0]
        if item.get("quantity", 1) != 1:
            raise EmulatorError("This emulator supports only quantity 1.", param="line_items[0][quantity]")
        if p.get("customer"):
            self._get("customer", p["customer"], param="customer", status=400)
        if ("price" in item) == ("price_data" in item):
            raise EmulatorError(
                "You must specify either `price` or `price_data` in each line item.",
                code="parameter_missing",
                param="line_items[0][price]",
            )
        if "price" in item:
            price = self._get("price", item["price"], param="line_items[0][price]", status=400)
            if not price["active"]:
                raise EmulatorError(
                    "The price specified is inactive. This field only accepts active prices.",
                    param="line_items[0][price]",
                )
            name = self._objects[price["product"]]["name"]
        else:
            data = item["price_data"]
            currency, amount = self._money(data, "line_items[0][price_data]")
            name = data.get("product_data", {}).get("name")
            if not name:
                raise _missing("line_items[0][price_data][product_data][name]")
            product = self._store(self._product(name, {**data["product_data"], "active": False}))
            price = self._store(self._price(product["id"], currency, amount, {"active": False}))
            self._inline.update([product["id"], price["id"]])
        session_id = "cs_test_a1" + "".join(secrets.choice(_ALNUM) for _ in range(56))
        intent = p.get("payment_intent_data", {})
        self._checkouts[session_id] = _Checkout(
            price["id"], name, intent.get("metadata", {}), intent.get("description")
        )
        return self._store(self._session(session_id, p, price))

    def _list_sessions(self, params: Json) -> Json:
        """GET /v1/checkout/sessions filtered by payment_intent, customer, status or created."""
        p = validate(params, SESSION_LIST_PARAMS)
        return self._list(
            [
                x
                for x in self._all("checkout.session")
                if all(x[f] == p[f] for f in ("payment_intent", "customer", "status") if f in p)
            ],
            p,
            "/v1/checkout/sessions",
        )

    def _list_refunds(self, params: Json) -> Json:
        """GET /v1/refunds filtered by charge, payment_intent or created."""
        p = validate(params, REFUND_LIST_PARAMS)
        found = [x for x in self._all("refund") if all(x[f] == p[f] for f in ("charge", "payment_intent") if f in p)]
        return self._list(found, p, "/v1/refunds")

    def _list_disputes(self, params: Json) -> Json:
        """GET /v1/disputes filtered by charge, payment_intent or created."""
        p = validate(params, DISPUTE_LIST_PARAMS)
        found = [x for x in self._all("dispute") if all(x[f] == p[f] for f in ("charge", "payment_intent") if f in p)]
        return self._list(found, p, "/v1/disputes")

    def _list_events(self, params: Json) -> Json:
        """GET /v1/events filtered by type, types[] or created (Stripe keeps 30 days of them)."""
        p = validate(params, EVENT_LIST_PARAMS)
        wanted = set(p.get("types", [])) | ({p["type"]} if "type" in p else set())
        return self._list([x for x in self._all("event") if not wanted or x["type"] in wanted], p, "/v1/events")

    def _control_webhooks(self, params: Json) -> Json:
        """POST /_emulator/webhooks drop=true|false: stop (or resume) sending events."""
        p = validate(params, {"drop": "bool"})
        self.drop_deliveries = bool(p.get("drop", self.drop_deliveries))
        return {"dropDeliveries": self.drop_deliveries}

    def _retrieve(self, collection: str, obj_id: str, params: Json) -> Json:
        """GET /v1/{collection}/{id}."""
        validate(params, _EXPAND)
        kind = COLLECTIONS[collection]
        return self._get(kind, obj_id, param="session" if kind == "checkout.session" else "id")

    @staticmethod
    def _list(items: list[Json], p: Json, url: str) -> Json:
        """One page of a list object, as Stripe pages: `items` newest first (as `_all` gives them,
        ties in `created` by the order they were made), narrowed to `created`, then the page after
        `starting_after` (or before `ending_before`), at most `limit` long."""
        limit = p.get("limit", 10)
        if not 1 <= limit <= 100:
            raise EmulatorError("Invalid limit: must be between 1 and 100.", param="limit")
        bounds = p.get("created", {})
        tests = {"gt": int.__gt__, "gte": int.__ge__, "lt": int.__lt__, "lte": int.__le__}
        items = [x for x in items if all(tests[op](int(x["created"]), v) for op, v in bounds.items())]
        ids = [x["id"] for x in items]
        if "starting_after" in p or "ending_before" in p:
            cursor = p.get("starting_after", p.get("ending_before"))
            if cursor not in ids:
                raise EmulatorError(f"No such object: '{cursor}'", code="resource_missing", param="starting_after")
            at = ids.index(cursor)
            if "starting_after" in p:
                items = items[at + 1 :]
            else:
                before = items[:at]
                return {"object": "list", "data": before[-limit:], "has_more": len(before) > limit, "url": url}
        return {"object": "list", "data": items[:limit], "has_more": len(items) > limit, "url": url}

    def _expand(self, obj: Any, paths: list[str]) -> Any:
        """A copy of a response with the ids on the given dotted paths replaced by their objects."""
        out = snapshot(obj)
        for path in paths:
            head, _, rest = path.partition(".")
            if head == "data" and isinstance(out.get("data"), list):
                out["data"] = [self._expand(item, [rest]) for item in out["data"]]
            elif isinstance(out.get(head), str) and out[head] in self._objects:
                out[head] = self._expand(self._objects[out[head]], [rest] if rest else [])
            elif head not in out or isinstance(out[head], str | int | list):
                raise EmulatorError(f"This property cannot be expanded ({path}).", param="expand")
        return out

    # ---- HTTP plumbing -------------------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Reply:
        """Route one HTTP request; returns (status, headers, body)."""
        url, request_id = urlsplit(target), new_id("req", 14)
        lowered, base = {k.lower(): v for k, v in headers.items()}, {"Request-Id": request_id}
        route = next(
            (
                (kind, name, m)
                for verb, pattern, kind, name in self.ROUTES
                if verb == method and (m := pattern.fullmatch(url.path))
            ),
            None,
        )
        if route is None:
            error = EmulatorError(
                f"Unrecognized request URL ({method}: {url.path}). Please see "
                "https://stripe.com/docs or we can help at https://support.stripe.com/.",
                status=404,
            )
            return self._json(404, error.body(), base)
        kind, name, match = route
        try:
            params = self._params(url.query if method == "GET" else body.decode(errors="replace"), lowered)
            handler = getattr(self, name)
            if kind == "page":
                status, extra, out = handler(*match.groups(), params)
                return status, {**base, **extra}, out
            if kind == "control":
                return self._json(200, handler(*match.groups(), params), base)
            return self._api(handler, method, url.path, match.groups(), params, lowered, base)
        except EmulatorError as exc:
            return self._json(exc.status, exc.body(), base)
        except Exception:
            logger.exception("stripe emulator failed on %s %s", method, url.path)
            error = EmulatorError("The emulator failed; see its log.", status=500, kind="api_error")
            return self._json(500, error.body(), {**base, "Stripe-Should-Retry": "false"})

    @staticmethod
    def _params(raw: str, headers: Mapping[str, str]) -> Json:
        """Form-encoded (or, for control calls, JSON) parameters as nested dicts."""
        if not headers.get("content-type", "").startswith("application/json"):
            return parse_form(parse_qsl(raw, keep_blank_values=True))
        try:
            loaded = _object(json.loads(raw or "{}"), "body")
        except ValueError:
            raise EmulatorError("Invalid JSON body.") from None
        return {k: str(v) if isinstance(v, int | float) else v for k, v in loaded.items()}

    def _api(
        self,
        handler: Callable[..., Json],
        method: str,
        path: str,
        args: tuple[Any, ...],
        params: Json,
        headers: Mapping[str, str],
        base: dict[str, str],
    ) -> Reply:
        """Authenticate, honour Idempotency-Key, and run the handler under the lock."""
        self._authenticate(headers)
        key = headers.get("idempotency-key") if method == "POST" else None
        if key is not None and not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX:
            raise EmulatorError(
                f"Idempotent key length is {len(key)} characters long, which is outside accepted lengths. "
                f"Idempotent Keys must be 1-{IDEMPOTENCY_KEY_MAX} characters long. If you're looking for a "
                "decent generator, try using a UUID defined by IETF RFC 4122.",
                kind="idempotency_error",
            )
        fingerprint = json.dumps([method, path, params], sort_keys=True)
        base = {
            **base,
            "Content-Type": "application/json",
            "Stripe-Version": headers.get("stripe-version", API_VERSION),
        }
        with self._lock:
            if key and key in self._idempotency:
                original, body, original_id = self._idempotency[key]
                if original != fingerprint:
                    raise EmulatorError(
                        "Keys for idempotent requests can only be used with the same parameters they were "
                        f"first used with. Try using a key other than '{key}' if you meant to execute a "
                        "different request.",
                        kind="idempotency_error",
                    )
                return (
                    200,
                    {
                        **base,
                        "Idempotency-Key": key,
                        "Idempotent-Replayed": "true",
                        "Original-Request": original_id,
                    },
                    body,
                )
            expand = _coerce(params["expand"], "list", "expand") if "expand" in params else []
            try:
                result = self._expand(handler(*args, params), expand)
            finally:
                if method == "POST":  # a change (customer, product, price, session): kept now
                    self._save()
            body = json.dumps(result, indent=2).encode()
            if key:  # like Stripe, only results of requests that passed validation are kept
                self._idempotency[key] = (fingerprint, body, base["Request-Id"])
        return 200, {**base, "Idempotency-Key": key} if key else base, body

    def _authenticate(self, headers: Mapping[str, str]) -> None:
        """The Bearer secret key must be ours."""
        scheme, _, key = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise EmulatorError(
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                "YOUR_SECRET_KEY').",
                status=401,
            )
        if not hmac.compare_digest(key.strip().encode(), self.api_key.encode()):
            masked = key[:8] + "*" * max(len(key) - 12, 4) + key[-4:] if len(key) > 12 else "****"
            raise EmulatorError(f"Invalid API Key provided: {masked}", status=401)

    @staticmethod
    def _json(status: int, payload: Json, headers: dict[str, str]) -> Reply:
        """A JSON reply."""
        return status, {**headers, "Content-Type": "application/json"}, json.dumps(payload, indent=2).encode()

    # ---- control endpoints and the hosted checkout page ----------------------------------------------

    def _control_session(self, session_id: str, action: str, params: Json) -> Json:
        """POST /_emulator/sessions/{id}/{action}."""
        amount = params.get("amount")
        changes: dict[str, Callable[[], list[Json]]] = {
            "pay": lambda: self._complete(session_id, "card"),
            "pay_later": lambda: self._complete(session_id, BANK),
            "async_succeed": lambda: self._settle(session_id, True),
            "async_fail": lambda: self._settle(session_id, False),
            "refund": lambda: self._refund(
                session_id, None if amount in (None, "") else _coerce(amount, "int", "amount")
            ),
            "dispute": lambda: self._dispute(session_id),
            "close_dispute": lambda: self._close_dispute(session_id, str(params.get("status", ""))),
            "expire": lambda: self._expire(session_id),
        }
        if action not in changes:
            raise EmulatorError(f"Unknown action: {action}", status=404)
        events, deliveries = self._act(changes[action])
        return {"events": [e["id"] for e in events], "deliveries": [list(d) for d in deliveries]}

    def _control_redeliver(self, event_id: str, params: Json) -> Json:
        """POST /_emulator/events/{id}/redeliver."""
        with self._lock:
            event = self._get("event", event_id)
        return {"events": [event_id], "deliveries": [[event_id, self.deliver(event)]]}

    def _control_events(self, params: Json) -> Json:
        """GET /_emulator/events: every event and delivery so far."""
        with self._lock:
            return {"events": snapshot(self.events), "deliveries": [list(d) for d in self.deliveries]}

    def _control_sessions(self, params: Json) -> Json:
        """GET /_emulator/sessions: every Checkout Session, newest first, as a summary of what was paid
        and which control actions it allows now (the local page's test tools show them); filtered by
        `client_reference_id` and `customer` when given."""
        wanted = {k: params[k] for k in ("client_reference_id", "customer") if k in params}
        with self._lock:
            found = [s for s in self._all("checkout.session") if all(s[k] == v for k, v in wanted.items())]
            return {"sessions": [self._control_summary(session) for session in found]}

    def _control_summary(self, session: Json) -> Json:
        """One session for the test tools: its state (open, expired, processing, failed, paid), what
        was bought, refunds and dispute so far, and the control actions that apply to it now."""
        checkout = self._checkouts[session["id"]]
        intent = self._objects.get(session["payment_intent"] or "")
        charge = self._objects.get(checkout.charge or "")
        dispute = self._objects.get(checkout.dispute or "")
        if session["status"] == "open":
            state = "open" if session["expires_at"] > time.time() else "expired"
        elif session["status"] != "complete":
            state = str(session["status"])
        elif session["payment_status"] == "paid":
            state = "paid"
        else:
            state = "processing" if intent is not None and intent["status"] == "processing" else "failed"
        actions = ["async_succeed", "async_fail"] if state == "processing" else []
        refunded = charge["amount_refunded"] if charge else 0
        dispute_status = dispute["status"] if dispute else None
        if charge is not None:
            if refunded < charge["amount_captured"] and dispute_status not in ("needs_response", "lost"):
                actions.append("refund")
            if dispute is None:
                actions.append("dispute")
            elif dispute_status == "needs_response":
                actions.append("close_dispute")
        return {
            "id": session["id"],
            "created": session["created"],
            "state": state,
            "product": checkout.product_name,
            "credits": self._control_credits(session, checkout),
            "amount": session["amount_total"],
            "currency": session["currency"],
            "method": checkout.method if session["status"] == "complete" else None,
            "paymentIntent": intent["id"] if intent else None,
            "refunded": refunded,
            "dispute": dispute_status,
            "actions": actions,
        }

    def _control_credits(self, session: Json, checkout: _Checkout) -> int | None:
        """The credits a session sells: its metadata's (the product writes the terms of the sale there
        at checkout), else its price's metadata (the catalog's Stripe sync writes them there)."""
        price = self._objects.get(checkout.price, {})
        for metadata in (session.get("metadata") or {}, price.get("metadata") or {}):
            text = str(metadata.get("credits", ""))
            if re.fullmatch(r"[0-9]{1,10}", text) and int(text) > 0:
                return int(text)
        return None

    def _checkout_page(self, session_id: str, params: Json, notice: str = "", status: int = 200) -> Reply:
        """GET /checkout/{id}: the hosted payment page."""
        with self._lock:
            if session_id not in self._checkouts:
                return _html(404, "Not found", "<h1>No such checkout session</h1>")
            session, checkout = snapshot(self._objects[session_id]), self._checkouts[session_id]
            name, credits = checkout.product_name, self._control_credits(session, checkout)
            state = self._control_summary(session)["state"]
        amount, path = (
            format_amount(session["amount_total"], session["currency"]),
            f"/checkout/{html.escape(session_id)}",
        )
        # After paying (or on its way out), the page links back to the site: Back is never a dead end.
        back_to = session["success_url" if session["status"] == "complete" else "cancel_url"] or ""
        back = (
            f'<a class="back" id="back" href="{html.escape(back_to.replace("{CHECKOUT_SESSION_ID}", session_id))}">'
            "Back to the site</a>"
            if back_to
            else ""
        )
        if state == "failed":
            action = f'<p class="note failed" id="state">This checkout session\'s payment failed.</p>{back}'
        elif session["status"] == "complete":
            pending = "" if state == "paid" else " The payment is still processing."
            action = f'<p class="note" id="state">This checkout session is already paid.{pending}</p>{back}'
        elif state == "expired":
            action = f'<p class="note" id="state">This checkout session has expired.</p>{back}'
        else:
            action = "".join(
                [
                    f'<form method="post" action="{path}/pay">',
                    f'<button id="pay" class="primary" formaction="{path}/pay">Pay {amount}</button>',
                    f'<button id="pay-later" formaction="{path}/pay_later">Pay later (async)</button>',
                    f'<button id="cancel" class="link" formaction="{path}/cancel">Cancel</button>',
                    "</form>",
                ]
            )
        return _html(
            status,
            f"Pay {amount}",
            "".join(
                [
                    '<p class="label">Local Stripe emulator — no real payment</p>',
                    f'<h1 id="product">{html.escape(name)}</h1>',
                    f'<p class="credits" id="credits">{credits:,} {"credit" if credits == 1 else "credits"}</p>'
                    if credits
                    else "",
                    f'<p class="amount" id="amount">{amount}</p>',
                    f'<p class="error" id="notice">{html.escape(notice)}</p>' if notice else "",
                    action,
                ]
            ),
        )

    def _checkout_action(self, session_id: str, action: str, params: Json) -> Reply:
        """POST /checkout/{id}/{pay|pay_later|cancel}: act, then redirect as Stripe's hosted page does."""
        with self._lock:
            session = snapshot(self._checkout(session_id)[0])
        if action != "cancel":
            try:
                self._act(self._complete, session_id, "card" if action == "pay" else BANK)
            except EmulatorError as exc:
                return self._checkout_page(session_id, params, exc.message, 409)
        target = session["cancel_url" if action == "cancel" else "success_url"]
        if not target:
            return self._checkout_page(session_id, params, "Checkout cancelled.")
        return 303, {"Location": target.replace("{CHECKOUT_SESSION_ID}", session_id)}, b""


_STYLE = """*{box-sizing:border-box}body{margin:0;min-height:100vh;display:flex;align-items:center;
justify-content:center;background:#f6f9fc;color:#1a1f36;font:16px/1.5 system-ui,-apple-system,sans-serif}
main{width:min(420px,100%);margin:16px;padding:32px;background:#fff;border-radius:12px;
box-shadow:0 6px 24px rgba(50,50,93,.12)}.label{display:inline-block;margin:0;padding:4px 10px;
border-radius:999px;background:#fff4e5;color:#8a4b00;font-size:13px;font-weight:600}
h1{margin:20px 0 4px;font-size:20px}.amount{margin:0 0 24px;font-size:34px;font-weight:700}
button{display:block;width:100%;margin-top:12px;padding:12px;border:1px solid #cfd7df;border-radius:8px;
background:#fff;font:inherit;cursor:pointer}button.primary{background:#635bff;border-color:#635bff;color:#fff;
font-weight:600}button.link{border:0;color:#697386}.note{padding:12px;border-radius:8px;background:#e6f7ee;
color:#0b6b3a}.note.failed{background:#fdecef;color:#c0123c}.error{color:#c0123c}
.credits{margin:0;color:#635bff;font-weight:600}.back{display:block;margin-top:16px;padding:12px;
border-radius:8px;background:#635bff;color:#fff;font-weight:600;text-align:center;text-decoration:none}
.back::before{content:"\\2190  "}.back:focus-visible{outline:3px solid rgba(99,91,255,.4);outline-offset:2px}"""


def _fsync_dir(directory: Path) -> None:
    """Flush a folder's entries (a rename in it) to disk, where the platform allows it."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some platforms and file systems cannot fsync a folder
    finally:
        os.close(descriptor)


def _html(status: int, title: str, content: str) -> Reply:
    """A small self-contained HTML page."""
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
        f'content="width=device-width,initial-scale=1"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body><main>{content}</main></body></html>"
    )
    return status, {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"}, page.encode()


class _Handler(BaseHTTPRequestHandler):
    """Hands every request to the emulator's router."""

    emulator: StripeEmulator
    server_version = "stripe-emulator/1.0"

    def _serve(self) -> None:
        """Read the body, route, and write the reply."""
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, headers, out = self.emulator.handle(self.command, self.path, dict(self.headers.items()), body)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Log only when asked to (the command line is verbose; tests are quiet)."""
        if self.emulator.verbose:
            super().log_message(format, *args)


def main(argv: list[str] | None = None) -> None:
    """Command line: serve until Ctrl-C (SIGINT) or SIGTERM."""
    parser = argparse.ArgumentParser(description="Local Stripe emulator: API, checkout page, webhooks.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12111)
    parser.add_argument("--webhook-url", help="where signed events are POSTed (default: only recorded)")
    parser.add_argument("--webhook-secret", default="whsec_local")
    parser.add_argument("--api-key", default="sk_test_local")
    parser.add_argument("--public-url", help="base URL of checkout page links, if not http://HOST:PORT")
    parser.add_argument("--state", type=Path, help="keep the state in this JSON file (every change, as it happens)")
    args = parser.parse_args(argv)
    emulator = StripeEmulator(
        api_key=args.api_key,
        webhook_secret=args.webhook_secret,
        webhook_url=args.webhook_url,
        host=args.host,
        port=args.port,
        state_path=args.state,
    )
    emulator.verbose = True
    # Ctrl-C (SIGINT) and SIGTERM stop it, whatever this process inherited: a background job of a
    # non-interactive shell, nohup and CI runners start it with SIGINT ignored, and Python then installs
    # no KeyboardInterrupt handler of its own. The handler raises (it never sets an Event the main thread
    # waits on: Event.set() in a handler deadlocks if the signal lands while this thread holds its lock).
    previous = {sig: signal.signal(sig, signal.default_int_handler) for sig in STOP_SIGNALS}
    try:
        base_url = emulator.start()
        if args.public_url:
            emulator.base_url = args.public_url.rstrip("/")
        print(
            f"Stripe emulator on {base_url}, webhooks to {args.webhook_url or 'nowhere'}; Ctrl-C stops",
            flush=True,
        )
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        for sig in STOP_SIGNALS:  # a second Ctrl-C does not cut the shutdown short
            signal.signal(sig, signal.SIG_IGN)
        emulator.stop()
        for sig, handler in previous.items():
            if handler is not None:  # None: not installed from Python, nothing to put back
                signal.signal(sig, handler)


if __name__ == "__main__":
    main()
