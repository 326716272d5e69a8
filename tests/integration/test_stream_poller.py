"""The local stream poller (local/streams.py) on DynamoDB Local: the credits table's stream delivered as
Lambda's event source mapping delivers it, to a stub, to a container that dies, and to the real
events function publishing on the local EventBridge."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local.containers import Container, ContainerPool
from local.dynamodb_local import DynamoDBLocal
from local.eventbridge import LocalEventBridge
from local.streams import StreamPoller
from local.template import create_tables, table_definitions
from tests.integration.conftest import LocalTables

USER = "USER#alice"


class Recorder:
    """A stub function: records each batch's sort keys, answers what it is told to (once each)."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.batches: list[list[str]] = []
        self.events: list[dict[str, Any]] = []
        self.times: list[float] = []

    def __call__(self, event: dict[str, Any]) -> Any:
        self.events.append(event)
        self.batches.append([r["dynamodb"]["Keys"]["sk"]["S"] for r in event["Records"]])
        self.times.append(time.monotonic())
        answer = self.answers.pop(0) if self.answers else None
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return answer(event)
        return answer


def put(tables: LocalTables, sk: str, **attributes: str) -> None:
    item = {"pk": {"S": USER}, "sk": {"S": sk}, "holds": {"M": {}}, **{k: {"S": v} for k, v in attributes.items()}}
    tables.client.put_item(TableName=tables.credits, Item=item)  # type: ignore[attr-defined]


def poller(tables: LocalTables, deliver: Any, **options: Any) -> StreamPoller:
    return StreamPoller.for_function(
        "events", endpoint=tables.endpoint, table_name=tables.credits, deliver=deliver, **options
    )


def fail(position: int) -> Any:
    """An answer reporting the record at `position` of the batch as failed."""
    return lambda event: {
        "batchItemFailures": [{"itemIdentifier": event["Records"][position]["dynamodb"]["SequenceNumber"]}]
    }


def test_new_ledger_entries_arrive_in_order_filtered_and_in_batches(local_tables: LocalTables) -> None:
    put(local_tables, "TX#000000000001", type="purchase")
    put(local_tables, "ACCOUNT")
    put(local_tables, "IDEM#key-1")
    put(local_tables, "TX#000000000002")
    put(local_tables, "TX#000000000001", type="changed")  # a MODIFY
    put(local_tables, "LIMIT#2026-11")
    put(local_tables, "TX#000000000003")
    stub = Recorder()

    assert poller(local_tables, stub, batch_size=2).drain() == 4

    assert stub.batches == [["TX#000000000001", "TX#000000000002"], ["LIMIT#2026-11", "TX#000000000003"]]
    stream_arn = local_tables.client.describe_table(TableName=local_tables.credits)["Table"]["LatestStreamArn"]  # type: ignore[attr-defined]
    first = stub.events[0]["Records"][0]
    assert first["eventName"] == "INSERT"
    assert first["eventSource"] == "aws:dynamodb"
    assert first["eventSourceARN"] == stream_arn
    assert first["awsRegion"] == "us-east-1"
    assert isinstance(first["dynamodb"]["ApproximateCreationDateTime"], float)
    assert first["dynamodb"]["NewImage"]["type"] == {"S": "purchase"}
    assert first["dynamodb"]["NewImage"]["holds"] == {"M": {}}  # DynamoDB Local's stream says {}
    assert first["dynamodb"]["StreamViewType"] == "NEW_IMAGE"
    sequences = [int(r["dynamodb"]["SequenceNumber"]) for e in stub.events for r in e["Records"]]
    assert sequences == sorted(sequences)


def test_a_reported_failure_is_delivered_again_from_that_record_not_before(local_tables: LocalTables) -> None:
    for n in range(1, 6):
        put(local_tables, f"TX#00000000000{n}")
    stub = Recorder(fail(2))

    assert poller(local_tables, stub).drain() == 5

    assert stub.batches == [
        ["TX#000000000001", "TX#000000000002", "TX#000000000003", "TX#000000000004", "TX#000000000005"],
        ["TX#000000000003", "TX#000000000004", "TX#000000000005"],
    ]
    assert stub.times[1] - stub.times[0] >= 1.0  # after the first backoff


