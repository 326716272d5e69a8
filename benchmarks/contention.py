"""`make bench`: one hot balance on DynamoDB Local, and the cold start, against floors measured in the same run.

Contention: for 1, 8, 16 and 32 writers, N charges of 1 credit against a balance smaller than N on
ONE user, each request with its own Idempotency-Key, every writer its own PROCESS (as Lambda runs
containers). The ways, side by side:

- audited:      THE FLOOR ("audited serial floor"): one writer, back to back, one TransactWriteItems
                of the account (guarded), its entry and its idempotency marker, no contention: what
                a perfect lock around the account would give (measured once per run)
- ours:         POST /credits/use through the use_credits handler (group commit under contention),
                on an account whose credits are one lot
- lots-20:      ours, on an account whose credits are 20 open lots (`seed_lots`): the cost of lots
- update:       a single-item conditional UpdateItem by hand (no ledger, no markers): reference only,
                no design that keeps the ledger's invariants writes one item per charge
- seq-guard:    read + seq-guarded transaction (account, entry, idempotency marker) by hand, each
                writer retrying alone: the naive design

Every way runs `--runs` times (3): the table shows the median rate with the spread (lowest-highest),
the outcomes (200/402/503) of every run, p50/p99 latency and DynamoDB calls per request of the
median run; then ours as a ratio of the audited floor and of the seq-guard in each run, and
lots-20 as a ratio of ours. `--profile` breaks ours down at the most writers: DynamoDB calls per
charge by kind and each kind's time from sending to answer, items per combiner pass and how often
a pass starts, time spent waiting, and CPU per charge in the handler
(resolver, validation, logging, metrics), in the ledger, in the DynamoDB client and in DynamoDB
Local, and the whole machine's CPU per charge beside the floor's. Cold start: importing each
handler in a fresh interpreter (median of 7), and the instructions it executes (valgrind, counted
once), each as a ratio of `import boto3; boto3.client("dynamodb")` measured the same way.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import re
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "shared"))
sys.path.insert(0, str(ROOT))

from benchmarks.built import FUNCTIONS, IMPORT_HANDLER, built, lambda_environment  # noqa: E402
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
    busy: float = 0.0  # CPU seconds the whole machine (every process) was busy while the clock ran

    @property
    def rate(self) -> float:
        return sum(self.outcomes.values()) / self.seconds

    @property
    def per(self) -> float:
        """DynamoDB calls per request."""
        return self.calls / max(sum(self.outcomes.values()), 1)

    @property
    def answers(self) -> str:
        return f"{self.outcomes['200']}/{self.outcomes['402']}/{self.outcomes['503']}"


@dataclass
class Runs:
    """One way at one writer count, run `--runs` times."""

    runs: list[Result]

    @property
    def median(self) -> Result:
        return sorted(self.runs, key=lambda r: r.rate)[len(self.runs) // 2]

    def row(self) -> str:
        median = self.median
        rates = [r.rate for r in self.runs]
        ordered = sorted(median.latencies)
        p50 = ordered[len(ordered) // 2] * 1000
        p99 = ordered[max(int(len(ordered) * 0.99) - 1, 0)] * 1000
        spread = f"{min(rates):.0f}-{max(rates):.0f}"
        answers = " ".join(dict.fromkeys(r.answers for r in self.runs))  # once when every run agrees
        return (
            f"{median.writers:>7} {median.name:<10} {median.rate:>6.0f} {spread:>9} {answers:>13}"
            f" {p50:>7.0f} {p99:>7.0f} {median.per:>6.1f}"
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


def _update(user: str) -> tuple[str, float, int]:
    """Reference only: ONE conditional UpdateItem, no ledger, no markers."""
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


_seqs: dict[str, int] = {}


def _audited(user: str) -> tuple[str, float, int]:
    """The audited serial floor: the only writer, so it knows the account's seq (read once, before
    the clock runs): ONE TransactWriteItems of the account (guarded by seq and balance), the entry and
    the idempotency marker per charge; refused (402) when the balance does not cover it."""
    global _calls
    pk = {"S": f"USER#{user}"}
    if user not in _seqs:
        account = _client.get_item(TableName=TABLE, Key={"pk": pk, "sk": {"S": "ACCOUNT"}}, ConsistentRead=True)
        _seqs[user] = int(account["Item"]["seq"]["N"])
    _calls = 0
    start = time.perf_counter()
    seq = _seqs[user]
    try:
        _client.transact_write_items(TransactItems=_charge_items(pk, seq, uuid.uuid4().hex))
    except _client.exceptions.TransactionCanceledException:
        return "402", time.perf_counter() - start, _calls
    _seqs[user] = seq + 1
    return "200", time.perf_counter() - start, _calls


def _charge_items(pk: dict[str, str], seq: int, key: str) -> list[dict[str, Any]]:
    """A charge of 1 as the ledger writes it: the account (guarded by seq and balance), the entry
    `TX#<seq + 1>` and the idempotency marker, each written once."""
    return [
        {
            "Update": {
                "TableName": TABLE,
                "Key": {"pk": pk, "sk": {"S": "ACCOUNT"}},
                "UpdateExpression": "SET balance = balance - :one, seq = :s",
                "ConditionExpression": "seq = :expected AND balance >= :one",
                "ExpressionAttributeValues": {
                    ":one": {"N": "1"},
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
            _client.transact_write_items(TransactItems=_charge_items(pk, seq, key))
            return "200", time.perf_counter() - start, _calls
        except _client.exceptions.TransactionCanceledException:
            time.sleep(random.uniform(0, min(0.2, 0.004 * 2**attempt)))
    return "503", time.perf_counter() - start, _calls


def by_hand(name: str, work: Callable[[str], tuple[str, float, int]], endpoint: str, writers: int, args: Any) -> Result:
    user = f"{name}-{writers}-{uuid.uuid4().hex[:6]}"
    seed(endpoint, user, args.balance)
    with _CONTEXT.Pool(writers, initializer=_init_worker, initargs=(endpoint,)) as pool:
        pool.map(_noop, range(writers * 4))  # every worker started and warm before the clock runs
        busy, start = machine_busy(), time.perf_counter()
        answers = pool.map(work, [user] * args.requests, chunksize=1)
        seconds, busy = time.perf_counter() - start, machine_busy() - busy
    return Result(
        name,
        writers,
        seconds,
        Counter(a[0] for a in answers),
        [a[1] for a in answers],
        sum(a[2] for a in answers),
        busy,
    )


def _noop(_: int) -> None:
    time.sleep(0.01)


# ---- ours: the use_credits handler in container processes -----------------------------------------


# Which part of the ledger made a DynamoDB call: the innermost of these functions on the stack.
CALL_KINDS = {
    "decide_and_write": "direct",
    "_remember": "direct: refusal marker",
    "run": "limit note",
    "put_intent": "intent put",
    "wait": "poll",
    "_decided": "poll",
    "outcome": "poll",
    "take_lease": "lease",
    "renew_lease": "lease",
    "release_lease": "lease",
    "queued": "pass: query",
    "markers": "pass: markers",
    "combine": "pass: transaction",
    "withdraw": "withdraw",
}
PROFILE_HEADER = "x-bench-profile"


def _kind(operation: str) -> str:
    frame = sys._getframe(2)
    while frame is not None:
        kind = CALL_KINDS.get(frame.f_code.co_name)
        if kind is not None and "credits/ledger/" in frame.f_code.co_filename:
            if kind == "direct":
                return "direct: read" if operation in ("GetItem", "BatchGetItem") else "direct: transaction"
            return kind
        frame = frame.f_back  # type: ignore[assignment]
    return "other"


def instrument(module: ModuleType) -> None:
    """Container setup hook: report what each invocation cost in a response header (`x-bench-profile`,
    JSON): DynamoDB calls by kind and by operation, the items of each combiner pass, seconds slept waiting, and CPU
    seconds in the whole handler, in the ledger, and in the DynamoDB client (building, sending and
    parsing requests)."""
    app: Any = module  # the handler's module: its attributes are the function's own
    seen: dict[str, Any] = {}
    client = app.ledger.client

    def before(model: Any, params: dict[str, Any], **_: Any) -> None:
        kind = _kind(model.name)
        seen["kinds"][kind] = seen["kinds"].get(kind, 0) + 1
        seen["kind"], seen["sent"] = kind, time.perf_counter()
        seen["operations"][model.name] = seen["operations"].get(model.name, 0) + 1
        if kind == "pass: transaction":
            seen["items"].append(len(params["TransactItems"]))
        seen["started"] = time.process_time()

    def after(**_: Any) -> None:
        seen["boto"] += time.process_time() - seen.pop("started", time.process_time())
        kind = seen.pop("kind", "other")
        seen["wall"][kind] = seen["wall"].get(kind, 0.0) + time.perf_counter() - seen.pop("sent", time.perf_counter())

    client.meta.events.register("before-parameter-build.dynamodb", before)
    client.meta.events.register("after-call.dynamodb", after)
    sleep = app.ledger.sleep

    def counted_sleep(seconds: float) -> None:
        seen["slept"] += seconds
        sleep(seconds)

    app.ledger.sleep = counted_sleep
    charge = app.ledger.charge

    def timed_charge(*args: Any, **kwargs: Any) -> Any:
        started = time.process_time()
        try:
            return charge(*args, **kwargs)
        finally:
            seen["ledger"] += time.process_time() - started

    app.ledger.charge = timed_charge
    handler = app.lambda_handler

    def profiled(event: dict[str, Any], context: Any) -> dict[str, Any]:
        seen.update(kinds={}, operations={}, items=[], slept=0.0, boto=0.0, ledger=0.0, wall={})
        started = time.process_time()
        response: dict[str, Any] = handler(event, context)
        report = {key: seen[key] for key in ("kinds", "operations", "items", "slept", "boto", "ledger", "wall")}
        report["cpu"] = time.process_time() - started
        response.setdefault("headers", {})[PROFILE_HEADER] = json.dumps(report)
        return response

    app.lambda_handler = profiled


def machine_busy() -> float:
    """CPU seconds every core of this machine has spent busy so far (any process: our containers, the
    benchmark itself, DynamoDB Local): /proc/stat without idle and iowait."""
    fields = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(fields[:8]) - fields[3] - fields[4]  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """CPU seconds a process (all its threads) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Profile:
    """What ours cost per charge in one run (the containers' reports, and DynamoDB Local's CPU)."""

    requests: int
    kinds: Counter[str]
    items: list[int]
    slept: float
    cpu: float
    ledger: float
    boto: float
    database_cpu: float
    wall: Counter[str] = field(default_factory=Counter)  # seconds from sending each call to its parsed answer, by kind
    seconds: float = 0.0  # the run's

    def print(self, writers: int) -> None:
        n = self.requests
        print(f"\nprofile: ours, {writers} writers, per charge (one run)")
        calls = sum(self.kinds.values())
        kinds = ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(self.kinds.items()))
        print(f"  DynamoDB calls: {calls / n:.2f}: {kinds}")
        if self.items:
            per_pass = statistics.mean(self.items)
            print(f"  combiner passes: {len(self.items)}, {per_pass:.0f} items each (largest {max(self.items)})")
            # against the next line's `pass: ` calls: the time between the starts of two passes
            print(f"  a pass every {self.seconds / len(self.items) * 1000:.0f} ms (the run's length over its passes)")
        if self.kinds:
            waits = ", ".join(f"{k} {self.wall[k] / v * 1000:.1f}" for k, v in sorted(self.kinds.items()))
            print(f"  DynamoDB call, sent to answered, ms: {waits}")
        print(f"  waiting (asleep between polls): {self.slept / n * 1000:.0f} ms")
        handler = self.cpu - self.ledger
        rules = self.ledger - self.boto
        print(
            f"  CPU: handler {self.cpu / n * 1000:.1f} ms (resolver, validation, logging, metrics"
            f" {handler / n * 1000:.1f}; ledger rules {rules / n * 1000:.1f}; DynamoDB client"
            f" {self.boto / n * 1000:.1f}); DynamoDB Local {self.database_cpu / n * 1000:.1f} ms"
        )


