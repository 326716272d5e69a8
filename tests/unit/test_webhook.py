"""The Stripe webhook on moto: signatures first, then purchases, async payments, refunds and disputes."""

from __future__ import annotations

import json
import time
from types import ModuleType

import pytest

from credits.ledger import Ledger
from credits.packages import Catalog, Package
from credits.payments import Charge, CheckoutSession, Dispute, Event, record_key
from tests import stripe_events as se
from tests.support import FakeContext, environment, load_function


def deliver(fn: ModuleType, request: dict) -> tuple[int, dict]:
    response = fn.lambda_handler(request, FakeContext())
    return response["statusCode"], json.loads(response["body"])


def send(fn: ModuleType, event_type: str, obj: dict, event_id: str | None = None) -> tuple[int, dict]:
    return deliver(fn, se.signed(se.event(event_type, obj, event_id)))


def types_and_amounts(ledger: Ledger, user: str = "user-1") -> list[tuple[str, int]]:
    return [(t.type, t.amount) for t in ledger.history(user)]


# ---- signatures ------------------------------------------------------------------------------


def test_a_paid_session_grants_the_package_once(webhook: ModuleType, ledger: Ledger) -> None:
    status, body = send(webhook, "checkout.session.completed", se.session())
    assert (status, body["outcome"], body["credits"]) == (200, "granted", 100)
    assert ledger.balance("user-1") == 100
    [purchase] = ledger.history("user-1")
    assert (purchase.type, purchase.amount, purchase.monetary_amount, purchase.currency) == (
        "purchase",
        100,
        500,
        "usd",
    )


def test_a_tampered_body_is_400_and_writes_nothing(webhook: ModuleType, ledger: Ledger) -> None:
    payload = json.dumps(se.event("checkout.session.completed", se.session())).encode()
    sig = se.signature(payload)
    tampered = payload.replace(b'"amount_total": 500', b'"amount_total": 5')
    status, body = deliver(webhook, se.function_url_event(tampered, sig))
    assert (status, body["error"]["code"]) == (400, "validation_error")
    assert ledger.balance("user-1") == 0


@pytest.mark.parametrize(
    "make_signature",
    [
        lambda p: se.signature(p, secret="whsec_wrong"),
        lambda p: se.signature(p, timestamp=int(time.time()) - 301),
        lambda p: None,
        lambda p: "t=123,v1=",
        lambda p: "garbage",
    ],
    ids=["wrong-secret", "stale", "missing", "empty-v1", "garbage"],
)
def test_bad_signatures_are_400_and_nothing_is_stored(webhook: ModuleType, ledger: Ledger, make_signature) -> None:
    evt = se.event("checkout.session.completed", se.session(), event_id="evt_bad_sig")
    payload = json.dumps(evt).encode()
    status, body = deliver(webhook, se.function_url_event(payload, make_signature(payload)))
    assert status == 400
    assert "error" in body
    assert ledger.balance("user-1") == 0
    # Not remembered as processed: the genuine delivery of the same event still credits.
    status, body = deliver(webhook, se.function_url_event(payload, se.signature(payload)))
    assert (status, body["outcome"]) == (200, "granted")


def test_a_base64_body_verifies_against_the_decoded_bytes(webhook: ModuleType, ledger: Ledger) -> None:
    status, body = deliver(webhook, se.signed(se.event("checkout.session.completed", se.session()), base64_body=True))
    assert (status, body["outcome"]) == (200, "granted")
    assert ledger.balance("user-1") == 100


def test_a_signed_body_that_is_not_an_event_is_400(webhook: ModuleType) -> None:
    for payload in (b"not json", b"[]", b'{"id": "evt_1"}'):
        status, _ = deliver(webhook, se.function_url_event(payload, se.signature(payload)))
        assert status == 400


