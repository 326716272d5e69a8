"""SigV4 on the local gateway's IAM routes (local/sigv4.py): only the local key's signatures pass."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from local import dev
from local.containers import ContainerPool
from local.gateway import Gateway
from local.sigv4 import Caller, Rejected, verify
from tests.support import ECHO_APP, echo_gateway

KEY = ("AKIALOCALTEST0000000", "4eWjX0cYp5rQkT9sLm2NvB7uZa1dHf3GiKo8PqRs")
GRANT = {"userId": "alice", "amount": 100, "type": "gift", "description": "welcome"}


def signed(
    url: str = "http://127.0.0.1:8000/internal/credits/grant",
    body: bytes = json.dumps(GRANT).encode(),
    *,
    credentials: tuple[str, str] = KEY,
    region: str = "us-east-1",
    service: str = "execute-api",
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A request signed by botocore, as the gateway sees it: the arguments of `verify`."""
    request = AWSRequest("POST", url, {"Content-Type": "application/json", **(headers or {})}, body)
    SigV4Auth(Credentials(*credentials), service, region).add_auth(request)
    parts = urlsplit(url)
    wire = {name.lower(): value for name, value in request.headers.items()} | {"host": parts.netloc}
    return {"method": "POST", "path": parts.path, "query": parts.query, "headers": wire, "body": body}


def check(request: dict[str, Any], now: datetime | None = None, region: str = "us-east-1") -> Caller:
    return verify(**request, credentials=KEY, now=now, region=region)


def test_a_botocore_signed_request_is_accepted_and_its_region_recorded() -> None:
    assert check(signed()) == Caller(KEY[0], "us-east-1")
    assert check(signed(region="eu-west-1"), region="eu-west-1") == Caller(KEY[0], "eu-west-1")
    with_query = signed("http://127.0.0.1:8000/internal/credits/holds/h%2F1/capture?b=2&a=1")
    assert check(with_query).access_key == KEY[0]


def test_an_unsigned_request_is_refused() -> None:
    request = signed()
    del request["headers"]["authorization"]
    with pytest.raises(Rejected, match="unsigned"):
        check(request)


def test_a_wrong_secret_is_refused() -> None:
    with pytest.raises(Rejected, match="signature does not match"):
        check(signed(credentials=(KEY[0], "not-the-secret")))


def test_another_access_key_is_refused() -> None:
    with pytest.raises(Rejected, match="unknown access key"):
        check(signed(credentials=("AKIAOTHERKEY00000000", KEY[1])))


def test_another_service_is_refused() -> None:
    with pytest.raises(Rejected, match="not for execute-api"):
        check(signed(service="s3"))


@pytest.mark.parametrize("region", ["eu-west-1", "us-east-2", "US-EAST-1", "local"])
def test_another_region_than_the_gateway_s_is_refused(region: str) -> None:
    with pytest.raises(Rejected, match="not for us-east-1"):
        check(signed(region=region))


def test_a_changed_body_is_refused() -> None:
    request = signed()
    request["body"] = json.dumps({**GRANT, "amount": 1_000_000}).encode()
    with pytest.raises(Rejected, match="signature does not match"):
        check(request)


def test_a_content_hash_header_must_be_the_body_s() -> None:
    body = json.dumps(GRANT).encode()
    request = signed(body=body, headers={"X-Amz-Content-SHA256": hashlib.sha256(body).hexdigest()})
    assert check(request).access_key == KEY[0]
    request["body"] = b'{"userId": "mallory", "amount": 1000000, "type": "gift", "description": "x"}'
    with pytest.raises(Rejected, match="X-Amz-Content-SHA256"):
        check(request)


@pytest.mark.parametrize(
    ("field", "value"),
    [("path", "/internal/credits/use"), ("query", "amount=5"), ("method", "PUT")],
)
def test_a_changed_path_query_or_method_is_refused(field: str, value: str) -> None:
    request = signed()
    request[field] = value
    with pytest.raises(Rejected, match="signature does not match"):
        check(request)


def test_a_changed_signed_header_is_refused() -> None:
    request = signed(headers={"Idempotency-Key": "k-1"})
    request["headers"]["idempotency-key"] = "k-2"
    with pytest.raises(Rejected, match="signature does not match"):
        check(request)


@pytest.mark.parametrize("minutes", [16, -16])
def test_a_date_more_than_15_minutes_away_is_refused(minutes: int) -> None:
    request = signed()
    assert check(request, now=datetime.now(UTC) + timedelta(minutes=14)).access_key == KEY[0]
    with pytest.raises(Rejected, match="15 minutes"):
        check(request, now=datetime.now(UTC) + timedelta(minutes=minutes))


def test_a_malformed_authorization_is_refused() -> None:
    for authorization in ("Bearer abc", "AWS4-HMAC-SHA256 Credential=x", "AWS4-HMAC-SHA256 Credential=a/b, Sig=1"):
        request = signed()
        request["headers"]["authorization"] = authorization
        with pytest.raises(Rejected):
            check(request)


# ---- through the gateway ------------------------------------------------------------------------


