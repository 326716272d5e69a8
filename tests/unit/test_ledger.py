"""The ledger on moto: grants, charges, references, idempotency, paging and the audit."""

from __future__ import annotations

import pytest

from credits.errors import (
    IdempotencyKeyReused,
    InsufficientCredits,
    ReferenceReused,
    ValidationError,
)
from credits.ledger import IDEMPOTENCY_TTL_SECONDS, Idempotency, Ledger, from_item, to_item


@pytest.fixture
def ledger(moto_dynamodb) -> Ledger:
    return Ledger(moto_dynamodb, "credits", sleep=lambda _s: None)


def test_a_new_user_has_zero_credits_and_an_empty_ledger(ledger: Ledger) -> None:
    assert ledger.balance("nobody") == 0
    assert ledger.transactions("nobody") == ([], None)
    assert ledger.audit("nobody").ok


def test_buy_100_spend_3_leaves_97_with_a_two_line_ledger(ledger: Ledger) -> None:
    bought = ledger.grant(
        "ann",
        100,
        type="purchase",
        description="Starter pack",
        reference_id="pi_1",
        monetary_amount=500,
        currency="usd",
    )
    spent = ledger.charge("ann", 3, description="analyze")

    assert (bought.balance, spent.balance, spent.amount) == (100, 97, -3)
    assert ledger.balance("ann") == 97
    history = ledger.history("ann")
    assert [(t.seq, t.type, t.amount, t.balance_after) for t in history] == [
        (1, "purchase", 100, 100),
        (2, "usage", -3, 97),
    ]
    assert (history[0].monetary_amount, history[0].currency, history[0].reference_id) == (500, "usd", "pi_1")
    assert history[1].id == spent.transaction_id
    assert ledger.audit("ann").ok


def test_a_charge_larger_than_the_balance_fails_whole_and_writes_nothing(ledger: Ledger) -> None:
    ledger.grant("bob", 4, type="gift", description="welcome")
    with pytest.raises(InsufficientCredits) as caught:
        ledger.charge("bob", 5, description="analyze")
    assert (caught.value.required, caught.value.balance) == (5, 4)
    assert ledger.balance("bob") == 4
    assert len(ledger.history("bob")) == 1


def test_charging_exactly_the_balance_reaches_zero(ledger: Ledger) -> None:
    ledger.grant("bob", 5, type="gift", description="welcome")
    assert ledger.charge("bob", 5, description="analyze").balance == 0
    with pytest.raises(InsufficientCredits):
        ledger.charge("bob", 1, description="search")


def test_a_user_without_an_account_cannot_spend(ledger: Ledger) -> None:
    with pytest.raises(InsufficientCredits) as caught:
        ledger.charge("ghost", 1, description="search")
    assert caught.value.balance == 0
    assert ledger.history("ghost") == []


def test_a_negative_balance_from_a_clawback_blocks_every_charge(ledger: Ledger) -> None:
    ledger.grant("cat", 10, type="purchase", description="pack", reference_id="pi_9")
    ledger.charge("cat", 8, description="generate")
    clawed = ledger.claw_back("cat", 10, type="refund", description="refund", reference_id="re_1")
    assert clawed.balance == -8
    with pytest.raises(InsufficientCredits) as caught:
        ledger.charge("cat", 1, description="search")
    assert caught.value.balance == -8
    ledger.grant("cat", 9, type="adjustment", description="paid back")
    assert ledger.charge("cat", 1, description="search").balance == 0
    assert ledger.audit("cat").ok


def test_the_same_reference_twice_changes_the_balance_once(ledger: Ledger) -> None:
    first = ledger.grant(
        "dan",
        50,
        type="purchase",
        description="pack",
        reference_id="pi_7",
        monetary_amount=1000,
        currency="eur",
    )
    again = ledger.grant(
        "dan",
        50,
        type="purchase",
        description="pack",
        reference_id="pi_7",
        monetary_amount=1000,
        currency="eur",
    )
    assert ledger.balance("dan") == 50
    assert again.replayed and not first.replayed
    assert (again.transaction_id, again.balance) == (first.transaction_id, 50)
    assert len(ledger.history("dan")) == 1


