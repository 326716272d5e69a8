"""Key layout of the credits table (docs/design.md section 3): every key is built here and nowhere else."""

from __future__ import annotations

USER = "USER#"
ACCOUNT = "ACCOUNT"
TX = "TX#"
REF = "REF#"  # a client's referenceId (POST /credits/use, /internal/*)
SYSREF = "SYSREF#"  # a reference the system writes for itself (purchases, refunds, disputes)
IDEM = "IDEM#"
HOLD = "HOLD#"
LIMIT = "LIMIT#"  # the first refusal of a month by the user's spend limit (an event, once)
EXPIRING = "EXPIRING#"  # a lot's credits expire soon (an event, once per lot)
USAGE = "USAGE#"  # a user's daily usage totals (insights, from the stream): USAGE#2026-12-06
REPAID = "REPAID#"  # credits a hold gave back repaid a debt, with no entry of their own (finance report)
FINANCE = "FINANCE#"  # the product's monthly figures per currency (insights): FINANCE#2026-11
REPORT = "REPORT#"  # a closed month's finance report, as the month-close function wrote it
PRODUCT_PK = "PRODUCT"  # the partition of the product's own figures
TOPUP = "TOPUP#"  # an auto top-up started by a decision (the top-up function reads it from the stream)
COUNTED = "COUNTED#"  # a ledger entry already added to its day's totals (exactly once)
INTENT = f"{ACCOUNT}#INTENT#"  # queued changes sort right after the account: one Query reads both
DECIDED = "DECIDED#"  # a queued change's decision, out of the queue's key range, for its waiter to read
CUSTOMER = "CUSTOMER#"
PACKAGE = "PACKAGE#"
PAYMENT = "PAYMENT#"
PACKAGE_SK = "PACKAGE"
CUSTOMER_SK = "CUSTOMER"
PAYMENT_SK = "PAYMENT"

# Packages carry this sparse index key so the catalog is one Query, never a table Scan.
CATALOG_INDEX = "CatalogIndex"
CATALOG_PARTITION = "PACKAGE"

# Accounts with a lot to warn about or expire carry this sparse index key (spread over shards), so
# the daily sweep finds the idle ones with a few Queries, never a table Scan.
LOTS_DUE_INDEX = "LotsDueIndex"
LOTS_DUE_PARTITION = "LOTS#"
LOTS_DUE_SHARDS = 16

SEQ_DIGITS = 12


def user_pk(user_id: str) -> str:
    return f"{USER}{user_id}"


def tx_sk(seq: int) -> str:
    return f"{TX}{seq:0{SEQ_DIGITS}d}"


def ref_sk(reference_id: str, *, system: bool = False) -> str:
    """A reference marker. Clients' and the system's references live in separate key spaces, so no
    value a client chooses can ever occupy (or replay) a reference the system writes for itself."""
    return f"{SYSREF if system else REF}{reference_id}"


def idem_sk(key: str) -> str:
    return f"{IDEM}{key}"


def hold_sk(hold_id: str) -> str:
    return f"{HOLD}{hold_id}"


def limit_sk(month: str) -> str:
    return f"{LIMIT}{month}"


def expiring_sk(lot_id: str) -> str:
    return f"{EXPIRING}{lot_id}"


def topup_sk(number: int) -> str:
    return f"{TOPUP}{number:0{SEQ_DIGITS}d}"


def repaid_sk(note: str) -> str:
    return f"{REPAID}{note}"


def finance_sk(month: str) -> str:
    return f"{FINANCE}{month}"


def report_sk(month: str) -> str:
    return f"{REPORT}{month}"


def intent_sk(created_ms: int, intent_id: str) -> str:
    return f"{INTENT}{created_ms:015d}#{intent_id}"


def decided_sk(intent_id: str) -> str:
    return f"{DECIDED}{intent_id}"


def customer_pk(customer_id: str) -> str:
    return f"{CUSTOMER}{customer_id}"


def package_pk(package_id: str) -> str:
    return f"{PACKAGE}{package_id}"


def payment_pk(payment_id: str) -> str:
    return f"{PAYMENT}{payment_id}"


def usage_sk(day: str) -> str:
    """A user's totals of one UTC day (YYYY-MM-DD)."""
    return f"{USAGE}{day}"


def counted_sk(seq: int) -> str:
    return f"{COUNTED}{seq:0{SEQ_DIGITS}d}"


def counted_note_sk(note: str) -> str:
    """A `REPAID#` note already added to its month (notes are numbered apart from entries)."""
    return f"{COUNTED}{REPAID}{note}"
