"""Unit fixtures on moto: the functions as loaded by Lambda, and the ledger they write to."""

from __future__ import annotations

from types import ModuleType

import pytest

from credits.ledger import Ledger
from credits.packages import Catalog, Package
from tests import stripe_events as se
from tests.support import environment, load_function


@pytest.fixture
def use(moto_dynamodb) -> ModuleType:
    return load_function("use_credits")


@pytest.fixture
def bal(moto_dynamodb) -> ModuleType:
    return load_function("balance")


@pytest.fixture
def webhook(moto_dynamodb) -> ModuleType:
    Catalog(moto_dynamodb, "credits").put(Package(id="starter", name="Starter", credits=100, price=500, currency="usd"))
    with environment(STRIPE_WEBHOOK_SECRET=se.SECRET):
        return load_function("webhook")


@pytest.fixture
def ledger(moto_dynamodb) -> Ledger:
    return Ledger(moto_dynamodb, "credits")
