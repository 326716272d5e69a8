"""events: the credits table's stream to EventBridge (DESIGN.md section 11).

Invoked by the stream's event source mapping with only new ledger entries and first spend-limit
refusals (template.yaml filters the rest out). Each record's events are put on the bus; a record
whose events could not all be put is reported as a batch item failure and retried, so nothing is
lost, and a retried record produces the same eventIds.
"""

from __future__ import annotations

from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.config import Config

from credits import config
from credits.events import Publisher, events_of

DEFAULT_THRESHOLD = config.low_balance_threshold()
publisher = Publisher(
    boto3.client("events", config=Config(connect_timeout=2, read_timeout=5, retries={"mode": "standard"})),
    config.require("EVENT_BUS_NAME"),
)

logger = Logger()
metrics = Metrics()
processor = BatchProcessor(event_type=EventType.DynamoDBStreams)


def record_handler(record: DynamoDBRecord) -> None:
    stream = record.raw_event["dynamodb"]
    events = events_of(stream["Keys"], stream.get("NewImage") or {}, DEFAULT_THRESHOLD)
    if not events:
        return
    try:
        publisher.publish(events)
    except Exception:
        metrics.add_metric(name="EventsFailed", unit=MetricUnit.Count, value=len(events))
        logger.exception(
            "events not published; the record is retried", extra={"kinds": [e.detail_type for e in events]}
        )
        raise
    metrics.add_metric(name="EventsPublished", unit=MetricUnit.Count, value=len(events))


@logger.inject_lambda_context
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> Any:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
