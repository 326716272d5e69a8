"""`make dev` keeps its data under a folder: balances and history survive a restart of DynamoDB Local."""

from __future__ import annotations

from pathlib import Path

from credits.ledger import Ledger
from local.dynamodb_local import DynamoDBLocal
from local.template import create_tables


def test_balances_and_history_survive_a_restart(tmp_path: Path) -> None:
    tables = {"CreditsTable": "credits", "IdempotencyTable": "credits-idempotency"}
    with DynamoDBLocal(db_path=tmp_path) as first:
        create_tables(first.client(), tables)
        ledger = Ledger(first.client(), "credits")
        ledger.grant("persistent", 40, type="gift", description="welcome")
        ledger.charge("persistent", 15, description="generate")
    with DynamoDBLocal(db_path=tmp_path) as second:
        create_tables(second.client(), tables)  # already there: left as they are
        ledger = Ledger(second.client(), "credits")
        assert ledger.balance("persistent") == 25
        assert [t.amount for t in ledger.history("persistent")] == [40, -15]
        assert ledger.audit("persistent").ok