@pytest.mark.parametrize(
    ("body", "base64_body"),
    [
        ("\ud800{}", False),  # text that is not UTF-8 (a lone surrogate)
        ("!!!not-base64", True),
        ("e30=\n", True),
        ("\u00e9t\u00e9", True),  # flagged base64, not even ASCII
        ("\ud800", True),
    ],
    ids=["surrogate-text", "not-base64", "newline", "non-ascii-base64", "surrogate-base64"],
)
def test_a_body_that_is_not_bytes_we_can_read_is_400_and_writes_nothing(
    webhook: ModuleType, ledger: Ledger, moto_dynamodb, body: str, base64_body: bool
) -> None:
    before = moto_dynamodb.scan(TableName="credits")["Items"]
    event = se.function_url_event(b"", se.signature(body.encode("utf-8", "surrogatepass")), base64_body=base64_body)
    event["body"] = body
    status, answer = deliver(webhook, event)
    assert (status, answer["error"]["code"]) == (400, "validation_error")
    assert moto_dynamodb.scan(TableName="credits")["Items"] == before
    assert moto_dynamodb.scan(TableName="idempotency")["Items"] == []


def test_only_post_is_accepted(webhook: ModuleType) -> None:
    status, _ = deliver(webhook, se.function_url_event(b"", None, method="GET"))
    assert status == 405


# ---- purchases --------------------------------------------------------------------------------


def test_the_same_event_ten_times_credits_once(webhook: ModuleType, ledger: Ledger) -> None:
    evt = se.event("checkout.session.completed", se.session())
    answers = [deliver(webhook, se.signed(evt)) for _ in range(10)]
    assert all(a == answers[0] for a in answers)
    assert ledger.balance("user-1") == 100


def test_a_replay_after_the_event_record_expired_still_credits_once(webhook: ModuleType, ledger: Ledger) -> None:
    """Stripe retries for days; Powertools' record expires after a day; the ledger still dedupes."""
    session = se.session()
    send(webhook, "checkout.session.completed", session, event_id="evt_old")
    webhook.persistence.client.delete_item(
        TableName="idempotency", Key={"id": {"S": next(iter(_idempotency_ids(webhook)))}}
    )
    status, body = send(webhook, "checkout.session.completed", session, event_id="evt_old")
    assert (status, body["outcome"]) == (200, "duplicate")
    assert ledger.balance("user-1") == 100


def _idempotency_ids(fn: ModuleType) -> list[str]:
    items = fn.persistence.client.scan(TableName="idempotency")["Items"]
    return [i["id"]["S"] for i in items]


def test_completed_and_async_succeeded_for_one_session_credit_once(webhook: ModuleType, ledger: Ledger) -> None:
    paid = se.session()
    assert send(webhook, "checkout.session.completed", paid)[1]["outcome"] == "granted"
    status, body = send(webhook, "checkout.session.async_payment_succeeded", paid)
    assert (status, body["outcome"]) == (200, "duplicate")
    assert types_and_amounts(ledger) == [("purchase", 100)]


def test_unpaid_then_async_success_credits_only_when_paid(webhook: ModuleType, ledger: Ledger) -> None:
    unpaid = se.session(paid=False)
    status, body = send(webhook, "checkout.session.completed", unpaid)
    assert (status, body["outcome"]) == (200, "waiting")
    assert ledger.balance("user-1") == 0
    paid = {**unpaid, "payment_status": "paid"}
    assert send(webhook, "checkout.session.async_payment_succeeded", paid)[1]["outcome"] == "granted"
    assert ledger.balance("user-1") == 100


def test_an_async_failure_grants_nothing(webhook: ModuleType, ledger: Ledger) -> None:
    unpaid = se.session(paid=False)
    send(webhook, "checkout.session.completed", unpaid)
    status, body = send(webhook, "checkout.session.async_payment_failed", unpaid)
    assert (status, body["outcome"]) == (200, "failed")
    assert ledger.balance("user-1") == 0 and ledger.history("user-1") == []


@pytest.mark.parametrize(("amount", "currency"), [(499, "usd"), (500, "eur"), (50, "usd")])
def test_an_amount_mismatch_grants_nothing(webhook: ModuleType, ledger: Ledger, amount: int, currency: str) -> None:
    status, body = send(webhook, "checkout.session.completed", se.session(amount=amount, currency=currency))
    assert (status, body["outcome"]) == (200, "mismatch")
    assert ledger.balance("user-1") == 0


def test_sessions_we_never_started_are_ignored(webhook: ModuleType, ledger: Ledger) -> None:
    foreign = se.session()
    foreign["client_reference_id"] = None
    foreign["metadata"] = {}
    assert send(webhook, "checkout.session.completed", foreign)[1]["outcome"] == "ignored"
    unknown_package = se.session(package="no-such-package")
    assert send(webhook, "checkout.session.completed", unknown_package)[1]["outcome"] == "mismatch"
    assert ledger.balance("user-1") == 0


