"""Operator commands.

    python -m credits packages import FILE [--sync-stripe]   load (and optionally sync) the catalog
    python -m credits packages list                          show the catalog
    python -m credits audit USER_ID [USER_ID ...]            check users' ledgers and the payments credited
                                                             to them (exit 1 on a problem)

Reads CREDITS_TABLE_NAME (and, with --sync-stripe, STRIPE_SECRET_KEY and STRIPE_API_BASE).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pydantic

from credits import config
from credits.aws import dynamodb_client
from credits.errors import CreditsError
from credits.ledger import Ledger
from credits.packages import Catalog, Package
from credits.payments import Payments


def load_catalog_file(path: Path) -> list[Package]:
    """Packages from a JSON file ({"packages": [...]} or a list), validated, ids unique."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: cannot read {path}: {exc}") from None
    items = data.get("packages") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise SystemExit(f'error: {path} must hold a non-empty list of packages (or {{"packages": [...]}})')
    packages: list[Package] = []
    problems: list[str] = []
    for index, item in enumerate(items):
        try:
            packages.append(Package.model_validate(item))
        except pydantic.ValidationError as exc:
            for err in exc.errors(include_url=False, include_input=False):
                where = ".".join(str(p) for p in err["loc"])
                problems.append(f"packages[{index}].{where}: {err['msg']}")
    ids = [p.id for p in packages]
    problems += [f"duplicate package id {i!r}" for i in sorted({i for i in ids if ids.count(i) > 1})]
    if problems:
        raise SystemExit("error: invalid catalog:\n  " + "\n  ".join(problems))
    return packages


def import_packages(catalog: Catalog, packages: list[Package], sync_stripe: bool) -> list[Package]:
    stored: list[Package] = []
    gateway = None
    if sync_stripe:
        from credits.stripe_gateway import StripeGateway  # only this command needs stripe

        gateway = StripeGateway.connect(config.secret("STRIPE_SECRET_KEY"), config.optional("STRIPE_API_BASE"))
    for package in packages:
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
    parser = argparse.ArgumentParser(prog="python -m credits", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    packages = sub.add_parser("packages", help="the credit package catalog")
    packages_sub = packages.add_subparsers(dest="action", required=True)
    do_import = packages_sub.add_parser("import", help="load packages from a JSON file")
    do_import.add_argument("file", type=Path)
    do_import.add_argument("--sync-stripe", action="store_true", help="create or reuse Stripe products and prices")
    packages_sub.add_parser("list", help="show every package")
    audit = sub.add_parser("audit", help="check that users' ledgers are gapless and add up")
    audit.add_argument("users", nargs="+")
    args = parser.parse_args(argv)

    try:
        client = dynamodb_client()
        table = config.require("CREDITS_TABLE_NAME")
        if args.command == "packages" and args.action == "import":
            for p in import_packages(Catalog(client, table), load_catalog_file(args.file), args.sync_stripe):
                print(f"{p.id}: {p.credits} credits for {p.price} {p.currency} (stripe price {p.stripe_price_id})")
            return 0
        if args.command == "packages":
            for p in Catalog(client, table).all():
                state = "active" if p.active else "inactive"
                print(f"{p.id}: {p.credits} credits for {p.price} {p.currency} [{state}]")
            return 0
        ledger = Ledger(client, table)
        payments = Payments(ledger, Catalog(client, table), client, table)
        failed = 0
        for user in args.users:
            report = ledger.audit(user)
            report.problems += payments.audit(user, ledger.history(user))
            print(f"{user}: balance {report.balance}, {report.entries} entries: {'ok' if report.ok else 'PROBLEMS'}")
            for problem in report.problems:
                print(f"  - {problem}")
            failed += not report.ok
        return 1 if failed else 0
    except CreditsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
