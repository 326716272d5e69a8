"""The cold start of use_credits and balance builds only what every route needs; the rest is built by
the route that needs it, or before SnapStart's snapshot by the hook each handler registers (a hook
only Lambda's runtime, which has `snapshot_restore_py`, ever registers and runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from credits import aws
from tests.support import ROOT, http_event, invoke, load_function

# What a cold start leaves to the routes (and to the hook): pydantic and the request models, the
# catalog, the CSV export, the usage insights.
LAZY = (
    "pydantic",
    "credits.api_fields",
    "credits.api_charges",
    "credits.api_grants",
    "credits.api_holds",
    "credits.api_settings",
    "credits.packages",
    "credits.export",
    "credits.insights",
)

# In a fresh interpreter (this session imported everything long ago), with a stand-in for the
# runtime's `snapshot_restore_py`: what the import loaded, what the hooks registered, what they built.
PROBE = """
import json, sys, types
hooks = types.ModuleType("snapshot_restore_py")
hooks.before, hooks.after = [], []
hooks.register_before_snapshot = lambda func, *a, **k: hooks.before.append((func, a, k))
hooks.register_after_restore = lambda func, *a, **k: hooks.after.append((func, a, k))
sys.modules["snapshot_restore_py"] = hooks
from tests.support import load_function
load_function(sys.argv[1])
lazy = sys.argv[2].split(",")
at_import = sorted(m for m in lazy if m in sys.modules)
for func, args, kwargs in reversed(hooks.before):  # the runtime's order
    func(*args, **kwargs)
primed = sorted(m for m in lazy if m in sys.modules)
print(json.dumps({"at_import": at_import, "before": len(hooks.before), "after": len(hooks.after), "primed": primed}))
"""


def probe(function: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, function, ",".join(LAZY)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{ROOT / 'shared'}:{ROOT}"},
    )
    found: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return found


@pytest.mark.parametrize(
    ("function", "primed"),
    [
        (
            "use_credits",
            [
                "credits.api_charges",
                "credits.api_fields",
                "credits.api_grants",
                "credits.api_holds",
                "credits.api_settings",
                "credits.packages",
                "pydantic",
            ],
        ),
        ("balance", ["credits.export", "credits.insights", "credits.packages", "pydantic"]),
    ],
)
def test_a_cold_start_leaves_the_rest_to_the_routes_and_the_hook_builds_it(function: str, primed: list[str]) -> None:
    found = probe(function)
    assert found["at_import"] == []  # no model, no pydantic, no catalog at import
    assert (found["before"], found["after"]) == (1, 1)  # the handler's priming; credits.aws's reseeding
    assert found["primed"] == primed


class FakeHooks:
    """The runtime's `snapshot_restore_py`, recording what is registered."""

    def __init__(self) -> None:
        self.before: list[Callable[[], object]] = []

    def register_before_snapshot(self, func: Callable[[], object]) -> None:
        self.before.append(func)

    def snapshot(self) -> None:
        for func in reversed(self.before):
            func()


def test_without_the_runtime_no_hook_is_registered(moto_dynamodb: Any) -> None:
    assert aws._hooks is None  # not Lambda: a plain cold start, nothing primed
    load_function("use_credits")


def test_after_priming_every_route_answers_as_before(moto_dynamodb: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    hooks = FakeHooks()
    monkeypatch.setattr(aws, "_hooks", hooks)
    use, bal = load_function("use_credits"), load_function("balance")
    assert len(hooks.before) == 2
    hooks.snapshot()
    assert use.catalog.cache_info().currsize == 1 and bal.catalog.cache_info().currsize == 1
    grant = {"userId": "user-1", "amount": 20, "type": "gift", "description": "welcome"}
    assert invoke(use, http_event("POST", "/internal/credits/grant", sub=None, body=grant)).status == 200
    status, body, _ = invoke(use, http_event("POST", "/credits/use", body={"action": "analyze"}))
    assert (status, body["charged"], body["balance"]) == (200, 5, 15)
    assert invoke(use, http_event("POST", "/credits/use", body={"action": 5})).code == "validation_error"
    assert invoke(bal, http_event("GET", "/credits/balance")).body["balance"] == 15
    assert invoke(bal, http_event("GET", "/credit-packages", sub=None)).body == {"packages": []}
