"""The HTTP API against its contract, docs/openapi.yaml, fuzzed by Schemathesis.

For every operation of the spec, Schemathesis generates valid and invalid requests (bodies, query
and path parameters, headers) and sends them through the local gateway to the real functions, each
in its own container process, on DynamoDB Local and the Stripe emulator. JWT routes carry a local
token of a funded user; `/internal/*` routes are signed with SigV4 (botocore's signer) by the
gateway's local key. Every answer must be documented: no server error, a documented status, content
type and headers, a body of the documented schema. A stateful run follows the spec's links (a hold's
id from its reservation to its capture and release). At the end, every account the run touched
passes the audit.

Schemathesis' command line then runs against the same gateway with its own phases, the coverage
phase included (the boundaries of every constraint, and methods no route has: QUERY, TRACE, OPTIONS,
which API Gateway answers with its JSON 404); on `/internal/*` it only sends a bearer token, so
those operations are refused (403) before any function runs, as documented.

The run is bounded (CONTRACT_EXAMPLES per operation, 25 unless set; CONTRACT_CLI_EXAMPLES for the
command line, 5 unless set) and reproducible: the seed is printed in pytest's header;
`CONTRACT_SEED=<seed>` repeats a run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import schemathesis
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import HealthCheck, seed, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from credits.__main__ import main as credits_cli
from credits.ledger import Ledger
from local.dynamodb_local import DynamoDBLocal
from local.gateway import OPENAPI_SPEC, Gateway
from local.stripe_emulator import StripeEmulator
from local.template import ROOT, create_tables
from tests import stripe_events as se
from tests.support import contract_run, environment

pytestmark = pytest.mark.integration

SEED, EXAMPLES = contract_run()
KEY = ("AKIALOCALCONTRACTTST", "cOnTrAcT8Xw3Ev6Rt1Yu4Io7Pa0Sd2Fg5Hj8Kl1M")
USER = "contract-user"  # the JWT routes' user
FUNDED = "contract-internal"  # the user valid /internal requests act for, half of the time
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# The command line's run: examples per operation, and the most it may take (a hang fails the test).
CLI_EXAMPLES = int(os.environ.get("CONTRACT_CLI_EXAMPLES", "5"))
CLI_TIMEOUT = 120.0
QUIET = [HealthCheck.filter_too_much, HealthCheck.too_slow, HealthCheck.data_too_large]


@dataclass
class Api:
    gateway: Gateway
    ledger: Ledger
    token: str

    @property
    def base_url(self) -> str:
        return self.gateway.base_url


class Auth(requests.auth.AuthBase):
    """What a real caller sends: a bearer token on user routes, a SigV4 signature over the final
    request (method, URL, headers, body) on `/internal/*`."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.signer = SigV4Auth(Credentials(*KEY), "execute-api", "us-east-1")

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        url = str(request.url)
        if not urlsplit(url).path.startswith("/internal/"):
            request.headers["Authorization"] = f"Bearer {self.token}"
            return request
        body = request.body or b""
        headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        signed = AWSRequest(str(request.method), url, headers, body)
        self.signer.add_auth(signed)
        for name in ("Authorization", "X-Amz-Date"):
            request.headers[name] = signed.headers[name]
        return request


@pytest.fixture(scope="module")
def api(dynamodb_local: DynamoDBLocal) -> Iterator[Api]:
    suffix = os.urandom(4).hex()
    names = {"CreditsTable": f"contract-{suffix}", "IdempotencyTable": f"contract-idem-{suffix}"}
    client = dynamodb_local.client()
    create_tables(client, names)
    stripe = StripeEmulator(api_key="sk_test_contract", webhook_secret=se.SECRET)
    stripe.start()
    with environment(
        AWS_ENDPOINT_URL_DYNAMODB=dynamodb_local.endpoint,
        CREDITS_TABLE_NAME=names["CreditsTable"],
        IDEMPOTENCY_TABLE_NAME=names["IdempotencyTable"],
        STRIPE_SECRET_KEY="sk_test_contract",
        STRIPE_API_BASE=stripe.base_url,
        STRIPE_WEBHOOK_SECRET=se.SECRET,
        CHECKOUT_SUCCESS_URL="http://localhost/?checkout=success&session_id={CHECKOUT_SESSION_ID}",
        CHECKOUT_CANCEL_URL="http://localhost/?checkout=cancelled",
        EXAMPLE_WORK_SECONDS="0",
    ):
        assert credits_cli(["packages", "import", str(ROOT / "local/packages.example.json"), "--sync-stripe"]) == 0
        ledger = Ledger(client, names["CreditsTable"])
        for user in (USER, FUNDED):
            ledger.grant(user, 1_000_000, type="gift", description="contract run")
        gateway = Gateway(token_secret="contract-secret", web_dir=None, iam_credentials=KEY, containers_per_function=2)
        gateway.start(warm=False)
        stripe.webhook_url = gateway.base_url + "/webhook"
        try:
            yield Api(gateway, ledger, gateway.tokens.issue(USER))
        finally:
            gateway.stop()
            stripe.stop()


