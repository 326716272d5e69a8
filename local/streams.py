"""A local stand-in for Lambda's DynamoDB stream event source mapping (for `make dev` and the tests).

It reads a table's stream on DynamoDB Local and invokes a function with what Lambda would send it:

- Records in the Lambda event's shape (`{"Records": [{"eventID", "eventName", "eventVersion",
  "eventSource", "awsRegion", "dynamodb": {...}, "eventSourceARN"}]}`, `ApproximateCreationDateTime`
  in epoch seconds, binary attributes base64), in stream order within each shard, a shard's parent
  before the shard, at most `batch_size` records per invocation.
- The event source's `FilterCriteria` (template.yaml): a record that matches no pattern is never
  delivered, and is passed over as delivered.
- Failures as Lambda handles them: with `ReportBatchItemFailures`, a response listing
  `batchItemFailures` checkpoints just before the lowest failed sequence number and redelivers from
  there; an exception (a raising handler, a dead container) or a malformed failure list redelivers
  the whole batch (BisectBatchOnFunctionError, which splits it on AWS, is not imitated). Retries
  wait 1 s, doubling up to 30 s, and go on until they succeed: locally nothing is dropped (AWS
  gives up after the mapping's MaximumRetryAttempts).
- The dead-letter queue: on AWS the events function sends a record that can never be published
  (malformed) to its queue itself, and reports it done. Locally it has no queue, so it reports the
  record failed (never dropped) and hands it back in its answer's `deadLetters`
  (`[{"itemIdentifier": <sequence number>, "message": {"reason", "record", ...}}]`, an extension
  Lambda ignores). The poller keeps those messages as the queue would (`dead_letters`, and one JSON
  line each in `dead_letter_path`: for `make dev`, `events-dead-letters.jsonl` next to the
  checkpoints in its data folder), logs them, and goes past their records: a malformed record does
  not hold back its shard. A record handed back after one that failed for real is delivered again
  with it, and kept when the poller goes past it.
- Checkpoints (the last sequence number done, per shard) are kept in a JSON file when one is given,
  so a restart resumes where it stopped; a shard without one starts at TRIM_HORIZON or LATEST.

`deliver(event) -> response` is the function: in `make dev`, a `local.containers.ContainerPool` of the
events function (`pool.invoke`), so it runs in its own process exactly as on Lambda. `start()` polls
in a background thread; `drain()` polls in the caller until the stream is quiet (tests).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from local.serving import write_json
from local.template import stream_source

Json = dict[str, Any]
Deliver = Callable[[Json], Any]

POLL_INTERVAL = 0.5  # seconds between polls of the background thread
FIRST_BACKOFF, MAX_BACKOFF = 1.0, 30.0  # seconds before a failed batch is delivered again
STREAM_REFRESH = 5.0  # seconds between DescribeTable calls (the table's stream may change)
GET_RECORDS_LIMIT = 1000
logger = logging.getLogger(__name__)


# ---- filter patterns (the part of EventBridge's pattern syntax Lambda filters accept that we use) -----


class UnsupportedPattern(ValueError):
    """A filter pattern uses syntax this stand-in does not implement (so it would filter wrongly)."""


_OPERATORS = {"prefix", "suffix", "equals-ignore-case", "exists"}
_ABSENT = object()


def check_pattern(pattern: Any, path: str = "") -> None:
    """Raise UnsupportedPattern unless `pattern` uses only: nested objects, lists of exact values,
    and `{"prefix"}`, `{"suffix"}`, `{"equals-ignore-case"}` (strings) or `{"exists"}` (a boolean)."""
    if not isinstance(pattern, dict) or not pattern:
        raise UnsupportedPattern(f"{path or 'the pattern'}: an object of fields is expected")
    for key, value in pattern.items():
        where = f"{path}.{key}" if path else key
        if isinstance(value, dict):
            check_pattern(value, where)
        elif isinstance(value, list) and value:
            for matcher in value:
                if isinstance(matcher, list):
                    raise UnsupportedPattern(f"{where}: a list inside a list")
                if isinstance(matcher, dict) and not _supported_operator(matcher):
                    raise UnsupportedPattern(f"{where}: {json.dumps(matcher)} is not supported locally")
        else:
            raise UnsupportedPattern(f"{where}: a field's pattern must be an object or a non-empty list")


def _supported_operator(matcher: Mapping[str, Any]) -> bool:
    if len(matcher) != 1:
        return False
    ((operator, operand),) = matcher.items()
    if operator == "exists":
        return isinstance(operand, bool)
    return operator in _OPERATORS and isinstance(operand, str)


def matches(pattern: Mapping[str, Any], record: Any) -> bool:
    """Whether a record (a JSON value) matches an EventBridge-style pattern: every field of the
    pattern matches; a list matches when one of its values does (an array in the record when one
    of its elements does); an object is matched field by field, inside the record's object."""
    return _matches_object(pattern, record)


