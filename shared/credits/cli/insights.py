"""`credits usage USER --since 30d`: where a user's credits went, by action (the page's table);
`credits report --month YYYY-MM [--verify]`: the finance report (credits.finance)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import click

from credits import finance, insights
from credits.cli.checks import every_user
from credits.cli.common import Failed, credits, one_line_errors
from credits.cli.target import target_of


@click.command()
@click.argument("user")
@click.option("--since", default="30d", show_default=True, help="how far back: Nd (days, at most 366)")
@click.pass_context
@one_line_errors
def usage(ctx: click.Context, user: str, since: str) -> int:
    """A user's credits spent by action, bought, granted, expired and clawed back since a number of
    days ago (UTC days, today included), from the daily totals the insights function keeps."""
    found = re.fullmatch(r"(\d{1,3})d", since)
    if found is None or not 1 <= int(found.group(1)) <= insights.MAX_DAYS:
        raise Failed(f"--since must be a number of days, 1d to {insights.MAX_DAYS}d")
    today = datetime.now(UTC).date()
    start = today - timedelta(days=int(found.group(1)) - 1)
    target = target_of(ctx)
    body = insights.usage(target.store, user, start.isoformat(), today.isoformat(), "day", today)
    totals = body["totals"]
    click.echo(f"{user}  {body['from']} to {body['to']}  ({target.where})")
    click.echo(f"  spent        {credits(totals['spent'])}")
    for action, n in totals["byAction"].items():
        share = n * 100 / totals["spent"] if totals["spent"] else 0
        click.echo(f"    {action:<24} {credits(n):>16}  {share:5.1f} %")
    for label, name in (("bought", "bought"), ("granted", "granted"), ("expired", "expired")):
        click.echo(f"  {label:<12} {credits(totals[name])}")
    click.echo(f"  clawed back  {credits(totals['clawedBack'])}")
    click.echo(f"  debited      {credits(totals['debited'])}")
    return 0


@click.command()
@click.option("--month", help="the month, YYYY-MM (UTC; default: the last closed month)")
@click.option("--currency", help="only this currency (usd, eur, ...; none: credits granted for nothing)")
@click.option("--format", "form", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--verify", is_flag=True, help="recompute every month from the ledger and every account's lots")
@click.pass_context
@one_line_errors
def report(ctx: click.Context, month: str | None, currency: str | None, form: str, verify: bool) -> int:
    """The finance report of a month, per currency: opening outstanding credits, sold (and the money
    received), granted, used, expired, clawed back (and the money paid back), debited, closing
    outstanding, and the money the outstanding credits were bought for. With --verify, exit 1 naming
    every figure the ledger disagrees with."""
    chosen = finance.month_of(month) if month else finance.previous_month(datetime.now(UTC).date().isoformat())
    target = target_of(ctx)
    rows = finance.report(finance.read_months(target.store), chosen, currency)
    if form == "json":
        click.echo(finance.as_json(chosen, rows))
    elif form == "csv":
        click.echo(finance.as_csv(rows), nl=False)
    else:
        click.echo(finance.as_table(chosen, rows) + f"\n\n({target.where})")
    if not verify:
        return 0
    problems = finance.verify(target.store, sorted(every_user(target)), chosen)
    for problem in problems:
        click.echo(f"DIFFERENCE {problem}", err=True)
    click.echo(
        f"verify: {len(problems)} difference(s) with the ledger" if problems else "verify: matches the ledger", err=True
    )
    return 1 if problems else 0
