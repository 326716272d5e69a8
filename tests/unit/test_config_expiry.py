"""EXPIRY_WARNING_DAYS: how long before a credit lot expires its credits are announced, as every
function that writes the ledger reads it at cold start."""

from __future__ import annotations

import pytest

from credits import config
from credits.config import MAX_EXPIRY_WARNING_DAYS, expiry_warning_days
from credits.errors import ConfigError
from credits.ledger import EXPIRY_WARNING_DAYS
from tests.support import ROOT, environment


@pytest.mark.parametrize(
    ("raw", "days"),
    [(None, EXPIRY_WARNING_DAYS), (" ", EXPIRY_WARNING_DAYS), ("0", 0), ("3", 3), (" 14 ", 14), ("365", 365)],
)
def test_a_number_of_days_from_0_to_365_or_the_default_of_7(raw: str | None, days: int) -> None:
    assert expiry_warning_days({} if raw is None else {"EXPIRY_WARNING_DAYS": raw}) == days
    assert EXPIRY_WARNING_DAYS == 7 and MAX_EXPIRY_WARNING_DAYS == 365


@pytest.mark.parametrize("raw", ["366", "-1", "7.5", "1e2", "seven", "٣", "7 days"])
def test_anything_else_stops_the_cold_start_naming_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match="EXPIRY_WARNING_DAYS must be an integer from 0 to 365"):
        expiry_warning_days({"EXPIRY_WARNING_DAYS": raw})


def test_every_function_that_writes_the_ledger_builds_it_with_the_configured_settings(moto_dynamodb) -> None:
    """One construction (`config.ledger`) for all: a function of its own would write the ledger with
    other settings (the top-up function once announced expiring credits EXPIRY_WARNING_DAYS=0 had
    switched off)."""
    with environment(EXPIRY_WARNING_DAYS="0", LOW_BALANCE_THRESHOLD="25"):
        ledger = config.ledger(moto_dynamodb, "credits")
    assert (ledger.ctx.warn_ms, ledger.ctx.default_threshold) == (0, 25)
    builds_its_own = [p for p in (ROOT / "functions").glob("*/app.py") if "Ledger(" in p.read_text()]
    assert builds_its_own == []
