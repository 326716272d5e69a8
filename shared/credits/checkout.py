"""Starting a purchase: one Stripe customer per user, race-safe, then a Checkout Session for a package
(saving the card paid with, if asked), or one in setup mode that only saves a card (auto top-up)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from credits import keys
from credits.errors import TemporarilyUnavailable
from credits.ledger import iso_utc
from credits.packages import Catalog, Package
from credits.store import NEW, DynamoStore, Put, Store, TransactionCancelled, Update, absent

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient


SAVE_CARD = "saveCard"  # metadata of a purchase that also saves the card paid with ("true")
CARD_PURPOSE = "card"  # metadata `purpose` of a setup-mode session that saves a card (POST /credits/cards)
DEFAULT_CARD_CURRENCY = "usd"  # a card saved while no package is on sale


class PaymentProvider(Protocol):
    """What checkout needs of Stripe (credits.stripe_gateway.StripeGateway in production). The
    sessions it creates carry `session_metadata(...)` and `card_session_metadata(...)`."""

    def create_customer(self, user_id: str) -> str: ...

    def create_checkout_session(
        self,
        *,
        user_id: str,
        customer_id: str,
        package: Package,
        success_url: str,
        cancel_url: str,
        save_card: bool = False,
    ) -> tuple[str, str]: ...

    def create_card_session(
        self, *, user_id: str, customer_id: str, currency: str, success_url: str, cancel_url: str
    ) -> tuple[str, str]: ...


def session_metadata(user_id: str, package: Package, *, save_card: bool = False) -> dict[str, str]:
    """A Checkout Session's metadata: the user, the package, and the terms of the sale fixed now
    (`credits`, `price`, `currency`, and `expiresInDays` when the credits expire). The webhook and
    reconcile credit exactly these, if exactly this was paid, whatever the catalog says later
    (`credits.payments.Terms`). Keys of at most 40 characters, values of at most 500: Stripe's limits.
    With `save_card`, `saveCard: "true"` tells the webhook to keep the card paid with (credits.cards)."""
    metadata = {"userId": user_id, "packageId": package.id, **package.sale_terms()}
    return {**metadata, SAVE_CARD: "true"} if save_card else metadata


def card_session_metadata(user_id: str) -> dict[str, str]:
    """A setup-mode session's metadata: the user, and that it saves a card (the webhook's sign that the
    session is ours and what it is for: it sells nothing, so it has no package)."""
    return {"userId": user_id, "purpose": CARD_PURPOSE}


@dataclass(frozen=True)
class CheckoutUrls:
    """Where Checkout sends the user back; `{CHECKOUT_SESSION_ID}` is filled in by Stripe."""

    success: str
    cancel: str


class Customers:
    """The user <-> Stripe customer link: on the account item and as a `CUSTOMER#` item.

    `Customers(client, table_name)` on DynamoDB; `Customers.on(store)` on any store (the simulator's)."""

    def __init__(
        self, client: DynamoDBClient | None = None, table_name: str = "", *, store: Store | None = None
    ) -> None:
        if store is None:
            if client is None:
                raise TypeError("Customers needs a DynamoDB client and table name, or a store")
            store = DynamoStore(client, table_name)
        self.store = store

    @classmethod
    def on(cls, store: Store) -> Customers:
        return cls(store=store)

    def get(self, user_id: str) -> str | None:
        account = self.store.get((keys.user_pk(user_id), keys.ACCOUNT)) or {}
        value = account.get("stripe_customer_id")
        return str(value) if value else None

    def link(self, user_id: str, customer_id: str) -> str:
        """Store the link unless the user has one already; returns the customer id that won."""
        now = iso_utc(time.time())
        on_account = Update(
            (keys.user_pk(user_id), keys.ACCOUNT),
            set={"stripe_customer_id": customer_id, "updated_at": now},
            set_if_absent={"created_at": now},
            condition=absent("stripe_customer_id"),  # no customer yet
        )
        link = Put(
            {"pk": keys.customer_pk(customer_id), "sk": keys.CUSTOMER_SK, "user_id": user_id, "created_at": now},
            condition=NEW,
        )
        try:
            # A fresh token: a resend of this very request is a no-op, a concurrent checkout's is not.
            self.store.transact([on_account, link], token=str(uuid.uuid4()))
            return customer_id
        except TransactionCancelled:
            pass
        winner = self.get(user_id)  # a concurrent checkout linked first: use its customer
        if winner is None:
            raise TemporarilyUnavailable("Could not link the payment customer; nothing was charged. Retry.")
        return winner


def customer_for(customers: Customers, provider: PaymentProvider, user_id: str) -> str:
    """The user's one Stripe customer, created on first checkout (one per user even under races)."""
    existing = customers.get(user_id)
    if existing:
        return existing
    # Concurrent first checkouts send Stripe the same idempotency key, so they get the same customer;
    # the conditional link below makes the first stored id the only one ever used.
    return customers.link(user_id, provider.create_customer(user_id))


def start_checkout(
    catalog: Catalog,
    customers: Customers,
    provider: PaymentProvider,
    urls: CheckoutUrls,
    user_id: str,
    package_id: str,
    *,
    save_card: bool = False,
) -> dict[str, Any]:
    """POST /credits/checkout: a Checkout Session for an active package; with `save_card`, Stripe also
    keeps the card paid with for payments without the user (auto top-up)."""
    package = catalog.active(package_id)
    customer_id = customer_for(customers, provider, user_id)
    session_id, url = provider.create_checkout_session(
        user_id=user_id,
        customer_id=customer_id,
        package=package,
        success_url=urls.success,
        cancel_url=urls.cancel,
        save_card=save_card,
    )
    return {"checkoutUrl": url, "sessionId": session_id}


def start_card_setup(
    catalog: Catalog, customers: Customers, provider: PaymentProvider, urls: CheckoutUrls, user_id: str
) -> dict[str, Any]:
    """POST /credits/cards: a Checkout Session in setup mode, where the user saves a card and pays
    nothing; the webhook keeps the card on the account (credits.cards)."""
    customer_id = customer_for(customers, provider, user_id)
    session_id, url = provider.create_card_session(
        user_id=user_id,
        customer_id=customer_id,
        currency=card_currency(catalog),
        success_url=urls.success,
        cancel_url=urls.cancel,
    )
    return {"checkoutUrl": url, "sessionId": session_id}


def card_currency(catalog: Catalog) -> str:
    """The currency a card is saved in: Stripe needs one in setup mode, and the one the packages are
    sold in offers the user the methods that can pay for them (the catalog's first package on sale)."""
    on_sale = catalog.listed()
    return on_sale[0].currency if on_sale else DEFAULT_CARD_CURRENCY
