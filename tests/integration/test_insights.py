"""Usage insights on DynamoDB Local (AWS's own engine): the insights function, two container
processes at once, is handed every ledger entry's (and repayment note's) stream record twice,
shuffled and in batches (as a retried or redelivered shard would): every daily total and every
monthly finance figure is exact, by hand and against a recount from the ledger."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from credits import finance, insights, keys
from credits.ledger import Ledger, LotTerms
from credits.store import DynamoStore
from tests.integration.conftest import LocalTables
from tests.support import fleet

DAY = 86_400.0


def raw_items(tables: LocalTables, user: str, prefix: str) -> list[dict[str, Any]]:
    """The user's items whose sort key starts with `prefix`, as DynamoDB holds them (one page)."""
    client: Any = tables.client
    found: list[dict[str, Any]] = client.query(
        TableName=tables.credits,
        KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
        ExpressionAttributeValues={":pk": {"S": keys.user_pk(user)}, ":prefix": {"S": prefix}},
        ConsistentRead=True,
    )["Items"]
    return found


def stream_records(tables: LocalTables, user: str) -> list[dict[str, Any]]:
    """The user's ledger entries and repayment notes as the stream's INSERT records (NEW_IMAGE)."""
    items = raw_items(tables, user, keys.TX) + raw_items(tables, user, keys.REPAID)
    return [
        {
            "eventID": f"{user}-{n}",
            "eventName": "INSERT",
            "eventSource": "aws:dynamodb",
            "eventSourceARN": "arn:aws:dynamodb:us-east-1:000000000000:table/credits/stream/2026",
            "dynamodb": {
                "Keys": {"pk": item["pk"], "sk": item["sk"]},
                "NewImage": item,
                "SequenceNumber": f"{user}{n:08d}",
                "StreamViewType": "NEW_IMAGE",
            },
        }
        for n, item in enumerate(items)
    ]


def deliver_twice_shuffled(records: list[dict[str, Any]], seed: int) -> int:
    """Every record twice, shuffled, in batches of 7, to two containers at once; a batch's failed
    records are sent again until none fail. The number of deliveries."""
    deliveries = [*records, *records]
    random.Random(seed).shuffle(deliveries)
    batches = [deliveries[i : i + 7] for i in range(0, len(deliveries), 7)]
    with fleet("insights", 2) as containers:
        lock = threading.Lock()
        sent = 0

        def run(worker: int) -> None:
            nonlocal sent
            for batch in batches[worker::2]:
                while batch:
                    answer = containers.containers[worker].invoke({"Records": batch})
                    failed = {f["itemIdentifier"] for f in answer.get("batchItemFailures", [])}
                    with lock:
                        sent += len(batch)
                    batch = [r for r in batch if r["dynamodb"]["SequenceNumber"] in failed]

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(run, range(2)))
    return sent


def days_of(tables: LocalTables, user: str) -> dict[str, dict[str, int]]:
    items = raw_items(tables, user, keys.USAGE)
    return {item["sk"]["S"][len(keys.USAGE) :]: {k: int(v["N"]) for k, v in item.items() if "N" in v} for item in items}


def recount(ledger: Ledger, user: str) -> dict[str, dict[str, int]]:
    """The daily totals recomputed from the ledger itself."""
    days: dict[str, Counter[str]] = {}
    for tx in ledger.history(user):
        days.setdefault(tx.created_at[:10], Counter()).update(insights.movements(tx))
    return {day: dict(totals) for day, totals in days.items()}


