"""Lambda containers as processes, for `make dev` and the tests.

On Lambda each execution environment runs one invocation at a time, in its own process. Powertools'
resolver keeps the current event on the class (`BaseRouter.current_event`), so two handlers running
as threads of ONE process read each other's requests: a charge lands on the wrong user. Anything
that runs handlers concurrently must therefore give each concurrent container its own process;
`Container` is one, `ContainerPool` scales them per function as Lambda does.

Children are started with `spawn` (never `fork`: the parent has threads and open sockets) and
inherit the environment as it is when they start, exactly like a cold start.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import multiprocessing
import os
import re
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from types import ModuleType
from typing import Any, TextIO, cast

from local.handlers import LocalContext, load_handler
from local.template import ROOT, code_dir, function_timeout

_CONTEXT = multiprocessing.get_context("spawn")
# "1": containers print their CloudWatch metrics (EMF lines) and Powertools' metric warnings, as on
# Lambda (`make dev ARGS=--show-metrics`); otherwise they are left out (hide_metrics). Read by each
# container when it starts, from the environment it inherits.
SHOW_METRICS = "LOCAL_SHOW_METRICS"


class ContainerError(RuntimeError):
    """The container could not start (its cold start raised), or it died."""


class ContainerGone(ContainerError):
    """The container was dead before the request reached it: nothing was delivered, so another
    container may serve the request (as Lambda starts a new execution environment)."""


class InvocationError(RuntimeError):
    """The handler raised instead of returning a response (Lambda reports an invocation error)."""


def _resolve(path: str) -> Callable[[ModuleType], None]:
    module_name, _, attribute = path.partition(":")
    hook: Callable[[ModuleType], None] = getattr(importlib.import_module(module_name), attribute)
    return hook


def is_metrics_line(line: str) -> bool:
    """A CloudWatch embedded metric format (EMF) line, as Powertools' Metrics prints them."""
    text = line.strip()
    if not (text.startswith("{") and '"_aws"' in text):
        return False
    try:
        found = json.loads(text)
    except ValueError:
        return False
    return isinstance(found, dict) and isinstance(found.get("_aws"), dict) and "CloudWatchMetrics" in found["_aws"]


class _WithoutMetrics(io.TextIOBase):
    """A container's standard output without its EMF lines: every other line (the functions' logs) is
    written on as it comes. A partial line is held back only while it may still be an EMF line."""

    def __init__(self, out: TextIO) -> None:
        super().__init__()
        self._out = out
        self._held = ""  # the start of a line that may be an EMF line
        self._passing = False  # the start of this line was written on: so is its rest

    def write(self, text: str) -> int:
        for piece in re.findall(r"[^\n]*\n|[^\n]+", text):
            if self._passing:
                self._out.write(piece)
                self._passing = not piece.endswith("\n")
                continue
            self._held += piece
            if self._held.endswith("\n"):
                line, self._held = self._held, ""
                if not is_metrics_line(line):
                    self._out.write(line)
            elif self._held.strip() and not self._held.lstrip().startswith("{"):
                self._out.write(self._held)
                self._held, self._passing = "", True
        return len(text)

    def flush(self) -> None:
        self._out.flush()

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._out.fileno()

    def isatty(self) -> bool:
        return self._out.isatty()

    @property
    def encoding(self) -> str:  # type: ignore[override]  # TextIOBase declares it read-only
        return self._out.encoding


def hide_metrics() -> None:
    """In a container: keep Powertools' metric output out of the way of the local stack's own output
    (`make dev`'s request log, `make bench`'s table): the EMF lines Metrics prints, and the
    "No application metrics to publish" UserWarning it gives for an invocation that added none.
    POWERTOOLS_METRICS_DISABLED alone does neither (Powertools 3.x still prints the cold-start metric
    and a set that reaches 100 values, and warns first)."""
    warnings.filterwarnings("ignore", message="No application metrics to publish", category=UserWarning)
    sys.stdout = cast(TextIO, _WithoutMetrics(sys.stdout))


@dataclass(frozen=True)
class Runtime:
    """How a function that is not one of template.yaml's (a team's, `make dev --template`) runs: its
    handler (`module.function`), and its environment as on Lambda: the container's inherited one
    without `unset` (our own functions' settings), with `environment` (its own Variables) on top.
    Its code folder is first on sys.path, as Lambda's /var/task, for modules next to its handler."""

    handler: str = "app.lambda_handler"
    environment: Mapping[str, str] = field(default_factory=dict)
    unset: frozenset[str] = frozenset()


DEFAULT_TIMEOUT = 15.0  # seconds: template.yaml's Globals, for a function it does not name


def _timeout(function: str, runtime: Runtime | None) -> float:
    """How long an invocation of the function may run (its LocalContext counts it down): its Timeout
    in template.yaml; the Globals' default for a team's function or one the template does not name."""
    if runtime is None:
        with contextlib.suppress(KeyError):
            return function_timeout(function)
    return DEFAULT_TIMEOUT


