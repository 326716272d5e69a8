"""One user's account: `credits user` (what it holds, its credit lots), `credits grant` (with a lot's
terms: category, priority, expiry) and `credits adjust`."""

from __future__ import annotations

from datetime import datetime, timedelta

import click
import pydantic

from credits import api
from credits.cli.common import credits, invalid, one_line_errors, when
from credits.cli.target import target_of
from credits.errors import InsufficientCredits
from credits.ledger import CATEGORIES, MAX_AMOUNT, MAX_PRIORITY, AccountView, Settings


@click.command()
@click.argument("user")
@click.option("--entries", default=10, show_default=True, type=click.IntRange(1, 100), help="how many last entries")
@click.pass_context
@one_line_errors
def user(ctx: click.Context, user: str, entries: int) -> int:
    """A user's balance, holds, credit lots (in the order they are spent), settings and last ledger
    entries. A user with no account has 0."""
    target = target_of(ctx)
    ledger = target.ledger()
    view = ledger.account(user)
    settings = ledger.settings(user)
    holds = ledger.holds(user)
    last, _ = ledger.transactions(user, limit=entries)
    known = target.has_account(user)
    click.echo(f"{user}  ({target.where}{'' if known else '; no account yet'})")
    click.echo(f"  balance      {credits(view.balance)}")
    click.echo(f"  available    {credits(view.available)}")
    click.echo(f"  held         {credits(view.held)} in {len(holds)} open hold{'' if len(holds) == 1 else 's'}")
    for hold in holds:
        click.echo(f"    {hold.hold_id}  {credits(hold.amount)}  until {when(hold.expires_at_ms)}  {hold.description}")
    show_lots(view)
    limit = "none" if settings.monthly_spend_limit is None else credits(settings.monthly_spend_limit)
    click.echo(
        f"  settings     low-balance alert under {credits(settings.low_balance_threshold)}; monthly limit {limit}; "
        f"spent this month {credits(settings.spent_this_month)}"
    )
    click.echo(f"  auto top-up  {auto_top_up_line(settings)}")
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


def auto_top_up_line(settings: Settings) -> str:
    """Auto top-up as it stands: its settings, the card it charges, and why it is not running."""
    auto, state, card = settings.auto_top_up, settings.topup, settings.card
    card_text = f"{card.get('brand')} ending {card.get('last4')}" if card else "no card saved"
    if auto is None or not auto.enabled:
        return f"off; {card_text}"
    started = f"{state.started} of {auto.max_per_month} started in {state.month}" if state.month else "none started"
    line = f"{auto.package_id} below {credits(auto.threshold)}; {started}; {card_text}"
    if state.pending:
        line += f"; {state.pending} pending"
    if state.suspended:
        line += f"; SUSPENDED after {state.failures} failed payments ({state.suspended})"
    elif state.failures:
        line += f"; {state.failures} failed in a row, next not before {when(state.retry_after_ms)}"
    return line


def show_lots(view: AccountView) -> None:
    """The lots that count now, in the order they are spent (priority, soonest expiry, oldest)."""
    if not view.lots:
        click.echo("  lots         none")
        return
    click.echo(f"  lots         {len(view.lots)}, in the order they are spent:")
    click.echo(
        f"    {'lot':<8} {'category':<12} {'priority':>8} {'remaining':>14} {'held':>14}  {'expires':<20}  label"
    )
    for lot in view.lots:
        expires = "never" if lot.expires_at_ms is None else when(lot.expires_at_ms)
        click.echo(
            f"    {lot.lot_id:<8} {lot.category:<12} {lot.priority:>8} {lot.remaining:>14,} {lot.held:>14,}  "
            f"{expires:<20}  {lot.label}"
        )


