"""The credit package catalog: `credits packages list` and `credits packages import FILE`.

A package of the file: `id`, `name`, `description`, `credits`, `price` (minor units), `currency`,
`active`, and `expiresInDays` (1 to 3650: each purchase's credits expire that many days after it is
credited; left out, they never expire)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import pydantic

from credits.cli.common import Failed, credits, one_line_errors
from credits.cli.target import Target, target_of
from credits.money import format_money
from credits.packages import Package


@click.group()
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
        click.echo(f"{p.id}: {credits(p.credits)} for {format_money(p.price, p.currency)} [{state}]{_expiry(p)}")
    return 0


def _expiry(package: Package) -> str:
    """How long a package's credits last, when they expire: ", credits expire 365 days after purchase"."""
    days = package.expires_in_days
    if days is None:
        return ""
    return f", credits expire {days} day{'' if days == 1 else 's'} after purchase"


@packages.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--sync-stripe", is_flag=True, help="create or reuse the Stripe products and prices")
@click.pass_context
@one_line_errors
def import_packages_command(ctx: click.Context, file: Path, sync_stripe: bool) -> int:
    """Load packages from a JSON file ({"packages": [...]} or a list), validated, ids unique. A
    package's `expiresInDays` (1 to 3650) makes each purchase's credits expire that many days after
    it is credited; without it they never expire."""
    target = target_of(ctx)
    for p in import_packages(target, load_catalog_file(file), sync_stripe):
        price = format_money(p.price, p.currency)
        click.echo(f"{p.id}: {credits(p.credits)} for {price}{_expiry(p)} (stripe price {p.stripe_price_id})")
    return 0


def load_catalog_file(path: Path) -> list[Package]:
    """Packages from a JSON file, validated, ids unique; Failed names every problem."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise Failed(f"cannot read {path}: {exc}") from None
    items = data.get("packages") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise Failed(f'{path} must hold a non-empty list of packages (or {{"packages": [...]}})')
    found, problems = _validated(items)
    ids = [p.id for p in found]
    problems += [f"duplicate package id {i!r}" for i in sorted({i for i in ids if ids.count(i) > 1})]
    if problems:
        raise Failed("invalid catalog: " + "; ".join(problems))
    return found


def _validated(items: list[Any]) -> tuple[list[Package], list[str]]:
    """The packages that are valid, and every problem of the others, by index and field."""
    found: list[Package] = []
    problems: list[str] = []
    for index, item in enumerate(items):
        try:
            found.append(Package.model_validate(item))
        except pydantic.ValidationError as exc:
            for err in exc.errors(include_url=False, include_input=False):
                where = ".".join(str(p) for p in err["loc"])
                problems.append(f"packages[{index}].{where}: {err['msg']}")
    return found, problems


def import_packages(target: Target, found: list[Package], sync_stripe: bool) -> list[Package]:
    """Store the packages; with sync_stripe, each with its Stripe product and price (created or reused)."""
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