@pytest.fixture
def echo(tmp_path: Path) -> Iterator[Gateway]:
    """The gateway with the local key; its use_credits routes answer with the event they receive."""
    with echo_gateway(tmp_path, iam_credentials=KEY) as gateway:
        yield gateway


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    request = urllib.request.Request(url, body, headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def botocore_post(
    gateway: Gateway,
    path: str,
    credentials: tuple[str, str] = KEY,
    *,
    region: str = "us-east-1",
    service: str = "execute-api",
) -> tuple[int, Any]:
    url = gateway.base_url + path
    request = signed(url, credentials=credentials, region=region, service=service)
    headers = {k: v for k, v in request["headers"].items() if k != "host"}
    return post(url, request["body"], headers)


def test_a_signed_request_reaches_the_function_with_the_iam_caller_and_path_parameters(echo: Gateway) -> None:
    status, event = botocore_post(echo, "/internal/credits/holds/h%2F1/capture")
    assert status == 200
    assert event["routeKey"] == "POST /internal/credits/holds/{holdId}/capture"
    assert event["rawPath"] == "/internal/credits/holds/h%2F1/capture"
    assert event["pathParameters"] == {"holdId": "h/1"}
    assert event["requestContext"]["authorizer"]["iam"] == {
        "accessKey": KEY[0],
        "accountId": "000000000000",
        "callerId": "AIDALOCALSERVICE0000",
        "cognitoIdentity": None,
        "principalOrgId": None,
        "userArn": "arn:aws:iam::000000000000:user/local-service",
        "userId": "AIDALOCALSERVICE0000",
    }


def test_unsigned_or_wrongly_signed_requests_never_reach_the_function(echo: Gateway) -> None:
    body = json.dumps(GRANT).encode()
    unsigned = post(echo.base_url + "/internal/credits/grant", body, {"Content-Type": "application/json"})
    assert unsigned == (403, {"message": "Forbidden"})
    assert botocore_post(echo, "/internal/credits/grant", (KEY[0], "wrong")) == (403, {"message": "Forbidden"})
    assert not echo.pools["use_credits"]._all  # no container was ever started


def test_only_the_gateway_s_region_and_execute_api_are_accepted(echo: Gateway) -> None:
    """Refused as any other bad signature is, before a function runs (the gateway serves us-east-1
    unless told another region)."""
    for region, service in (("eu-west-1", "execute-api"), ("us-west-2", "execute-api"), ("us-east-1", "s3")):
        answer = botocore_post(echo, "/internal/credits/grant", region=region, service=service)
        assert answer == (403, {"message": "Forbidden"}), (region, service)
    assert not echo.pools["use_credits"]._all  # no container was ever started
    assert botocore_post(echo, "/internal/credits/grant")[0] == 200


def test_a_gateway_serving_another_region_accepts_that_one_only(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(ECHO_APP)
    gateway = Gateway(token_secret="test-secret", web_dir=None, iam_credentials=KEY, region="eu-west-1")
    gateway.pools["use_credits"].close()
    gateway.pools["use_credits"] = ContainerPool("use_credits", code=str(tmp_path))
    gateway.start(warm=False)
    try:
        status, event = botocore_post(gateway, "/internal/credits/grant", region="eu-west-1")
        assert status == 200 and event["requestContext"]["authorizer"]["iam"]["accessKey"] == KEY[0]
        assert botocore_post(gateway, "/internal/credits/grant") == (403, {"message": "Forbidden"})  # us-east-1
    finally:
        gateway.stop()


def test_make_dev_prints_the_region_it_serves(tmp_path: Path) -> None:
    """The banner's curl and Python lines sign for the region the stack's gateway accepts."""
    banner = dev.internal_api_help("http://127.0.0.1:8000", "AKIALOCAL", "secret", tmp_path / "k", region="eu-west-1")
    assert '--aws-sigv4 "aws:amz:eu-west-1:execute-api"' in banner
    assert 'region="eu-west-1"' in banner
    assert "us-east-1" not in banner


def test_without_a_local_key_iam_routes_are_refused_even_signed(tmp_path: Path) -> None:
    with echo_gateway(tmp_path, iam_credentials=None) as gateway:
        assert botocore_post(gateway, "/internal/credits/grant") == (403, {"message": "Forbidden"})


def test_the_real_function_runs_behind_a_signature() -> None:
    """use_credits itself answers a signed request (here a body it refuses, so no table is needed)."""
    gateway = Gateway(token_secret="test-secret", web_dir=None, iam_credentials=KEY)
    gateway.start(warm=False)
    try:
        url = gateway.base_url + "/internal/credits/use"
        request = signed(url, b'{"userId": "alice"}')
        status, body = post(url, request["body"], {k: v for k, v in request["headers"].items() if k != "host"})
        assert (status, body["error"]["code"]) == (400, "validation_error")
    finally:
        gateway.stop()


def _curl_has_sigv4() -> bool:
    curl = shutil.which("curl")
    if curl is None:
        return False
    return "--aws-sigv4" in subprocess.run([curl, "--help", "all"], capture_output=True, text=True).stdout


def test_curl_aws_sigv4_is_accepted_and_a_wrong_secret_refused(echo: Gateway) -> None:
    assert _curl_has_sigv4(), "curl with --aws-sigv4 (7.75+) is missing: `make install` installs it"

    def curl(secret: str) -> tuple[int, Any]:
        out = subprocess.run(
            [
                "curl",
                "-sS",
                "--aws-sigv4",
                "aws:amz:us-east-1:execute-api",
                "--user",
                f"{KEY[0]}:{secret}",
                "-H",
                "content-type: application/json",
                "-d",
                json.dumps(GRANT),
                "-w",
                "\n%{http_code}",
                echo.base_url + "/internal/credits/holds/0b6f3c1e-hold/release",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        body, _, status = out.stdout.rpartition("\n")
        return int(status), json.loads(body)

    status, event = curl(KEY[1])
    assert status == 200
    assert event["requestContext"]["authorizer"]["iam"]["accessKey"] == KEY[0]
    assert event["pathParameters"] == {"holdId": "0b6f3c1e-hold"}
    assert json.loads(base64.b64decode(event["body"])) == GRANT
    assert curl("not-the-secret") == (403, {"message": "Forbidden"})
