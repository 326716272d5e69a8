"""Containers as processes (local/containers.py): what the gateway and the concurrency tests stand on."""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import pytest

from local.containers import Container, ContainerError, ContainerPool, InvocationError
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


def test_a_container_that_dies_is_replaced_by_the_next_request() -> None:
    pool = ContainerPool("use_credits", limit=1)
    try:
        pool.warm()
        [dead] = pool._idle
        dead.process.kill()
        dead.process.join()
        with pytest.raises(ContainerError):
            pool.invoke(http_event("POST", "/no-such-route", body={}))
        assert pool.invoke(http_event("POST", "/no-such-route", body={}))["statusCode"] == 404
    finally:
        pool.close()
