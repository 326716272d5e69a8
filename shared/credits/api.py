"""The HTTP API's requests and responses (docs/design.md section 6), independent of any web framework.

Handlers parse the event, call one function here, and return its result; bad input raises
ValidationError before anything is read or written.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, TypeVar

import pydantic
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from credits.errors import InvalidJson, UnknownAction, ValidationError
from credits.ledger import (
    CATEGORIES,
    DEFAULT_HOLD_TTL_SECONDS,
    MAX_AMOUNT,
    MAX_HOLD_TTL_SECONDS,
    MAX_PER_MONTH,
    MAX_PRIORITY,
    UNCHANGED,
    AccountView,
    AutoTopUp,
    Captured,
    Hold,
    Idempotency,
    Ledger,
    LotTerms,
    Posted,
    Released,
    Reserved,
    Settings,
    Transaction,
    Unchanged,
    fingerprint,
    iso_ms,
    key_problem,
    month_of,
    validate_token,
)
from credits.packages import PackageId


def _key_part(value: str) -> str:
    """A value that becomes part of a DynamoDB key: limited in UTF-8 bytes, printable."""
    problem = key_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _storable(value: str) -> str:
    """Text we store: no lone surrogates (JSON allows them; UTF-8 and DynamoDB do not)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return value


def _instant(value: str) -> str:
    """An ISO 8601 date and time that names its offset (`Z` for UTC): never a local time."""
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("must be an ISO 8601 date and time, such as 2027-01-03T00:00:00Z") from None
    if at.tzinfo is None:
        raise ValueError("must say its time zone: end it with Z for UTC (2027-01-03T00:00:00Z)")
    return value


MAX_EXPIRES_IN_DAYS = 3650  # how far ahead a grant's credits may expire (about ten years)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Token = Annotated[str, AfterValidator(_key_part)]
Description = Annotated[str, StringConstraints(max_length=500), AfterValidator(_storable)]
Amount = Annotated[int, Field(strict=True, gt=0, le=MAX_AMOUNT)]
Category = Literal["paid", "promotional"]
Priority = Annotated[int, Field(strict=True, ge=0, le=MAX_PRIORITY)]
Instant = Annotated[str, StringConstraints(max_length=64), AfterValidator(_instant)]
ExpiresInDays = Annotated[int, Field(strict=True, ge=1, le=MAX_EXPIRES_IN_DAYS)]
LOT_FIELDS = ("category", "priority", "expiresAt", "expiresInDays")


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    def fingerprinted(self) -> dict[str, Any]:
        """What an Idempotency-Key remembers of the request: its fields."""
        return self.model_dump()


class UseRequest(_Request):
    """POST /credits/use: the user spends credits on a priced action."""

    action: Token
    referenceId: Token | None = None
    description: Description | None = None


class _PricedRequest(_Request):
    """A trusted service's change for a user, by amount or by the price of an action."""

    userId: Token
    amount: Amount | None = None
    action: Token | None = None
    description: Description

    @model_validator(mode="after")
    def _amount_or_action(self) -> _PricedRequest:
        if (self.amount is None) == (self.action is None):
            raise ValueError("give exactly one of amount and action")
        return self

    def price(self, prices: Mapping[str, int]) -> int:
        return self.amount if self.amount is not None else cost_of(str(self.action), prices)


class InternalUseRequest(_PricedRequest):
    """POST /internal/credits/use: a trusted service charges a user by amount or by action."""

    referenceId: Token | None = None


