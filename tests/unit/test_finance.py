"""The finance report on moto: a month with purchases in two currencies, usage, an expiry, a refund, a
dispute lost and a gift, counted from the entries as the insights function counts stream records
(twice, shuffled), with every figure worked out by hand; `credits report --verify` clean, and a
corrupted figure or lot named with exit 1. A debt repaid by a hold's credits coming back (no entry of
its own) counts as clawed back. What each entry adds: `entry_moves`."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from credits import finance, insights, keys
from credits.cli import main
from credits.ledger import Idempotency, Ledger
from credits.ledger.values import LotTerms
from credits.store import DynamoStore, Update
from tests.support import ManualClock


def at(day: str) -> float:
    return datetime.fromisoformat(f"{day}T12:00:00+00:00").timestamp()


def ms(day: str) -> int:
    return int(at(day) * 1000)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(at("2026-12-20"))


@pytest.fixture
def ledger(moto_dynamodb, clock: ManualClock) -> Ledger:
    return Ledger(moto_dynamodb, "credits", clock=clock)


@pytest.fixture
def store(moto_dynamodb) -> DynamoStore:
    return DynamoStore(moto_dynamodb, "credits")


def buy(
    ledger: Ledger, user: str, pi: str, credits: int, money: int, currency: str, expires: str | None = None
) -> None:
    """A purchase as the webhook posts it: its lot names the payment (refunds and disputes find it)."""
    terms = LotTerms("paid", None, ms(expires) if expires else None, "Pack", f"purchase:{pi}")
    ledger.grant(
        user,
        credits,
        type="purchase",
        description=f"{credits} credits",
        reference_id=f"purchase:{pi}",
        monetary_amount=money,
        currency=currency,
        lot=terms,
    )


def claw(ledger: Ledger, user: str, kind: str, pi: str, credits: int, money: int, currency: str) -> None:
    ledger.claw_back(
        user,
        credits,
        type=kind,
        description=f"{kind} of {pi}",
        reference_id=f"{kind}:{pi}",
        monetary_amount=money,
        currency=currency,
        source=f"purchase:{pi}",
    )


def stream(store: DynamoStore, users: list[str], times: int = 2) -> int:
    """Every entry and repayment note of `users`, delivered `times` times in a shuffled order, as the
    stream function counts them; how many were counted (each once)."""
    items = []
    for user in users:
        pk = keys.user_pk(user)
        items += finance.every_item(store, pk, keys.TX) + finance.every_item(store, pk, keys.REPAID)
    deliveries = items * times
    random.Random(7).shuffle(deliveries)
    return sum(insights.count_item(store, item, at("2027-02-01")) for item in deliveries)


USERS = ["ann", "bob", "carl", "cid"]


def month_of_everything(ledger: Ledger, clock: ManualClock) -> None:
    """December: ann buys 100 credits for $10.00 and uses 30 (January opens with 70 USD credits,
    worth $7.00). January: bob buys 200 for EUR 15.00 expiring on the 15th and uses 50 (150 expire);
    ann buys 50 for $6.00 (12 cents each) and uses 80 (70 of December's lot, 10 of the new one); 20
    of the new purchase are refunded ($2.40); carl is given 25 and uses 5; cid buys 40 for $4.00 and
    loses a dispute of all of it."""
    buy(ledger, "ann", "pi_a1", 100, 1000, "usd")
    ledger.charge("ann", 30, description="December", action="generate")
    clock.now = at("2027-01-05")
    buy(ledger, "bob", "pi_b1", 200, 1500, "eur", expires="2027-01-15")
    buy(ledger, "ann", "pi_a2", 50, 600, "usd")
    ledger.charge("ann", 80, description="a batch", action="generate")
    claw(ledger, "ann", "refund", "pi_a2", 20, 240, "usd")
    ledger.grant("carl", 25, type="gift", description="Welcome", lot=LotTerms("promotional"))
    ledger.charge("carl", 5, description="a try", action="search")
    ledger.charge("bob", 50, description="a report", action="analyze")
    buy(ledger, "cid", "pi_c1", 40, 400, "usd")
    claw(ledger, "cid", "dispute", "pi_c1", 40, 400, "usd")
    clock.now = at("2027-01-16")
    assert ledger.sweep("bob") == 1  # the expiration entry of bob's 150 credits


def test_a_month_in_two_currencies_reconciles_to_the_figures_worked_out_by_hand(
    ledger: Ledger, store: DynamoStore, clock: ManualClock
) -> None:
    month_of_everything(ledger, clock)
    entries = sum(len(ledger.history(u)) for u in USERS)
    assert stream(store, USERS) == entries  # each counted once, though delivered twice out of order

    rows = {r.currency: r.body() for r in finance.report(finance.read_months(store), "2027-01")}
    assert rows["usd"] == {
        "currency": "usd",
        "opening": 70,  # December: 100 sold, 30 used
        "sold": 90,  # ann 50, cid 40
        "granted": 0,
        "used": 80,
        "expired": 0,
        "clawedBack": 60,  # the refund's 20 and the lost dispute's 40
        "debited": 0,
        "closing": 20,  # 70 + 90 - 80 - 60: what is left of ann's second purchase
        "moneyReceived": 1000,  # $6.00 + $4.00
        "moneyPaidBack": 640,  # $2.40 + $4.00
        "openingValue": 700,  # 70 credits bought at 10 cents
        "closingValue": 240,  # 20 credits bought at 12 cents
    }
    assert rows["eur"] == {
        "currency": "eur",
        "opening": 0,
        "sold": 200,
        "granted": 0,
        "used": 50,
        "expired": 150,
        "clawedBack": 0,
        "debited": 0,
        "closing": 0,
        "moneyReceived": 1500,
        "moneyPaidBack": 0,
        "openingValue": 0,
        "closingValue": 0,
    }
    none = rows["none"]
    assert (none["granted"], none["used"], none["closing"], none["moneyReceived"]) == (25, 5, 20, None)
    # closing is what every account's lots hold
    assert ledger.account("ann").balance == 20 and ledger.account("carl").balance == 20
    assert ledger.account("bob").balance == 0 and ledger.account("cid").balance == 0
    assert finance.verify(store, USERS, "2027-01") == []

    december = {r.currency: r.body() for r in finance.report(finance.read_months(store), "2026-12")}
    assert (december["usd"]["opening"], december["usd"]["closing"], december["usd"]["closingValue"]) == (0, 70, 700)
    assert "eur" not in december


def test_credits_report_prints_every_format_and_verify_names_a_corrupted_figure(
    ledger: Ledger, store: DynamoStore, clock: ManualClock, capsys: Any
) -> None:
    month_of_everything(ledger, clock)
    stream(store, USERS, times=1)

    assert main(["report", "--month", "2027-01", "--verify"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0] == "Credits, 2027-01 (UTC)" and lines[1].split()[0] == "credits"
    usd = lines.index("USD")
    assert lines[usd + 1].split() == ["opening", "outstanding", "70", "$7.00"]
    assert lines[usd + 2].split() == ["+", "sold", "90", "$10.00", "received"]
    assert lines[usd + 6].split() == ["-", "clawed", "back", "60", "$6.40", "paid", "back"]
    assert lines[usd + 8].split() == ["=", "closing", "outstanding", "20", "$2.40"]
    assert "verify: matches the ledger" in err

    assert main(["report", "--month", "2027-01", "--currency", "eur", "--format", "json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert [r["currency"] for r in body["rows"]] == ["eur"] and body["rows"][0]["expired"] == 150

    assert main(["report", "--month", "2027-01", "--format", "csv"]) == 0
    csv_lines = capsys.readouterr().out.splitlines()
    assert csv_lines[0].split(",") == list(finance.COLUMNS)
    assert [line.split(",")[0] for line in csv_lines[1:]] == ["eur", "usd", "none"]

    # someone (or a bug) adds 7 to January's used USD credits: --verify names the item and the figure
    store.write(Update((keys.PRODUCT_PK, keys.finance_sk("2027-01")), add={"used:usd": 7}))
    assert main(["report", "--month", "2027-01", "--verify"]) == 1
    err = capsys.readouterr().err
    assert "DIFFERENCE FINANCE#2027-01 used:usd: counted 87, the ledger says 80" in err
    assert "verify: 1 difference(s) with the ledger" in err

    assert main(["report", "--month", "2027-13"]) == 2  # not a month


def test_the_readme_s_sample_report_is_what_this_month_prints(
    ledger: Ledger, store: DynamoStore, clock: ManualClock, capsys: Any
) -> None:
    month_of_everything(ledger, clock)
    stream(store, USERS, times=1)
    assert main(["report", "--month", "2027-01", "--verify"]) == 0
    out, err = capsys.readouterr()
    printed = "$ credits report --month 2027-01 --verify\n" + out.rsplit("\n\n(", 1)[0] + "\n" + err
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert "```text\n" + printed + "```" in readme


def test_verify_names_an_account_whose_lots_differ_from_its_ledger(
    ledger: Ledger, store: DynamoStore, clock: ManualClock
) -> None:
    buy(ledger, "ann", "pi_a1", 100, 1000, "usd")
    stream(store, ["ann"], times=1)
    item = store.get((keys.user_pk("ann"), keys.ACCOUNT))
    assert item is not None
    lot_id = next(iter(item["lots"]))
    lots = {lot_id: {**item["lots"][lot_id], "r": 90}}
    store.write(Update((keys.user_pk("ann"), keys.ACCOUNT), set={"lots": lots}))
    month = datetime.fromtimestamp(clock.now, UTC).strftime("%Y-%m")
    assert finance.verify(store, ["ann"], month) == [f"ann: lot {lot_id} holds 90 credits; its ledger gives 100"]


def test_a_debt_repaid_by_a_hold_coming_back_counts_as_clawed_back(
    ledger: Ledger, store: DynamoStore, clock: ManualClock
) -> None:
    """ann is given 100, holds 60 of them, buys 50 for $5.00 and spends them and the 40 free credits
    left; the purchase is refunded: 50 clawed back find nothing (a debt). The hold's release gives its
    60 back, and 50 of them repay the debt with no entry of their own: a REPAID# note."""
    ledger.grant("ann", 100, type="gift", description="Welcome", lot=LotTerms("promotional"))
    hold = ledger.reserve("ann", 60, ttl_seconds=600, description="a long job")
    buy(ledger, "ann", "pi_a1", 50, 500, "usd")
    ledger.charge("ann", 90, description="a batch")
    claw(ledger, "ann", "refund", "pi_a1", 50, 500, "usd")
    assert ledger.balance("ann") == 10
    ledger.release("ann", hold.hold_id)
    notes = finance.every_item(store, keys.user_pk("ann"), keys.REPAID)
    assert [n["repaid"] for n in notes] == [{"1": 50}]  # from the gift's lot (seq 1)

    stream(store, ["ann"])
    month = datetime.fromtimestamp(clock.now, UTC).strftime("%Y-%m")
    rows = {r.currency: r for r in finance.report(finance.read_months(store), month)}
    free, usd = rows["none"], rows["usd"]
    assert (free.figures["granted"], free.figures["used"], free.figures["clawed_back"], free.closing) == (
        100,
        40,
        50,
        10,
    )
    assert (usd.figures["sold"], usd.figures["used"], usd.figures["clawed_back"], usd.closing) == (50, 50, 0, 0)
    assert free.closing + usd.closing == ledger.balance("ann")
    assert finance.verify(store, ["ann"], month) == []


def test_a_hundred_holds_coming_back_into_a_debt_leave_one_note_and_every_write_goes_on(
    ledger: Ledger, store: DynamoStore, clock: ManualClock
) -> None:
    """100 holds of 1 expire while the account owes 100 (a refund of credits already spent): the
    write that prunes them repays the debt with one note (one item), never a note per hold."""
    ledger.grant("ann", 100, type="gift", description="Welcome", lot=LotTerms("promotional"))
    for n in range(100):
        ledger.reserve("ann", 1, description=f"job {n}", ttl_seconds=600)
    buy(ledger, "ann", "pi_a1", 100, 1000, "usd")
    ledger.charge("ann", 100, description="a batch")
    claw(ledger, "ann", "refund", "pi_a1", 100, 1000, "usd")
    clock.now += 3600  # every hold expired: their credits come back into the debt
    assert ledger.sweep("ann") == 0
    ledger.grant("ann", 5, type="gift", description="sorry", lot=LotTerms("promotional"))
    [note] = finance.every_item(store, keys.user_pk("ann"), keys.REPAID)
    assert note["repaid"] == {"1": 100} and ledger.balance("ann") == 5 and ledger.holds("ann") == []
    stream(store, ["ann"])
    month = datetime.fromtimestamp(clock.now, UTC).strftime("%Y-%m")
    assert finance.verify(store, ["ann"], month) == []


def test_an_entry_written_by_a_clock_behind_counts_in_the_month_of_the_one_before(
    ledger: Ledger, store: DynamoStore, clock: ManualClock
) -> None:
    clock.now = datetime.fromisoformat("2027-02-01T00:00:05+00:00").timestamp()
    buy(ledger, "ann", "pi_a1", 10, 100, "usd")
    clock.now -= 8  # 2027-01-31T23:59:57: a container whose clock is behind
    ledger.charge("ann", 3, description="late")
    stream(store, ["ann"])
    months = finance.read_months(store)
    assert "2027-01" not in months and months["2027-02"]["used:usd"] == 3
    [row] = finance.report(months, "2027-02")
    assert (row.opening, row.closing, row.closing_value) == (0, 7, 70)
    assert finance.verify(store, ["ann"], "2027-02") == []


@pytest.mark.parametrize(
    ("item", "adds"),
    [
        ({"type": "usage", "amount": -5, "moved": {"usd": [-5, 0, -50]}}, {"used:usd": 5, "value:usd": -50}),
        (
            {
                "type": "purchase",
                "amount": 100,
                "monetary_amount": 900,
                "currency": "eur",
                "moved": {"eur": [100, 0, 900]},
            },
            {"sold:eur": 100, "money:eur": 900, "value:eur": 900},
        ),
        (
            # a purchase that repaid a debt of 30 first: sold 100, 30 of them clawed back
            {
                "type": "purchase",
                "amount": 100,
                "monetary_amount": 900,
                "currency": "eur",
                "moved": {"eur": [100, 30, 630]},
            },
            {"sold:eur": 100, "clawed_back:eur": 30, "money:eur": 900, "value:eur": 630},
        ),
        ({"type": "gift", "amount": 10, "moved": {"none": [10, 0, 0]}}, {"granted:none": 10}),
        ({"type": "adjustment", "amount": -4, "moved": {"none": [-4, 0, 0]}}, {"debited:none": 4}),
        ({"type": "expiration", "amount": -3, "moved": {"usd": [-3, 0, -30]}}, {"expired:usd": 3, "value:usd": -30}),
        (
            {"type": "refund", "amount": -8, "monetary_amount": 80, "currency": "usd", "moved": {"usd": [-8, 0, -80]}},
            {"clawed_back:usd": 8, "money_back:usd": 80, "value:usd": -80},
        ),
        (
            # a won dispute gives back: clawed back and money paid back go down
            {"type": "dispute", "amount": 8, "monetary_amount": 80, "currency": "usd", "moved": {"usd": [8, 0, 80]}},
            {"clawed_back:usd": -8, "money_back:usd": -80, "value:usd": 80},
        ),
        # a refund of credits that had all expired: nothing moved in lots, the money went back
        ({"type": "refund", "amount": 0, "monetary_amount": 80, "currency": "usd"}, {"money_back:usd": 80}),
        # a lost dispute of expired credits: the money went back; won, it came back (entries of 0)
        ({"type": "dispute", "amount": 0, "monetary_amount": 80, "currency": "usd"}, {"money_back:usd": 80}),
        (
            {"type": "dispute", "amount": 0, "monetary_amount": 80, "currency": "usd", "gives_back": True},
            {"money_back:usd": -80},
        ),
    ],
)
def test_what_each_entry_adds_to_its_month(item: dict[str, Any], adds: dict[str, int]) -> None:
    assert finance.entry_moves(item) == adds


def test_the_finance_figures_cost_a_charge_a_reserve_and_a_capture_no_item_and_no_call(
    ledger: Ledger, moto_dynamodb: Any
) -> None:
    """What the report needs rides on the items a change writes anyway (the entry's `moved`, the lot's
    price): one read and one transaction of the same items as before."""
    calls: list[tuple[str, int]] = []

    def count(model: Any, params: dict[str, Any], **_: Any) -> None:
        calls.append((model.name, len(params.get("TransactItems", []))))

    buy(ledger, "ann", "pi_a1", 100, 1000, "usd")
    moto_dynamodb.meta.events.register("before-parameter-build.dynamodb", count)
    ledger.charge("ann", 1, description="search", action="search")
    assert calls == [("GetItem", 0), ("TransactWriteItems", 2)]  # the account and the entry
    calls.clear()
    hold = ledger.reserve("ann", 5, description="a job", idempotency=Idempotency("k1", "f"))
    assert calls == [("BatchGetItem", 0), ("TransactWriteItems", 3)]  # the account, the hold, the key
    calls.clear()
    ledger.capture("ann", hold.hold_id, 3)
    # the account, the hold, the entry and its reference
    assert calls == [("BatchGetItem", 0), ("TransactWriteItems", 4)]
    entry = ledger.history("ann")[-1]
    assert (entry.type, entry.amount) == ("usage", -3)
    item = finance.every_item(DynamoStore(moto_dynamodb, "credits"), keys.user_pk("ann"), keys.TX)[-1]
    assert item["moved"] == {"usd": [-3, 0, -30]}  # 3 credits bought at 10 cents
