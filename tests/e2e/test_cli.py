"""The `credits` console script against a running `make dev`, with nothing to set: it finds the stack
from the checkout it runs in (the state file make dev keeps in .local-data/)."""

from __future__ import annotations

import os
import subprocess

from local.template import ROOT
from tests.e2e.conftest import DevStack

CREDITS = ROOT / ".venv" / "bin" / "credits"


def credits(dev_stack: DevStack, *args: str) -> subprocess.CompletedProcess[str]:
    """The console script, run from the stack's checkout, with none of the stack's variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CREDITS_", "STRIPE_", "DEV_"))}
    return subprocess.run(
        [str(CREDITS), *args], cwd=dev_stack.data_dir.parent, env=env, capture_output=True, text=True, timeout=60
    )


def test_user_grant_and_audit_all_work_against_make_dev_with_no_setup(dev_stack: DevStack) -> None:
    fresh = credits(dev_stack, "user", "cli-newcomer")
    assert fresh.returncode == 0, fresh.stderr
    assert "balance      0 credits" in fresh.stdout and "no account yet" in fresh.stdout

    granted = credits(dev_stack, "grant", "cli-alice", "1500", "--type", "gift", "--description", "welcome")
    assert granted.returncode == 0, granted.stderr
    assert "granted 1,500 credits to cli-alice (gift): balance 1,500 credits" in granted.stdout
    referenced = ("grant", "cli-alice", "50", "--type", "gift", "--description", "w", "--reference", "r-1")
    again, repeat = credits(dev_stack, *referenced), credits(dev_stack, *referenced)
    assert (again.returncode, repeat.returncode) == (0, 0)
    assert "already granted with reference r-1, nothing granted now (make dev at http://" in repeat.stdout

    shown = credits(dev_stack, "user", "cli-alice")
    assert "balance      1,550 credits" in shown.stdout
    assert "gift" in shown.stdout and "welcome" in shown.stdout

    audited = credits(dev_stack, "audit", "--all")
    assert audited.returncode == 0, audited.stdout + audited.stderr
    assert "with problems" in audited.stdout and ", 0 with problems" in audited.stdout

    unknown = credits(dev_stack, "audit", "cli-nobody")
    assert unknown.returncode == 1 and "no such user" in unknown.stdout

    bad = credits(dev_stack, "grant", "cli-alice", "0", "--type", "gift", "--description", "x")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
