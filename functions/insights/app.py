"""insights: the credits table's stream to each user's daily usage totals and the product's monthly
finance figures per currency (credits.insights, credits.finance).

Invoked by the stream's event source mapping with only new ledger entries and repayment notes
(template.yaml filters the rest out). Each record adds its entry to its user's day and its month
once (a marker per entry in the same transaction: a redelivered or retried record adds nothing).
Powertools' batch processor reports the records that failed (a throttle, the network) as batch item
failures, so only they are retried; a record that keeps failing goes to the insights dead-letter
queue (alarmed) and the shard goes on. The ledger stays the source of truth: totals can be recounted
from it (`credits report --verify`).
"""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from credits import config, insights
from credits.aws import dynamodb_client
from credits.store import DynamoStore
from credits.store.interface import plain

store = DynamoStore(dynamodb_client(), config.require("CREDITS_TABLE_NAME"))
processor = BatchProcessor(event_type=EventType.DynamoDBStreams)
logger = Logger()
metrics = Metrics()


def count_record(record: DynamoDBRecord) -> None:
    """One stream record: a ledger entry added to its user's day and the product's month, or a debt's
    repayment to the month (nothing for a redelivery, or for another item: the filter lets none in)."""
    image = record.dynamodb.new_image if record.dynamodb is not None else None
    if image and insights.count_item(store, plain(dict(image)), time.time()):
        metrics.add_metric(name="InsightsCounted", unit=MetricUnit.Count, value=1)


@metrics.log_metrics
@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return dict(
        process_partial_response(event=event, record_handler=count_record, processor=processor, context=context)
    )