def test_records_delivered_twice_and_out_of_order_count_every_entry_once(local_tables: LocalTables) -> None:
    now = time.time()
    earlier = Ledger(local_tables.client, local_tables.credits, clock=lambda: now - 2 * DAY)  # type: ignore[arg-type]
    ledger = local_tables.ledger()
    # two days ago: a purchase-sized grant and usage on two actions
    earlier.grant("ann", 500, type="gift", description="welcome")
    for _ in range(3):
        earlier.charge("ann", 5, description="a picture", action="generate")
    earlier.charge("ann", 7, description="a report", action="analyze")
    # today: more usage, one charge without an action, an operator's debit, a dated grant that expires
    ledger.charge("ann", 5, description="a picture", action="generate")
    ledger.charge("ann", 2, description="by hand")
    ledger.adjust("ann", -10, description="correction")
    flash = LotTerms(expires_at_ms=int(time.time() * 1000) + 1500)
    ledger.grant("ann", 40, type="gift", description="flash", lot=flash)
    ledger.grant("bob", 9, type="adjustment", description="goodwill")
    time.sleep(1.6)
    assert ledger.sweep("ann") == 1  # the flash credits expired: 40

    records = stream_records(local_tables, "ann") + stream_records(local_tables, "bob")
    assert deliver_twice_shuffled(records, seed=7) >= 2 * len(records)

    day_before = time.strftime("%Y-%m-%d", time.gmtime(now - 2 * DAY))
    today = time.strftime("%Y-%m-%d", time.gmtime(time.time()))
    ann = days_of(local_tables, "ann")
    assert ann[day_before] == {"granted": 500, "spent:generate": 15, "spent:analyze": 7}
    assert ann[today] == {"spent:generate": 5, "spent:other": 2, "debited": 10, "granted": 40, "expired": 40}
    assert days_of(local_tables, "bob") == {today: {"granted": 9}}
    assert ann == recount(ledger, "ann")  # the ledger itself agrees, figure for figure

    # the same records once more (a shard replayed from its start): nothing moves
    deliver_twice_shuffled(records, seed=8)
    assert days_of(local_tables, "ann") == ann


def test_monthly_finance_figures_from_records_twice_and_out_of_order_match_the_ledger(
    local_tables: LocalTables,
) -> None:
    """carl buys 100 credits for $10.00 and 200 for EUR 30.00, uses 130 and gets $2.00 of the first
    back for 20 credits; dan owes 50 credits after a refund until a hold's 60 come back (a note)."""
    ledger = local_tables.ledger()
    for pi, credits, money, currency in (("pi_c1", 100, 1000, "usd"), ("pi_c2", 200, 3000, "eur")):
        terms = LotTerms(source=f"purchase:{pi}")
        ledger.grant(
            "carl",
            credits,
            type="purchase",
            description="pack",
            reference_id=f"purchase:{pi}",
            monetary_amount=money,
            currency=currency,
            lot=terms,
        )
    ledger.charge("carl", 130, description="a batch", action="generate")  # 100 usd, then 30 eur
    ledger.claw_back(
        "carl",
        20,
        type="refund",
        description="refund",
        reference_id="refund:pi_c1",
        monetary_amount=200,
        currency="usd",
        source="purchase:pi_c1",
    )
    ledger.grant("dan", 100, type="gift", description="welcome", lot=LotTerms("promotional"))
    hold = ledger.reserve("dan", 60, ttl_seconds=600, description="a long job")
    ledger.grant(
        "dan",
        50,
        type="purchase",
        description="pack",
        reference_id="purchase:pi_d1",
        monetary_amount=500,
        currency="usd",
        lot=LotTerms(source="purchase:pi_d1"),
    )
    ledger.charge("dan", 90, description="a batch")
    ledger.claw_back(
        "dan",
        50,
        type="refund",
        description="refund",
        reference_id="refund:pi_d1",
        monetary_amount=500,
        currency="usd",
        source="purchase:pi_d1",
    )
    ledger.release("dan", hold.hold_id)  # 50 of its 60 repay the debt: a REPAID# note

    records = stream_records(local_tables, "carl") + stream_records(local_tables, "dan")
    assert sum(1 for r in records if r["dynamodb"]["Keys"]["sk"]["S"].startswith(keys.REPAID)) == 1
    deliver_twice_shuffled(records, seed=11)

    store = DynamoStore(local_tables.client, local_tables.credits)  # type: ignore[arg-type]
    month = time.strftime("%Y-%m", time.gmtime(time.time()))
    rows = {r.currency: r for r in finance.report(finance.read_months(store), month)}
    usd, eur, free = rows["usd"], rows["eur"], rows["none"]
    # carl's 100 usd were all used before the refund: it finds none of them, takes 20 eur instead
    assert (usd.figures["sold"], usd.figures["used"], usd.figures["money"], usd.figures["money_back"]) == (
        150,
        150,
        1500,
        700,
    )
    assert (eur.figures["sold"], eur.figures["used"], eur.figures["clawed_back"], eur.closing) == (200, 30, 20, 150)
    assert eur.closing_value == 150 * 3000 // 200
    assert (free.figures["granted"], free.figures["used"], free.figures["clawed_back"], free.closing) == (
        100,
        40,
        50,
        10,
    )
    assert usd.closing + eur.closing + free.closing == ledger.balance("carl") + ledger.balance("dan")
    assert finance.verify(store, ["carl", "dan"], month) == []