def _matches_object(pattern: Mapping[str, Any], value: Any) -> bool:
    fields = value if isinstance(value, dict) else {}
    return all(_matches_field(expected, fields.get(key, _ABSENT)) for key, expected in pattern.items())


def _matches_field(expected: Any, value: Any) -> bool:
    if isinstance(expected, dict):
        if value is _ABSENT or isinstance(value, dict):
            return _matches_object(expected, value if value is not _ABSENT else {})
        return False
    if value is _ABSENT:
        return any(m == {"exists": False} for m in expected)
    values = value if isinstance(value, list) else [value]
    return any(_matches_value(m, v) for m in expected for v in values)


def _matches_value(matcher: Any, value: Any) -> bool:
    if isinstance(matcher, dict):
        ((operator, operand),) = matcher.items()
        if operator == "exists":
            return bool(operand)
        if not isinstance(value, str):
            return False
        if operator == "prefix":
            return value.startswith(operand)
        if operator == "suffix":
            return value.endswith(operand)
        return value.casefold() == operand.casefold()  # equals-ignore-case
    if isinstance(matcher, bool) or isinstance(value, bool) or matcher is None or value is None:
        return matcher is value  # true, false and null equal only themselves (true is not 1)
    if isinstance(matcher, int | float) and isinstance(value, int | float):
        return float(matcher) == float(value)  # numbers compare as numbers: 300 matches 300.0
    return type(matcher) is type(value) and bool(matcher == value)


def keep(patterns: Iterable[Mapping[str, Any]], record: Any) -> bool:
    """Lambda's FilterCriteria: a record is delivered if it matches any pattern (all, without any)."""
    patterns = list(patterns)
    return not patterns or any(matches(p, record) for p in patterns)


# ---- records in the Lambda event's shape --------------------------------------------------------------


def lambda_record(record: Mapping[str, Any], stream_arn: str, region: str) -> Json:
    """A GetRecords record (as boto3 parses it) as the Lambda event carries it."""
    stream = dict(record["dynamodb"])
    created = stream.get("ApproximateCreationDateTime")
    if isinstance(created, datetime):
        stream["ApproximateCreationDateTime"] = created.timestamp()
    for image in ("Keys", "NewImage", "OldImage"):
        if image in stream:
            stream[image] = {name: _attribute(value) for name, value in stream[image].items()}
    out: Json = {
        "eventID": record["eventID"],
        "eventName": record["eventName"],
        "eventVersion": record.get("eventVersion", "1.1"),
        "eventSource": record.get("eventSource", "aws:dynamodb"),
        "awsRegion": region,
        "dynamodb": stream,
        "eventSourceARN": stream_arn,
    }
    if "userIdentity" in record:  # TTL deletions
        out["userIdentity"] = dict(record["userIdentity"])
    return out


def _attribute(value: Mapping[str, Any]) -> Json:
    """A DynamoDB JSON attribute value with binary as base64 text, as in a Lambda event."""
    if not value:  # DynamoDB Local writes an empty map as {} in stream records; AWS writes {"M": {}}
        return {"M": {}}
    ((kind, data),) = value.items()
    if kind == "B":
        return {"B": base64.b64encode(data).decode()}
    if kind == "BS":
        return {"BS": [base64.b64encode(b).decode() for b in data]}
    if kind == "M":
        return {"M": {k: _attribute(v) for k, v in data.items()}}
    if kind == "L":
        return {"L": [_attribute(v) for v in data]}
    return {kind: data}


