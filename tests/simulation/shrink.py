"""The shortest history that still fails: fewer ops by count (a prefix of the seed's workload, by
binary search), then only the ops of the users the violation names, then without single ops (in
chunks first, then one at a time) while the same invariant still fails. Time-boxed: each try is a
whole run. Faults belong to each attempt (seeded by the op), so they survive the shrinking; the
interleaving is the scheduler's and may not, so a race shrinks less than a fault does."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tests.simulation.sim import Result, simulate
from tests.simulation.workload import Op, generate


@dataclass
class Shrunk:
    count: int  # the op count of the prefix it comes from
    ops: list[Op]  # the history, a subset of generate(seed, count)
    result: Result  # its failing run
    runs: int
    seconds: float


def shrink(
    seed: int,
    failed: Result,
    *,
    plant: str | None = None,
    strict: bool = False,
    fail_on: Sequence[str] = (),
    seconds: float = 120.0,
    say: Callable[[str], None] = lambda line: None,
) -> Shrunk:
    assert failed.violation is not None
    invariant = failed.violation.invariant
    started = time.monotonic()
    runs = 0

    def fails(ops: Sequence[Op]) -> Result | None:
        nonlocal runs
        runs += 1
        result = simulate(seed, ops=ops, plant=plant, strict=strict, fail_on=fail_on)
        return result if result.violation is not None and result.violation.invariant == invariant else None

    def left() -> bool:
        return time.monotonic() - started < seconds

    # 1. by count: the prefix that arrived before the failure, then binary search below it
    hi = max(op.n for op in failed.ops) + 1 if failed.ops else 1
    best = fails(generate(seed, hi))
    if best is None:  # pragma: no cover - a failure always replays from its own prefix
        return Shrunk(hi, list(failed.ops), failed, runs, time.monotonic() - started)
    lo = 0
    while hi - lo > 1 and left():
        mid = (lo + hi) // 2
        result = fails(generate(seed, mid))
        if result is not None:
            hi, best = mid, result
        else:
            lo = mid
        say(f"  shrinking by count: {hi} ops fail, {lo} pass ({runs} runs)")
    ops = generate(seed, hi)
    # 2. only the ops of the users the violation names (others only shift the schedule)
    users = set(re.findall(r"\bu\d\d\b", best.violation.detail if best.violation else ""))
    if users and left():
        trial = [op for op in ops if op.user in users or op.kind == "leap"]
        result = fails(trial) if len(trial) < len(ops) else None
        if result is not None:
            ops, best = trial, result
            say(f"  shrinking to the ops of {', '.join(sorted(users))}: {len(ops)} left ({runs} runs)")
    # 3. without chunks of ops, then single ops, while it still fails
    chunk = max(1, len(ops) // 2)
    while chunk >= 1 and left():
        i = len(ops) - chunk
        while i >= 0 and left():
            trial = ops[:i] + ops[i + chunk :]
            result = fails(trial) if trial else None
            if result is not None:
                ops, best = trial, result
            i -= chunk
        say(f"  shrinking by dropping ops: {len(ops)} left ({runs} runs)")
        if chunk == 1:
            break
        chunk = max(1, chunk // 2)
    return Shrunk(hi, ops, best, runs, time.monotonic() - started)


def ranges(numbers: Sequence[int]) -> str:
    """1,2,3,7,9,10 as 1-3,7,9-10."""
    out: list[str] = []
    start = prev = None
    for n in sorted(numbers):
        if start is None:
            start = prev = n
        elif prev is not None and n == prev + 1:
            prev = n
        else:
            out.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = n
    if start is not None:
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ",".join(out)


def parse_ranges(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            a, b = part.split("-", 1)
            out.update(range(int(a), int(b) + 1))
        else:
            out.add(int(part))
    return out
