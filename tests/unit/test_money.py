"""`format_money`: minor units as people read them, with each currency's own exponent."""

from __future__ import annotations

from types import ModuleType

import pytest

from credits.ledger import Ledger
from credits.money import exponent, format_money
from tests import stripe_events as se
from tests.support import FakeContext


@pytest.mark.parametrize(
    ("amount", "currency", "shown"),
    [
        (500, "usd", "$5.00"),
        (500, "eur", "€5.00"),
        (5, "usd", "$0.05"),
        (0, "usd", "$0.00"),
        (250, "usd", "$2.50"),
        (123_456_789, "usd", "$1,234,567.89"),
        (-500, "usd", "-$5.00"),
        (-1, "eur", "-€0.01"),
        (800, "jpy", "¥800"),
        (1_000_000, "jpy", "¥1,000,000"),
        (-800, "jpy", "-¥800"),
        (5000, "krw", "₩5,000"),
        (1500, "bhd", "BHD 1.500"),
        (1_234_567, "kwd", "KWD 1,234.567"),
        (5, "jod", "JOD 0.005"),
        (-1500, "omr", "-OMR 1.500"),
        (1000, "tnd", "TND 1.000"),
        (500, "chf", "CHF 5.00"),  # known, no symbol: the code
        (500, "xyz", "XYZ 5.00"),  # unknown: two decimals and the code
        (500, "USD", "$5.00"),  # the code in any case
        (800, "mga", "MGA 800"),  # zero-decimal in Stripe's amounts (two in ISO 4217)
        (500, "gbp", "£5.00"),
    ],
)
def test_worked_examples(amount: int, currency: str, shown: str) -> None:
    assert format_money(amount, currency) == shown


def test_exponents() -> None:
    assert [exponent(c) for c in ("usd", "eur", "jpy", "krw", "bhd", "kwd", "jod", "omr", "tnd", "zzz")] == [
        2,
        2,
        0,
        0,
        3,
        3,
        3,
        3,
        3,
        2,
    ]


def test_integer_arithmetic_only_exact_at_any_size() -> None:
    # 2**63 + 1 cents: a float would lose the last digits
    assert format_money(9_223_372_036_854_775_809, "usd") == "$92,233,720,368,547,758.09"


@pytest.mark.parametrize("amount", [5.0, True, "500"])
def test_only_integers_are_money(amount: object) -> None:
    with pytest.raises(TypeError):
        format_money(amount, "usd")  # type: ignore[arg-type]


def test_a_refund_entry_says_the_money_as_people_read_it(webhook: ModuleType, ledger: Ledger) -> None:
    """The ledger entry of a refund (what the user and the operator read) shows $2.50, not 250 usd."""
    session = se.session(payment_intent="pi_money")
    event = se.signed(se.event("checkout.session.completed", session))
    assert webhook.lambda_handler(event, FakeContext())["statusCode"] == 200
    refund = se.signed(se.event("charge.refunded", se.charge("pi_money", refunded=250)))
    assert webhook.lambda_handler(refund, FakeContext())["statusCode"] == 200
    last = ledger.history("user-1")[-1]
    assert (last.type, last.description) == ("refund", "Refund of $2.50 (pi_money)")
    assert (last.monetary_amount, last.currency) == (250, "usd")  # the integers stay as they were
