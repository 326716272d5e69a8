"""The request models of holds: POST /internal/credits/holds, and a hold's capture and release."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from credits.api_fields import PricedRequest, Request, Token
from credits.ledger import DEFAULT_HOLD_TTL_SECONDS, MAX_AMOUNT, MAX_HOLD_TTL_SECONDS


class HoldRequest(PricedRequest):
    """POST /internal/credits/holds: a trusted service sets credits aside while an action runs."""

    ttlSeconds: Annotated[int, Field(strict=True, ge=1, le=MAX_HOLD_TTL_SECONDS)] = DEFAULT_HOLD_TTL_SECONDS


class CaptureRequest(Request):
    """POST /internal/credits/holds/{holdId}/capture: charge all of a hold, part of it, or 0."""

    userId: Token
    amount: Annotated[int, Field(strict=True, ge=0, le=MAX_AMOUNT)] | None = None


class ReleaseRequest(Request):
    """POST /internal/credits/holds/{holdId}/release: end a hold without charging."""

    userId: Token
