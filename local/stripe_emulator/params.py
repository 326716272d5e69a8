"""The parameters Stripe's endpoints take, and how a request's are read: form-encoded bracketed keys
(`a[b][0][c]=v`) nested into objects, then checked against the endpoint's schema and converted, with
Stripe's own error for anything unknown, malformed or beyond Stripe's limits."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from local.stripe_emulator.objects import EmulatorError, Json

# Stripe's limits, in characters, on what a client sends it (https://docs.stripe.com/api/metadata,
# /api/idempotent_requests, /api/checkout/sessions/create#create_checkout_session-client_reference_id).
METADATA_MAX_KEYS, METADATA_MAX_KEY, METADATA_MAX_VALUE = 50, 40, 500
IDEMPOTENCY_KEY_MAX = 255
CLIENT_REFERENCE_ID_MAX = 200

# Accepted parameters: "str" | "int" | "bool" | "meta" (string map) | "list" (of strings) | a dict
# (sub-object) | [dict] (list of sub-objects). Anything else is refused as parameter_unknown, as Stripe does.
EXPAND: Json = {"expand": "list"}
CUSTOMER_PARAMS: Json = {"email": "str", "name": "str", "description": "str", "metadata": "meta", **EXPAND}
PRODUCT_PARAMS: Json = {"name": "str", "description": "str", "metadata": "meta", "active": "bool", **EXPAND}
PRICE_PARAMS: Json = {
    "product": "str",
    "unit_amount": "int",
    "currency": "str",
    "lookup_key": "str",
    "metadata": "meta",
    "active": "bool",
    "nickname": "str",
    "transfer_lookup_key": "bool",
    **EXPAND,
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
    "payment_intent_data": {"metadata": "meta", "description": "str", "setup_future_usage": "str"},
    "currency": "str",
    "setup_intent_data": {"metadata": "meta", "description": "str"},
    **EXPAND,
}
PAYMENT_INTENT_PARAMS: Json = {
    "amount": "int",
    "currency": "str",
    "customer": "str",
    "payment_method": "str",
    "payment_method_types": "list",
    "automatic_payment_methods": {"enabled": "bool", "allow_redirects": "str"},
    "confirm": "bool",
    "off_session": "str",  # true, or one_off / recurring
    "return_url": "str",
    "metadata": "meta",
    "description": "str",
    **EXPAND,
}
PRICE_LIST_PARAMS: Json = {
    "lookup_keys": "list",
    "active": "bool",
    "product": "str",
    "limit": "int",
    **EXPAND,
}
# Lists page as Stripe's do: newest first, `limit` (1-100), `starting_after` / `ending_before` an id of
# the list, `created[gt|gte|lt|lte]` in Unix seconds.
PAGES: Json = {
    "limit": "int",
    "starting_after": "str",
    "ending_before": "str",
    "created": {"gt": "int", "gte": "int", "lt": "int", "lte": "int"},
}
SESSION_LIST_PARAMS: Json = {"payment_intent": "str", "customer": "str", "status": "str", **PAGES, **EXPAND}
REFUND_LIST_PARAMS: Json = {"charge": "str", "payment_intent": "str", **PAGES, **EXPAND}
DISPUTE_LIST_PARAMS: Json = {"charge": "str", "payment_intent": "str", **PAGES, **EXPAND}
PAYMENT_METHOD_LIST_PARAMS: Json = {"type": "str", "allow_redisplay": "str", **PAGES, **EXPAND}
EVENT_LIST_PARAMS: Json = {"type": "str", "types": "list", **PAGES, **EXPAND}
SEARCH_PARAMS: Json = {"query": "str", "limit": "int", **EXPAND}
_LIST_TESTS = {"gt": int.__gt__, "gte": int.__ge__, "lt": int.__lt__, "lte": int.__le__}
_FORM_KEY = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")


def request_params(raw: str, headers: Mapping[str, str]) -> Json:
    """A request's parameters as nested dicts: form-encoded (a GET's query, a POST's body), or JSON
    (the control calls may send it); `headers` have lower-case names."""
    if not headers.get("content-type", "").startswith("application/json"):
        return parse_form(parse_qsl(raw, keep_blank_values=True))
    try:
        loaded = _object(json.loads(raw or "{}"), "body")
    except ValueError:
        raise EmulatorError("Invalid JSON body.") from None
    return {k: str(v) if isinstance(v, int | float) else v for k, v in loaded.items()}


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
        out[key] = coerce(value, schema[key], name)
    return out


def coerce(value: Any, spec: Any, name: str) -> Any:
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


def page(items: list[Json], p: Json, url: str) -> Json:
    """One page of a list object, as Stripe pages: `items` newest first (as `_all` gives them, ties
    in `created` by the order they were made), narrowed to `created`, then the page after
    `starting_after` (or before `ending_before`), at most `limit` long."""
    limit = p.get("limit", 10)
    if not 1 <= limit <= 100:
        raise EmulatorError("Invalid limit: must be between 1 and 100.", param="limit")
    bounds = p.get("created", {})
    items = [x for x in items if all(_LIST_TESTS[op](int(x["created"]), v) for op, v in bounds.items())]
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


def missing(param: str) -> EmulatorError:
    """Stripe's error for an absent required parameter."""
    return EmulatorError(f"Missing required param: {param}.", code="parameter_missing", param=param)


def at_most(p: Json, param: str, limit: int) -> None:
    """Stripe's error for a string parameter longer than its limit (in characters)."""
    value = p.get(param)
    if isinstance(value, str) and len(value) > limit:
        shown = f"{value[:10]}...{value[-10:]}"  # Stripe shows the ends of a long value
        raise EmulatorError(f"Invalid string: {shown}; must be at most {limit} characters", param=param)


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
