"""The local gateway's routing (local/template.py): templated paths, code directories, conditions."""

from __future__ import annotations

import http.client
import io
import json
import re
import socket
import struct
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest

from credits.ledger import key_problem, validate_token
from local.containers import ContainerPool
from local.gateway import Gateway, load_handler
from local.template import ROOT, Route, code_dir, functions, match_route, routes

CAPTURE = Route("POST", "/internal/credits/holds/{holdId}/capture", "use_credits", "AWS_IAM", "functions/use_credits")


def function(code_uri: str, *events: tuple[str, str], condition: str | None = None) -> dict[str, Any]:
    """An AWS::Serverless::Function resource as template.yaml writes one."""
    resource: dict[str, Any] = {
        "Type": "AWS::Serverless::Function",
        "Properties": {
            "CodeUri": code_uri,
            "Events": {
                f"E{i}": {"Type": "HttpApi", "Properties": {"Path": path, "Method": method}}
                for i, (method, path) in enumerate(events)
            },
        },
    }
    if condition:
        resource["Condition"] = condition
    return resource


def test_a_templated_segment_matches_one_non_empty_segment_url_decoded() -> None:
    assert CAPTURE.match("/internal/credits/holds/3f2a/capture") == {"holdId": "3f2a"}
    assert CAPTURE.match("/internal/credits/holds/a%2Fb%20c/capture") == {"holdId": "a/b c"}
    assert CAPTURE.match("/internal/credits/holds//capture") is None
    assert CAPTURE.match("/internal/credits/holds/a/b/capture") is None
    assert CAPTURE.match("/internal/credits/holds/a/release") is None


def test_an_exact_route_wins_over_a_templated_one() -> None:
    table = {
        (r.method, r.path): r
        for r in [
            CAPTURE,
            Route("POST", "/internal/credits/holds/{holdId}/{verb}", "other", "AWS_IAM", "functions/other"),
            Route("POST", "/internal/credits/holds/all/capture", "exact", "AWS_IAM", "functions/exact"),
        ]
    }
    exact = table[("POST", "/internal/credits/holds/all/capture")]
    assert match_route(table, "POST", "/internal/credits/holds/all/capture") == (exact, {})
    # Both templated routes match: the one with fewer parameters is the more specific.
    assert match_route(table, "POST", "/internal/credits/holds/h1/capture") == (CAPTURE, {"holdId": "h1"})
    assert match_route(table, "POST", "/internal/credits/holds/h1/release") is not None
    assert match_route(table, "GET", "/internal/credits/holds/h1/capture") is None


def test_the_template_s_hold_routes_are_templated_and_served_by_use_credits() -> None:
    table = {(r.method, r.path): r for r in routes()}
    found = match_route(table, "POST", "/internal/credits/holds/0b6f3c1e-1c1e/release")
    assert found is not None
    assert (found[0].path, found[0].function, found[0].auth, found[1]) == (
        "/internal/credits/holds/{holdId}/release",
        "use_credits",
        "AWS_IAM",
        {"holdId": "0b6f3c1e-1c1e"},
    )


def test_functions_outside_functions_and_behind_a_condition_are_served() -> None:
    template = {
        "Resources": {
            "Use": function("functions/use_credits/", ("POST", "/credits/use")),
            "Premium": function("examples/premium/", ("POST", "/examples/search"), condition="WithExamples"),
            "Table": {"Type": "AWS::DynamoDB::Table", "Properties": {}},
        }
    }
    assert functions(template) == {"use_credits": "functions/use_credits", "premium": "examples/premium"}
    assert [(r.path, r.function, r.code) for r in routes(template)] == [
        ("/credits/use", "use_credits", "functions/use_credits"),
        ("/examples/search", "premium", "examples/premium"),
    ]
    assert code_dir("use_credits") == "functions/use_credits"  # the real template's


def test_two_functions_may_not_share_a_name() -> None:
    template = {"Resources": {"A": function("functions/search/"), "B": function("examples/search/")}}
    with pytest.raises(AssertionError, match="second function named 'search'"):
        functions(template)


