"""What a queued charge costs in each shape group commit could take, by hand, against the audited floor.

`python -m benchmarks.queue_shapes [--writers 32] [--runs 3]`: in each run, the audited floor (as
`make bench` measures it), then the same 600 charges from 32 writer processes on one user:

- ledger:    `Ledger.charge` called in the worker processes (no handler): today's group commit
- removed:   today's shape by hand: per charge, the pass deletes the intent and writes its decision
             apart (`DECIDED#<id>`), its entry and its marker: 4 items
- in-place:  the pass writes the decision onto the intent and keeps a cursor on the account (the
             queue is what sorts after it), so nothing removes the intent: 3 items
- on-marker: the key's marker carries the decision (a refusal writes one too), the intent is never
             written again, cursor as above: 2 items

on-marker* is on-marker with an oracle no waiter on Lambda has: the benchmark's processes share,
outside the store, the cursor of the last committed pass and the lease's end, and a waiter looks
once a pass has committed past its intent (or the lease is free): what perfectly timed polls give.

Two more ways measure what the engine itself can serve from the same 32 writers, with no queue:

- apart:     each writer charges its own user with the floor's transaction (no contention at all):
             the most audited charges the engine serves at once
- put+poll:  each request only puts an intent and reads it back with the account (the consistent
             BatchGetItem a waiter polls with): the two calls every queued charge needs at least,
             before any pass writes its decision

The by-hand shapes write items of the sizes the ledger writes (the entry's and marker's attributes)
and read the intents' markers in each pass as the ledger does; they serve until the queue is empty.
They are measurements, not protocols: withdrawal, resent intents and expiry are left out (an intent
a pass passed over, because it landed behind the cursor, is withdrawn in place and queued again).
The reasoning and the results: docs/adr/0004-group-commit.md.
"""

from __future__ import annotations

import argparse
import os
import random
import time
import uuid
from collections import Counter
from typing import Any

from benchmarks import contention as bench
from local.dynamodb_local import DynamoDBLocal

SHAPES = {"removed": 4, "in-place": 3, "on-marker": 2}
WAYS = ["ledger", *SHAPES, "on-marker*", "apart", "put+poll"]
PER_PASS = 24  # as the ledger's MAX_INTENTS_PER_PASS
QUEUE = "ACCOUNT#INTENT#"
STAMP = "2026-12-07T13:26:54.168Z"
# what the ledger writes on an entry and a marker beyond their keys (a charge of 1 with an action)
ENTRY = {
    "type": {"S": "usage"},
    "description": {"S": "search"},
    "action": {"S": "search"},
    "created_at": {"S": STAMP},
    "low_balance_threshold": {"N": "10"},
    "draws": {"M": {"1": {"N": "1"}}},
    "moved": {"M": {"none": {"L": [{"N": "-1"}, {"N": "0"}, {"N": "0"}]}}},
    "month": {"S": "2026-12"},
}
MARKER = {"created_at": {"S": STAMP}, "expires_at": {"N": "1796822814"}, "fingerprint": {"S": "f" * 64}}

_client: Any = None
_ledger: Any = None
_calls = 0
_seen: Counter[str] = Counter()  # this request's polls, queueings again, passes and intents they decided
_shape = 4
_pass_ms = 100.0
_board: Any = None  # on-marker*: the last committed cursor and the lease's end, in shared memory
_board_until: Any = None


def _count(**_: Any) -> None:
    global _calls
    _calls += 1


def _init(endpoint: str, shape: int, board: Any = None, until: Any = None) -> None:
    global _client, _shape, _board, _board_until
    _board, _board_until = board, until
    import boto3
    from botocore.config import Config

    _shape = shape
    config = Config(user_agent="queue-shapes", parameter_validation=False)  # as the ledger's client
    _client = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1", config=config)
    _client.meta.events.register("before-call.dynamodb", _count)


