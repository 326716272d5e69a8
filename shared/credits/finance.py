"""The finance report: per month and per currency, the credits sold (and the money received), granted,
used, expired, clawed back and debited by operators, and what is outstanding (unspent credits, and the
money they were bought for), reconciled exactly.

Credits count in the row of the lot they are in (docs/adr/0011-usage-insights.md): a purchase's lot is in
its currency, credits granted for nothing are in `none`. Every entry records what it did to the lots
by row (`moved`: credits of its kind, credits that repaid a debt, and the change of their value at the
lots' prices); credits a hold gave back that repaid a debt with no entry of their own leave a note
(`REPAID#`). The insights function adds both, once, to the month's item `FINANCE#<YYYY-MM>` in the
product's partition; a month's report reads those items back:

    closing = opening + sold + granted - used - expired - clawed back - debited

`verify` recomputes every month from the ledger itself (each entry's lot draws, by lot, never the
`moved` figures) and compares it with the items and with every account's lots as they stand.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from credits import keys
from credits.errors import ValidationError
from credits.ledger.lots import NO_CURRENCY
from credits.ledger.values import iso_utc
from credits.money import format_money
from credits.store import Put, Store, Update, every

CREDIT_FIGURES = ("sold", "granted", "used", "expired", "clawed_back", "debited")
MONEY_FIGURES = ("money", "money_back", "value")  # received, paid back (refunds, lost disputes), value moved
FIGURES = CREDIT_FIGURES + MONEY_FIGURES
SIGN = {"sold": 1, "granted": 1, "used": -1, "expired": -1, "clawed_back": -1, "debited": -1}
_MONTH = re.compile(r"\d{4}-(0[1-9]|1[0-2])")


def entry_moves(item: Mapping[str, Any]) -> dict[str, int]:
    """What one ledger entry (its item) adds to its month: attribute `<figure>:<row>` -> amount."""
    kind = str(item["type"])
    out: dict[str, int] = {}
    for row, (credits, repaid, value) in (item.get("moved") or {}).items():
        figure = _figure(kind, int(credits))
        if figure is not None and credits:
            _add(out, figure, row, abs(int(credits)) if figure != "clawed_back" else -int(credits))
        _add(out, "clawed_back", row, int(repaid))
        _add(out, "value", row, int(value))
    _money_moves(item, out)
    return out


def _money_moves(item: Mapping[str, Any], out: dict[str, int]) -> None:
    """A purchase's money received; a refund's or a dispute's paid back (or, won, come back)."""
    money, currency, kind = item.get("monetary_amount"), item.get("currency"), item["type"]
    if money and currency:
        if kind == "purchase":
            _add(out, "money", currency, int(money))
        elif kind in ("refund", "dispute"):
            _add(out, "money_back", currency, _paid_back(item, int(money)))


def _paid_back(item: Mapping[str, Any], money: int) -> int:
    """A refund's or a lost dispute's money went back to the buyer; a won dispute's came back (its
    entry says so even when all its credits had expired: an entry of 0)."""
    won = item.get("gives_back") or int(item["amount"]) > 0
    return -money if won else money


def note_moves(item: Mapping[str, Any]) -> dict[str, int]:
    """What a `REPAID#` note adds: credits that repaid a debt, clawed back."""
    out: dict[str, int] = {}
    for row, (_, repaid, value) in (item.get("moved") or {}).items():
        _add(out, "clawed_back", row, int(repaid))
        _add(out, "value", row, int(value))
    return out


def _figure(kind: str, credits: int) -> str | None:
    if kind == "purchase":
        return "sold"
    if kind in ("gift", "adjustment"):
        return "granted" if credits > 0 else "debited"
    if kind == "usage":
        return "used"
    if kind == "expiration":
        return "expired"
    if kind in ("refund", "dispute"):
        return "clawed_back"  # a won dispute's give-back lowers it
    return None


def _add(out: dict[str, int], figure: str, row: str, n: int) -> None:
    if n:
        name = f"{figure}:{row}"
        out[name] = out.get(name, 0) + n


def month_counted(item: Mapping[str, Any]) -> str:
    """The month an entry or a note counts in: the ledger's month when it was written (never before
    the account's previous entry's, even from a container whose clock is behind), else its date's."""
    return str(item.get("month") or str(item["created_at"])[:7])


