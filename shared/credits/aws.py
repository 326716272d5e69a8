"""AWS clients, built once per container by the handlers and injected into the domain."""

from __future__ import annotations

from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

# Short timeouts: a Lambda behind API Gateway has 30 s at most, and the ledger retries itself.
_CONFIG = Config(connect_timeout=2, read_timeout=5, retries={"mode": "standard", "total_max_attempts": 3})


def dynamodb_client() -> DynamoDBClient:
    """A DynamoDB client; AWS_ENDPOINT_URL_DYNAMODB points it at DynamoDB Local."""
    return boto3.client("dynamodb", config=_CONFIG)