def _sequence(record: Mapping[str, Any]) -> str:
    sequence: str = record["dynamodb"]["SequenceNumber"]
    return sequence


class InvalidBatchResponse(ValueError):
    """A function's `batchItemFailures` that Lambda treats as the failure of the whole batch."""


def lowest_failure(response: Any, batch: list[Json], dead: Iterable[str] = ()) -> str | None:
    """The lowest sequence number a function's answer reports as failed, None when it reports none
    (Lambda's rules: no answer, `{}`, or an empty or null list is success). InvalidBatchResponse when
    an itemIdentifier is missing, empty or not in the batch: Lambda then retries the whole batch.
    Records in `dead` (handed back as dead letters, `handed_back`) do not count as failed."""
    failures = response.get("batchItemFailures") if isinstance(response, dict) else None
    if not failures:
        return None
    in_batch = {_sequence(r) for r in batch}
    identifiers = [f.get("itemIdentifier") if isinstance(f, dict) else None for f in failures]
    if not all(isinstance(i, str) and i in in_batch for i in identifiers):
        raise InvalidBatchResponse(f"batchItemFailures names records that are not in the batch: {identifiers}")
    failed = [str(i) for i in identifiers if i not in set(dead)]
    return min(failed, key=int) if failed else None


def handed_back(response: Any, batch: list[Json]) -> dict[str, Json]:
    """The dead letters a function's answer hands back (`deadLetters`, see above), by the sequence
    number of their record; an entry that names no record of the batch or has no message is ignored
    (its record then counts as the answer says)."""
    entries = response.get("deadLetters") if isinstance(response, dict) else None
    in_batch = {_sequence(r) for r in batch}
    found: dict[str, Json] = {}
    for entry in entries if isinstance(entries, list) else []:
        identifier = entry.get("itemIdentifier") if isinstance(entry, dict) else None
        if isinstance(identifier, str) and identifier in in_batch and isinstance(entry.get("message"), dict):
            found[identifier] = entry["message"]
        else:
            logger.warning("ignoring a deadLetters entry that names no record of the batch: %.200r", entry)
    return found


def _local_client(service: str, endpoint: str, region: str) -> Any:
    return boto3.client(
        service,  # type: ignore[call-overload]
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id="local",
        aws_secret_access_key="local",  # noqa: S106 - DynamoDB Local accepts any credentials
    )


# ---- the poller -------------------------------------------------------------------------------------


@dataclass
class _Shard:
    id: str
    parent: str | None
    checkpoint: str | None = None  # the sequence number of the last record done
    closed: bool = False  # the shard ended (no next iterator) and everything read from it is done
    iterator: str | None = None
    ended: bool = False  # no next iterator: nothing more will be read
    buffer: list[Json] = field(default_factory=list)  # read, not yet done, in stream order
    backoff: float = 0.0
    retry_at: float = 0.0
    last_error: str = ""


@dataclass
class _Progress:
    read: int = 0
    delivered: int = 0
    pending: int = 0  # records read and not yet done (a batch waiting for its retry)


