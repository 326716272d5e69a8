"""Reconciling step by step, without a table or Stripe: what `find_missing` reports from Stripe's
lists and the payment records, and which event it would apply."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from credits.payments import Payments
from credits.reconcile import Missing, find_missing
from credits.settlement import DisputeFact, PaymentRecord

SINCE = 1_700_000_000


class Stripe:
    """Stripe's lists of the period, as reconcile reads them."""

    def __init__(
        self,
        sessions: Iterable[dict[str, Any]] = (),
        charges: Iterable[dict[str, Any]] = (),
        disputes: Iterable[dict[str, Any]] = (),
        changed: Iterable[dict[str, Any]] = (),
    ) -> None:
        self.sessions, self.charges, self.disputes, self.changed = (
            list(sessions),
            list(charges),
            list(disputes),
            list(changed),
        )
        self.asked: list[str] = []

    def sessions_since(self, created_gte: int) -> Iterable[dict[str, Any]]:
        self.asked.append("sessions")
        return self.sessions

    def refunded_charges_since(self, created_gte: int) -> Iterable[dict[str, Any]]:
        self.asked.append("charges")
        return self.charges

    def disputes_since(self, created_gte: int) -> Iterable[dict[str, Any]]:
        self.asked.append("disputes")
        return self.disputes

    def changed_since(self, created_gte: int, types: list[str]) -> Iterable[dict[str, Any]]:
        self.asked.append("changed")
        return self.changed


class Records:
    """Payment records by payment id; counts the reads."""

    def __init__(self, *records: PaymentRecord) -> None:
        self.records = {r.payment_id: r for r in records}
        self.reads: list[str] = []

    def record(self, payment_id: str) -> PaymentRecord | None:
        self.reads.append(payment_id)
        return self.records.get(payment_id)


def missing(stripe: Stripe, records: Records) -> list[Missing]:
    return find_missing(cast(Payments, records), stripe, SINCE)


def session(
    pi: str, *, user: str | None = "ann", package: str | None = "starter", paid: bool = True, **fields: Any
) -> dict[str, Any]:
    metadata = {k: v for k, v in {"userId": user, "packageId": package}.items() if v is not None}
    return {
        "id": f"cs_{pi}",
        "object": "checkout.session",
        "mode": "payment",
        "status": "complete" if paid else "open",
        "payment_status": "paid" if paid else "unpaid",
        "client_reference_id": user,
        "metadata": metadata,
        "payment_intent": pi,
        **fields,
    }


def charge(pi: str, refunded: int) -> dict[str, Any]:
    return {"id": f"ch_{pi}", "object": "charge", "amount_refunded": refunded, "payment_intent": pi}


def dispute(pi: str | None, status: str = "needs_response", dispute_id: str = "dp_1") -> dict[str, Any]:
    return {"id": dispute_id, "object": "dispute", "status": status, "amount": 500, "payment_intent": pi}


def credited(pi: str, **facts: Any) -> PaymentRecord:
    return PaymentRecord(pi, True, "ann", 100, 500, "usd", **facts)


def found(result: list[Missing]) -> list[tuple[str, str, str | None, str]]:
    return [(m.kind, m.payment_id, m.user_id, m.event["type"]) for m in result]


# ---- purchases -----------------------------------------------------------------------------------


def test_a_paid_session_of_ours_not_credited_is_a_missing_purchase_applied_as_completed() -> None:
    [item] = missing(Stripe(sessions=[session("pi_1")]), Records())
    assert (item.kind, item.stripe_id, item.payment_id, item.user_id) == ("purchase", "cs_pi_1", "pi_1", "ann")
    assert item.detail == "session cs_pi_1: starter paid, not credited"
    assert item.event == {
        "id": "evt_reconcile_cs_pi_1",
        "object": "event",
        "type": "checkout.session.completed",
        "data": {"object": session("pi_1")},
    }


def test_sessions_credited_unpaid_or_not_ours_are_not_missing() -> None:
    sessions = [
        session("pi_credited"),
        session("pi_unpaid", paid=False),
        session("pi_subscription", mode="subscription"),
        session("pi_no_package", package=None),
        session("pi_no_user", user=None),
    ]
    records = Records(credited("pi_credited"))
    assert missing(Stripe(sessions=sessions), records) == []
    assert records.reads == ["pi_credited"]  # only paid sessions of ours are looked up


