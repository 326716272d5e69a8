"""The domain's exceptions: one root, one subclass per broken rule, each carrying its data.

Each error has ONE stable `code` (the HTTP body's `error.code`) and its HTTP `status`, on the class.
Every table keys on the code, never on a class name or message text: the HTTP answer
(`http_error`), the metrics the dashboard counts (`REFUSAL_METRICS`), the client's exceptions
(`ERRORS_BY_CODE`) and a refusal stored with a queued change or under an Idempotency-Key
(`from_code`), so renaming a class never changes what was stored or answered.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar


class CreditsError(Exception):
    """Root of every error the credits domain raises on purpose."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500

    def details(self) -> dict[str, Any]:
        """Extra fields for the client, beside code and message."""
        return {}

    @classmethod
    def from_details(cls, message: str, details: Mapping[str, Any]) -> CreditsError:
        """The error again, from its message and `details()` as stored (a refusal read back)."""
        return cls(message)


class ValidationError(CreditsError):
    """The request is malformed: wrong type, unknown field, amount out of range."""

    code = "validation_error"
    status = 400

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []

    def details(self) -> dict[str, Any]:
        return {"errors": self.errors} if self.errors else {}

    @classmethod
    def from_details(cls, message: str, details: Mapping[str, Any]) -> CreditsError:
        errors = details.get("errors")
        return cls(message, [dict(e) for e in errors] if isinstance(errors, list) else None)


class InvalidJson(ValidationError):
    """The body is not a JSON object."""

    code = "invalid_json"
    status = 400


class Unauthorized(CreditsError):
    """No identity where one is required."""

    code = "unauthorized"
    status = 401


class InsufficientCredits(CreditsError):
    """A charge or hold exceeds the available credits (balance minus open holds), or the balance is negative."""

    code = "insufficient_credits"
    status = 402

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

    @classmethod
    def from_details(cls, message: str, details: Mapping[str, Any]) -> CreditsError:
        balance = int(details["balance"])
        return cls(int(details["required"]), balance, int(details.get("available", balance)))


class SpendLimitReached(CreditsError):
    """The charge or hold would take the month's usage above the user's monthly spend limit."""

    code = "spend_limit_reached"
    status = 402

    def __init__(self, limit: int, spent: int, month: str) -> None:
        super().__init__(f"This would pass your monthly spending limit of {limit} credits ({spent} used in {month}).")
        self.limit = limit
        self.spent = spent
        self.month = month

    def details(self) -> dict[str, Any]:
        return {"limit": self.limit, "spent": self.spent, "month": self.month}

    @classmethod
    def from_details(cls, message: str, details: Mapping[str, Any]) -> CreditsError:
        return cls(int(details["limit"]), int(details["spent"]), str(details["month"]))


class HoldNotFound(CreditsError):
    """No such hold for this user (another user's hold id is not found either)."""

    code = "hold_not_found"
    status = 404


class HoldEnded(CreditsError):
    """A hold's end is final: it was captured, released or it expired."""

    code = "hold_ended"
    status = 409


class HoldExpired(HoldEnded):
    """The hold expired before it was captured; it counts for nothing and charges nothing."""

    code = "hold_expired"
    status = 409


class HoldCaptured(HoldEnded):
    """The hold was captured already (a different capture, or a release after it)."""

    code = "hold_captured"
    status = 409


class HoldReleased(HoldEnded):
    """The hold was released already; it can no longer be captured."""

    code = "hold_released"
    status = 409


class CaptureExceedsHold(CreditsError):
    """A capture asked for more than the hold holds; nothing changed, the hold stays open."""

    code = "capture_exceeds_hold"
    status = 409


class TooManyHolds(CreditsError):
    """The user has as many open holds as an account keeps; end or let some expire first."""

    code = "too_many_holds"
    status = 409


class UnknownAction(CreditsError):
    """The action is not on the server's price list."""

    code = "unknown_action"
    status = 404

    def __init__(self, action: str) -> None:
        super().__init__(f"Unknown action {action!r}.")
        self.action = action


class PackageNotFound(CreditsError):
    """The package does not exist or is not on sale."""

    code = "package_not_found"
    status = 404

    def __init__(self, package_id: str) -> None:
        super().__init__(f"No active credit package {package_id!r}.")
        self.package_id = package_id


class CardRequired(CreditsError):
    """Auto top-up cannot be turned on without a saved card (or the card was removed meanwhile)."""

    code = "card_required"
    status = 409


class NotFound(CreditsError):
    """The route or resource does not exist."""

    code = "not_found"
    status = 404


class IdempotencyKeyReused(CreditsError):
    """The Idempotency-Key was used before for a different request."""

    code = "idempotency_key_reused"
    status = 409


class RequestInProgress(CreditsError):
    """A request with this Idempotency-Key is still running; retry it once that one has answered."""

    code = "request_in_progress"
    status = 409


