"""Containers as processes (local/containers.py): what the gateway and the concurrency tests stand on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from local.containers import Container, ContainerError, ContainerGone, ContainerPool, InvocationError
from tests.support import http_event


def raising(module: ModuleType) -> None:
    """Setup hook (runs in the child): the handler raises instead of answering."""

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        raise RuntimeError("boom")

    module.lambda_handler = handler  # type: ignore[attr-defined]


def test_each_container_is_its_own_process_and_answers_like_lambda() -> None:
    first, second = Container("use_credits"), Container("use_credits")
    try:
        assert first.process.pid != second.process.pid
        response = first.invoke(http_event("POST", "/no-such-route", body={}))
        assert (response["statusCode"], json.loads(response["body"])["error"]["code"]) == (404, "not_found")
    finally:
        first.close()
        second.close()


def test_a_handler_that_raises_is_an_invocation_error_and_the_container_lives_on() -> None:
    container = Container("use_credits", setup="tests.unit.test_containers:raising")
    try:
        with pytest.raises(InvocationError, match="boom"):
            container.invoke(http_event("GET", "/credits/balance"))
        assert container.alive
    finally:
        container.close()


def test_a_cold_start_that_fails_names_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ACTION_COSTS")
    with pytest.raises(ContainerError, match="ACTION_COSTS"):
        Container("use_credits")


# A handler that appends its event's `mark` to the file `marks` names, then answers or, when the
# event says `die`, ends its process mid-invocation (as an out-of-memory kill or a crash would).
DYING_APP = """
import json
import os


def lambda_handler(event, context):
    with open(event["marks"], "a") as marks:
        marks.write(event["mark"] + "\\n")
    if event.get("die"):
        os._exit(1)
    return {"statusCode": 200, "body": json.dumps({"pid": os.getpid()})}
"""


@pytest.fixture
def dying(tmp_path: Path) -> Iterator[tuple[ContainerPool, Path]]:
    """A pool (one container at most) of DYING_APP, and the file its invocations are marked in."""
    (tmp_path / "app.py").write_text(DYING_APP)
    pool = ContainerPool("use_credits", limit=1, code=str(tmp_path))
    try:
        yield pool, tmp_path / "marks"
    finally:
        pool.close()


def call(pool: ContainerPool, marks: Path, mark: str, *, die: bool = False) -> int:
    """The pid of the container that served the invocation."""
    response = pool.invoke({"marks": str(marks), "mark": mark, "die": die})
    pid: int = json.loads(response["body"])["pid"]
    return pid


def test_a_container_killed_while_idle_is_replaced_and_the_request_served(
    dying: tuple[ContainerPool, Path],
) -> None:
    """As on Lambda, a new container serves the request: nothing was delivered to the dead one."""
    pool, marks = dying
    first = call(pool, marks, "one")
    [dead] = pool._idle
    dead.process.kill()
    dead.process.join(timeout=60)
    assert dead.process.exitcode is not None
    second = call(pool, marks, "two")
    assert second != first
    assert marks.read_text().split() == ["one", "two"]
    assert [c.process.pid for c in pool._all] == [second]  # the dead one is gone, not kept


def test_a_container_whose_pipe_breaks_before_delivery_is_replaced(
    dying: tuple[ContainerPool, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container that dies between the liveness check and the send: the send fails, so the
    request was never delivered, and another container serves it."""
    pool, marks = dying
    first = call(pool, marks, "one")
    [dead] = pool._idle
    dead.process.kill()
    dead.process.join(timeout=60)
    assert dead.process.exitcode is not None
    monkeypatch.setattr(dead.process, "is_alive", lambda: True)  # the check passes: it died just after
    assert call(pool, marks, "two") != first
    assert marks.read_text().split() == ["one", "two"]


def test_a_container_that_dies_while_handling_is_an_error_never_resent(dying: tuple[ContainerPool, Path]) -> None:
    """The request may have had effects: it is answered as failed, not given to another container;
    the next request gets a new container."""
    pool, marks = dying
    call(pool, marks, "one")
    with pytest.raises(ContainerError) as failed:
        call(pool, marks, "fatal", die=True)
    assert not isinstance(failed.value, ContainerGone)
    assert marks.read_text().split() == ["one", "fatal"]  # it ran once
    call(pool, marks, "three")
    assert marks.read_text().split() == ["one", "fatal", "three"]


def test_a_killed_container_refuses_before_sending() -> None:
    container = Container("use_credits")
    try:
        container.process.kill()
        container.process.join(timeout=60)
        with pytest.raises(ContainerGone):
            container.invoke(http_event("POST", "/no-such-route", body={}))
    finally:
        container.close()
