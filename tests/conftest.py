"""Shared fixtures: a safe AWS environment, tables built from template.yaml on moto or DynamoDB Local."""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Iterator
from typing import Any

import pytest

# Never reach a real AWS account from a test, whatever the developer's shell has.
os.environ.update(
    {
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_SERVICE_NAME": "credits",
        "POWERTOOLS_METRICS_NAMESPACE": "Credits",
        "POWERTOOLS_LOG_LEVEL": "WARNING",
        "POWERTOOLS_DEV": "false",
        "CREDITS_TABLE_NAME": "credits",
        "IDEMPOTENCY_TABLE_NAME": "idempotency",
        "ACTION_COSTS": '{"search": 1, "analyze": 5, "generate": 10}',
    }
)
for _var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB"):
    os.environ.pop(_var, None)

from local.dynamodb_local import DynamoDBLocal  # noqa: E402
from local.template import load, table_definitions, ttl_attribute  # noqa: E402

TABLES = {"CreditsTable": "credits", "IdempotencyTable": "idempotency"}


@functools.cache
def template_tables() -> tuple[tuple[str, dict[str, Any], str | None], ...]:
    """template.yaml's tables, read once a session: logical id, create_table's arguments, TTL attribute.
    (Parsing the template is most of what a moto table costs: read for every test, it took a third of
    the unit tests' time. `local.template.create_tables` reads it on every call.)"""
    template = load()
    return tuple(
        (logical_id, definition, ttl_attribute(logical_id, template))
        for logical_id, definition in table_definitions(template).items()
    )


@pytest.fixture
def moto_dynamodb() -> Iterator[object]:
    """A moto DynamoDB with the template's tables; functions loaded inside it talk to moto."""
    import boto3
    from moto import mock_aws

    with mock_aws():
        client = boto3.client("dynamodb")
        for logical_id, definition, ttl in template_tables():  # as local.template.create_tables makes them
            client.create_table(TableName=TABLES[logical_id], **copy.deepcopy(definition))
            if ttl:
                client.update_time_to_live(
                    TableName=TABLES[logical_id], TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl}
                )
        yield client


@pytest.fixture(scope="session")
def dynamodb_local() -> Iterator[DynamoDBLocal]:
    """AWS's DynamoDB Local on a free port, for the whole session; stopped at the end."""
    with DynamoDBLocal() as server:
        yield server


def pytest_report_header(config: pytest.Config) -> str:
    from tests.support import contract_run

    seed, examples = contract_run()
    return f"contract suite: seed {seed}, {examples} examples per operation (repeat a run: CONTRACT_SEED={seed})"
