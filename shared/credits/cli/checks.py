"""Checks of money already moved: `credits audit` (ledgers and the payments credited to them) and
`credits reconcile` (what Stripe settled that the ledger misses)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click

from credits import keys
from credits.cli.common import credits, one_line_errors
from credits.cli.target import Target, target_of
from credits.errors import CreditsError
from credits.store import eq

if TYPE_CHECKING:
    from credits.payments import Payments
    from credits.reconcile import Missing

Check = Callable[[str], tuple[int, int, list[str]]]  # user -> (balance, entries, problems)


def every_user(target: Target) -> Iterator[str]:
    """Every user with an account, by a paginated scan of the credits table."""
    for item in target.store.scan(eq("sk", keys.ACCOUNT), attributes=("pk",)):
        yield item["pk"].removeprefix(keys.USER)


def _audit_all(target: Target, check: Check) -> int:
    """Every account, a progress bar on stderr; the findings on stdout."""
    failed: dict[str, list[str]] = {}
    names = sorted(every_user(target))
    with click.progressbar(names, label=f"auditing {len(names)} accounts", file=sys.stderr) as bar:
        for who in bar:
            _, _, problems = check(who)
            if problems:
                failed[who] = problems
    for who, problems in failed.items():
        click.echo(f"{who}: PROBLEMS")
        for problem in problems:
            click.echo(f"  - {problem}")
    click.echo(f"{len(names)} accounts audited: {len(names) - len(failed)} ok, {len(failed)} with problems")
    return 1 if failed else 0


def _audit_named(target: Target, check: Check, users: tuple[str, ...]) -> int:
    """The users named, each with its findings; one that has no account is a problem."""
    failed: dict[str, list[str]] = {}
    for who in users:
        if not target.has_account(who):
            click.echo(f"{who}: no such user (no account in {target.where})")
            failed[who] = ["no account"]
            continue
        balance, count, problems = check(who)
        entries = f"{count:,} entry" if count == 1 else f"{count:,} entries"
        click.echo(f"{who}: balance {credits(balance)}, {entries}: {'PROBLEMS' if problems else 'ok'}")
        for problem in problems:
            click.echo(f"  - {problem}")
        if problems:
            failed[who] = problems
    return 1 if failed else 0


@click.command()
@click.argument("users", nargs=-1)
@click.option("--all", "everyone", is_flag=True, help="every account in the table")
@click.pass_context
@one_line_errors
def audit(ctx: click.Context, users: tuple[str, ...], everyone: bool) -> int:
    """Check users' ledgers (gapless, running balance, account matches) and the payments credited to
    them. Exit 1 if any has a problem, or does not exist."""
    if everyone == bool(users):
        raise click.UsageError("name users, or pass --all")
    target = target_of(ctx)
    ledger = target.ledger()
    payments = target.payments(ledger)

    def check(who: str) -> tuple[int, int, list[str]]:
        report = ledger.audit(who)
        problems = report.problems + payments.audit(who, ledger.history(who))
        return report.balance, report.entries, problems

    return _audit_all(target, check) if everyone else _audit_named(target, check, users)


def _apply(payments: Payments, missing: list[Missing]) -> int:
    """Apply what is missing, one line each; how many stay unsettled."""
    from credits.reconcile import SETTLED, apply

    unsettled = 0
    for item, outcome in apply(payments, missing):
        if isinstance(outcome, CreditsError):  # this one could not be applied; the others still are
            unsettled += 1
            click.echo(f"  FAILED {item.kind} {item.stripe_id}: {outcome}")
            continue
        change = f" ({credits(outcome.credits)})" if outcome.credits else ""
        if outcome.kind in SETTLED:
            click.echo(f"  applied {item.kind} {item.stripe_id}: {outcome.kind}{change}")
        else:  # a mismatch (paid other than sold), say: the webhook would not have credited it either
            unsettled += 1
            click.echo(f"  NOT applied {item.kind} {item.stripe_id}: {outcome.kind}: {outcome.detail}")
    return unsettled


@click.command()
@click.option("--since", "period", default="3d", show_default=True, help="how far back: 90m, 12h, 3d ... 30d")
@click.option("--apply", "do_apply", is_flag=True, help="apply what is missing (as the webhook would have)")
@click.pass_context
@one_line_errors
def reconcile(ctx: click.Context, period: str, do_apply: bool) -> int:
    """Find paid purchases, refunds and disputes of the period that the ledger does not show (a
    webhook never delivered); with --apply, apply them through the webhook's own exactly-once path.
    Exit 1 when a dry run finds something missing; 0 when nothing is, or all of it was applied."""
    from credits.reconcile import find_missing, window

    since = int(time.time()) - window(period)
    target = target_of(ctx)
    payments = target.payments(target.ledger())
    missing = find_missing(payments, target.stripe(), since)
    start = datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%d %H:%M UTC")
    if not missing:
        click.echo(f"nothing missing since {start} ({target.where})")
        return 0
    click.echo(f"{len(missing)} missing since {start} ({target.where}):")
    for item in missing:
        click.echo(f"  {item.kind:<9} {item.user_id or '?':<20} {item.detail}")
    if not do_apply:
        click.echo("run again with --apply to apply them")
        return 1
    return 1 if _apply(payments, missing) else 0
