"""A user who changes their settings as fast as they can never delays the ledger's own writes.

Settings live on the account item that every ledger write is guarded by. Only a decision that used
the spend limit (a charge, a reserve) is guarded by it; a purchase, a clawback, a capture and a
release are not, so a stream of settings changes from many processes cannot push them back.
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

from credits import keys
from credits.ledger import Ledger
from credits.store import NEW, Put
from local.dynamodb_local import client_for
from tests.integration.conftest import LocalTables

USER = "spammer"
SPAMMERS = 4


def spam(endpoint: str, table: str, stop_at: float, changes: Any) -> None:  # pragma: no cover - a child process
    """Change the limit and the threshold back and forth until `stop_at`, with no rate limit."""
    ledger = Ledger(client_for(endpoint), table, settings_rate=10**9)
    i = 0
    while time.time() < stop_at:
        ledger.update_settings(USER, monthly_spend_limit=1_000 + i % 2, low_balance_threshold=i % 7)
        i += 1
        with changes.get_lock():
            changes.value += 1


def payment_state(local_tables: LocalTables, name: str) -> Put:
    """An item of the caller's own in the same transaction, as a refund's payment record is: such a
    change retries alone instead of queueing (ADR 0004), the path the attack starved."""
    return Put({"pk": f"TEST#{name}", "sk": "STATE", "state": "settled"}, NEW)


def test_settings_changes_from_four_processes_never_delay_a_purchase_clawback_capture_or_release(
    local_tables: LocalTables,
) -> None:
    ledger = local_tables.ledger()
    ledger.grant(USER, 100, type="gift", description="seed")
    to_capture = ledger.reserve(USER, 10, description="a long action")
    to_release = ledger.reserve(USER, 10, description="another", ttl_seconds=600)

    context = multiprocessing.get_context("spawn")
    changes = context.Value("i", 0)
    stop_at = time.time() + 120
    spammers = [
        context.Process(target=spam, args=(local_tables.endpoint, local_tables.credits, stop_at, changes))
        for _ in range(SPAMMERS)
    ]
    for process in spammers:
        process.start()
    try:
        give_up = time.monotonic() + 60
        while changes.value < 50:  # the spam is flowing before the ledger's writes start
            assert time.monotonic() < give_up, "the settings spam never started"
            time.sleep(0.05)
        started = changes.value
        purchase = ledger.grant(
            USER,
            50,
            type="purchase",
            description="Starter",
            reference_id="cs_1",
            extra=[payment_state(local_tables, "p")],
        )
        clawback = ledger.claw_back(
            USER, 50, type="refund", description="Refund", reference_id="re_1", extra=[payment_state(local_tables, "r")]
        )
        captured = ledger.capture(USER, to_capture.hold_id, 4)
        released = ledger.release(USER, to_release.hold_id)
        during = changes.value - started
    finally:
        for process in spammers:
            process.kill()
            process.join()

    assert during > 0  # the settings really changed while the ledger wrote
    assert (purchase.balance, clawback.balance, captured.charged, released.released) == (150, 100, 4, 10)
    assert ledger.balance(USER) == 96
    assert ledger.account(USER).held == 0
    assert [t.type for t in ledger.history(USER)] == ["gift", "purchase", "refund", "usage"]
    audit = ledger.audit(USER)
    assert audit.ok, audit.problems
    assert ledger.store.get_many(keys.user_pk(USER), [keys.ACCOUNT])[keys.ACCOUNT]["monthly_spend_limit"] in (
        1_000,
        1_001,
    )
