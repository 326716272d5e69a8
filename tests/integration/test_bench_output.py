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
ROW = re.compile(r"\s+1 (ours|lots-20|serialize|seq-guard)\s+\d+\s+(\d+)\s+(\d+)\s+(\d+)\s+\d+\s+\d+\s+[\d.]+")


def test_the_benchmark_table_is_not_interrupted_by_metrics_or_warnings() -> None:
    # One writer: ONE container takes all 250 charges, so a metric set reaches Powertools' 100 values
    # (printed even with POWERTOOLS_METRICS_DISABLED), and 50 of them are refused.
    args = ["-m", "benchmarks.contention", "--requests", "250", "--balance", "200"]
    args += ["--writers", "1", "--cold-start-runs", "1"]
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
    assert len(table) == 6, out  # three ways (ours twice: one lot, 20 lots) and the ratios, nothing in between
    rows = [ROW.fullmatch(line) for line in table[:4]]
    assert all(rows), out
    assert [row.group(1) for row in rows if row] == ["ours", "lots-20", "serialize", "seq-guard"], out
    # every way answers the same: 200 charges, 50 refusals, no 503 (the 20 lots hold the same credits)
    assert {row.groups()[1:] for row in rows if row} == {("200", "50", "0")}, out
    assert table[4].strip().startswith("ours/serialize"), out
    assert re.fullmatch(r"\s+lots-20/ours req/s [\d.]+   calls/req [\d.]+", table[5]), out
    assert "_aws" not in out and "CloudWatchMetrics" not in out, out
    assert "UserWarning" not in err and "No application metrics" not in err, err