def test_a_reference_reused_for_a_different_change_is_refused(ledger: Ledger) -> None:
    ledger.grant("dan", 50, type="gift", description="x", reference_id="promo")
    with pytest.raises(ReferenceReused):
        ledger.grant("dan", 60, type="gift", description="x", reference_id="promo")
    assert ledger.balance("dan") == 50


def test_an_idempotency_key_replays_the_first_result(ledger: Ledger) -> None:
    ledger.grant("eve", 20, type="gift", description="welcome")
    key = Idempotency("k-1", "fingerprint-a")
    first = ledger.charge("eve", 5, description="analyze", idempotency=key)
    ledger.charge("eve", 1, description="search")
    replay = ledger.charge("eve", 5, description="analyze", idempotency=key)
    assert replay.replayed
    assert (replay.transaction_id, replay.balance) == (first.transaction_id, 15)
    assert ledger.balance("eve") == 14


def test_an_idempotency_key_with_a_different_request_is_refused(ledger: Ledger) -> None:
    ledger.grant("eve", 20, type="gift", description="welcome")
    ledger.charge("eve", 5, description="analyze", idempotency=Idempotency("k-1", "a"))
    with pytest.raises(IdempotencyKeyReused):
        ledger.charge("eve", 5, description="analyze", idempotency=Idempotency("k-1", "b"))
    assert ledger.balance("eve") == 15


def test_idempotency_markers_expire_after_at_least_a_day(ledger: Ledger, moto_dynamodb) -> None:
    now = [1_800_000_000.0]
    timed = Ledger(moto_dynamodb, "credits", clock=lambda: now[0], sleep=lambda _s: None)
    timed.grant("fay", 20, type="gift", description="welcome")
    timed.charge("fay", 5, description="analyze", idempotency=Idempotency("k", "f"))
    marker = from_item(
        moto_dynamodb.get_item(TableName="credits", Key=to_item({"pk": "USER#fay", "sk": "IDEM#k"}))["Item"]
    )
    assert marker["expires_at"] - int(now[0]) == IDEMPOTENCY_TTL_SECONDS >= 24 * 3600

    now[0] += IDEMPOTENCY_TTL_SECONDS - 1  # still alive: a replay
    assert timed.charge("fay", 5, description="analyze", idempotency=Idempotency("k", "f")).replayed
    now[0] += 2  # expired (TTL deletes lazily): the key is free again
    fresh = timed.charge("fay", 5, description="analyze", idempotency=Idempotency("k", "f"))
    assert not fresh.replayed and fresh.balance == 10


@pytest.mark.parametrize("amount", [0, -1, 1.0, 2.5, "5", True, None, 1_000_000_001, 10**30])
def test_amounts_that_are_not_positive_integers_are_refused(ledger: Ledger, amount: object) -> None:
    ledger.grant("gus", 10, type="gift", description="welcome")
    with pytest.raises(ValidationError):
        ledger.charge("gus", amount, description="x")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        ledger.grant("gus", amount, type="gift", description="x")  # type: ignore[arg-type]
    assert ledger.balance("gus") == 10
    assert len(ledger.history("gus")) == 1


def test_overlong_references_and_keys_are_refused(ledger: Ledger) -> None:
    with pytest.raises(ValidationError):
        ledger.grant("hal", 1, type="gift", description="x", reference_id="r" * 256)
    with pytest.raises(ValidationError):
        ledger.grant("hal", 1, type="gift", description="x", idempotency=Idempotency("k" * 256, "f"))
    assert ledger.history("hal") == []


def test_transactions_page_newest_first_with_a_cursor(ledger: Ledger) -> None:
    for i in range(1, 8):
        ledger.grant("ivy", i, type="gift", description=f"gift {i}")
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        page, cursor = ledger.transactions("ivy", limit=3, cursor=cursor)
        seen.extend(t.seq for t in page)
        pages += 1
        if cursor is None:
            break
    assert seen == [7, 6, 5, 4, 3, 2, 1]
    assert pages == 3