def test_a_raising_function_or_a_malformed_answer_gets_the_whole_batch_again(local_tables: LocalTables) -> None:
    put(local_tables, "TX#000000000001")
    put(local_tables, "TX#000000000002")
    stub = Recorder(RuntimeError("boom"), {"batchItemFailures": [{"itemIdentifier": ""}]})

    assert poller(local_tables, stub).drain(timeout=30) == 2

    whole = ["TX#000000000001", "TX#000000000002"]
    assert stub.batches == [whole, whole, whole]
    assert stub.times[2] - stub.times[1] >= 2.0  # the backoff doubles


def test_drain_gives_up_with_the_reason_when_the_function_keeps_failing(local_tables: LocalTables) -> None:
    put(local_tables, "TX#000000000001")
    stub = Recorder(*[RuntimeError("the bus is down")] * 10)
    with pytest.raises(TimeoutError, match="the bus is down"):
        poller(local_tables, stub).drain(timeout=2)


CRASH_ONCE = """
import json
import os
from pathlib import Path

LOG = Path(os.environ["STREAM_TEST_LOG"])


def lambda_handler(event, context):
    crashed = LOG.exists()
    with LOG.open("a") as log:
        log.write(json.dumps([r["dynamodb"]["Keys"]["sk"]["S"] for r in event["Records"]]) + "\\n")
    if not crashed:
        os._exit(1)  # the container dies mid-invocation
    return {"batchItemFailures": []}
"""


