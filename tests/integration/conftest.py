"""Integration fixtures: fresh tables on the session's DynamoDB Local, and functions pointed at them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from credits.ledger import Ledger
from credits.packages import Catalog
from credits.payments import Payments
from local.dynamodb_local import DynamoDBLocal
from local.template import create_tables

pytestmark = pytest.mark.integration


@dataclass
class LocalTables:
    endpoint: str
    credits: str
    idempotency: str
    client: object

    def ledger(self) -> Ledger:
        return Ledger(self.client, self.credits)  # type: ignore[arg-type]

    def payments(self) -> Payments:
        client: Any = self.client
        return Payments(self.ledger(), Catalog(client, self.credits), client, self.credits)


@pytest.fixture
def local_tables(dynamodb_local: DynamoDBLocal, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalTables]:
    """Tables named for this test alone, and the environment a deployed function would have."""
    suffix = uuid.uuid4().hex[:8]
    names = {"CreditsTable": f"credits-{suffix}", "IdempotencyTable": f"idempotency-{suffix}"}
    client = dynamodb_local.client()
    create_tables(client, names)
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", dynamodb_local.endpoint)
    monkeypatch.setenv("CREDITS_TABLE_NAME", names["CreditsTable"])
    monkeypatch.setenv("IDEMPOTENCY_TABLE_NAME", names["IdempotencyTable"])
    yield LocalTables(dynamodb_local.endpoint, names["CreditsTable"], names["IdempotencyTable"], client)
    for name in names.values():
        client.delete_table(TableName=name)
