"""Holds in the ledger (moto): reserve, capture, release, expiry, and what they do to `available`."""

from __future__ import annotations

import pytest

from credits import keys
from credits.errors import (
    CaptureExceedsHold,
    HoldCaptured,
    HoldExpired,
    HoldNotFound,
    HoldReleased,
    IdempotencyKeyReused,
    InsufficientCredits,
    TooManyHolds,
    ValidationError,
)
from credits.ledger import Idempotency, Ledger, from_item, to_item
from tests.support import ManualClock as Clock


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(moto_dynamodb, clock: Clock) -> Ledger:
    ledger = Ledger(moto_dynamodb, "credits", clock=clock, sleep=lambda _s: None)
    ledger.grant("ann", 10, type="gift", description="seed")
    return ledger


def state(ledger: Ledger, user: str, hold_id: str) -> str:
    hold = ledger.hold(user, hold_id)
    assert hold is not None
    return hold.state


def account_item(moto_dynamodb, user: str = "ann") -> dict:
    key = to_item({"pk": keys.user_pk(user), "sk": keys.ACCOUNT})
    return from_item(moto_dynamodb.get_item(TableName="credits", Key=key)["Item"])


def test_a_hold_takes_from_available_but_never_from_the_balance_or_the_ledger(ledger: Ledger) -> None:
    hold = ledger.reserve("ann", 4, description="generate")
    assert (hold.amount, hold.balance, hold.available) == (4, 10, 6)
    view = ledger.account("ann")
    assert (view.balance, view.available, view.held) == (10, 6, 4)
    assert [t.amount for t in ledger.history("ann")] == [10]
    assert [(h.hold_id, h.amount, h.description) for h in ledger.holds("ann")] == [(hold.hold_id, 4, "generate")]
    assert ledger.audit("ann").ok


def test_charges_and_holds_are_refused_whole_beyond_available(ledger: Ledger) -> None:
    ledger.reserve("ann", 8, description="a")
    with pytest.raises(InsufficientCredits) as charge:
        ledger.charge("ann", 3, description="search")
    assert (charge.value.required, charge.value.balance, charge.value.available) == (3, 10, 2)
    with pytest.raises(InsufficientCredits):
        ledger.reserve("ann", 3, description="b")
    ledger.charge("ann", 2, description="search")
    assert ledger.account("ann").available == 0
    assert [t.amount for t in ledger.history("ann")] == [10, -2]


def test_capture_posts_one_usage_entry_referenced_to_the_hold(ledger: Ledger) -> None:
    hold = ledger.reserve("ann", 5, description="analyze")
    captured = ledger.capture("ann", hold.hold_id)
    assert (captured.charged, captured.balance, captured.available) == (5, 5, 5)
    last = ledger.history("ann")[-1]
    assert (last.amount, last.type, last.reference_id, last.description) == (
        -5,
        "usage",
        f"hold:{hold.hold_id}",
        "analyze",
    )
    assert last.id == captured.transaction_id
    assert ledger.holds("ann") == [] and ledger.audit("ann").ok


def test_capture_twice_replays_and_a_different_second_capture_is_refused(ledger: Ledger) -> None:
    hold = ledger.reserve("ann", 5, description="a")
    first = ledger.capture("ann", hold.hold_id, 3)
    again = ledger.capture("ann", hold.hold_id, 3)
    default = ledger.capture("ann", hold.hold_id)
    assert again.transaction_id == first.transaction_id == default.transaction_id and again.replayed
    assert (again.charged, again.balance) == (3, 7)
    with pytest.raises(HoldCaptured):
        ledger.capture("ann", hold.hold_id, 4)
    with pytest.raises(HoldCaptured):
        ledger.release("ann", hold.hold_id)
    assert [t.amount for t in ledger.history("ann")] == [10, -3]


def test_partial_capture_gives_the_rest_back_and_capture_of_zero_posts_nothing(ledger: Ledger) -> None:
    part = ledger.reserve("ann", 6, description="a")
    assert ledger.capture("ann", part.hold_id, 2).available == 8
    zero = ledger.reserve("ann", 4, description="b")
    captured = ledger.capture("ann", zero.hold_id, 0)
    assert (captured.transaction_id, captured.charged, captured.balance, captured.available) == (None, 0, 8, 8)
    assert [t.amount for t in ledger.history("ann")] == [10, -2]
    assert state(ledger, "ann", zero.hold_id) == "captured"


def test_release_charges_nothing_replays_and_cannot_be_captured_after(ledger: Ledger) -> None:
    hold = ledger.reserve("ann", 7, description="a")
    released = ledger.release("ann", hold.hold_id)
    assert (released.released, released.balance, released.available) == (7, 10, 10)
    assert ledger.release("ann", hold.hold_id).replayed
    with pytest.raises(HoldReleased):
        ledger.capture("ann", hold.hold_id)
    assert [t.amount for t in ledger.history("ann")] == [10]


def test_a_capture_above_the_hold_changes_nothing_and_the_hold_stays_open(ledger: Ledger) -> None:
    hold = ledger.reserve("ann", 3, description="a")
    with pytest.raises(CaptureExceedsHold):
        ledger.capture("ann", hold.hold_id, 4)
    assert state(ledger, "ann", hold.hold_id) == "open"
    assert ledger.account("ann").available == 7
    assert ledger.capture("ann", hold.hold_id, 3).balance == 7


