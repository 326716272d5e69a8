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
from tests.support import environment, http_event, invoke, load_function

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
    assert "starter: 100 credits for $5.00 [active]" in capsys.readouterr().out


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


def test_packages_list_prints_the_order_of_get_credit_packages(moto_dynamodb, tmp_path, capsys) -> None:
    """The same order as GET /credit-packages (currency, then price, then id), inactive packages in
    their place among them; not the page's own order (web/app.js puts the busiest currency first)."""
    catalog = [
        {"id": "team", "name": "Team", "credits": 5000, "price": 18000, "currency": "usd"},
        {"id": "b-same", "name": "Same price B", "credits": 10, "price": 500, "currency": "usd"},
        {"id": "starter", "name": "Starter", "credits": 100, "price": 500, "currency": "usd"},
        {"id": "old", "name": "Old", "credits": 1, "price": 100, "currency": "usd", "active": False},
        {"id": "yen", "name": "Yen", "credits": 100, "price": 800, "currency": "jpy"},
        {"id": "euro", "name": "Euro", "credits": 100, "price": 500, "currency": "eur"},
    ]
    assert main(["packages", "import", write(tmp_path, catalog)]) == 0
    imported = capsys.readouterr().out
    assert "yen: 100 credits for ¥800 (stripe price None)" in imported  # money as people read it
    assert "team: 5,000 credits for $180.00 (stripe price None)" in imported
    assert main(["packages", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed == [
        "euro: 100 credits for €5.00 [active]",
        "yen: 100 credits for ¥800 [active]",
        "old: 1 credit for $1.00 [inactive]",  # the cheapest, in its place
        "b-same: 10 credits for $5.00 [active]",  # the same price: by id
        "starter: 100 credits for $5.00 [active]",
        "team: 5,000 credits for $180.00 [active]",
    ]
    # the active ones, exactly in the order the HTTP route answers
    http = invoke(load_function("balance"), http_event("GET", "/credit-packages", sub=None))[1]
    active = [line.split(":")[0] for line in listed if line.endswith("[active]")]
    assert active == [p["id"] for p in http["packages"]]


def test_packages_list_says_the_order_it_prints(capsys) -> None:
    assert main(["packages", "list", "--help"]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "in the order GET /credit-packages lists them: by currency, then price, then id" in shown
    assert "the order the page lists them" not in shown  # the page orders its own way (web/app.js)
