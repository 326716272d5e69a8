"""PUT /credits/settings `autoTopUp` through the functions as Lambda loads them (moto): turned on only
with a saved card and a package on sale, `maxPerMonth` always said (1-31), bad input a 4xx that
changes nothing, and GET /credits/settings saying where top-ups stand and which card they charge."""

from __future__ import annotations

import time
from types import ModuleType
from typing import Any

import pytest

from credits.cli import main
from credits.ledger import AutoTopUp, Ledger
from credits.ledger.topup import BACKOFF_MS
from credits.packages import Catalog, Package
from credits.store import DynamoStore
from tests.support import ManualClock, http_event, invoke, save_card

START = 1_800_000_000.0  # 2027-01-15 08:00 UTC
ON = {"enabled": True, "threshold": 50, "packageId": "starter", "maxPerMonth": 10}


@pytest.fixture(autouse=True)
def starter(moto_dynamodb: Any) -> None:
    Catalog(moto_dynamodb, "credits").put(Package(id="starter", name="Starter", credits=100, price=500, currency="usd"))


def put(use: ModuleType, body: dict[str, Any], user: str = "ann") -> tuple[int, dict[str, Any]]:
    status, answer, _ = invoke(use, http_event("PUT", "/credits/settings", sub=user, body=body))
    return status, answer


def get(bal: ModuleType, user: str = "ann") -> dict[str, Any]:
    return invoke(bal, http_event("GET", "/credits/settings", sub=user))[1]


def test_turning_it_on_needs_a_saved_card(use: ModuleType, bal: ModuleType, moto_dynamodb: Any) -> None:
    status, answer = put(use, {"autoTopUp": ON})
    assert (status, answer["error"]["code"]) == (409, "card_required")
    assert get(bal)["autoTopUp"] is None
    assert put(use, {"autoTopUp": {**ON, "enabled": False}})[0] == 200  # off: no card needed

    save_card(DynamoStore(moto_dynamodb, "credits"), "ann")
    status, answer = put(use, {"autoTopUp": ON})
    assert (status, answer["autoTopUp"], answer["card"]) == (
        200, ON, {"brand": "visa", "last4": "4242", "expMonth": 12, "expYear": 2034})  # fmt: skip
    assert answer["topUp"] == {"pending": False, "startedThisMonth": 0, "failures": 0, "suspended": None,
                               "retryAfter": None}  # fmt: skip
    assert get(bal)["autoTopUp"] == ON
    assert put(use, {"autoTopUp": None})[1]["autoTopUp"] is None


def test_a_package_not_on_sale_is_404_and_changes_nothing(use: ModuleType, bal: ModuleType, moto_dynamodb: Any) -> None:
    save_card(DynamoStore(moto_dynamodb, "credits"), "ann")
    status, answer = put(use, {"autoTopUp": {**ON, "packageId": "no-such-package"}})
    assert (status, answer["error"]["code"]) == (404, "package_not_found")
    assert get(bal)["autoTopUp"] is None


@pytest.mark.parametrize(
    "auto",
    [
        {**ON, "maxPerMonth": 0},
        {**ON, "maxPerMonth": 32},
        {k: v for k, v in ON.items() if k != "maxPerMonth"},  # required: no default
        {**ON, "threshold": -1},
        {**ON, "threshold": "50"},
        {**ON, "enabled": "yes"},
        {**ON, "packageId": ""},
        {**ON, "extra": 1},
        "on",
    ],
)
def test_bad_auto_top_up_settings_are_400_and_change_nothing(
    use: ModuleType, bal: ModuleType, moto_dynamodb: Any, auto: Any
) -> None:
    save_card(DynamoStore(moto_dynamodb, "credits"), "ann")
    status, answer = put(use, {"autoTopUp": auto})
    assert (status, answer["error"]["code"]) == (400, "validation_error")
    assert get(bal)["autoTopUp"] is None


def test_credits_user_shows_auto_top_up_its_card_and_a_suspension(moto_dynamodb: Any, capsys: Any) -> None:
    clock = ManualClock(START)
    ledger = Ledger(moto_dynamodb, "credits", clock=clock)
    ledger.grant("ann", 100, type="gift", description="welcome")
    assert main(["user", "ann"]) == 0
    assert "auto top-up  off; no card saved" in capsys.readouterr().out

    save_card(DynamoStore(moto_dynamodb, "credits"), "ann")
    ledger.update_settings("ann", auto_top_up=AutoTopUp(True, 50, "starter", 10))
    ledger.charge("ann", 60, description="crossing")  # top-up 1 starts
    assert main(["user", "ann"]) == 0
    out = capsys.readouterr().out
    month = time.strftime("%Y-%m", time.gmtime(clock.now))
    assert (
        f"auto top-up  starter below 50 credits; 1 of 10 started in {month}; visa ending 4242; topup:ann:1 pending"
        in out
    )
    ledger.finish_top_up("ann", "topup:ann:1", failure="insufficient_funds")
    assert main(["user", "ann"]) == 0
    assert "; 1 failed in a row, next not before " in capsys.readouterr().out
    for n in (2, 3):
        clock.now += BACKOFF_MS / 1000
        ledger.charge("ann", 1, description="below again")
        ledger.finish_top_up("ann", f"topup:ann:{n}", failure="card_declined")
    assert main(["user", "ann"]) == 0
    assert "SUSPENDED after 3 failed payments (card_declined)" in capsys.readouterr().out


def test_credits_cancel_top_up_ends_a_stuck_one_with_no_failure_counted(moto_dynamodb: Any, capsys: Any) -> None:
    ledger = Ledger(moto_dynamodb, "credits")
    ledger.grant("ann", 100, type="gift", description="welcome")
    save_card(DynamoStore(moto_dynamodb, "credits"), "ann")
    ledger.update_settings("ann", auto_top_up=AutoTopUp(True, 50, "starter", 10))
    assert main(["cancel-top-up", "ann"]) == 1  # nothing pending
    assert "ann has no auto top-up pending" in capsys.readouterr().out
    ledger.charge("ann", 60, description="crossing")  # top-up 1 starts; say its record was dead-lettered
    assert main(["cancel-top-up", "ann"]) == 0
    assert "cancelled topup:ann:1" in capsys.readouterr().out
    state = ledger.top_ups("ann")[1]
    assert (state.pending, state.failures, state.suspended) == (None, 0, None)
    ledger.charge("ann", 1, description="below again")
    assert ledger.top_ups("ann")[1].pending == "topup:ann:2"  # the next crossing starts one