def test_a_session_without_a_payment_intent_is_known_by_its_own_id() -> None:
    [item] = missing(Stripe(sessions=[session("pi_x", payment_intent=None)]), Records())
    assert item.payment_id == "cs_pi_x"


def test_an_async_payment_that_cleared_late_is_found_through_its_event_once() -> None:
    late = session("pi_late")
    stripe = Stripe(sessions=[late], changed=[late, dispute("pi_other", "won")])
    assert found(missing(stripe, Records())) == [("purchase", "pi_late", "ann", "checkout.session.completed")]


# ---- refunds -------------------------------------------------------------------------------------


def test_a_refund_larger_than_the_record_knows_is_missing() -> None:
    records = Records(credited("pi_1", refunded_amount=100))
    [item] = missing(Stripe(charges=[charge("pi_1", 300)]), records)
    assert found([item]) == [("refund", "pi_1", "ann", "charge.refunded")]
    assert item.detail == "charge ch_pi_1: 300 refunded, the ledger knows 100"
    assert missing(Stripe(charges=[charge("pi_1", 100)]), records) == []


def test_a_refund_of_a_payment_this_product_never_credited_is_not_ours() -> None:
    records = Records(PaymentRecord("pi_noted", refunded_amount=100))
    assert missing(Stripe(charges=[charge("pi_other", 300), charge("pi_noted", 500)]), records) == []


def test_a_refund_of_a_session_of_ours_in_the_period_is_missing_even_before_its_purchase() -> None:
    stripe = Stripe(sessions=[session("pi_1")], charges=[charge("pi_1", 500)])
    result = missing(stripe, Records())
    assert found(result) == [
        ("purchase", "pi_1", "ann", "checkout.session.completed"),
        ("refund", "pi_1", None, "charge.refunded"),
    ]
    assert result[1].detail == "charge ch_pi_1: 500 refunded, the ledger knows 0"


# ---- disputes ------------------------------------------------------------------------------------


def test_a_dispute_the_record_does_not_know_is_missing_as_created() -> None:
    [item] = missing(Stripe(disputes=[dispute("pi_1")]), Records(credited("pi_1")))
    assert found([item]) == [("dispute", "pi_1", "ann", "charge.dispute.created")]
    assert item.detail == "dispute dp_1 (needs_response): the ledger knows nothing"


def test_a_dispute_closed_since_the_record_knew_it_is_missing_as_closed() -> None:
    records = Records(credited("pi_1", disputes={"dp_1": DisputeFact("needs_response", 500)}))
    [item] = missing(Stripe(changed=[dispute("pi_1", "lost")]), records)
    assert found([item]) == [("dispute", "pi_1", "ann", "charge.dispute.closed")]
    assert item.detail == "dispute dp_1 (lost): the ledger knows needs_response"


def test_disputes_known_as_they_are_or_not_ours_are_not_missing() -> None:
    records = Records(credited("pi_1", disputes={"dp_1": DisputeFact("won", 500)}))
    disputes = [dispute("pi_1", "needs_response"), dispute(None, dispute_id="dp_2"), dispute("pi_x", dispute_id="dp_3")]
    assert missing(Stripe(disputes=disputes), records) == []


def test_a_dispute_listed_now_and_named_by_an_event_counts_once_as_listed() -> None:
    stripe = Stripe(disputes=[dispute("pi_1", "won")], changed=[dispute("pi_1", "needs_response")])
    [item] = missing(stripe, Records(credited("pi_1")))
    assert item.event["type"] == "charge.dispute.closed"


# ---- the whole run -------------------------------------------------------------------------------


def test_purchases_come_first_then_refunds_then_disputes_each_record_read_once() -> None:
    stripe = Stripe(
        sessions=[session("pi_new")],
        charges=[charge("pi_old", 200), charge("pi_new", 100)],
        disputes=[dispute("pi_old"), dispute("pi_new", dispute_id="dp_new")],
        changed=[],
    )
    records = Records(credited("pi_old"))
    assert [(m.kind, m.payment_id) for m in missing(stripe, records)] == [
        ("purchase", "pi_new"),
        ("refund", "pi_old"),
        ("refund", "pi_new"),
        ("dispute", "pi_old"),
        ("dispute", "pi_new"),
    ]
    assert sorted(records.reads) == ["pi_new", "pi_old"]
    assert stripe.asked == ["changed", "sessions", "charges", "disputes"]
