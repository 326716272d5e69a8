"""Monthly spend limits and settings (moto): invariant 8, and the settings routes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

import pytest

from credits.errors import SpendLimitReached, TooManyRequests
from credits.ledger import Ledger
from credits.store import Write
from tests.support import ManualClock as Clock
from tests.support import http_event, invoke


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2026, 11, 30, 23, 59, 0, tzinfo=UTC).timestamp())


@pytest.fixture
def ledger(moto_dynamodb, clock: Clock) -> Ledger:
    ledger = Ledger(moto_dynamodb, "credits", clock=clock, sleep=lambda _s: None)
    ledger.grant("ann", 100, type="gift", description="seed")
    return ledger


def test_a_charge_past_the_limit_is_refused_whole(ledger: Ledger) -> None:
    ledger.update_settings("ann", monthly_spend_limit=10)
    ledger.charge("ann", 7, description="a")
    with pytest.raises(SpendLimitReached) as refused:
        ledger.charge("ann", 4, description="b")
    assert (refused.value.limit, refused.value.spent) == (10, 7)
    assert ledger.charge("ann", 3, description="c").balance == 90
    assert [t.amount for t in ledger.history("ann")] == [100, -7, -3]


def test_usage_before_the_limit_was_set_counts_and_grants_do_not(ledger: Ledger) -> None:
    ledger.charge("ann", 8, description="before any limit")
    ledger.grant("ann", 50, type="gift", description="a gift is not usage")
    ledger.update_settings("ann", monthly_spend_limit=10)
    assert ledger.settings("ann").spent_this_month == 8
    with pytest.raises(SpendLimitReached):
        ledger.charge("ann", 3, description="x")


def test_open_holds_count_captures_count_what_they_captured_releases_give_room_back(ledger: Ledger) -> None:
    ledger.update_settings("ann", monthly_spend_limit=10)
    first = ledger.reserve("ann", 6, description="a")
    with pytest.raises(SpendLimitReached):
        ledger.reserve("ann", 5, description="b")
    with pytest.raises(SpendLimitReached):
        ledger.charge("ann", 5, description="c")
    ledger.capture("ann", first.hold_id, 2)  # 2 count now, the other 4 are free again
    assert ledger.settings("ann").spent_this_month == 2
    second = ledger.reserve("ann", 8, description="d")
    ledger.release("ann", second.hold_id)
    assert ledger.settings("ann").spent_this_month == 2
    assert ledger.charge("ann", 8, description="e").balance == 90


def test_a_new_month_starts_from_zero(ledger: Ledger, clock: Clock) -> None:
    ledger.update_settings("ann", monthly_spend_limit=5)
    ledger.charge("ann", 5, description="november")
    with pytest.raises(SpendLimitReached):
        ledger.charge("ann", 1, description="still november")
    clock.now += 120  # 2026-12-01 00:01 UTC
    assert ledger.settings("ann").spent_this_month == 0
    assert ledger.charge("ann", 5, description="december").balance == 90


def test_removing_the_limit_and_settings_never_touch_the_balance(ledger: Ledger) -> None:
    ledger.update_settings("ann", monthly_spend_limit=1, low_balance_threshold=30)
    ledger.charge("ann", 1, description="a")
    ledger.update_settings("ann", monthly_spend_limit=None)
    assert ledger.charge("ann", 50, description="b").balance == 49
    settings = ledger.settings("ann")
    assert (settings.low_balance_threshold, settings.monthly_spend_limit, settings.spent_this_month) == (30, None, 51)
    assert ledger.audit("ann").ok and ledger.balance("ann") == 49


def test_settings_routes(use: ModuleType, bal: ModuleType, moto_dynamodb) -> None:
    def limits(body: dict) -> dict:
        return {k: body[k] for k in ("lowBalanceThreshold", "monthlySpendLimit", "spentThisMonth")}

    status, body, _ = invoke(bal, http_event("GET", "/credits/settings", sub="new-user"))
    assert (status, limits(body)) == (200, {"lowBalanceThreshold": 10, "monthlySpendLimit": None, "spentThisMonth": 0})
    assert (body["autoTopUp"], body["card"], body["topUp"]["pending"]) == (None, None, False)
    put = http_event("PUT", "/credits/settings", sub="new-user", body={"monthlySpendLimit": 20})
    assert limits(invoke(use, put)[1]) == {"lowBalanceThreshold": 10, "monthlySpendLimit": 20, "spentThisMonth": 0}
    put = http_event("PUT", "/credits/settings", sub="new-user", body={"lowBalanceThreshold": 0})
    assert limits(invoke(use, put)[1]) == {"lowBalanceThreshold": 0, "monthlySpendLimit": 20, "spentThisMonth": 0}
    put = http_event("PUT", "/credits/settings", sub="new-user", body={"monthlySpendLimit": None})
    assert invoke(use, put)[1]["monthlySpendLimit"] is None
    status, body, _ = invoke(bal, http_event("GET", "/credits/balance", sub="new-user"))
    assert body == {
        "balance": 0,
        "available": 0,
        "held": 0,
        "expiring": [],
        "byCategory": {"paid": 0, "promotional": 0},
    }


@pytest.mark.parametrize(
    "body",
    [
        {"monthlySpendLimit": 0},
        {"monthlySpendLimit": -5},
        {"monthlySpendLimit": "20"},
        {"monthlySpendLimit": 10**9 + 1},
        {"lowBalanceThreshold": -1},
        {"lowBalanceThreshold": None},
        {"lowBalanceThreshold": 1.5},
        {"balance": 100},
    ],
)
def test_bad_settings_are_400_and_change_nothing(use: ModuleType, bal: ModuleType, body: dict) -> None:
    status, answer, _ = invoke(use, http_event("PUT", "/credits/settings", sub="u", body=body))
    assert (status, answer["error"]["code"]) == (400, "validation_error")
    assert invoke(bal, http_event("GET", "/credits/settings", sub="u"))[1]["monthlySpendLimit"] is None


def test_a_charge_refused_by_the_limit_is_402_spend_limit_reached(use: ModuleType, ledger: Ledger) -> None:
    ledger.grant("user-1", 100, type="gift", description="seed")
    assert invoke(use, http_event("PUT", "/credits/settings", body={"monthlySpendLimit": 5}))[0] == 200
    assert invoke(use, http_event("POST", "/credits/use", body={"action": "analyze"}))[0] == 200
    status, body, _ = invoke(use, http_event("POST", "/credits/use", body={"action": "search"}))
    assert status == 402
    assert {k: body["error"][k] for k in ("code", "limit", "spent")} == {
        "code": "spend_limit_reached",
        "limit": 5,
        "spent": 5,
    }


def test_a_charge_under_a_limit_and_a_threshold_is_still_one_read_and_one_transaction(
    ledger: Ledger, moto_dynamodb
) -> None:
    ledger.update_settings("ann", monthly_spend_limit=50, low_balance_threshold=20)
    ledger.reserve("ann", 5, description="open hold")
    calls: list[str] = []
    moto_dynamodb.meta.events.register("before-call.dynamodb", lambda model, **_: calls.append(model.name))
    ledger.charge("ann", 3, description="search")
    assert calls == ["GetItem", "TransactWriteItems"]
    assert ledger.settings("ann").spent_this_month == 8


def test_a_charge_decided_before_a_new_limit_is_decided_again_against_it(
    ledger: Ledger, moto_dynamodb, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user lowers their limit while a charge is between its read and its write."""
    ledger.charge("ann", 40, description="earlier")
    other = Ledger(moto_dynamodb, "credits", clock=clock, sleep=lambda _s: None)  # another container
    real_commit = ledger.ctx.commit
    raced: list[int] = []

    def settings_change_first(request: Sequence[Write], **kwargs: Any) -> bool:
        if not raced:
            raced.append(1)
            other.update_settings("ann", monthly_spend_limit=50)
        return real_commit(request, **kwargs)

    monkeypatch.setattr(ledger.ctx, "commit", settings_change_first)
    with pytest.raises(SpendLimitReached):
        ledger.charge("ann", 20, description="decided against no limit")
    assert ledger.settings("ann").spent_this_month == 40 and ledger.balance("ann") == 60


