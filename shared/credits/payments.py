"""Stripe payments into the ledger: purchases credited once, refunds and disputes clawed back once.

EXACTLY ONCE (docs/design.md section 4, invariant 4), kept here on top of the ledger's reference markers:
- a purchase is keyed by its payment (`purchase:<payment_intent>`), not by the event, so the same
  payment credits once whatever announces it: a replayed event, `completed` and
  `async_payment_succeeded` for one session, or a retry after the event-id record expired;
- each payment has a `PAYMENT#<payment_intent>` record holding FACTS (money refunded so far, every
  dispute on it and its status) and LEDGER STATE (credits taken for refunds, credits held by
  disputes, and how many settlement steps were posted).
  An event only records facts, monotonically (a late or repeated event changes nothing); then
  `settle` moves the ledger state towards what the facts require, one ledger transaction per step,
  each conditioned on the record state it was computed from. So events may arrive in any order
  (a refund before its purchase is remembered and applied when the purchase lands), a crash
  between steps is finished by the next delivery, and clawbacks never exceed what was bought.
  Which step comes next is a pure calculation from the record: `credits.settlement.next_step`.
- every ledger entry posted for a payment carries a SYSTEM reference (`purchase:<pi>`, then
  `settle:<pi>:<step number>`): unique per step, never reused for a different step, and in a key
  space no client-chosen referenceId can reach (keys.SYSREF).
- a state that cannot be settled (a conflict, an impossible record) raises SettlementFailed: the
  webhook answers 5xx, logs an error and raises an alarmed metric. Never a 2xx or 4xx.

CREDIT LOTS (docs/adr/0010-credit-lots.md): a purchase credits a paid lot of its own, source
`purchase:<pi>`, expiring `expiresInDays` after it is credited when its package says so (a term of
the sale, fixed in the session at checkout). Refund and dispute steps name that source: the ledger
draws the purchase's lot first and never takes back its credits that had expired already, so an
entry may move less than its step (the entry's `expired_part`). The record counts the step's credits
as the settlement computed them; `Outcome.credits` is what the balance moved.

The Stripe objects read are in `credits.stripe_objects`; this module is the service that reads and
writes payment records (through a `credits.store.Store`) and posts to the ledger.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import pydantic

from credits import keys
from credits.errors import CreditsError, ReferenceReused, SettlementFailed, TemporarilyUnavailable, ValidationError
from credits.ledger import (
    MAX_AMOUNT,
    Entry,
    ExtraConditionFailed,
    Ledger,
    LotTerms,
    Policy,
    Posted,
    Transaction,
    iso_utc,
)
from credits.off_session import TOPUP_EVENTS, PaymentIntent, failed_details, paid_details
from credits.packages import MAX_EXPIRES_IN_DAYS, Catalog
from credits.settlement import (
    CLOSED,
    DAY_MS,
    DISPUTE_ATTRIBUTE,
    RELEASED,
    DisputeFact,
    LedgerState,
    PaymentRecord,
    Step,
    next_step,
    payment_problems,
    purchase_reference,
)
from credits.store import Cond, ConditionFailed, DynamoStore, Key, Store, Update, absent, eq, lt
from credits.stripe_objects import (
    HANDLED,
    Charge,
    CheckoutSession,
    Dispute,
    Event,
    EventData,
    object_id,
    parse_event,
    started_here,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

    from credits.cards import CardEvents

__all__ = [  # the names other modules imported from here before the split, still here
    "CLOSED",
    "DISPUTE_ATTRIBUTE",
    "HANDLED",
    "MAX_RECOMPUTES",
    "RELEASED",
    "STUB_TTL_SECONDS",
    "Charge",
    "CheckoutSession",
    "Dispute",
    "DisputeFact",
    "Event",
    "EventData",
    "Outcome",
    "PaymentRecord",
    "Payments",
    "object_id",
    "parse_event",
    "record_key",
]

STUB_TTL_SECONDS = 90 * 24 * 3600  # facts about payments we never credited are forgotten after 90 days
MAX_RECOMPUTES = 8
# Whether a fact is news on the record as read: the condition that keeps it news until written, or
# None when it is not news.
News = Callable[[Mapping[str, Any] | None], Cond | None]


@dataclass(frozen=True)
class Outcome:
    """What an event did, for the response, the log line and the metrics."""

    kind: str  # granted, duplicate, clawed_back, restored, noted, pending, waiting, failed, mismatch, ignored
    detail: str = ""
    user_id: str | None = None
    credits: int = 0  # what the balance moved (a refund of credits that expired already moves none)

    def body(self) -> dict[str, Any]:
        return {"outcome": self.kind, "detail": self.detail, "credits": self.credits}


class Terms(NamedTuple):
    """What a session sold: the package's name, its credits for its price, and how many days after
    the purchase is credited they expire (None: never)."""

    name: str
    credits: int
    price: int
    currency: str
    expires_in_days: int | None = None


def _count(text: str | None, limit: int = MAX_AMOUNT) -> int | None:
    """A positive integer written by us in metadata, at most `limit`, or None."""
    if text is None or not re.fullmatch(r"[0-9]{1,10}", text):
        return None
    value = int(text)
    return value if 0 < value <= limit else None


class Payments:
    """Applies Stripe events to the ledger.

    `Payments(ledger, catalog, client, table_name)` keeps payment records in that table;
    `Payments(ledger, catalog)` on the ledger's own store, `store=` on any `Store` (the simulator's).
    The record's updates are posted in the ledger's transactions, so it must be the ledger's table.
    """

    def __init__(
        self,
        ledger: Ledger,
        catalog: Catalog,
        client: DynamoDBClient | None = None,
        table_name: str = "",
        *,
        store: Store | None = None,
        clock: Callable[[], float] | None = None,
        cards: CardEvents | None = None,
    ) -> None:
        self.ledger = ledger
        self.catalog = catalog
        if store is None:
            store = ledger.store if client is None else DynamoStore(client, table_name)
        self.store = store
        self.clock = clock or ledger.clock  # Unix seconds, for what is stored
        self.cards = cards  # saved cards (credits.cards); None: card events are ignored

    def handle(self, payload: dict[str, Any]) -> Outcome:
        """Apply one verified Stripe event; unknown types are ignored."""
        event = parse_event(payload)
        if event.type not in HANDLED and event.type not in TOPUP_EVENTS:
            return Outcome("ignored", f"event type {event.type} is not used")
        obj = event.data.object
        try:
            if event.type in TOPUP_EVENTS:
                return self._intent(event.type, PaymentIntent.model_validate(obj))
            if event.type == "payment_method.detached":
                return self.cards.on_event(event) if self.cards else Outcome("ignored", "saved cards are not kept here")
            if event.type.startswith("checkout.session."):
                return self._session(event.type, CheckoutSession.model_validate(obj))
            if event.type == "charge.refunded":
                return self._refund(Charge.model_validate(obj))
            return self._dispute(Dispute.model_validate(obj))
        except pydantic.ValidationError:
            raise ValidationError(f"The {event.type} object is not valid.") from None

    # ---- purchases ----------------------------------------------------------------------------

    def _session(self, event_type: str, session: CheckoutSession) -> Outcome:
        if session.mode == "setup":  # saves a card and sells nothing (credits.cards)
            return self.cards.on_session(session) if self.cards else Outcome("ignored", "saved cards are not kept here")
        started = started_here(session)
        if started is None:
            return Outcome("ignored", f"session {session.id} was not started by this product")
        metadata, user_id, package_id = session.metadata or {}, started.user_id, started.package_id
        if metadata.get("userId") not in (None, user_id):
            return Outcome("mismatch", f"session {session.id}: client_reference_id and metadata disagree")
        if event_type == "checkout.session.async_payment_failed":
            return Outcome("failed", f"async payment failed for session {session.id}", user_id)
        if session.payment_status != "paid":
            # An async method (bank debit, voucher): the money is not there yet.
            return Outcome("waiting", f"session {session.id} is {session.payment_status}", user_id)

        terms = self._terms(metadata, package_id)
        if terms is None:
            return Outcome("mismatch", f"session {session.id}: unknown package {package_id}", user_id)
        if (session.amount_total, session.currency) != (terms.price, terms.currency):
            return Outcome(
                "mismatch",
                f"session {session.id} paid {session.amount_total} {session.currency}; "
                f"package {package_id} was sold for {terms.price} {terms.currency}",
                user_id,
            )
        credited = self._credit(object_id(session.payment_intent) or session.id, session.id, user_id, terms)
        return self.cards.on_session(session, credited) if self.cards else credited  # with `saveCard`, its card

    def _intent(self, event_type: str, intent: PaymentIntent) -> Outcome:
        """An auto top-up's off-session payment (credits.topups started it): paid, it credits the
        package's terms once, like a purchase; failed, it ends the top-up with the decline's code."""
        topup = intent.topup
        if topup is None:
            return Outcome("ignored", f"payment {intent.id} is not an auto top-up")
        user_id, topup_id = topup
        if event_type == "payment_intent.payment_failed":
            code = intent.failure_code
            self.ledger.finish_top_up(user_id, topup_id, failure=code, details=failed_details(intent.id, code))
            return Outcome("failed", f"auto top-up {topup_id} failed: {code}", user_id)
        return self.top_up_paid(intent, user_id, topup_id)

    def top_up_paid(self, intent: PaymentIntent, user_id: str, topup_id: str) -> Outcome:
        """Credit a paid auto top-up once (the webhook, reconcile, or the top-up function that made
        the payment, whichever comes first), then end it (once)."""
        if intent.status != "succeeded":
            return Outcome("waiting", f"payment {intent.id} is {intent.status}", user_id)
        metadata = intent.metadata or {}
        terms = self._terms(metadata, metadata.get("packageId", ""))
        if terms is None or (intent.amount, intent.currency) != (terms.price, terms.currency):
            # Ours to look at (the top-up stays pending, so none other starts meanwhile).
            return Outcome("mismatch", f"auto top-up {topup_id}: payment {intent.id} does not match its terms", user_id)
        description = f"Auto top-up: {terms.name}, {terms.credits} credits"
        outcome = self._credit(intent.id, "", user_id, terms, description)
        self.ledger.finish_top_up(user_id, topup_id, details=paid_details(intent.id, terms))
        return outcome

    def _terms(self, metadata: dict[str, str], package_id: str) -> Terms | None:
        """What was sold: the terms fixed in the session at checkout (`credits.checkout.session_metadata`;
        without `expiresInDays` the credits never expire), else the catalog's current ones."""
        package = self.catalog.get(package_id)
        credits, price = _count(metadata.get("credits")), _count(metadata.get("price"))
        currency = metadata.get("currency", "")
        days_text = metadata.get("expiresInDays")
        days = _count(days_text, MAX_EXPIRES_IN_DAYS)
        if credits and price and re.fullmatch(r"[a-z]{3}", currency) and (days_text is None or days):
            return Terms(package.name if package else package_id, credits, price, currency, days)
        if package is None:
            return None
        return Terms(package.name, package.credits, package.price, package.currency, package.expires_in_days)

    def _credit(
        self, payment_id: str, session_id: str, user_id: str, terms: Terms, description: str | None = None
    ) -> Outcome:
        """Credit a paid purchase once, to a paid lot of its own (expiring `expires_in_days` after now,
        if the package said so), then settle what arrived about it before."""
        name, credits, price, currency, days = terms
        now, reference = self.clock(), purchase_reference(payment_id)
        expires = None if days is None else int(now * 1000) + days * DAY_MS
        entry = Entry(
            credits,
            "purchase",
            description or f"{name}: {credits} credits",
            reference,
            price,
            currency,
            system_reference=True,  # so not `Ledger.grant`, which posts client references only
            lot=LotTerms("paid", None, expires, label=name, source=reference),
        )
        credited = purchase_update(payment_id, session_id, user_id, terms, now)
        try:
            posted = self._post(user_id, entry, Policy.CREDIT, credited)
        except ExtraConditionFailed:
            record = self.record(payment_id)
            if record is None or not record.granted or record.user_id != user_id:
                # On record as credited to someone else (or a record that moved back): never credit
                # it twice, and never call it fine. Ours to look at.
                raise SettlementFailed(f"payment {payment_id} is on record as credited to another user") from None
            posted = None  # credited before (under an earlier reference layout): a duplicate
        settled = self._settle(payment_id)  # refunds or disputes that arrived before the purchase
        if posted is None or posted.replayed:
            return Outcome("duplicate", f"payment {payment_id} was already credited", user_id, 0)
        detail = f"payment {payment_id}" + (f"; {settled:+d} credits from earlier events" if settled else "")
        return Outcome("granted", detail, user_id, credits)

    # ---- facts --------------------------------------------------------------------------------

    def _refund(self, charge: Charge) -> Outcome:
        payment_id = object_id(charge.payment_intent) or charge.id
        learned = self._note(
            payment_id, {"refunded_amount": charge.amount_refunded}, refund_news(charge.amount_refunded)
        )
        return self._after_fact(payment_id, f"refund of {payment_id} to {charge.amount_refunded}", learned)

    def _dispute(self, dispute: Dispute) -> Outcome:
        payment_id = object_id(dispute.payment_intent)
        if payment_id is None:
            return Outcome("ignored", f"dispute {dispute.id} names no payment")
        fact = DisputeFact(dispute.status, dispute.amount)
        # Each dispute on the payment is its own attribute: two disputes never overwrite each other.
        attribute = f"{DISPUTE_ATTRIBUTE}{dispute.id}"
        value = {"status": fact.status, "rank": fact.rank, "amount": fact.amount}
        learned = self._note(payment_id, {attribute: value}, dispute_news(attribute, fact.rank))
        return self._after_fact(payment_id, f"dispute {dispute.id} {dispute.status}", learned)

    def _note(self, payment_id: str, sets: dict[str, Any], news: News) -> bool:
        """Record facts about a payment if they are news (False when not); unknown payments get a record.

        Decided from the record as read and written only if it still holds: a record credited, or
        the same fact noted, meanwhile is read again (each can happen only a few times)."""
        key = record_key(payment_id)
        for _ in range(MAX_RECOMPUTES):
            item = self.store.get(key)
            guard = news(item)
            if guard is None:
                return False  # not news
            granted = bool(item and item.get("granted"))
            try:
                self.store.write(fact_update(key, sets, guard, granted=granted, now=self.clock()), conflicts=True)
                return True
            except ConditionFailed:
                continue
        raise TemporarilyUnavailable(f"The record of payment {payment_id} is busy. Please retry.")

    def _after_fact(self, payment_id: str, what: str, learned: bool) -> Outcome:
        record = self.record(payment_id)
        if record is None or not record.granted:
            # Not credited (yet): remembered, and applied if and when the purchase arrives.
            return Outcome("pending", f"{what}: payment not credited by this product (yet)")
        change = self._settle(payment_id)
        if change < 0:
            return Outcome("clawed_back", what, record.user_id, -change)
        if change > 0:
            return Outcome("restored", what, record.user_id, change)
        return Outcome("duplicate" if not learned else "noted", what, record.user_id)

    # ---- ledger state -------------------------------------------------------------------------

    def _settle(self, payment_id: str) -> int:
        """Post what the payment's facts require and the ledger does not show yet; returns the net
        change of the balance (credits of the purchase that had expired are not taken back again: a
        step may move less than it counts on the record)."""
        net = 0
        for _ in range(MAX_RECOMPUTES):
            record = self.record(payment_id)
            if record is None or not record.granted or record.user_id is None:
                return net
            step = next_step(record)
            if step is None:
                return net
            posted = self._take(record.user_id, record, step)
            if posted is not None:
                net += posted.amount
            # else: the record moved under us, or a concurrent delivery posted the step: recompute
        # Each round either posts a step or sees the record move: eight rounds without an end is not
        # contention but a state we cannot settle.
        raise SettlementFailed(f"payment {payment_id} did not settle after {MAX_RECOMPUTES} rounds")

    def _take(self, user_id: str, record: PaymentRecord, step: Step) -> Posted | None:
        """Post one settlement step with the record's new state: None when it was not ours to post."""
        entry = step.entry(int(self.clock() * 1000))
        try:
            return self._post(user_id, entry, step.policy, state_update(record, step))
        except ExtraConditionFailed:
            return None  # the record moved under us (a concurrent event)

    def _post(self, user_id: str, entry: Entry, policy: Policy, record_update: Update) -> Posted | None:
        """Post a payment's ledger entry with its record update in one transaction: the Posted, or None
        when its reference was already posted (by a concurrent delivery). Any other refusal is a
        state we cannot settle."""
        try:
            posted = self.ledger.post(user_id, entry, policy, extra=[record_update])
        except (ExtraConditionFailed, TemporarilyUnavailable):
            raise
        except ReferenceReused as exc:
            if entry.type == "purchase":  # the same payment posted with other terms: impossible
                raise SettlementFailed(f"purchase {entry.reference_id} is on the ledger with other terms") from exc
            return None
        except CreditsError as exc:
            raise SettlementFailed(
                f"{entry.type} of {entry.amount} for {user_id} refused: {type(exc).__name__}"
            ) from exc
        return None if posted.replayed and entry.type != "purchase" else posted

    # ---- audit and reads ----------------------------------------------------------------------

    def audit(self, user_id: str, history: list[Transaction]) -> list[str]:
        """Problems between a user's ledger and the records of the payments credited to them: the
        purchase, refund and dispute entries of each payment must add up to what its facts require."""
        prefix = purchase_reference("")
        credited = {
            str(t.reference_id)[len(prefix) :]
            for t in history
            if t.type == "purchase" and (t.reference_id or "").startswith(prefix)
        }
        problems: list[str] = []
        for payment_id in sorted(credited):
            problems += payment_problems(payment_id, user_id, self.record(payment_id), history)
        return problems

    def record(self, payment_id: str) -> PaymentRecord | None:
        item = self.store.get(record_key(payment_id))
        return None if item is None else PaymentRecord.from_item(payment_id, item)


