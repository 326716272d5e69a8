"""reconcile: once a day (EventBridge schedule), what `credits reconcile` checks: the paid purchases,
refunds and disputes of the last RECONCILE_WINDOW (3d) that the ledger does not show, because their
webhook never arrived. Each is logged as an error and counted (metric PaymentsMissing, alarmed);
with RECONCILE_APPLY=true (template parameter ReconcileApply) they are also applied, through the
webhook's own exactly-once path (credits.reconcile)."""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from credits import config
from credits.aws import dynamodb_client
from credits.errors import CreditsError
from credits.packages import Catalog
from credits.payments import Payments
from credits.reconcile import SETTLED, apply, find_missing, window
from credits.stripe_gateway import StripeGateway

# Built once per container: configuration (fails here, naming the variable) and the adapters.
_client = dynamodb_client()
_table = config.require("CREDITS_TABLE_NAME")
WINDOW_SECONDS = window(config.optional("RECONCILE_WINDOW") or "3d")
APPLY = config.optional("RECONCILE_APPLY") == "true"
stripe = StripeGateway.connect(config.secret("STRIPE_SECRET_KEY"), config.optional("STRIPE_API_BASE"))
payments = Payments(
    config.ledger(_client, _table),
    Catalog(_client, _table),
    _client,
    _table,
)

logger = Logger()
metrics = Metrics()


@logger.inject_lambda_context
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    since = int(time.time()) - WINDOW_SECONDS
    missing = find_missing(payments, stripe, since)
    metrics.add_metric(name="PaymentsMissing", unit=MetricUnit.Count, value=len(missing))
    for item in missing:
        logger.error(
            "payment effect missing from the ledger",
            extra={"kind": item.kind, "stripe_id": item.stripe_id, "user_id": item.user_id, "detail": item.detail},
        )
    applied = 0
    if APPLY:
        for item, outcome in apply(payments, missing):
            if isinstance(outcome, CreditsError):  # logged and counted as not applied; the rest go on
                logger.error(
                    "reconcile failed", extra={"kind": item.kind, "stripe_id": item.stripe_id, "error": str(outcome)}
                )
                continue
            settled = outcome.kind in SETTLED
            applied += settled
            log = logger.info if settled else logger.error
            log("reconciled", extra={"kind": item.kind, "stripe_id": item.stripe_id, **outcome.body()})
        metrics.add_metric(name="PaymentsRecovered", unit=MetricUnit.Count, value=applied)
    return {"missing": len(missing), "applied": applied, "since": since}