def test_a_forged_cursor_is_a_validation_error(ledger: Ledger) -> None:
    for bad in ("not-base64!", "eyJ4IjoxfQ", "eyJzZXEiOiAtMX0"):
        with pytest.raises(ValidationError):
            ledger.transactions("ivy", cursor=bad)


def test_the_audit_finds_a_tampered_ledger(ledger: Ledger, moto_dynamodb) -> None:
    ledger.grant("jo", 10, type="gift", description="a")
    ledger.charge("jo", 3, description="b")
    assert ledger.audit("jo").ok
    moto_dynamodb.update_item(
        TableName="credits",
        Key=to_item({"pk": "USER#jo", "sk": "ACCOUNT"}),
        UpdateExpression="SET balance = :b",
        ExpressionAttributeValues=to_item({":b": 1000}),
    )
    report = ledger.audit("jo")
    assert not report.ok
    assert any("balance" in p for p in report.problems)


def test_a_charge_costs_one_read_and_one_transaction(ledger: Ledger, moto_dynamodb) -> None:
    ledger.grant("kim", 10, type="gift", description="a")
    calls: list[str] = []
    moto_dynamodb.meta.events.register("before-call.dynamodb", lambda model, **_: calls.append(model.name))
    ledger.charge("kim", 1, description="search")
    assert calls == ["GetItem", "TransactWriteItems"]
    calls.clear()
    ledger.charge("kim", 1, description="search", reference_id="r1", idempotency=Idempotency("k", "f"))
    assert calls == ["BatchGetItem", "TransactWriteItems"]


# ---- an operator's adjustments: a debit never below zero unless forced with a reason ----------


def test_an_adjustment_debit_takes_credits_away_down_to_zero_and_no_further(ledger: Ledger) -> None:
    ledger.grant("eve", 10, type="gift", description="welcome")
    taken = ledger.adjust("eve", -4, description="duplicate gift", reference_id="ticket-1")
    assert (taken.amount, taken.balance) == (-4, 6)
    with pytest.raises(InsufficientCredits) as caught:
        ledger.adjust("eve", -7, description="too much")
    assert (caught.value.balance, caught.value.available) == (6, 6)
    assert ledger.adjust("eve", -6, description="all of it").balance == 0
    history = ledger.history("eve")
    assert [(t.type, t.amount, t.balance_after) for t in history] == [
        ("gift", 10, 10),
        ("adjustment", -4, 6),
        ("adjustment", -6, 0),
    ]
    assert [t.reason for t in history] == [None, None, None]
    # a repeat of a reference replays, a different change under it is refused
    again = ledger.adjust("eve", -4, description="duplicate gift", reference_id="ticket-1")
    assert (again.replayed, again.transaction_id) == (True, taken.transaction_id)
    with pytest.raises(ReferenceReused):
        ledger.adjust("eve", -3, description="other", reference_id="ticket-1")
    assert ledger.audit("eve").ok and ledger.balance("eve") == 0


def test_an_adjustment_debit_counts_open_holds(ledger: Ledger) -> None:
    ledger.grant("fay", 10, type="gift", description="welcome")
    ledger.reserve("fay", 7, description="running")
    with pytest.raises(InsufficientCredits) as caught:
        ledger.adjust("fay", -4, description="would leave the hold uncovered")
    assert (caught.value.balance, caught.value.available) == (10, 3)
    assert ledger.adjust("fay", -3, description="what is free").balance == 7
    assert ledger.account("fay").available == 0


def test_an_adjustment_debit_never_deepens_a_negative_balance_unless_forced(ledger: Ledger) -> None:
    ledger.grant("gus", 10, type="purchase", description="pack", reference_id="pi_g")
    ledger.charge("gus", 8, description="use")
    ledger.claw_back("gus", 10, type="refund", description="refund", reference_id="re_g")
    with pytest.raises(InsufficientCredits):
        ledger.adjust("gus", -1, description="more")
    assert ledger.balance("gus") == -8


