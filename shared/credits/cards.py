"""Saved cards: the one card a user saved for auto top-up, kept on the account item as `card`.

The webhook keeps it: a completed Checkout Session of ours that collected a card (setup mode, started
by POST /credits/cards, or a purchase made with `saveCard`) saves it, and `payment_method.detached`
naming it forgets it. Stripe may send events late, twice or out of order, so:
- a card replaces the account's only when Stripe created it later (`created`, or in the same second):
  the same card again, or an older one arriving late, changes nothing;
- a new card ends a suspension of auto top-up and its back-off (the failures were the old card's);
- a detached card is forgotten only while it is still the account's card (a newer one stays).
Each write is conditioned on the card as read, so a concurrent save or detach is read again.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from credits import keys
from credits.checkout import CARD_PURPOSE, SAVE_CARD
from credits.errors import TemporarilyUnavailable
from credits.ledger import iso_utc
from credits.payments import Outcome
from credits.store import ConditionFailed, DynamoStore, Key, Store, Update, absent, eq
from credits.stripe_objects import CheckoutSession, Event, PaymentMethod, object_id, started_here

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

CARD = "card"  # the account item's attribute
ATTEMPTS = 8  # reads of an account whose card changes under us (each change is a user's new card)
# a new card ends what the old one's failed payments started
FAILURES, RETRY, SUSPENDED = "topup_failures", "topup_retry_ms", "topup_suspended"


@dataclass(frozen=True)
class SavedCard:
    """A card Stripe keeps for the customer: what the user is shown of it and what a payment without
    them needs (the PaymentMethod and its customer); `created` (Unix seconds, Stripe's) orders cards."""

    id: str
    brand: str
    last4: str
    fingerprint: str | None
    exp_month: int
    exp_year: int
    customer: str
    created: int

    @classmethod
    def of(cls, method: PaymentMethod) -> SavedCard | None:
        """The card of a PaymentMethod saved for reuse; None for another kind of method (a bank debit)
        or a card Stripe attached to no customer (not saved: it cannot be charged again)."""
        customer = object_id(method.customer)
        if method.type != "card" or method.card is None or customer is None:
            return None
        card = method.card
        return cls(
            method.id, card.brand, card.last4, card.fingerprint, card.exp_month, card.exp_year, customer, method.created
        )

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> SavedCard:
        """The card of the account's `card` map."""
        fields = (item["id"], item["brand"], item["last4"], item.get("fingerprint"))
        return cls(*fields, item["exp_month"], item["exp_year"], item["customer"], item["created"])

    def item(self, saved_at: str) -> dict[str, Any]:
        """The account's `card` map: the card, and when it was saved (ISO UTC)."""
        return {**dataclasses.asdict(self), "saved_at": saved_at}

    def replaces(self, stored: Mapping[str, Any] | None) -> bool:
        """Whether this card takes the place of the account's (`stored`, its map): none yet, or another
        card not newer than this one. The same card never writes again. Stripe's `created` counts
        seconds: of two cards saved in the same second, the one recorded last stays."""
        if not stored:
            return True
        return stored.get("id") != self.id and int(stored.get("created") or 0) <= self.created


def account_key(user_id: str) -> Key:
    return (keys.user_pk(user_id), keys.ACCOUNT)


class Cards:
    """The users' saved cards, on their account items.

    `Cards(client, table_name)` on DynamoDB; `Cards.on(store)` on any store (the simulator's)."""

    def __init__(
        self,
        client: DynamoDBClient | None = None,
        table_name: str = "",
        *,
        store: Store | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if store is None:
            if client is None:
                raise TypeError("Cards needs a DynamoDB client and table name, or a store")
            store = DynamoStore(client, table_name)
        self.store = store
        self.clock = clock  # Unix seconds, for `saved_at` and `updated_at`

    @classmethod
    def on(cls, store: Store) -> Cards:
        return cls(store=store)

    def card(self, user_id: str) -> SavedCard | None:
        stored = self._stored(account_key(user_id))
        return None if stored is None else SavedCard.from_item(stored)

    def save(self, user_id: str, card: SavedCard) -> bool:
        """Make `card` the user's saved card unless it is theirs already or older than theirs (False:
        nothing written). A new card also ends a suspension of auto top-up and its back-off."""
        key = account_key(user_id)
        for _ in range(ATTEMPTS):
            stored = self._stored(key)
            if not card.replaces(stored):
                return False
            now = iso_utc(self.clock())
            saved = Update(
                key,
                set={CARD: card.item(now), FAILURES: 0, "updated_at": now},
                set_if_absent={"created_at": now},
                remove=(SUSPENDED, RETRY),
                condition=absent(CARD) if stored is None else eq(CARD, stored),
            )
            if self._written(saved):
                return True
        raise TemporarilyUnavailable(f"The saved card of {user_id} is busy. Please retry.")

    def forget(self, payment_method_id: str, customer_id: str) -> str | None:
        """Remove a card detached from its customer, if it is still the saved card of that customer's
        user; returns that user, or None when it was no account's saved card (any more)."""
        link = self.store.get((keys.customer_pk(customer_id), keys.CUSTOMER_SK))
        user_id = str(link["user_id"]) if link and link.get("user_id") else None
        if user_id is None:
            return None  # a customer this product never linked
        key = account_key(user_id)
        for _ in range(ATTEMPTS):
            stored = self._stored(key)
            if stored is None or stored.get("id") != payment_method_id:
                return None
            removed = Update(key, set={"updated_at": iso_utc(self.clock())}, remove=(CARD,), condition=eq(CARD, stored))
            if self._written(removed):
                return user_id
        raise TemporarilyUnavailable(f"The saved card of {user_id} is busy. Please retry.")

    def _stored(self, key: Key) -> dict[str, Any] | None:
        stored = (self.store.get(key) or {}).get(CARD)
        return stored if isinstance(stored, dict) else None

    def _written(self, update: Update) -> bool:
        """Write, unless the card changed since it was read (False: read it again)."""
        try:
            self.store.write(update, conflicts=True)  # a transaction in flight on the account: wait for it
            return True
        except ConditionFailed:
            return False


# ---- the webhook's part ---------------------------------------------------------------------------


class CardReader(Protocol):
    """Reads the card a completed Checkout Session saved (credits.stripe_gateway.StripeGateway)."""

    def saved_card(self, session: CheckoutSession) -> SavedCard | None: ...


def card_user(session: CheckoutSession) -> str | None:
    """The user whose card a Checkout Session of ours saves: a setup-mode session of POST /credits/cards
    (metadata `purpose` "card") or a purchase with metadata `saveCard` "true"; None for any other."""
    metadata = session.metadata or {}
    user_id = metadata.get("userId")
    if not user_id:
        return None
    if session.mode == "setup":
        return user_id if metadata.get("purpose") == CARD_PURPOSE else None
    return user_id if metadata.get(SAVE_CARD) == "true" and started_here(session) is not None else None


class CardEvents:
    """The Stripe events about saved cards, for `credits.payments.Payments(cards=...)`.

    The reader is made on first use (`reader()`): most events never read a card, and in the webhook
    making it reads Stripe's key."""

    def __init__(self, cards: Cards, reader: Callable[[], CardReader]) -> None:
        self.cards = cards
        self._make_reader = reader
        self._reader: CardReader | None = None

    def on_event(self, event: Event) -> Outcome:
        """`payment_method.detached`: the detached card is forgotten if it is an account's saved card.
        Stripe sends the method with `customer` null and the customer it had in `previous_attributes`."""
        method = PaymentMethod.model_validate(event.data.object)
        customer = object_id((event.data.previous_attributes or {}).get("customer"))
        user_id = self.cards.forget(method.id, customer) if customer else None
        if user_id is None:
            return Outcome("ignored", f"payment method {method.id} is no account's saved card")
        return Outcome("card_removed", f"card {method.id} was detached", user_id)

    def on_session(self, session: CheckoutSession, purchase: Outcome | None = None) -> Outcome:
        """A completed session: the card it saved becomes the user's, if the session saves one of ours.
        `purchase`: what crediting the session did (a purchase with `saveCard`), answered with a note
        on the card; None for a setup-mode session, which sells nothing."""
        user_id = card_user(session)
        if user_id is None:
            return purchase or Outcome("ignored", f"session {session.id} was not started by this product")
        card = self._read(session)
        if card is None:
            note = f"session {session.id} saved no card"
            kind = "ignored"
        elif self.cards.save(user_id, card):
            note, kind = f"card {card.id} saved", "card_saved"
        else:
            note, kind = f"card {card.id} is the saved card already, or older than it", "duplicate"
        if purchase is not None:
            return dataclasses.replace(purchase, detail=f"{purchase.detail}; {note}")
        return Outcome(kind, note, user_id)

    def _read(self, session: CheckoutSession) -> SavedCard | None:
        if self._reader is None:
            self._reader = self._make_reader()
        return self._reader.saved_card(session)