def test_a_writer_whose_clock_is_behind_never_takes_the_month_back(ledger: Ledger, moto_dynamodb) -> None:
    february = Clock(datetime(2026, 2, 1, 0, 0, 0, 50_000, tzinfo=UTC).timestamp())
    behind = Clock(datetime(2026, 1, 31, 23, 59, 59, 990_000, tzinfo=UTC).timestamp())
    ahead_ledger = Ledger(moto_dynamodb, "credits", clock=february, sleep=lambda _s: None)
    behind_ledger = Ledger(moto_dynamodb, "credits", clock=behind, sleep=lambda _s: None)
    ahead_ledger.update_settings("ann", monthly_spend_limit=10)
    ahead_ledger.charge("ann", 8, description="february")
    with pytest.raises(SpendLimitReached):
        behind_ledger.charge("ann", 9, description="still january here, but february there")
    assert ahead_ledger.settings("ann").spent_this_month == 8


def test_settings_change_at_most_ten_times_a_minute_and_the_eleventh_changes_nothing(
    ledger: Ledger, clock: Clock
) -> None:
    for limit in range(1, 11):
        assert ledger.update_settings("ann", monthly_spend_limit=limit).monthly_spend_limit == limit
    clock.now += 30
    with pytest.raises(TooManyRequests) as refused:
        ledger.update_settings("ann", monthly_spend_limit=99)
    assert refused.value.retry_after == 30  # until the next UTC minute
    assert ledger.settings("ann").monthly_spend_limit == 10
    clock.now += 30  # a new minute
    assert ledger.update_settings("ann", monthly_spend_limit=99).monthly_spend_limit == 99


def test_the_eleventh_settings_change_of_a_minute_is_429_with_retry_after(use: ModuleType, bal: ModuleType) -> None:
    answers = [
        invoke(use, http_event("PUT", "/credits/settings", sub="fast", body={"lowBalanceThreshold": i}))
        for i in range(11)
    ]
    assert [status for status, _, _ in answers] == [200] * 10 + [429]
    _, body, headers = answers[-1]
    assert body["error"]["code"] == "too_many_requests"
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert invoke(bal, http_event("GET", "/credits/settings", sub="fast"))[1]["lowBalanceThreshold"] == 9


def test_a_threshold_change_does_not_make_a_charge_decide_again(
    ledger: Ledger, moto_dynamodb, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the spend limit guards a charge: a threshold changed between its read and its write lets
    it land as decided (its entry carries the threshold it was decided with)."""
    other = Ledger(moto_dynamodb, "credits")
    commit = ledger.ctx.commit
    attempts: list[Sequence[Write]] = []

    def threshold_change_first(request: Sequence[Write], **kwargs: Any) -> bool:
        if not attempts:
            other.update_settings("ann", low_balance_threshold=77)
        attempts.append(request)
        return commit(request, **kwargs)

    monkeypatch.setattr(ledger.ctx, "commit", threshold_change_first)
    posted = ledger.charge("ann", 5, description="decided with the old threshold")
    assert (len(attempts), posted.balance) == (1, 95)
    assert ledger.settings("ann").low_balance_threshold == 77
