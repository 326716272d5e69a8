"""docs/openapi.yaml cannot drift from the template: the same routes, the same auth, and a valid spec."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from openapi_spec_validator import validate

from credits.api import prices_body
from local.template import ROOT, routes

SPEC = ROOT / "docs" / "openapi.yaml"
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
# Routes answered from the deployed configuration alone: they read no store, so they are never 503.
READS_NO_STORE = {("GET", "/credit-prices")}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SPEC.read_text())
    return loaded


def operations(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): operation
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    }


def test_the_spec_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.1.")
    validate(spec)


def test_the_spec_and_the_template_have_the_same_routes(spec: dict[str, Any]) -> None:
    assert set(operations(spec)) == {(r.method, r.path) for r in routes()}


def test_each_route_asks_for_the_authentication_the_template_gives_it(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]
    kinds = {"JWT": ("http", "bearer"), "AWS_IAM": ("apiKey", None), "NONE": None}
    documented = operations(spec)
    for route in routes():
        security = documented[(route.method, route.path)].get("security", spec.get("security"))
        if kinds[route.auth] is None:
            assert security == [], route
            continue
        assert security and len(security) == 1 and len(security[0]) == 1, route
        scheme = schemes[next(iter(security[0]))]
        assert (scheme["type"], scheme.get("scheme")) == kinds[route.auth], route


def test_every_operation_says_what_it_answers_and_has_an_id(spec: dict[str, Any]) -> None:
    ids = [operation["operationId"] for operation in operations(spec).values()]
    assert len(ids) == len(set(ids))
    for key, operation in operations(spec).items():
        statuses = set(operation["responses"])
        assert any(s.startswith("2") for s in statuses), key
        if key in READS_NO_STORE:
            assert "503" not in statuses, key
        else:
            assert "503" in statuses, key  # every other route reads the store, and says when to retry


def test_the_price_list_is_public_and_documented_as_the_function_answers_it(spec: dict[str, Any]) -> None:
    operation = operations(spec)[("GET", "/credit-prices")]
    assert operation["security"] == []
    schema = {
        **operation["responses"]["200"]["content"]["application/json"]["schema"],
        "components": spec["components"],
    }
    body = prices_body({"generate": 10, "search": 1, "analyze": 5})
    assert body == {
        "prices": [
            {"action": "search", "credits": 1},
            {"action": "analyze", "credits": 5},
            {"action": "generate", "credits": 10},
        ]
    }
    Draft202012Validator(schema).validate(body)
