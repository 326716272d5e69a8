"""expire: once a day (EventBridge Scheduler), what idle accounts owe their credit lots (credits.expiry):
every account of the sparse index LotsDueIndex whose time has come is swept (`Ledger.sweep`): the
expiration entries of its lots that expired, and the announcements of those about to (their
Credits Expired and Credits Expiring Soon events follow from the table's stream).

Counted (ExpirySweptAccounts, ExpirationsWritten) and logged. One account failing never stops the
others; any failure, or a run that had to stop before its timeout with accounts left, fails the
invocation once the rest is done, so it is retried (what was swept is out of the index) and alarmed.
Safe to run twice, at the same time too."""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from credits import config
from credits.aws import dynamodb_client
from credits.expiry import Failure, sweep_due
from credits.store import DynamoStore

# Built once per container: configuration (fails here, naming the variable) and the adapters.
_client = dynamodb_client()
_table = config.require("CREDITS_TABLE_NAME")
ledger = config.ledger(_client, _table)
store = DynamoStore(_client, _table)  # the lots-due index's Queries
# An account's sweep may wait up to the ledger's time budget (12 s) on a busy balance: no account
# is started this close to the timeout, so the run ends with its counts and its error, never killed.
STOP_BEFORE_SECONDS = 30.0

logger = Logger()
metrics = Metrics()


class SweepIncomplete(RuntimeError):
    """Accounts were left unswept (failures, or the timeout came first): the invocation fails."""


def _failed(failure: Failure) -> None:
    what = "an account's sweep failed" if failure.user_id is not None else "a shard's Query failed"
    logger.error(what, extra={"shard": failure.shard, "user_id": failure.user_id, "error": failure.error})


def _swept(user_id: str, expired: int) -> None:
    logger.debug("account swept", extra={"user_id": user_id, "expirations": expired})


@logger.inject_lambda_context
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    stop_at = time.monotonic() + context.get_remaining_time_in_millis() / 1000 - STOP_BEFORE_SECONDS
    report = sweep_due(
        store,
        ledger,
        int(time.time() * 1000),
        go_on=lambda: time.monotonic() < stop_at,
        on_failure=_failed,
        on_swept=_swept,
    )
    metrics.add_metric(name="ExpirySweptAccounts", unit=MetricUnit.Count, value=report.accounts)
    metrics.add_metric(name="ExpirationsWritten", unit=MetricUnit.Count, value=report.expirations)
    metrics.add_metric(name="ExpirySweepFailed", unit=MetricUnit.Count, value=len(report.failures))
    logger.info("expiry sweep", extra=report.body())
    if not report.ok:
        left = " and stopped before its timeout with accounts left" if report.unfinished else ""
        raise SweepIncomplete(
            f"{len(report.failures)} accounts or shards failed{left} "
            f"({report.accounts} accounts swept, {report.expirations} expirations written): retried"
        )
    return report.body()
