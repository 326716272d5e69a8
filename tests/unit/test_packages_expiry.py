"""A package's `expiresInDays`: read from the catalog file, stored on the package item, and fixed at
checkout in the session's metadata with the other terms of the sale (on moto)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from credits import keys
from credits.__main__ import main
from credits.checkout import session_metadata
from credits.packages import Catalog, Package
from local.template import ROOT

GOOD = {"id": "ok", "name": "OK", "credits": 10, "price": 100, "currency": "usd"}


def write(tmp_path: Path, packages: object) -> str:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(packages))
    return str(path)


def stored(moto_dynamodb: Any, package_id: str) -> dict[str, Any]:
    key = {"pk": {"S": keys.package_pk(package_id)}, "sk": {"S": keys.PACKAGE_SK}}
    item: dict[str, Any] = moto_dynamodb.get_item(TableName="credits", Key=key)["Item"]
    return item


def test_a_package_that_expires_is_imported_stored_and_listed(moto_dynamodb: Any, tmp_path: Path, capsys) -> None:
    catalog = [{**GOOD, "id": "yearly", "expiresInDays": 365}, {**GOOD, "id": "daily", "expiresInDays": 1}, GOOD]
    assert main(["packages", "import", write(tmp_path, catalog)]) == 0
    imported = capsys.readouterr().out
    assert "yearly: 10 credits for $1.00, credits expire 365 days after purchase (stripe price None)" in imported
    assert "ok: 10 credits for $1.00 (stripe price None)" in imported

    assert stored(moto_dynamodb, "yearly")["expires_in_days"] == {"N": "365"}
    assert "expires_in_days" not in stored(moto_dynamodb, "ok")  # credits that never expire: as before
    read = {p.id: p.expires_in_days for p in Catalog(moto_dynamodb, "credits").all()}
    assert read == {"yearly": 365, "daily": 1, "ok": None}

    assert main(["packages", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert "daily: 10 credits for $1.00 [active], credits expire 1 day after purchase" in listed
    assert "yearly: 10 credits for $1.00 [active], credits expire 365 days after purchase" in listed
    assert "ok: 10 credits for $1.00 [active]" in listed


@pytest.mark.parametrize("days", [0, 3651, -5, "30", 30.0, 1.5, True])
def test_an_expiry_out_of_1_to_3650_days_refuses_the_catalog_whole(
    moto_dynamodb: Any, tmp_path: Path, capsys, days: object
) -> None:
    catalog = [GOOD, {**GOOD, "id": "bad", "expiresInDays": days}]
    assert main(["packages", "import", write(tmp_path, catalog)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: invalid catalog: packages[1].expiresInDays: ")
    assert error.count("\n") == 1
    assert Catalog(moto_dynamodb, "credits").all() == []


def test_the_example_catalog_has_a_package_that_expires(moto_dynamodb: Any) -> None:
    assert main(["packages", "import", str(ROOT / "local" / "packages.example.json")]) == 0
    expiring = {p.id: p.expires_in_days for p in Catalog(moto_dynamodb, "credits").all() if p.expires_in_days}
    assert expiring == {"team": 365}


def test_the_checkout_fixes_the_expiry_with_the_other_terms_of_the_sale() -> None:
    yearly = Package(id="yearly", name="Yearly", credits=100, price=500, currency="eur", expires_in_days=365)
    assert session_metadata("user-1", yearly) == {
        "userId": "user-1",
        "packageId": "yearly",
        "credits": "100",
        "price": "500",
        "currency": "eur",
        "expiresInDays": "365",
    }
    forever = yearly.model_copy(update={"expires_in_days": None})
    assert "expiresInDays" not in session_metadata("user-1", forever)


def test_the_public_package_object_is_unchanged_by_an_expiry() -> None:
    """GET /credit-packages answers the documented Package object (docs/openapi.yaml)."""
    yearly = Package(id="yearly", name="Yearly", credits=100, price=500, currency="eur", expires_in_days=365)
    assert set(yearly.public()) == {"id", "name", "description", "credits", "price", "currency"}