def test_refunds_and_disputes_for_payments_we_never_saw_change_no_balance(webhook: ModuleType, ledger: Ledger) -> None:
    assert send(webhook, "charge.refunded", se.charge("pi_unknown", refunded=500))[1]["outcome"] == "pending"
    assert send(webhook, "charge.dispute.created", se.dispute("pi_unknown"))[1]["outcome"] == "pending"
    assert ledger.balance("user-1") == 0
    record = webhook.payments.record("pi_unknown")
    assert record is not None and not record.granted  # remembered for a while, in case the purchase follows


# ---- events out of order ------------------------------------------------------------------------


def test_a_refund_that_arrives_before_its_purchase_is_applied_when_it_lands(
    webhook: ModuleType, ledger: Ledger
) -> None:
    session = se.session(payment_intent="pi_early_refund")
    assert send(webhook, "charge.refunded", se.charge("pi_early_refund", refunded=500))[1]["outcome"] == "pending"
    status, body = send(webhook, "checkout.session.completed", session)
    assert (status, body["outcome"]) == (200, "granted")
    assert ledger.balance("user-1") == 0
    assert types_and_amounts(ledger) == [("purchase", 100), ("refund", -100)]
    record = webhook.payments.record("pi_early_refund")
    assert record is not None and record.granted
    # The record of a credited payment never expires.
    item = webhook.payments.store.get(record_key("pi_early_refund"))
    assert item is not None and "expires_at" not in item


def test_a_dispute_closed_before_it_was_created_stays_closed(webhook: ModuleType, ledger: Ledger) -> None:
    send(webhook, "checkout.session.completed", se.session(payment_intent="pi_ooo"))
    assert send(webhook, "charge.dispute.closed", se.dispute("pi_ooo", status="won"))[1]["outcome"] == "noted"
    assert send(webhook, "charge.dispute.created", se.dispute("pi_ooo"))[1]["outcome"] == "duplicate"
    assert ledger.balance("user-1") == 100
    assert types_and_amounts(ledger) == [("purchase", 100)]


def test_an_older_refund_total_arriving_late_changes_nothing(webhook: ModuleType, ledger: Ledger) -> None:
    send(webhook, "checkout.session.completed", se.session(payment_intent="pi_late"))
    send(webhook, "charge.refunded", se.charge("pi_late", refunded=400))
    assert send(webhook, "charge.refunded", se.charge("pi_late", refunded=100))[1]["outcome"] == "duplicate"
    assert ledger.balance("user-1") == 20


def test_credits_follow_the_terms_fixed_at_checkout(webhook: ModuleType, ledger: Ledger, moto_dynamodb) -> None:
    """The price changed after the user checked out: the session's own terms are honoured."""
    session = se.session(payment_intent="pi_terms")
    session["metadata"].update({"credits": "100", "price": "500", "currency": "usd"})
    Catalog(moto_dynamodb, "credits").put(Package(id="starter", name="Starter", credits=80, price=600, currency="usd"))
    assert send(webhook, "checkout.session.completed", session)[1]["credits"] == 100
    assert send(webhook, "checkout.session.async_payment_succeeded", session)[1]["outcome"] == "duplicate"
    assert ledger.balance("user-1") == 100
    tampered = se.session(payment_intent="pi_terms_2")
    tampered["metadata"].update({"credits": "100", "price": "500", "currency": "usd"})
    tampered["amount_total"] = 50
    assert send(webhook, "checkout.session.completed", tampered)[1]["outcome"] == "mismatch"
    assert ledger.balance("user-1") == 100


def test_unknown_event_types_are_200_and_ignored(webhook: ModuleType, ledger: Ledger) -> None:
    status, body = send(webhook, "customer.created", {"id": "cus_1", "object": "customer"})
    assert (status, body["outcome"]) == (200, "ignored")
    assert ledger.balance("user-1") == 0


# ---- refunds ----------------------------------------------------------------------------------


