"""The request models of charges: POST /credits/use and POST /internal/credits/use."""

from __future__ import annotations

from credits.api_fields import Description, PricedRequest, Request, Token


class UseRequest(Request):
    """POST /credits/use: the user spends credits on a priced action."""

    action: Token
    referenceId: Token | None = None
    description: Description | None = None


class InternalUseRequest(PricedRequest):
    """POST /internal/credits/use: a trusted service charges a user by amount or by action."""

    referenceId: Token | None = None