def _init_ledger(endpoint: str) -> None:
    global _ledger
    os.environ["AWS_ENDPOINT_URL_DYNAMODB"] = endpoint
    from credits.aws import dynamodb_client
    from credits.ledger import Ledger

    _ledger = Ledger(dynamodb_client(), bench.TABLE)
    _ledger.client.meta.events.register("before-call.dynamodb", _count)


def _by_ledger(user: str) -> tuple[str, float, int, Counter[str]]:
    from credits.errors import InsufficientCredits
    from credits.ledger import Idempotency

    global _calls
    _calls, start = 0, time.perf_counter()
    try:
        _ledger.charge(
            user, 1, description="search", idempotency=Idempotency(uuid.uuid4().hex, "f" * 64), action="search"
        )
        outcome = "200"
    except InsufficientCredits:
        outcome = "402"
    return outcome, time.perf_counter() - start, _calls, Counter()


def _put(pk: dict[str, str], sk: str, fields: dict[str, Any]) -> dict[str, Any]:
    item = {"pk": pk, "sk": {"S": sk}, **fields}
    return {"Put": {"TableName": bench.TABLE, "Item": item, "ConditionExpression": "attribute_not_exists(pk)"}}


def _decisions(pk: dict[str, str], intent: dict[str, Any], seq: int | None, balance: int) -> list[dict[str, Any]]:
    """The items a pass writes for one intent: `seq` None is a refusal."""
    outcome = {"S": "402" if seq is None else "200"}
    key, sk = intent["key"]["S"], intent["sk"]["S"]
    writes = []
    if seq is not None:
        entry = {"id": {"S": str(uuid.uuid4())}, "seq": {"N": str(seq)}, "amount": {"N": "-1"}}
        writes.append(_put(pk, f"TX#{seq:012d}", {**entry, "balance_after": {"N": str(balance)}, **ENTRY}))
    if seq is not None or _shape == 2:
        writes.append(_put(pk, f"IDEM#{key}", {**MARKER, "outcome": outcome, "seq": {"N": str(seq or 0)}}))
    if _shape == 3:
        condition = "attribute_exists(pk) AND attribute_not_exists(withdrawn) AND attribute_not_exists(outcome)"
        update = {"Key": {"pk": pk, "sk": {"S": sk}}, "UpdateExpression": "SET outcome = :o"}
        values = {"ExpressionAttributeValues": {":o": outcome}}
        writes.append({"Update": {"TableName": bench.TABLE, **update, "ConditionExpression": condition, **values}})
    if _shape == 4:
        key_of = {"pk": pk, "sk": {"S": sk}}
        writes.append(
            {"Delete": {"TableName": bench.TABLE, "Key": key_of, "ConditionExpression": "attribute_exists(pk)"}}
        )
        writes.append(_put(pk, f"DECIDED#{intent['id']['S']}", {**MARKER, "outcome": outcome}))
    return writes


def _queued(pk: dict[str, str], cursor: str) -> list[dict[str, Any]]:
    """The queue after the cursor (today's shape: the whole queue, decided intents being removed),
    and the markers and decisions the intents name, read as the ledger reads them."""
    low = QUEUE if _shape == 4 else cursor + " "  # every intent key sorts after `cursor + " "`
    values = {":pk": pk, ":lo": {"S": low}, ":hi": {"S": QUEUE + "~"}}
    condition = "pk = :pk AND sk BETWEEN :lo AND :hi"
    found = _client.query(
        TableName=bench.TABLE,
        KeyConditionExpression=condition,
        ExpressionAttributeValues=values,
        ConsistentRead=True,
        Limit=PER_PASS,
    )["Items"]
    intents = [i for i in found if "withdrawn" not in i]
    if intents:
        keys = [
            {"pk": pk, "sk": {"S": f"{p}{i[f]['S']}"}}
            for i in intents
            for p, f in (("IDEM#", "key"), ("DECIDED#", "id"))
        ]
        _client.batch_get_item(RequestItems={bench.TABLE: {"Keys": keys, "ConsistentRead": True}})
    return intents


