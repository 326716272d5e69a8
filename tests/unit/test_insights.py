"""Usage insights on moto: what each entry adds to its day, counting an entry once, the usage answer
(series with zero days, totals by action, month granularity, range validation) and `credits usage`.
The stream function against DynamoDB Local, with records twice and out of order:
tests/integration/test_insights.py."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from credits import insights
from credits.cli import main
from credits.errors import ValidationError
from credits.ledger import Ledger, Transaction
from credits.store import DynamoStore
from tests.support import ManualClock, http_event, invoke

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
DAY = 86_400.0
TODAY = date(2027, 1, 15)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW - 3 * DAY)


@pytest.fixture
def ledger(moto_dynamodb, clock: ManualClock) -> Ledger:
    return Ledger(moto_dynamodb, "credits", clock=clock)


@pytest.fixture
def store(moto_dynamodb) -> DynamoStore:
    return DynamoStore(moto_dynamodb, "credits")


def tx(type_: str, amount: int, action: str | None = None) -> Transaction:
    return Transaction("t", 1, amount, 0, type_, "d", None, None, None, "2027-01-15T08:00:00Z", action=action)


@pytest.mark.parametrize(
    ("entry", "adds"),
    [
        (tx("usage", -5, "generate"), {"spent:generate": 5}),
        (tx("usage", -2), {"spent:other": 2}),  # charged before actions were recorded
        (tx("purchase", 100), {"bought": 100}),
        (tx("gift", 50), {"granted": 50}),
        (tx("adjustment", 7), {"granted": 7}),
        (tx("adjustment", -10), {"debited": 10}),
        (tx("expiration", -40), {"expired": 40}),
        (tx("refund", -30), {"clawed_back": 30}),
        (tx("dispute", -30), {"clawed_back": 30}),
        (tx("dispute", 30), {"clawed_back": -30}),  # won: given back
        (tx("refund", 0), {}),  # every credit of it had expired already: nothing moved
    ],
)
def test_what_each_entry_adds_to_its_day(entry: Transaction, adds: dict[str, int]) -> None:
    assert insights.movements(entry) == adds


def count_all(store: DynamoStore, ledger: Ledger, user: str) -> list[bool]:
    return [insights.count(store, user, t, NOW) for t in ledger.history(user)]


def test_an_entry_counts_once_and_the_usage_answer_has_every_day_and_the_totals_by_action(
    ledger: Ledger, store: DynamoStore, clock: ManualClock
) -> None:
    ledger.grant("ann", 500, type="gift", description="welcome")  # 12 Jan
    ledger.charge("ann", 5, description="a picture", action="generate")
    clock.now = NOW  # 15 Jan
    ledger.charge("ann", 5, description="a picture", action="generate")
    ledger.charge("ann", 9, description="a report", action="analyze")
    assert count_all(store, ledger, "ann") == [True] * 4
    assert count_all(store, ledger, "ann") == [False] * 4  # delivered again: nothing added

    body = insights.usage(store, "ann", "2027-01-11", "2027-01-15", None, TODAY)
    assert [p["period"] for p in body["series"]] == [f"2027-01-{d}" for d in range(11, 16)]
    by_day = {p["period"]: (p["spent"], p["byAction"], p["granted"]) for p in body["series"]}
    assert by_day["2027-01-11"] == (0, {}, 0)
    assert by_day["2027-01-12"] == (5, {"generate": 5}, 500)
    assert by_day["2027-01-15"] == (14, {"analyze": 9, "generate": 5}, 0)
    assert body["totals"] == {
        "spent": 19,
        "byAction": {"generate": 10, "analyze": 9},  # the most spent first
        "bought": 0,
        "granted": 500,
        "expired": 0,
        "clawedBack": 0,
        "debited": 0,
    }


def test_by_month_sums_the_days_and_the_default_is_the_last_30_days(
    ledger: Ledger, store: DynamoStore, clock: ManualClock
) -> None:
    clock.now = NOW - 20 * DAY  # 26 Dec 2026
    ledger.grant("ann", 100, type="gift", description="welcome")
    ledger.charge("ann", 3, description="x", action="search")
    clock.now = NOW
    ledger.charge("ann", 4, description="x", action="search")
    count_all(store, ledger, "ann")
    months = insights.usage(store, "ann", "2026-12-01", "2027-01-31", "month", TODAY)
    assert [(p["period"], p["spent"]) for p in months["series"]] == [("2026-12", 3), ("2027-01", 4)]
    default = insights.usage(store, "ann", None, None, None, TODAY)
    assert (default["from"], default["to"], len(default["series"])) == ("2026-12-17", "2027-01-15", 30)
    assert default["totals"]["spent"] == 7


@pytest.mark.parametrize(
    ("start", "end", "grain", "field"),
    [
        ("2027-01-16", "2027-01-15", None, "from"),  # from after to
        ("2026-01-01", "2027-01-15", None, "from"),  # 380 days: over 366
        ("2027-1-5", None, None, "from"),
        ("2027-02-30", None, None, "from"),
        (None, "tomorrow", None, "to"),
        (None, None, "week", "granularity"),
        ("0001-01-01", None, None, "from"),  # the day before would not be a date
        ("9999-12-29", "9999-12-31", None, "to"),  # nor the day after
    ],
)
def test_a_bad_range_is_a_400_naming_the_field(
    store: DynamoStore, start: str | None, end: str | None, grain: str | None, field: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        insights.usage(store, "ann", start, end, grain, TODAY)
    assert refused.value.status == 400
    assert [e["field"] for e in refused.value.errors] == [field]


def test_366_days_are_answered(store: DynamoStore) -> None:
    body = insights.usage(store, "ann", "2026-01-15", "2027-01-15", None, TODAY)
    assert len(body["series"]) == 366


def test_credits_usage_prints_the_per_action_table(
    ledger: Ledger, store: DynamoStore, clock: ManualClock, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import credits.cli.insights as command

    class Today:
        @staticmethod
        def now(tz: Any = None) -> Any:
            from datetime import datetime

            return datetime.fromtimestamp(NOW, tz)

    monkeypatch.setattr(command, "datetime", Today)
    clock.now = NOW
    ledger.grant("ann", 100, type="gift", description="welcome")
    for action, n in (("generate", 8), ("analyze", 3), ("generate", 2)):
        ledger.charge("ann", n, description=action, action=action)
    count_all(store, ledger, "ann")
    assert main(["usage", "ann", "--since", "7d"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("ann  2027-01-09 to 2027-01-15")
    assert out[1].split() == ["spent", "13", "credits"]
    assert out[2].split() == ["generate", "10", "credits", "76.9", "%"]
    assert out[3].split() == ["analyze", "3", "credits", "23.1", "%"]
    assert out[5].split() == ["granted", "100", "credits"]
    assert main(["usage", "ann", "--since", "400d"]) == 2
    assert "error: --since must be a number of days, 1d to 366d" in capsys.readouterr().err


@pytest.fixture
def balance_fn(bal: Any, ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(bal, "ledger", ledger)  # the function's ledger, on the test's clock
    return bal


def test_get_credits_usage_answers_the_signed_in_users_days(
    balance_fn: Any, ledger: Ledger, store: DynamoStore, clock: ManualClock
) -> None:
    clock.now = NOW
    ledger.grant("ann", 50, type="gift", description="welcome")
    ledger.charge("ann", 6, description="a picture", action="generate")
    ledger.grant("bob", 9, type="gift", description="welcome")
    ledger.charge("bob", 9, description="not ann's", action="analyze")
    count_all(store, ledger, "ann")
    count_all(store, ledger, "bob")
    answer = invoke(balance_fn, http_event("GET", "/credits/usage", sub="ann", query={"from": "2027-01-14"}))
    assert answer.status == 200, answer.body
    assert answer.headers["Cache-Control"] == "no-store"
    assert [(p["period"], p["spent"], p["granted"]) for p in answer.body["series"]] == [
        ("2027-01-14", 0, 0),
        ("2027-01-15", 6, 50),
    ]
    assert answer.body["totals"]["byAction"] == {"generate": 6}
    other = invoke(balance_fn, http_event("GET", "/credits/usage", sub="bob"))
    assert other.status == 200 and other.body["totals"]["byAction"] == {"analyze": 9}  # the caller's own
    bad = invoke(balance_fn, http_event("GET", "/credits/usage", sub="ann", query={"granularity": "week"}))
    assert (bad.status, bad.body["error"]["code"]) == (400, "validation_error")
