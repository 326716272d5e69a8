"""Starting a purchase: one Stripe customer per user, race-safe, then a Checkout Session for a package."""

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


class PaymentProvider(Protocol):
    """What checkout needs of Stripe (credits.stripe_gateway.StripeGateway in production). The
    session it creates carries `session_metadata(user_id, package)`."""

    def create_customer(self, user_id: str) -> str: ...

    def create_checkout_session(
        self, *, user_id: str, customer_id: str, package: Package, success_url: str, cancel_url: str
    ) -> tuple[str, str]: ...


def session_metadata(user_id: str, package: Package) -> dict[str, str]:
    """A Checkout Session's metadata: the user, the package, and the terms of the sale fixed now
    (`credits`, `price`, `currency`, and `expiresInDays` when the credits expire). The webhook and
    reconcile credit exactly these, if exactly this was paid, whatever the catalog says later
    (`credits.payments.Terms`). Keys of at most 40 characters, values of at most 500: Stripe's limits."""
    return {"userId": user_id, "packageId": package.id, **package.sale_terms()}


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
) -> dict[str, Any]:
    """POST /credits/checkout: a Checkout Session for an active package."""
    package = catalog.active(package_id)
    customer_id = customer_for(customers, provider, user_id)
    session_id, url = provider.create_checkout_session(
        user_id=user_id,
        customer_id=customer_id,
        package=package,
        success_url=urls.success,
        cancel_url=urls.cancel,
    )
    return {"checkoutUrl": url, "sessionId": session_id}
