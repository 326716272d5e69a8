"""The daily expiry sweep on DynamoDB Local (AWS's own engine): an idle account's lot expires, then
the expire function runs twice at the same time, each in its own container process, as two
overlapping invocations of the schedule would on Lambda."""

from __future__ import annotations

import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from credits import keys
from credits.expiry import due_accounts
from credits.ledger import Ledger, LotTerms
from credits.ledger.codec import due_shard
from credits.store import DynamoStore
from local.template import create_tables, table_definitions
from tests.integration.conftest import LocalTables
from tests.support import assert_audited, fleet, wait_until

EVENT = {"source": "aws.scheduler"}


def account(tables: LocalTables, user: str) -> dict[str, Any]:
    key = {"pk": {"S": keys.user_pk(user)}, "sk": {"S": keys.ACCOUNT}}
    found: dict[str, Any] = tables.client.get_item(TableName=tables.credits, Key=key, ConsistentRead=True)["Item"]  # type: ignore[attr-defined]
    return found


def both_decide_before_either_writes(module: ModuleType) -> None:
    """Container setup: this process's first transaction waits until every container of the race
    (RACE_SIZE, meeting in the folder RACE_FOLDER) has come to its own, so each has read the account
    and decided before either writes: the sweeps cannot but race."""
    folder, size = Path(os.environ["RACE_FOLDER"]), int(os.environ["RACE_SIZE"])
    store = module.ledger.store
    transact = store.transact
    waited: list[bool] = []

    def gated(ops: Any, *, token: str) -> None:
        if not waited:
            waited.append(True)
            (folder / str(os.getpid())).touch()
            wait_until("the other sweep to decide", lambda: len(list(folder.iterdir())) >= size, timeout=60.0)
        transact(ops, token=token)

    store.transact = gated


def run_at_once(function: str, count: int, event: dict[str, Any], *, setup: str | None = None) -> list[dict[str, Any]]:
    """`count` containers of the function, each its own process, invoked at the same moment."""
    with fleet(function, count, setup=setup) as containers:
        barrier = threading.Barrier(count, timeout=120)

        def send(i: int) -> dict[str, Any]:
            barrier.wait()
            return containers.containers[i].invoke(event)

        with ThreadPoolExecutor(count) as pool:
            return list(pool.map(send, range(count)))


def test_two_sweeps_at_the_same_time_write_an_idle_accounts_expiry_once_and_touch_nothing_else(
    local_tables: LocalTables, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = local_tables.ledger()
    expires = int(time.time() * 1000) + 2000
    ledger.grant("idle", 50, type="gift", description="trial", lot=LotTerms(expires_at_ms=expires, label="Trial"))
    ledger.grant("idle", 20, type="gift", description="kept")  # no expiry: stays
    ledger.grant("quiet", 30, type="gift", description="no expiry")  # nothing ever due
    in_a_month = int(time.time() * 1000) + 30 * 86_400_000  # due (its warning) in 23 days, not now
    ledger.grant("planned", 10, type="gift", description="later", lot=LotTerms(expires_at_ms=in_a_month))
    untouched = {user: account(local_tables, user) for user in ("quiet", "planned")}
    assert "lots_due" in account(local_tables, "idle") and "lots_due" in untouched["planned"]

    wait_until("the trial lot to expire", lambda: ledger.account("idle").balance == 20, timeout=60.0)
    assert [t.type for t in ledger.history("idle")] == ["gift", "gift"]  # idle: nothing wrote its expiry

    monkeypatch.setenv("RACE_FOLDER", str(tmp_path))
    monkeypatch.setenv("RACE_SIZE", "2")
    answers = run_at_once("expire", 2, EVENT, setup=f"{__name__}:both_decide_before_either_writes")

    assert [(a["failed"], a["unfinished"], a["shards"]) for a in answers] == [(0, False, 16)] * 2
    assert [a["accounts"] for a in answers] == [1, 1]  # both swept it, having read it before either wrote
    assert sorted(a["expirations"] for a in answers) == [0, 1]  # written once: the loser found it done
    history = ledger.history("idle")
    assert [(t.type, t.amount) for t in history] == [("gift", 50), ("gift", 20), ("expiration", -50)]
    expired = history[-1]
    assert (expired.reference_id, expired.system_reference, expired.draws) == ("expire:1", True, {"1": 50})
    assert expired.description.startswith("Expired: 50 credits of Trial (granted ")
    assert_audited(ledger, "idle", balance=20, available=20, entries=3)
    item = account(local_tables, "idle")
    assert "lots_due" not in item and "lots_shard" not in item  # nothing pending: out of the index
    assert {user: account(local_tables, user) for user in untouched} == untouched  # seq, lots: unchanged

    (again,) = run_at_once("expire", 1, EVENT)
    assert (again["accounts"], again["expirations"]) == (0, 0)
    assert len(ledger.history("idle")) == 3


def test_a_table_kept_from_before_the_index_gets_it_and_the_sweep_finds_its_accounts(
    local_tables: LocalTables,
) -> None:
    """make dev keeps its tables across restarts: one made before LotsDueIndex existed gets it."""
    client: Any = local_tables.client
    old = table_definitions()["CreditsTable"]
    names = {"CreditsTable": f"kept-{uuid.uuid4().hex[:8]}", "IdempotencyTable": local_tables.idempotency}
    without = [i for i in old["GlobalSecondaryIndexes"] if i["IndexName"] != keys.LOTS_DUE_INDEX]
    used = {k["AttributeName"] for k in old["KeySchema"]} | {
        k["AttributeName"] for i in without for k in i["KeySchema"]
    }
    client.create_table(
        TableName=names["CreditsTable"],
        KeySchema=old["KeySchema"],
        AttributeDefinitions=[a for a in old["AttributeDefinitions"] if a["AttributeName"] in used],
        GlobalSecondaryIndexes=without,
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification=old["StreamSpecification"],
    )
    try:
        create_tables(client, names)
        described = client.describe_table(TableName=names["CreditsTable"])["Table"]
        (index,) = [i for i in described["GlobalSecondaryIndexes"] if i["IndexName"] == keys.LOTS_DUE_INDEX]
        assert index["IndexStatus"] == "ACTIVE" and index["Projection"]["ProjectionType"] == "KEYS_ONLY"
        create_tables(client, names)  # again: nothing to add

        ledger = Ledger(client, names["CreditsTable"])
        # inside its warning window: announced with its grant, so the account is next due at the expiry
        soon = int(time.time() * 1000) + 1500
        ledger.grant("kept", 5, type="gift", description="trial", lot=LotTerms(expires_at_ms=soon))
        store = DynamoStore(client, names["CreditsTable"])
        shard = due_shard(keys.user_pk("kept"))
        assert list(due_accounts(store, shard, soon - 1)) == []  # not due before its expiry
        assert list(due_accounts(store, shard, soon)) == [("kept", soon)]  # due from then on
    finally:
        client.delete_table(TableName=names["CreditsTable"])
