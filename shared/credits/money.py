"""Money as people read it: an amount in a currency's minor unit, shown in its major unit.

Amounts are integers everywhere in this project (the minor unit Stripe's API uses: cents for usd,
yen for jpy, fils for bhd); this module only turns one into text, with integer arithmetic alone:

    format_money(500, "usd")      -> "$5.00"
    format_money(-123456, "eur")  -> "-€1,234.56"
    format_money(800, "jpy")      -> "¥800"
    format_money(1500, "bhd")     -> "BHD 1.500"
    format_money(500, "chf")      -> "CHF 5.00"

The exponent is the currency's ISO 4217 minor unit as Stripe counts it in amounts: Stripe's
zero-decimal currencies (https://docs.stripe.com/currencies#zero-decimal) have none, the dinars
and the rial have three, every other currency (known or not) two. Where Stripe departs from ISO
4217, Stripe wins, because the integers are Stripe's: mga is zero-decimal in Stripe (two in ISO),
isk is sent with two decimals always 00 (none in ISO).
"""

from __future__ import annotations

# Stripe's zero-decimal currencies: 800 jpy is ¥800 (the page's list in web/app.js is the same).
ZERO_DECIMAL = frozenset(
    ["bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf"]
)
# ISO 4217 currencies with three decimals: 1500 bhd is BHD 1.500.
THREE_DECIMAL = frozenset(["bhd", "iqd", "jod", "kwd", "lyd", "omr", "tnd"])
# Symbols only where one is unambiguous to an operator; every other currency shows its code.
SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥", "krw": "₩", "inr": "₹", "cad": "CA$", "aud": "A$"}


def exponent(currency: str) -> int:
    """How many decimal digits the minor unit of `currency` has (2 for a currency not known here)."""
    code = currency.lower()
    if code in ZERO_DECIMAL:
        return 0
    if code in THREE_DECIMAL:
        return 3
    return 2


def format_money(amount_minor: int, currency: str) -> str:
    """`amount_minor` minor units of `currency` as text: symbol or upper-case code, thousands
    separators, the currency's decimals, a leading minus when negative. Never a float."""
    if type(amount_minor) is not int:  # bool and float are refused, not rounded
        raise TypeError(f"an amount of money is an int of minor units, not {type(amount_minor).__name__}")
    code = currency.lower()
    digits = exponent(code)
    major, minor = divmod(abs(amount_minor), 10**digits)
    number = f"{major:,}" + (f".{minor:0{digits}d}" if digits else "")
    sign = "-" if amount_minor < 0 else ""
    symbol = SYMBOLS.get(code)
    return f"{sign}{symbol}{number}" if symbol else f"{sign}{code.upper()} {number}"
