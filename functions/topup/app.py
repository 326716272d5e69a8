"""topup: the credits table's stream to auto top-up payments (credits.topups).

Invoked by the stream's event source mapping with only new `TOPUP#` items (template.yaml filters the
rest out): a decision spent a user's credits below their auto top-up threshold. Each record charges
the user's saved card once (Stripe's idempotency key is the top-up's own: a redelivery or a retry
after a crash gets the first answer). Powertools' batch processor reports the records that failed
(a throttle, the network) as batch item failures, so only they are retried; one that keeps failing
goes to the top-up dead-letter queue (alarmed), and its top-up stays pending (no other starts for
that user) until someone looks: `credits user` shows it.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from credits import config, keys
from credits.aws import dynamodb_client
from credits.packages import Catalog
from credits.payments import Payments
from credits.store.interface import plain
from credits.stripe_gateway import StripeGateway
from credits.topups import TopUps

_client, _table = dynamodb_client(), config.require("CREDITS_TABLE_NAME")
ledger = config.ledger(_client, _table)
gateway = StripeGateway.connect(config.secret("STRIPE_SECRET_KEY"), config.optional("STRIPE_API_BASE"))
top_ups = TopUps(Payments(ledger, Catalog(_client, _table), _client, _table), gateway)
processor = BatchProcessor(event_type=EventType.DynamoDBStreams)
logger = Logger()
metrics = Metrics()

METRICS = {"granted": "AutoTopUpSucceeded", "failed": "AutoTopUpFailed", "mismatch": "PaymentMismatch"}
# Stripe unreachable, busy or failing (PaymentProviderError, retriable), or the table: the record
# fails and is retried under the same Stripe idempotency key (Powertools' batch processor reports it).


def pay(record: DynamoDBRecord) -> None:
    image = record.dynamodb.new_image if record.dynamodb is not None else None
    if not image:
        return
    item = plain(dict(image))
    user_id = str(item["pk"])[len(keys.USER) :]
    outcome = top_ups.start(user_id, item)
    log = logger.error if outcome.kind == "mismatch" else logger.info
    log("auto top-up", extra={"topup_id": item.get("topup_id"), **outcome.body()})
    if outcome.kind in METRICS:
        metrics.add_metric(name=METRICS[outcome.kind], unit=MetricUnit.Count, value=1)


@metrics.log_metrics
@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return dict(process_partial_response(event=event, record_handler=pay, processor=processor, context=context))