def month_update(month: str, adds: Mapping[str, int]) -> Update:
    """The month's item gains `adds` (written with the entry's COUNTED marker, once)."""
    return Update((keys.PRODUCT_PK, keys.finance_sk(month)), set={"month": month}, add=dict(adds))


# ---- the report ---------------------------------------------------------------------------------


@dataclass
class Row:
    """One currency's month (`none`: credits granted for nothing)."""

    currency: str
    opening: int = 0
    opening_value: int = 0
    figures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FIGURES, 0))

    @property
    def closing(self) -> int:
        return self.opening + sum(SIGN[f] * self.figures[f] for f in CREDIT_FIGURES)

    @property
    def closing_value(self) -> int:
        return self.opening_value + self.figures["value"]

    def body(self) -> dict[str, Any]:
        f = self.figures
        money = self.currency != NO_CURRENCY
        return {
            "currency": self.currency,
            "opening": self.opening,
            "sold": f["sold"],
            "granted": f["granted"],
            "used": f["used"],
            "expired": f["expired"],
            "clawedBack": f["clawed_back"],
            "debited": f["debited"],
            "closing": self.closing,
            "moneyReceived": f["money"] if money else None,
            "moneyPaidBack": f["money_back"] if money else None,
            "openingValue": self.opening_value if money else None,
            "closingValue": self.closing_value if money else None,
        }


def month_of(text: str) -> str:
    if not _MONTH.fullmatch(text):
        raise ValidationError("month must be YYYY-MM.", [{"field": "month"}])
    return text


