"""GET /credits/transactions as CSV (`Accept: text/csv`): the user's whole history in one file.

Pure functions, no I/O of their own: whether the Accept header asks for CSV, one row as CSV cells,
and the whole file from an iterator of history pages (the balance function reads the pages through
`credits.api.transactions_page`, as the JSON history does).

* Order: the JSON history's, newest first (page after page, as `nextCursor` leads).
* Columns: the fields of a JSON history row, in its order (`COLUMNS`), as the header row; null is
  an empty cell.
* Formulas: a TEXT cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return gets a
  leading `'`, so a spreadsheet shows it rather than running it; numbers (a negative amount) are
  written as numbers, never prefixed.
* Size: a Lambda response is at most 6 MB and an HTTP API cannot stream one, so the body is bounded
  by `MAX_EXPORT_BYTES` (5 MiB) as it travels in Lambda's JSON response (its JSON-escaped size: a
  quote, a line break or a non-ASCII character counts more than one byte). Past it, reading stops
  and the answer is `413 export_too_large`: the JSON history, page by page, has no such bound.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from credits.errors import ExportTooLarge

CONTENT_TYPE = "text/csv; charset=utf-8"
# The fields of a JSON history row (credits.api.transaction_body), in its order: the header row.
COLUMNS = (
    "id",
    "amount",
    "balanceAfter",
    "type",
    "description",
    "referenceId",
    "monetaryAmount",
    "currency",
    "createdAt",
)
PAGE_SIZE = 100  # entries read per page: the JSON history's largest page
MAX_EXPORT_BYTES = 5 * 1024 * 1024  # the body's JSON-escaped size; Lambda's response limit is 6 MB
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

_SAFE_NAME = re.compile(r"[^A-Za-z0-9_-]")
_QVALUE = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")
_OFFERED = {"csv": ("text", "csv"), "json": ("application", "json")}


# ---- Accept ------------------------------------------------------------------------------------


def _split(text: str, separator: str) -> list[str]:
    """`text` split at `separator`, except inside a quoted string (a parameter's value may be one)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _media_ranges(accept: str) -> Iterator[tuple[str, str, int, float]]:
    """Each media range of an Accept header: type, subtype, how many parameters besides q, and q.
    A range that is not `type/subtype`, or whose q is not a valid qvalue, is left out."""
    for element in _split(accept, ","):
        media, *parameters = _split(element, ";")
        kind, slash, subtype = media.strip().lower().partition("/")
        if not slash or not kind or not subtype:
            continue
        quality, others = 1.0, 0
        for parameter in parameters:
            name, _, value = parameter.strip().partition("=")
            if name.strip().lower() == "q":
                value = value.strip()
                quality = float(value) if _QVALUE.fullmatch(value) else -1.0
                break  # what follows q is accept-extensions, not media type parameters
            others += 1
        if quality >= 0:
            yield kind, subtype, others, quality


def _quality(ranges: Sequence[tuple[str, str, int, float]], kind: str, subtype: str) -> float:
    """The q of a media type we offer: that of the most specific range that matches it (`text/csv`
    before `text/*` before `*/*`; with parameters before without), 0 when none does."""
    matching = {(kind, subtype), (kind, "*"), ("*", "*")}
    ranked = [
        (r_kind != "*", r_sub != "*", others, q) for r_kind, r_sub, others, q in ranges if (r_kind, r_sub) in matching
    ]
    return max(ranked)[3] if ranked else 0.0


def wants_csv(accept: str | None) -> bool:
    """Whether an Accept header asks for CSV: text/csv is acceptable (q > 0) and preferred to
    application/json (a higher q). A tie, `*/*`, no header or one that names neither: JSON."""
    if not accept:
        return False
    ranges = list(_media_ranges(accept))
    as_csv, as_json = (_quality(ranges, *_OFFERED[name]) for name in ("csv", "json"))
    return as_csv > 0 and as_csv > as_json


# ---- rows and the file -------------------------------------------------------------------------


def cell(value: object) -> object:
    """A CSV cell: null as empty; text a spreadsheet would run as a formula gets a leading `'`;
    anything else (a number) as it is."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def row(transaction: Mapping[str, Any]) -> list[object]:
    """A JSON history row as the CSV row's cells, in the order of `COLUMNS`."""
    return [cell(transaction[name]) for name in COLUMNS]


def csv_line(cells: Iterable[object]) -> str:
    """One CSV record as Python's csv module writes it (quoted as needed, ended by CRLF)."""
    out = io.StringIO()
    csv.writer(out).writerow(cells)
    return out.getvalue()


def wire_size(text: str) -> int:
    """The bytes `text` takes in a Lambda response: a JSON string's, escapes included (at least its
    UTF-8 size; Lambda's runtime may write non-ASCII characters unescaped, never larger)."""
    return len(json.dumps(text)) - 2


def history_csv(pages: Iterable[Iterable[Mapping[str, Any]]], limit_bytes: int | None = None) -> str:
    """The header row and every row of `pages` (lists of JSON history rows), in their order. Pages are
    read only while the file stays within `limit_bytes` (default `MAX_EXPORT_BYTES`, read when called):
    past it, ExportTooLarge, and no further page is read."""
    limit = MAX_EXPORT_BYTES if limit_bytes is None else limit_bytes
    lines = [csv_line(COLUMNS)]
    size = wire_size(lines[0])
    for page in pages:
        for transaction in page:
            line = csv_line(row(transaction))
            size += wire_size(line)
            if size > limit:
                raise ExportTooLarge(limit)
            lines.append(line)
    return "".join(lines)


def pages(
    read: Callable[[str | None], Mapping[str, Any]], cursor: str | None = None
) -> Iterator[list[Mapping[str, Any]]]:
    """The history's pages from `cursor` (None: the newest) to the oldest: `read(cursor)` answers a
    JSON history page (`{"transactions", "nextCursor"}`), read only when the previous one is used."""
    while True:
        page = read(cursor)
        yield page["transactions"]
        cursor = page["nextCursor"]
        if cursor is None:
            return


def filename(user_id: str) -> str:
    """The download's file name, safe whatever the user id: the id itself when it is 1 to 64 of
    [A-Za-z0-9_-]; otherwise what is left of it after stripping every other character (at most 40)
    and a hash of the whole id (two users practically never share a name)."""
    safe = _SAFE_NAME.sub("", user_id)
    if safe != user_id or not safe or len(safe) > 64:
        digest = hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        safe = f"{safe[:40]}-{digest}" if safe else digest
    return f"credits-history-{safe}.csv"


def csv_headers(user_id: str) -> dict[str, str]:
    """The CSV answer's headers besides Content-Type: a download, never cached."""
    return {"Content-Disposition": f'attachment; filename="{filename(user_id)}"', "Cache-Control": "no-store"}