def _serve(  # pragma: no cover - in the child
    function: str, code: str, conn: Connection, setup: str | None, runtime: Runtime | None = None
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the parent, which closes its containers
    module_file, attribute = "app.py", "lambda_handler"
    timeout = _timeout(function, runtime)
    if runtime is not None:
        for name in runtime.unset:
            os.environ.pop(name, None)
        os.environ.update(runtime.environment)
        sys.path.insert(0, str(ROOT / code))
        module_path, _, attribute = runtime.handler.rpartition(".")
        module_file = module_path.replace(".", "/") + ".py"
    if os.environ.get(SHOW_METRICS) != "1":
        hide_metrics()  # before the cold start: Powertools' Logger keeps the sys.stdout it finds then
    try:
        module = load_handler(function, code=code, file=module_file)
        getattr(module, attribute)  # a Handler that names nothing fails the cold start
        if setup:
            _resolve(setup)(module)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails loudly
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            event = conn.recv()
        except (EOFError, OSError):
            return
        if event is None:
            return
        try:
            # looked up each time: a test's `setup` may replace it after the cold start
            context = LocalContext(module.__name__, timeout)
            conn.send(("ok", getattr(module, attribute)(event, context)))
        except BaseException as exc:  # noqa: BLE001 - an invocation error, as Lambda reports it
            conn.send(("raised", f"{type(exc).__name__}: {exc}"))


class Container:
    """One warm container of a function's `<code>/app.py` in its own process; one invocation at a time.

    `code` is the function's code directory relative to the repository root (default: its CodeUri
    in template.yaml). `setup` ("package.module:function") is called in the child with the loaded
    handler module, after its cold start: the tests inject faults that way.
    """

    def __init__(
        self,
        function: str,
        *,
        setup: str | None = None,
        start: bool = True,
        code: str | None = None,
        runtime: Runtime | None = None,
    ) -> None:
        self.function = function
        self.code = code if code is not None else code_dir(function)
        self._conn, child = _CONTEXT.Pipe()
        args = (function, self.code, child, setup, runtime)
        self.process = _CONTEXT.Process(target=_serve, args=args, daemon=True)
        self.process.start()
        child.close()
        self._lock = threading.Lock()
        self._ready = False
        if start:
            self.wait_ready()

    def wait_ready(self) -> Container:
        """Block until the cold start is done; ContainerError with its reason if it failed."""
        if not self._ready:
            kind, detail = self._receive()
            if kind != "ready":
                self.close()
                raise ContainerError(f"{self.function} failed to start: {detail}")
            self._ready = True
        return self

    def invoke(self, event: dict[str, Any]) -> dict[str, Any]:
        """The handler's response. ContainerGone if the request could not be delivered (the process
        had ended, or the pipe broke while sending: the child never read the whole event); any other
        ContainerError once it was delivered (it died handling it: the request may have had effects)."""
        with self._lock:
            self.wait_ready()
            if not self.alive:
                raise ContainerGone(f"{self.function} container is gone (exit code {self.process.exitcode})")
            try:
                self._conn.send(event)
            except OSError as exc:  # BrokenPipeError, ConnectionResetError: the child's end is closed
                raise ContainerGone(f"{self.function} container is gone") from exc
            kind, detail = self._receive()
        if kind == "raised":
            raise InvocationError(detail)
        result: dict[str, Any] = detail
        return result

    def _receive(self) -> tuple[str, Any]:
        try:
            message: tuple[str, Any] = self._conn.recv()
        except (EOFError, OSError) as exc:
            raise ContainerError(f"{self.function} container died (exit code {self.process.exitcode})") from exc
        return message

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            self._conn.send(None)
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self._conn.close()


def start_containers(
    function: str, count: int, *, setup: str | None = None, code: str | None = None
) -> list[Container]:
    """`count` containers of one function, cold-started in parallel."""
    containers = [Container(function, setup=setup, start=False, code=code) for _ in range(count)]
    try:
        return [c.wait_ready() for c in containers]
    except BaseException:
        for c in containers:
            c.close()
        raise


class ContainerPool:
    """The containers of one function: a request takes an idle one, or starts a new one (as Lambda
    scales out), up to `limit`; beyond that it waits, as a throttled Lambda would make it retry."""

    def __init__(
        self, function: str, *, limit: int = 8, code: str | None = None, runtime: Runtime | None = None
    ) -> None:
        self.function = function
        self.code = code if code is not None else code_dir(function)
        self.runtime = runtime  # None: one of template.yaml's functions (app.lambda_handler, inherited env)
        self.limit = limit
        self._idle: list[Container] = []
        self._count = 0
        self._all: list[Container] = []
        self._cv = threading.Condition()

    def warm(self, count: int = 1) -> None:
        """Start containers now (so a missing setting fails at start-up, naming it)."""
        started = [self._acquire() for _ in range(count)]
        for container in started:
            self._release(container)

    def invoke(self, event: dict[str, Any]) -> dict[str, Any]:
        """One invocation. A container found dead before the event reached it (killed while idle) is
        replaced and the event goes to another, as Lambda would; one that dies handling the event
        fails it (ContainerError), never resent: it may have had effects."""
        tried = 0
        while True:
            container = self._acquire()
            tried += 1
            try:
                response = container.invoke(event)
            except ContainerGone:
                self._discard(container)
                if tried > self.limit:  # every idle container was dead, and then a new one too
                    raise
                continue
            except InvocationError:
                self._release(container)  # the handler raised; its container lives on
                raise
            except BaseException:
                self._discard(container)  # it died handling the event, or its answer is still due
                raise
            self._release(container)
            return response

    def _acquire(self) -> Container:
        with self._cv:
            while not self._idle and self._count >= self.limit:
                self._cv.wait()
            if self._idle:
                return self._idle.pop()
            self._count += 1
        try:
            container = Container(self.function, code=self.code, runtime=self.runtime)
        except BaseException:
            with self._cv:
                self._count -= 1
                self._cv.notify()
            raise
        with self._cv:
            self._all.append(container)
        return container

    def _release(self, container: Container) -> None:
        with self._cv:
            self._idle.append(container)
            self._cv.notify()

    def _discard(self, container: Container) -> None:
        container.close()
        with self._cv:
            self._count -= 1
            if container in self._all:
                self._all.remove(container)
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            containers, self._all, self._idle, self._count = self._all, [], [], 0
        for container in containers:
            container.close()
