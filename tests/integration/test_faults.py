"""Faults DynamoDB Local cannot produce on demand, injected with a botocore event hook on the real client."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse, HTTPHeaders

from tests.integration.conftest import LocalTables
from tests.support import http_event, invoke, load_function


def error(code: str, message: str = "injected", reasons: list[dict[str, str]] | None = None) -> Any:
    status = 500 if code == "InternalServerError" else 400
    parsed: dict[str, Any] = {"Error": {"Code": code, "Message": message}}
    if reasons is not None:
        parsed["CancellationReasons"] = reasons
    return AWSResponse("http://dynamodb.local", status, HTTPHeaders(), None), parsed


def inject(fn: ModuleType, operation: str, faults: list[Any] | Callable[..., Any]) -> list[str]:
    """Answer the next calls of `operation` with `faults` (one per call), then let calls through."""
    seen: list[str] = []

    def hook(params: dict[str, Any], **_: Any) -> Any:
        seen.append(operation)
        if callable(faults):
            return faults(params)
        return faults.pop(0) if faults else None

    fn.ledger.client.meta.events.register(f"before-call.dynamodb.{operation}", hook)
    return seen


def charge(fn: ModuleType, user: str, action: str = "analyze", key: str | None = None) -> tuple[int, dict]:
    headers = {"Idempotency-Key": key} if key else None
    status, body, _ = invoke(fn, http_event("POST", "/credits/use", sub=user, headers=headers, body={"action": action}))
    return status, body


@pytest.fixture
def fn(local_tables: LocalTables) -> ModuleType:
    module = load_function("use_credits")
    module.ledger.sleep = lambda _s: None  # keep the backoff schedule, skip the waiting
    return module


def test_throttled_transactions_are_retried_and_charge_once(fn: ModuleType, local_tables: LocalTables) -> None:
    ledger = local_tables.ledger()
    ledger.grant("t1", 20, type="gift", description="seed")
    throttles = [
        error("ThrottlingException"),
        error("ProvisionedThroughputExceededException"),
        error("TransactionCanceledException", reasons=[{"Code": "ThrottlingError"}, {"Code": "None"}]),
    ]
    calls = inject(fn, "TransactWriteItems", throttles)
    status, body = charge(fn, "t1")
    assert (status, body["balance"]) == (200, 15)
    assert len(calls) == 4
    assert ledger.balance("t1") == 15 and ledger.audit("t1").ok


def test_a_lost_race_is_queued_and_the_combiners_conflicts_re_read(fn: ModuleType, local_tables: LocalTables) -> None:
    """The direct write loses (a conflict): the charge is queued; the combiner's first two passes
    conflict too, and each is decided again from a fresh read of the queue."""
    ledger = local_tables.ledger()
    ledger.grant("t2", 20, type="gift", description="seed")
    conflict = [{"Code": "TransactionConflict"}, {"Code": "None"}]
    calls = inject(fn, "TransactWriteItems", [error("TransactionCanceledException", reasons=conflict)] * 3)
    sent: list[str] = []  # every call, in order (an injected error short-circuits `before-call` hooks)
    fn.ledger.client.meta.events.register("before-parameter-build.dynamodb", lambda model, **_: sent.append(model.name))
    status, body = charge(fn, "t2")
    assert (status, body["balance"]) == (200, 15)
    assert len(calls) == 4  # one direct attempt, three combiner passes
    ops = Counter(sent)
    assert ops["PutItem"] == 1  # one intent
    # the direct read, then each pass's read of the queue and of the markers (its `DECIDED#<id>`:
    # a resent intent's decision), and the read that finds the queue empty
    assert (ops["GetItem"], ops["Query"]) == (1 + 3, 3 + 1)
    assert ops["UpdateItem"] >= 2  # the lease, taken and released (renewed if a pass ran long)
    assert "DeleteItem" not in ops  # its pass took the intent off the queue: no clean-up call
    assert sent[:4] == ["GetItem", "TransactWriteItems", "PutItem", "UpdateItem"]
    assert [t.amount for t in ledger.history("t2")] == [20, -5]
    assert ledger.audit("t2").ok


def test_when_retries_run_out_the_api_answers_503_and_nothing_is_written(
    fn: ModuleType, local_tables: LocalTables
) -> None:
    ledger = local_tables.ledger()
    ledger.grant("t3", 20, type="gift", description="seed")
    inject(fn, "TransactWriteItems", lambda _p: error("ThrottlingException"))
    status, body, headers = invoke(fn, http_event("POST", "/credits/use", sub="t3", body={"action": "analyze"}))
    assert (status, body["error"]["code"]) == (503, "temporarily_unavailable")
    assert headers.get("Retry-After") == "1"
    assert ledger.balance("t3") == 20
    audit = ledger.audit("t3")
    assert audit.ok and audit.entries == 1


def test_endless_conflicts_answer_503_and_the_audit_passes(fn: ModuleType, local_tables: LocalTables) -> None:
    ledger = local_tables.ledger()
    ledger.grant("t4", 20, type="gift", description="seed")
    conflict = [{"Code": "TransactionConflict"}, {"Code": "None"}]
    inject(fn, "TransactWriteItems", lambda _p: error("TransactionCanceledException", reasons=conflict))
    status, body = charge(fn, "t4", key="k-1")
    assert (status, body["error"]["code"]) == (503, "temporarily_unavailable")
    assert ledger.balance("t4") == 20 and ledger.audit("t4").ok


def test_a_lost_response_is_resent_with_its_token_and_charges_once(fn: ModuleType, local_tables: LocalTables) -> None:
    """The transaction lands but its answer is lost; the resend carries the same ClientRequestToken."""
    ledger = local_tables.ledger()
    ledger.grant("t5", 20, type="gift", description="seed")
    real = local_tables.client
    lost: list[str] = []
    sent: list[dict[str, Any]] = []
    fn.ledger.client.meta.events.register(
        "before-parameter-build.dynamodb.TransactWriteItems", lambda params, **_: sent.append(dict(params))
    )

    def land_then_lose(_request: dict[str, Any]) -> Any:
        if lost:
            return None  # the resend goes through for real
        real.transact_write_items(**sent[-1])  # type: ignore[attr-defined]
        lost.append(sent[-1]["ClientRequestToken"])
        return error("InternalServerError")

    calls = inject(fn, "TransactWriteItems", land_then_lose)
    status, body = charge(fn, "t5")  # no idempotency key: only the token protects this charge
    assert (status, body["balance"]) == (200, 15)
    assert len(calls) == 2
    assert body["transactionId"] == lost[0]
    assert ledger.balance("t5") == 15
    assert [t.amount for t in ledger.history("t5")] == [20, -5]
    assert ledger.audit("t5").ok


def test_a_crash_after_commit_is_replayed_by_the_idempotency_key(fn: ModuleType, local_tables: LocalTables) -> None:
    """The function dies after the write; the client retries the same key in a new container."""
    ledger = local_tables.ledger()
    ledger.grant("t6", 20, type="gift", description="seed")

    class Crash(BaseException):
        pass

    def commit_then_crash(**kwargs: Any) -> None:
        raise Crash

    fn.ledger.client.meta.events.register("after-call.dynamodb.TransactWriteItems", commit_then_crash)
    with pytest.raises(Crash):
        charge(fn, "t6", key="retry-me")
    assert ledger.balance("t6") == 15  # it did land

    fresh = load_function("use_credits")
    status, body = charge(fresh, "t6", key="retry-me")
    assert (status, body["balance"], body["charged"]) == (200, 15, 5)
    assert ledger.balance("t6") == 15 and ledger.audit("t6").ok
