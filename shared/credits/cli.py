"""The operator's command line of the credits stack: users, grants, audits, the catalog.

    credits user USER                       balance, available, held, open holds, settings, last entries
    credits grant USER AMOUNT --type gift|adjustment --description TEXT [--reference REF]
    credits adjust USER AMOUNT --description TEXT [--reference REF] [--force-negative --reason TEXT]
                                            an adjustment, + or -: a debit never below zero unless forced
    credits users [--limit N] [--cursor C]  users and their balances, a page at a time
    credits export USER [--format csv|json] a user's whole ledger, the HTTP history's fields
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
"""

from __future__ import annotations

import base64
import binascii
import csv
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import boto3
import click
import pydantic
from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError
from botocore.exceptions import BotoCoreError, ClientError

from credits import api, config, keys
from credits.errors import CreditsError, InsufficientCredits
from credits.ledger import DEFAULT_LOW_BALANCE_THRESHOLD, MAX_AMOUNT, Ledger, _snapshot, from_item
from credits.money import format_money
from credits.packages import Catalog, Package
from credits.payments import Payments

STATE_FILE = "stack.json"  # what `make dev` leaves in its data folder while it runs
DATA_DIR = ".local-data"  # make dev's default data folder, under the repository root
F = TypeVar("F", bound=Callable[..., Any])
USERS_SCAN_PAGE = 1000  # items `credits users` reads per Scan call (accounts and everything else)
EXPORT_PAGE = 100  # entries `credits export` reads per Query (the HTTP history's largest page)


