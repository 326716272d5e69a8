"""The request models of purchases: POST /credits/checkout and POST /credits/cards."""

from __future__ import annotations

from credits.api_fields import Request
from credits.packages import PackageId


class CheckoutRequest(Request):
    """POST /credits/checkout: the user buys a package; with `saveCard`, Stripe keeps the card paid
    with, and the webhook makes it the account's saved card (auto top-up charges it)."""

    packageId: PackageId
    saveCard: bool = False


class CardRequest(Request):
    """POST /credits/cards: no fields (a body is optional; a field sent is a mistake: 400)."""
