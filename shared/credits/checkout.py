"""Starting a purchase: one Stripe customer per user, race-safe, then a Checkout Session for a package."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import ClientError

from credits import keys
from credits.errors import TemporarilyUnavailable
from credits.ledger import from_item, iso_utc, to_item
from credits.packages import Catalog, Package

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient


class PaymentProvider(Protocol):
    """What checkout needs of Stripe (credits.stripe_gateway.StripeGateway in production)."""

    def create_customer(self, user_id: str) -> str: ...

    def create_checkout_session(
        self, *, user_id: str, customer_id: str, package: Package, success_url: str, cancel_url: str
    ) -> tuple[str, str]: ...


@dataclass(frozen=True)
class CheckoutUrls:
    """Where Checkout sends the user back; `{CHECKOUT_SESSION_ID}` is filled in by Stripe."""

    success: str
    cancel: str


class Customers:
    """The user <-> Stripe customer link: on the account item and as a `CUSTOMER#` item."""

    def __init__(self, client: DynamoDBClient, table_name: str) -> None:
        self.client = client
        self.table = table_name

    def get(self, user_id: str) -> str | None:
        response = self.client.get_item(
            TableName=self.table,
            Key=to_item({"pk": keys.user_pk(user_id), "sk": keys.ACCOUNT}),
            ConsistentRead=True,
            ProjectionExpression="stripe_customer_id",
        )
        value = from_item(response.get("Item", {})).get("stripe_customer_id")
        return str(value) if value else None

    def link(self, user_id: str, customer_id: str) -> str:
        """Store the link unless the user has one already; returns the customer id that won."""
        now = iso_utc(time.time())
        no_customer_yet = "attribute_not_exists(stripe_customer_id)"
        link_is_new = "attribute_not_exists(pk)"
        try:
            self.client.transact_write_items(
                TransactItems=[
                    {
                        "Update": {
                            "TableName": self.table,
                            "Key": to_item({"pk": keys.user_pk(user_id), "sk": keys.ACCOUNT}),
                            "UpdateExpression": (
                                "SET stripe_customer_id = :customer, updated_at = :now, "
                                "created_at = if_not_exists(created_at, :now)"
                            ),
                            "ConditionExpression": no_customer_yet,
                            "ExpressionAttributeValues": to_item({":customer": customer_id, ":now": now}),
                        }
                    },
                    {
                        "Put": {
                            "TableName": self.table,
                            "Item": to_item(
                                {
                                    "pk": keys.customer_pk(customer_id),
                                    "sk": keys.CUSTOMER_SK,
                                    "user_id": user_id,
                                    "created_at": now,
                                }
                            ),
                            "ConditionExpression": link_is_new,
                        }
                    },
                ]
            )
            return customer_id
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                raise
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
