"""AWS clients, built once per container by the handlers and injected into the domain.

Under SnapStart (template.yaml) containers are resumed from one snapshot of an initialised
container. What that snapshot holds and must not be shared is re-created on restore: the `random`
module's state (the ledger's backoff jitter must differ between writers, or they retry in lockstep).
Clients need nothing: their pooled connections, stale after a restore, fail and are retried by
botocore's standard retry mode, and uuid4 draws from the OS on every call.
"""

from __future__ import annotations

import random
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


def _reseed_after_restore() -> None:
    random.seed()


try:  # the hook exists on Lambda's Python runtime (3.12+); nothing is restored anywhere else
    from snapshot_restore_py import register_after_restore  # type: ignore[import-not-found]
except ImportError:
    pass
else:
    register_after_restore(_reseed_after_restore)
