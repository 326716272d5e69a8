"""month_close: on the 1st of every month (EventBridge Scheduler), the month just ended's finance report
(credits.finance): from the `FINANCE#<month>` figures the insights function counted, per currency, the
opening and closing outstanding credits and what was sold, granted, used, expired, clawed back and
debited, kept as `REPORT#<month>` in the product's partition (`credits report --month` prints the
same report, and `--verify` checks its figures against the ledger).

An operator re-runs a month by invoking it with {"month": "YYYY-MM"} (a month that has ended); the
item is written again, the same if nothing was counted since. Each currency's figures are counted as
metrics with their own dimension Currency (USD, EUR, ...; NONE: credits granted for nothing) and
logged. Safe to run twice."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.utilities.typing import LambdaContext

from credits import config, finance
from credits.aws import dynamodb_client
from credits.errors import ValidationError
from credits.ledger.lots import NO_CURRENCY
from credits.store import DynamoStore

# Built once per container: configuration (fails here, naming the variable) and the adapter.
store = DynamoStore(dynamodb_client(), config.require("CREDITS_TABLE_NAME"))
clock: Callable[[], float] = time.time  # Unix seconds: which month ended, and the report's created_at

logger = Logger()
metrics = Metrics()

# The figures each row is counted by (a metric per figure, per currency): credits bought in a
# currency, and credits granted for nothing (`none`).
CURRENCY_METRICS = {
    "sold": "CreditsSold",
    "used": "CreditsUsed",
    "expired": "CreditsExpired",
    "clawed_back": "CreditsClawedBack",
}
NO_CURRENCY_METRICS = {
    "granted": "CreditsGranted",
    "used": "CreditsUsed",
    "expired": "CreditsExpired",
    "clawed_back": "CreditsClawedBack",
}


def month_to_close(event: Any, now: float) -> str:
    """The event's `month` (an operator's re-run: YYYY-MM, ended by `now`), else the month before now's (UTC)."""
    this_month = time.strftime("%Y-%m", time.gmtime(now))
    asked = event.get("month") if isinstance(event, dict) else None
    if asked is None:
        return finance.previous_month(this_month)
    try:
        month = finance.month_of(asked if isinstance(asked, str) else "")
    except ValidationError:
        raise ValidationError(f"month must be YYYY-MM (e.g. 2026-11), not {asked!r}.", [{"field": "month"}]) from None
    if month >= this_month:
        raise ValidationError(
            f"month {month} has not ended yet (it is {this_month} in UTC): only a past month is closed.",
            [{"field": "month"}],
        )
    return month


def count(row: finance.Row) -> None:
    """The row's figures as metrics of their own, with the dimension Currency (its code, upper case)."""
    names = NO_CURRENCY_METRICS if row.currency == NO_CURRENCY else CURRENCY_METRICS
    for figure, name in names.items():
        with single_metric(name=name, unit=MetricUnit.Count, value=row.figures[figure]) as metric:
            metric.add_dimension(name="Currency", value=row.currency.upper())


@logger.inject_lambda_context
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    now = clock()
    month = month_to_close(event, now)
    rows = finance.close_month(store, month, now)
    for row in rows:
        count(row)
    bodies = [row.body() for row in rows]
    logger.info("month closed", extra={"month": month, "rows": bodies})
    return {"month": month, "rows": bodies}
