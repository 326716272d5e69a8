"""Credit lots over HTTP, on moto: a grant's lot terms (category, priority, expiry), their
validation (400, nothing written), their place in the Idempotency-Key's fingerprint, and what
GET /credits/balance tells of the lots (the next expiries, the credits by category)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from credits import api
from credits.errors import ValidationError
from credits.ledger import Idempotency, Ledger, LotTerms, fingerprint
from tests.support import Answer, ManualClock, http_event, invoke

DAY_MS = 86_400_000
NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
NOW_MS = int(NOW * 1000)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture
def ledger(moto_dynamodb, clock: ManualClock) -> Ledger:
    return Ledger(moto_dynamodb, "credits", clock=clock)


@pytest.fixture
def use(use: ModuleType, ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setattr(use, "ledger", ledger)  # the function's ledger, on the test's clock
    return use


@pytest.fixture
def bal(bal: ModuleType, ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setattr(bal, "ledger", ledger)
    return bal


def grant(use: ModuleType, amount: int, key: str | None = None, user: str = "user-1", **terms: Any) -> Answer:
    body = {"userId": user, "amount": amount, "type": "gift", "description": "Welcome bonus", **terms}
    headers = {"Idempotency-Key": key} if key else None
    return invoke(use, http_event("POST", "/internal/credits/grant", sub=None, body=body, headers=headers))


def balance(bal: ModuleType, user: str = "user-1") -> dict[str, Any]:
    answer = invoke(bal, http_event("GET", "/credits/balance", sub=user))
    assert answer.status == 200, answer.body
    return answer.body


def test_a_grant_without_terms_is_paid_credits_that_never_expire(use: ModuleType, bal: ModuleType, ledger) -> None:
    assert grant(use, 100).status == 200
    [lot] = ledger.account("user-1").lots
    assert (lot.category, lot.priority, lot.expires_at_ms, lot.remaining) == ("paid", 50, None, 100)
    assert balance(bal) == {
        "balance": 100,
        "available": 100,
        "held": 0,
        "expiring": [],
        "byCategory": {"paid": 100, "promotional": 0},
    }


def test_a_promotional_grant_with_an_expiry_shows_in_the_balance(use: ModuleType, bal: ModuleType, ledger) -> None:
    assert grant(use, 100).status == 200
    promo = grant(use, 40, category="promotional", expiresAt="2027-02-01T00:00:00Z")
    assert (promo.status, promo.body["balance"]) == (200, 140)
    assert grant(use, 25, category="paid", priority=5, expiresInDays=30).status == 200

    lots = ledger.account("user-1").lots  # in burn order: priority 5, then promotional (10), then paid (50)
    assert [(lot.category, lot.priority, lot.expires_at_ms, lot.remaining, lot.label) for lot in lots] == [
        ("paid", 5, NOW_MS + 30 * DAY_MS, 25, "Welcome bonus"),
        ("promotional", 10, 1_801_440_000_000, 40, "Welcome bonus"),
        ("paid", 50, None, 100, "Welcome bonus"),
    ]
    body = balance(bal)
    assert (body["balance"], body["available"], body["held"]) == (165, 165, 0)
    assert body["expiring"] == [
        {"amount": 40, "expiresAt": "2027-02-01T00:00:00.000Z"},
        {"amount": 25, "expiresAt": "2027-02-14T08:00:00.000Z"},
    ]
    assert body["byCategory"] == {"paid": 125, "promotional": 40}


def test_an_offset_expiry_is_the_same_instant_in_utc(use: ModuleType, ledger) -> None:
    assert grant(use, 10, expiresAt="2027-02-01T05:30:00+05:30").status == 200
    [lot] = ledger.account("user-1").lots
    assert lot.expires_at == "2027-02-01T00:00:00.000Z"


def test_only_the_soonest_three_expiries_are_listed(use: ModuleType, bal: ModuleType) -> None:
    for days, amount in [(40, 4), (10, 1), (30, 3), (20, 2)]:
        assert grant(use, amount, category="promotional", expiresInDays=days).status == 200
    body = balance(bal)
    assert [e["amount"] for e in body["expiring"]] == [1, 2, 3]
    assert body["byCategory"] == {"paid": 0, "promotional": 10}


def test_held_credits_still_count_in_their_category(use: ModuleType, bal: ModuleType) -> None:
    grant(use, 30, category="promotional", expiresInDays=10)
    grant(use, 100)
    held = invoke(
        use,
        http_event(
            "POST", "/internal/credits/holds", sub=None, body={"userId": "user-1", "amount": 35, "description": "x"}
        ),
    )
    assert held.status == 201, held.body
    body = balance(bal)
    assert (body["balance"], body["available"], body["held"]) == (130, 95, 35)
    # the hold drew the promotional lot first (priority 10), then 5 paid credits: still theirs
    assert body["byCategory"] == {"paid": 100, "promotional": 30}
    assert body["expiring"] == []  # all 30 expiring credits are held: none would expire as they stand


def test_an_expired_lot_stops_counting_and_the_next_write_records_it(
    use: ModuleType, bal: ModuleType, ledger: Ledger, clock: ManualClock
) -> None:
    grant(use, 100)
    grant(use, 70, category="promotional", expiresInDays=3)
    assert balance(bal)["balance"] == 170
    clock.now += 3 * 86_400
    body = balance(bal)
    assert (body["balance"], body["available"], body["expiring"]) == (100, 100, [])
    assert body["byCategory"] == {"paid": 100, "promotional": 0}
    assert [t.type for t in ledger.history("user-1")] == ["gift", "gift"]  # a read writes nothing

    spent = invoke(use, http_event("POST", "/credits/use", body={"action": "analyze"}))
    assert (spent.status, spent.body["balance"]) == (200, 95)
    page = invoke(bal, http_event("GET", "/credits/transactions"))
    assert [(t["type"], t["amount"], t["balanceAfter"]) for t in page.body["transactions"]] == [
        ("usage", -5, 95),
        ("expiration", -70, 100),
        ("gift", 70, 170),
        ("gift", 100, 100),
    ]
    assert page.body["transactions"][1]["description"] == "Expired: 70 credits of Welcome bonus (granted 15 Jan 2027)"


@pytest.mark.parametrize(
    ("terms", "field"),
    [
        ({"category": "bonus"}, "category"),
        ({"category": "PAID"}, "category"),
        ({"priority": -1}, "priority"),
        ({"priority": 101}, "priority"),
        ({"priority": "5"}, "priority"),
        ({"priority": True}, "priority"),
        ({"priority": 5.0}, "priority"),
        ({"expiresAt": "2027-02-01T00:00:00"}, "expiresAt"),  # no time zone
        ({"expiresAt": "2027-02-01"}, "expiresAt"),
        ({"expiresAt": "next tuesday"}, "expiresAt"),
        ({"expiresAt": 1_801_440_000}, "expiresAt"),
        ({"expiresAt": "9999-12-31T23:59:59-01:00"}, "expiresAt"),  # past what anyone could read back
        ({"expiresAt": "2037-01-12T08:00:00.001Z"}, "expiresAt"),  # over 3650 days ahead
        ({"expiresInDays": 0}, "expiresInDays"),
        ({"expiresInDays": 3651}, "expiresInDays"),
        ({"expiresInDays": "30"}, "expiresInDays"),
        ({"expiresAt": "2027-02-01T00:00:00Z", "expiresInDays": 30}, None),
        ({"expires": "2027-02-01T00:00:00Z"}, "expires"),
    ],
)
def test_bad_terms_are_400_and_write_nothing(use: ModuleType, moto_dynamodb, terms: dict, field: str | None) -> None:
    answer = grant(use, 50, key="k-1", **terms)
    assert (answer.status, answer.code) == (400, "validation_error"), answer.body
    assert field in [e["field"] for e in answer.body["error"]["errors"]]
    assert moto_dynamodb.scan(TableName="credits")["Items"] == []  # not even the key's marker


def test_the_longest_expiries_are_accepted(use: ModuleType, ledger: Ledger) -> None:
    assert grant(use, 1, expiresInDays=3650).status == 200
    assert grant(use, 1, user="user-2", expiresAt="2037-01-12T08:00:00Z").status == 200
    assert ledger.account("user-1").lots[0].expires_at_ms == NOW_MS + 3650 * DAY_MS


def test_null_terms_are_the_same_as_none(use: ModuleType, ledger: Ledger) -> None:
    nulls: dict[str, Any] = {"category": None, "priority": None, "expiresAt": None, "expiresInDays": None}
    assert grant(use, 10, **nulls).status == 200
    [lot] = ledger.account("user-1").lots
    assert (lot.category, lot.expires_at_ms) == ("paid", None)


def test_a_replay_must_repeat_the_terms(use: ModuleType, ledger: Ledger) -> None:
    first = grant(use, 30, key="promo-1", category="promotional", expiresInDays=7)
    again = grant(use, 30, key="promo-1", category="promotional", expiresInDays=7)
    assert (again.status, again.headers.get("Idempotent-Replayed"), again.body) == (200, "true", first.body)
    others: list[dict[str, Any]] = [
        {"category": "paid", "expiresInDays": 7},
        {"category": "promotional", "expiresInDays": 8},
        {},
    ]
    for other in others:
        refused = grant(use, 30, key="promo-1", **other)
        assert (refused.status, refused.code) == (409, "idempotency_key_reused"), other
    assert ledger.balance("user-1") == 30 and len(ledger.history("user-1")) == 1


def test_a_grant_without_terms_keeps_its_fingerprint_from_before_lots() -> None:
    """A retry sent across the upgrade, with the same key and body, is still the same request."""
    body = {"userId": "u", "amount": 5, "type": "gift", "description": "d", "referenceId": None}
    request = api.GrantRequest.model_validate(body)
    before = fingerprint({"route": "POST /internal/credits/grant", "userId": "u", "body": body})
    idem = api.idempotency("k", "POST /internal/credits/grant", "u", request)
    assert idem is not None and idem.fingerprint == before


def test_an_adjustment_takes_terms_too(use: ModuleType, ledger: Ledger) -> None:
    answer = grant(use, 15, type="adjustment", category="promotional", priority=0, expiresInDays=1)
    assert answer.status == 200
    [lot] = ledger.account("user-1").lots
    assert (lot.category, lot.priority, lot.expires_at_ms) == ("promotional", 0, NOW_MS + DAY_MS)
    assert [t.type for t in ledger.history("user-1")] == ["adjustment"]


def test_a_grant_the_ledger_finds_expired_is_refused_and_the_refusal_kept_under_its_key(
    ledger: Ledger, clock: ManualClock
) -> None:
    """Its expiry passed between the API's check and the decision (or on a container whose clock runs
    ahead): refused 400, and the refusal is what the key answers while it is remembered, even on a
    clock that is behind the expiry again."""
    key = Idempotency("k-late", "fp-1")
    terms = LotTerms("promotional", None, NOW_MS + 500, "Flash")
    clock.now += 1
    for _ in range(2):
        with pytest.raises(ValidationError, match="expiresAt must be in the future"):
            ledger.grant("user-1", 50, type="gift", description="Flash", idempotency=key, lot=terms)
        clock.now -= 1  # a retry on a container whose clock is behind
    assert ledger.balance("user-1") == 0


def test_capturing_all_of_a_hold_moves_when_the_account_is_next_due(moto_dynamodb, ledger: Ledger) -> None:
    """The hold drew all of a dated lot: the account is due when the lot expires (the hold's credits
    could come back to it); once the hold is captured in full nothing is due at all."""
    ledger.grant("user-1", 30, type="gift", description="Flash", lot=LotTerms("paid", None, NOW_MS + 10 * DAY_MS))
    hold = ledger.reserve("user-1", 30, description="job", ttl_seconds=86_400)

    def due() -> Any:
        item = moto_dynamodb.get_item(TableName="credits", Key={"pk": {"S": "USER#user-1"}, "sk": {"S": "ACCOUNT"}})
        return item["Item"].get("lots_due", {}).get("N")

    assert due() == str(NOW_MS + 10 * DAY_MS)  # nothing left in the lot to warn of: the hold keeps it
    ledger.capture("user-1", hold.hold_id)
    assert due() is None


@pytest.mark.parametrize("expires_at", ["2027-01-15T07:59:59Z", "2027-01-15T08:00:00Z"])  # a second ago; now
def test_an_expiry_that_passed_is_a_400_that_grants_nothing_and_a_retry_of_a_landed_grant_replays(
    use: ModuleType, ledger: Ledger, clock: ManualClock, expires_at: str
) -> None:
    refused = grant(use, 50, key="k-past", expiresAt=expires_at)
    assert (refused.status, refused.code) == (400, "validation_error")
    assert refused.body["error"]["message"] == "expiresAt must be in the future."
    assert ledger.balance("user-1") == 0 and ledger.history("user-1") == []
    assert grant(use, 50, key="k-past", expiresAt=expires_at).status == 400  # the same answer again

    landed = grant(use, 50, key="k-later", expiresAt="2027-01-15T08:00:05Z")
    assert landed.status == 200
    clock.now += 10  # its answer was lost; the client retries after the expiry passed
    again = grant(use, 50, key="k-later", expiresAt="2027-01-15T08:00:05Z")
    assert (again.status, again.body) == (200, landed.body)
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert [t.amount for t in ledger.history("user-1")] == [50]  # granted once (a replay writes nothing)
    assert ledger.account("user-1").balance == 0  # and expired since
