"""`make bench`: one hot balance on DynamoDB Local, and the cold start, against floors measured in the same run.

Contention: for 1, 8, 16 and 32 writers, N charges of 1 credit against a balance smaller than N on
ONE user, each request with its own Idempotency-Key, every writer its own PROCESS (as Lambda runs
containers). Three ways, side by side, ours twice:

- ours:         POST /credits/use through the use_credits handler (group commit under contention),
                on an account whose credits are one lot
- lots-20:      ours, on an account whose credits are 20 open lots (`seed_lots`): the cost of lots
- serialize:    the floor: a single-item conditional UpdateItem by hand (no ledger, no markers)
- seq-guard:    read + seq-guarded transaction (account, entry, idempotency marker) by hand, each
                writer retrying alone: the naive design

Printed as a table: rate, outcomes (200/402/503), p50/p99 latency, DynamoDB calls per request,
ours as a ratio of both, and lots-20 as a ratio of ours (rate, and DynamoDB calls per request).
Cold start: importing each handler in a fresh interpreter, as a ratio of
`import boto3; boto3.client("dynamodb")` measured the same way.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "shared"))
sys.path.insert(0, str(ROOT))

from credits.ledger import Ledger, LotTerms  # noqa: E402
from local.containers import SHOW_METRICS, start_containers  # noqa: E402
from local.dev import default_action_costs  # noqa: E402
from local.dynamodb_local import DynamoDBLocal  # noqa: E402
from local.template import create_tables  # noqa: E402

TABLE = "bench-credits"
LOTS = 20  # the open lots of the lots-20 account
_CONTEXT = multiprocessing.get_context("spawn")


@dataclass
class Result:
    name: str
    writers: int
    seconds: float
    outcomes: Counter[str]
    latencies: list[float]
    calls: int

    @property
    def rate(self) -> float:
        return sum(self.outcomes.values()) / self.seconds

    @property
    def per(self) -> float:
        """DynamoDB calls per request."""
        return self.calls / max(sum(self.outcomes.values()), 1)

    def row(self) -> str:
        ordered = sorted(self.latencies)
        p50 = ordered[len(ordered) // 2] * 1000
        p99 = ordered[max(int(len(ordered) * 0.99) - 1, 0)] * 1000
        per = self.per
        return (
            f"{self.writers:>7} {self.name:<10} {self.rate:>7.0f} {self.outcomes['200']:>5} {self.outcomes['402']:>5}"
            f" {self.outcomes['503']:>5} {p50:>8.0f} {p99:>8.0f} {per:>7.1f}"
        )


# ---- by-hand writers (run in worker processes) ---------------------------------------------------

_client: Any = None
_calls = 0


def _init_worker(endpoint: str) -> None:
    global _client
    import boto3

    _client = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")

    def count(**_: Any) -> None:
        global _calls
        _calls += 1

    _client.meta.events.register("before-call.dynamodb", count)


def _serialize(user: str) -> tuple[str, float, int]:
    """The floor: ONE conditional UpdateItem, no ledger, no markers."""
    global _calls
    _calls = 0
    start = time.perf_counter()
    try:
        _client.update_item(
            TableName=TABLE,
            Key={"pk": {"S": f"USER#{user}"}, "sk": {"S": "ACCOUNT"}},
            UpdateExpression="SET balance = balance - :one",
            ConditionExpression="balance >= :one",
            ExpressionAttributeValues={":one": {"N": "1"}},
        )
        outcome = "200"
    except _client.exceptions.ConditionalCheckFailedException:
        outcome = "402"
    return outcome, time.perf_counter() - start, _calls


def _seq_guard(user: str) -> tuple[str, float, int]:
    """The naive ledger: read, then a seq-guarded transaction; a loser re-reads and retries alone."""
    global _calls
    _calls = 0
    start = time.perf_counter()
    pk = {"S": f"USER#{user}"}
    key = uuid.uuid4().hex
    for attempt in range(10_000):
        account = _client.get_item(TableName=TABLE, Key={"pk": pk, "sk": {"S": "ACCOUNT"}}, ConsistentRead=True)
        balance, seq = int(account["Item"]["balance"]["N"]), int(account["Item"]["seq"]["N"])
        if balance < 1:
            return "402", time.perf_counter() - start, _calls
        try:
            _client.transact_write_items(
                TransactItems=[
                    {
                        "Update": {
                            "TableName": TABLE,
                            "Key": {"pk": pk, "sk": {"S": "ACCOUNT"}},
                            "UpdateExpression": "SET balance = :b, seq = :s",
                            "ConditionExpression": "seq = :expected",
                            "ExpressionAttributeValues": {
                                ":b": {"N": str(balance - 1)},
                                ":s": {"N": str(seq + 1)},
                                ":expected": {"N": str(seq)},
                            },
                        }
                    },
                    {
                        "Put": {
                            "TableName": TABLE,
                            "Item": {"pk": pk, "sk": {"S": f"TX#{seq + 1:012d}"}, "amount": {"N": "-1"}},
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                    {
                        "Put": {
                            "TableName": TABLE,
                            "Item": {"pk": pk, "sk": {"S": f"IDEM#{key}"}},
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                ]
            )
            return "200", time.perf_counter() - start, _calls
        except _client.exceptions.TransactionCanceledException:
            time.sleep(random.uniform(0, min(0.2, 0.004 * 2**attempt)))
    return "503", time.perf_counter() - start, _calls


def by_hand(name: str, work: Callable[[str], tuple[str, float, int]], endpoint: str, writers: int, args: Any) -> Result:
    user = f"{name}-{writers}-{uuid.uuid4().hex[:6]}"
    seed(endpoint, user, args.balance)
    with _CONTEXT.Pool(writers, initializer=_init_worker, initargs=(endpoint,)) as pool:
        pool.map(_noop, range(writers * 4))  # every worker started and warm before the clock runs
        start = time.perf_counter()
        answers = pool.map(work, [user] * args.requests, chunksize=1)
        seconds = time.perf_counter() - start
    return Result(
        name,
        writers,
        seconds,
        Counter(a[0] for a in answers),
        [a[1] for a in answers],
        sum(a[2] for a in answers),
    )


def _noop(_: int) -> None:
    time.sleep(0.01)


# ---- ours: the use_credits handler in container processes -----------------------------------------


def count_calls(module: ModuleType) -> None:
    """Container setup hook: report the DynamoDB calls each invocation made, in a response header
    (`x-bench-dynamodb-calls`: the calls by operation, as JSON)."""
    app: Any = module  # the handler's module: its attributes are the function's own
    calls: Counter[str] = Counter()

    def count(event_name: str, **_: Any) -> None:
        calls[event_name.rsplit(".", 1)[-1]] += 1

    app.ledger.client.meta.events.register("before-call.dynamodb", count)
    handler = app.lambda_handler

    def counted(event: dict[str, Any], context: Any) -> dict[str, Any]:
        calls.clear()
        response: dict[str, Any] = handler(event, context)
        response.setdefault("headers", {})["x-bench-dynamodb-calls"] = json.dumps(calls)
        return response

    app.lambda_handler = counted


def ours(endpoint: str, writers: int, args: Any, lots: int = 1) -> Result:
    """The use_credits handler; `lots` > 1: on an account whose credits are that many open lots."""
    from tests.support import http_event

    name = "ours" if lots == 1 else f"lots-{lots}"
    user = f"{name}-{writers}-{uuid.uuid4().hex[:6]}"
    if lots == 1:
        seed(endpoint, user, args.balance)
    else:
        seed_lots(Ledger(_plain_client(endpoint), TABLE), user, args.balance, lots)
    containers = start_containers("use_credits", writers, setup="benchmarks.contention:count_calls")
    idle: list[Any] = list(containers)
    lock = threading.Lock()
    operations: Counter[str] = Counter()

    def charge(i: int) -> tuple[str, float, int]:
        with lock:
            container = idle.pop()
        try:
            event = http_event(
                "POST", "/credits/use", sub=user, headers={"Idempotency-Key": f"bench-{i}"}, body={"action": "search"}
            )
            start = time.perf_counter()
            response = container.invoke(event)
            took = time.perf_counter() - start
        finally:
            with lock:
                idle.append(container)
        counts = json.loads(response["headers"]["x-bench-dynamodb-calls"])
        with lock:
            operations.update(counts)
        return str(response["statusCode"]), took, sum(counts.values())

    try:
        with ThreadPoolExecutor(writers) as pool:
            start = time.perf_counter()
            answers = list(pool.map(charge, range(args.requests)))
            seconds = time.perf_counter() - start
    finally:
        for container in containers:
            container.close()
    if args.verbose:
        print(f"{'':>7} {name}: DynamoDB calls by operation, per request:", end="")
        print("".join(f" {op} {n / args.requests:.2f}" for op, n in operations.most_common()))
    audit = Ledger(_plain_client(endpoint), TABLE).audit(user)
    if not audit.ok:
        raise SystemExit(f"the ledger of {user} is broken: {audit.problems}")
    return Result(
        name, writers, seconds, Counter(a[0] for a in answers), [a[1] for a in answers], sum(a[2] for a in answers)
    )


def _plain_client(endpoint: str) -> Any:
    import boto3

    return boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")


def seed(endpoint: str, user: str, balance: int) -> None:
    Ledger(_plain_client(endpoint), TABLE).grant(user, balance, type="gift", description="bench")


def seed_lots(ledger: Ledger, user: str, balance: int, lots: int = LOTS) -> None:
    """`balance` credits in `lots` open lots: `lots - 1` paid lots expiring a day apart from 30 days on
    (outside the expiry warning window: nothing is announced nor expires during a run) and one without
    expiry. The one that expires soonest is spent first and holds all but one credit of each other
    lot, so the account keeps its `lots` lots for every charge but the last `lots - 1`, and answers
    as many 200s and 402s as ours."""
    if balance < lots:
        raise ValueError(f"{lots} lots need a balance of at least {lots}")
    day_ms = 86_400_000
    now_ms = int(time.time() * 1000)
    for n in range(lots):
        expires = None if n == lots - 1 else now_ms + (30 + n) * day_ms
        credits = balance - (lots - 1) if n == 0 else 1
        terms = LotTerms(expires_at_ms=expires, label=f"bench lot {n + 1}")
        ledger.grant(user, credits, type="gift", description=f"bench lot {n + 1}", lot=terms)


# ---- cold start -------------------------------------------------------------------------------------

FLOOR = 'import boto3; boto3.client("dynamodb")'


def cold_start(code: str, runs: int, env: dict[str, str]) -> float:
    """Median seconds to run `code` in a fresh interpreter, minus an empty interpreter's start."""

    def timed(snippet: str) -> float:
        samples = []
        for _ in range(runs):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", snippet], check=True, env=env, cwd=ROOT)
            samples.append(time.perf_counter() - start)
        return statistics.median(samples)

    return timed(code) - timed("pass")


