"""The holds routes (IAM) and what the user sees of holds (JWT), fed payload 2.0 events, on moto."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from credits.ledger import Ledger
from tests.support import http_event, invoke


def internal(use: ModuleType, path: str, body: dict[str, Any], key: str | None = None) -> tuple[int, dict, dict]:
    headers = {"Idempotency-Key": key} if key else None
    return invoke(use, http_event("POST", path, sub=None, body=body, headers=headers))


def reserve(use: ModuleType, **body: Any) -> tuple[int, dict, dict]:
    key = body.pop("key", None)
    return internal(use, "/internal/credits/holds", {"userId": "user-1", "description": "render", **body}, key)


@pytest.fixture
def funded(ledger: Ledger) -> Ledger:
    ledger.grant("user-1", 20, type="gift", description="seed")
    return ledger


def test_reserve_capture_and_the_balance_the_user_sees(use: ModuleType, bal: ModuleType, funded: Ledger) -> None:
    status, hold, _ = reserve(use, action="analyze", ttlSeconds=60)
    assert status == 201
    assert set(hold) == {"holdId", "amount", "expiresAt", "balance", "available"}
    assert (hold["amount"], hold["balance"], hold["available"]) == (5, 20, 15)
    assert hold["expiresAt"].endswith("Z")

    status, body, _ = invoke(bal, http_event("GET", "/credits/balance"))
    assert (status, body) == (
        200,
        {"balance": 20, "available": 15, "held": 5, "expiring": [], "byCategory": {"paid": 20, "promotional": 0}},
    )
    status, body, _ = invoke(bal, http_event("GET", "/credits/holds"))
    assert body == {
        "holds": [{"holdId": hold["holdId"], "amount": 5, "description": "render", "expiresAt": hold["expiresAt"]}]
    }

    path = f"/internal/credits/holds/{hold['holdId']}/capture"
    status, captured, _ = internal(use, path, {"userId": "user-1", "amount": 4})
    assert status == 200
    assert (captured["charged"], captured["balance"], captured["available"]) == (4, 16, 16)
    status, again, headers = internal(use, path, {"userId": "user-1", "amount": 4})
    assert (status, again, headers.get("Idempotent-Replayed")) == (200, captured, "true")
    status, body, _ = invoke(bal, http_event("GET", "/credits/transactions"))
    newest = body["transactions"][0]
    assert (newest["amount"], newest["type"], newest["referenceId"]) == (-4, "usage", f"hold:{hold['holdId']}")


def test_release_then_capture_and_capture_then_release_are_409(use: ModuleType, funded: Ledger) -> None:
    first = reserve(use, amount=3)[1]["holdId"]
    status, body, _ = internal(use, f"/internal/credits/holds/{first}/release", {"userId": "user-1"})
    assert (status, body) == (200, {"released": 3, "balance": 20, "available": 20})
    status, body, _ = internal(use, f"/internal/credits/holds/{first}/capture", {"userId": "user-1"})
    assert (status, body["error"]["code"]) == (409, "hold_released")

    second = reserve(use, amount=3)[1]["holdId"]
    assert internal(use, f"/internal/credits/holds/{second}/capture", {"userId": "user-1"})[0] == 200
    status, body, _ = internal(use, f"/internal/credits/holds/{second}/release", {"userId": "user-1"})
    assert (status, body["error"]["code"]) == (409, "hold_captured")
    status, body, _ = internal(use, f"/internal/credits/holds/{second}/capture", {"userId": "user-1", "amount": 1})
    assert (status, body["error"]["code"]) == (409, "hold_captured")
    assert funded.balance("user-1") == 17


def test_capture_above_the_hold_and_another_users_hold(use: ModuleType, funded: Ledger) -> None:
    hold = reserve(use, amount=3)[1]["holdId"]
    status, body, _ = internal(use, f"/internal/credits/holds/{hold}/capture", {"userId": "user-1", "amount": 4})
    assert (status, body["error"]["code"]) == (409, "capture_exceeds_hold")
    for action in ("capture", "release"):
        status, body, _ = internal(use, f"/internal/credits/holds/{hold}/{action}", {"userId": "someone-else"})
        assert (status, body["error"]["code"]) == (404, "hold_not_found")
    status, body, _ = internal(use, "/internal/credits/holds/no-such-hold/capture", {"userId": "user-1"})
    assert (status, body["error"]["code"]) == (404, "hold_not_found")
    assert funded.account("user-1").held == 3


def test_not_enough_available_is_402_with_available(use: ModuleType, funded: Ledger) -> None:
    assert reserve(use, amount=15)[0] == 201
    status, body, _ = reserve(use, amount=6)
    assert status == 402
    assert {k: body["error"][k] for k in ("code", "required", "balance", "available")} == {
        "code": "insufficient_credits",
        "required": 6,
        "balance": 20,
        "available": 5,
    }
    status, body, _ = invoke(use, http_event("POST", "/credits/use", body={"action": "generate"}))
    assert (status, body["error"]["available"]) == (402, 5)


def test_a_reserve_repeated_with_its_key_is_the_same_hold(use: ModuleType, funded: Ledger) -> None:
    first = reserve(use, amount=2, key="job-7")
    again = reserve(use, amount=2, key="job-7")
    assert first[1]["holdId"] == again[1]["holdId"] and again[2].get("Idempotent-Replayed") == "true"
    status, body, _ = reserve(use, amount=3, key="job-7")
    assert (status, body["error"]["code"]) == (409, "idempotency_key_reused")
    assert funded.account("user-1").held == 2


@pytest.mark.parametrize(
    "body",
    [
        {"amount": 1, "ttlSeconds": 0},
        {"amount": 1, "ttlSeconds": 86_401},
        {"amount": 1, "ttlSeconds": "60"},
        {"amount": 0},
        {"amount": 1, "action": "search"},
        {"action": "teleport"},
        {"amount": 1, "extra": True},
    ],
)
def test_bad_reserves_are_4xx_and_write_nothing(use: ModuleType, funded: Ledger, body: dict[str, Any]) -> None:
    status, answer, _ = reserve(use, **body)
    assert status in (400, 404) and answer["error"]["code"] in ("validation_error", "unknown_action")
    assert funded.account("user-1").held == 0


@pytest.mark.parametrize("body", [{"userId": "user-1", "amount": -1}, {"userId": "user-1", "amount": 1.0}, {}])
def test_bad_captures_are_400_and_the_hold_stays_open(use: ModuleType, funded: Ledger, body: dict[str, Any]) -> None:
    hold = reserve(use, amount=2)[1]["holdId"]
    status, answer, _ = internal(use, f"/internal/credits/holds/{hold}/capture", body)
    assert (status, answer["error"]["code"]) == (400, "validation_error")
    assert funded.account("user-1").held == 2
