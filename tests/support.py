"""Test helpers: HTTP API payload 2.0 events and loading a function's handler the way Lambda does."""

from __future__ import annotations

import base64
import copy
import json
import os
import queue
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple

from local.containers import Container, ContainerPool, start_containers
from local.gateway import Gateway, LocalContext, load_handler

if TYPE_CHECKING:
    from credits.ledger import Audit, Ledger

ROOT = Path(__file__).resolve().parent.parent
BASE_EVENT = json.loads((ROOT / "tests" / "events" / "http_api_proxy.json").read_text())


def http_event(
    method: str,
    path: str,
    *,
    body: Any = None,
    raw_body: str | None = None,
    sub: str | None = "user-1",
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    base64_body: bool = False,
    route_key: str | None = None,
) -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) event, shaped as `sam local generate-event` makes it."""
    event = copy.deepcopy(BASE_EVENT)
    text = raw_body if raw_body is not None else (None if body is None else json.dumps(body))
    event["routeKey"] = route_key or f"{method} {path}"
    event["rawPath"] = path
    event["rawQueryString"] = "&".join(f"{k}={v}" for k, v in (query or {}).items())
    event["queryStringParameters"] = query or None
    event["pathParameters"] = None
    event["cookies"] = []
    event["headers"] = {
        "content-type": "application/json",
        **{k.lower(): v for k, v in (headers or {}).items()},
    }
    event["requestContext"]["http"]["method"] = method
    event["requestContext"]["http"]["path"] = path
    event["requestContext"]["routeKey"] = event["routeKey"]
    event["requestContext"]["requestId"] = str(uuid.uuid4())
    if sub is None:
        event["requestContext"].pop("authorizer", None)
    else:
        event["requestContext"]["authorizer"] = {"jwt": {"claims": {"sub": sub, "iss": "test"}, "scopes": None}}
    if text is None:
        event.pop("body", None)
        event["isBase64Encoded"] = False
    elif base64_body:
        event["body"] = base64.b64encode(text.encode()).decode()
        event["isBase64Encoded"] = True
    else:
        event["body"] = text
        event["isBase64Encoded"] = False
    return event


FakeContext = LocalContext


class ManualClock:
    """A clock a test moves by hand (`clock.now += 2`), for the ledger's `clock=`."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def load_function(name: str) -> ModuleType:
    """Import functions/<name>/app.py afresh: a new container, under a unique module name."""
    return load_handler(name, f"fn_{name}_{uuid.uuid4().hex[:8]}")


class Answer(NamedTuple):
    """A Lambda proxy response: status, decoded JSON body and headers (a tuple, unpacked as one)."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str]

    @property
    def code(self) -> str | None:
        """The error's code (`error.code` of the body), or None for an answer that is no error."""
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return error.get("code") if isinstance(error, dict) else None


def invoke(module: ModuleType, event: dict[str, Any]) -> Answer:
    """Call a handler; returns status, decoded JSON body and headers."""
    return decode(module.lambda_handler(event, FakeContext()))


class Fleet:
    """Containers of one function, each its own PROCESS (never threads sharing resolver state).

    `invoke` may be called from many threads at once: each call takes an idle container, as
    Lambda routes a request to a free execution environment.
    """

    def __init__(self, containers: list[Container]) -> None:
        self.containers = containers
        self._idle: queue.Queue[Container] = queue.Queue()
        for container in containers:
            self._idle.put(container)

    def invoke(self, event: dict[str, Any]) -> Answer:
        container = self._idle.get()
        try:
            return decode(container.invoke(event))
        finally:
            self._idle.put(container)

    def on(self, index: int, event: dict[str, Any]) -> Answer:
        """Invoke one particular container."""
        return decode(self.containers[index].invoke(event))

    def hammer(
        self,
        events: Sequence[dict[str, Any]],
        *,
        at_once: bool = False,
        pinned: bool = False,
        meanwhile: Callable[[], object] | None = None,
    ) -> list[Answer]:
        """Send every event, from as many threads as there are containers, and return the answers in
        the order of `events`.

        `at_once`: the first request of each thread waits until all of them are ready, then they go
        together. `pinned`: event i goes to container i (one event per container), not to whichever
        is idle. `meanwhile` runs in the calling thread while the requests are in flight."""
        workers = len(self.containers)
        if pinned:
            assert len(events) == workers, "pinned: one event per container"
        barrier = threading.Barrier(min(workers, len(events)), timeout=120) if at_once else None

        def send(i: int) -> Answer:
            if barrier is not None and i < workers:
                barrier.wait()
            return self.on(i, events[i]) if pinned else self.invoke(events[i])

        with ThreadPoolExecutor(max_workers=workers) as pool:
            answers = pool.map(send, range(len(events)))
            if meanwhile is not None:
                meanwhile()
            return list(answers)


@contextmanager
def fleet(function: str, count: int, *, setup: str | None = None) -> Iterator[Fleet]:
    """`count` containers of functions/<function>/app.py in their own processes, closed at the end."""
    containers = start_containers(function, count, setup=setup)
    try:
        yield Fleet(containers)
    finally:
        for container in containers:
            container.close()


