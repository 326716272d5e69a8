"""The request models of PUT /credits/settings (with its `autoTopUp`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from credits.api_fields import Amount, Request
from credits.ledger import MAX_AMOUNT, MAX_PER_MONTH
from credits.packages import PackageId


class AutoTopUpRequest(Request):
    """`autoTopUp` in PUT /credits/settings: below `threshold` credits available, buy `packageId`,
    at most `maxPerMonth` times a UTC month (always said: there is no default)."""

    enabled: bool
    threshold: Annotated[int, Field(strict=True, ge=0, le=MAX_AMOUNT)]
    packageId: PackageId
    maxPerMonth: Annotated[int, Field(strict=True, ge=1, le=MAX_PER_MONTH)]


class SettingsRequest(Request):
    """PUT /credits/settings: a field left out keeps its value; a null limit (or autoTopUp) removes it."""

    lowBalanceThreshold: Annotated[int, Field(strict=True, ge=0, le=MAX_AMOUNT)] | None = None
    monthlySpendLimit: Amount | None = None
    autoTopUp: AutoTopUpRequest | None = None

    @model_validator(mode="after")
    def _threshold_not_null(self) -> SettingsRequest:
        if "lowBalanceThreshold" in self.model_fields_set and self.lowBalanceThreshold is None:
            raise ValueError("lowBalanceThreshold cannot be null: send 0 to turn low-balance events off")
        return self