def figures_by_month(items: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """`FINANCE#` items as month -> {`<figure>:<row>`: n}."""
    out: dict[str, dict[str, int]] = {}
    for item in items:
        month = str(item["sk"])[len(keys.FINANCE) :]
        out[month] = {name: int(v) for name, v in item.items() if ":" in name and name.split(":")[0] in FIGURES}
    return out


def read_months(store: Store) -> dict[str, dict[str, int]]:
    """Every month's figures, as the insights function counted them (one Query, page after page)."""
    return figures_by_month(every_item(store, keys.PRODUCT_PK, keys.FINANCE))


def every_item(store: Store, pk: str, prefix: str) -> list[dict[str, Any]]:
    """A partition's items under `prefix`, page after page."""
    return list(every(store, pk, prefix))


def report(months: Mapping[str, Mapping[str, int]], month: str, currency: str | None = None) -> list[Row]:
    """The month's rows (one per currency seen up to it, `none` last): opening from every earlier month."""
    rows: dict[str, Row] = {}
    for name in sorted(m for m in months if m <= month):
        for attribute, n in months[name].items():
            figure, row_name = attribute.split(":", 1)
            row = rows.setdefault(row_name, Row(row_name))
            if name == month:
                row.figures[figure] += n
            elif figure in SIGN:
                row.opening += SIGN[figure] * n
            elif figure == "value":
                row.opening_value += n
    chosen = [r for r in rows.values() if currency is None or r.currency == currency.lower()]
    return sorted(chosen, key=lambda r: (r.currency == NO_CURRENCY, r.currency))


# ---- formats --------------------------------------------------------------------------------------

COLUMNS = (
    "currency",
    "opening",
    "sold",
    "granted",
    "used",
    "expired",
    "clawedBack",
    "debited",
    "closing",
    "moneyReceived",
    "moneyPaidBack",
    "openingValue",
    "closingValue",
)


def as_json(month: str, rows: list[Row]) -> str:
    return json.dumps({"month": month, "rows": [r.body() for r in rows]}, indent=2)


def as_csv(rows: list[Row]) -> str:
    """Amounts in minor units (money) and credits, one row per currency."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in rows:
        body = r.body()
        writer.writerow(["" if body[c] is None else body[c] for c in COLUMNS])
    return out.getvalue()


def as_table(month: str, rows: list[Row]) -> str:
    """The accountant's page: credits per currency, and the money beside them."""
    lines = [f"Credits, {month} (UTC)", f"  {'':<24}{'credits':>14}  money (outstanding: at the price it was paid)"]
    for r in rows:
        f, money = r.figures, r.currency != NO_CURRENCY
        title = r.currency.upper() if money else "No currency (granted for nothing)"
        lines.append("")
        lines.append(title)
        lines.append(_line("opening outstanding", r.opening, _money(r.opening_value, r.currency) if money else ""))
        lines.append(_line("+ sold", f["sold"], _money(f["money"], r.currency) + " received" if money else ""))
        lines.append(_line("+ granted", f["granted"]))
        lines.append(_line("- used", f["used"]))
        lines.append(_line("- expired", f["expired"]))
        paid_back = _money(f["money_back"], r.currency) + " paid back" if money else ""
        lines.append(_line("- clawed back", f["clawed_back"], paid_back))
        lines.append(_line("- debited", f["debited"]))
        lines.append(_line("= closing outstanding", r.closing, _money(r.closing_value, r.currency) if money else ""))
    if not rows:
        lines.append("")
        lines.append("No credits moved up to this month.")
    return "\n".join(lines)


def _line(label: str, n: int, money: str = "") -> str:
    return f"  {label:<24}{n:>14,}  {money}".rstrip()


def _money(amount: int, currency: str) -> str:
    return format_money(amount, currency)


# ---- verify: the same months from the ledger itself ---------------------------------------------------


@dataclass
class LotBook:
    """A lot as the ledger's entries tell it: its row, its price, the credits in it."""

    row: str
    price: tuple[int, int] = (0, 0)
    inside: int = 0

    def value(self, credits: int) -> int:
        return credits * self.price[0] // self.price[1] if self.price[1] else 0


@dataclass
class Book:
    """One user's ledger replayed: the lots and each month's figures."""

    lots: dict[str, LotBook] = field(default_factory=dict)
    months: dict[str, dict[str, int]] = field(default_factory=dict)


def replay(items: Iterable[Mapping[str, Any]]) -> Book:
    """A user's `TX#` and `REPAID#` items in the ledger's order (a note right after the entry it
    followed), as per-month figures from each entry's lot draws, by lot; each in the month of its
    `created_at`, as the stream counts it."""
    book = Book()
    for item in sorted(items, key=_place):
        figures = book.months.setdefault(month_counted(item), {})
        before = {lot_id: lot.inside for lot_id, lot in book.lots.items()}
        if str(item["sk"]).startswith(keys.TX):
            _replay_entry(book, item, figures)
        for lot_id, n in (item.get("repaid") or {}).items():
            _lot_move(book, figures, "clawed_back", lot_id, int(n))
        for lot_id, lot in book.lots.items():
            _add(figures, "value", lot.row, lot.value(lot.inside) - lot.value(before.get(lot_id, 0)))
    return book


def _place(item: Mapping[str, Any]) -> tuple[int, int, str]:
    """Ledger order: entries by seq, a note right after the entry it followed (notes of writes with no
    entry between them in the order of their writes: the holds revision, zero-padded)."""
    if str(item["sk"]).startswith(keys.TX):
        return int(item["seq"]), 0, ""
    return int(item.get("after_seq", 0)), 1, str(item["sk"])


def _replay_entry(book: Book, item: Mapping[str, Any], figures: dict[str, int]) -> None:
    kind, amount, seq = str(item["type"]), int(item["amount"]), str(item["seq"])
    lot_id = item.get("lot")
    if lot_id is not None:
        if lot_id == seq and lot_id not in book.lots:
            book.lots[lot_id] = _opened(item)
        figure = _figure(kind, amount)
        placed = book.lots.setdefault(str(lot_id), LotBook(NO_CURRENCY))
        placed.inside += amount
        if figure is not None:
            _add(figures, figure, placed.row, amount if figure != "clawed_back" else -amount)
    for drawn, n in (item.get("draws") or {}).items():
        _lot_move(book, figures, _figure(kind, -1) or "debited", drawn, int(n))
    _money_moves(item, figures)


def _opened(item: Mapping[str, Any]) -> LotBook:
    """A lot opened by this entry: in its currency at the price the entry recorded for it."""
    price, currency = item.get("lot_price"), item.get("currency")
    if not price or not currency:
        return LotBook(NO_CURRENCY)
    return LotBook(str(currency), (int(price[0]), int(price[1])))


def _lot_move(book: Book, figures: dict[str, int], figure: str, lot_id: str, n: int) -> None:
    lot = book.lots.setdefault(str(lot_id), LotBook(NO_CURRENCY))
    lot.inside -= n
    _add(figures, figure, lot.row, n)


def ledger_months(books: Iterable[Book]) -> dict[str, dict[str, int]]:
    """Every user's months added up: what the `FINANCE#` items should hold."""
    total: dict[str, dict[str, int]] = {}
    for book in books:
        for month, figures in book.months.items():
            into = total.setdefault(month, {})
            for name, n in figures.items():
                figure, row = name.split(":", 1)
                _add(into, figure, row, n)
    return {m: f for m, f in total.items() if f}


def differences(
    recorded: Mapping[str, Mapping[str, int]], ledger: Mapping[str, Mapping[str, int]], month: str
) -> Iterator[str]:
    """Every figure up to `month` where the counted items and the ledger disagree, by item and name."""
    for name in sorted(m for m in recorded.keys() | ledger.keys() if m <= month):
        have, want = recorded.get(name, {}), ledger.get(name, {})
        for attribute in sorted(have.keys() | want.keys()):
            if have.get(attribute, 0) != want.get(attribute, 0):
                yield (
                    f"{keys.finance_sk(name)} {attribute}: counted {have.get(attribute, 0):,}, "
                    f"the ledger says {want.get(attribute, 0):,}"
                )


def verify(store: Store, users: Iterable[str], month: str) -> list[str]:
    """Every difference between the counted months up to `month` and the ledger replayed (each
    user's entries and repayment notes), and between each user's lots and its ledger (so the
    closing figures are the sum of every account's lots). Empty: the report is exact."""
    books: list[Book] = []
    problems: list[str] = []
    for user in users:
        pk = keys.user_pk(user)
        book = replay(every_item(store, pk, keys.TX) + every_item(store, pk, keys.REPAID))
        problems += lots_differences(user, book, store.get((pk, keys.ACCOUNT)))
        books.append(book)
    return list(differences(read_months(store), ledger_months(books), month)) + problems


def lots_now(account: Mapping[str, Any] | None) -> dict[str, int]:
    """The credits in an account's lots (remaining and held) by lot, as the item stands."""
    if not account:
        return {}
    inside = {str(lot_id): int(f.get("r", 0)) for lot_id, f in (account.get("lots") or {}).items()}
    for hold in (account.get("holds") or {}).values():
        for lot_id, n in (hold.get("d") or {}).items():
            inside[str(lot_id)] = inside.get(str(lot_id), 0) + int(n)
    return {lot_id: n for lot_id, n in inside.items() if n}


def lots_differences(user: str, book: Book, account: Mapping[str, Any] | None) -> Iterator[str]:
    """Where the user's lots as stored differ from their ledger replayed (closing = every account's lots)."""
    stored = lots_now(account)
    replayed = {lot_id: lot.inside for lot_id, lot in book.lots.items() if lot.inside}
    for lot_id in sorted(stored.keys() | replayed.keys()):
        if stored.get(lot_id, 0) != replayed.get(lot_id, 0):
            yield (
                f"{user}: lot {lot_id} holds {stored.get(lot_id, 0):,} credits; "
                f"its ledger gives {replayed.get(lot_id, 0):,}"
            )


# ---- closing a month ------------------------------------------------------------------------------


def previous_month(today: str) -> str:
    """The month before the one `today` (YYYY-MM-DD or YYYY-MM) is in."""
    year, month = int(today[:4]), int(today[5:7])
    return f"{year - 1}-12" if month == 1 else f"{year}-{month - 1:02d}"


def close_month(store: Store, month: str, now: float) -> list[Row]:
    """The month's report from the counted figures, kept as `REPORT#<month>` in the product's
    partition (written again, the same, if the schedule runs twice)."""
    rows = report(read_months(store), month)
    item = {
        "pk": keys.PRODUCT_PK,
        "sk": keys.report_sk(month),
        "month": month,
        "rows": [{k: v for k, v in r.body().items() if v is not None} for r in rows],
        "created_at": iso_utc(now),
    }
    store.write(Put(item))
    return rows
