"""Usage insights: per-user daily totals kept from the credits table's stream, never on the charge path.

Each ledger entry (a `TX#` insert on the stream) adds to its user's day (UTC, from the entry's
`created_at`) in the item `USAGE#<day>`: credits spent by action (`spent:<action>`; a usage entry
without an action, from before actions were recorded, counts as `other`), bought, granted, expired,
clawed back (refunds and disputes, less what won disputes gave back), debited by an operator.

Counted exactly once: the day's update and a marker `COUNTED#<seq>` are one transaction whose marker
must not exist, so a record delivered twice, or retried after a partial batch, adds nothing the second
time; records arriving out of order add the same sums (addition commutes). The marker lives a week
(the stream keeps records 24 hours).

`GET /credits/usage` reads the days back (one Query); a month is the sum of its days. No I/O here but
through the `Store`; the stream function (`functions/insights`) is thin.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from credits import finance, keys
from credits.errors import ValidationError
from credits.ledger import Transaction, codec
from credits.store import Put, Store, TransactionCancelled, Update, absent, every

COUNTED_RETENTION_SECONDS = 7 * 86_400
SPENT = "spent:"  # attribute prefix: credits spent on one action that day
OTHER = "other"  # usage recorded without an action
MAX_DAYS = 366  # the longest range GET /credits/usage answers
DEFAULT_DAYS = 30
FIGURES = ("bought", "granted", "expired", "clawed_back", "debited")
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
FIRST_DAY, LAST_DAY = date(1970, 1, 1), date(9999, 12, 30)


def movements(tx: Transaction) -> dict[str, int]:
    """What one entry adds to its day's totals (attribute -> credits, all positive but a won
    dispute's give-back, which lowers `clawed_back`)."""
    amount = tx.amount
    if tx.type == "usage":
        return {f"{SPENT}{tx.action or OTHER}": -amount} if amount else {}
    if tx.type == "purchase":
        return {"bought": amount}
    if tx.type == "expiration":
        return {"expired": -amount}
    if tx.type in ("refund", "dispute"):
        return {"clawed_back": -amount} if amount else {}
    if tx.type in ("gift", "adjustment"):
        return {"granted": amount} if amount > 0 else {"debited": -amount}
    return {}


def count(
    store: Store,
    user_id: str,
    tx: Transaction,
    now: float,
    month: Mapping[str, int] | None = None,
    month_name: str | None = None,
) -> bool:
    """Add one entry to its user's day and `month` (its figures for the finance report, from
    `finance.entry_moves`) to the product's month, once; False when it was counted before."""
    adds = movements(tx)
    updates = []
    if adds:
        day = tx.created_at[:10]
        updates.append(Update((keys.user_pk(user_id), keys.usage_sk(day)), set={"day": day}, add=adds))
    if month:
        updates.append(finance.month_update(month_name or tx.created_at[:7], month))
    return _once(store, keys.user_pk(user_id), keys.counted_sk(tx.seq), updates, now)


def count_item(store: Store, item: Mapping[str, Any], now: float) -> bool:
    """One stream record's item: a ledger entry (`TX#`) added to its user's day and the product's
    month, or a repayment note (`REPAID#`) to the month; False for anything else or a redelivery."""
    sk, pk = str(item.get("sk", "")), str(item.get("pk", ""))
    if not pk.startswith(keys.USER):
        return False
    user_id = pk[len(keys.USER) :]
    if sk.startswith(keys.REPAID):
        return count_note(store, user_id, item, now)
    if sk.startswith(keys.TX):
        tx = codec.transaction(item)
        return count(store, user_id, tx, now, finance.entry_moves(item), finance.month_counted(item))
    return False


def count_note(store: Store, user_id: str, item: Mapping[str, Any], now: float) -> bool:
    """Add a `REPAID#` note (credits a hold gave back repaid a debt) to the product's month, once."""
    adds = finance.note_moves(item)
    note = str(item["sk"])[len(keys.REPAID) :]
    updates = [finance.month_update(finance.month_counted(item), adds)] if adds else []
    return _once(store, keys.user_pk(user_id), keys.counted_note_sk(note), updates, now)


def _once(store: Store, pk: str, sk: str, updates: list[Update], now: float) -> bool:
    """The updates with a marker that must not exist: all of them once, or nothing."""
    if not updates:
        return False
    marker = Put({"pk": pk, "sk": sk, "expires_at": int(now) + COUNTED_RETENTION_SECONDS}, absent("pk"))
    try:
        # a token of this call's own: a resend by the store's retries is this call's; another
        # delivery of the entry is told apart by the marker, never by the token
        store.transact([marker, *updates], token=uuid.uuid4().hex)
    except TransactionCancelled as cancelled:
        if cancelled.condition_failed(0, 1):
            return False  # counted already
        raise
    return True


