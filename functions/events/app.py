"""events: the credits table's stream to EventBridge (docs/design.md section 10).

Invoked by the stream's event source mapping with only new ledger entries, first spend-limit
refusals, credit lots' expiry notes and auto top-ups' ends (the MODIFY of a `TOPUP#` item;
template.yaml filters the rest out). Every entry announces an event, every expiry note Credits
Expiring Soon, once per lot, and every top-up's end Auto Top-Up Succeeded or Failed; usage entries'
Credits Used can be switched off (PUBLISH_USAGE_EVENTS=false, the PublishUsageEvents parameter), but
usage entries are still delivered: they are what crosses a low-balance threshold. Each record is one
of (credits.events.record_events):

- publishable: its events are put on the bus. If they could not all be put (a throttle, a partial
  PutEvents failure, a network error: transient), the record is reported as a batch item failure
  and retried, so nothing is lost, and a retried record produces the same eventIds.
- carrying no event by design (a REMOVE, another item or change): done, counted as ignored.
- unpublishable (malformed: it would fail the same way on every delivery): sent to the events
  dead-letter queue with its reason, logged, counted, and done, so the shard's later records are
  not held behind it. If the dead letter cannot be sent, the record is reported failed and retried:
  never dropped. Without a queue (EVENTS_DEAD_LETTER_QUEUE_URL unset: make dev and the tests, never
  the stack) it is reported failed too, and handed back in the answer's `deadLetters`, an extension
  Lambda ignores that the local event source mapping (local/streams.py) keeps as its dead-letter queue.
"""

from __future__ import annotations

import time
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.config import Config

from credits import config
from credits.events import (
    DeadLetterQueue,
    Publisher,
    Unpublishable,
    dead_letter_message,
    record_events,
    sequence_number,
)

CLIENT_CONFIG = Config(connect_timeout=2, read_timeout=5, retries={"mode": "standard"})
DEFAULT_THRESHOLD = config.low_balance_threshold()
PUBLISH_USAGE = config.publish_usage_events()  # False: usage entries announce no Credits Used
publisher = Publisher(boto3.client("events", config=CLIENT_CONFIG), config.require("EVENT_BUS_NAME"))
_QUEUE_URL = config.optional("EVENTS_DEAD_LETTER_QUEUE_URL")
dead_letters = DeadLetterQueue(boto3.client("sqs", config=CLIENT_CONFIG), _QUEUE_URL) if _QUEUE_URL else None

logger = Logger()
metrics = Metrics()


class _Batch:
    """One invocation's answer: the records to retry, and the dead letters handed back (no queue)."""

    def __init__(self) -> None:
        self.failures: list[dict[str, str]] = []
        self.handed_back: list[dict[str, Any]] = []
        self.unidentified = 0  # failed records without a sequence number: only a whole-batch retry covers them

    def fail(self, record: Any) -> None:
        sequence = sequence_number(record)
        if sequence is None:
            self.unidentified += 1
        else:
            self.failures.append({"itemIdentifier": sequence})

    def answer(self) -> dict[str, Any]:
        if self.unidentified:
            raise RuntimeError(
                f"{self.unidentified} records without a sequence number were not dead-lettered: the batch is retried"
            )
        answer: dict[str, Any] = {"batchItemFailures": self.failures}
        if self.handed_back:
            answer["deadLetters"] = self.handed_back
        return answer


def handle(record: Any, batch: _Batch, context: LambdaContext) -> bool:
    """Publish one record's events; True when it must be retried (a transient failure)."""
    try:
        events = record_events(record, DEFAULT_THRESHOLD, publish_usage=PUBLISH_USAGE)
    except Exception as exc:  # noqa: BLE001 - reading a record is deterministic: any error is permanent
        reason = str(exc) if isinstance(exc, Unpublishable) else f"unexpected {type(exc).__name__}: {exc}"
        return dead_letter(record, reason, batch, context)
    if events is None:
        metrics.add_metric(name="StreamRecordsIgnored", unit=MetricUnit.Count, value=1)
        return False
    if not events:
        return False
    try:
        publisher.publish(events)
    except Exception:
        metrics.add_metric(name="EventsFailed", unit=MetricUnit.Count, value=len(events))
        logger.exception(
            "events not published; the record is retried",
            extra={"kinds": [e.detail_type for e in events], "sequenceNumber": sequence_number(record)},
        )
        batch.fail(record)
        return True
    metrics.add_metric(name="EventsPublished", unit=MetricUnit.Count, value=len(events))
    return False


def dead_letter(record: Any, reason: str, batch: _Batch, context: LambdaContext) -> bool:
    """Send a record that can never be published to the dead-letter queue; if that fails, fail it
    (True: it is retried)."""
    message = dead_letter_message(record, reason, function=context.function_name, now=time.time())
    where = {k: message[k] for k in ("reason", "sequenceNumber", "eventID", "eventSourceARN")}
    if dead_letters is None:
        logger.error("a record that can never be published; no dead-letter queue: reported failed", extra=where)
        batch.fail(record)
        if message["sequenceNumber"] is not None:
            batch.handed_back.append({"itemIdentifier": message["sequenceNumber"], "message": message})
        return False
    try:
        dead_letters.send(message)
    except Exception:
        metrics.add_metric(name="EventsDeadLetterFailed", unit=MetricUnit.Count, value=1)
        logger.exception("a record that can never be published could not be dead-lettered; it is retried", extra=where)
        batch.fail(record)
        return True
    metrics.add_metric(name="EventsDeadLettered", unit=MetricUnit.Count, value=1)
    logger.error("a record that can never be published was dead-lettered", extra=where)
    return False


@logger.inject_lambda_context
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> Any:
    records = event.get("Records") if isinstance(event, dict) else None
    if not isinstance(records, list):
        raise ValueError("not a DynamoDB stream event (no Records list)")
    batch = _Batch()
    for index, record in enumerate(records):
        if handle(record, batch, context):
            # The shard is retried from this record on (Lambda checkpoints below the first failure):
            # the later ones are not published now, so each is published in ledger order, once per
            # delivery, never ahead of an earlier entry that is still failing.
            for later in records[index + 1 :]:
                batch.fail(later)
            break
    return batch.answer()
