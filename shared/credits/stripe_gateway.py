"""The Stripe adapter: the only module that imports stripe (checkout, webhook and the catalog CLI use it).

It speaks Stripe's API through a `stripe.StripeClient` (never the global api_key) and turns every
Stripe failure into PaymentProviderError, so the domain never sees a Stripe exception.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pydantic
import stripe

from credits.cards import SavedCard
from credits.checkout import card_session_metadata, session_metadata
from credits.errors import PaymentProviderError, ValidationError
from credits.packages import Package
from credits.stripe_objects import CheckoutSession, PaymentMethod, object_id

SIGNATURE_TOLERANCE_SECONDS = 300
CLIENT_REFERENCE_ID_MAX = 200  # Stripe's limit, in characters, on a Checkout Session's client_reference_id


def customer_key(user_id: str) -> str:
    """The Idempotency-Key of a user's customer creation: derived from the user id, never the id itself.

    An HTTP header carries only Latin-1 and Stripe takes at most 255 characters, while a user id is
    up to 255 bytes of any UTF-8 (the JWT `sub`): a fixed prefix and the SHA-256 of its UTF-8 bytes
    is ASCII, 73 characters, and one per user. The id itself goes in the customer's metadata.
    """
    return "customer-" + hashlib.sha256(user_id.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class OffSessionPayment:
    """What Stripe answered an off-session charge of a saved card: `succeeded` (or `processing`), or
    `failed` with the decline's code (`insufficient_funds`, `authentication_required`, ...) and
    Stripe's sentence for the user."""

    payment_intent_id: str | None
    status: str
    failure_code: str | None = None
    message: str | None = None


class InvalidWebhook(ValidationError):
    """The webhook body or its Stripe-Signature did not verify."""


def _address(session: stripe.checkout.Session) -> tuple[str, str]:
    """A created Checkout Session's (id, hosted page address)."""
    if not session.url:
        raise PaymentProviderError("The payment provider returned no checkout address.")
    return str(session.id), str(session.url)


def verify_webhook(payload: bytes, signature: str | None, secret: str) -> dict[str, Any]:
    """Check Stripe-Signature against the raw body (300 s tolerance) and return the event as a dict."""
    if not signature:
        raise InvalidWebhook("Missing Stripe-Signature header.")
    try:
        text = payload.decode("utf-8")
        stripe.WebhookSignature.verify_header(text, signature, secret, tolerance=SIGNATURE_TOLERANCE_SECONDS)
        event = json.loads(text)
    except (stripe.SignatureVerificationError, ValueError, RecursionError):
        raise InvalidWebhook("The webhook signature or body is not valid.") from None
    if not isinstance(event, dict) or not isinstance(event.get("id"), str) or "type" not in event:
        raise InvalidWebhook("The webhook body is not a Stripe event.")
    return event