def test_two_partial_refunds_then_the_rest_claw_back_in_proportion(webhook: ModuleType, ledger: Ledger) -> None:
    session = se.session(payment_intent="pi_refunds")
    send(webhook, "checkout.session.completed", session)
    ledger.charge("user-1", 10, description="generate")

    assert send(webhook, "charge.refunded", se.charge("pi_refunds", refunded=150))[1]["credits"] == 30
    assert ledger.balance("user-1") == 60
    assert send(webhook, "charge.refunded", se.charge("pi_refunds", refunded=250))[1]["credits"] == 20
    # The same refund again, and an older one arriving late: nothing more.
    assert send(webhook, "charge.refunded", se.charge("pi_refunds", refunded=250))[1]["outcome"] == "duplicate"
    assert send(webhook, "charge.refunded", se.charge("pi_refunds", refunded=150))[1]["outcome"] == "duplicate"
    status, body = send(webhook, "charge.refunded", se.charge("pi_refunds", refunded=500))
    assert (status, body["credits"]) == (200, 50)

    assert ledger.balance("user-1") == -10  # a clawback may go below zero; usage is blocked until repaid
    assert types_and_amounts(ledger) == [
        ("purchase", 100),
        ("usage", -10),
        ("refund", -30),
        ("refund", -20),
        ("refund", -50),
    ]
    assert [t.monetary_amount for t in ledger.history("user-1")][2:] == [150, 100, 250]
    assert ledger.audit("user-1").ok


def test_refund_rounding_never_takes_more_than_was_bought(webhook: ModuleType, ledger: Ledger) -> None:
    send(webhook, "checkout.session.completed", se.session(payment_intent="pi_round"))
    for refunded in (1, 3, 7, 333, 499, 500):
        send(webhook, "charge.refunded", se.charge("pi_round", refunded=refunded))
    assert ledger.balance("user-1") == 0
    assert sum(a for t, a in types_and_amounts(ledger) if t == "refund") == -100


# ---- disputes ---------------------------------------------------------------------------------


def test_a_lost_dispute_claws_back_the_payment_once(webhook: ModuleType, ledger: Ledger) -> None:
    send(webhook, "checkout.session.completed", se.session(payment_intent="pi_lost"))
    ledger.charge("user-1", 5, description="analyze")
    assert send(webhook, "charge.dispute.created", se.dispute("pi_lost"))[1]["credits"] == 100
    assert send(webhook, "charge.dispute.created", se.dispute("pi_lost"))[1]["outcome"] == "duplicate"
    assert send(webhook, "charge.dispute.closed", se.dispute("pi_lost", status="lost"))[1]["credits"] == 0
    assert ledger.balance("user-1") == -5
    assert types_and_amounts(ledger) == [("purchase", 100), ("usage", -5), ("dispute", -100)]


def test_a_won_dispute_gives_the_credits_back_once(webhook: ModuleType, ledger: Ledger) -> None:
    send(webhook, "checkout.session.completed", se.session(payment_intent="pi_won"))
    send(webhook, "charge.dispute.created", se.dispute("pi_won"))
    assert ledger.balance("user-1") == 0
    assert send(webhook, "charge.dispute.closed", se.dispute("pi_won", status="won"))[1]["credits"] == 100
    assert send(webhook, "charge.dispute.closed", se.dispute("pi_won", status="won"))[1]["outcome"] == "duplicate"
    assert ledger.balance("user-1") == 100
    assert types_and_amounts(ledger) == [("purchase", 100), ("dispute", -100), ("dispute", 100)]
    assert ledger.audit("user-1").ok


def test_an_inquiry_closed_without_a_chargeback_gives_the_credits_back(webhook: ModuleType, ledger: Ledger) -> None:
    send(webhook, "checkout.session.completed", se.session(payment_intent="pi_inquiry"))
    send(webhook, "charge.dispute.created", se.dispute("pi_inquiry", status="warning_needs_response"))
    assert ledger.balance("user-1") == 0
    status, body = send(webhook, "charge.dispute.closed", se.dispute("pi_inquiry", status="warning_closed"))
    assert (status, body["outcome"], body["credits"]) == (200, "restored", 100)
    assert ledger.balance("user-1") == 100