@click.command()
@click.argument("user")
@click.argument("amount", type=click.IntRange(1, MAX_AMOUNT))
@click.option("--type", "kind", type=click.Choice(["gift", "adjustment"]), required=True, help="the entry's type")
@click.option("--description", required=True, help="what the user sees in their history (and the lot's name)")
@click.option("--reference", help="your id of this grant: repeating it grants once (answers the first grant)")
@click.option("--category", type=click.Choice(CATEGORIES), help="the credits' category  [default: paid]")
@click.option(
    "--priority",
    type=click.IntRange(0, MAX_PRIORITY),
    help="lower is spent first  [default: paid 50, promotional 10]",
)
@click.option("--expires-at", metavar="ISO", help="when the credits expire, e.g. 2027-01-03T00:00:00Z")
@click.option(
    "--expires-in-days", type=click.IntRange(1, api.MAX_EXPIRES_IN_DAYS), help="the credits expire N days from now"
)
@click.pass_context
@one_line_errors
def grant(
    ctx: click.Context,
    user: str,
    amount: int,
    kind: str,
    description: str,
    reference: str | None,
    category: str | None,
    priority: int | None,
    expires_at: str | None,
    expires_in_days: int | None,
) -> int:
    """Add credits to a user, as POST /internal/credits/grant does (same checks, same ledger entry).
    Without --category, --priority or an expiry: paid credits that never expire."""
    if expires_at is not None and expires_in_days is not None:
        raise click.UsageError("give --expires-at or --expires-in-days, not both")
    fields = {"userId": user, "amount": amount, "type": kind, "description": description, "referenceId": reference}
    terms = {"category": category, "priority": priority, "expiresAt": expires_at, "expiresInDays": expires_in_days}
    try:
        request = api.GrantRequest.model_validate({**fields, **terms})
    except pydantic.ValidationError as exc:
        raise invalid(exc) from None
    target = target_of(ctx)
    posted = api.internal_grant(target.ledger(), request, None)
    if posted.replayed:
        click.echo(f"already granted with reference {reference}, nothing granted now ({target.where})")
        return 0
    click.echo(
        f"granted {credits(amount)} to {user} ({_terms(request)}): balance {credits(posted.balance)} ({target.where})"
    )
    return 0


def _terms(request: api.GrantRequest) -> str:
    """ "gift", or with terms "gift, promotional, priority 5, expires 2027-01-03 00:00 UTC"."""
    parts: list[str] = [request.type]
    if request.category is not None:
        parts.append(request.category)
    if request.priority is not None:
        parts.append(f"priority {request.priority}")
    if request.expiresAt is not None:
        at = datetime.fromisoformat(request.expiresAt)
        parts.append(f"expires {when((at - api.EPOCH) // timedelta(milliseconds=1))}")
    if request.expiresInDays is not None:
        parts.append(f"expires in {request.expiresInDays} day{'' if request.expiresInDays == 1 else 's'}")
    return ", ".join(parts)


class _Adjustment(pydantic.BaseModel):
    """What `credits adjust` takes, checked as the API checks the same fields."""

    model_config = pydantic.ConfigDict(extra="forbid", strict=True, frozen=True)

    userId: api.Token
    description: api.Description
    referenceId: api.Token | None = None
    reason: api.Description | None = None


def _check_adjustment(
    user: str, amount: int, description: str, reference: str | None, force_negative: bool, reason: str | None
) -> None:
    """`credits adjust`'s arguments as a whole (UsageError), and its fields as the API checks them."""
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
        raise invalid(exc) from None
    if force_negative and not (reason or "").strip():
        raise click.UsageError("--reason must say why")


@click.command(context_settings={"ignore_unknown_options": True})  # so that AMOUNT may be -5
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
    _check_adjustment(user, amount, description, reference, force_negative, reason)
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


@click.command("cancel-top-up")
@click.argument("user")
@click.pass_context
@one_line_errors
def cancel_top_up(ctx: click.Context, user: str) -> int:
    """End USER's pending auto top-up with no failure counted, so the next crossing can start one:
    for a top-up that cannot end by itself (its record reached the dead-letter queue, a payment that
    stayed processing). Run `credits reconcile --since 3d --apply` first: a top-up Stripe did take
    the money for is credited by it (and so ends); a payment made after this is still credited there.
    Exit 1 when nothing is pending."""
    ledger = target_of(ctx).ledger()
    pending = ledger.top_ups(user)[1].pending
    message = "An operator ended this top-up; nothing more will be charged for it."
    if pending is None or ledger.cancel_top_up(user, pending, "cancelled", message) is None:
        click.echo(f"{user} has no auto top-up pending")
        return 1
    click.echo(f"cancelled {pending}: the next time {user}'s credits fall below the threshold starts a new one")
    return 0
