"""Stripe events as Stripe sends them (the fields `credits.payments` reads, and a few it ignores),
built deterministically from a workload op: no uuid, no wall clock."""

from __future__ import annotations

from typing import Any

from tests.simulation.workload import PACKAGE_BY_ID, Op

START = 1_767_225_600  # 2026-01-01T00:00:00Z: event `created` values count from here


def event(op: Op) -> dict[str, Any]:
    """The Stripe event an op delivers."""
    assert op.event is not None and op.event_id is not None and op.pi is not None
    if op.event in ("completed", "async_succeeded", "async_failed"):
        kind, obj = f"checkout.session.{_SESSION_EVENTS[op.event]}", _session(op)
    elif op.event == "refunded":
        kind, obj = "charge.refunded", _charge(op)
    else:
        kind = "charge.dispute.created" if op.status == "needs_response" else "charge.dispute.closed"
        obj = _dispute(op)
    return {
        "id": op.event_id,
        "object": "event",
        "api_version": "2024-06-20",
        "created": START + int(op.at),
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": kind,
        "data": {"object": obj, "previous_attributes": None},
    }


_SESSION_EVENTS = {
    "completed": "completed",
    "async_succeeded": "async_payment_succeeded",
    "async_failed": "async_payment_failed",
}


def _session(op: Op) -> dict[str, Any]:
    assert op.pi is not None and op.package is not None
    package = PACKAGE_BY_ID[op.package]
    paid = op.paid and op.event != "async_failed"
    metadata = {"userId": op.user, "packageId": package.id}
    if op.terms:  # the terms fixed at checkout (credits, price, currency, expiresInDays)
        metadata.update(package.sale_terms())
    return {
        "id": "cs_" + op.pi[3:],
        "object": "checkout.session",
        "mode": "payment",
        "status": "complete",
        "payment_status": "paid" if paid else "unpaid",
        "client_reference_id": op.user,
        "metadata": metadata,
        "amount_subtotal": package.price,
        "amount_total": package.price + (7 if op.mismatch else 0),
        "currency": package.currency,
        "payment_intent": op.pi,
        "customer": f"cus_{op.user}",
        "livemode": False,
        "url": None,
    }


def _charge(op: Op) -> dict[str, Any]:
    assert op.pi is not None and op.refunded is not None
    package = _package_of(op)
    return {
        "id": "ch_" + op.pi[3:],
        "object": "charge",
        "amount": package.price if package else op.refunded,
        "amount_captured": package.price if package else op.refunded,
        "amount_refunded": op.refunded,
        "refunded": package is not None and op.refunded >= package.price,
        "currency": package.currency if package else "usd",
        "payment_intent": op.pi,
        "paid": True,
        "status": "succeeded",
    }


def _dispute(op: Op) -> dict[str, Any]:
    assert op.pi is not None
    return {
        "id": op.dispute,
        "object": "dispute",
        "amount": op.amount,
        "currency": "usd",
        "status": op.status,
        "charge": "ch_" + op.pi[3:],
        "payment_intent": op.pi,
        "reason": "fraudulent",
        "is_charge_refundable": False,
    }


def _package_of(op: Op) -> Any:
    return PACKAGE_BY_ID.get(op.package) if op.package else None
