"""The operator's command line of the credits stack: users, grants, audits, the catalog.

    credits user USER                       balance, available, held, open holds, settings, last entries
    credits grant USER AMOUNT --type gift|adjustment --description TEXT [--reference REF]
    credits adjust USER AMOUNT --description TEXT [--reference REF] [--force-negative --reason TEXT]
                                            an adjustment, + or -: a debit never below zero unless forced
    credits cancel-top-up USER              end a pending auto top-up that cannot end by itself
    credits users [--limit N] [--cursor C]  users and their balances, a page at a time
    credits export USER [--format csv|json] a user's whole ledger, the HTTP history's fields
    credits usage USER [--since 30d]        credits spent by action, bought, granted, expired, clawed back
    credits report [--month YYYY-MM] [--currency C] [--format table|csv|json] [--verify]
                                            the month's finance report per currency, reconciled
    credits audit USER... | --all           gapless ledgers that add up, and payments credited right
    credits reconcile --since 3d [--apply]  paid purchases, refunds and disputes the ledger misses
    credits packages import FILE [--sync-stripe] | list

Where it acts: against `make dev` with nothing to set (it reads the state file `make dev` leaves in
its data folder, .local-data/stack.json); against AWS with `--stack NAME` (the table from the
stack's outputs) or with CREDITS_TABLE_NAME (and the usual AWS variables) set.

Exit codes: 0 done; 1 a check found problems (an audit, an unknown user, an adjustment refused); 2
the command could not run (bad arguments, no stack found, AWS refused). Errors are one line, never a
traceback.

A console script of the project's environment (`.venv/bin/credits`); not part of any function.

The modules: `common` (one-line errors, amounts and times), `target` (where the commands act, and
the credits objects on it), `accounts` (user, grant, adjust, cancel-top-up), `listing` (users, export), `insights`
(usage, report), `checks`
(audit, reconcile), `catalog` (packages). Every read of the table goes through the ledger, the
catalog, the payments or the store (`credits.store`), never a DynamoDB client call of its own.
"""

from __future__ import annotations

import click

from credits.cli.accounts import adjust, cancel_top_up, grant, user
from credits.cli.catalog import packages
from credits.cli.checks import audit, reconcile
from credits.cli.common import Failed
from credits.cli.insights import report, usage
from credits.cli.listing import EXPORT_COLUMNS, export, users
from credits.cli.target import Target, locate

__all__ = ["EXPORT_COLUMNS", "Failed", "Target", "cli", "locate", "main"]


@click.group(help=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[2])
@click.option("--stack", metavar="NAME", help="act on this deployed stack (its outputs name the table)")
@click.option("--region", metavar="REGION", help="the stack's AWS region (else the usual AWS configuration)")
@click.pass_context
def cli(ctx: click.Context, stack: str | None, region: str | None) -> None:
    ctx.obj = {"stack": stack, "region": region}


for _command in (user, grant, adjust, cancel_top_up, users, export, usage, report, audit, reconcile, packages):
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> int:
    """The console script: the exit code of the command (see the package's doc)."""
    try:
        result = cli.main(args=argv, prog_name="credits", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("aborted", err=True)
        return 130
    return result if isinstance(result, int) else 0