# ---- the payment record's writes ----------------------------------------------------------------


def record_key(payment_id: str) -> Key:
    return (keys.payment_pk(payment_id), keys.PAYMENT_SK)


def refund_news(total: int) -> News:
    """Refunds are cumulative: only a larger total is news (a late, older event is not)."""
    larger = absent("refunded_amount") | lt("refunded_amount", total)
    return lambda item: larger if larger.holds(item) else None


def dispute_news(attribute: str, rank: int) -> News:
    """A dispute is news unknown, or known at a lower rank: a closed dispute stays closed, and a late
    `created` after `closed` is not news. Written only if the dispute is still as read."""

    def news(item: Mapping[str, Any] | None) -> Cond | None:
        if item is None or attribute not in item:
            return absent(attribute)
        known = item[attribute]
        known_rank = known.get("rank") if isinstance(known, dict) else None
        return eq(attribute, known) if isinstance(known_rank, int) and known_rank < rank else None

    return news


def fact_update(key: Key, sets: Mapping[str, Any], guard: Cond, *, granted: bool, now: float) -> Update:
    """Note facts on a payment's record (creating it); facts about a payment we never credited
    expire, and are noted only while it is still not credited. A credited record never expires."""
    if granted:
        return Update(key, set=sets, condition=guard)
    expires = {"expires_at": int(now) + STUB_TTL_SECONDS}
    return Update(key, set=sets, set_if_absent=expires, condition=guard & absent("granted"))