def _serve(pk: dict[str, str], me: str, account: dict[str, Any]) -> None:
    """The combiner: a pass after another until the queue is empty (or the lease is lost)."""
    last_pass_ms = 0.0  # how long our last pass took, sent to answered (first pass: three times its reads)
    while True:
        balance, seq = int(account["balance"]["N"]), int(account["seq"]["N"])
        cursor = account.get("cursor", {"S": QUEUE})["S"]
        began = time.perf_counter()
        intents = _queued(pk, cursor)
        if not intents:
            release = {"UpdateExpression": "REMOVE combiner", "ConditionExpression": "combiner = :me"}
            _client.update_item(
                TableName=bench.TABLE,
                Key={"pk": pk, "sk": {"S": "ACCOUNT"}},
                **release,
                ExpressionAttributeValues={":me": {"S": me}},
            )
            if _board_until is not None:
                _board_until.value = 0.0
            return
        writes: list[dict[str, Any]] = []
        new_balance, new_seq = balance, seq
        for intent in intents:
            if new_balance >= 1:
                new_balance, new_seq = new_balance - 1, new_seq + 1
                writes += _decisions(pk, intent, new_seq, new_balance)
            else:
                writes += _decisions(pk, intent, None, new_balance)
        _seen.update(passes=1, decided=len(intents))
        new_cursor = intents[-1]["sk"]["S"]
        expression = "SET balance = :b, seq = :s, #c = :c, combiner_until = :u, pass_ms = :pm"
        values = {
            ":b": {"N": str(new_balance)},
            ":s": {"N": str(new_seq)},
            ":c": {"S": new_cursor},
            ":u": {"N": str(time.time() + 3)},
            ":pm": {"N": f"{last_pass_ms or (time.perf_counter() - began) * 3000:.0f}"},  # the last pass's
            ":expected": {"N": str(seq)},
            ":me": {"S": me},
        }
        guard = {
            "TableName": bench.TABLE,
            "Key": {"pk": pk, "sk": {"S": "ACCOUNT"}},
            "UpdateExpression": expression,
            "ConditionExpression": "seq = :expected AND combiner = :me",
            "ExpressionAttributeNames": {"#c": "cursor"},
            "ExpressionAttributeValues": values,
        }
        try:
            _client.transact_write_items(
                TransactItems=[{"Update": guard}, *writes], ClientRequestToken=str(uuid.uuid4())
            )
        except _client.exceptions.TransactionCanceledException:
            account = _client.get_item(
                TableName=bench.TABLE, Key={"pk": pk, "sk": {"S": "ACCOUNT"}}, ConsistentRead=True
            )["Item"]
            if account.get("combiner", {}).get("S") != me:
                return
            continue
        account = {**account, "balance": values[":b"], "seq": values[":s"], "cursor": values[":c"]}
        if _board is not None:
            _board.value, _board_until.value = new_cursor.encode(), time.time() + 3
        last_pass_ms = (time.perf_counter() - began) * 1000


def _charge(user: str) -> tuple[str, float, int, Counter[str]]:
    """A waiter: queue an intent, look for its decision (with the account) from 2.5 passes after,
    then every half pass; take the lease when nobody holds it."""
    global _calls, _pass_ms
    _calls, start = 0, time.perf_counter()
    _seen.clear()
    pk, key = {"S": f"USER#{user}"}, uuid.uuid4().hex
    account_key = {"pk": pk, "sk": {"S": "ACCOUNT"}}
    while True:  # once per queueing (again only when a pass passed over our intent)
        sk, intent_id = _put_intent(pk, key)
        decision = {2: f"IDEM#{key}", 3: sk, 4: f"DECIDED#{intent_id}"}[_shape]
        mine = {"pk": pk, "sk": {"S": decision}}
        if _board is None:
            time.sleep(_pass_ms * 2.5 / 1000)
        while True:
            _wait_on_board(sk)
            read = _client.batch_get_item(
                RequestItems={bench.TABLE: {"Keys": [mine, account_key], "ConsistentRead": True}}
            )
            _seen["polls"] += 1
            found = {i["sk"]["S"]: i for i in read["Responses"][bench.TABLE]}
            account = found["ACCOUNT"]
            _pass_ms = min(max(float(account.get("pass_ms", {"N": "100"})["N"]), 40.0), 400.0)
            if "outcome" in found.get(decision, {}):
                return found[decision]["outcome"]["S"], time.perf_counter() - start, _calls, Counter(_seen)
            if _shape != 4 and account.get("cursor", {"S": ""})["S"] >= sk and _passed_over(pk, sk, mine):
                _seen["requeued"] += 1
                break
            if "combiner" not in account or float(account["combiner_until"]["N"]) < time.time():
                owner = _lease(account_key)
                if owner is not None:
                    _serve(pk, owner, account)
                    continue
            time.sleep(random.uniform(0.4, 0.6) * _pass_ms / 1000 if _board is None else 0.005)


