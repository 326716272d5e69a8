"""The domain's exceptions: one root, one subclass per broken rule, each carrying its data.

HTTP statuses and error codes are mapped in ONE table (`HTTP_ERRORS`), never by message text.
"""

from __future__ import annotations

from typing import Any


class CreditsError(Exception):
    """Root of every error the credits domain raises on purpose."""

    def details(self) -> dict[str, Any]:
        """Extra fields for the client, beside code and message."""
        return {}


class ValidationError(CreditsError):
    """The request is malformed: wrong type, unknown field, amount out of range."""

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []

    def details(self) -> dict[str, Any]:
        return {"errors": self.errors} if self.errors else {}


class InvalidJson(ValidationError):
    """The body is not a JSON object."""


class Unauthorized(CreditsError):
    """No identity where one is required."""


class InsufficientCredits(CreditsError):
    """A charge or hold exceeds the available credits (balance minus open holds), or the balance is negative."""

    def __init__(self, required: int, balance: int, available: int | None = None) -> None:
        available = balance if available is None else available
        if available == balance:
            message = f"This action needs {required} credits; the balance is {balance}."
        else:
            message = f"This action needs {required} credits; {available} of the balance of {balance} are available."
        super().__init__(message)
        self.required = required
        self.balance = balance
        self.available = available

    def details(self) -> dict[str, Any]:
        return {"required": self.required, "balance": self.balance, "available": self.available}


class SpendLimitReached(CreditsError):
    """The charge or hold would take the month's usage above the user's monthly spend limit."""

    def __init__(self, limit: int, spent: int, month: str) -> None:
        super().__init__(f"This would pass your monthly spending limit of {limit} credits ({spent} used in {month}).")
        self.limit = limit
        self.spent = spent
        self.month = month

    def details(self) -> dict[str, Any]:
        return {"limit": self.limit, "spent": self.spent, "month": self.month}


class HoldNotFound(CreditsError):
    """No such hold for this user (another user's hold id is not found either)."""


class HoldEnded(CreditsError):
    """A hold's end is final: it was captured, released or it expired."""


class HoldExpired(HoldEnded):
    """The hold expired before it was captured; it counts for nothing and charges nothing."""


class HoldCaptured(HoldEnded):
    """The hold was captured already (a different capture, or a release after it)."""


class HoldReleased(HoldEnded):
    """The hold was released already; it can no longer be captured."""


class CaptureExceedsHold(CreditsError):
    """A capture asked for more than the hold holds; nothing changed, the hold stays open."""


class TooManyHolds(CreditsError):
    """The user has as many open holds as an account keeps; end or let some expire first."""


class UnknownAction(CreditsError):
    """The action is not on the server's price list."""

    def __init__(self, action: str) -> None:
        super().__init__(f"Unknown action {action!r}.")
        self.action = action


class PackageNotFound(CreditsError):
    """The package does not exist or is not on sale."""

    def __init__(self, package_id: str) -> None:
        super().__init__(f"No active credit package {package_id!r}.")
        self.package_id = package_id


class NotFound(CreditsError):
    """The route or resource does not exist."""


class IdempotencyKeyReused(CreditsError):
    """The Idempotency-Key was used before for a different request."""


class RequestInProgress(CreditsError):
    """A request with this Idempotency-Key is still running; retry it once that one has answered."""


class ReferenceReused(CreditsError):
    """The referenceId was used before for a different request."""


class TooManyRequests(CreditsError):
    """A user changed their settings more often than SETTINGS_CHANGES_PER_MINUTE; retry later."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PaymentProviderError(CreditsError):
    """Stripe failed or refused; nothing was written."""


class TemporarilyUnavailable(CreditsError):
    """Throttled, contended or unavailable after retries; retry (with the same Idempotency-Key)."""


class SettlementFailed(CreditsError):
    """A payment's state cannot be settled (a conflict, an impossible record): our failure, never the
    sender's. The webhook answers 5xx (Stripe retries), logs an error and raises an alarmed metric."""


class ConfigError(CreditsError):
    """A required setting is missing or malformed (raised at cold start)."""


class InternalError(CreditsError):
    """An unexpected failure of ours; transactions are atomic, so nothing was half-written."""


# One table: exception class -> (HTTP status, error code). Subclasses map through their parents' MRO.
HTTP_ERRORS: dict[type[CreditsError], tuple[int, str]] = {
    InvalidJson: (400, "invalid_json"),
    ValidationError: (400, "validation_error"),
    Unauthorized: (401, "unauthorized"),
    InsufficientCredits: (402, "insufficient_credits"),
    SpendLimitReached: (402, "spend_limit_reached"),
    UnknownAction: (404, "unknown_action"),
    PackageNotFound: (404, "package_not_found"),
    NotFound: (404, "not_found"),
    IdempotencyKeyReused: (409, "idempotency_key_reused"),
    RequestInProgress: (409, "request_in_progress"),
    HoldNotFound: (404, "hold_not_found"),
    HoldExpired: (409, "hold_expired"),
    HoldCaptured: (409, "hold_captured"),
    HoldReleased: (409, "hold_released"),
    CaptureExceedsHold: (409, "capture_exceeds_hold"),
    TooManyHolds: (409, "too_many_holds"),
    ReferenceReused: (409, "reference_id_reused"),
    TooManyRequests: (429, "too_many_requests"),
    PaymentProviderError: (502, "payment_provider_error"),
    TemporarilyUnavailable: (503, "temporarily_unavailable"),
    SettlementFailed: (500, "settlement_failed"),
    ConfigError: (500, "internal_error"),
    InternalError: (500, "internal_error"),
}


def http_error(exc: CreditsError) -> tuple[int, dict[str, Any]]:
    """The status and JSON body for a domain error; the message is ours, never an exception's text."""
    for cls in type(exc).__mro__:
        if cls in HTTP_ERRORS:
            status, code = HTTP_ERRORS[cls]
            break
    else:  # pragma: no cover - every CreditsError subclass is in the table through its root
        status, code = 500, "internal_error"
    message = str(exc) if status < 500 or status in (502, 503) else "Internal error."
    return status, {"error": {"code": code, "message": message, **exc.details()}}