schema = schemathesis.openapi.from_path(OPENAPI_SPEC)
schema.config.seed = SEED
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], database="none")


def as_the_funded_user(case: Any) -> None:
    """Half of the valid /internal requests act for a user with credits, so that charges, holds and
    captures also succeed (a generated user id almost never has any)."""
    body = case.body
    positive = case.meta is None or not case.meta.generation.mode.is_negative
    if positive and isinstance(body, dict) and isinstance(body.get("userId"), str) and len(body["userId"]) % 2 == 0:
        body["userId"] = FUNDED


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=QUIET)
def test_every_operation_answers_as_documented(case: Any, api: Api) -> None:
    as_the_funded_user(case)
    checks = CHECKS
    if case.path.startswith("/examples/") and isinstance(case.body, dict) and case.body.get("fail") is True:
        # The example action's own documented failure (502 action_failed, nothing charged): still
        # held to its documented status, headers and body, but it is no server error of ours.
        checks = [check for check in CHECKS if check is not not_a_server_error]
    response = case.call_and_validate(base_url=api.base_url, auth=Auth(api.token), checks=checks)
    if response.status_code in (401, 403):
        # The gateway's own refusals are documented, but our caller is always authenticated: one of
        # these answers a request that was meant to be refused (a deliberately unsigned one).
        assert case.meta is not None and case.meta.generation.mode.is_negative, response.text


# The holds' operations alone: with the whole API, Schemathesis starts its sequences from the
# operations it expects to succeed with random data, and a reservation (whose userId it takes for a
# reference to a resource nothing creates) would never start one.
class HoldWorkflow(schema.include(path_regex="^/internal/credits/holds").as_state_machine()):  # type: ignore[misc]
    """Links: POST /internal/credits/holds -> capture / release of the hold it answered."""

    api: Api | None = None

    def get_call_kwargs(self, case: Any) -> dict[str, Any]:
        assert self.api is not None
        as_the_funded_user(case)
        return {"base_url": self.api.base_url, "auth": Auth(self.api.token)}

    def validate_response(self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any) -> None:
        case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs)


seed(SEED)(HoldWorkflow)
TestHoldWorkflow = HoldWorkflow.TestCase
TestHoldWorkflow.settings = settings(
    max_examples=max(5, EXAMPLES // 2),
    stateful_step_count=6,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(autouse=True)
def _workflow_api(api: Api) -> None:
    HoldWorkflow.api = api


def test_the_schemathesis_command_line_finds_no_server_error_and_nothing_undocumented(api: Api, tmp_path: Path) -> None:
    """`schemathesis run` (the command line, as a person runs it) against the running gateway: the
    examples, coverage and fuzzing phases, bounded by CLI_EXAMPLES per operation, with the checks of
    the pytest run above (no 5xx, every status, content type, header and body as documented). Its
    `unsupported_method` check is left out: it wants 405 for a method no route has, where API
    Gateway (and so the contract, docs/openapi.yaml) answers 404. It runs in a folder of its own, so
    no configuration file nor report of the repository's is read or written."""
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        str(OPENAPI_SPEC),
        "--url",
        api.base_url,
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(CLI_EXAMPLES),
        "--seed",
        str(SEED),
        "--checks",
        ",".join(check.__name__ for check in CHECKS),
        "--header",
        f"Authorization: Bearer {api.token}",
        "--generation-database",
        "none",
        "--request-timeout",
        "30",
        "--workers",
        "2",
        "--no-color",
    ]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-20_000:]
    assert "coverage" in output.lower(), output[-5_000:]  # the phase ran


def test_after_the_run_every_account_passes_the_audit(api: Api) -> None:
    """Whatever the fuzzing sent, no balance is out of step with its ledger."""
    client: Any = api.ledger.client
    users = set()
    for page in client.get_paginator("scan").paginate(TableName=api.ledger.table):
        users |= {i["pk"]["S"].removeprefix("USER#") for i in page["Items"] if i["sk"]["S"] == "ACCOUNT"}
    assert {USER, FUNDED} <= users
    problems = {user: api.ledger.audit(user).problems for user in users}
    assert {user: found for user, found in problems.items() if found} == {}
    assert api.ledger.balance(USER) < 1_000_000  # the run did charge the JWT user