def test_a_container_that_dies_gets_the_whole_batch_again_in_a_new_one(
    local_tables: LocalTables, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = tmp_path / "crash_once"
    code.mkdir()
    (code / "app.py").write_text(CRASH_ONCE)
    log = tmp_path / "invocations.jsonl"
    monkeypatch.setenv("STREAM_TEST_LOG", str(log))
    put(local_tables, "TX#000000000001")
    put(local_tables, "TX#000000000002")
    pool = ContainerPool("crash_once", limit=1, code=str(code))
    try:
        assert poller(local_tables, pool.invoke).drain(timeout=30) == 2
    finally:
        pool.close()
    batches = [json.loads(line) for line in log.read_text().splitlines()]
    assert batches == [["TX#000000000001", "TX#000000000002"]] * 2


def test_a_restart_resumes_after_the_last_record_done(local_tables: LocalTables, tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints.json"
    put(local_tables, "TX#000000000001")
    put(local_tables, "ACCOUNT")  # filtered out, but done: a restart does not read it again
    first = Recorder()
    assert poller(local_tables, first, checkpoint_path=checkpoints).drain() == 1

    put(local_tables, "TX#000000000002")
    second = Recorder()
    assert poller(local_tables, second, checkpoint_path=checkpoints).drain() == 1
    assert second.batches == [["TX#000000000002"]]

    latest = Recorder()  # no checkpoint: LATEST skips what is already in the stream
    assert poller(local_tables, latest, starting_position="LATEST").drain() == 0
    assert latest.batches == []


def test_the_background_thread_delivers_while_the_table_is_written(local_tables: LocalTables) -> None:
    stub = Recorder()
    running = poller(local_tables, stub, poll_interval=0.1).start()
    try:
        put(local_tables, "TX#000000000001")
        deadline = time.monotonic() + 10
        while not stub.batches and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        running.stop()
    assert stub.batches == [["TX#000000000001"]]


def test_a_table_kept_from_before_the_template_had_a_stream_gets_one(dynamodb_local: DynamoDBLocal) -> None:
    client = dynamodb_local.client()
    names = {"CreditsTable": f"credits-{uuid.uuid4().hex[:8]}", "IdempotencyTable": f"idem-{uuid.uuid4().hex[:8]}"}
    old = {k: v for k, v in table_definitions()["CreditsTable"].items() if k != "StreamSpecification"}
    client.create_table(TableName=names["CreditsTable"], **old)
    try:
        create_tables(client, names)
        table = client.describe_table(TableName=names["CreditsTable"])["Table"]
        assert table["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"}
        assert table["LatestStreamArn"]
    finally:
        for name in names.values():
            client.delete_table(TableName=name)


# ---- with the real events function and the local EventBridge ---------------------------------------------


@pytest.fixture
def bus(local_tables: LocalTables, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalEventBridge]:
    with LocalEventBridge(bus_name="credits-test") as bridge:
        monkeypatch.setenv("EVENT_BUS_NAME", "credits-test")
        monkeypatch.setenv("AWS_ENDPOINT_URL_EVENTBRIDGE", bridge.endpoint)
        monkeypatch.setenv("LOW_BALANCE_THRESHOLD", "10")
        monkeypatch.delenv("EVENTS_DEAD_LETTER_QUEUE_URL", raising=False)  # as in make dev
        yield bridge


def test_an_event_the_bus_refused_is_put_again_with_the_same_event_id(
    local_tables: LocalTables, bus: LocalEventBridge
) -> None:
    ledger = local_tables.ledger()
    ledger.grant(
        "alice", 100, type="purchase", description="Starter", reference_id="pi_1", monetary_amount=500, currency="usd"
    )
    container = Container("events")  # started after the environment above: it points at the local bus
    try:
        events = poller(local_tables, container.invoke)
        assert events.drain(timeout=60) == 1
        bus.fail_next(1, "InternalFailure")
        ledger.charge("alice", 95, description="analyze")
        assert events.drain(timeout=60) == 1  # delivered once more after the failure, then done
    finally:
        container.close()

    # The charge's PutEvents put one of its two events and refused the other; the record was then
    # delivered again whole: the refused event is on the bus, and the one put twice has one eventId.
    put = bus.events(user_id="alice")
    assert len(put) == 4
    facts = {e["detail"]["eventId"]: (e["detail-type"], e["detail"].get("balance")) for e in put}
    assert sorted(facts.values()) == [("Balance Low", 5), ("Credits Purchased", 100), ("Credits Used", 5)]
    low = bus.events(user_id="alice", detail_type="Balance Low")[0]["detail"]
    assert low["threshold"] == 10


def test_make_dev_does_not_stall_on_a_malformed_entry_it_keeps_it_in_its_data_folder(
    local_tables: LocalTables, bus: LocalEventBridge, tmp_path: Path
) -> None:
    """As make dev runs it (the events function without a queue, checkpoints in the data folder): a
    record that can never be published is kept in events-dead-letters.jsonl next to the checkpoints,
    the records after it are published, and a restart neither delivers nor keeps it again."""
    ledger = local_tables.ledger()
    put(local_tables, "TX#000000000001", type="purchase")  # an entry with none of its fields
    ledger.grant("bob", 50, type="purchase", description="pack", reference_id="pi_b", monetary_amount=500)
    data = tmp_path / ".local-data"
    container = Container("events")
    try:
        first = poller(local_tables, container.invoke, checkpoint_path=data / "stream-checkpoints.json")
        assert first.drain(timeout=60) == 2
        again = poller(local_tables, container.invoke, checkpoint_path=data / "stream-checkpoints.json")
        assert again.drain(timeout=5) == 0
    finally:
        container.close()

    assert [e["detail-type"] for e in bus.events(user_id="bob")] == ["Credits Purchased"]
    (kept,) = [json.loads(line) for line in (data / "events-dead-letters.jsonl").read_text().splitlines()]
    assert kept["reason"] == "NewImage.id is missing"
    assert kept["record"]["dynamodb"]["Keys"] == {"pk": {"S": USER}, "sk": {"S": "TX#000000000001"}}
    assert kept["function"].endswith("events")  # the local container names it local_fn_events
