"""The HTTP API's requests and responses (docs/design.md section 6), independent of any web framework.

Handlers parse the event, call one function here, and return its result; bad input raises
ValidationError before anything is read or written.

The request models (pydantic) live by route group in `credits.api_charges`, `api_holds`,
`api_grants`, `api_settings` and `api_purchases`, imported by the route that parses them: nothing
here imports pydantic, so a handler's cold start builds no model. Their names are still served from
here (`api.UseRequest`), imported on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from credits.errors import InvalidJson, UnknownAction, ValidationError
from credits.ledger import (
    CATEGORIES,
    UNCHANGED,
    AccountView,
    AutoTopUp,
    Captured,
    Hold,
    Idempotency,
    Ledger,
    Posted,
    Released,
    Reserved,
    Settings,
    Transaction,
    Unchanged,
    fingerprint,
    iso_ms,
    month_of,
    validate_token,
)

if TYPE_CHECKING:
    from pydantic import BaseModel

    from credits.api_charges import InternalUseRequest as InternalUseRequest
    from credits.api_charges import UseRequest as UseRequest
    from credits.api_fields import Amount as Amount
    from credits.api_fields import Category as Category
    from credits.api_fields import Description as Description
    from credits.api_fields import ExpiresInDays as ExpiresInDays
    from credits.api_fields import Instant as Instant
    from credits.api_fields import Priority as Priority
    from credits.api_fields import Request
    from credits.api_fields import Token as Token
    from credits.api_grants import LOT_FIELDS as LOT_FIELDS
    from credits.api_grants import GrantRequest as GrantRequest
    from credits.api_holds import CaptureRequest as CaptureRequest
    from credits.api_holds import HoldRequest as HoldRequest
    from credits.api_holds import ReleaseRequest as ReleaseRequest
    from credits.api_purchases import CardRequest as CardRequest
    from credits.api_purchases import CheckoutRequest as CheckoutRequest
    from credits.api_settings import AutoTopUpRequest as AutoTopUpRequest
    from credits.api_settings import SettingsRequest as SettingsRequest

MAX_EXPIRES_IN_DAYS = 3650  # how far ahead a grant's credits may expire (about ten years)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Where each request model (and field type) lives: `api.<name>` imports its module on first use.
_MODELS = {
    "UseRequest": "credits.api_charges",
    "InternalUseRequest": "credits.api_charges",
    "HoldRequest": "credits.api_holds",
    "CaptureRequest": "credits.api_holds",
    "ReleaseRequest": "credits.api_holds",
    "GrantRequest": "credits.api_grants",
    "LOT_FIELDS": "credits.api_grants",
    "AutoTopUpRequest": "credits.api_settings",
    "SettingsRequest": "credits.api_settings",
    "CheckoutRequest": "credits.api_purchases",
    "CardRequest": "credits.api_purchases",
    **dict.fromkeys(
        ("Token", "Description", "Amount", "Category", "Priority", "Instant", "ExpiresInDays"), "credits.api_fields"
    ),
}


def __getattr__(name: str) -> Any:
    module = _MODELS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


M = TypeVar("M", bound="BaseModel")


def parse(model: type[M], body: object) -> M:
    """Validate a decoded JSON body against a request model, or raise ValidationError."""
    if not isinstance(body, dict):  # one cause, one code: an empty, malformed or non-object body
        raise InvalidJson("The body must be a JSON object.")
    from pydantic import ValidationError as Invalid  # loaded already: `model` is a pydantic model

    try:
        return model.model_validate(body)
    except Invalid as exc:
        errors = [
            {"field": ".".join(str(p) for p in err["loc"]) or None, "issue": err["msg"]}
            for err in exc.errors(include_url=False, include_input=False, include_context=False)
        ]
        raise ValidationError("The request is not valid.", errors) from None


def idempotency(key: str | None, route: str, user_id: str, request: Request) -> Idempotency | None:
    """The Idempotency-Key of a request and its fingerprint (route, user and body)."""
    if key is None:
        return None
    return Idempotency(key, fingerprint({"route": route, "userId": user_id, "body": request.fingerprinted()}))


def cost_of(action: str, prices: Mapping[str, int]) -> int:
    """The server's price of an action; never the client's."""
    try:
        return prices[action]
    except KeyError:
        raise UnknownAction(action) from None


def use_credits(
    ledger: Ledger, prices: Mapping[str, int], user_id: str, request: UseRequest, key: str | None
) -> Posted:
    """POST /credits/use."""
    amount = cost_of(request.action, prices)
    posted = ledger.charge(
        user_id,
        amount,
        description=request.description or request.action,
        reference_id=request.referenceId,
        idempotency=idempotency(key, "POST /credits/use", user_id, request),
        action=request.action,
    )
    return posted


def internal_use(ledger: Ledger, prices: Mapping[str, int], request: InternalUseRequest, key: str | None) -> Posted:
    """POST /internal/credits/use."""
    posted = ledger.charge(
        request.userId,
        request.price(prices),
        description=request.description,
        reference_id=request.referenceId,
        idempotency=idempotency(key, "POST /internal/credits/use", request.userId, request),
        action=request.action,
    )
    return posted


def internal_grant(ledger: Ledger, request: GrantRequest, key: str | None) -> Posted:
    """POST /internal/credits/grant."""
    posted = ledger.grant(
        request.userId,
        request.amount,
        type=request.type,
        description=request.description,
        reference_id=request.referenceId,
        idempotency=idempotency(key, "POST /internal/credits/grant", request.userId, request),
        lot=request.lot_terms(ledger.clock()),
    )
    return posted


def reserve(ledger: Ledger, prices: Mapping[str, int], request: HoldRequest, key: str | None) -> Reserved:
    """POST /internal/credits/holds."""
    return ledger.reserve(
        request.userId,
        request.price(prices),
        description=request.description,
        ttl_seconds=request.ttlSeconds,
        idempotency=idempotency(key, "POST /internal/credits/holds", request.userId, request),
        action=request.action,
    )


def hold_id(value: str | None) -> str:
    """A hold id from the path: any id that cannot be ours is simply not found."""
    return validate_token(value or "", "holdId")


def capture(ledger: Ledger, hold: str, request: CaptureRequest) -> Captured:
    """POST /internal/credits/holds/{holdId}/capture."""
    return ledger.capture(request.userId, hold_id(hold), request.amount)


def release(ledger: Ledger, hold: str, request: ReleaseRequest) -> Released:
    """POST /internal/credits/holds/{holdId}/release."""
    return ledger.release(request.userId, hold_id(hold))


def reserved_body(reserved: Reserved) -> dict[str, Any]:
    return {
        "holdId": reserved.hold_id,
        "amount": reserved.amount,
        "expiresAt": reserved.expires_at,
        "balance": reserved.balance,
        "available": reserved.available,
    }


def captured_body(captured: Captured) -> dict[str, Any]:
    return {
        "transactionId": captured.transaction_id,
        "charged": captured.charged,
        "balance": captured.balance,
        "available": captured.available,
    }


def released_body(released: Released) -> dict[str, Any]:
    return {"released": released.released, "balance": released.balance, "available": released.available}


def update_settings(
    ledger: Ledger, user_id: str, request: SettingsRequest, on_sale: Callable[[str], object] | None = None
) -> Settings:
    """PUT /credits/settings. Auto top-up is turned on only for a package `on_sale` (it raises
    PackageNotFound otherwise: `Catalog.active`) and with a saved card (the ledger's CardRequired)."""
    limit: int | Unchanged | None = UNCHANGED
    if "monthlySpendLimit" in request.model_fields_set:
        limit = request.monthlySpendLimit
    auto: AutoTopUp | Unchanged | None = UNCHANGED
    if "autoTopUp" in request.model_fields_set:
        wanted = request.autoTopUp
        auto = None
        if wanted is not None:
            auto = AutoTopUp(wanted.enabled, wanted.threshold, wanted.packageId, wanted.maxPerMonth)
        if wanted is not None and wanted.enabled:
            if on_sale is None:
                raise ValidationError("Auto top-up cannot be turned on here.")
            on_sale(wanted.packageId)
    return ledger.update_settings(
        user_id, low_balance_threshold=request.lowBalanceThreshold, monthly_spend_limit=limit, auto_top_up=auto
    )


CARD_FIELDS = (("brand", "brand"), ("last4", "last4"), ("expMonth", "exp_month"), ("expYear", "exp_year"))


def settings_body(settings: Settings, now_ms: int) -> dict[str, Any]:
    """GET and PUT /credits/settings: the settings, and where auto top-up stands (`topUp`) with the
    card it charges."""
    auto, state, card = settings.auto_top_up, settings.topup, settings.card
    month = month_of(now_ms / 1000)
    return {
        "lowBalanceThreshold": settings.low_balance_threshold,
        "monthlySpendLimit": settings.monthly_spend_limit,
        "spentThisMonth": settings.spent_this_month,
        "autoTopUp": None
        if auto is None
        else {
            "enabled": auto.enabled,
            "threshold": auto.threshold,
            "packageId": auto.package_id,
            "maxPerMonth": auto.max_per_month,
        },
        "topUp": {
            "pending": state.pending is not None,
            "startedThisMonth": state.started_in(month),
            "failures": state.failures,
            "suspended": state.suspended,
            "retryAfter": iso_ms(state.retry_after_ms) if state.retry_after_ms > now_ms else None,
        },
        "card": None if card is None else {name: card.get(attr) for name, attr in CARD_FIELDS},
    }


def balance_body(view: AccountView) -> dict[str, Any]:
    """The balance; the next expiries (soonest 3 lots with credits left); and the credits of the lots
    that count now (remaining and held), by category."""
    by_category = dict.fromkeys(CATEGORIES, 0)
    for lot in view.lots:
        by_category[lot.category] = by_category.get(lot.category, 0) + lot.remaining + lot.held
    return {
        "balance": view.balance,
        "available": view.available,
        "held": view.held,
        "expiring": [{"amount": n, "expiresAt": iso_ms(at)} for n, at in view.expiring()],
        "byCategory": by_category,
    }


def holds_body(holds: list[Hold]) -> dict[str, Any]:
    return {
        "holds": [
            {"holdId": h.hold_id, "amount": h.amount, "description": h.description, "expiresAt": h.expires_at}
            for h in holds
        ]
    }


def charged_body(posted: Posted) -> dict[str, Any]:
    """The body of a charge; the same on the first answer and on every replay."""
    return {"transactionId": posted.transaction_id, "charged": -posted.amount, "balance": posted.balance}


def granted_body(posted: Posted) -> dict[str, Any]:
    return {"transactionId": posted.transaction_id, "balance": posted.balance}


def prices_body(prices: Mapping[str, int]) -> dict[str, Any]:
    """GET /credit-prices: the server's price list (ACTION_COSTS), cheapest first, then by name."""
    ordered = sorted(prices.items(), key=lambda item: (item[1], item[0]))
    return {"prices": [{"action": action, "credits": credits} for action, credits in ordered]}


def transactions_page(ledger: Ledger, user_id: str, limit: str | None, cursor: str | None) -> dict[str, Any]:
    """GET /credits/transactions?limit=&cursor=."""
    size = 20
    if limit is not None:
        # Checked as text first: int() of thousands of digits is refused (and slow) before any range check.
        if not (limit.isascii() and limit.isdigit() and len(limit) <= 3) or not 1 <= int(limit) <= 100:
            raise ValidationError("limit must be an integer from 1 to 100.", [{"field": "limit"}])
        size = int(limit)
    entries, next_cursor = ledger.transactions(user_id, limit=size, cursor=cursor or None)
    return {"transactions": [transaction_body(t) for t in entries], "nextCursor": next_cursor}


def transaction_body(tx: Transaction) -> dict[str, Any]:
    return {
        "id": tx.id,
        "amount": tx.amount,
        "balanceAfter": tx.balance_after,
        "type": tx.type,
        "description": tx.description,
        "referenceId": tx.reference_id,
        "monetaryAmount": tx.monetary_amount,
        "currency": tx.currency,
        "createdAt": tx.created_at,
    }