def _put_intent(pk: dict[str, str], key: str) -> tuple[str, str]:
    """Queue an intent (of the ledger's size) under the idempotency key `key`: its sort key and id."""
    intent_id = uuid.uuid4().hex
    sk = f"{QUEUE}{int(time.time() * 1000):013d}#{intent_id}"
    item = {"pk": pk, "sk": {"S": sk}, "key": {"S": key}, "id": {"S": intent_id}, **ENTRY}
    _client.put_item(TableName=bench.TABLE, Item=item, ConditionExpression="attribute_not_exists(pk)")
    return sk, intent_id


def _wait_on_board(sk: str) -> None:
    """on-marker*: an oracle no waiter on Lambda has: wait, outside the store, until a pass committed
    a cursor at or past our intent, or no combiner holds the lease; then one read finds the decision
    (or takes the lease). It bounds what perfectly timed polls would give the shape."""
    if _board is None:
        return
    mark = sk.encode()
    while _board.value < mark and _board_until.value >= time.time():
        time.sleep(0.005)


def _lease(account_key: dict[str, Any]) -> str | None:
    """The lease's owner id when we took it; None when a live combiner holds it."""
    owner = uuid.uuid4().hex
    now = time.time()
    values = {":me": {"S": owner}, ":u": {"N": str(now + 3)}, ":now": {"N": str(now)}}
    try:
        _client.update_item(
            TableName=bench.TABLE,
            Key=account_key,
            UpdateExpression="SET combiner = :me, combiner_until = :u",
            ConditionExpression="attribute_not_exists(combiner) OR combiner_until < :now",
            ExpressionAttributeValues=values,
        )
    except _client.exceptions.ConditionalCheckFailedException:
        return None
    if _board_until is not None:
        _board_until.value = now + 3
    return owner


def _passed_over(pk: dict[str, str], sk: str, mine: dict[str, Any]) -> bool:
    """Our intent is behind the cursor: a pass read past it before it landed (a batch read is not a
    snapshot, so it may also have been decided just now). True: withdrawn, to be queued again."""
    if _shape == 2:  # the intent is never written again: its decision is on the marker
        return "outcome" not in _client.get_item(TableName=bench.TABLE, Key=mine, ConsistentRead=True).get("Item", {})
    try:
        _client.update_item(
            TableName=bench.TABLE,
            Key={"pk": pk, "sk": {"S": sk}},
            UpdateExpression="SET withdrawn = :t",
            ConditionExpression="attribute_not_exists(outcome)",
            ExpressionAttributeValues={":t": {"BOOL": True}},
        )
    except _client.exceptions.ConditionalCheckFailedException:
        return False  # decided: the next read finds it
    return True


def _init_apart(endpoint: str, user: str, balance: int) -> None:
    bench._init_worker(endpoint)
    mine = f"{user}-{os.getpid()}"
    _seed(endpoint, mine, balance)
    bench._seqs[mine] = 0  # as seeded: no read of the account while the clock runs


def _apart(user: str) -> tuple[str, float, int, Counter[str]]:
    """The floor's transaction, from a writer that is alone on its own user."""
    outcome, seconds, calls = bench._audited(f"{user}-{os.getpid()}")
    return outcome, seconds, calls, Counter()


