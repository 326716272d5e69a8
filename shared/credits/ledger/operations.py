"""The `Ledger`: every operation a caller may ask of a user's credits, validated, then handed to the
commit path (writes) or the reader (reads). The rules are in `rules.py`; how they reach the table,
in `commit.py` and `group.py`; the map of the package: docs/design.md section 2."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from credits.errors import ValidationError
from credits.ledger.commit import Committer
from credits.ledger.context import Context
from credits.ledger.group import GroupCommit
from credits.ledger.preferences import UserSettings
from credits.ledger.reads import Reader
from credits.ledger.rules import Change, Kind
from credits.ledger.values import (
    CATEGORIES,
    DEFAULT_HOLD_TTL_SECONDS,
    DEFAULT_LOW_BALANCE_THRESHOLD,
    ENTRY_TYPES,
    EXPIRY_WARNING_DAYS,
    MAX_AMOUNT,
    MAX_HOLD_TTL_SECONDS,
    MAX_NOTE_BYTES,
    MAX_PRIORITY,
    MAX_TIME_BUDGET_SECONDS,
    SETTINGS_CHANGES_PER_MINUTE,
    AccountView,
    Audit,
    Captured,
    Entry,
    Hold,
    Idempotency,
    LotTerms,
    Policy,
    Posted,
    Released,
    Reserved,
    Transaction,
    entry_fingerprint,
    validate_amount,
    validate_token,
)
from credits.store import DynamoStore, Store, Write

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient


class Ledger(UserSettings):
    """Posts entries to a user's ledger and reads it back. Give it a DynamoDB client and the table's
    name (the handlers do), or any `Store` (`store=`: the simulator's in-memory table)."""

    def __init__(
        self,
        client: DynamoDBClient | None,
        table_name: str = "",
        *,
        max_attempts: int = 64,
        # as long as an invocation can wait and still answer: template.yaml's functions time out after
        # 15 s; a waiter gives up 3 s before that, so a slow store delays an answer rather than fails it
        time_budget: float = 12.0,
        base_delay: float = 0.004,
        max_delay: float = 0.2,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        default_threshold: int = DEFAULT_LOW_BALANCE_THRESHOLD,
        settings_rate: int = SETTINGS_CHANGES_PER_MINUTE,
        store: Store | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        new_id: Callable[[], str] | None = None,
        expiry_warning_days: int = EXPIRY_WARNING_DAYS,
    ) -> None:
        if not 0 < time_budget <= MAX_TIME_BUDGET_SECONDS:
            # a longer wait would let a queued change outlive the memory of a refusal under its key
            raise ValueError(f"time_budget must be in (0, {MAX_TIME_BUDGET_SECONDS}] seconds")
        if store is None:
            assert client is not None, "a DynamoDB client, or a store"
            store = DynamoStore(
                client,
                table_name,
                max_attempts=max_attempts,
                base_delay=base_delay,
                max_delay=max_delay,
                sleep=sleep,
                rng=rng,
            )
        self.client = client
        self.table = table_name
        self.store = store
        self.settings_rate = settings_rate  # settings changes a user may make per UTC minute
        # Bounds sized by tests/integration/test_concurrency.py and `make bench`: 16 writers on one
        # balance in DynamoDB Local needed up to 34 attempts; whichever bound comes first ends the retries.
        self.ctx = Context(
            store,
            clock,
            monotonic,
            sleep,
            rng,
            max_attempts=max_attempts,
            time_budget=time_budget,
            base_delay=base_delay,
            max_delay=max_delay,
            default_threshold=default_threshold,
        )
        if new_id is not None:
            self.ctx.new_id = new_id
        self.ctx.warn_ms = expiry_warning_days * 86_400_000
        self.group = GroupCommit(self.ctx)
        self.committer = Committer(self.ctx, self.group)
        self.reader = Reader(self.ctx)

    @property
    def time_budget(self) -> float:
        return self.ctx.time_budget

    @time_budget.setter
    def time_budget(self, seconds: float) -> None:
        self.ctx.time_budget = seconds

    @property
    def clock(self) -> Callable[[], float]:
        return self.ctx.clock

    @property
    def sleep(self) -> Callable[[float], None]:
        return self.ctx.sleep

    @sleep.setter
    def sleep(self, sleep: Callable[[float], None]) -> None:
        self.ctx.sleep = sleep
        if isinstance(self.store, DynamoStore):
            self.store.sleep = sleep

    # ---- writes -------------------------------------------------------------------------------

    def charge(
        self,
        user_id: str,
        amount: int,
        *,
        description: str,
        reference_id: str | None = None,
        idempotency: Idempotency | None = None,
        action: str | None = None,
    ) -> Posted:
        """Spend credits for usage; InsufficientCredits when `available` does not cover it. `action`
        (the priced action or route) is kept on the entry for the usage by action."""
        validate_amount(amount)
        if action is not None:
            validate_token(action, "action")
        entry = Entry(-amount, "usage", description, reference_id, action=action)
        return self.post(user_id, entry, Policy.USAGE, idempotency=idempotency)

    def grant(
        self,
        user_id: str,
        amount: int,
        *,
        type: str,
        description: str,
        reference_id: str | None = None,
        monetary_amount: int | None = None,
        currency: str | None = None,
        idempotency: Idempotency | None = None,
        extra: Sequence[Write] = (),
        lot: LotTerms | None = None,
        source: str | None = None,
    ) -> Posted:
        """Add credits (purchase, gift, adjustment, dispute won) to a lot with `lot`'s terms (None:
        paid, no expiry). A won dispute names its purchase (`source`): it gives back only what its
        hold took (docs/adr/0010-credit-lots.md)."""
        validate_amount(amount)
        entry = Entry(amount, type, description, reference_id, monetary_amount, currency, lot=lot, source=source)
        return self.post(user_id, entry, Policy.CREDIT, idempotency=idempotency, extra=extra)

    def claw_back(
        self,
        user_id: str,
        amount: int,
        *,
        type: str,
        description: str,
        reference_id: str,
        monetary_amount: int | None = None,
        currency: str | None = None,
        extra: Sequence[Write] = (),
        source: str | None = None,
    ) -> Posted:
        """Take back credits whose payment was refunded or disputed; may go below zero. With `source`
        (the purchase's reference, `purchase:<payment>`), its own lot is drawn first and its credits
        that expired already are not taken back again (rule 5 of docs/adr/0010-credit-lots.md): the
        entry may then be smaller than `amount`."""
        validate_amount(amount)
        entry = Entry(-amount, type, description, reference_id, monetary_amount, currency, source=source)
        return self.post(user_id, entry, Policy.CLAWBACK, extra=extra)

    def adjust(
        self,
        user_id: str,
        amount: int,
        *,
        description: str,
        reference_id: str | None = None,
        force_negative: bool = False,
        reason: str | None = None,
        lot: LotTerms | None = None,
    ) -> Posted:
        """An operator's `adjustment` entry of a signed amount. A credit (amount > 0) is a grant; a
        debit never takes the balance, nor `available` (open holds count), below zero
        (InsufficientCredits, nothing written) unless `force_negative`, which needs a `reason`
        (kept on the entry) and then posts it like a clawback."""
        if type(amount) is not int or amount == 0:
            raise ValidationError("An adjustment must be a non-zero integer.", [{"field": "amount"}])
        validate_amount(abs(amount))
        if force_negative and (amount > 0 or not (reason or "").strip()):
            raise ValidationError("Only a debit may be forced below zero, and only with a reason.")
        if amount > 0:
            return self.grant(
                user_id, amount, type="adjustment", description=description, reference_id=reference_id, lot=lot
            )
        entry = Entry(amount, "adjustment", description, reference_id, reason=reason if force_negative else None)
        return self.post(user_id, entry, Policy.CLAWBACK if force_negative else Policy.ADJUSTMENT)

    def post(
        self,
        user_id: str,
        entry: Entry,
        policy: Policy,
        *,
        idempotency: Idempotency | None = None,
        extra: Sequence[Write] = (),
    ) -> Posted:
        """Write one entry atomically, retrying lost races; replays a known reference or key.

        `extra` writes join the same transaction (e.g. a payment record's state change); when one
        of their conditions fails, ExtraConditionFailed tells the caller to re-read and decide again.
        """
        validate_token(user_id, "userId")
        if entry.type not in ENTRY_TYPES:
            raise ValidationError(f"Unknown transaction type {entry.type!r}.")
        if entry.reference_id is not None:
            validate_token(entry.reference_id, "referenceId")
        if idempotency is not None:
            validate_token(idempotency.key, "Idempotency-Key")
        if entry.lot is not None:
            validate_terms(entry.lot)
        change = Change(Kind.POST, entry, policy, idempotency, entry_fingerprint(entry))
        return Posted.of(self.committer.run(user_id, change, extra))

    def reserve(
        self,
        user_id: str,
        amount: int,
        *,
        description: str,
        ttl_seconds: int = DEFAULT_HOLD_TTL_SECONDS,
        idempotency: Idempotency | None = None,
        action: str | None = None,
    ) -> Reserved:
        """Open a hold of `amount` credits for `ttl_seconds` (invariant 6): it counts against
        `available` until it is captured, released or expires. InsufficientCredits when it does
        not fit. A repeat with the same Idempotency-Key returns the same hold."""
        validate_token(user_id, "userId")
        change = reserve_change(amount, description, ttl_seconds, idempotency, action)
        v = self.committer.run(user_id, change)
        return Reserved(
            v["hold_id"], v["amount"], v["expires_at_ms"], v["balance"], v["available"], bool(v.get("replayed"))
        )

    def capture(self, user_id: str, hold_id: str, amount: int | None = None, *, note: str | None = None) -> Captured:
        """End an open hold with ONE usage entry of `amount` (default: all of it; 0 posts nothing),
        reference `hold:<holdId>`; the rest is released. A repeat replays the first answer. `note`
        (at most MAX_NOTE_BYTES) is kept on the hold, written with its end."""
        validate_token(user_id, "userId")
        validate_token(hold_id, "holdId")
        if note is not None and len(note.encode("utf-8")) > MAX_NOTE_BYTES:
            raise ValidationError(f"A capture's note is at most {MAX_NOTE_BYTES} bytes.")
        if amount is not None and (type(amount) is not int or not 0 <= amount <= MAX_AMOUNT):
            raise ValidationError(f"amount must be an integer from 0 to {MAX_AMOUNT}.", [{"field": "amount"}])
        v = self.committer.run(user_id, Change(Kind.CAPTURE, hold_id=hold_id, amount=amount, note=note))
        return Captured(
            hold_id, v["transaction_id"], v["charged"], v["balance"], v["available"], bool(v.get("replayed"))
        )

    def release(self, user_id: str, hold_id: str) -> Released:
        """End an open hold with no entry; a released hold's Idempotency-Key may be used again.
        Releasing an expired hold changes nothing and says so (it already counts for nothing)."""
        validate_token(user_id, "userId")
        validate_token(hold_id, "holdId")
        v = self.committer.run(user_id, Change(Kind.RELEASE, hold_id=hold_id))
        return Released(hold_id, v["released"], v["balance"], v["available"], bool(v.get("replayed")))

    def sweep(self, user_id: str) -> int:
        """Write what the account owes without anything else happening to it: the expiration entries
        of lots that expired, and the announcements of lots about to (the daily sweep of idle
        accounts), at most 8 of each per write. The number of expiration entries written; a sweep of
        an account that owes nothing writes nothing."""
        validate_token(user_id, "userId")
        return int(self.committer.run(user_id, Change(Kind.SWEEP)).get("expired", 0))

    # ---- reads --------------------------------------------------------------------------------

    def balance(self, user_id: str) -> int:
        """The current balance; 0 for a user who never had credits."""
        return self.reader.account(user_id).balance

    def account(self, user_id: str) -> AccountView:
        return self.reader.account(user_id)

    def holds(self, user_id: str) -> list[Hold]:
        return self.reader.holds(user_id)

    def hold(self, user_id: str, hold_id: str) -> Hold | None:
        return self.reader.hold(user_id, hold_id)

    def transactions(
        self, user_id: str, *, limit: int = 20, cursor: str | None = None
    ) -> tuple[list[Transaction], str | None]:
        return self.reader.transactions(user_id, limit=limit, cursor=cursor)

    def history(self, user_id: str) -> list[Transaction]:
        return self.reader.history(user_id)

    def audit(self, user_id: str) -> Audit:
        return self.reader.audit(user_id)


def reserve_change(
    amount: int, description: str, ttl_seconds: int, idempotency: Idempotency | None, action: str | None
) -> Change:
    """A hold's change, its values checked (ValidationError names the field)."""
    validate_amount(amount)
    if type(ttl_seconds) is not int or not 1 <= ttl_seconds <= MAX_HOLD_TTL_SECONDS:
        raise ValidationError(
            f"ttlSeconds must be an integer from 1 to {MAX_HOLD_TTL_SECONDS}.", [{"field": "ttlSeconds"}]
        )
    if idempotency is not None:
        validate_token(idempotency.key, "Idempotency-Key")
    if action is not None:
        validate_token(action, "action")
    return Change(
        Kind.RESERVE,
        idempotency=idempotency,
        amount=amount,
        ttl_seconds=ttl_seconds,
        description=description,
        action=action,
    )


def validate_terms(terms: LotTerms) -> None:
    """A lot's terms: a known category, a priority from 0 to MAX_PRIORITY, an expiry (whether it is
    still ahead is the rules' to say, after a replay: a retry of a grant answers what it answered)."""
    if terms.category not in CATEGORIES:
        raise ValidationError("category must be paid or promotional.", [{"field": "category"}])
    if terms.priority is not None and (type(terms.priority) is not int or not 0 <= terms.priority <= MAX_PRIORITY):
        raise ValidationError(f"priority must be an integer from 0 to {MAX_PRIORITY}.", [{"field": "priority"}])
    expires = terms.expires_at_ms
    if expires is not None and type(expires) is not int:
        raise ValidationError("expiresAt must be a time.", [{"field": "expiresAt"}])
