"""Local Stripe emulator: the slice of Stripe's API the credits system calls, a hosted checkout page and
signed webhook deliveries, so the whole purchase flow runs offline and deterministically.

    python -m local.stripe_emulator --port 12111 --webhook-url URL --webhook-secret whsec_x --api-key sk_x

Its modules, each building on the ones before it:

    objects        Stripe's objects as made here (their shapes in shapes.json), ids, money, errors
    params         the endpoints' parameters: form parsing, validation, Stripe's limits, paging
    state          what the emulator holds, and the JSON file `make dev` keeps it in
    webhooks       events, signed as Stripe signs them, and their deliveries
    cards          Stripe's test cards (pm_card_visa...) and how each charges, saved cards, card errors
    payments       the customer, the bank and the card network: pay (saving a card), refund, dispute...
    intents        PaymentIntents confirmed off-session (auto top-up), saved cards' list and detach
    api            Stripe's REST endpoints, authentication, Idempotency-Key (card errors too), paging, expand
    control        the control API (/_emulator/...) the tests and the page's test tools use
    checkout_page  the hosted checkout page
    server         StripeEmulator: its routes, each request, serving in a thread
    __main__       the command line
"""

from local.stripe_emulator.api import COLLECTIONS, Reply
from local.stripe_emulator.objects import API_VERSION, EmulatorError, Json, format_amount, new_id, shape, snapshot
from local.stripe_emulator.params import (
    CUSTOMER_PARAMS,
    PRICE_PARAMS,
    PRODUCT_PARAMS,
    SESSION_PARAMS,
    parse_form,
    validate,
)
from local.stripe_emulator.server import StripeEmulator

__all__ = [
    "API_VERSION",
    "COLLECTIONS",
    "CUSTOMER_PARAMS",
    "PRICE_PARAMS",
    "PRODUCT_PARAMS",
    "SESSION_PARAMS",
    "EmulatorError",
    "Json",
    "Reply",
    "StripeEmulator",
    "format_amount",
    "new_id",
    "parse_form",
    "shape",
    "snapshot",
    "validate",
]