def purchase_update(payment_id: str, session_id: str, user_id: str, terms: Terms, now: float) -> Update:
    """Turn the payment's record (absent, or facts noted before the purchase) into a credited one."""
    credited = {
        "granted": True,
        "user_id": user_id,
        "credits": terms.credits,
        "amount": terms.price,
        "currency": terms.currency,
        "session_id": session_id,
        "granted_at": iso_utc(now),
        "package_name": terms.name,  # the terms of credits a won dispute gives back
        **({} if terms.expires_in_days is None else {"expires_in_days": terms.expires_in_days}),
        **dataclasses.asdict(LedgerState()),  # nothing taken back yet, no step posted
    }
    return Update(
        record_key(payment_id),
        set=credited,
        set_if_absent={"refunded_amount": 0},
        remove=("expires_at",),
        condition=absent("granted"),
    )


def state_update(record: PaymentRecord, step: Step) -> Update:
    """The record's ledger state after `step`, only if it is still the state the step was computed from."""
    unchanged = eq("credits_refunded", record.credits_refunded) & eq("credits_disputed", record.credits_disputed)
    if record.settle_steps:
        unchanged &= eq("settle_steps", record.settle_steps)
    else:  # a record credited before steps were counted has none yet
        unchanged &= absent("settle_steps") | eq("settle_steps", 0)
    return Update(record_key(record.payment_id), set=step.record_changes(), condition=unchanged)
