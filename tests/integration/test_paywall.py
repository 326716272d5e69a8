"""The paywall middleware under concurrency, on DynamoDB Local: the example premium function as
16 container processes, each counting how often its route really ran."""

from __future__ import annotations

import os
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import pytest

from tests.integration.conftest import LocalTables
from tests.support import fleet, http_event


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
    barrier = threading.Barrier(16)

    with fleet("premium", 16, setup="tests.integration.test_paywall:count_runs") as containers:

        def search(i: int) -> tuple[int, str | None]:
            if i < 16:
                barrier.wait()
            status, body, headers = containers.invoke(http_event("POST", "/examples/search", sub="busy", body={}))
            if status == 402:
                assert body["error"]["code"] == "insufficient_credits"
            return status, headers.get("Credits-Charged")

        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = Counter(pool.map(search, range(50)))

    assert answers == {(200, "1"): 20, (402, None): 30}
    assert runs.read_text().splitlines() == ["search"] * 20
    view = ledger.account("busy")
    assert (view.balance, view.available, view.held) == (0, 0, 0)
    assert [t.amount for t in ledger.history("busy")] == [20] + [-1] * 20
    assert ledger.audit("busy").ok


def test_failing_actions_under_concurrency_charge_nothing(
    local_tables: LocalTables, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = local_tables.ledger()
    ledger.grant("unlucky", 100, type="gift", description="seed")  # enough for 16 held at once
    monkeypatch.setenv("EXAMPLE_WORK_SECONDS", "0.05")

    with fleet("premium", 8) as containers:

        def analyze(i: int) -> int:
            body = {"fail": bool(i % 2)}
            return containers.invoke(http_event("POST", "/examples/analyze", sub="unlucky", body=body))[0]

        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = Counter(pool.map(analyze, range(16)))

    assert statuses == {200: 8, 502: 8}
    view = ledger.account("unlucky")
    assert (view.balance, view.held) == (60, 0)  # 8 successes of 5; the failures paid nothing
    assert [t.amount for t in ledger.history("unlucky")] == [100] + [-5] * 8
    assert ledger.audit("unlucky").ok