def environment(endpoint: str) -> dict[str, str]:
    """What a deployed function has (pointed at DynamoDB Local), for containers and cold starts."""
    return {
        "PYTHONPATH": f"{ROOT / 'shared'}:{ROOT}",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_ENDPOINT_URL_DYNAMODB": endpoint,
        "CREDITS_TABLE_NAME": TABLE,
        "IDEMPOTENCY_TABLE_NAME": "bench-idempotency",
        "ACTION_COSTS": default_action_costs(),
        "POWERTOOLS_SERVICE_NAME": "credits",
        "POWERTOOLS_METRICS_NAMESPACE": "Credits",
        "POWERTOOLS_METRICS_DISABLED": "true",
        # The table stays clean: the containers leave out Powertools' EMF lines and its "No application
        # metrics to publish" warning (local.containers.hide_metrics), which POWERTOOLS_METRICS_DISABLED
        # alone does not silence (Powertools 3.x still prints a metric set that reaches 100 values).
        SHOW_METRICS: "0",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_LOG_LEVEL": "ERROR",
    }


def cold_starts(endpoint: str, runs: int) -> None:
    env = {**os.environ, **environment(endpoint)}
    floor = cold_start(FLOOR, runs, env)
    print(f"\ncold start (median of {runs} fresh interpreters, interpreter start subtracted)")
    print(f"{'import':<32} {'ms':>6} {'x floor':>8}")
    print(f"{'boto3 + dynamodb client (floor)':<32} {floor * 1000:>6.0f} {1.0:>8.2f}")
    for function in ("use_credits", "balance"):
        # exactly what Lambda's runtime does: import the handler's module, nothing of the local stack
        code = (
            "import importlib.util; "
            f"spec = importlib.util.spec_from_file_location('app', 'functions/{function}/app.py'); "
            "spec.loader.exec_module(importlib.util.module_from_spec(spec))"
        )
        took = cold_start(code, runs, env)
        print(f"{function:<32} {took * 1000:>6.0f} {took / floor:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--balance", type=int, default=500)
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 8, 16, 32])
    parser.add_argument("--cold-start-runs", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--verbose", action="store_true", help="break our DynamoDB calls down by operation")
    args = parser.parse_args()
    if args.balance < LOTS:
        parser.error(f"--balance must be at least {LOTS}: the lots-{LOTS} account spreads it over {LOTS} lots")
    for variable in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
        os.environ.pop(variable, None)
    with DynamoDBLocal() as database:
        os.environ.update(environment(database.endpoint))  # containers start with it, as on a cold start
        client = database.client()
        create_tables(client, {"CreditsTable": TABLE, "IdempotencyTable": "bench-idempotency"})
        print(
            f"{args.requests} charges of 1 credit against a balance of {args.balance}, one user, "
            f"each writer a process ({os.cpu_count()} cores, DynamoDB Local)"
        )
        print(" writers way          req/s   200   402   503  p50 ms   p99 ms  calls/req")
        rows: list[dict[str, Any]] = []
        for writers in args.writers:
            results = [
                ours(database.endpoint, writers, args),
                ours(database.endpoint, writers, args, lots=LOTS),
                by_hand("serialize", _serialize, database.endpoint, writers, args),
                by_hand("seq-guard", _seq_guard, database.endpoint, writers, args),
            ]
            for result in results:
                print(result.row(), flush=True)
            one, many, floor, naive = results
            print(f"{'':>7} ours/serialize {one.rate / floor.rate:.2f}   ours/seq-guard {one.rate / naive.rate:.2f}")
            print(
                f"{'':>7} {many.name}/ours req/s {many.rate / one.rate:.2f}   calls/req {many.per / one.per:.2f}",
                flush=True,
            )
            rows += [
                {
                    "writers": writers,
                    "way": r.name,
                    "rate": r.rate,
                    "calls_per_request": r.per,
                    "outcomes": dict(r.outcomes),
                }
                for r in results
            ]
        cold_starts(database.endpoint, args.cold_start_runs)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