class StripeGateway:
    """What the product asks of Stripe; the client is injected (tests point it at the local emulator)."""

    def __init__(self, client: stripe.StripeClient) -> None:
        self.client = client

    @classmethod
    def connect(cls, api_key: str, api_base: str | None = None) -> StripeGateway:
        """A gateway with a StripeClient, pointed at `api_base` (the local emulator) when given."""
        addresses: dict[str, str] = {"api": api_base.rstrip("/")} if api_base else {}
        client = stripe.StripeClient(
            api_key,
            base_addresses=addresses,  # type: ignore[arg-type]
            max_network_retries=2,  # stripe-python adds an idempotency key to retried POSTs
            http_client=stripe.RequestsClient(timeout=10),  # well inside the function's timeout
        )
        return cls(client)

    def create_customer(self, user_id: str) -> str:
        """A customer for a user; the idempotency key makes concurrent calls return one customer."""
        try:
            customer = self.client.v1.customers.create(
                params={"metadata": {"userId": user_id}},
                options={"idempotency_key": customer_key(user_id)},
            )
        except stripe.StripeError as exc:
            raise PaymentProviderError("Could not create the payment customer; please retry.") from exc
        return str(customer.id)

    def create_checkout_session(
        self,
        *,
        user_id: str,
        customer_id: str,
        package: Package,
        success_url: str,
        cancel_url: str,
        save_card: bool = False,
    ) -> tuple[str, str]:
        """A Checkout Session in payment mode for one package; returns (session id, url).

        The user id is in the metadata (values up to 500 characters: any user id fits), which the
        webhook and reconcile read; it is the client_reference_id too when it fits Stripe's 200
        characters (counted as UTF-16 code units, the stricter count), and otherwise there is none
        (a truncated or hashed one would name no user). With `save_card`, Stripe attaches the card
        paid with to the customer for payments without them (`setup_future_usage` off_session).
        """
        # The terms of the sale, fixed now: the webhook credits exactly these, if exactly this was paid.
        metadata = session_metadata(user_id, package, save_card=save_card)
        if package.stripe_price_id:
            line_item: dict[str, Any] = {"price": package.stripe_price_id, "quantity": 1}
        else:
            line_item = {
                "price_data": {
                    "currency": package.currency,
                    "unit_amount": package.price,
                    "product_data": {"name": package.name},
                },
                "quantity": 1,
            }
        try:
            params: Any = {
                "mode": "payment",
                "customer": customer_id,
                "line_items": [line_item],
                "metadata": metadata,
                "payment_intent_data": {"metadata": metadata},
                "success_url": success_url,
                "cancel_url": cancel_url,
            }
            if save_card:
                params["payment_intent_data"]["setup_future_usage"] = "off_session"
            if len(user_id.encode("utf-16-le")) // 2 <= CLIENT_REFERENCE_ID_MAX:  # however Stripe counts
                params["client_reference_id"] = user_id
            session = self.client.v1.checkout.sessions.create(params=params)
        except stripe.StripeError as exc:
            raise PaymentProviderError("Could not start the checkout; please retry.") from exc
        return _address(session)

    def create_card_session(
        self, *, user_id: str, customer_id: str, currency: str, success_url: str, cancel_url: str
    ) -> tuple[str, str]:
        """A Checkout Session in setup mode: the user saves a card for the customer and pays nothing;
        returns (session id, url). Cards only: a payment without the user (auto top-up) charges a card.
        The metadata (`card_session_metadata`) tells the webhook whose card it is."""
        metadata = card_session_metadata(user_id)
        params: Any = {
            "mode": "setup",
            "customer": customer_id,
            "currency": currency,
            "payment_method_types": ["card"],
            "metadata": metadata,
            "setup_intent_data": {"metadata": metadata},
            "success_url": success_url,
            "cancel_url": cancel_url,
        }
        try:
            session = self.client.v1.checkout.sessions.create(params=params)
        except stripe.StripeError as exc:
            raise PaymentProviderError("Could not start saving a card; please retry.") from exc
        return _address(session)

    def saved_card(self, session: CheckoutSession) -> SavedCard | None:
        """The card a completed Checkout Session saved: the PaymentMethod of its SetupIntent (setup
        mode) or of its PaymentIntent (a purchase with `setup_future_usage`), read with the intent,
        expanded. None when it saved none: no intent, another kind of method, or a card Stripe did
        not attach to the customer."""
        setup = session.mode == "setup"
        intent_id = object_id(session.setup_intent if setup else session.payment_intent)
        if intent_id is None:
            return None
        params: Any = {"expand": ["payment_method"]}
        try:
            if setup:
                intent = self.client.v1.setup_intents.retrieve(intent_id, params=params).to_dict()
            else:
                intent = self.client.v1.payment_intents.retrieve(intent_id, params=params).to_dict()
        except stripe.StripeError as exc:
            raise PaymentProviderError(f"Could not read the card of session {session.id}; please retry.") from exc
        method = intent.get("payment_method")
        if method is None:
            return None
        try:
            return SavedCard.of(PaymentMethod.model_validate(method))
        except pydantic.ValidationError:
            raise PaymentProviderError(
                f"Stripe answered a payment method of session {session.id} we cannot read."
            ) from None

    def charge_saved_card(
        self,
        *,
        customer_id: str,
        payment_method_id: str,
        amount: int,
        currency: str,
        idempotency_key: str,
        metadata: dict[str, str],
        description: str,
    ) -> OffSessionPayment:
        """Charge a saved card with the customer away (auto top-up): confirmed at once, never waiting
        for the customer (a card that needs 3-D Secure fails with `authentication_required`). The
        same `idempotency_key` returns the first answer, declines included: a repeated call never
        charges twice. A decline is an answer; Stripe unreachable or refusing is PaymentProviderError
        (retry with the same key)."""
        params: Any = {
            "amount": amount,
            "currency": currency,
            "customer": customer_id,
            "payment_method": payment_method_id,
            "off_session": True,
            "confirm": True,
            "metadata": metadata,
            "description": description,
        }
        try:
            intent = self.client.v1.payment_intents.create(params=params, options={"idempotency_key": idempotency_key})
        except stripe.CardError as exc:
            error = exc.error
            failed = error.payment_intent if error is not None else None
            code = (error.decline_code or error.code) if error is not None else None
            return OffSessionPayment(
                str(failed.id) if failed is not None else None,
                "failed",
                code or "card_declined",
                exc.user_message or "The card was declined.",
            )
        except stripe.StripeError as exc:
            # Refused as invalid (a card no longer attached, a customer deleted): no retry changes it.
            # Anything else (the network, a rate limit, Stripe failing, our key) may pass.
            invalid = isinstance(exc, stripe.InvalidRequestError)
            raise PaymentProviderError("Could not charge the saved card.", retriable=not invalid) from exc
        return OffSessionPayment(str(intent.id), str(intent.status))

    def sync_package(self, package: Package) -> Package:
        """Create or reuse the Stripe Product and Price of a package; returns it with their ids."""
        try:
            found = self.client.v1.products.search(
                params={"query": f"metadata['packageId']:'{package.id}'", "limit": 1}
            )
            if found.data:
                product_id = str(found.data[0].id)
            else:
                product = self.client.v1.products.create(
                    params={
                        "name": package.name,
                        "description": package.description or package.name,
                        "metadata": {"packageId": package.id},
                    },
                    options={"idempotency_key": f"product-{package.id}"},
                )
                product_id = str(product.id)
            lookup_key = f"{package.id}:{package.currency}:{package.price}"
            prices = self.client.v1.prices.list(params={"lookup_keys": [lookup_key], "active": True, "limit": 1})
            if prices.data:
                price_id = str(prices.data[0].id)
            else:
                price = self.client.v1.prices.create(
                    params={
                        "product": product_id,
                        "unit_amount": package.price,
                        "currency": package.currency,
                        "lookup_key": lookup_key,
                        "metadata": {"packageId": package.id, "credits": str(package.credits)},
                    },
                    options={"idempotency_key": f"price-{lookup_key}"},
                )
                price_id = str(price.id)
        except stripe.StripeError as exc:
            raise PaymentProviderError(f"Could not sync package {package.id} with Stripe.") from exc
        return package.model_copy(update={"stripe_product_id": product_id, "stripe_price_id": price_id})

    # ---- reconciling (credits.reconcile): what Stripe knows of a period, every page of it --------

    def sessions_since(self, created_gte: int) -> Iterator[dict[str, Any]]:
        """Checkout Sessions created at or after `created_gte` (Unix seconds), newest first."""
        params: Any = {"created": {"gte": created_gte}, "limit": 100}
        yield from self._every(lambda: self.client.v1.checkout.sessions.list(params=params))

    def refunded_charges_since(self, created_gte: int) -> Iterator[dict[str, Any]]:
        """Each charge with a refund created at or after `created_gte`, once, as it is now (its
        `amount_refunded` is the total, as in the `charge.refunded` event)."""
        params: Any = {"created": {"gte": created_gte}, "limit": 100}
        seen: set[str] = set()
        for refund in self._every(lambda: self.client.v1.refunds.list(params=params)):
            charge_id = refund.get("charge")
            if not isinstance(charge_id, str) or charge_id in seen:
                continue
            seen.add(charge_id)
            try:
                yield self.client.v1.charges.retrieve(charge_id).to_dict()
            except stripe.StripeError as exc:
                raise PaymentProviderError(f"Could not read charge {charge_id} from Stripe.") from exc

    def disputes_since(self, created_gte: int) -> Iterator[dict[str, Any]]:
        """Disputes created at or after `created_gte`, as they are now (open, won or lost)."""
        params: Any = {"created": {"gte": created_gte}, "limit": 100}
        yield from self._every(lambda: self.client.v1.disputes.list(params=params))

    def changed_since(self, created_gte: int, types: list[str]) -> Iterator[dict[str, Any]]:
        """The objects of the events of these types since `created_gte`, as each event carried it:
        the state changes that come long after an object was created (an async payment clearing
        days later, a dispute closing weeks later)."""
        params: Any = {"created": {"gte": created_gte}, "types": types, "limit": 100}
        for event in self._every(lambda: self.client.v1.events.list(params=params)):
            yield event["data"]["object"]

    @staticmethod
    def _every(first_page: Callable[[], Any]) -> Iterator[dict[str, Any]]:
        """Every object of a list, page after page (Stripe's starting_after), as plain dicts."""
        try:
            for obj in first_page().auto_paging_iter():
                yield obj.to_dict()
        except stripe.StripeError as exc:
            raise PaymentProviderError("Could not list objects from Stripe.") from exc