class Failed(click.ClickException):
    """The command could not run: one line on stderr, exit 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


@dataclass
class Target:
    """Where the commands act: a DynamoDB client, the credits table, and a line saying which."""

    client: Any
    table: str
    where: str
    stripe_api_base: str | None = None
    stripe_secret_key: str | None = None
    stripe_key_parameter: str | None = None  # --stack: the SSM SecureString the stack reads its key from
    session: Any = None
    low_balance_threshold: int = DEFAULT_LOW_BALANCE_THRESHOLD

    def stripe(self) -> Any:
        """The Stripe adapter: make dev's emulator; with --stack, the secret key the stack itself uses
        (its SSM parameter, never a key that happens to be in the shell: another account's sessions
        must not be credited into this stack's table); else STRIPE_SECRET_KEY (or _PARAM)."""
        from credits.stripe_gateway import StripeGateway  # only the commands that talk to Stripe load it

        key = self.stripe_secret_key
        if self.stripe_key_parameter:
            answer = self.session.client("ssm").get_parameter(Name=self.stripe_key_parameter, WithDecryption=True)
            key = str(answer["Parameter"]["Value"])
        return StripeGateway.connect(key or config.secret("STRIPE_SECRET_KEY"), self.stripe_api_base)

    def ledger(self) -> Ledger:
        # the stack's LOW_BALANCE_THRESHOLD, so entries the CLI posts carry the threshold in force
        return Ledger(self.client, self.table, default_threshold=self.low_balance_threshold)

    def catalog(self) -> Catalog:
        return Catalog(self.client, self.table)


def _dev_state() -> Path | None:
    """make dev's state file: under DEV_DATA_DIR when set, else .local-data/ of the repository that
    holds the working directory (or, failing that, of the repository this code is in)."""
    if os.environ.get("DEV_DATA_DIR"):
        path = Path(os.environ["DEV_DATA_DIR"]) / STATE_FILE
        return path if path.is_file() else None
    starts = [Path.cwd(), *Path.cwd().parents, Path(__file__).resolve().parents[2]]
    for folder in starts:
        if (folder / DATA_DIR / STATE_FILE).is_file():
            return folder / DATA_DIR / STATE_FILE
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def locate(stack: str | None, region: str | None) -> Target:
    """The stack to act on: --stack, else explicit variables, else the running `make dev`."""
    if stack:
        session = boto3.session.Session(region_name=region)
        answer = session.client("cloudformation").describe_stacks(StackName=stack)
        outputs = {o["OutputKey"]: o["OutputValue"] for o in answer["Stacks"][0].get("Outputs", [])}
        if "CreditsTableName" not in outputs:
            raise Failed(f"stack {stack} has no CreditsTableName output: is it this project's stack?")
        parameters = {p["ParameterKey"]: p.get("ParameterValue") for p in answer["Stacks"][0].get("Parameters", [])}
        found = Target(session.client("dynamodb"), outputs["CreditsTableName"], f"stack {stack}")
        found.stripe_key_parameter = parameters.get("StripeSecretKeyParam")
        found.session = session
        found.low_balance_threshold = config.low_balance_threshold(
            {"LOW_BALANCE_THRESHOLD": parameters.get("LowBalanceThreshold") or ""}
        )
        return found
    if os.environ.get("CREDITS_TABLE_NAME"):
        from credits.aws import dynamodb_client

        table = config.require("CREDITS_TABLE_NAME")
        found = Target(dynamodb_client(), table, f"table {table}", config.optional("STRIPE_API_BASE"))
        found.low_balance_threshold = config.low_balance_threshold()
        return found
    path = _dev_state()
    if path is None:
        raise Failed(
            "no stack to act on: start `make dev` (the CLI finds it), or pass --stack NAME, or set CREDITS_TABLE_NAME"
        )
    try:
        state = json.loads(path.read_text())
        pid = int(state["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        raise Failed(f"cannot read make dev's state in {path}: restart `make dev`") from None
    if not _alive(pid):
        raise Failed(f"make dev is not running (its last state is in {path}): start it with `make dev`")
    client = boto3.client(
        "dynamodb",
        endpoint_url=state["dynamodbEndpoint"],
        region_name=state["region"],
        aws_access_key_id="local",
        aws_secret_access_key="local",  # noqa: S106 - DynamoDB Local's, not a secret
    )
    stripe = state.get("stripe") or {}
    found = Target(
        client, state["creditsTable"], f"make dev at {state['api']}", stripe.get("apiBase"), stripe.get("secretKey")
    )
    found.low_balance_threshold = config.low_balance_threshold(
        {"LOW_BALANCE_THRESHOLD": str(state.get("lowBalanceThreshold", ""))}
    )
    return found


def one_line_errors(command: F) -> F:
    """Domain and AWS errors become one line and exit 2, never a traceback."""

    @wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except CreditsError as exc:
            raise Failed(str(exc)) from None
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise Failed(f"AWS refused: {error.get('Code', 'error')}: {error.get('Message', '')}") from None
        except BotoCoreError as exc:
            raise Failed(f"AWS: {exc}") from None
        except GetParameterError as exc:  # STRIPE_SECRET_KEY_PARAM names a parameter SSM did not give
            raise Failed(f"SSM: {exc}") from None

    return run  # type: ignore[return-value]


def credits(n: int) -> str:
    return f"{n:,} credit" if abs(n) == 1 else f"{n:,} credits"


def when(moment: str | int) -> str:
    """An ISO 8601 time or Unix milliseconds, as UTC minutes."""
    if isinstance(moment, int):
        at = datetime.fromtimestamp(moment / 1000, UTC)
    else:
        at = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    return at.strftime("%Y-%m-%d %H:%M UTC")


def account_exists(target: Target, user: str) -> bool:
    item = target.client.get_item(
        TableName=target.table,
        Key={"pk": {"S": keys.user_pk(user)}, "sk": {"S": keys.ACCOUNT}},
        ProjectionExpression="pk",
        ConsistentRead=True,
    )
    return "Item" in item


def every_user(target: Target) -> Iterator[str]:
    """Every user with an account, by a paginated scan of the credits table."""
    pages = target.client.get_paginator("scan").paginate(
        TableName=target.table,
        ProjectionExpression="pk",
        FilterExpression="sk = :account",
        ExpressionAttributeValues={":account": {"S": keys.ACCOUNT}},
    )
    for page in pages:
        for item in page["Items"]:
            yield item["pk"]["S"].removeprefix(keys.USER)


# ---- commands ---------------------------------------------------------------------------------


@click.group(help=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[2])
@click.option("--stack", metavar="NAME", help="act on this deployed stack (its outputs name the table)")
@click.option("--region", metavar="REGION", help="the stack's AWS region (else the usual AWS configuration)")
@click.pass_context
def cli(ctx: click.Context, stack: str | None, region: str | None) -> None:
    ctx.obj = {"stack": stack, "region": region}


def target_of(ctx: click.Context) -> Target:
    found: Target = ctx.obj.get("target") or locate(ctx.obj["stack"], ctx.obj["region"])
    ctx.obj["target"] = found
    return found


@cli.command()
@click.argument("user")
@click.option("--entries", default=10, show_default=True, type=click.IntRange(1, 100), help="how many last entries")
@click.pass_context
@one_line_errors
def user(ctx: click.Context, user: str, entries: int) -> int:
    """A user's balance, holds, settings and last ledger entries. A user with no account has 0."""
    target = target_of(ctx)
    ledger = target.ledger()
    view = ledger.account(user)
    settings = ledger.settings(user)
    holds = ledger.holds(user)
    last, _ = ledger.transactions(user, limit=entries)
    known = account_exists(target, user)
    click.echo(f"{user}  ({target.where}{'' if known else '; no account yet'})")
    click.echo(f"  balance      {credits(view.balance)}")
    click.echo(f"  available    {credits(view.available)}")
    click.echo(f"  held         {credits(view.held)} in {len(holds)} open hold{'' if len(holds) == 1 else 's'}")
    for hold in holds:
        click.echo(f"    {hold.hold_id}  {credits(hold.amount)}  until {when(hold.expires_at_ms)}  {hold.description}")
    limit = "none" if settings.monthly_spend_limit is None else credits(settings.monthly_spend_limit)
    click.echo(
        f"  settings     low-balance alert under {credits(settings.low_balance_threshold)}; monthly limit {limit}; "
        f"spent this month {credits(settings.spent_this_month)}"
    )
    if not last:
        click.echo("  no ledger entries")
        return 0
    click.echo(f"  last {len(last)} entr{'y' if len(last) == 1 else 'ies'}, newest first:")
    for tx in last:
        click.echo(
            f"    #{tx.seq:<5} {when(tx.created_at)}  {tx.type:<10} {tx.amount:>+12,}  "
            f"balance {tx.balance_after:>12,}  {tx.description}" + (f"  [forced: {tx.reason}]" if tx.reason else "")
        )
    return 0


@cli.command()
@click.argument("user")
@click.argument("amount", type=click.IntRange(1, MAX_AMOUNT))
@click.option("--type", "kind", type=click.Choice(["gift", "adjustment"]), required=True, help="the entry's type")
@click.option("--description", required=True, help="what the user sees in their history")
@click.option("--reference", help="your id of this grant: repeating it grants once (answers the first grant)")
@click.pass_context
@one_line_errors
def grant(ctx: click.Context, user: str, amount: int, kind: str, description: str, reference: str | None) -> int:
    """Add credits to a user, as POST /internal/credits/grant does (same checks, same ledger entry)."""
    try:
        fields = {"userId": user, "amount": amount, "type": kind, "description": description, "referenceId": reference}
        request = api.GrantRequest.model_validate(fields)
    except pydantic.ValidationError as exc:
        problem = exc.errors(include_url=False)[0]
        raise Failed(f"{'.'.join(str(p) for p in problem['loc'])}: {problem['msg']}") from None
    target = target_of(ctx)
    posted = api.internal_grant(target.ledger(), request, None)
    if posted.replayed:
        click.echo(f"already granted with reference {reference}, nothing granted now ({target.where})")
    else:
        click.echo(f"granted {credits(amount)} to {user} ({kind}): balance {credits(posted.balance)} ({target.where})")
    return 0


class _Adjustment(pydantic.BaseModel):
    """What `credits adjust` takes, checked as the API checks the same fields."""

    model_config = pydantic.ConfigDict(extra="forbid", strict=True, frozen=True)

    userId: api.Token
    description: api.Description
    referenceId: api.Token | None = None
    reason: api.Description | None = None


@cli.command(context_settings={"ignore_unknown_options": True})  # so that AMOUNT may be -5
@click.argument("user")
@click.argument("amount", type=click.IntRange(-MAX_AMOUNT, MAX_AMOUNT))
@click.option("--description", required=True, help="what the user sees in their history")
@click.option("--reference", help="your id of this adjustment: repeating it adjusts once")
@click.option("--force-negative", is_flag=True, help="allow a debit to take the balance below zero (needs --reason)")
@click.option("--reason", help="why the debit may go below zero: kept on the entry, not shown to the user")
@click.pass_context
@one_line_errors
def adjust(
    ctx: click.Context,
    user: str,
    amount: int,
    description: str,
    reference: str | None,
    force_negative: bool,
    reason: str | None,
) -> int:
    """Correct a user's balance with an `adjustment` entry: AMOUNT > 0 adds credits, AMOUNT < 0 takes
    them away. A debit never takes the balance, nor what is available (open holds count), below zero:
    it is refused, exit 1, unless --force-negative with a --reason."""
    if amount == 0:
        raise click.UsageError("AMOUNT must not be 0: give credits to add (5) or to take away (-5)")
    if force_negative != (reason is not None):
        raise click.UsageError("--force-negative and --reason go together")
    if force_negative and amount > 0:
        raise click.UsageError("--force-negative is for a debit (a negative AMOUNT)")
    try:
        fields = {"userId": user, "description": description, "referenceId": reference, "reason": reason}
        _Adjustment.model_validate(fields)
    except pydantic.ValidationError as exc:
        problem = exc.errors(include_url=False)[0]
        raise Failed(f"{'.'.join(str(p) for p in problem['loc'])}: {problem['msg']}") from None
    if force_negative and not (reason or "").strip():
        raise click.UsageError("--reason must say why")
    target = target_of(ctx)
    ledger = target.ledger()
    try:
        posted = ledger.adjust(
            user,
            amount,
            description=description,
            reference_id=reference,
            force_negative=force_negative,
            reason=reason,
        )
    except InsufficientCredits as no:
        held = f", {credits(no.balance - no.available)} held" if no.available != no.balance else ""
        click.echo(
            f"refused: taking {credits(-amount)} from {user} would go below zero (balance {credits(no.balance)}"
            f"{held}); nothing changed. To allow it: --force-negative --reason TEXT",
            err=True,
        )
        return 1
    if posted.replayed:
        click.echo(f"already adjusted with reference {reference}, nothing changed now ({target.where})")
        return 0
    verb = f"added {credits(amount)} to" if amount > 0 else f"took {credits(-amount)} from"
    click.echo(f"{verb} {user} (adjustment): balance {credits(posted.balance)} ({target.where})")
    return 0


@cli.command()
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
    payments = Payments(ledger, target.catalog(), target.client, target.table)
    failed: dict[str, list[str]] = {}

    def check(who: str) -> tuple[int, int, list[str]]:
        report = ledger.audit(who)
        problems = report.problems + payments.audit(who, ledger.history(who))
        return report.balance, report.entries, problems

    if everyone:
        names = sorted(every_user(target))
        # the bar on stderr; the findings on stdout
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

    for who in users:
        if not account_exists(target, who):
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


def _encode_key(key: dict[str, Any]) -> str:
    plain = {name: key[name]["S"] for name in ("pk", "sk")}
    return base64.urlsafe_b64encode(json.dumps(plain, separators=(",", ":")).encode()).decode().rstrip("=")


def _decode_key(cursor: str) -> dict[str, Any]:
    try:
        plain = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not (
            isinstance(plain, dict) and set(plain) == {"pk", "sk"} and all(isinstance(v, str) for v in plain.values())
        ):
            raise ValueError("not a key")
    except (binascii.Error, ValueError, RecursionError):
        raise Failed("--cursor is not valid: pass the one the last page printed") from None
    return {name: {"S": value} for name, value in plain.items()}


@cli.command()
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000), help="users on this page")
@click.option("--cursor", help="where the last page ended (it prints the next cursor)")
@click.pass_context
@one_line_errors
def users(ctx: click.Context, limit: int, cursor: str | None) -> int:
    """Users and their balances, a page at a time, in the table's order (a Scan of the account items,
    not sorted). The last line is the next page's cursor, or says there is no more."""
    target = target_of(ctx)
    start = _decode_key(cursor) if cursor else None
    found: list[dict[str, Any]] = []
    next_key: dict[str, Any] | None = None
    while len(found) < limit:
        scan: dict[str, Any] = {
            "TableName": target.table,
            "FilterExpression": "sk = :account",
            "ExpressionAttributeValues": {":account": {"S": keys.ACCOUNT}},
            "ProjectionExpression": "pk, sk, balance, seq, #holds",
            "ExpressionAttributeNames": {"#holds": "holds"},
            "Limit": USERS_SCAN_PAGE,  # items read per call, before the filter keeps the accounts
            "ConsistentRead": True,
        }
        if start:
            scan["ExclusiveStartKey"] = start
        page = target.client.scan(**scan)
        items, start = page.get("Items", []), page.get("LastEvaluatedKey")
        if len(found) + len(items) > limit:  # this page ends the listing: resume after its last one shown
            found += items[: limit - len(found)]
            next_key = found[-1]
            break
        found += items
        next_key = start
        if not start:
            break
    now_ms = int(time.time() * 1000)
    for item in found:
        account = _snapshot(from_item(item))
        who = item["pk"]["S"].removeprefix(keys.USER)
        click.echo(f"{who}  balance {credits(account.balance)}, available {credits(account.available(now_ms))}")
    click.echo(f"next cursor: {_encode_key(next_key)}" if next_key else f"no more users ({target.where})")
    return 0


EXPORT_COLUMNS = (
    "id",
    "amount",
    "balanceAfter",
    "type",
    "description",
    "referenceId",
    "monetaryAmount",
    "currency",
    "createdAt",
)  # GET /credits/transactions' fields (api.transaction_body), in its order


def _csv_cell(value: object) -> object:
    """A CSV cell: null as empty; text a spreadsheet would run as a formula (a user's own description
    or reference starting with =, +, -, @, or a tab or carriage return) is quoted with a leading '."""
    if value is None:
        return ""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


@cli.command()
@click.argument("user")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.pass_context
@one_line_errors
def export(ctx: click.Context, user: str, fmt: str) -> int:
    """A user's whole ledger on stdout, newest first as GET /credits/transactions pages it, with its
    fields: CSV with a header row (an empty cell for null), or a JSON array. Exit 1 for no such user."""
    target = target_of(ctx)
    if not account_exists(target, user):
        click.echo(f"{user}: no such user (no account in {target.where})", err=True)
        return 1
    ledger = target.ledger()
    out = sys.stdout
    rows = csv.writer(out)
    if fmt == "csv":
        rows.writerow(EXPORT_COLUMNS)
    else:
        out.write("[")
    first, cursor = True, None
    while True:
        page, cursor = ledger.transactions(user, limit=EXPORT_PAGE, cursor=cursor)
        for tx in page:
            body = api.transaction_body(tx)
            if fmt == "csv":
                rows.writerow([_csv_cell(body[c]) for c in EXPORT_COLUMNS])
            else:
                out.write(("\n" if first else ",\n") + json.dumps(body, ensure_ascii=False))
            first = False
        if cursor is None:
            break
    if fmt == "json":
        out.write("]\n" if first else "\n]\n")
    out.flush()
    return 0


@cli.group()
def packages() -> None:
    """The credit package catalog."""


@packages.command("list")
@click.pass_context
@one_line_errors
def list_packages(ctx: click.Context) -> int:
    """Every package, active or not, in the order GET /credit-packages lists them: by currency, then
    price, then id (the page re-sorts them for buyers)."""
    for p in target_of(ctx).catalog().all():
        state = "active" if p.active else "inactive"
        click.echo(f"{p.id}: {credits(p.credits)} for {format_money(p.price, p.currency)} [{state}]")
    return 0


@packages.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--sync-stripe", is_flag=True, help="create or reuse the Stripe products and prices")
@click.pass_context
@one_line_errors
def import_packages_command(ctx: click.Context, file: Path, sync_stripe: bool) -> int:
    """Load packages from a JSON file ({"packages": [...]} or a list), validated, ids unique."""
    target = target_of(ctx)
    for p in import_packages(target, load_catalog_file(file), sync_stripe):
        price = format_money(p.price, p.currency)
        click.echo(f"{p.id}: {credits(p.credits)} for {price} (stripe price {p.stripe_price_id})")
    return 0


@cli.command()
@click.option("--since", "period", default="3d", show_default=True, help="how far back: 90m, 12h, 3d ... 30d")
@click.option("--apply", "do_apply", is_flag=True, help="apply what is missing (as the webhook would have)")
@click.pass_context
@one_line_errors
def reconcile(ctx: click.Context, period: str, do_apply: bool) -> int:
    """Find paid purchases, refunds and disputes of the period that the ledger does not show (a
    webhook never delivered); with --apply, apply them through the webhook's own exactly-once path.
    Exit 1 when a dry run finds something missing; 0 when nothing is, or all of it was applied."""
    from credits.reconcile import SETTLED, apply, find_missing, window

    since = int(time.time()) - window(period)
    target = target_of(ctx)
    payments = Payments(target.ledger(), target.catalog(), target.client, target.table)
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
    return 1 if unsettled else 0


def load_catalog_file(path: Path) -> list[Package]:
    """Packages from a JSON file, validated, ids unique; Failed names every problem."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise Failed(f"cannot read {path}: {exc}") from None
    items = data.get("packages") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise Failed(f'{path} must hold a non-empty list of packages (or {{"packages": [...]}})')
    found: list[Package] = []
    problems: list[str] = []
    for index, item in enumerate(items):
        try:
            found.append(Package.model_validate(item))
        except pydantic.ValidationError as exc:
            for err in exc.errors(include_url=False, include_input=False):
                where = ".".join(str(p) for p in err["loc"])
                problems.append(f"packages[{index}].{where}: {err['msg']}")
    ids = [p.id for p in found]
    problems += [f"duplicate package id {i!r}" for i in sorted({i for i in ids if ids.count(i) > 1})]
    if problems:
        raise Failed("invalid catalog: " + "; ".join(problems))
    return found


def import_packages(target: Target, found: list[Package], sync_stripe: bool) -> list[Package]:
    catalog = target.catalog()
    stored: list[Package] = []
    gateway = target.stripe() if sync_stripe else None
    for package in found:
        if gateway is not None:
            package = gateway.sync_package(package)
        else:
            existing = catalog.get(package.id)
            if existing and existing.price == package.price and existing.currency == package.currency:
                # keep the Stripe ids of an unchanged price
                package = package.model_copy(
                    update={
                        "stripe_product_id": package.stripe_product_id or existing.stripe_product_id,
                        "stripe_price_id": package.stripe_price_id or existing.stripe_price_id,
                    }
                )
        catalog.put(package)
        stored.append(package)
    return stored


def main(argv: list[str] | None = None) -> int:
    """The console script: the exit code of the command (see the module's doc)."""
    try:
        result = cli.main(args=argv, prog_name="credits", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("aborted", err=True)
        return 130
    return result if isinstance(result, int) else 0
