"""The local stream poller's pieces: the template's filter, records in Lambda's shape, and Lambda's
rules for a batch's answer (local/streams.py). The poller itself runs against DynamoDB Local in
tests/integration/test_stream_poller.py."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from local.streams import (
    InvalidBatchResponse,
    StreamPoller,
    UnsupportedPattern,
    check_pattern,
    handed_back,
    keep,
    lambda_record,
    lowest_failure,
)
from local.template import http_functions, stream_source, table_definitions

STREAM_ARN = "arn:aws:dynamodb:ddblocal:000000000000:table/credits/stream/2026-11-26T00:00:00.000"


def record(sk: str, event_name: str = "INSERT", sequence: str = "000000000000000000001") -> dict[str, Any]:
    """A stream record as the Lambda event carries it."""
    keys = {"pk": {"S": "USER#alice"}, "sk": {"S": sk}}
    return {
        "eventID": "7de3041dd709b024af6f29e4fa13d34c",
        "eventName": event_name,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": {
            "ApproximateCreationDateTime": 1795650000.0,
            "Keys": keys,
            "NewImage": {**keys, "amount": {"N": "-5"}},
            "SequenceNumber": sequence,
            "SizeBytes": 120,
            "StreamViewType": "NEW_IMAGE",
        },
        "eventSourceARN": STREAM_ARN,
    }


# ---- the events function's filter, as template.yaml writes it ------------------------------------------


def test_the_template_s_filter_delivers_new_ledger_entries_and_limit_notes_only() -> None:
    patterns = stream_source("events").patterns
    assert len(patterns) == 2  # new items; and a top-up's one change, to its end
    for pattern in patterns:
        check_pattern(pattern)  # nothing in it that the local poller would get wrong

    assert keep(patterns, record("TX#000000000001"))
    assert keep(patterns, record("LIMIT#2026-11"))
    assert not keep(patterns, record("TX#000000000001", "MODIFY"))
    assert not keep(patterns, record("TX#000000000001", "REMOVE"))
    assert not keep(patterns, record("ACCOUNT"))
    assert not keep(patterns, record("IDEM#key-1"))
    assert not keep(patterns, record("REF#doc-1"))
    assert not keep(patterns, record("HOLD#h1"))
    assert not keep(patterns, record("tx#000000000001"))  # a prefix is case-sensitive


def test_a_record_missing_a_field_the_filter_names_is_not_delivered() -> None:
    patterns = stream_source("events").patterns
    numeric_key = record("TX#000000000001")
    numeric_key["dynamodb"]["Keys"]["sk"] = {"N": "1"}
    assert not keep(patterns, numeric_key)
    no_keys = record("TX#000000000001")
    del no_keys["dynamodb"]["Keys"]
    assert not keep(patterns, no_keys)


def test_exact_values_nesting_and_the_operators_the_poller_knows() -> None:
    pattern = {"a": {"b": ["x", 3]}, "c": [{"suffix": ".png"}], "d": [{"exists": False}], "e": [True]}
    assert keep([pattern], {"a": {"b": "x"}, "c": "cat.png", "e": True})
    assert keep([pattern], {"a": {"b": 3.0}, "c": ["a.txt", "b.png"], "e": True})  # numbers as numbers; any element
    assert not keep([pattern], {"a": {"b": "x"}, "c": "cat.png", "d": 1, "e": True})  # d must not exist
    assert not keep([pattern], {"a": {"b": "x"}, "c": "cat.png", "e": 1})  # true is not 1
    assert not keep([pattern], {"a": "x", "c": "cat.png", "e": True})  # b is inside a
    assert keep([{"x": ["nope"]}, {"y": [{"equals-ignore-case": "ABC"}]}], {"y": "abc"})  # any pattern
    assert keep([], {"anything": 1})  # no filter: everything


@pytest.mark.parametrize(
    "pattern",
    [
        {"a": [{"numeric": [">", 0]}]},
        {"a": [{"anything-but": "x"}]},
        {"a": [{"prefix": "x", "suffix": "y"}]},
        {"a": [{"exists": "yes"}]},
        {"a": "x"},
        {"a": []},
        {"$or": [{"a": ["x"]}, {"b": ["y"]}]},
    ],
)
def test_a_pattern_the_poller_cannot_apply_faithfully_is_refused(pattern: dict[str, Any]) -> None:
    with pytest.raises(UnsupportedPattern):
        check_pattern(pattern)


# ---- records and answers in Lambda's shapes ------------------------------------------------------------


def test_a_get_records_record_becomes_the_lambda_event_record() -> None:
    raw: dict[str, Any] = {
        "eventID": "c0337aa9",
        "eventName": "INSERT",
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "ddblocal",
        "dynamodb": {
            "ApproximateCreationDateTime": datetime(2026, 11, 26, 1, 1, tzinfo=UTC),
            "Keys": {"pk": {"S": "USER#alice"}, "sk": {"S": "TX#000000000001"}},
            "NewImage": {
                "pk": {"S": "USER#alice"},
                "blob": {"B": b"\x00\x01"},
                "m": {"M": {"l": {"L": [{"B": b"A"}]}}},
                "holds": {},  # DynamoDB Local's stream writes an empty map so
            },
            "SequenceNumber": "000000000000000000001",
            "SizeBytes": 21,
            "StreamViewType": "NEW_IMAGE",
        },
    }
    converted = lambda_record(copy.deepcopy(raw), STREAM_ARN, "eu-west-1")
    assert list(converted) == [
        "eventID",
        "eventName",
        "eventVersion",
        "eventSource",
        "awsRegion",
        "dynamodb",
        "eventSourceARN",
    ]
    assert converted["awsRegion"] == "eu-west-1"
    assert converted["eventSourceARN"] == STREAM_ARN
    stream = converted["dynamodb"]
    assert stream["ApproximateCreationDateTime"] == datetime(2026, 11, 26, 1, 1, tzinfo=UTC).timestamp()
    assert stream["NewImage"]["blob"] == {"B": "AAE="}
    assert stream["NewImage"]["m"] == {"M": {"l": {"L": [{"B": "QQ=="}]}}}
    assert stream["NewImage"]["holds"] == {"M": {}}  # as AWS writes it
    assert stream["Keys"] == raw["dynamodb"]["Keys"]
    assert stream["SequenceNumber"] == "000000000000000000001"


def test_lambda_s_rules_for_a_batch_s_answer() -> None:
    batch = [record("TX#1", sequence="000000000000000000007"), record("TX#2", sequence="000000000000000000011")]
    successes: list[Any] = [None, {}, {"batchItemFailures": []}, {"batchItemFailures": None}, {"statusCode": 200}]
    for success in successes:
        assert lowest_failure(success, batch) is None
    both = {
        "batchItemFailures": [{"itemIdentifier": "000000000000000000011"}, {"itemIdentifier": "000000000000000000007"}]
    }
    assert lowest_failure(both, batch) == "000000000000000000007"  # by number, whatever the order
    for whole in (
        {"batchItemFailures": [{"itemIdentifier": ""}]},
        {"batchItemFailures": [{"itemIdentifier": None}]},
        {"batchItemFailures": [{"id": "000000000000000000007"}]},
        {"batchItemFailures": [{"itemIdentifier": "000000000000000000099"}]},
    ):
        with pytest.raises(InvalidBatchResponse):
            lowest_failure(whole, batch)


# ---- what the local stack takes from template.yaml -----------------------------------------------------


def test_the_template_s_stream_settings_reach_the_local_stack() -> None:
    source = stream_source("events")
    assert (source.table, source.batch_size, source.starting_position) == ("CreditsTable", 100, "TRIM_HORIZON")
    assert source.report_batch_item_failures
    assert source.code == "functions/events"
    assert table_definitions()["CreditsTable"]["StreamSpecification"] == {
        "StreamEnabled": True,
        "StreamViewType": "NEW_IMAGE",
    }
    assert "StreamSpecification" not in table_definitions()["IdempotencyTable"]


def test_the_gateway_serves_only_functions_reached_over_http() -> None:
    served = http_functions()
    assert {"use_credits", "balance", "checkout", "webhook", "premium"} <= served  # the webhook: its Function URL
    assert "events" not in served  # the stream's poller invokes it


# ---- shard lineage (DynamoDB Local keeps one shard, so its splits are played by a fake) ----------------


class SplitStream:
    """DescribeTable, DescribeStream, GetShardIterator and GetRecords of a stream whose first shard
    ended and split into two children (listed before their parent, as nothing orders them)."""

    ARN = STREAM_ARN

    def __init__(self) -> None:
        self.shards: dict[str, tuple[str | None, list[str], bool]] = {  # id -> parent, sort keys, ended
            "child-a": ("parent", ["TX#000000000003"], False),
            "child-b": ("parent", ["TX#000000000004"], False),
            "parent": (None, ["TX#000000000001", "TX#000000000002"], True),
        }
        self.sequences = {"parent": 1, "child-a": 3, "child-b": 4}

    def describe_table(self, TableName: str) -> dict[str, Any]:
        return {"Table": {"StreamSpecification": {"StreamEnabled": True}, "LatestStreamArn": self.ARN}}

    def describe_stream(self, StreamArn: str) -> dict[str, Any]:
        shards = [{"ShardId": i, **({"ParentShardId": p} if p else {})} for i, (p, _, _) in self.shards.items()]
        return {"StreamDescription": {"StreamArn": StreamArn, "Shards": shards}}

    def get_shard_iterator(self, StreamArn: str, ShardId: str, ShardIteratorType: str, **_: Any) -> dict[str, Any]:
        assert ShardIteratorType == "TRIM_HORIZON"
        return {"ShardIterator": f"{ShardId}|0"}

    def get_records(self, ShardIterator: str, Limit: int) -> dict[str, Any]:
        shard, offset = ShardIterator.split("|")
        _, sks, ended = self.shards[shard]
        records = []
        for n, sk in enumerate(sks[int(offset) :]):
            raw = record(sk, sequence=f"{self.sequences[shard] + n:021d}")
            raw["dynamodb"]["ApproximateCreationDateTime"] = datetime(2026, 11, 26, tzinfo=UTC)
            records.append(raw)
        following = None if ended else f"{shard}|{len(sks)}"
        return {"Records": records, **({"NextShardIterator": following} if following else {})}


def test_a_shard_s_parent_is_delivered_first_even_when_its_delivery_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("local.streams.FIRST_BACKOFF", 0.01)  # the retry comes at once, not after a second
    fake = SplitStream()
    delivered: list[list[str]] = []
    answers: list[Any] = [RuntimeError("once")]

    def deliver(event: dict[str, Any]) -> Any:
        delivered.append([r["dynamodb"]["Keys"]["sk"]["S"] for r in event["Records"]])
        if answers:
            raise answers.pop()
        return {"batchItemFailures": []}

    poller = StreamPoller.for_function(
        "events", endpoint="http://unused", table_name="credits", deliver=deliver, dynamodb=fake, streams=fake
    )
    assert poller.drain(timeout=10, quiet=0.2) == 4
    parent = ["TX#000000000001", "TX#000000000002"]
    assert delivered[:2] == [parent, parent]  # failed once, retried before any child
    assert sorted(delivered[2:]) == [["TX#000000000003"], ["TX#000000000004"]]


# ---- the local dead-letter queue: what the events function hands back when it has no queue -------------


def handing_back(*dead: int, failed: tuple[int, ...] = ()) -> Any:
    """An answer, as the events function without a queue gives it: the records at positions `dead`
    failed and handed back as dead letters, those at `failed` failed for a passing reason."""

    def answer(event: dict[str, Any]) -> dict[str, Any]:
        sequence = [r["dynamodb"]["SequenceNumber"] for r in event["Records"]]
        return {
            "batchItemFailures": [{"itemIdentifier": sequence[i]} for i in sorted((*dead, *failed))],
            "deadLetters": [
                {
                    "itemIdentifier": sequence[i],
                    "message": {"reason": f"bad {sequence[i]}", "sequenceNumber": sequence[i]},
                }
                for i in dead
            ],
        }

    return answer


def test_records_handed_back_as_dead_letters_are_not_failures() -> None:
    batch = [record("TX#1", sequence=f"{n:021d}") for n in (7, 11, 13)]
    answer = handing_back(1, failed=(2,))({"Records": batch})
    dead = handed_back(answer, batch)
    assert dead == {f"{11:021d}": {"reason": f"bad {11:021d}", "sequenceNumber": f"{11:021d}"}}
    assert lowest_failure(answer, batch, dead) == f"{13:021d}"
    assert lowest_failure(handing_back(0, 1)({"Records": batch}), batch, [f"{7:021d}", f"{11:021d}"]) is None
    # an entry that names no record of the batch, or has no message, is no dead letter
    junk = {"deadLetters": [{"itemIdentifier": "99", "message": {}}, {"itemIdentifier": f"{7:021d}"}, "x"]}
    assert handed_back(junk, batch) == {} and handed_back({"deadLetters": "x"}, batch) == {}
    assert handed_back(None, batch) == {}


class OneShard:
    """A stream of one open shard holding a ledger entry per sort key."""

    def __init__(self, count: int) -> None:
        self.sks = [f"TX#{n:012d}" for n in range(1, count + 1)]

    def describe_table(self, TableName: str) -> dict[str, Any]:
        return {"Table": {"StreamSpecification": {"StreamEnabled": True}, "LatestStreamArn": STREAM_ARN}}

    def describe_stream(self, StreamArn: str, **_: Any) -> dict[str, Any]:
        return {"StreamDescription": {"StreamArn": StreamArn, "Shards": [{"ShardId": "only"}]}}

    def get_shard_iterator(self, StreamArn: str, ShardId: str, ShardIteratorType: str, **args: Any) -> dict[str, Any]:
        after = int(args.get("SequenceNumber", 0))
        return {"ShardIterator": str(after)}

    def get_records(self, ShardIterator: str, Limit: int) -> dict[str, Any]:
        after = int(ShardIterator)
        records = [record(sk, sequence=f"{n:021d}") for n, sk in enumerate(self.sks, start=1) if n > after]
        return {"Records": records, "NextShardIterator": str(len(self.sks))}


class Answers:
    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.batches: list[list[int]] = []

    def __call__(self, event: dict[str, Any]) -> Any:
        self.batches.append([int(r["dynamodb"]["SequenceNumber"]) for r in event["Records"]])
        answer = self.answers.pop(0) if self.answers else None
        return answer(event) if callable(answer) else answer


def test_a_dead_letter_is_kept_and_its_shard_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("local.streams.FIRST_BACKOFF", 0.01)
    fake = OneShard(5)
    # 1: record 2 is handed back, record 4 failed for a passing reason (retried from 4);
    # 2: record 5 is handed back; 3: record 6 (new) goes through
    function = Answers(handing_back(1, failed=(3,)), handing_back(1))
    poller = StreamPoller.for_function(
        "events",
        endpoint="http://unused",
        table_name="credits",
        deliver=function,
        dynamodb=fake,
        streams=fake,
        checkpoint_path=tmp_path / "stream-checkpoints.json",
    )
    assert poller.dead_letter_path == tmp_path / "events-dead-letters.jsonl"  # make dev's: in its data folder

    assert poller.drain(timeout=10, quiet=0.2) == 5
    assert function.batches == [[1, 2, 3, 4, 5], [4, 5]]
    assert [m["sequenceNumber"] for m in poller.dead_letters] == [f"{2:021d}", f"{5:021d}"]
    kept = [json.loads(line) for line in (tmp_path / "events-dead-letters.jsonl").read_text().splitlines()]
    assert kept == poller.dead_letters

    fake.sks.append("TX#000000000006")  # the shard was not held back: what follows is delivered
    assert poller.drain(timeout=10, quiet=0.2) == 1
    assert function.batches[-1] == [6]


def test_without_a_path_dead_letters_are_kept_in_memory() -> None:
    fake = OneShard(2)
    poller = StreamPoller.for_function(
        "events",
        endpoint="http://unused",
        table_name="credits",
        deliver=Answers(handing_back(0)),
        dynamodb=fake,
        streams=fake,
    )
    assert poller.dead_letter_path is None
    assert poller.drain(timeout=10, quiet=0.2) == 2
    assert [m["reason"] for m in poller.dead_letters] == [f"bad {1:021d}"]