def test_a_refund_during_a_won_dispute_is_not_given_back(webhook: ModuleType, ledger: Ledger) -> None:
    send(webhook, "checkout.session.completed", se.session(payment_intent="pi_mixed"))
    send(webhook, "charge.dispute.created", se.dispute("pi_mixed"))
    send(webhook, "charge.refunded", se.charge("pi_mixed", refunded=250))
    assert ledger.balance("user-1") == 0
    send(webhook, "charge.dispute.closed", se.dispute("pi_mixed", status="won"))
    assert ledger.balance("user-1") == 50  # half the money was refunded: half the credits stay taken
    assert ledger.audit("user-1").ok


def test_a_dispute_after_a_partial_refund_takes_only_what_is_left(webhook: ModuleType, ledger: Ledger) -> None:
    send(webhook, "checkout.session.completed", se.session(payment_intent="pi_both"))
    send(webhook, "charge.refunded", se.charge("pi_both", refunded=200))
    assert send(webhook, "charge.dispute.created", se.dispute("pi_both", amount=300))[1]["credits"] == 60
    assert ledger.balance("user-1") == 0


# ---- Stripe's own objects ---------------------------------------------------------------------


def test_stripes_example_objects_parse_with_their_unknown_fields() -> None:
    objects = se.stripe_objects()
    session = CheckoutSession.model_validate(objects["checkout.session"])
    assert session.id.startswith("cs_") and session.payment_status == "unpaid"
    charge = Charge.model_validate(objects["charge"])
    assert (charge.amount, charge.amount_refunded, charge.currency) == (100, 0, "usd")
    dispute = Dispute.model_validate(objects["dispute"])
    assert dispute.id.startswith("dp_") and dispute.amount == 1000
    evt = Event.model_validate(objects["event"])
    assert evt.id.startswith("evt_") and evt.type == "plan.created"
    assert len(objects["checkout.session"]) > 20  # the real shape, with many fields we never read


def test_deployed_secrets_come_from_ssm_securestrings(moto_dynamodb) -> None:
    """On AWS the webhook secret is an SSM SecureString named by STRIPE_WEBHOOK_SECRET_PARAM."""
    import boto3

    boto3.client("ssm").put_parameter(Name="/credits/stripe/webhook-secret", Value=se.SECRET, Type="SecureString")
    Catalog(moto_dynamodb, "credits").put(Package(id="starter", name="Starter", credits=100, price=500, currency="usd"))
    with environment(STRIPE_WEBHOOK_SECRET=None, STRIPE_WEBHOOK_SECRET_PARAM="/credits/stripe/webhook-secret"):
        fn = load_function("webhook")
    status, body = send(fn, "checkout.session.completed", se.session())
    assert (status, body["outcome"]) == (200, "granted")


def test_a_missing_webhook_secret_fails_at_cold_start(moto_dynamodb) -> None:
    with environment(STRIPE_WEBHOOK_SECRET=None, STRIPE_WEBHOOK_SECRET_PARAM=None):
        with pytest.raises(Exception, match="STRIPE_WEBHOOK_SECRET"):
            load_function("webhook")


def test_a_crash_between_settlement_steps_is_finished_by_stripes_retry(
    webhook: ModuleType, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refund during a dispute takes two ledger steps; the function dies after the first."""
    send(webhook, "checkout.session.completed", se.session(payment_intent="pi_crash"))
    send(webhook, "charge.dispute.created", se.dispute("pi_crash"))
    real_post = webhook.payments.ledger.post
    calls = []

    def dies_before_the_refund(user_id, entry, *args, **kwargs):
        if entry.type == "refund":
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("container died")
        return real_post(user_id, entry, *args, **kwargs)

    monkeypatch.setattr(webhook.payments.ledger, "post", dies_before_the_refund)
    refund = se.event("charge.refunded", se.charge("pi_crash", refunded=250), event_id="evt_crash")
    status, body = deliver(webhook, se.signed(refund))
    assert (status, body["error"]["code"]) == (500, "internal_error")
    # the dispute gave back what the refund takes (the first step landed), the refund did not
    assert ledger.balance("user-1") == 50

    status, body = deliver(webhook, se.signed(refund))  # Stripe retries the same event
    assert status == 200
    assert ledger.balance("user-1") == 0  # 50 taken by the refund, 50 still held by the dispute
    assert types_and_amounts(ledger) == [("purchase", 100), ("dispute", -100), ("dispute", 50), ("refund", -50)]
    assert ledger.audit("user-1").ok
