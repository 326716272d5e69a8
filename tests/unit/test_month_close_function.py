"""functions/month_close (the finance report of the month just ended, on the 1st) on moto: the
`REPORT#<month>` item from the counted `FINANCE#` figures (opening from every earlier month, nothing
from a later one), each currency's figures as metrics of its own Currency dimension, an operator's
re-run of a month, a month refused clearly, and a second run writing the same item."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

import pytest

from credits import finance, keys
from credits.errors import ValidationError
from credits.store import DynamoStore
from local.template import function_timeout, load
from tests.support import FakeContext, environment, load_function

EVENT = {"source": "aws.scheduler"}
# What the insights function counted, month by month (`<figure>:<row>`: credits, or minor units of money).
OCTOBER = {"sold:usd": 100, "money:usd": 500, "used:usd": 30, "value:usd": 350, "granted:none": 20}
NOVEMBER = {
    "sold:usd": 50,
    "money:usd": 250,
    "used:usd": 40,
    "expired:usd": 5,
    "clawed_back:usd": 10,
    "money_back:usd": 50,
    "value:usd": -25,  # +250 bought, -200 used, -25 expired, -50 clawed back, at 5 a credit
    "sold:eur": 20,
    "money:eur": 100,
    "value:eur": 100,
    "granted:none": 15,
    "used:none": 5,
    "debited:none": 2,
}
DECEMBER = {"sold:usd": 1000, "money:usd": 5000, "value:usd": 5000}
# November's report: usd opens with October's 100 - 30 (worth 350) and closes at 70 + 50 - 40 - 5 - 10.
NOVEMBER_ROWS = [
    {
        "currency": "eur",
        "opening": 0,
        "sold": 20,
        "granted": 0,
        "used": 0,
        "expired": 0,
        "clawedBack": 0,
        "debited": 0,
        "closing": 20,
        "moneyReceived": 100,
        "moneyPaidBack": 0,
        "openingValue": 0,
        "closingValue": 100,
    },
    {
        "currency": "usd",
        "opening": 70,
        "sold": 50,
        "granted": 0,
        "used": 40,
        "expired": 5,
        "clawedBack": 10,
        "debited": 0,
        "closing": 65,
        "moneyReceived": 250,
        "moneyPaidBack": 50,
        "openingValue": 350,
        "closingValue": 325,
    },
    {  # credits granted for nothing: no money
        "currency": "none",
        "opening": 20,
        "sold": 0,
        "granted": 15,
        "used": 5,
        "expired": 0,
        "clawedBack": 0,
        "debited": 2,
        "closing": 28,
        "moneyReceived": None,
        "moneyPaidBack": None,
        "openingValue": None,
        "closingValue": None,
    },
]


def at(moment: str) -> float:
    """Unix seconds of a UTC time written YYYY-MM-DDTHH:MM."""
    return datetime.fromisoformat(moment).replace(tzinfo=UTC).timestamp()


def count(store: DynamoStore, month: str, adds: dict[str, int]) -> None:
    """What the insights function writes when it counts entries of the month."""
    store.write(finance.month_update(month, adds))


def stored_report(client: Any, month: str) -> dict[str, Any] | None:
    """The REPORT# item as DynamoDB holds it (attribute values, raw)."""
    key = {"pk": {"S": keys.PRODUCT_PK}, "sk": {"S": keys.report_sk(month)}}
    return client.get_item(TableName="credits", Key=key).get("Item")