def test_a_handler_loads_from_its_code_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "app.py").write_text("def lambda_handler(event, context):\n    return {'statusCode': 204}\n")
    monkeypatch.setitem(sys.modules, "probe_for_test", None)  # removed again at the end
    module = load_handler("probe", "probe_for_test", code=str(tmp_path))
    assert module.lambda_handler({}, None) == {"statusCode": 204}


def test_a_method_or_path_no_route_has_gets_api_gateway_s_404_and_the_contract_is_served() -> None:
    """As API Gateway answers: JSON 404 for TRACE, HEAD or a made-up method (the standard library
    would answer an HTML 501); /openapi.yaml is the repository's file; /docs leads to the reference."""
    gateway = Gateway(token_secret="test-secret", web_dir=None)
    gateway.start(warm=False)
    host, port = gateway.server.server_address[:2]
    try:
        for method in ("TRACE", "BREW", "DELETE"):
            connection = http.client.HTTPConnection(str(host), port, timeout=10)
            connection.request(method, "/credits/use")
            answer = connection.getresponse()
            assert (answer.status, answer.getheader("Content-Type")) == (404, "application/json"), method
            assert json.loads(answer.read()) == {"message": "Not Found"}
            connection.close()
        with urllib.request.urlopen(f"{gateway.base_url}/openapi.yaml", timeout=10) as spec:
            assert spec.read() == (ROOT / "docs" / "openapi.yaml").read_bytes()
        with urllib.request.urlopen(f"{gateway.base_url}/docs", timeout=10) as docs:  # follows the redirect
            assert docs.url.endswith("/docs/") and b"/openapi.yaml" in docs.read()
    finally:
        gateway.stop()


# ---- dead containers ------------------------------------------------------------------------------

# Answers with its pid, after appending the request's body to the file MARKS names; a body of "die"
# ends its process mid-invocation instead (as an out-of-memory kill or a crash would).
DYING_APP = """
import base64
import json
import os

MARKS = {marks!r}


def lambda_handler(event, context):
    body = base64.b64decode(event.get("body") or "").decode()
    with open(MARKS, "a") as marks:
        marks.write(body + "\\n")
    if body == "die":
        os._exit(1)
    return {{"statusCode": 200, "headers": {{"Content-Type": "application/json"}}, "body": json.dumps(os.getpid())}}
"""


@pytest.fixture
def dying(tmp_path: Path) -> Iterator[tuple[Gateway, Path]]:
    """The gateway with use_credits and the webhook served by DYING_APP, one container each."""
    marks = tmp_path / "marks"
    (tmp_path / "app.py").write_text(DYING_APP.format(marks=str(marks)))
    gateway = Gateway(token_secret="test-secret", web_dir=None)
    for function in ("use_credits", "webhook"):
        gateway.pools[function].close()
        gateway.pools[function] = ContainerPool(function, limit=1, code=str(tmp_path))
    gateway.start(warm=False)
    try:
        yield gateway, marks
    finally:
        gateway.stop()


