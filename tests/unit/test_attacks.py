"""Attacks that once won, each kept as a test: reference squatting, two disputes on one payment,
oversized query numbers, and keys past DynamoDB's byte limits. (The fifth, handlers sharing state as
threads, is covered by running every concurrent container as a process: tests/integration.)"""

from __future__ import annotations

import json
from types import ModuleType

import pytest

from credits.ledger import Ledger
from credits.packages import Catalog
from credits.payments import Payments
from tests import stripe_events as se
from tests.support import FakeContext, http_event, invoke


@pytest.fixture
def payments(moto_dynamodb, ledger: Ledger) -> Payments:
    return Payments(ledger, Catalog(moto_dynamodb, "credits"), moto_dynamodb, "credits")


def send(fn: ModuleType, event_type: str, obj: dict) -> tuple[int, dict]:
    response = fn.lambda_handler(se.signed(se.event(event_type, obj)), FakeContext())
    return response["statusCode"], json.loads(response["body"])


def spend(use: ModuleType, user: str, key: str | None = None, **body: object) -> tuple[int, dict]:
    headers = {"Idempotency-Key": key} if key is not None else None
    status, answer, _ = invoke(
        use, http_event("POST", "/credits/use", sub=user, headers=headers, body={"action": "search", **body})
    )
    return status, answer


def problems(ledger: Ledger, payments: Payments, user: str) -> list[str]:
    return ledger.audit(user).problems + payments.audit(user, ledger.history(user))


# ---- 1. a client's reference can never occupy one the system writes ----------------------------


@pytest.mark.parametrize(
    "squatted",
    [
        "refund:pi_squat:100",  # the reference refunds were written under
        "settle:pi_squat:1",  # the reference the first settlement step is written under
        "purchase:pi_squat",  # the purchase's own reference
        "dispute:dp_squat:100",
    ],
)
def test_a_user_cannot_block_their_own_refund_with_a_reference(
    webhook: ModuleType, use: ModuleType, bal: ModuleType, ledger: Ledger, payments: Payments, squatted: str
) -> None:
    if squatted.startswith("purchase:"):
        # squatting before buying: the purchase must still be credited
        ledger.grant("mallory", 1, type="gift", description="seed")
        assert spend(use, "mallory", referenceId=squatted)[0] == 200
    assert send(webhook, "checkout.session.completed", se.session(user="mallory", payment_intent="pi_squat"))[0] == 200
    if not squatted.startswith("purchase:"):
        assert spend(use, "mallory", referenceId=squatted)[0] == 200
    before = ledger.balance("mallory")

    status, body = send(webhook, "charge.refunded", se.charge("pi_squat", refunded=500))

    assert (status, body["outcome"], body["credits"]) == (200, "clawed_back", 100)
    assert ledger.balance("mallory") == before - 100
    assert problems(ledger, payments, "mallory") == []
    # the user's own reference still replays as theirs
    status, again = spend(use, "mallory", referenceId=squatted)
    assert (status, again["charged"]) == (200, 1)
    assert ledger.balance("mallory") == before - 100


def test_the_audit_catches_a_refund_the_ledger_never_took(
    webhook: ModuleType, ledger: Ledger, payments: Payments, moto_dynamodb
) -> None:
    """The state the squatting attack left behind: the refund on record, the credits never taken."""
    send(webhook, "checkout.session.completed", se.session(user="victim", payment_intent="pi_lost_refund"))
    assert problems(ledger, payments, "victim") == []
    moto_dynamodb.update_item(
        TableName="credits",
        Key={"pk": {"S": "PAYMENT#pi_lost_refund"}, "sk": {"S": "PAYMENT"}},
        UpdateExpression="SET refunded_amount = :all",
        ExpressionAttributeValues={":all": {"N": "500"}},
    )
    found = problems(ledger, payments, "victim")
    assert len(found) == 1 and "refunds took 0 credits" in found[0] and "require 100" in found[0]


def test_a_payment_on_record_for_another_user_is_a_5xx_not_a_quiet_200(
    webhook: ModuleType, ledger: Ledger, moto_dynamodb
) -> None:
    send(webhook, "checkout.session.completed", se.session(user="first", payment_intent="pi_twice"))
    status, body = send(webhook, "checkout.session.completed", se.session(user="second", payment_intent="pi_twice"))
    assert (status, body["error"]["code"]) == (500, "settlement_failed")
    assert "first" not in body["error"]["message"]  # nothing of ours leaks
    assert (ledger.balance("first"), ledger.balance("second")) == (100, 0)