def test_an_expired_hold_counts_for_nothing_from_its_expiry_on_without_any_write(
    ledger: Ledger, clock: Clock, moto_dynamodb
) -> None:
    hold = ledger.reserve("ann", 9, description="a", ttl_seconds=1)
    clock.now += 0.999
    assert ledger.account("ann").available == 1
    clock.now += 0.001  # its expiresAt: from this millisecond on it counts for nothing
    assert ledger.account("ann").available == 10 and ledger.holds("ann") == []
    assert ledger.charge("ann", 10, description="all of it").balance == 0
    with pytest.raises(HoldExpired):
        ledger.capture("ann", hold.hold_id)
    assert ledger.release("ann", hold.hold_id).released == 9  # nothing to give back, says so
    assert [t.amount for t in ledger.history("ann")] == [10, -10]
    assert state(ledger, "ann", hold.hold_id) == "expired"


def test_the_account_item_keeps_only_open_holds(ledger: Ledger, clock: Clock, moto_dynamodb) -> None:
    for _ in range(5):
        ledger.reserve("ann", 1, description="short", ttl_seconds=1)
    clock.now += 2
    ledger.reserve("ann", 1, description="later")
    assert len(account_item(moto_dynamodb)["holds"]) == 1


def test_an_account_keeps_a_bounded_number_of_open_holds(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, moto_dynamodb
) -> None:
    monkeypatch.setattr("credits.ledger.rules.MAX_OPEN_HOLDS", 3)
    for _ in range(3):
        ledger.reserve("ann", 1, description="a")
    with pytest.raises(TooManyHolds):
        ledger.reserve("ann", 1, description="a")
    assert ledger.account("ann").held == 3


def test_another_users_hold_is_not_found(ledger: Ledger) -> None:
    ledger.grant("bob", 10, type="gift", description="seed")
    hold = ledger.reserve("ann", 2, description="a")
    with pytest.raises(HoldNotFound):
        ledger.capture("bob", hold.hold_id)
    with pytest.raises(HoldNotFound):
        ledger.release("bob", hold.hold_id)
    assert ledger.account("ann").held == 2 and ledger.balance("bob") == 10


def test_a_reserve_repeated_with_its_key_returns_the_same_hold(ledger: Ledger) -> None:
    key = Idempotency("k1", "f1")
    first = ledger.reserve("ann", 2, description="a", idempotency=key)
    again = ledger.reserve("ann", 2, description="a", idempotency=key)
    assert again.hold_id == first.hold_id and again.replayed and ledger.account("ann").held == 2
    with pytest.raises(IdempotencyKeyReused):
        ledger.reserve("ann", 2, description="a", idempotency=Idempotency("k1", "other"))
    with pytest.raises(IdempotencyKeyReused):  # a hold's key sent with a charge
        ledger.charge("ann", 2, description="a", idempotency=Idempotency("k1", "f1"))


def test_a_released_holds_key_reserves_again(ledger: Ledger) -> None:
    key = Idempotency("retry-me", "f")
    first = ledger.reserve("ann", 2, description="a", idempotency=key)
    ledger.release("ann", first.hold_id)
    second = ledger.reserve("ann", 2, description="a", idempotency=key)
    assert second.hold_id != first.hold_id and not second.replayed
    assert ledger.capture("ann", second.hold_id).balance == 8


def test_a_capture_never_takes_a_balance_below_zero_after_a_clawback(ledger: Ledger) -> None:
    hold = ledger.reserve("ann", 10, description="a")
    ledger.claw_back("ann", 5, type="refund", description="refund", reference_id="r")
    with pytest.raises(InsufficientCredits):
        ledger.capture("ann", hold.hold_id)
    assert state(ledger, "ann", hold.hold_id) == "open" and ledger.balance("ann") == 5
    assert ledger.capture("ann", hold.hold_id, 5).balance == 0


@pytest.mark.parametrize("ttl", [0, 86_401, 1.5, True])
def test_bad_ttl_is_refused(ledger: Ledger, ttl: object) -> None:
    with pytest.raises(ValidationError):
        ledger.reserve("ann", 1, description="a", ttl_seconds=ttl)  # type: ignore[arg-type]


def test_reserve_and_capture_each_cost_one_read_and_one_transaction(ledger: Ledger, moto_dynamodb) -> None:
    calls: list[str] = []
    moto_dynamodb.meta.events.register("before-call.dynamodb", lambda model, **_: calls.append(model.name))
    hold = ledger.reserve("ann", 1, description="a", idempotency=Idempotency("k", "f"))
    assert calls == ["BatchGetItem", "TransactWriteItems"]
    calls.clear()
    ledger.capture("ann", hold.hold_id)
    assert calls == ["BatchGetItem", "TransactWriteItems"]
    calls.clear()
    ledger.charge("ann", 1, description="search")  # a charge next to holds still reads one item
    assert calls == ["GetItem", "TransactWriteItems"]


def test_a_hold_a_writer_ahead_in_time_has_pruned_can_no_longer_charge(
    ledger: Ledger, clock: Clock, moto_dynamodb
) -> None:
    """Clocks of two containers differ: once the account no longer counts a hold, it cannot be captured."""
    first = ledger.reserve("ann", 10, description="a", ttl_seconds=5)
    ahead = Clock(clock.now + 6)  # this writer believes the hold has expired
    Ledger(moto_dynamodb, "credits", clock=ahead, sleep=lambda _s: None).reserve("ann", 10, description="b")
    with pytest.raises(HoldExpired):
        ledger.capture("ann", first.hold_id)
    view = ledger.account("ann")
    assert (view.balance, view.available, view.held) == (10, 0, 10)
    assert [t.amount for t in ledger.history("ann")] == [10]