class GrantRequest(_Request):
    """POST /internal/credits/grant: support staff or a trusted service adds credits, to a lot with
    the terms given (none: paid credits that never expire, as before lots)."""

    userId: Token
    amount: Amount
    type: Literal["gift", "adjustment"]
    description: Description
    referenceId: Token | None = None
    category: Category | None = None  # None: paid
    priority: Priority | None = None  # None: the category's default (paid 50, promotional 10)
    expiresAt: Instant | None = None
    expiresInDays: ExpiresInDays | None = None

    @model_validator(mode="after")
    def _one_expiry(self) -> GrantRequest:
        if self.expiresAt is not None and self.expiresInDays is not None:
            raise ValueError("give at most one of expiresAt and expiresInDays")
        return self

    def fingerprinted(self) -> dict[str, Any]:
        # A grant without lot terms is fingerprinted as before they existed (a retry across the
        # upgrade is still the same request); terms given are part of the request.
        body = self.model_dump()
        return {k: v for k, v in body.items() if k not in LOT_FIELDS or v is not None}

    def lot_terms(self, now: float) -> LotTerms | None:
        """The terms of the lot the credits go to; None when the request gives none (paid, no expiry).
        An expiry at most MAX_EXPIRES_IN_DAYS ahead, else 400 with nothing written. That it is in the
        future, the ledger decides, after the request's key and reference: a retry of a grant that
        landed replays its answer even once its expiry passed; a new request whose expiry passed is
        refused (400), and under an Idempotency-Key that refusal is remembered."""
        if all(getattr(self, name) is None for name in LOT_FIELDS):
            return None
        now_ms = int(now * 1000)
        expires_ms: int | None = None
        if self.expiresAt is not None:
            expires_ms = (datetime.fromisoformat(self.expiresAt) - EPOCH) // timedelta(milliseconds=1)
            if expires_ms > now_ms + MAX_EXPIRES_IN_DAYS * 86_400_000:
                raise ValidationError(
                    f"expiresAt must be at most {MAX_EXPIRES_IN_DAYS} days ahead.", [{"field": "expiresAt"}]
                )
        elif self.expiresInDays is not None:
            expires_ms = now_ms + self.expiresInDays * 86_400_000
        return LotTerms(self.category or CATEGORIES[0], self.priority, expires_ms, label=self.description)


class HoldRequest(_PricedRequest):
    """POST /internal/credits/holds: a trusted service sets credits aside while an action runs."""

    ttlSeconds: Annotated[int, Field(strict=True, ge=1, le=MAX_HOLD_TTL_SECONDS)] = DEFAULT_HOLD_TTL_SECONDS


class CaptureRequest(_Request):
    """POST /internal/credits/holds/{holdId}/capture: charge all of a hold, part of it, or 0."""

    userId: Token
    amount: Annotated[int, Field(strict=True, ge=0, le=MAX_AMOUNT)] | None = None


class ReleaseRequest(_Request):
    """POST /internal/credits/holds/{holdId}/release: end a hold without charging."""

    userId: Token


class AutoTopUpRequest(_Request):
    """`autoTopUp` in PUT /credits/settings: below `threshold` credits available, buy `packageId`,
    at most `maxPerMonth` times a UTC month (always said: there is no default)."""

    enabled: bool
    threshold: Annotated[int, Field(strict=True, ge=0, le=MAX_AMOUNT)]
    packageId: PackageId
    maxPerMonth: Annotated[int, Field(strict=True, ge=1, le=MAX_PER_MONTH)]


class SettingsRequest(_Request):
    """PUT /credits/settings: a field left out keeps its value; a null limit (or autoTopUp) removes it."""

    lowBalanceThreshold: Annotated[int, Field(strict=True, ge=0, le=MAX_AMOUNT)] | None = None
    monthlySpendLimit: Amount | None = None
    autoTopUp: AutoTopUpRequest | None = None

    @model_validator(mode="after")
    def _threshold_not_null(self) -> SettingsRequest:
        if "lowBalanceThreshold" in self.model_fields_set and self.lowBalanceThreshold is None:
            raise ValueError("lowBalanceThreshold cannot be null: send 0 to turn low-balance events off")
        return self


class CheckoutRequest(_Request):
    """POST /credits/checkout: the user buys a package; with `saveCard`, Stripe keeps the card paid
    with, and the webhook makes it the account's saved card (auto top-up charges it)."""

    packageId: PackageId
    saveCard: bool = False


class CardRequest(_Request):
    """POST /credits/cards: no fields (a body is optional; a field sent is a mistake: 400)."""


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], body: object) -> M:
    """Validate a decoded JSON body against a request model, or raise ValidationError."""
    if not isinstance(body, dict):  # one cause, one code: an empty, malformed or non-object body
        raise InvalidJson("The body must be a JSON object.")
    try:
        return model.model_validate(body)
    except pydantic.ValidationError as exc:
        errors = [
            {"field": ".".join(str(p) for p in err["loc"]) or None, "issue": err["msg"]}
            for err in exc.errors(include_url=False, include_input=False, include_context=False)
        ]
        raise ValidationError("The request is not valid.", errors) from None


def idempotency(key: str | None, route: str, user_id: str, request: _Request) -> Idempotency | None:
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
