"""The request model of POST /internal/credits/grant, and the lot terms it gives."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import model_validator

from credits.api import EPOCH, MAX_EXPIRES_IN_DAYS
from credits.api_fields import Amount, Category, Description, ExpiresInDays, Instant, Priority, Request, Token
from credits.errors import ValidationError
from credits.ledger import CATEGORIES, LotTerms

LOT_FIELDS = ("category", "priority", "expiresAt", "expiresInDays")


class GrantRequest(Request):
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
