"""What every part of the ledger is given: the store, the time, randomness and ids, and its bounds.

Injected, never global, so the deterministic simulator can run the real code on a virtual clock,
a seeded generator and an in-memory store.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Sequence

from msgspec import Struct, field

from credits.ledger.account import Decision
from credits.ledger.values import EXPIRY_WARNING_DAYS, ExtraConditionFailed
from credits.store import Store, TransactionCancelled, Write


def _uuid() -> str:
    return str(uuid.uuid4())


class Context(Struct, dict=True):
    """What the ledger works with: the store, clocks, randomness and limits (`dict=True`: a method
    can be replaced on one instance, as the fault tests do)."""

    store: Store
    clock: Callable[[], float] = time.time  # wall time, for what is stored (Unix seconds)
    monotonic: Callable[[], float] = time.monotonic  # for deadlines
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random | None = None  # None: the random module's own (credits.aws reseeds it after a restore)
    new_id: Callable[[], str] = field(default=_uuid)
    max_attempts: int = 64
    time_budget: float = 12.0
    base_delay: float = 0.004
    max_delay: float = 0.2
    default_threshold: int = 10
    warn_ms: int = EXPIRY_WARNING_DAYS * 86_400_000  # "Credits Expiring Soon" this long before a lot expires

    def decision(self, now: float) -> Decision:
        return Decision(now, self.new_id, self.default_threshold, self.warn_ms)

    def backoff(self, attempt: int) -> None:
        """Full jitter: a random wait up to base * 2^attempt, capped."""
        self.sleep(self.uniform(0, min(self.max_delay, self.base_delay * (2**attempt))))

    def uniform(self, low: float, high: float) -> float:
        return (self.rng or random).uniform(low, high)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def commit(self, writes: Sequence[Write], *, token: str, first_extra: int) -> bool:
        """ONE transaction (invariant 1). True when it landed; False when a condition of ours or a
        conflict asks for a re-read; ExtraConditionFailed when a caller's own item's condition failed."""
        try:
            self.store.transact(writes, token=token)
        except TransactionCancelled as cancelled:
            if cancelled.condition_failed(0, first_extra) or cancelled.conflict:
                return False  # a lost race (seq moved, marker appeared): re-read and decide again
            if cancelled.condition_failed(first_extra):
                raise ExtraConditionFailed(cancelled.reasons.index("condition") - first_extra) from cancelled
            return False
        return True
