"""The paywall middleware under concurrency, on DynamoDB Local: the example premium function as
16 container processes, each counting how often its route really ran."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

from tests.integration.conftest import LocalTables
from tests.support import assert_audited, hammer, http_event


def count_runs(module: ModuleType) -> None:  # pragma: no cover - runs in the container processes
    """Container setup: every time a route's action runs, append a line to PAYWALL_RUNS."""
    real = module._work

    def counted(action: str) -> object:
        with open(os.environ["PAYWALL_RUNS"], "a") as runs:
            runs.write(f"{action}\n")
        return real(action)

    module._work = counted  # type: ignore[attr-defined]


def test_50_concurrent_requests_with_20_credits_run_the_route_exactly_20_times(
    local_tables: LocalTables, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = local_tables.ledger()
    ledger.grant("busy", 20, type="gift", description="seed")
    runs = tmp_path / "runs"
    monkeypatch.setenv("PAYWALL_RUNS", str(runs))
    monkeypatch.setenv("EXAMPLE_WORK_SECONDS", "0.2")  # long enough that requests overlap
    events = [http_event("POST", "/examples/search", sub="busy", body={}) for _ in range(50)]
    answers = hammer("premium", events, workers=16, setup="tests.integration.test_paywall:count_runs", at_once=True)

    assert Counter((a.status, a.code, a.headers.get("Credits-Charged")) for a in answers) == {
        (200, None, "1"): 20,
        (402, "insufficient_credits", None): 30,
    }
    assert runs.read_text().splitlines() == ["search"] * 20
    assert_audited(ledger, "busy", balance=0, available=0, held=0, amounts=[20] + [-1] * 20)


def test_failing_actions_under_concurrency_charge_nothing(
    local_tables: LocalTables, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = local_tables.ledger()
    ledger.grant("unlucky", 100, type="gift", description="seed")  # enough for 16 held at once
    monkeypatch.setenv("EXAMPLE_WORK_SECONDS", "0.05")

    events = [http_event("POST", "/examples/analyze", sub="unlucky", body={"fail": bool(i % 2)}) for i in range(16)]
    answers = hammer("premium", events, workers=8)

    assert Counter(a.status for a in answers) == {200: 8, 502: 8}
    # 8 successes of 5; the failures paid nothing
    assert_audited(ledger, "unlucky", balance=60, held=0, amounts=[100] + [-5] * 8)