# ---- reading ------------------------------------------------------------------------------------


@dataclass
class Period:
    """One day's or month's totals."""

    period: str  # YYYY-MM-DD or YYYY-MM
    spent: dict[str, int] = field(default_factory=dict)  # by action
    figures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FIGURES, 0))

    def add(self, item: Mapping[str, Any]) -> None:
        for name, value in item.items():
            if name.startswith(SPENT):
                action = name[len(SPENT) :]
                self.spent[action] = self.spent.get(action, 0) + int(value)
            elif name in self.figures:
                self.figures[name] += int(value)

    def body(self) -> dict[str, Any]:
        return {
            "period": self.period,
            "spent": sum(self.spent.values()),
            "byAction": dict(sorted(self.spent.items(), key=lambda kv: (-kv[1], kv[0]))),
            "bought": self.figures["bought"],
            "granted": self.figures["granted"],
            "expired": self.figures["expired"],
            "clawedBack": self.figures["clawed_back"],
            "debited": self.figures["debited"],
        }


def days_range(start: str | None, end: str | None, today: date) -> tuple[date, date]:
    """`from` and `to` (inclusive, YYYY-MM-DD; default the last 30 days to today) as dates; at most
    MAX_DAYS days, `from` not after `to`: else ValidationError (400)."""
    last = _day(end, "to") if end else today
    first = _day(start, "from") if start else last - timedelta(days=DEFAULT_DAYS - 1)
    if first > last:
        raise ValidationError("from must not be after to.", [{"field": "from"}])
    if (last - first).days + 1 > MAX_DAYS:
        raise ValidationError(f"A range covers at most {MAX_DAYS} days.", [{"field": "from"}])
    return first, last


def _day(text: str, name: str) -> date:
    """A date from 1970-01-01 to 9999-12-30 (the day before and after stay dates)."""
    problem = ValidationError(f"{name} must be a date, YYYY-MM-DD, from 1970 on.", [{"field": name}])
    if not _DAY.fullmatch(text):
        raise problem
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise problem from None
    if not FIRST_DAY <= day <= LAST_DAY:
        raise problem
    return day


def read_days(store: Store, user_id: str, first: date, last: date) -> list[dict[str, Any]]:
    """The user's daily items from `first` to `last` (one Query, page after page)."""
    pk, after = keys.user_pk(user_id), keys.usage_sk((first - timedelta(days=1)).isoformat()) + "~"
    end = keys.usage_sk(last.isoformat())
    items: list[dict[str, Any]] = []
    for item in every(store, pk, keys.USAGE, after=after):
        if item["sk"] > end:
            break
        items.append(item)
    return items


def series(items: Iterable[Mapping[str, Any]], first: date, last: date, granularity: str) -> list[Period]:
    """Every day (or month) from `first` to `last`, zeros included, in order."""
    if granularity not in ("day", "month"):
        raise ValidationError("granularity must be day or month.", [{"field": "granularity"}])
    width = 10 if granularity == "day" else 7
    periods: dict[str, Period] = {}
    day = first
    while day <= last:
        name = day.isoformat()[:width]
        periods.setdefault(name, Period(name))
        day += timedelta(days=1)
    for item in items:
        name = str(item["sk"])[len(keys.USAGE) :][:width]
        if name in periods:
            periods[name].add(item)
    return list(periods.values())


def usage_body(periods: list[Period], first: date, last: date, granularity: str) -> dict[str, Any]:
    """GET /credits/usage: the series and the totals of the range (spent by action)."""
    total = Period(f"{first.isoformat()}/{last.isoformat()}")
    for p in periods:
        for action, n in p.spent.items():
            total.spent[action] = total.spent.get(action, 0) + n
        for name in FIGURES:
            total.figures[name] += p.figures[name]
    totals = total.body()
    del totals["period"]
    return {
        "from": first.isoformat(),
        "to": last.isoformat(),
        "granularity": granularity,
        "series": [p.body() for p in periods],
        "totals": totals,
    }


def usage(
    store: Store, user_id: str, start: str | None, end: str | None, granularity: str | None, today: date
) -> dict[str, Any]:
    """GET /credits/usage?from=&to=&granularity=: the user's series and totals (400 for a bad range)."""
    first, last = days_range(start, end, today)
    grain = granularity or "day"
    periods = series(read_days(store, user_id, first, last), first, last, grain)
    return usage_body(periods, first, last, grain)