def ours(endpoint: str, writers: int, args: Any, lots: int = 1, database_pid: int = 0) -> tuple[Result, Profile]:
    """The use_credits handler; `lots` > 1: on an account whose credits are that many open lots."""
    from tests.support import http_event

    name = "ours" if lots == 1 else f"lots-{lots}"
    user = f"{name}-{writers}-{uuid.uuid4().hex[:6]}"
    if lots == 1:
        seed(endpoint, user, args.balance)
    else:
        seed_lots(Ledger(_plain_client(endpoint), TABLE), user, args.balance, lots)
    containers = start_containers("use_credits", writers, setup="benchmarks.contention:instrument")
    # Each container warm, as a hot user's containers are after their first request: what a route
    # builds on first use (its request model) is paid before the clock runs, on another account.
    warm = f"warm-{uuid.uuid4().hex[:6]}"
    seed(endpoint, warm, writers)
    for n, container in enumerate(containers):
        body = {"action": "search"}
        container.invoke(http_event("POST", "/credits/use", sub=warm, headers={"Idempotency-Key": f"w-{n}"}, body=body))
    idle: list[Any] = list(containers)
    lock = threading.Lock()
    profile = Profile(args.requests, Counter(), [], 0.0, 0.0, 0.0, 0.0, 0.0)

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
        report = json.loads(response["headers"][PROFILE_HEADER])
        with lock:
            profile.kinds.update(report["kinds"])
            profile.items.extend(report["items"])
            profile.slept += report["slept"]
            profile.cpu += report["cpu"]
            profile.ledger += report["ledger"]
            profile.boto += report["boto"]
            profile.wall.update(report["wall"])
        return str(response["statusCode"]), took, sum(report["kinds"].values())

    try:
        with ThreadPoolExecutor(writers) as pool:
            database_cpu = _cpu_seconds(database_pid) if database_pid else 0.0
            busy, start = machine_busy(), time.perf_counter()
            answers = list(pool.map(charge, range(args.requests)))
            seconds, busy = time.perf_counter() - start, machine_busy() - busy
            profile.seconds = seconds
            profile.database_cpu = _cpu_seconds(database_pid) - database_cpu if database_pid else 0.0
    finally:
        for container in containers:
            container.close()
    audit = Ledger(_plain_client(endpoint), TABLE).audit(user)
    if not audit.ok:
        raise SystemExit(f"the ledger of {user} is broken: {audit.problems}")
    outcomes, latencies = Counter(a[0] for a in answers), [a[1] for a in answers]
    result = Result(name, writers, seconds, outcomes, latencies, sum(a[2] for a in answers), busy)
    return result, profile


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
    """Each handler imported as Lambda imports it once `sam build` built it (benchmarks/built.py: the
    function's directory, then the layer with its dependencies, all compiled; no bytecode written),
    and the floor in the same layout (the layer's boto3). The rounds interleave the three, so a slow
    spell of the machine hits each alike. Then the instructions each executes, counted once by
    valgrind (callgrind): the same count on a busy machine or an idle one, where the times of one
    import vary by a third from one interpreter to the next."""
    env = {**os.environ, **environment(endpoint)}
    samples: dict[str, list[float]] = {"pass": [], "floor": [], **{f: [] for f in FUNCTIONS}}
    with built(ROOT, dependencies=True) as tmp:
        ways = {
            "pass": ("pass", lambda_environment(tmp)),
            "floor": (FLOOR, lambda_environment(tmp)),
            **{f: (IMPORT_HANDLER, lambda_environment(tmp, f)) for f in FUNCTIONS},
        }
        for _ in range(runs):
            for way, (code, overlay) in ways.items():
                start = time.perf_counter()
                subprocess.run([sys.executable, "-c", code], check=True, env={**env, **overlay}, cwd=tmp)
                samples[way].append(time.perf_counter() - start)
        counted = {way: instructions(code, {**env, **overlay}, tmp) for way, (code, overlay) in ways.items()}
    start_up = statistics.median(samples["pass"])
    floor = statistics.median(samples["floor"]) - start_up
    base = counted["floor"] - counted["pass"]
    print(
        f"\ncold start, as built for Lambda (median of {runs} fresh interpreters, interpreter start subtracted;"
        " instructions counted once)"
    )
    print(f"{'import':<32} {'ms':>6} {'x floor':>8} {'M instructions':>15} {'x floor':>8}")
    print(f"{'boto3 + dynamodb client (floor)':<32} {floor * 1000:>6.0f} {1.0:>8.2f} {base / 1e6:>15.0f} {1.0:>8.2f}")
    for function in FUNCTIONS:
        took, executed = statistics.median(samples[function]) - start_up, counted[function] - counted["pass"]
        print(
            f"{function:<32} {took * 1000:>6.0f} {took / floor:>8.2f} {executed / 1e6:>15.0f} {executed / base:>8.2f}"
        )


