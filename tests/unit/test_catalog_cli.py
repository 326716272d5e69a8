"""`python -m credits packages import FILE [--sync-stripe]` and `audit`, on moto and the Stripe emulator."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from credits.__main__ import main
from credits.ledger import Ledger
from credits.packages import Catalog
from local.stripe_emulator import StripeEmulator
from local.template import ROOT
from tests.support import environment

EXAMPLE = ROOT / "local" / "packages.example.json"


@pytest.fixture
def emulator() -> Iterator[StripeEmulator]:
    stripe = StripeEmulator(api_key="sk_test_cli", webhook_secret="whsec_cli")
    stripe.start()
    with environment(STRIPE_SECRET_KEY="sk_test_cli", STRIPE_API_BASE=stripe.base_url):
        yield stripe
    stripe.stop()


def write(tmp_path: Path, packages: object) -> str:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(packages))
    return str(path)


def test_the_example_catalog_imports_and_lists(moto_dynamodb, capsys) -> None:
    assert main(["packages", "import", str(EXAMPLE)]) == 0
    listed = Catalog(moto_dynamodb, "credits").listed()
    assert [p.id for p in listed][:1] == ["starter-jpy"]  # ordered by currency, then price
    assert {p.id: (p.credits, p.price, p.currency) for p in listed}["starter"] == (100, 500, "usd")
    assert main(["packages", "list"]) == 0
    assert "starter: 100 credits for 500 usd [active]" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("package", "complaint"),
    [
        ({"credits": 0}, "credits"),
        ({"credits": 1.5}, "credits"),
        ({"price": -1}, "price"),
        ({"price": "500"}, "price"),
        ({"currency": "USD"}, "currency"),
        ({"currency": "xyz"}, "currency"),
        ({"colour": "red"}, "colour"),
        ({"id": "has space"}, "id"),
    ],
)
def test_invalid_catalogs_are_refused_whole(moto_dynamodb, tmp_path, capsys, package, complaint) -> None:
    good = {"id": "ok", "name": "OK", "credits": 10, "price": 100, "currency": "usd"}
    bad = {"id": "bad", "name": "Bad", "credits": 10, "price": 100, "currency": "usd", **package}
    assert main(["packages", "import", write(tmp_path, [good, bad])]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: invalid catalog: packages[1].") and complaint in error
    assert error.count("\n") == 1  # one line, no traceback
    assert Catalog(moto_dynamodb, "credits").all() == []


def test_duplicate_ids_are_refused(moto_dynamodb, tmp_path, capsys) -> None:
    twice = [{"id": "a", "name": "A", "credits": 1, "price": 100, "currency": "usd"}] * 2
    assert main(["packages", "import", write(tmp_path, {"packages": twice})]) == 2
    assert "duplicate package id 'a'" in capsys.readouterr().err


def test_sync_stripe_creates_products_and_prices_once(moto_dynamodb, emulator) -> None:
    assert main(["packages", "import", str(EXAMPLE), "--sync-stripe"]) == 0
    first = {p.id: (p.stripe_product_id, p.stripe_price_id) for p in Catalog(moto_dynamodb, "credits").all()}
    assert all(prod and price for prod, price in first.values())
    assert main(["packages", "import", str(EXAMPLE), "--sync-stripe"]) == 0
    again = {p.id: (p.stripe_product_id, p.stripe_price_id) for p in Catalog(moto_dynamodb, "credits").all()}
    assert again == first


def test_audit_exits_1_on_a_broken_ledger(moto_dynamodb, capsys) -> None:
    ledger = Ledger(moto_dynamodb, "credits")
    ledger.grant("ok-user", 5, type="gift", description="x")
    assert main(["audit", "ok-user"]) == 0
    moto_dynamodb.delete_item(TableName="credits", Key={"pk": {"S": "USER#ok-user"}, "sk": {"S": "TX#000000000001"}})
    assert main(["audit", "ok-user"]) == 1
    assert "PROBLEMS" in capsys.readouterr().out
