"""A local stand-in for an EventBridge Scheduler schedule (for `make dev`): a function invoked at a
fixed rate, in a background thread.

On AWS the expire function runs once a day (template.yaml: ScheduleV2, rate(1 day)). Locally a day
is too long to watch a credit lot expire, so `make dev` invokes it every `--sweep-every` seconds,
once right away (what came due while make dev was down), in its own container process as Lambda
runs it. An invocation that fails is logged and the next one comes at its time (Lambda's retries of
an asynchronous invocation are not imitated: the next run does the same work).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

Json = dict[str, Any]


class Schedule:
    """Invokes `invoke(event)` every `every` seconds (the first time when started) until stopped;
    `answered(answer)` hears each answer, `log(line)` each failure."""

    def __init__(
        self,
        name: str,
        every: float,
        invoke: Callable[[Json], Any],
        *,
        answered: Callable[[Any], None] = lambda _answer: None,
        log: Callable[[str], None] = print,
    ) -> None:
        if every <= 0:
            raise ValueError("a schedule's rate must be a positive number of seconds")
        self.name = name
        self.every = every
        self.invoke = invoke
        self.answered = answered
        self.log = log
        self.runs = 0  # invocations made, whether they failed or not
        self.failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def event(self) -> Json:
        """What EventBridge Scheduler's invocation carries that a function might read."""
        now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        return {"source": "local.scheduler", "schedule": self.name, "time": now}

    def run_once(self) -> Any:
        """One invocation: its answer, or None when it failed (logged)."""
        self.runs += 1
        try:
            answer = self.invoke(self.event())
        except Exception as exc:  # noqa: BLE001 - a failed run is logged; the schedule goes on
            self.failures += 1
            self.log(f"{self.name}: the scheduled run failed: {type(exc).__name__}: {exc}")
            return None
        self.answered(answer)
        return answer

    def start(self) -> Schedule:
        self._thread = threading.Thread(target=self._run, name=f"schedule-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            if self._stop.wait(self.every):
                return

    def stop(self, timeout: float = 60.0) -> None:
        """No run after this one; waits for a run in flight (up to `timeout` seconds)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