def send(gateway: Gateway, path: str, body: str) -> tuple[int, Any]:
    token = gateway.tokens.issue("alice")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    request = urllib.request.Request(gateway.base_url + path, body.encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.loads(err.read())


def kill_idle(gateway: Gateway, function: str) -> None:
    [idle] = gateway.pools[function]._idle
    idle.process.kill()
    idle.process.join(timeout=60)
    assert idle.process.exitcode is not None


def test_a_container_killed_while_idle_is_replaced_and_the_next_request_served(dying: tuple[Gateway, Path]) -> None:
    gateway, marks = dying
    for path, function in (("/credits/use", "use_credits"), ("/webhook", "webhook")):
        status, first = send(gateway, path, "one")
        assert status == 200
        kill_idle(gateway, function)
        status, second = send(gateway, path, "two")
        assert status == 200, path
        assert second != first  # a new container
    assert marks.read_text().split() == ["one", "two", "one", "two"]


def test_a_container_that_dies_handling_a_request_answers_500_or_502_and_is_not_resent(
    dying: tuple[Gateway, Path],
) -> None:
    gateway, marks = dying
    assert send(gateway, "/credits/use", "die") == (500, {"message": "Internal Server Error"})
    assert send(gateway, "/webhook", "die") == (502, {"message": "Internal Server Error"})
    assert marks.read_text().split() == ["die", "die"]  # each ran once: never given to another container
    assert send(gateway, "/credits/use", "after")[0] == 200
    assert send(gateway, "/webhook", "after")[0] == 200


# ---- local sign-in --------------------------------------------------------------------------------


@pytest.fixture
def plain() -> Iterator[Gateway]:
    gateway = Gateway(token_secret="test-secret", web_dir=None)
    gateway.start(warm=False)
    try:
        yield gateway
    finally:
        gateway.stop()


def sign_in(gateway: Gateway, body: bytes) -> tuple[int, Any]:
    request = urllib.request.Request(
        gateway.base_url + "/local/sign-in", body, {"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.loads(err.read())


NAMES = [
    "alice",
    "alice\n",  # `$` matches before a trailing newline: fullmatch, not match
    "\nalice",
    "al\tice",
    "",
    "a" * 255,
    "a" * 256,
    "é" * 127,  # 254 bytes in UTF-8
    "é" * 128,  # 256 bytes
    "alice smith",
    "o'brien+test@example.com",
    "用户",
    "a\u2028b",  # a line separator is not printable
    "\ud800",  # a lone surrogate (a JSON escape can carry one)
    "\x7f",
    " ",
]


@pytest.mark.parametrize("name", NAMES, ids=[ascii(n) if len(n) < 30 else f"{len(n)}x{n[0]!a}" for n in NAMES])
def test_sign_in_accepts_exactly_the_user_ids_the_api_accepts(plain: Gateway, name: str) -> None:
    """A name the sign-in takes is one every route takes as a `sub` (credits.http.user_id checks it
    with ledger.validate_token): never a token that is then 400 everywhere, nor a refused valid id."""
    status, body = sign_in(plain, json.dumps({"user": name}).encode())
    if key_problem(name) is None:
        assert (status, body["userId"]) == (200, name)
        claims = plain.tokens.verify(body["token"])
        assert claims is not None and validate_token(claims["sub"], "sub") == name
    else:
        assert (status, body["error"]["code"]) == (400, "validation_error")


@pytest.mark.parametrize("body", [b"", b"[]", b'{"user": 7}', b'{"user": null}', b"not json", b"\xff"])
def test_sign_in_without_a_name_is_400(plain: Gateway, body: bytes) -> None:
    status, answer = sign_in(plain, body)
    assert (status, answer["error"]["code"]) == (400, "validation_error")


# ---- errors of the HTTP server itself -------------------------------------------------------------


def raw(gateway: Gateway, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are; the status, headers (lower-case names) and body of the answer."""
    host, port = gateway.server.server_address[:2]
    with socket.create_connection((str(host), port), timeout=30) as sock:
        sock.sendall(data)
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        body = answer.read()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, body


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /credits/history?cursor=" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n", 400),  # a bad request line
        (b"GET / HTTP/one\r\nHost: x\r\n\r\n", 400),  # a bad version
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431),  # a header line too long
        (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n", 431),
        (b"POST /local/sign-in HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n", 400),
        (b"POST /local/sign-in HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    ],
    ids=[
        "uri-too-long",
        "bad-request-line",
        "bad-version",
        "http-2",
        "header-too-long",
        "too-many-headers",
        "content-length-not-a-number",
        "content-length-negative",
    ],
)
def test_errors_of_the_http_server_itself_are_api_gateway_s_json(
    plain: Gateway, request_bytes: bytes, status: int
) -> None:
    """Not http.server's HTML error page: `{"message": ...}` as API Gateway answers; the connection
    is closed, since what follows on it cannot be read as a request."""
    answered, headers, body = raw(plain, request_bytes)
    assert answered == status
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert json.loads(body) == {"message": HTTPStatus(status).phrase}


def test_a_url_far_too_long_still_gets_the_json_answer(plain: Gateway) -> None:
    """The client is still sending when the 414 is answered: the gateway reads and drops the rest
    before closing, or the client's send would break on a reset and it would never read the 414."""
    url = plain.base_url + "/credits/history?cursor=" + "a" * 16_000_000
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=60)
    with refused.value as answer:
        assert (answer.code, json.loads(answer.read())) == (414, {"message": HTTPStatus(414).phrase})


class _Sent:
    """What a handler wrote, as a socket http.client can read an answer from."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self.data)


def test_an_unsupported_method_is_json_too(plain: Gateway) -> None:
    """http.server answers 501 to a method its handler has no do_ method for; ours routes every
    method, so that path of the standard library is called directly, on a handler of no connection."""
    handler_class = plain._handler_class()
    handler = handler_class.__new__(handler_class)
    handler.wfile = io.BytesIO()
    handler.client_address = ("127.0.0.1", 0)
    handler.requestline, handler.request_version, handler.command = "BREW / HTTP/1.1", "HTTP/1.1", "BREW"
    handler.send_error(HTTPStatus.NOT_IMPLEMENTED, "Unsupported method ('BREW')")
    answer = http.client.HTTPResponse(_Sent(handler.wfile.getvalue()))  # type: ignore[arg-type]
    answer.begin()
    assert (answer.status, answer.getheader("Content-Type")) == (501, "application/json")
    assert json.loads(answer.read()) == {"message": "Not Implemented"}


# ---- the request log ------------------------------------------------------------------------------

LOG_DEADLINE = 30.0  # seconds for a line to reach the log on a loaded 2-core machine


def wait_for(lines: list[str], count: int) -> list[str]:
    deadline = time.monotonic() + LOG_DEADLINE
    while len(lines) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return list(lines)


def test_every_request_is_one_line_with_method_path_status_milliseconds_and_user(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<!doctype html><title>page</title>")
    lines: list[str] = []
    gateway = Gateway(token_secret="test-secret", web_dir=tmp_path, request_log=lines.append)
    gateway.start(warm=False)
    try:
        status, answer = sign_in(gateway, json.dumps({"user": "alice"}).encode())
        assert status == 200
        with urllib.request.urlopen(gateway.base_url + "/?checkout=success", timeout=30) as page:
            assert page.status == 200
        request = urllib.request.Request(
            gateway.base_url + "/local/notifications", headers={"Authorization": f"Bearer {answer['token']}"}
        )
        with pytest.raises(urllib.error.HTTPError) as missing:  # no event bridge: no such route
            urllib.request.urlopen(request, timeout=30)
        missing.value.close()
        logged = wait_for(lines, 3)
    finally:
        gateway.stop()
    assert len(logged) == 3, logged
    # A line is written once its answer is sent: the client may have sent the next request by then,
    # so the lines of consecutive requests may come in either order.
    expected = [
        r"POST /local/sign-in 200 \d+ ms alice",
        r"GET / 200 \d+ ms",  # the path without its query
        r"GET /local/notifications 404 \d+ ms",
    ]
    assert all(sum(bool(re.fullmatch(p, line)) for line in logged) == 1 for p in expected), logged


def test_a_client_gone_mid_answer_is_one_line_in_the_log_and_no_traceback(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A browser tab closed (or reloaded) while the answer is on its way: the gateway's write fails
    (broken pipe, reset). One line says so; no BrokenPipeError traceback, and it serves on."""
    (tmp_path / "big.bin").write_bytes(b"x" * (32 * 1024 * 1024))  # more than the sockets' buffers hold
    lines: list[str] = []
    gateway = Gateway(token_secret="test-secret", web_dir=tmp_path, request_log=lines.append)
    gateway.start(warm=False)
    host, port = gateway.server.server_address[:2]
    try:
        with socket.create_connection((str(host), port), timeout=30) as sock:
            sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(1024).startswith(b"HTTP/1.1 200")  # the answer is under way
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = reset
        logged = wait_for(lines, 1)
        assert len(logged) == 1, logged
        assert re.fullmatch(r"GET /big\.bin 200 \d+ ms \(the client closed the connection\)", logged[0]), logged
        assert raw(gateway, b"GET /nothing-here HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")[0] == 404
    finally:
        gateway.stop()
    err_text = capfd.readouterr().err
    assert "Traceback" not in err_text and "BrokenPipeError" not in err_text, err_text


# ---- the route table: every method, every path ----------------------------------------------------

KEY = ("AKIALOCALROUTES00000", "r0UtEs8Xw3Ev6Rt1Yu4Io7Pa0Sd2Fg5Hj8Kl1Mz")
OPERATIONS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# Standard methods, QUERY (an HTTP method in the making, which Schemathesis' coverage phase sends)
# and made-up ones: http.server alone would answer the ones its handler has no do_ method for
# with an HTML 501.
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "TRACE", "QUERY", "BREW", "M-SEARCH")


def spec_operations() -> dict[str, set[str]]:
    """Each path of the contract (docs/openapi.yaml) and the methods it documents."""
    import yaml

    spec = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text())
    return {path: {m.upper() for m in item if m in OPERATIONS} for path, item in spec["paths"].items()}


def concrete(path: str) -> str:
    """A request path for a route's path: each `{name}` segment a value."""
    return re.sub(r"\{[^}/]+\}", "h-1", path)


def call(
    gateway: Gateway, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request, any method; the status, headers (lower-case names) and body of the answer."""
    host, port = gateway.server.server_address[:2]
    connection = http.client.HTTPConnection(str(host), port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        answer = connection.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        connection.close()


def echo(function: str, event: dict[str, Any]) -> dict[str, Any]:
    """Stands for every function: answers which function the gateway gave which event."""
    answer = {"function": function, "routeKey": event["routeKey"], "pathParameters": event.get("pathParameters")}
    return {"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": json.dumps(answer)}


@pytest.fixture(scope="module")
def routed() -> Iterator[Gateway]:
    """A gateway with every optional route (the local key, notifications, the Stripe test tools of an
    emulator that does not answer); its functions answer with the event they get (`echo`)."""
    from local.eventbridge import LocalEventBridge

    gateway = Gateway(
        token_secret="test-secret",
        web_dir=None,
        iam_credentials=KEY,
        event_bridge=LocalEventBridge(bus_name="routes"),
        stripe_emulator_url="http://127.0.0.1:9",  # the discard port: nothing answers there
    )
    gateway.invoke = echo  # type: ignore[method-assign]
    gateway.start(warm=False)
    try:
        yield gateway
    finally:
        gateway.stop()


def assert_not_found(answer: tuple[int, dict[str, str], bytes], method: str) -> None:
    status, headers, body = answer
    assert (status, headers.get("content-type")) == (404, "application/json"), (method, status, body)
    assert body == (b"" if method == "HEAD" else b'{"message": "Not Found"}'), method  # HEAD: no body


@pytest.mark.parametrize("path", sorted(spec_operations()))
def test_a_method_no_route_has_on_an_operation_s_path_is_api_gateway_s_json_404(routed: Gateway, path: str) -> None:
    """API Gateway answers a method that is not a route of the API with `404 {"message":"Not Found"}`
    (there is no 405), HEAD included: never the standard library's HTML 501."""
    documented = spec_operations()[path]
    served = {method for method, route_path in routed.routes if route_path == path}
    assert documented == served, path  # the contract's methods are the gateway's
    token = routed.tokens.issue("alice")
    for method in set(METHODS) - documented - {"OPTIONS"}:
        assert_not_found(call(routed, method, concrete(path), headers={"Authorization": f"Bearer {token}"}), method)
    # with CorsConfiguration, API Gateway answers every OPTIONS itself: a preflight, no function runs
    status, _, body = call(routed, "OPTIONS", concrete(path), headers={"Origin": "http://localhost:3000"})
    assert (status, body) == (204, b""), path


@pytest.mark.parametrize(
    ("path", "methods"),
    [
        ("/local/sign-in", {"POST"}),
        ("/local/config.json", {"GET"}),
        ("/local/notifications", {"GET"}),
        ("/local/stripe/payments", {"GET"}),
        ("/local/stripe/payments/cs_1/refund", {"POST"}),
        ("/openapi.yaml", {"GET"}),
        ("/docs", {"GET"}),
        ("/docs/", {"GET"}),
        ("/nothing-here", set()),
    ],
)
def test_a_method_none_of_the_gateway_s_own_routes_has_is_json_404_too(
    routed: Gateway, path: str, methods: set[str]
) -> None:
    for method in set(METHODS) - methods - {"OPTIONS"}:  # OPTIONS: a CORS preflight, 204
        assert_not_found(call(routed, method, path), method)
    assert call(routed, "OPTIONS", path)[0] == 204


def test_every_route_of_the_template_reaches_its_function_with_its_route_key(routed: Gateway) -> None:
    """Authorized as API Gateway authorizes it (a local token, the local key's SigV4 signature), each
    route's request is its function's event, with the template's route key and path parameters."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    token = routed.tokens.issue("alice")
    for (method, path), route in sorted(routed.routes.items()):
        url = routed.base_url + concrete(path)
        headers = {"Content-Type": "application/json"}
        if route.auth == "AWS_IAM":
            signed = AWSRequest(method, url, headers, b"{}")
            SigV4Auth(Credentials(*KEY), "execute-api", "us-east-1").add_auth(signed)
            headers = dict(signed.headers.items())
        elif route.auth == "JWT":
            headers["Authorization"] = f"Bearer {token}"
        status, _, body = call(routed, method, concrete(path), b"{}", headers)
        parameters = {name: "h-1" for name in re.findall(r"\{([^}/]+)\}", path)} or None
        assert (status, json.loads(body)) == (
            200,
            {"function": route.function, "routeKey": f"{method} {path}", "pathParameters": parameters},
        ), (method, path)
        if route.auth != "NONE":  # and without the token or signature, no function runs
            expected = (
                (401, b'{"message": "Unauthorized"}') if route.auth == "JWT" else (403, b'{"message": "Forbidden"}')
            )
            refused = call(routed, method, concrete(path), b"{}", {"Content-Type": "application/json"})
            assert (refused[0], refused[2]) == expected, (method, path)


def test_the_gateway_s_own_routes_answer(routed: Gateway) -> None:
    token = routed.tokens.issue("alice")
    bearer = {"Authorization": f"Bearer {token}"}
    status, _, body = call(routed, "POST", "/local/sign-in", b'{"user": "bob"}')
    assert (status, json.loads(body)["userId"]) == (200, "bob")
    assert call(routed, "GET", "/local/config.json")[::2] == (200, b"{}")
    assert call(routed, "GET", "/local/notifications", headers=bearer)[::2] == (200, b'{"notifications": []}')
    assert call(routed, "GET", "/local/notifications")[0] == 401
    for method, path in (("GET", "/local/stripe/payments"), ("POST", "/local/stripe/payments/cs_1/refund")):
        status, _, body = call(routed, method, path, headers=bearer)  # the emulator does not answer
        assert (status, json.loads(body)["error"]["code"]) == (502, "emulator_unavailable"), path
        assert call(routed, method, path)[0] == 401, path
    assert call(routed, "GET", "/openapi.yaml")[::2] == (200, (ROOT / "docs" / "openapi.yaml").read_bytes())
    status, headers, _ = call(routed, "GET", "/docs")
    assert (status, headers["location"]) == (308, "/docs/")
    for method in METHODS:  # the webhook's Function URL takes every method: its function decides
        status, _, body = call(routed, method, "/webhook", b"{}")
        assert status == 200, method
        if method != "HEAD":
            assert json.loads(body) == {"function": "webhook", "routeKey": "$default", "pathParameters": None}


def test_a_gateway_never_started_stops_at_once() -> None:
    """stop() before start() (a failed start-up of make dev) closes the socket without waiting for a
    server loop that never ran."""
    gateway = Gateway(token_secret="test-secret", web_dir=None)
    started = time.monotonic()
    gateway.stop()
    assert time.monotonic() - started < 5