class ReferenceReused(CreditsError):
    """The referenceId was used before for a different request."""

    code = "reference_id_reused"
    status = 409


class ExportTooLarge(CreditsError):
    """The history is too large for one CSV answer (a Lambda response is at most 6 MB); nothing is
    wrong with it: the JSON history reads it page by page."""

    code = "export_too_large"
    status = 413

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(
            f"The history is too large to export as one CSV file (over {limit_bytes} bytes). Read it as "
            "JSON instead, page by page: GET /credits/transactions?limit=100, then again with "
            "cursor=<nextCursor> of each page until nextCursor is null."
        )
        self.limit_bytes = limit_bytes

    def details(self) -> dict[str, Any]:
        return {"limitBytes": self.limit_bytes}

    @classmethod
    def from_details(cls, message: str, details: Mapping[str, Any]) -> CreditsError:
        return cls(int(details["limitBytes"]))


class TooManyRequests(CreditsError):
    """A user changed their settings more often than SETTINGS_CHANGES_PER_MINUTE; retry later."""

    code = "too_many_requests"
    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    @classmethod
    def from_details(cls, message: str, details: Mapping[str, Any]) -> CreditsError:
        return cls(message, int(details.get("retry_after", 60)))


class PaymentProviderError(CreditsError):
    """Stripe failed or refused; nothing was written. `retriable`: the same request may succeed
    later (Stripe unreachable, busy, or failing; our key refused): only a request Stripe refused
    as invalid is not."""

    code = "payment_provider_error"
    status = 502

    def __init__(self, message: str, *, retriable: bool = True) -> None:
        super().__init__(message)
        self.retriable = retriable


class TemporarilyUnavailable(CreditsError):
    """Throttled, contended or unavailable after retries; retry (with the same Idempotency-Key)."""

    code = "temporarily_unavailable"
    status = 503


class SettlementFailed(CreditsError):
    """A payment's state cannot be settled (a conflict, an impossible record): our failure, never the
    sender's. The webhook answers 5xx (Stripe retries), logs an error and raises an alarmed metric."""

    code = "settlement_failed"
    status = 500


class ConfigError(CreditsError):
    """A required setting is missing or malformed (raised at cold start)."""

    code = "internal_error"
    status = 500


class InternalError(CreditsError):
    """An unexpected failure of ours; transactions are atomic, so nothing was half-written."""

    code = "internal_error"
    status = 500


def _codes() -> dict[str, type[CreditsError]]:
    """Every code once: the most general class that has it (`internal_error` is InternalError)."""
    found: dict[str, type[CreditsError]] = {}
    pending: list[type[CreditsError]] = [CreditsError]
    while pending:
        cls = pending.pop(0)
        found.setdefault(cls.code, cls)
        pending.extend(cls.__subclasses__())
    found["internal_error"] = InternalError
    return found


ERRORS_BY_CODE: dict[str, type[CreditsError]] = _codes()

# Refusals the dashboard counts (402s by cause, 503s), by code -> metric name: the stack's own
# functions and the paywall in a team's functions count them alike.
REFUSAL_METRICS: dict[str, str] = {
    InsufficientCredits.code: "InsufficientCredits",
    SpendLimitReached.code: "SpendLimitRefused",
    TemporarilyUnavailable.code: "Unavailable",
}

# Refusals stored before errors had codes carried their class name: read for a deployment's overlap
# (a stored refusal lives 60 s, a queued change seconds), then never again.
_STORED_NAMES = {
    "InsufficientCredits": InsufficientCredits.code,
    "SpendLimitReached": SpendLimitReached.code,
    "IdempotencyKeyReused": IdempotencyKeyReused.code,
    "ReferenceReused": ReferenceReused.code,
    "ValidationError": ValidationError.code,
    "TemporarilyUnavailable": TemporarilyUnavailable.code,
    "HoldNotFound": HoldNotFound.code,
    "HoldExpired": HoldExpired.code,
    "HoldCaptured": HoldCaptured.code,
    "HoldReleased": HoldReleased.code,
    "CaptureExceedsHold": CaptureExceedsHold.code,
    "TooManyHolds": TooManyHolds.code,
}


def from_code(code: str, details: Mapping[str, Any]) -> CreditsError:
    """A stored refusal as the error it was: its code, message and details."""
    cls = ERRORS_BY_CODE.get(_STORED_NAMES.get(code, code), InternalError)
    return cls.from_details(str(details.get("message", "The change was refused.")), details)


def http_error(exc: CreditsError) -> tuple[int, dict[str, Any]]:
    """The status and JSON body for a domain error; the message is ours, never an exception's text."""
    status = exc.status
    message = str(exc) if status < 500 or status in (502, 503) else "Internal error."
    return status, {"error": {"code": exc.code, "message": message, **exc.details()}}
