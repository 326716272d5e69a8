"""credits.paywall.charge_credits on a small resolver app (moto): reserve, run, capture or release."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from types import ModuleType
from typing import Any, cast

import pytest
from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.utilities.typing import LambdaContext

from credits.errors import ConfigError, TemporarilyUnavailable
from credits.http import install_error_handlers, json_response
from credits.ledger import Ledger
from credits.paywall import Paywall, charge_credits
from tests.support import FakeContext, decode, environment, http_event, load_function

PRICES = {"analyze": 5, "search": 1}


class App:
    """A team's function: four routes behind the paywall, counting how often each one ran."""

    def __init__(self, ledger: Ledger) -> None:
        self.runs: dict[str, int] = {}
        self.paywall = Paywall(ledger, PRICES, sleep=lambda _s: None)
        app = APIGatewayHttpResolver()
        install_error_handlers(app, Logger(service="team"))
        self.app = app
        charge = charge_credits("analyze", paywall=self.paywall)

        @app.post("/ok", middlewares=[charge])
        def ok() -> Response:
            return self.ran("ok", json_response(200, {"done": True}))

        @app.post("/raises", middlewares=[charge])
        def raises() -> Response:
            self.ran("raises", None)
            raise RuntimeError("the action crashed")

        @app.post("/fails", middlewares=[charge])
        def fails() -> Response:
            return self.ran("fails", json_response(500, {"error": {"code": "oops", "message": "failed"}}))

        @app.post("/cheaper", middlewares=[charge])
        def cheaper() -> Response:
            used = (app.current_event.json_body or {}).get("used")
            app.append_context(credits_used=used)
            return self.ran("cheaper", json_response(200, {"done": True}))

        @app.post("/flaky", middlewares=[charge])
        def flaky() -> Response:
            fail = (app.current_event.json_body or {}).get("fail")
            return self.ran("flaky", json_response(500 if fail else 200, {"failed": bool(fail)}))

        @app.post("/fixed", middlewares=[charge_credits(amount=2, paywall=self.paywall)])
        def fixed() -> Response:
            return self.ran("fixed", json_response(201, {"done": True}))

    def ran(self, name: str, response: Any) -> Any:
        self.runs[name] = self.runs.get(name, 0) + 1
        return response

    def call(self, path: str, **kwargs: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
        return self.send(http_event("POST", path, body=kwargs.pop("body", {}), **kwargs))

    def send(self, event: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        return decode(self.app.resolve(event, cast(LambdaContext, FakeContext())))


@pytest.fixture
def ledger(moto_dynamodb) -> Ledger:
    ledger = Ledger(moto_dynamodb, "credits", sleep=lambda _s: None)
    ledger.grant("user-1", 12, type="gift", description="seed")
    return ledger


@pytest.fixture
def team(ledger: Ledger) -> App:
    return App(ledger)


def test_a_successful_route_charges_once_and_says_so_in_headers(
    team: App, ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    status, body, headers = team.call("/ok")
    assert '"CreditsCharged":[5.0]' in capsys.readouterr().out  # the stack's dashboard sees it
    assert (status, body) == (200, {"done": True})
    assert (headers["Credits-Charged"], headers["Credits-Balance"]) == ("5", "7")
    assert [(t.amount, t.type, t.description) for t in ledger.history("user-1")][1:] == [(-5, "usage", "analyze")]
    assert ledger.account("user-1").held == 0


@pytest.mark.parametrize(("path", "status"), [("/raises", 500), ("/fails", 500)])
def test_a_route_that_raises_or_answers_5xx_charges_nothing(team: App, ledger: Ledger, path: str, status: int) -> None:
    code, _body, headers = team.call(path)
    assert code == status and "Credits-Charged" not in headers
    assert team.runs == {path[1:]: 1}
    view = ledger.account("user-1")
    assert (view.balance, view.available, view.held) == (12, 12, 0)
    assert len(ledger.history("user-1")) == 1


def test_not_enough_credits_is_402_and_the_route_never_runs(
    team: App, ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger.charge("user-1", 10, description="spent")
    status, body, _ = team.call("/ok")
    assert status == 402
    assert '"InsufficientCredits":[1.0]' in capsys.readouterr().out
    assert body["error"]["code"] == "insufficient_credits"
    assert (body["error"]["required"], body["error"]["balance"], body["error"]["available"]) == (5, 2, 2)
    assert team.runs == {}


def test_no_identity_is_401_and_the_route_never_runs(team: App) -> None:
    status, body, _ = team.call("/ok", sub=None)
    assert (status, body["error"]["code"], team.runs) == (401, "unauthorized", {})


def test_a_retry_with_the_same_idempotency_key_replays_the_first_answer_and_charges_once(
    team: App, ledger: Ledger
) -> None:
    first = team.call("/ok", headers={"Idempotency-Key": "report-1"})
    again = team.call("/ok", headers={"Idempotency-Key": "report-1"})
    assert first[:2] == again[:2] == (200, {"done": True})
    assert first[2]["Credits-Charged"] == again[2]["Credits-Charged"] == "5"
    assert first[2]["Credits-Balance"] == again[2]["Credits-Balance"] == "7"
    assert again[2]["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first[2]
    assert team.runs == {"ok": 1}  # the route never runs twice for one key
    assert [t.amount for t in ledger.history("user-1")] == [12, -5]


def test_the_same_key_with_another_body_is_409_and_runs_nothing(team: App, ledger: Ledger) -> None:
    assert team.call("/cheaper", body={"used": 1}, headers={"Idempotency-Key": "k"})[0] == 200
    status, body, _ = team.call("/cheaper", body={"used": 2}, headers={"Idempotency-Key": "k"})
    assert (status, body["error"]["code"]) == (409, "idempotency_key_reused")
    assert team.runs == {"cheaper": 1} and ledger.balance("user-1") == 11


def test_a_retry_while_the_first_request_runs_is_409_and_cannot_release_its_hold(team: App, ledger: Ledger) -> None:
    """A second request with the key arrives while the first runs (here: from inside its route)."""
    inner: list[tuple[int, dict[str, Any], dict[str, str]]] = []

    @team.app.post("/slow", middlewares=[charge_credits("analyze", paywall=team.paywall)])
    def slow() -> Response:
        inner.append(team.call("/slow", headers={"Idempotency-Key": "same"}))
        return json_response(200, {"done": True})

    status, _, headers = team.call("/slow", headers={"Idempotency-Key": "same"})
    assert (inner[0][0], inner[0][1]["error"]["code"], inner[0][2]["Retry-After"]) == (409, "request_in_progress", "1")
    assert (status, headers["Credits-Charged"]) == (200, "5")
    assert [t.amount for t in ledger.history("user-1")] == [12, -5]


def test_a_retry_after_a_failure_with_the_same_key_runs_again_and_charges_once(team: App, ledger: Ledger) -> None:
    """A failed attempt charged nothing, so its key is free: the retry that succeeds pays, once."""
    assert team.call("/flaky", body={"fail": True}, headers={"Idempotency-Key": "k"})[0] == 500
    assert ledger.balance("user-1") == 12
    first = team.call("/flaky", headers={"Idempotency-Key": "k"})
    again = team.call("/flaky", headers={"Idempotency-Key": "k"})
    assert first[2]["Credits-Charged"] == again[2]["Credits-Charged"] == "5"
    assert team.runs == {"flaky": 2} and again[2]["Idempotent-Replayed"] == "true"
    assert [t.amount for t in ledger.history("user-1")] == [12, -5]


@pytest.mark.parametrize(("used", "charged"), [(3, 3), (0, 0), (5, 5), (9, 5), (-1, 5), ("2", 5)])
def test_credits_used_charges_less_never_more(team: App, ledger: Ledger, used: object, charged: int) -> None:
    status, _, headers = team.call("/cheaper", body={"used": used})
    assert status == 200 and headers["Credits-Charged"] == str(charged)
    assert ledger.balance("user-1") == 12 - charged
    assert len(ledger.history("user-1")) == (1 if charged == 0 else 2)
    assert ledger.account("user-1").held == 0


def test_a_fixed_amount_and_a_3xx_or_201_capture(team: App, ledger: Ledger) -> None:
    status, _, headers = team.call("/fixed")
    assert (status, headers["Credits-Charged"], ledger.balance("user-1")) == (201, "2", 10)


def test_a_capture_that_keeps_failing_charges_nothing_and_is_reported(
    team: App,
    ledger: Ledger,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    attempts: list[int] = []

    def failing(*_a: object, **_k: object) -> None:
        attempts.append(1)
        raise TemporarilyUnavailable("throttled")

    monkeypatch.setattr(ledger, "capture", failing)
    status, body, headers = team.call("/ok")
    assert (status, body) == (200, {"done": True}) and "Credits-Charged" not in headers
    assert len(attempts) == 3
    assert '"CaptureFailed":[1.0]' in capsys.readouterr().out  # the metric, as EMF
    assert "capture failed" in caplog.text
    assert [t.amount for t in ledger.history("user-1")] == [12]  # not charged; the hold expires


def test_a_capture_that_fails_once_is_retried_and_charges_once(
    team: App, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = ledger.capture
    calls: list[int] = []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise TemporarilyUnavailable("throttled")
        return real(*args, **kwargs)

    monkeypatch.setattr(ledger, "capture", flaky)
    assert team.call("/ok")[2]["Credits-Charged"] == "5"
    assert [t.amount for t in ledger.history("user-1")] == [12, -5]


def test_an_unknown_action_fails_at_cold_start(ledger: Ledger) -> None:
    with pytest.raises(ConfigError, match="ACTION_COSTS"):
        charge_credits("teleport", paywall=Paywall(ledger, PRICES))
    with pytest.raises(ConfigError):
        charge_credits("analyze", amount=3, paywall=Paywall(ledger, PRICES))


# ---- bodies that are not text: fingerprinted as bytes, never decoded; a 4xx, never a 5xx ---------------

NOT_UTF8 = b"\xff\xfe\x00\x81 binary, not UTF-8"


def raw_event(path: str, raw: bytes | str, *, base64_body: bool, key: str | None) -> dict[str, Any]:
    """A POST whose body is bytes, as API Gateway passes them: base64-encoded (isBase64Encoded, as
    deployed for application/octet-stream), or as text (bytes that are not UTF-8 then arrive as lone
    surrogates, the only way a str can carry them); a str `raw` is put in the event as it is."""
    headers = {"Content-Type": "application/octet-stream", **({"Idempotency-Key": key} if key else {})}
    event = http_event("POST", path, headers=headers)
    if isinstance(raw, str):
        event["body"] = raw
    else:
        event["body"] = base64.b64encode(raw).decode() if base64_body else raw.decode("utf-8", "surrogateescape")
    event["isBase64Encoded"] = base64_body
    return event


def items(client: Any) -> list[dict[str, Any]]:
    """Every item of the credits table: what "writes nothing" is checked against."""
    return sorted(client.scan(TableName="credits")["Items"], key=repr)


@pytest.mark.parametrize("base64_body", [True, False])
def test_a_body_that_is_not_utf8_is_fingerprinted_as_bytes_with_a_key(
    team: App, ledger: Ledger, base64_body: bool
) -> None:
    first = team.send(raw_event("/ok", NOT_UTF8, base64_body=base64_body, key="bin-1"))
    again = team.send(raw_event("/ok", NOT_UTF8, base64_body=base64_body, key="bin-1"))
    other = team.send(raw_event("/ok", NOT_UTF8 + b"!", base64_body=base64_body, key="bin-1"))
    assert (first[0], first[2]["Credits-Charged"]) == (200, "5")
    assert (again[0], again[2]["Idempotent-Replayed"]) == (200, "true")
    assert (other[0], other[1]["error"]["code"]) == (409, "idempotency_key_reused")
    assert team.runs == {"ok": 1}
    assert [t.amount for t in ledger.history("user-1")] == [12, -5]


def test_a_body_that_is_not_utf8_needs_no_fingerprint_without_a_key(team: App, ledger: Ledger) -> None:
    for base64_body in (True, False):
        status, _, headers = team.send(raw_event("/ok", NOT_UTF8, base64_body=base64_body, key=None))
        assert (status, headers["Credits-Charged"]) == (200, "5")
    assert [t.amount for t in ledger.history("user-1")] == [12, -5, -5]


def test_the_same_bytes_are_the_same_request_base64_or_not(team: App, ledger: Ledger) -> None:
    """The fingerprint is of the bytes the client sent, however API Gateway passed them on."""
    text = '{"query": "caf\u00e9"}'.encode()
    assert team.send(raw_event("/ok", text, base64_body=True, key="same"))[0] == 200
    status, _, headers = team.send(raw_event("/ok", text, base64_body=False, key="same"))
    assert (status, headers["Idempotent-Replayed"]) == (200, "true")
    assert team.runs == {"ok": 1}


@pytest.mark.parametrize("key", [None, "bad-1"])
@pytest.mark.parametrize("body", ["!!!not-base64", "e30", "e30=\n", "\u00e9t\u00e9", "\ud800"])
def test_a_body_flagged_base64_that_is_not_is_400_and_writes_nothing(
    team: App, moto_dynamodb: Any, key: str | None, body: str
) -> None:
    before = items(moto_dynamodb)
    status, answer, _ = team.send(raw_event("/ok", body, base64_body=True, key=key))
    assert (status, answer["error"]["code"]) == (400, "invalid_json")
    assert team.runs == {}
    assert items(moto_dynamodb) == before


# ---- the example premium function (examples/premium/app.py): the same bodies, through a real route ----


@pytest.fixture
def premium(moto_dynamodb: Any, ledger: Ledger) -> Iterator[ModuleType]:
    with environment(EXAMPLE_WORK_SECONDS="0"):
        yield load_function("premium")


def premium_call(premium: ModuleType, event: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
    return decode(premium.lambda_handler(event, FakeContext()))


@pytest.mark.parametrize("key", [None, "k-1"])
@pytest.mark.parametrize("base64_body", [True, False])
@pytest.mark.parametrize(
    "raw",
    [NOT_UTF8, b'{"query": "\xff"}', b"\xef\xbb\xbf{}", b'{"a": \xed\xa0\x80}', b"\xc3"],
    ids=["binary", "bad-byte-in-json", "utf8-bom", "encoded-surrogate", "truncated"],
)
def test_premium_refuses_a_body_that_is_not_utf8_with_400_and_writes_nothing(
    premium: ModuleType, moto_dynamodb: Any, key: str | None, base64_body: bool, raw: bytes
) -> None:
    before = items(moto_dynamodb)
    status, body, headers = premium_call(premium, raw_event("/examples/search", raw, base64_body=base64_body, key=key))
    assert (status, body["error"]["code"]) == (400, "invalid_json")
    assert "Credits-Charged" not in headers
    assert items(moto_dynamodb) == before


@pytest.mark.parametrize("key", [None, "k-2"])
@pytest.mark.parametrize("body", ["!!!not-base64", "e30", "\u00e9t\u00e9"])
def test_premium_refuses_a_body_flagged_base64_that_is_not_with_400_and_writes_nothing(
    premium: ModuleType, moto_dynamodb: Any, key: str | None, body: str
) -> None:
    before = items(moto_dynamodb)
    status, answer, _ = premium_call(premium, raw_event("/examples/search", body, base64_body=True, key=key))
    assert (status, answer["error"]["code"]) == (400, "invalid_json")
    assert items(moto_dynamodb) == before


@pytest.mark.parametrize("key", [None, "k-3"])
@pytest.mark.parametrize("base64_body", [True, False])
def test_premium_charges_a_utf8_json_body_base64_or_not(
    premium: ModuleType, ledger: Ledger, key: str | None, base64_body: bool
) -> None:
    raw = '{"query": "caf\u00e9 \u30e6\u30fc\u30b6\u30fc"}'.encode()
    status, body, headers = premium_call(premium, raw_event("/examples/search", raw, base64_body=base64_body, key=key))
    assert (status, body["action"], headers["Credits-Charged"]) == (200, "search", "1")
    if key:
        again = premium_call(premium, raw_event("/examples/search", raw, base64_body=not base64_body, key=key))
        assert (again[0], again[1], again[2]["Idempotent-Replayed"]) == (200, body, "true")
    assert [t.amount for t in ledger.history("user-1")] == [12, -1]
