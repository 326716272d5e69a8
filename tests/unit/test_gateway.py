"""The local gateway's routing (local/template.py): templated paths, code directories, conditions."""

from __future__ import annotations

import http.client
import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

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