class StreamPoller:
    """Lambda's DynamoDB stream event source mapping for one table and one function."""

    def __init__(
        self,
        *,
        endpoint: str,
        table_name: str,
        deliver: Deliver,
        batch_size: int = 100,
        patterns: Iterable[Mapping[str, Any]] = (),
        starting_position: str = "TRIM_HORIZON",
        report_batch_item_failures: bool = True,
        checkpoint_path: Path | None = None,
        dead_letter_path: Path | None = None,
        region: str | None = None,
        poll_interval: float = POLL_INTERVAL,
        dynamodb: Any = None,
        streams: Any = None,
    ) -> None:
        if starting_position not in ("TRIM_HORIZON", "LATEST"):
            raise ValueError(f"starting_position must be TRIM_HORIZON or LATEST, not {starting_position!r}")
        self.table_name = table_name
        self.deliver = deliver
        self.batch_size = batch_size
        self.patterns = [dict(p) for p in patterns]
        for pattern in self.patterns:
            check_pattern(pattern)
        self.starting_position = starting_position
        self.report_batch_item_failures = report_batch_item_failures
        self.checkpoint_path = checkpoint_path
        self.dead_letter_path = dead_letter_path
        self.dead_letters: list[Json] = []  # the messages of the records handed back, in the order kept
        self.region = region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        self.poll_interval = poll_interval
        # boto3 clients for DynamoDB Local (`dynamodb`, `dynamodbstreams`) unless given (tests give fakes).
        self._dynamodb: Any = dynamodb or _local_client("dynamodb", endpoint, self.region)
        self._streams: Any = streams or _local_client("dynamodbstreams", endpoint, self.region)
        self._stream_arn: str | None = None
        self._stream_checked = -STREAM_REFRESH
        self._shards: dict[str, _Shard] = {}
        self._first_shards: set[str] | None = None  # shards open when the stream was first seen
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_function(
        cls, function: str, *, endpoint: str, table_name: str, deliver: Deliver, **options: Any
    ) -> StreamPoller:
        """A poller configured as template.yaml's DynamoDB event of `function` (batch size, filter,
        starting position, ReportBatchItemFailures); `options` override or add settings. With a
        `checkpoint_path`, the dead letters are kept next to it (`<function>-dead-letters.jsonl`)
        unless `dead_letter_path` says where."""
        source = stream_source(function)
        settings: dict[str, Any] = {
            "batch_size": source.batch_size,
            "patterns": source.patterns,
            "starting_position": source.starting_position,
            "report_batch_item_failures": source.report_batch_item_failures,
            **options,
        }
        checkpoints = settings.get("checkpoint_path")
        if "dead_letter_path" not in settings and checkpoints is not None:
            settings["dead_letter_path"] = Path(checkpoints).with_name(f"{function}-dead-letters.jsonl")
        return cls(endpoint=endpoint, table_name=table_name, deliver=deliver, **settings)

    # ---- running ------------------------------------------------------------------------------

    def start(self) -> StreamPoller:
        """Poll in a background thread about every `poll_interval` seconds until stop()."""
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name=f"stream-{self.table_name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the background thread (after the invocation it may be waiting for)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stopping.is_set():
            pause = self.poll_interval
            try:
                self.poll()
            except (BotoCoreError, ClientError) as exc:
                logger.warning("%s stream: %s; polling again", self.table_name, exc)
            except Exception:  # a bug of ours must not stop the stream for the rest of the session
                logger.exception("%s stream: polling failed; trying again in %.0f s", self.table_name, MAX_BACKOFF)
                pause = MAX_BACKOFF
            self._stopping.wait(pause)

    def drain(self, timeout: float = 30.0, quiet: float = 0.5) -> int:
        """Poll until the stream has been quiet for `quiet` seconds: no record read and none waiting
        for a retry. Everything written before the call has then been delivered. Returns how many
        records were delivered; TimeoutError (with the last failure) if not quiet within `timeout`."""
        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        delivered = 0
        while True:
            progress = self.poll()
            delivered += progress.delivered
            now = time.monotonic()
            if progress.read or progress.delivered or progress.pending:
                quiet_since = now
            elif now - quiet_since >= quiet:
                return delivered
            if now > deadline:
                errors = "; ".join(s.last_error for s in self._shards.values() if s.last_error)
                raise TimeoutError(
                    f"{self.table_name} stream not drained in {timeout} s: {progress.pending} records "
                    f"pending{': ' + errors if errors else ''}"
                )
            time.sleep(0.05)

    def poll(self) -> _Progress:
        """One round: find the stream and its shards, read each ready shard, deliver what is due."""
        with self._lock:
            progress = _Progress()
            stream_arn = self._current_stream()
            if stream_arn is None:
                return progress
            ready = self._refresh_shards(stream_arn)
            for shard in self._shards.values():
                if shard.id in ready:
                    self._poll_shard(stream_arn, shard, progress)
                progress.pending += len(shard.buffer)
            return progress

    # ---- the stream and its shards ------------------------------------------------------------

    def _current_stream(self) -> str | None:
        now = time.monotonic()
        if self._stream_arn is not None and now - self._stream_checked < STREAM_REFRESH:
            return self._stream_arn
        self._stream_checked = now
        try:
            table = self._dynamodb.describe_table(TableName=self.table_name)["Table"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                raise
            table = {}
        arn = table.get("LatestStreamArn") if (table.get("StreamSpecification") or {}).get("StreamEnabled") else None
        if arn != self._stream_arn:
            self._stream_arn = arn
            self._shards, self._first_shards = {}, None
            if arn is not None:
                self._load_checkpoints(arn)
        return arn

    def _refresh_shards(self, stream_arn: str) -> set[str]:
        """Learn new shards; returns the ids of those ready to read: each with no parent, a parent
        that is gone from the stream (trimmed), or a parent that is done."""
        described: dict[str, str | None] = {}
        start: str | None = None
        while True:
            args: Json = {"StreamArn": stream_arn, **({"ExclusiveStartShardId": start} if start else {})}
            description = self._streams.describe_stream(**args)["StreamDescription"]
            for shard in description.get("Shards", []):
                described[shard["ShardId"]] = shard.get("ParentShardId")
            start = description.get("LastEvaluatedShardId")
            if not start:
                break
        if self._first_shards is None:
            self._first_shards = set(described)
        for shard_id, parent in described.items():
            if shard_id not in self._shards:
                self._shards[shard_id] = _Shard(shard_id, parent)
        for shard_id in [s for s in self._shards if s not in described]:  # trimmed away
            del self._shards[shard_id]
        return {
            s.id
            for s in self._shards.values()
            if not s.closed and (s.parent is None or s.parent not in self._shards or self._shards[s.parent].closed)
        }

    def _iterator(self, stream_arn: str, shard: _Shard) -> str:
        args: Json = {"StreamArn": stream_arn, "ShardId": shard.id}
        if shard.checkpoint is not None:
            try:
                response = self._streams.get_shard_iterator(
                    **args, ShardIteratorType="AFTER_SEQUENCE_NUMBER", SequenceNumber=shard.checkpoint
                )
                return str(response["ShardIterator"])
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "TrimmedDataAccessException":
                    raise
                logger.warning("%s: records after %s were trimmed; reading from the oldest", shard.id, shard.checkpoint)
        latest = self.starting_position == "LATEST" and shard.id in (self._first_shards or set())
        kind = "LATEST" if latest and shard.checkpoint is None else "TRIM_HORIZON"
        return str(self._streams.get_shard_iterator(**args, ShardIteratorType=kind)["ShardIterator"])

    def _poll_shard(self, stream_arn: str, shard: _Shard, progress: _Progress) -> None:
        if time.monotonic() < shard.retry_at:
            return
        if not shard.buffer and not shard.ended:
            if shard.iterator is None:
                shard.iterator = self._iterator(stream_arn, shard)
            try:
                response = self._streams.get_records(ShardIterator=shard.iterator, Limit=GET_RECORDS_LIMIT)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ExpiredIteratorException":
                    raise
                shard.iterator = None  # a fresh one from the checkpoint next round
                return
            shard.buffer = [lambda_record(r, stream_arn, self.region) for r in response.get("Records", [])]
            progress.read += len(shard.buffer)
            shard.iterator = response.get("NextShardIterator")
            shard.ended = shard.iterator is None
        while shard.buffer and self._deliver_next(shard, progress):
            pass
        if shard.ended and not shard.buffer and not shard.closed:
            shard.closed = True
            self._save_checkpoints()

    # ---- delivering ---------------------------------------------------------------------------

    def _deliver_next(self, shard: _Shard, progress: _Progress) -> bool:
        """Deliver the next batch of the shard's buffer; False when it failed (a retry is due)."""
        batch: list[Json] = []
        covered = len(shard.buffer)  # records the batch accounts for, the filtered-out ones included
        for index, record in enumerate(shard.buffer):
            if keep(self.patterns, record):
                batch.append(record)
                if len(batch) == self.batch_size:
                    covered = index + 1
                    break
        if not batch:
            self._done(shard, covered)
            return True
        try:
            response = self.deliver({"Records": batch})
            dead = handed_back(response, batch)
            lowest = lowest_failure(response, batch, dead) if self.report_batch_item_failures else None
        except Exception as exc:  # noqa: BLE001 - any failure of the function: the whole batch is retried
            self._retry(shard, len(batch), f"{type(exc).__name__}: {exc}")
            return False
        # kept before the checkpoint moves past their records (a failure to keep them: read again)
        self._keep_dead_letters([m for s, m in dead.items() if lowest is None or int(s) < int(lowest)])
        if lowest is None:
            self._done(shard, covered)
            shard.backoff, shard.last_error = 0.0, ""
            progress.delivered += len(batch)
            return True
        before = next(i for i, r in enumerate(shard.buffer) if _sequence(r) == lowest)
        if before:
            self._done(shard, before)
            progress.delivered += sum(1 for r in batch if int(_sequence(r)) < int(lowest))
        self._retry(shard, len(batch), f"record {lowest} reported failed")
        return False

    def _keep_dead_letters(self, messages: list[Json]) -> None:
        """The local dead-letter queue: in memory, and one JSON line each in `dead_letter_path`."""
        if not messages:
            return
        if self.dead_letter_path is not None:
            self.dead_letter_path.parent.mkdir(parents=True, exist_ok=True)
            with self.dead_letter_path.open("a") as queue:
                queue.writelines(json.dumps(m, default=str) + "\n" for m in messages)
        self.dead_letters.extend(messages)
        for message in messages:
            logger.warning(
                "%s stream: record %s can never be published (%s); dead-lettered%s",
                self.table_name,
                message.get("sequenceNumber"),
                message.get("reason"),
                f" in {self.dead_letter_path}" if self.dead_letter_path else "",
            )

    def _done(self, shard: _Shard, count: int) -> None:
        """The first `count` buffered records are done: checkpoint after the last of them."""
        shard.checkpoint = _sequence(shard.buffer[count - 1])
        del shard.buffer[:count]
        self._save_checkpoints()

    def _retry(self, shard: _Shard, size: int, reason: str) -> None:
        shard.backoff = min(shard.backoff * 2, MAX_BACKOFF) if shard.backoff else FIRST_BACKOFF
        shard.retry_at = time.monotonic() + shard.backoff
        shard.last_error = reason
        logger.warning(
            "%s stream: a batch of %d records failed (%s); delivering again from sequence number %s in %.0f s",
            self.table_name,
            size,
            reason,
            _sequence(shard.buffer[0]),
            shard.backoff,
        )

    # ---- checkpoints --------------------------------------------------------------------------

    def _load_checkpoints(self, stream_arn: str) -> None:
        if self.checkpoint_path is None or not self.checkpoint_path.exists():
            return
        try:
            state = json.loads(self.checkpoint_path.read_text())
            kept = state["shards"] if state.get("streamArn") == stream_arn else {}
            shards = {
                shard_id: _Shard(shard_id, s.get("parent"), s.get("sequenceNumber"), bool(s.get("closed")))
                for shard_id, s in kept.items()
            }
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            logger.warning("ignoring the unreadable stream checkpoints %s (%s)", self.checkpoint_path, exc)
            return
        self._shards = shards

    def _save_checkpoints(self) -> None:
        if self.checkpoint_path is None or self._stream_arn is None:
            return
        shards = {
            s.id: {"parent": s.parent, "sequenceNumber": s.checkpoint, "closed": s.closed}
            for s in self._shards.values()
            if s.checkpoint is not None or s.closed
        }
        write_json(self.checkpoint_path, {"streamArn": self._stream_arn, "shards": shards}, indent=1)