def hammer(
    function: str,
    events: Sequence[dict[str, Any]],
    *,
    workers: int = 16,
    setup: str | None = None,
    at_once: bool = False,
    pinned: bool = False,
    meanwhile: Callable[[], object] | None = None,
) -> list[Answer]:
    """A fleet of `workers` containers of functions/<function>/app.py, each its own process, sent
    `events` from `workers` threads at once (see `Fleet.hammer`); the answers in the order of `events`.
    The containers are closed before it returns."""
    with fleet(function, workers, setup=setup) as containers:
        return containers.hammer(events, at_once=at_once, pinned=pinned, meanwhile=meanwhile)


def assert_audited(
    ledger: Ledger,
    user: str,
    *,
    balance: int | None = None,
    available: int | None = None,
    held: int | None = None,
    entries: int | None = None,
    amounts: Sequence[int] | None = None,
) -> Audit:
    """After a race: the user's ledger passes the audit (every invariant of docs/design.md section 4),
    and, where given, the balance, what is available and held, the number of entries (numbered 1 to
    `entries`, no gap) and their amounts in order are as expected."""
    audit = ledger.audit(user)
    assert audit.ok, audit.problems
    if balance is not None or available is not None or held is not None:
        view = ledger.account(user)
        for name, wanted, seen in (
            ("balance", balance, view.balance),
            ("available", available, view.available),
            ("held", held, view.held),
        ):
            assert wanted is None or seen == wanted, f"{user}'s {name} is {seen}, not {wanted}"
    if entries is not None:
        assert (audit.seq, audit.entries) == (entries, entries), audit
    if amounts is not None:
        assert [t.amount for t in ledger.history(user)] == list(amounts)
    return audit


def decode(response: dict[str, Any]) -> Answer:
    """A Lambda proxy response as status, decoded JSON body and headers."""
    body = response.get("body") or "null"
    if response.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    return Answer(response["statusCode"], json.loads(body), response.get("headers") or {})


@contextmanager
def environment(**values: str | None) -> Iterator[None]:
    """Set (or, with None, remove) environment variables for the duration of a block."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


ECHO_APP = """
import json


def lambda_handler(event, context):
    return {"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": json.dumps(event)}
"""


@contextmanager
def echo_gateway(code_dir: Path, *, iam_credentials: tuple[str, str] | None) -> Iterator[Gateway]:
    """A local gateway whose use_credits routes answer with the event they receive (an app.py
    written to `code_dir`): the authorizer's and routing's outcome, without a table."""
    (code_dir / "app.py").write_text(ECHO_APP)
    gateway = Gateway(token_secret="test-secret", web_dir=None, iam_credentials=iam_credentials)
    gateway.pools["use_credits"].close()
    gateway.pools["use_credits"] = ContainerPool("use_credits", code=str(code_dir))
    gateway.start(warm=False)
    try:
        yield gateway
    finally:
        gateway.stop()


def contract_run() -> tuple[int, int]:
    """The contract suite's seed and examples per operation: CONTRACT_SEED repeats a run (its seed is
    in pytest's header); otherwise the seed follows the spec, so an unchanged spec fuzzes the same."""
    seed = os.environ.get("CONTRACT_SEED") or zlib.crc32((ROOT / "docs" / "openapi.yaml").read_bytes())
    return int(seed), int(os.environ.get("CONTRACT_EXAMPLES", "25"))


def wait_until(what: str, done: Callable[[], bool], *, timeout: float) -> None:
    """Poll `done` until it says so; fail after `timeout` seconds, naming `what`."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"waited {timeout:.0f} s for {what}"
        time.sleep(0.05)


def patient(module: ModuleType) -> None:  # pragma: no cover - runs in the container process
    """Container setup (`setup="tests.support:patient"`): a waiter's time budget of 30 s, the most a
    Ledger takes, instead of 12 s. On a machine where many containers share two cores with other
    work, 12 s can pass while the others hold the CPU (a 503, nothing written); tests about what is
    decided, not how fast, give their containers this."""
    module.ledger.time_budget = 30.0


def save_card(store: Any, user_id: str, card_id: str = "pm_card_visa", customer: str = "cus_test") -> None:
    """A saved card on the user's account, saved as the webhook saves one (credits.cards): what auto
    top-up charges."""
    from credits.cards import Cards, SavedCard

    card = SavedCard(card_id, "visa", "4242", "fp_test", 12, 2034, customer, int(time.time()))
    assert Cards.on(store).save(user_id, card)


def combine_once(ledger: Ledger, user_id: str) -> dict[str, Any]:
    """One combiner pass over the user's queue, as a combiner runs it (the lease taken, then given
    back): the decisions by intent id, {} when there was nothing to decide."""
    from credits import keys

    pk, owner = keys.user_pk(user_id), str(uuid.uuid4())
    assert ledger.group.take_lease(pk, owner)
    try:
        snapshot, intents = ledger.group.queued(pk)
        decided: dict[str, Any] = ledger.group.combine(pk, snapshot, intents, owner) or {}
        return decided
    finally:
        ledger.group.release_lease(pk, owner)
