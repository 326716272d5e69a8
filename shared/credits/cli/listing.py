"""Listings: `credits users` (every account, a page at a time) and `credits export` (one user's whole
ledger with the HTTP history's fields)."""

from __future__ import annotations

import base64
import binascii
import csv
import json
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from itertools import islice
from typing import IO, Any

import click

from credits import api, keys
from credits import export as export_
from credits.cli.common import Failed, credits, one_line_errors
from credits.cli.target import Target, target_of
from credits.ledger import Ledger, account_view
from credits.store import Key, eq

EXPORT_PAGE = export_.PAGE_SIZE  # entries `credits export` reads per Query (the HTTP history's largest page)
ACCOUNT_FIELDS = ("pk", "sk", "balance", "seq", "holds")  # what `credits users` reads of an account
EXPORT_COLUMNS = export_.COLUMNS  # GET /credits/transactions' fields, in its order (its CSV's header)


# ---- credits users ----------------------------------------------------------------------------


def _encode_key(item: dict[str, Any]) -> str:
    plain = {name: item[name] for name in ("pk", "sk")}
    return base64.urlsafe_b64encode(json.dumps(plain, separators=(",", ":")).encode()).decode().rstrip("=")


def _decode_key(cursor: str) -> Key:
    try:
        plain = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not (
            isinstance(plain, dict) and set(plain) == {"pk", "sk"} and all(isinstance(v, str) for v in plain.values())
        ):
            raise ValueError("not a key")
    except (binascii.Error, ValueError, RecursionError):
        raise Failed("--cursor is not valid: pass the one the last page printed") from None
    return (plain["pk"], plain["sk"])


def _accounts_after(target: Target, after: Key | None) -> Iterator[dict[str, Any]]:
    """The account items in the table's order (a Scan), from just after the account `after`."""
    return target.store.scan(eq("sk", keys.ACCOUNT), attributes=ACCOUNT_FIELDS, after=after)


@click.command()
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000), help="users on this page")
@click.option("--cursor", help="where the last page ended (it prints the next cursor)")
@click.pass_context
@one_line_errors
def users(ctx: click.Context, limit: int, cursor: str | None) -> int:
    """Users and their balances, a page at a time, in the table's order (a Scan of the account items,
    not sorted). The last line is the next page's cursor, or says there is no more."""
    target = target_of(ctx)
    accounts = _accounts_after(target, _decode_key(cursor) if cursor else None)
    found = list(islice(accounts, limit))
    more = next(accounts, None) is not None
    now_ms = int(time.time() * 1000)
    for item in found:
        account = account_view(item, now_ms)
        who = item["pk"].removeprefix(keys.USER)
        click.echo(f"{who}  balance {credits(account.balance)}, available {credits(account.available)}")
    click.echo(f"next cursor: {_encode_key(found[-1])}" if more else f"no more users ({target.where})")
    return 0


# ---- credits export ---------------------------------------------------------------------------


def _bodies(ledger: Ledger, user: str) -> Iterator[Mapping[str, Any]]:
    """Every entry as GET /credits/transactions answers it, newest first, a page at a time."""
    for page in export_.pages(lambda cursor: api.transactions_page(ledger, user, str(EXPORT_PAGE), cursor)):
        yield from page


def _write_csv(out: IO[str], bodies: Iterable[Mapping[str, Any]]) -> None:
    rows = csv.writer(out)
    rows.writerow(EXPORT_COLUMNS)
    for body in bodies:
        rows.writerow(export_.row(body))  # the HTTP CSV's cells: null empty, no formula runs


def _write_json(out: IO[str], bodies: Iterable[Mapping[str, Any]]) -> None:
    out.write("[")
    first = True
    for body in bodies:
        out.write(("\n" if first else ",\n") + json.dumps(body, ensure_ascii=False))
        first = False
    out.write("]\n" if first else "\n]\n")


@click.command()
@click.argument("user")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.pass_context
@one_line_errors
def export(ctx: click.Context, user: str, fmt: str) -> int:
    """A user's whole ledger on stdout, newest first as GET /credits/transactions pages it, with its
    fields: CSV with a header row (an empty cell for null), or a JSON array. Exit 1 for no such user."""
    target = target_of(ctx)
    if not target.has_account(user):
        click.echo(f"{user}: no such user (no account in {target.where})", err=True)
        return 1
    write = _write_csv if fmt == "csv" else _write_json
    write(sys.stdout, _bodies(target.ledger(), user))
    sys.stdout.flush()
    return 0
