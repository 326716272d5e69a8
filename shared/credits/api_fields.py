"""The request models' common ground (docs/design.md section 6): the base every request model
extends, the field types they share, and the base of a trusted service's priced change.

The models live by route group (`api_charges`, `api_holds`, `api_grants`, `api_settings`,
`api_purchases`): a handler imports a group in the route that parses it, so a cold start builds no
model (nor imports pydantic) that its first request does not need.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from credits.api import MAX_EXPIRES_IN_DAYS, cost_of
from credits.ledger import MAX_AMOUNT, MAX_PRIORITY, key_problem


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


Token = Annotated[str, AfterValidator(_key_part)]
Description = Annotated[str, StringConstraints(max_length=500), AfterValidator(_storable)]
Amount = Annotated[int, Field(strict=True, gt=0, le=MAX_AMOUNT)]
Category = Literal["paid", "promotional"]
Priority = Annotated[int, Field(strict=True, ge=0, le=MAX_PRIORITY)]
Instant = Annotated[str, StringConstraints(max_length=64), AfterValidator(_instant)]
ExpiresInDays = Annotated[int, Field(strict=True, ge=1, le=MAX_EXPIRES_IN_DAYS)]


class Request(BaseModel):
    """A request body: exactly its fields (no others), of exactly their JSON types."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    def fingerprinted(self) -> dict[str, Any]:
        """What an Idempotency-Key remembers of the request: its fields."""
        return self.model_dump()


class PricedRequest(Request):
    """A trusted service's change for a user, by amount or by the price of an action."""

    userId: Token
    amount: Amount | None = None
    action: Token | None = None
    description: Description

    @model_validator(mode="after")
    def _amount_or_action(self) -> PricedRequest:
        if (self.amount is None) == (self.action is None):
            raise ValueError("give exactly one of amount and action")
        return self

    def price(self, prices: Mapping[str, int]) -> int:
        return self.amount if self.amount is not None else cost_of(str(self.action), prices)