def _put_poll(user: str) -> tuple[str, float, int, Counter[str]]:
    """The least a queued charge costs the store before its pass: its intent's put and one poll."""
    global _calls
    _calls, start = 0, time.perf_counter()
    pk = {"S": f"USER#{user}"}
    sk, _ = _put_intent(pk, uuid.uuid4().hex)
    keys = [{"pk": pk, "sk": {"S": sk}}, {"pk": pk, "sk": {"S": "ACCOUNT"}}]
    _client.batch_get_item(RequestItems={bench.TABLE: {"Keys": keys, "ConsistentRead": True}})
    return "200", time.perf_counter() - start, _calls, Counter()


def _seed(endpoint: str, user: str, balance: int) -> None:
    account = {"pk": {"S": f"USER#{user}"}, "sk": {"S": "ACCOUNT"}, "balance": {"N": str(balance)}, "seq": {"N": "0"}}
    bench._plain_client(endpoint).put_item(TableName=bench.TABLE, Item=account)


def run(endpoint: str, writers: int, args: Any, shape: str) -> tuple[bench.Result, Counter[str]]:
    user = f"{shape}-{writers}-{uuid.uuid4().hex[:6]}"
    if shape == "ledger":
        bench.seed(endpoint, user, args.balance)
        init, initargs, work = _init_ledger, (endpoint,), _by_ledger
    elif shape == "apart":  # every writer has enough for every charge it could be given
        init, initargs, work = _init_apart, (endpoint, user, args.requests), _apart  # type: ignore[assignment]
    else:
        _seed(endpoint, user, args.balance)
        init, initargs, work = _init, (endpoint, SHAPES.get(shape, 2)), _charge  # type: ignore[assignment]
        if shape == "on-marker*":
            initargs += (bench._CONTEXT.RawArray("c", 96), bench._CONTEXT.RawValue("d", 0.0))
        elif shape == "put+poll":
            work = _put_poll
    with bench._CONTEXT.Pool(writers, initializer=init, initargs=initargs) as pool:
        pool.map(bench._noop, range(writers * 4))
        busy, start = bench.machine_busy(), time.perf_counter()
        answers = pool.map(work, [user] * args.requests, chunksize=1)
        seconds, busy = time.perf_counter() - start, bench.machine_busy() - busy
    outcomes, seen = Counter(a[0] for a in answers), sum((a[3] for a in answers), Counter())
    calls = sum(a[2] for a in answers)
    return bench.Result(shape, writers, seconds, outcomes, [a[1] for a in answers], calls, busy), seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--balance", type=int, default=500)
    parser.add_argument("--writers", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--shapes", nargs="+", default=WAYS, choices=WAYS)
    args = parser.parse_args()
    for variable in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
        os.environ.pop(variable, None)
    with DynamoDBLocal() as database:
        os.environ.update(bench.environment(database.endpoint))
        bench.create_tables(database.client(), {"CreditsTable": bench.TABLE, "IdempotencyTable": "bench-idempotency"})
        bench.by_hand("audited", bench._audited, database.endpoint, 1, args)  # warm the JVM first
        print(f"{args.requests} charges of 1 against {args.balance}, {args.writers} writers: rate, ratio to the floor")
        for _ in range(args.runs):
            floor = bench.by_hand("audited", bench._audited, database.endpoint, 1, args)
            cells = [f"floor {floor.rate:.0f}/s"]
            for shape in args.shapes:
                r, seen = run(database.endpoint, args.writers, args, shape)
                cell = f"{shape} {r.rate:.0f}/s {r.rate / floor.rate:.2f} ({r.answers}, {r.per:.2f} calls"
                if seen["passes"]:
                    n = args.requests
                    cell += f"; polls {seen['polls'] / n:.2f}, queued again {seen['requeued'] / n:.2f}"
                    cell += f", {seen['passes']} passes of {seen['decided'] / seen['passes']:.1f} intents"
                cells.append(cell + ")")
            print(" | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