def instructions(code: str, env: dict[str, str], cwd: Path) -> int:
    """The instructions a fresh interpreter executes to run `code`, as valgrind's callgrind counts them."""
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-c", code]
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"valgrind printed no instruction count: {done.stderr[-500:]}")
    return int(found.group(1))


def contention(database: DynamoDBLocal, writers: int, args: Any, audited: Runs) -> list[Runs]:
    """Every way at `writers`, `--runs` times, interleaved (a slow spell of the machine hits each
    way alike); the audited floor's runs are the round's own."""
    endpoint, pid = database.endpoint, database.process.pid if database.process else 0
    rows: dict[str, list[Result]] = {"ours": [], f"lots-{LOTS}": [], "update": [], "seq-guard": []}
    profiles: list[Profile] = []
    for _ in range(args.runs):
        result, profile = ours(endpoint, writers, args, database_pid=pid)
        rows["ours"].append(result)
        profiles.append(profile)
        rows[f"lots-{LOTS}"].append(ours(endpoint, writers, args, lots=LOTS)[0])
        rows["update"].append(by_hand("update", _update, endpoint, writers, args))
        rows["seq-guard"].append(by_hand("seq-guard", _seq_guard, endpoint, writers, args))
    runs = {name: Runs(results) for name, results in rows.items()}
    for name in ("ours", f"lots-{LOTS}", "update", "seq-guard"):
        print(runs[name].row(), flush=True)
    floors = [r.rate for r in audited.runs]
    ours_rates = [r.rate for r in rows["ours"]]
    naive = [r.rate for r in rows["seq-guard"]]
    print(
        f"{'':>7} ours / audited floor: {' '.join(f'{o / f:.2f}' for o, f in zip(ours_rates, floors, strict=True))}"
        f"   ours / seq-guard: {' '.join(f'{o / n:.2f}' for o, n in zip(ours_rates, naive, strict=True))}"
        f"   lots-{LOTS} / ours: {runs[f'lots-{LOTS}'].median.rate / runs['ours'].median.rate:.2f}",
        flush=True,
    )
    if args.profile and writers == max(args.writers):
        sorted(zip(ours_rates, profiles, strict=True), key=lambda pair: pair[0])[len(profiles) // 2][1].print(writers)
        print(budget(audited.median, runs["ours"].median))
    return list(runs.values())


def budget(floor: Result, ours: Result) -> str:
    """The machine's CPU per charge (every process) in the median run of the audited floor and of
    ours, and how fast ours could go with every core busy: what this machine allows, whatever the
    waiting does."""
    cores = os.cpu_count() or 1

    def per(r: Result) -> float:
        return r.busy / max(sum(r.outcomes.values()), 1)

    def share(r: Result) -> float:
        return r.busy / r.seconds / cores * 100

    ceiling = cores / per(ours) if per(ours) else 0.0
    return (
        f"  machine CPU per charge (every process): audited floor {per(floor) * 1000:.1f} ms"
        f" ({share(floor):.0f}% of {cores} cores busy), ours {per(ours) * 1000:.1f} ms ({share(ours):.0f}% busy);"
        f" every core busy, ours would reach {ceiling:.0f}/s = {ceiling / floor.rate:.2f}x the floor"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--balance", type=int, default=500)
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 8, 16, 32])
    parser.add_argument("--runs", type=int, default=3, help="runs of each way (the median is shown)")
    parser.add_argument("--cold-start-runs", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--profile", action="store_true", help="break ours down at the most writers")
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
            f"{args.requests} charges of 1 credit against a balance of {args.balance}, one user, each writer "
            f"a process ({os.cpu_count()} cores, DynamoDB Local); median of {args.runs} runs and the spread"
        )
        # DynamoDB Local's JVM compiles its hot paths over the first thousands of calls (at first a
        # call costs it three times the CPU): one run of each kind of work before the clock runs.
        by_hand("audited", _audited, database.endpoint, 1, args)
        ours(database.endpoint, max(args.writers), args)
        print(" writers way          req/s    spread   200/402/503  p50 ms  p99 ms  calls")
        audited = Runs([by_hand("audited", _audited, database.endpoint, 1, args) for _ in range(args.runs)])
        print(audited.row(), flush=True)
        rows: list[dict[str, Any]] = []
        for runs in [audited, *(r for writers in args.writers for r in contention(database, writers, args, audited))]:
            rows += [
                {"writers": r.writers, "way": r.name, "rate": r.rate, "calls": r.per, "outcomes": dict(r.outcomes)}
                for r in runs.runs
            ]
        cold_starts(database.endpoint, args.cold_start_runs)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
