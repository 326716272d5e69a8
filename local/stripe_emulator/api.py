"""The slice of Stripe's REST API the credits system calls: customers, products (and their search),
prices, Checkout Sessions (payment and setup mode), and the lists of refunds, disputes and events;
retrieval of any object, `expand[]`, Stripe's paging, Bearer secret-key authentication and
`Idempotency-Key` (a card error's 402 is kept and replayed too); the events a request makes are sent
once, after it ran (PaymentIntents and PaymentMethods' own endpoints are in intents)."""

from __future__ import annotations

import hmac
import json
import re
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from local.stripe_emulator import objects
from local.stripe_emulator.cards import CardDeclined
from local.stripe_emulator.objects import ALNUM, API_VERSION, Checkout, EmulatorError, Json, snapshot
from local.stripe_emulator.params import (
    CLIENT_REFERENCE_ID_MAX,
    CUSTOMER_PARAMS,
    DISPUTE_LIST_PARAMS,
    EVENT_LIST_PARAMS,
    EXPAND,
    IDEMPOTENCY_KEY_MAX,
    PRICE_LIST_PARAMS,
    PRICE_PARAMS,
    PRODUCT_PARAMS,
    REFUND_LIST_PARAMS,
    SEARCH_PARAMS,
    SESSION_LIST_PARAMS,
    SESSION_PARAMS,
    at_most,
    coerce,
    missing,
    page,
    validate,
)
from local.stripe_emulator.webhooks import Webhooks

Reply = tuple[int, dict[str, str], bytes]  # an HTTP answer: status, headers, body

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
    "payment_methods": "payment_method",
    "setup_intents": "setup_intent",
}
_METADATA_QUERY = re.compile(r"""\s*metadata\[(['"])(?P<key>[^'"]+)\1\]\s*:\s*(['"])(?P<value>.*)\3\s*""")


def json_reply(status: int, payload: Json, headers: dict[str, str]) -> Reply:
    """A JSON reply."""
    return status, {**headers, "Content-Type": "application/json"}, json.dumps(payload, indent=2).encode()


