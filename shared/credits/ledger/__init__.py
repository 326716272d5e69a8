"""The credit ledger: every balance change, and the invariants that keep money right.

The invariants (all eight, numbered once) and the map of this package are in docs/design.md
sections 2 and 4. A reader names the module from the task at hand:

- `values`: what callers pass and get back (Entry, Posted, Hold, Settings, ...), limits, validation;
- `lots`: credit lots, the burn order and expiry (docs/adr/0010-credit-lots.md); no I/O;
- `account`: the account as read and as a pass of decisions changes it (lots settled first); no I/O;
- `rules`: given the account as read and one change, the outcome and its effects; no I/O;
- `codec`: each stored item's write and read, side by side (the key layout is `credits.keys`);
- `commit`: the direct path, one guarded transaction per change;
- `group`: group commit, a contended balance's changes decided in batches by one combiner;
- `reads`: balances, holds, history pages and the audit;
- `operations`: the `Ledger` every handler uses.

Everything other modules import is re-exported here.
"""

from credits.ledger.codec import account_view
from credits.ledger.operations import Ledger
from credits.ledger.topup import MAX_PER_MONTH, AutoTopUp, TopUpState
from credits.ledger.values import (
    CATEGORIES,
    DEFAULT_HOLD_TTL_SECONDS,
    DEFAULT_LOW_BALANCE_THRESHOLD,
    DEFAULT_PRIORITY,
    ENTRY_TYPES,
    EXPIRY_WARNING_DAYS,
    IDEMPOTENCY_TTL_SECONDS,
    MAX_AMOUNT,
    MAX_HOLD_TTL_SECONDS,
    MAX_KEY_BYTES,
    MAX_LOTS,
    MAX_NOTE_BYTES,
    MAX_OPEN_HOLDS,
    MAX_PRIORITY,
    MAX_TIME_BUDGET_SECONDS,
    REFUSAL_MEMORY_SECONDS,
    SETTINGS_CHANGES_PER_MINUTE,
    UNCHANGED,
    AccountView,
    Audit,
    Captured,
    Entry,
    ExtraConditionFailed,
    Hold,
    Idempotency,
    LotTerms,
    LotView,
    Policy,
    Posted,
    Released,
    Reserved,
    Settings,
    Transaction,
    Unchanged,
    fingerprint,
    iso_ms,
    iso_utc,
    key_problem,
    month_of,
    validate_amount,
    validate_token,
)
from credits.store import RETRIABLE_CODES, from_item, to_item

__all__ = [
    "CATEGORIES",
    "DEFAULT_HOLD_TTL_SECONDS",
    "DEFAULT_LOW_BALANCE_THRESHOLD",
    "DEFAULT_PRIORITY",
    "ENTRY_TYPES",
    "EXPIRY_WARNING_DAYS",
    "IDEMPOTENCY_TTL_SECONDS",
    "MAX_AMOUNT",
    "MAX_HOLD_TTL_SECONDS",
    "MAX_KEY_BYTES",
    "MAX_LOTS",
    "MAX_NOTE_BYTES",
    "MAX_OPEN_HOLDS",
    "MAX_PER_MONTH",
    "MAX_PRIORITY",
    "MAX_TIME_BUDGET_SECONDS",
    "REFUSAL_MEMORY_SECONDS",
    "RETRIABLE_CODES",
    "SETTINGS_CHANGES_PER_MINUTE",
    "UNCHANGED",
    "AccountView",
    "Audit",
    "AutoTopUp",
    "Captured",
    "Entry",
    "ExtraConditionFailed",
    "Hold",
    "Idempotency",
    "Ledger",
    "LotTerms",
    "LotView",
    "Policy",
    "Posted",
    "Released",
    "Reserved",
    "Settings",
    "TopUpState",
    "Transaction",
    "Unchanged",
    "account_view",
    "fingerprint",
    "from_item",
    "iso_ms",
    "iso_utc",
    "key_problem",
    "month_of",
    "to_item",
    "validate_amount",
    "validate_token",
]
