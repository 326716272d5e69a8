"""credits.client against a canned HTTP server: what goes on the wire, and how answers come back."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest
from botocore.credentials import Credentials

from credits.client import Charge, CreditsClient, CreditsClientError, Forbidden
from credits.errors import (
    HoldReleased,
    InsufficientCredits,
    InternalError,
    TemporarilyUnavailable,
    UnknownAction,
    ValidationError,
)
from local.sigv4 import verify

KEY = ("AKIALOCALTEST0000000", "4eWjX0cYp5rQkT9sLm2NvB7uZa1dHf3GiKo8PqRs")
HOLD = {"holdId": "h-1", "amount": 10, "expiresAt": "2030-01-01T00:00:00Z", "balance": 50, "available": 40}


@dataclass
class Canned:
    """A server answering each POST with the next canned (status, body, headers), recording requests."""

    answers: list[tuple[int, Any, dict[str, str]]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    def answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self.answers.append((status, body, headers or {}))


@pytest.fixture
def canned() -> Iterator[Canned]:
    state = Canned()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            split = urlsplit(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            state.requests.append(
                {"path": split.path, "query": split.query, "headers": headers, "body": body, "json": json.loads(body)}
            )
            status, answer, extra = state.answers.pop(0)
            raw = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # polled every 50 ms, not 500: shutdown() waits for the next poll, and every test ends with one
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


def client(canned: Canned) -> CreditsClient:
    return CreditsClient(canned.url + "/", region="eu-west-1", credentials=Credentials(*KEY))


def test_a_charge_is_signed_for_execute_api_and_camel_case_on_the_wire(canned: Canned) -> None:
    canned.answer(200, {"transactionId": "t-1", "charged": 5, "balance": 95})
    result = client(canned).charge("alice", action="analyze", description="report", idempotency_key="k-1")
    assert result == Charge("t-1", 5, 95, replayed=False)
    [request] = canned.requests
    assert request["path"] == "/internal/credits/use"
    assert request["json"] == {"userId": "alice", "action": "analyze", "description": "report"}
    assert request["headers"]["idempotency-key"] == "k-1"
    # The signature is one the local gateway accepts: the local key, execute-api, the region asked for.
    caller = verify("POST", request["path"], request["query"], request["headers"], request["body"], credentials=KEY)
    assert caller.region == "eu-west-1"


def test_a_replayed_answer_says_so(canned: Canned) -> None:
    canned.answer(200, {"transactionId": "t-1", "balance": 100}, {"Idempotent-Replayed": "true"})
    grant = client(canned).grant("alice", 100, type="adjustment", description="fix", reference_id="r-1")
    assert (grant.transaction_id, grant.balance, grant.replayed) == ("t-1", 100, True)
    assert canned.requests[0]["json"] == {
        "userId": "alice",
        "amount": 100,
        "type": "adjustment",
        "description": "fix",
        "referenceId": "r-1",
    }


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (503, {"error": {"code": "temporarily_unavailable", "message": "Busy."}}, TemporarilyUnavailable),
        (404, {"error": {"code": "unknown_action", "message": "Unknown action 'x'."}}, UnknownAction),
        (409, {"error": {"code": "hold_released", "message": "Released."}}, HoldReleased),
        (500, {"error": {"code": "internal_error", "message": "Internal error."}}, InternalError),
    ],
)
def test_errors_come_back_as_the_domain_s_exceptions(
    canned: Canned, status: int, body: dict[str, Any], expected: type[Exception]
) -> None:
    canned.answer(status, body)
    with pytest.raises(expected) as raised:
        client(canned).charge("alice", amount=1, description="x")
    assert str(raised.value) == body["error"]["message"]


def test_insufficient_credits_and_validation_errors_carry_their_fields(canned: Canned) -> None:
    canned.answer(402, {"error": {"code": "insufficient_credits", "message": "m", "required": 10, "balance": 7}})
    with pytest.raises(InsufficientCredits) as short:
        client(canned).charge("alice", amount=10, description="x")
    assert (short.value.required, short.value.balance, short.value.available) == (10, 7, 7)
    errors = [{"field": "amount", "message": "too big"}]
    canned.answer(400, {"error": {"code": "validation_error", "message": "Bad.", "errors": errors}})
    with pytest.raises(ValidationError) as invalid:
        client(canned).charge("alice", amount=10**12, description="x")
    assert (str(invalid.value), invalid.value.errors) == ("Bad.", errors)


def test_a_gateway_refusal_is_forbidden_and_other_failures_keep_their_status(canned: Canned) -> None:
    canned.answer(403, {"message": "Forbidden"})
    with pytest.raises(Forbidden, match="Forbidden") as refused:
        client(canned).charge("alice", amount=1, description="x")
    assert refused.value.status == 403
    canned.answer(502, b"<html>Bad Gateway</html>")
    with pytest.raises(CreditsClientError) as failed:
        client(canned).charge("alice", amount=1, description="x")
    assert (type(failed.value), failed.value.status) == (CreditsClientError, 502)
    canned.answer(418, {"error": {"code": "no_such_code", "message": "?"}})
    with pytest.raises(CreditsClientError, match="no_such_code"):
        client(canned).charge("alice", amount=1, description="x")
    assert len(canned.requests) == 3  # one request each: the client never retries


def test_an_unreachable_api_is_a_client_error() -> None:
    unreachable = CreditsClient("http://127.0.0.1:9", credentials=Credentials(*KEY), timeout=2)
    with pytest.raises(CreditsClientError, match="failed"):
        unreachable.charge("alice", amount=1, description="x")


def test_without_credentials_the_client_says_how_to_give_some(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(CreditsClientError, match="No AWS credentials"):
        CreditsClient("http://127.0.0.1:9")


def test_a_hold_block_captures_what_it_used(canned: Canned) -> None:
    canned.answer(201, HOLD)
    canned.answer(200, {"transactionId": "t-9", "charged": 4, "balance": 46, "available": 46})
    with client(canned).hold("alice", amount=10, description="report", idempotency_key="k-2") as held:
        assert held.hold_id == "h-1"
        held.use(4)
    assert held.captured is not None and (held.captured.charged, held.captured.balance) == (4, 46)
    reserve, capture = canned.requests
    assert reserve["json"] == {"userId": "alice", "amount": 10, "description": "report"}
    assert reserve["headers"]["idempotency-key"] == "k-2"
    assert (capture["path"], capture["json"]) == (
        "/internal/credits/holds/h-1/capture",
        {"userId": "alice", "amount": 4},
    )


def test_a_hold_block_that_raises_releases_and_a_failed_release_does_not_hide_the_error(
    canned: Canned, caplog: pytest.LogCaptureFixture
) -> None:
    canned.answer(201, HOLD)
    canned.answer(503, {"error": {"code": "temporarily_unavailable", "message": "Busy."}})
    with caplog.at_level(logging.ERROR, logger="credits.client"), pytest.raises(RuntimeError, match="work failed"):
        with client(canned).hold("alice", amount=10, description="report") as held:
            raise RuntimeError("work failed")
    assert canned.requests[1]["path"] == "/internal/credits/holds/h-1/release"
    assert held.released is None and held.captured is None
    assert "Could not release hold h-1" in caplog.text


def test_use_refuses_more_than_the_hold(canned: Canned) -> None:
    canned.answer(201, HOLD)
    canned.answer(200, {"released": 10, "balance": 50, "available": 50})
    with pytest.raises(ValueError, match="from 0 to 10"), client(canned).hold("a", amount=10, description="d") as held:
        held.use(11)
    assert held.released is not None and held.released.released == 10  # the error released the hold


def test_a_grant_sends_its_lot_terms_and_a_datetime_expiry_in_utc(canned: Canned) -> None:
    canned.answer(200, {"transactionId": "t-2", "balance": 140})
    canned.answer(200, {"transactionId": "t-3", "balance": 165})
    canned.answer(200, {"transactionId": "t-4", "balance": 175})
    paris = timezone(timedelta(hours=1))
    promo = client(canned).grant(
        "alice",
        40,
        description="Spring promotion",
        category="promotional",
        priority=5,
        expires_at=datetime(2027, 1, 3, 1, 0, tzinfo=paris),
        idempotency_key="promo-1",
    )
    assert (promo.transaction_id, promo.balance) == ("t-2", 140)
    client(canned).grant("alice", 25, description="d", expires_in_days=30)
    client(canned).grant("alice", 10, description="d", expires_at="2027-01-03T00:00:00Z")
    assert [r["json"] for r in canned.requests] == [
        {
            "userId": "alice",
            "amount": 40,
            "type": "gift",
            "description": "Spring promotion",
            "category": "promotional",
            "priority": 5,
            "expiresAt": "2027-01-03T00:00:00.000Z",
        },
        {"userId": "alice", "amount": 25, "type": "gift", "description": "d", "expiresInDays": 30},
        {"userId": "alice", "amount": 10, "type": "gift", "description": "d", "expiresAt": "2027-01-03T00:00:00Z"},
    ]
    assert canned.requests[0]["headers"]["idempotency-key"] == "promo-1"


def test_a_grant_refuses_an_ambiguous_expiry_before_sending_anything(canned: Canned) -> None:
    with pytest.raises(ValueError, match="time zone"):
        client(canned).grant("alice", 1, description="d", expires_at=datetime(2027, 1, 3))
    with pytest.raises(ValueError, match="at most one"):
        client(canned).grant("alice", 1, description="d", expires_at="2027-01-03T00:00:00Z", expires_in_days=3)
    assert canned.requests == []


def test_terms_the_server_refuses_come_back_as_a_validation_error(canned: Canned) -> None:
    errors = [{"field": "expiresAt"}]
    canned.answer(
        400, {"error": {"code": "validation_error", "message": "expiresAt must be in the future.", "errors": errors}}
    )
    with pytest.raises(ValidationError, match="in the future") as refused:
        client(canned).grant("alice", 1, description="d", expires_at="2020-01-01T00:00:00Z")
    assert refused.value.errors == errors