def test_a_forced_adjustment_may_go_below_zero_and_keeps_its_reason(ledger: Ledger) -> None:
    ledger.grant("hal", 5, type="gift", description="welcome")
    forced = ledger.adjust("hal", -8, description="promo reversed", force_negative=True, reason="ticket 42: abuse")
    assert forced.balance == -3
    last = ledger.history("hal")[-1]
    assert (last.type, last.amount, last.description, last.reason) == (
        "adjustment",
        -8,
        "promo reversed",
        "ticket 42: abuse",
    )
    assert ledger.audit("hal").ok


@pytest.mark.parametrize(
    ("amount", "kwargs"),
    [
        (0, {}),
        (-5, {"force_negative": True}),  # forced needs a reason
        (-5, {"force_negative": True, "reason": "  "}),
        (5, {"force_negative": True, "reason": "a credit is never forced"}),
        (-1_000_000_001, {}),
    ],
)
def test_invalid_adjustments_write_nothing(ledger: Ledger, moto_dynamodb, amount: int, kwargs: dict) -> None:
    with pytest.raises(ValidationError):
        ledger.adjust("ivy", amount, description="x", **kwargs)
    assert moto_dynamodb.scan(TableName="credits")["Items"] == []


def test_an_adjustment_credit_is_a_grant(ledger: Ledger) -> None:
    assert ledger.adjust("jon", 5, description="goodwill").balance == 5
    assert [(t.type, t.amount) for t in ledger.history("jon")] == [("adjustment", 5)]


def test_a_queued_adjustment_keeps_its_policy_and_reason() -> None:
    """Under contention a change waits as an intent item (group commit): it must come back the same."""
    from credits.ledger import Entry, Policy
    from credits.ledger.intents import change_fields, change_from_fields
    from credits.ledger.rules import Change, Kind

    entry = Entry(-8, "adjustment", "promo reversed", "t-1", reason="ticket 42")
    for policy in (Policy.ADJUSTMENT, Policy.CLAWBACK):
        op = Change(Kind.POST, entry, policy, None, "fp")
        back = change_from_fields({k: v for k, v in change_fields(op).items() if v is not None})
        assert (back.entry, back.policy) == (entry, policy)


def test_queued_adjustments_in_one_combiner_pass_never_go_below_zero_unless_forced(ledger: Ledger) -> None:
    """Group commit decides queued adjustments by the same rule, each seeing the ones before it."""
    import time
    import uuid

    from credits import keys
    from credits.ledger import Entry, Policy, Posted
    from credits.ledger.intents import Intent, intent_put
    from credits.ledger.rules import Change, Kind

    ledger.grant("kim", 5, type="gift", description="seed")
    pk = keys.user_pk("kim")

    def queue(amount: int, policy: Policy, reason: str | None = None) -> Intent:
        now = time.time()
        entry = Entry(-amount, "adjustment", "queued", reason=reason)
        intent = Intent(str(uuid.uuid4()), int(now * 1000), int((now + 30) * 1000), Change(Kind.POST, entry, policy))
        ledger.store.write(intent_put(pk, intent, int(now)))
        return intent

    first, second, forced = (
        queue(4, Policy.ADJUSTMENT),
        queue(4, Policy.ADJUSTMENT),
        queue(4, Policy.CLAWBACK, "ticket 7"),
    )
    owner = str(uuid.uuid4())
    assert ledger.group.take_lease(pk, owner)
    try:
        snapshot, intents = ledger.group.queued(pk)
        decided = ledger.group.combine(pk, snapshot, intents, owner) or {}
    finally:
        ledger.group.release_lease(pk, owner)
    assert Posted.of(decided[first.id].result()).balance == 1
    with pytest.raises(InsufficientCredits):
        decided[second.id].result()
    assert Posted.of(decided[forced.id].result()).balance == -3
    assert ledger.group.queued(pk)[1] == []  # the pass took each intent it decided off the queue ...
    for intent in (first, second, forced):  # ... its decision apart, for its waiter
        stored, outcome = ledger.group.outcome(pk, intent), decided[intent.id]
        assert stored is not None and (stored.value, stored.error) == (outcome.value, outcome.error)
    assert [(t.amount, t.reason) for t in ledger.history("kim")] == [(5, None), (-4, None), (-4, "ticket 7")]
    assert ledger.audit("kim").ok
