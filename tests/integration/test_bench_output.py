"""`make bench` prints its table and nothing else: no CloudWatch metric (EMF) lines from the
use_credits containers, no Powertools "No application metrics to publish" warning."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys

from local.template import ROOT

BENCH_DEADLINE = 300.0  # seconds: DynamoDB Local's JVM, containers and cold starts on a loaded 2-core machine
# writers, way, req/s, its spread, 200/402/503, p50 and p99 ms, calls per request
ROW = re.compile(
    r"\s+1 (audited|ours|lots-20|update|seq-guard)\s+\d+\s+\d+-\d+\s+(\d+)/(\d+)/(\d+)\s+\d+\s+\d+\s+[\d.]+"
)


def test_the_benchmark_table_is_not_interrupted_by_metrics_or_warnings() -> None:
    # One writer: ONE container takes all 250 charges, so a metric set reaches Powertools' 100 values
    # (printed even with POWERTOOLS_METRICS_DISABLED), and 50 of them are refused.
    args = ["-m", "benchmarks.contention", "--requests", "250", "--balance", "200"]
    args += ["--writers", "1", "--runs", "1", "--cold-start-runs", "1", "--profile"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POWERTOOLS_", "LOCAL_"))}
    process = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the finally below reaches all it started
    )
    try:
        out, err = process.communicate(timeout=BENCH_DEADLINE)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever is left of it, if anything
        process.wait()
    assert process.returncode == 0, err
    lines = out.splitlines()
    assert lines[1].startswith(" writers way"), out
    table = lines[2 : lines.index("")]
    assert len(table) == 6, out  # the audited floor, four ways (ours twice: one lot, 20 lots), the ratios
    rows = [ROW.fullmatch(line) for line in table[:5]]
    assert all(rows), out
    assert [row.group(1) for row in rows if row] == ["audited", "ours", "lots-20", "update", "seq-guard"], out
    # every way answers the same: 200 charges, 50 refusals, no 503 (the 20 lots hold the same credits)
    assert {row.groups()[1:] for row in rows if row} == {("200", "50", "0")}, out
    assert re.fullmatch(
        r"\s+ours / audited floor: [\d.]+   ours / seq-guard: [\d.]+   lots-20 / ours: [\d.]+", table[5]
    ), out
    # the profile: what a charge cost, by kind of DynamoDB call and by CPU
    profile = lines[lines.index("") + 1 :]
    assert profile[0] == "profile: ours, 1 writers, per charge (one run)", out
    # one writer: every request is read and written directly, two calls (a 402 writes its key's marker)
    calls = "  DynamoDB calls: 2.00: direct: read 1.00, direct: refusal marker 0.20, direct: transaction 0.80"
    assert profile[1] == calls, out
    assert any(line.startswith("  CPU: handler ") and "DynamoDB Local" in line for line in profile), out
    # what the whole machine spent per charge, and the rate ours would reach with every core busy
    budget = r"  machine CPU per charge \(every process\): audited floor [\d.]+ ms \(\d+% of \d+ cores busy\), ours"
    assert any(
        re.match(budget + r" [\d.]+ ms \(\d+% busy\); every core busy, ours would reach \d+/s = [\d.]+x", line)
        for line in profile
    ), out
    # the cold start: each handler's time and instructions (counted by valgrind) against the floor's
    heading = next(n for n, line in enumerate(lines) if line.startswith("cold start, as built for Lambda"))
    cold = [re.fullmatch(r"(\S.*?)\s+(\d+)\s+([\d.]+)\s+(\d+)\s+([\d.]+)", line) for line in lines[heading + 2 :]]
    assert [row.group(1) for row in cold if row] == ["boto3 + dynamodb client (floor)", "use_credits", "balance"], out
    floor, *handlers = [row for row in cold if row]
    assert floor.group(3) == floor.group(5) == "1.00", out
    # a handler imports boto3 and builds its client too, and more besides: more instructions than the floor
    assert all(int(row.group(4)) > int(floor.group(4)) > 0 for row in handlers), out
    assert "_aws" not in out and "CloudWatchMetrics" not in out, out
    assert "UserWarning" not in err and "No application metrics" not in err, err