class RestApi(Webhooks):
    """Stripe's REST endpoints (each run under the lock by `_api`, which authenticates first)."""

    api_key: str
    base_url: str  # the hosted checkout page's, for a session's `url`

    # ---- endpoints ----------------------------------------------------------------------------------

    def _create_customer(self, params: Json) -> Json:
        """POST /v1/customers."""
        return self._store(objects.customer(validate(params, CUSTOMER_PARAMS)))

    def _create_product(self, params: Json) -> Json:
        """POST /v1/products."""
        p = validate(params, PRODUCT_PARAMS)
        if not p.get("name"):
            raise missing("name")
        return self._store(objects.product(p["name"], p))

    def _create_price(self, params: Json) -> Json:
        """POST /v1/prices; a lookup_key is unique unless transfer_lookup_key moves it, as in Stripe."""
        p = validate(params, PRICE_PARAMS)
        if "product" not in p:
            raise missing("product")
        self._get("product", p["product"], param="product", status=400)
        currency, amount = _money(p, "")
        key = p.get("lookup_key")
        holders = [x for x in self._all("price") if key and x["lookup_key"] == key]
        if holders and not p.get("transfer_lookup_key"):
            raise EmulatorError(f"A price (`{holders[0]['id']}`) already uses that lookup key.", param="lookup_key")
        for holder in holders:
            holder["lookup_key"] = None
        return self._store(objects.price(p["product"], currency, amount, p))

    def _list_prices(self, params: Json) -> Json:
        """GET /v1/prices filtered by lookup_keys, active and product."""
        p = validate(params, PRICE_LIST_PARAMS)
        return page(
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
        return {**page(found, p, "/v1/products/search"), "object": "search_result", "next_page": None}

    def _create_session(self, params: Json) -> Json:
        """POST /v1/checkout/sessions: in payment mode for exactly one unit of a price or of price_data
        (saving the card too with payment_intent_data[setup_future_usage]); in setup mode, to save a card."""
        p = validate(params, SESSION_PARAMS)
        for required in ("mode", "success_url"):
            if required not in p:
                raise missing(required)
        if p["mode"] not in ("payment", "setup"):
            raise EmulatorError(f"Invalid mode: {p['mode']} (the emulator supports payment and setup).", param="mode")
        at_most(p, "client_reference_id", CLIENT_REFERENCE_ID_MAX)
        if p.get("customer"):
            self._get("customer", p["customer"], param="customer", status=400)
        own, other = ("payment_intent_data", "setup_intent_data")[:: 1 if p["mode"] == "payment" else -1]
        for name in ("line_items", other) if p["mode"] == "setup" else (other,):
            if name in p:
                raise EmulatorError(f"You can not pass `{name}` in `{p['mode']}` mode.", param=name)
        intent = p.get(own, {})
        usage = intent.get("setup_future_usage")
        if usage not in (None, "off_session", "on_session"):
            raise EmulatorError(
                f"Invalid {own}[setup_future_usage]: must be one of on_session or off_session",
                param=f"{own}[setup_future_usage]",
            )
        session_id = "cs_test_a1" + "".join(secrets.choice(ALNUM) for _ in range(56))
        if p["mode"] == "setup":
            if "currency" not in p and "payment_method_types" not in p:
                raise missing("currency")
            checkout = Checkout("", "", intent.get("metadata", {}), intent.get("description"))
            self._checkouts[session_id] = checkout
            return self._store(objects.session(session_id, p, None, self.base_url))
        if "line_items" not in p:
            raise missing("line_items")
        if len(p["line_items"]) != 1:
            raise EmulatorError("This emulator supports exactly one line item.", param="line_items")
        item = p["line_items"][0]
        if item.get("quantity", 1) != 1:
            raise EmulatorError("This emulator supports only quantity 1.", param="line_items[0][quantity]")
        price, name = self._line_item_price(item)
        if str(p.get("currency") or price["currency"]).lower() != price["currency"]:
            raise EmulatorError("The currency must match the currency of the line items' prices.", param="currency")
        checkout = Checkout(price["id"], name, intent.get("metadata", {}), intent.get("description"))
        checkout.setup_future_usage = usage
        self._checkouts[session_id] = checkout
        return self._store(objects.session(session_id, p, price, self.base_url))

    def _line_item_price(self, item: Json) -> tuple[Json, str]:
        """The price of a session's one line item, and its product's name: an active price of the
        catalog (`price`), or an inline one made of `price_data` (never listed or searched)."""
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
            return price, self._objects[price["product"]]["name"]
        data = item["price_data"]
        currency, amount = _money(data, "line_items[0][price_data]")
        name = data.get("product_data", {}).get("name")
        if not name:
            raise missing("line_items[0][price_data][product_data][name]")
        product = self._store(objects.product(name, {**data["product_data"], "active": False}))
        price = self._store(objects.price(product["id"], currency, amount, {"active": False}))
        self._inline.update([product["id"], price["id"]])
        return price, name

    def _list_sessions(self, params: Json) -> Json:
        """GET /v1/checkout/sessions filtered by payment_intent, customer, status or created."""
        p = validate(params, SESSION_LIST_PARAMS)
        return page(
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
        return page(found, p, "/v1/refunds")

    def _list_disputes(self, params: Json) -> Json:
        """GET /v1/disputes filtered by charge, payment_intent or created."""
        p = validate(params, DISPUTE_LIST_PARAMS)
        found = [x for x in self._all("dispute") if all(x[f] == p[f] for f in ("charge", "payment_intent") if f in p)]
        return page(found, p, "/v1/disputes")

    def _list_events(self, params: Json) -> Json:
        """GET /v1/events filtered by type, types[] or created (Stripe keeps 30 days of them)."""
        p = validate(params, EVENT_LIST_PARAMS)
        wanted = set(p.get("types", [])) | ({p["type"]} if "type" in p else set())
        return page([x for x in self._all("event") if not wanted or x["type"] in wanted], p, "/v1/events")

    def _retrieve(self, collection: str, obj_id: str, params: Json) -> Json:
        """GET /v1/{collection}/{id}."""
        validate(params, EXPAND)
        kind = COLLECTIONS[collection]
        return self._get(kind, obj_id, param="session" if kind == "checkout.session" else "id")

    # ---- what every endpoint shares -----------------------------------------------------------------

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
                return self._replay(key, fingerprint, base)
            expand = coerce(params["expand"], "list", "expand") if "expand" in params else []
            first_event = len(self.events)
            try:
                status, result = 200, self._expand(handler(*args, params), expand)
            except CardDeclined as declined:  # reached execution: kept with its key, as Stripe keeps it
                status, result = declined.status, declined.body()
            finally:
                events = self.events[first_event:]  # what this request changed, to send once
                for event in events:
                    event["request"] = {"id": base["Request-Id"], "idempotency_key": key}
                if method == "POST":  # a change (customer, product, price, session, payment): kept now
                    self._save()
            body = json.dumps(result, indent=2).encode()
            if key:  # like Stripe, only results of requests that passed validation are kept
                self._idempotency[key] = (fingerprint, body, base["Request-Id"], status)
        for event in events:  # outside the lock: the webhook endpoint may call back
            self.deliver(event)
        return status, {**base, "Idempotency-Key": key} if key else base, body

    def _replay(self, key: str, fingerprint: str, base: dict[str, str]) -> Reply:
        """The first answer to a request with this Idempotency-Key, if this request is that one."""
        original, body, original_id, status = self._idempotency[key]
        if original != fingerprint:
            raise EmulatorError(
                "Keys for idempotent requests can only be used with the same parameters they were "
                f"first used with. Try using a key other than '{key}' if you meant to execute a "
                "different request.",
                kind="idempotency_error",
            )
        replayed = {**base, "Idempotency-Key": key, "Idempotent-Replayed": "true", "Original-Request": original_id}
        return status, replayed, body

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


def _money(p: Json, prefix: str) -> tuple[str, int]:
    """Validated (currency, unit_amount) of a price or of price_data."""

    def name(field: str) -> str:
        return f"{prefix}[{field}]" if prefix else field

    for field in ("currency", "unit_amount"):
        if field not in p:
            raise missing(name(field))
    if not re.fullmatch(r"[a-zA-Z]{3}", p["currency"]):
        raise EmulatorError(f"Invalid currency: {p['currency']}", param=name("currency"))
    if p["unit_amount"] < 0:
        raise EmulatorError("Invalid non-negative integer", param=name("unit_amount"))
    return p["currency"].lower(), p["unit_amount"]
