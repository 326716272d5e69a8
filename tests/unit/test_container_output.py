"""What containers print: the functions' own output, without Powertools' metric lines and warning
(they broke `make bench`'s table and flooded `make dev`), unless asked for (`--show-metrics`)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from local.containers import SHOW_METRICS, Container, _WithoutMetrics, is_metrics_line

# A function with Powertools' Metrics as ours use it, and the cold-start metric (a single_metric,
# printed whatever POWERTOOLS_METRICS_DISABLED says): an invocation adds a metric when asked to.
PROBE = """
from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit

metrics = Metrics()


@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event, context):
    print("handled", event["n"], flush=True)
    if event["metric"]:
        metrics.add_metric(name="Things", unit=MetricUnit.Count, value=1)
    return {"statusCode": 200}
"""
INVOCATIONS = 121  # a metric set that reaches 100 values is printed even with metrics disabled
EMPTY_WARNING = "No application metrics to publish"


def run_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """Cold-start the probe in a container, invoke it (the first time without a metric), and return
    what the container printed: (stdout, stderr)."""
    code = tmp_path / "probe"
    code.mkdir()
    (code / "app.py").write_text(PROBE)
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "probe")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Probe")
    capfd.readouterr()
    container = Container("probe", code=str(code))  # inherits the environment as it is now
    try:
        for n in range(INVOCATIONS):
            assert container.invoke({"n": n, "metric": n > 0}) == {"statusCode": 200}
    finally:
        container.close()  # the container exits, flushing what it printed
    return capfd.readouterr()


def test_containers_leave_out_metric_lines_and_the_empty_metrics_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(SHOW_METRICS, raising=False)
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")  # as make bench and make dev run them
    out, err = run_probe(tmp_path, monkeypatch, capfd)
    assert out.splitlines() == [f"handled {n}" for n in range(INVOCATIONS)]  # its own output, whole
    assert EMPTY_WARNING not in err, err


def test_with_show_metrics_they_print_their_metrics_as_on_lambda(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(SHOW_METRICS, "1")
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")  # what make dev --show-metrics sets
    out, err = run_probe(tmp_path, monkeypatch, capfd)
    lines = out.splitlines()
    metrics = [json.loads(line) for line in lines if is_metrics_line(line)]
    assert len(metrics) == INVOCATIONS  # the cold start's, then one per invocation that added one
    assert [line for line in lines if not is_metrics_line(line)] == [f"handled {n}" for n in range(INVOCATIONS)]
    assert EMPTY_WARNING in err


def test_the_filter_holds_a_partial_line_only_while_it_may_be_a_metric_line() -> None:
    out = io.StringIO()
    stream = _WithoutMetrics(out)
    emf = json.dumps({"_aws": {"Timestamp": 1, "CloudWatchMetrics": []}, "Things": [1.0]})
    stream.write(emf[:10])
    stream.write(emf[10:])
    stream.write("\n")  # print() writes the line, then its end
    assert out.getvalue() == ""
    stream.write("progress: ")  # cannot be a metric line: written on at once
    assert out.getvalue() == "progress: "
    stream.write('{"_aws": "the rest of a line"}\nnext\n{"level": "INFO", "message": "a log line"}\n')
    assert (
        out.getvalue() == 'progress: {"_aws": "the rest of a line"}\nnext\n{"level": "INFO", "message": "a log line"}\n'
    )
    stream.write('{"_aws": {"CloudWatchMetrics": []}} trailing text is not JSON\n')
    assert out.getvalue().endswith("trailing text is not JSON\n")