def without_none(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows as the item keeps them: the money of the `none` row left out, not written as null."""
    return [{k: v for k, v in row.items() if v is not None} for row in rows]


def metrics_by_currency(output: str) -> dict[tuple[str, str], list[float]]:
    """The EMF lines of the function's output: (metric, Currency) -> values; every one of them has
    exactly the dimensions Currency and service (the dashboard's SEARCH schema)."""
    found: dict[tuple[str, str], list[float]] = {}
    for line in output.splitlines():
        if not line.startswith('{"_aws"'):
            continue
        blob = json.loads(line)
        for definition in blob["_aws"]["CloudWatchMetrics"]:
            if "Currency" not in blob:
                continue
            assert definition["Namespace"] == "Credits"
            assert sorted(definition["Dimensions"][0]) == ["Currency", "service"] and blob["service"] == "credits"
            for metric in definition["Metrics"]:
                assert metric["Unit"] == "Count"
                value = blob[metric["Name"]]
                found.setdefault((metric["Name"], blob["Currency"]), []).extend(
                    value if isinstance(value, list) else [value]
                )
    return found


@pytest.fixture
def store(moto_dynamodb: Any) -> DynamoStore:
    return DynamoStore(moto_dynamodb, "credits")


@pytest.fixture
def month_close(moto_dynamodb: Any) -> ModuleType:
    with environment(POWERTOOLS_METRICS_DISABLED="false"):
        return load_function("month_close")


def context() -> FakeContext:
    return FakeContext("month_close", function_timeout("month_close"))


def test_a_month_asked_for_is_reported_from_every_earlier_month_and_none_later(
    moto_dynamodb: Any,
    store: DynamoStore,
    month_close: ModuleType,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for month, adds in (("2026-10", OCTOBER), ("2026-11", NOVEMBER), ("2026-12", DECEMBER)):
        count(store, month, adds)
    # December is being counted: none of it is in November's report
    monkeypatch.setattr(month_close, "clock", lambda: at("2026-12-02T10:00"))
    capsys.readouterr()

    answer = month_close.lambda_handler({"month": "2026-11"}, context())

    assert answer == {"month": "2026-11", "rows": NOVEMBER_ROWS}
    item = store.get((keys.PRODUCT_PK, keys.report_sk("2026-11")))
    assert item is not None
    assert (item["month"], item["created_at"][:16]) == ("2026-11", "2026-12-02T10:00")
    assert item["rows"] == without_none(NOVEMBER_ROWS)
    for row in item["rows"]:
        assert row["closing"] == (
            row["opening"]
            + row["sold"]
            + row["granted"]
            - row["used"]
            - row["expired"]
            - row["clawedBack"]
            - row["debited"]
        )
    # the report the CLI prints (`credits report --month 2026-11`) is the same
    assert [r.body() for r in finance.report(finance.read_months(store), "2026-11")] == NOVEMBER_ROWS
    assert stored_report(moto_dynamodb, "2026-10") is None  # only the month asked for is written

    assert metrics_by_currency(capsys.readouterr().out) == {
        ("CreditsSold", "USD"): [50],
        ("CreditsUsed", "USD"): [40],
        ("CreditsExpired", "USD"): [5],
        ("CreditsClawedBack", "USD"): [10],
        ("CreditsSold", "EUR"): [20],
        ("CreditsUsed", "EUR"): [0],
        ("CreditsExpired", "EUR"): [0],
        ("CreditsClawedBack", "EUR"): [0],
        ("CreditsGranted", "NONE"): [15],
        ("CreditsUsed", "NONE"): [5],
        ("CreditsExpired", "NONE"): [0],
        ("CreditsClawedBack", "NONE"): [0],
    }


def test_the_schedule_closes_the_month_before_today_across_a_year_and_writes_the_same_item_twice(
    moto_dynamodb: Any, store: DynamoStore, month_close: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    for month, adds in (("2026-10", OCTOBER), ("2026-11", NOVEMBER), ("2026-12", DECEMBER)):
        count(store, month, adds)
    monkeypatch.setattr(month_close, "clock", lambda: at("2027-01-01T06:00"))  # the schedule's time

    answer = month_close.lambda_handler(EVENT, context())

    assert answer["month"] == "2026-12"
    usd = next(row for row in answer["rows"] if row["currency"] == "usd")
    assert (usd["opening"], usd["sold"], usd["closing"]) == (65, 1000, 1065)  # November closed at 65
    assert (usd["openingValue"], usd["closingValue"]) == (325, 5325)
    first = stored_report(moto_dynamodb, "2026-12")
    assert first is not None and first["created_at"]["S"].startswith("2027-01-01T06:00")

    again = month_close.lambda_handler(EVENT, context())  # the schedule retried, or run twice
    assert again == answer
    assert stored_report(moto_dynamodb, "2026-12") == first
    scanned = moto_dynamodb.scan(TableName="credits")["Items"]
    assert [i["sk"]["S"] for i in scanned if i["sk"]["S"].startswith(keys.REPORT)] == ["REPORT#2026-12"]


def test_an_operator_re_runs_a_month_once_late_entries_are_counted(
    moto_dynamodb: Any, store: DynamoStore, month_close: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    count(store, "2026-10", OCTOBER)
    count(store, "2026-11", NOVEMBER)
    monkeypatch.setattr(month_close, "clock", lambda: at("2026-12-01T06:00"))
    month_close.lambda_handler(EVENT, context())
    count(store, "2026-11", {"used:usd": 5, "value:usd": -25})  # an entry of November counted late

    monkeypatch.setattr(month_close, "clock", lambda: at("2027-02-14T09:30"))
    answer = month_close.lambda_handler({"month": "2026-11"}, context())

    usd = next(row for row in answer["rows"] if row["currency"] == "usd")
    assert (usd["used"], usd["closing"], usd["closingValue"]) == (45, 60, 300)
    item = store.get((keys.PRODUCT_PK, keys.report_sk("2026-11")))
    assert item is not None and item["rows"] == without_none(answer["rows"])
    assert item["created_at"].startswith("2027-02-14T09:30")


def test_a_month_with_nothing_counted_is_written_with_no_rows(
    moto_dynamodb: Any, store: DynamoStore, month_close: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(month_close, "clock", lambda: at("2026-03-01T06:00"))
    assert month_close.lambda_handler(EVENT, context()) == {"month": "2026-02", "rows": []}
    item = store.get((keys.PRODUCT_PK, keys.report_sk("2026-02")))
    assert item is not None and item["rows"] == []


@pytest.mark.parametrize(
    ("month", "message"),
    [
        ("2026-13", "month must be YYYY-MM (e.g. 2026-11), not '2026-13'"),
        ("2026-1", "month must be YYYY-MM"),
        ("november", "month must be YYYY-MM"),
        (202611, "month must be YYYY-MM (e.g. 2026-11), not 202611"),
        ("", "month must be YYYY-MM"),
        ("2026-12", "month 2026-12 has not ended yet"),  # the current month: its figures are still counted
        ("2027-01", "month 2027-01 has not ended yet"),
    ],
)
def test_a_bad_month_is_refused_clearly_and_nothing_is_written(
    moto_dynamodb: Any,
    store: DynamoStore,
    month_close: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    month: Any,
    message: str,
) -> None:
    count(store, "2026-11", NOVEMBER)
    monkeypatch.setattr(month_close, "clock", lambda: at("2026-12-20T12:00"))
    with pytest.raises(ValidationError, match=re.escape(message)) as refused:
        month_close.lambda_handler({"month": month}, context())
    assert refused.value.errors == [{"field": "month"}]
    scanned = moto_dynamodb.scan(TableName="credits")["Items"]
    assert not [i for i in scanned if i["sk"]["S"].startswith(keys.REPORT)]


# ---- template.yaml: the schedule, the permissions, the alarm and the dashboard -----------------------


def test_the_function_runs_on_the_first_of_the_month_with_the_ledger_policy_and_an_alarm() -> None:
    resources = load()["Resources"]
    props = resources["MonthCloseFunction"]["Properties"]
    assert (props["CodeUri"], props["Timeout"]) == ("functions/month_close/", 60)
    (schedule,) = props["Events"].values()
    assert schedule["Type"] == "ScheduleV2"
    assert schedule["Properties"]["ScheduleExpression"] == "cron(0 6 1 * ? *)"  # 06:00 UTC on the 1st
    assert schedule["Properties"]["RetryPolicy"]["MaximumRetryAttempts"] >= 1
    # its Query of the FINANCE# items and its Put of the REPORT# item: both in the ledger policy
    assert props["Policies"] == [{"Ref": "CreditsLedgerPolicy"}]
    ledger_policy = resources["CreditsLedgerPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    allowed = {action for statement in ledger_policy for action in statement["Action"]}
    assert {"dynamodb:Query", "dynamodb:PutItem"} <= allowed
    alarms = [r for r in resources.values() if r["Type"] == "AWS::CloudWatch::Alarm"]
    assert any(
        a["Properties"].get("Dimensions") == [{"Name": "FunctionName", "Value": {"Ref": "MonthCloseFunction"}}]
        for a in alarms
    )  # a failed close (its invocation fails) is alarmed


def test_the_dashboard_searches_every_currency_of_the_metrics_the_function_emits(month_close: ModuleType) -> None:
    body, _ = load()["Resources"]["CreditsDashboard"]["Properties"]["DashboardBody"]["Sub"]
    widgets = json.loads(re.sub(r"\$\{[^}]+\}", "x", body))["widgets"]
    (widget,) = [w for w in widgets if w["properties"]["title"].startswith("Credits this month by currency")]
    expressions = [m[0]["expression"] for m in widget["properties"]["metrics"]]
    searched = []
    for expression in expressions:
        found = re.fullmatch(
            r"SEARCH\('\{Credits,Currency,service\} MetricName=\"(\w+)\"', 'Maximum', 2592000\)", expression
        )
        assert found, expression
        searched.append(found.group(1))
    assert searched == ["CreditsSold", "CreditsUsed", "CreditsExpired"]
    assert set(searched) <= set(month_close.CURRENCY_METRICS.values())