def test_a_settlement_the_ledger_refuses_is_a_5xx(
    webhook: ModuleType, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever refuses a settlement step (here a conflict the ledger reports) is ours: 5xx, never 4xx."""
    from credits.errors import IdempotencyKeyReused

    send(webhook, "checkout.session.completed", se.session(user="u", payment_intent="pi_refused"))

    def refuses(*_a: object, **_k: object) -> None:
        raise IdempotencyKeyReused("conflict")

    monkeypatch.setattr(webhook.payments.ledger, "post", refuses)
    status, body = send(webhook, "charge.refunded", se.charge("pi_refused", refunded=500))
    assert (status, body["error"]["code"]) == (500, "settlement_failed")
    monkeypatch.undo()
    status, body = send(webhook, "charge.refunded", se.charge("pi_refused", refunded=500))  # Stripe retries
    assert (status, ledger.balance("u")) == (200, 0)


# ---- 2. every dispute on a payment counts ------------------------------------------------------


def dispute(webhook: ModuleType, which: str, status: str, event: str = "charge.dispute.created") -> tuple[int, dict]:
    return send(webhook, event, se.dispute("pi_two", status=status, dispute_id=f"dp_{which}"))


def test_two_disputes_one_won_one_lost_take_the_credits(
    webhook: ModuleType, ledger: Ledger, payments: Payments
) -> None:
    send(webhook, "checkout.session.completed", se.session(user="u2", payment_intent="pi_two"))
    assert dispute(webhook, "A", "needs_response")[1]["credits"] == 100
    assert dispute(webhook, "B", "needs_response")[0] == 200
    assert ledger.balance("u2") == 0
    status, body = dispute(webhook, "B", "won", "charge.dispute.closed")
    assert (status, body["credits"]) == (200, 0)  # A is still open: nothing is released
    assert ledger.balance("u2") == 0
    status, body = dispute(webhook, "A", "lost", "charge.dispute.closed")
    assert status == 200
    assert ledger.balance("u2") == 0
    assert problems(ledger, payments, "u2") == []


def test_credits_come_back_only_when_every_dispute_is_won(
    webhook: ModuleType, ledger: Ledger, payments: Payments
) -> None:
    send(webhook, "checkout.session.completed", se.session(user="u2", payment_intent="pi_two"))
    dispute(webhook, "A", "needs_response")
    dispute(webhook, "B", "warning_needs_response")
    assert dispute(webhook, "A", "won", "charge.dispute.closed")[1]["credits"] == 0
    assert ledger.balance("u2") == 0
    assert dispute(webhook, "B", "warning_closed", "charge.dispute.closed")[1]["credits"] == 100
    assert ledger.balance("u2") == 100
    # a third dispute after both were released holds again, under a new reference
    assert dispute(webhook, "C", "needs_response")[1]["credits"] == 100
    assert dispute(webhook, "C", "won", "charge.dispute.closed")[1]["credits"] == 100
    assert ledger.balance("u2") == 100
    history = ledger.history("u2")
    assert [t.amount for t in history] == [100, -100, 100, -100, 100]
    refs = [t.reference_id for t in history]
    assert len(set(refs)) == len(refs)  # every step its own reference
    assert problems(ledger, payments, "u2") == []


# ---- 3. numbers in the query -------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        {"limit": "9" * 5000},
        {"limit": "0" * 4000 + "5"},
        {"limit": "٣"},  # a digit, but not ASCII
        {"cursor": "eyJzZXEiOiAxMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDB9"},  # {"seq": 10**42}
        {"cursor": "eyJzZXEiOiA" + "5" * 6000},
    ],
)
def test_huge_numbers_in_paging_are_400(bal: ModuleType, query: dict[str, str]) -> None:
    status, body, _ = invoke(bal, http_event("GET", "/credits/transactions", query=query))
    assert (status, body["error"]["code"]) == (400, "validation_error")


# ---- 4. keys are limited in bytes ----------------------------------------------------------------

WIDE = "😀"  # 4 bytes in UTF-8


@pytest.mark.parametrize("field", ["key", "referenceId"])
def test_a_key_of_255_four_byte_characters_is_400_and_writes_nothing(
    use: ModuleType, ledger: Ledger, field: str
) -> None:
    ledger.grant("wide", 10, type="gift", description="seed")
    value = WIDE * 255
    status, body = spend(use, "wide", key=value) if field == "key" else spend(use, "wide", referenceId=value)
    assert (status, body["error"]["code"]) == (400, "validation_error")
    assert ledger.balance("wide") == 10


def test_a_key_within_255_bytes_works_whatever_its_characters(use: ModuleType, ledger: Ledger) -> None:
    ledger.grant("wide", 10, type="gift", description="seed")
    key, reference = WIDE * 63, "é" * 127  # 252 and 254 bytes
    assert spend(use, "wide", key=key, referenceId=reference)[1]["balance"] == 9
    status, body = spend(use, "wide", key=key, referenceId=reference)
    assert (status, body["balance"]) == (200, 9)  # replayed, not charged again
    assert spend(use, "wide", key="x" + key, referenceId=reference)[1]["balance"] == 9  # the reference replays


@pytest.mark.parametrize("body", [{"description": "\ud800"}, {"referenceId": "a\udfffb"}])
def test_lone_surrogates_are_400(use: ModuleType, ledger: Ledger, body: dict) -> None:
    ledger.grant("sur", 10, type="gift", description="seed")
    status, answer = spend(use, "sur", **body)
    assert (status, answer["error"]["code"]) == (400, "validation_error")
    assert ledger.balance("sur") == 10


def test_an_internal_user_id_over_255_bytes_is_400(use: ModuleType) -> None:
    body = {"userId": WIDE * 64, "amount": 5, "type": "gift", "description": "x"}
    status, answer, _ = invoke(use, http_event("POST", "/internal/credits/grant", sub=None, body=body))
    assert (status, answer["error"]["code"]) == (400, "validation_error")
