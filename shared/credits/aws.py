"""AWS clients, built once per container by the handlers and injected into the domain.

Under SnapStart (template.yaml) containers are resumed from one snapshot of an initialised
container. What that snapshot holds and must not be shared is re-created on restore: the `random`
module's state (the ledger's backoff jitter must differ between writers, or they retry in lockstep).
Clients need nothing: their pooled connections, stale after a restore, fail and are retried by
botocore's standard retry mode, and uuid4 draws from the OS on every call.

Before the snapshot, a handler's `register_before_snapshot` hook builds what its routes would
build on their first request (request models, the catalog), so a restored container starts warm;
anywhere but Lambda's runtime the hook is never registered, and a cold start stays lazy.
"""

from __future__ import annotations

import platform
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

# Short timeouts: a Lambda behind API Gateway has 30 s at most, and the ledger retries itself.
# parameter_validation off: the store builds every request from typed values, and DynamoDB validates
# them anyway; checking each against the API model costs about a tenth of a call's CPU, on every call.
# A fixed User-Agent: botocore otherwise rebuilds and sanitises its default one (some twenty parts)
# twice per request, a fifth of a call's CPU in the client (docs/adr/0004-group-commit.md).
USER_AGENT = f"credits-ledger Python/{platform.python_version()}"
_CONFIG = Config(
    connect_timeout=2,
    read_timeout=5,
    retries={"mode": "standard", "total_max_attempts": 3},
    parameter_validation=False,
    user_agent=USER_AGENT,
)


def dynamodb_client() -> DynamoDBClient:
    """A DynamoDB client; AWS_ENDPOINT_URL_DYNAMODB points it at DynamoDB Local."""
    return boto3.client("dynamodb", config=_CONFIG)


def _reseed_after_restore() -> None:
    random.seed()


try:  # the hooks exist on Lambda's Python runtime (3.12+); nothing is snapshotted or restored anywhere else
    import snapshot_restore_py as _hooks  # type: ignore[import-not-found]
except ImportError:
    _hooks = None
else:
    _hooks.register_after_restore(_reseed_after_restore)


def register_before_snapshot(prime: Callable[[], object]) -> None:
    """Run `prime` before SnapStart snapshots this initialised container (Lambda runs such hooks
    in the reverse order of their registration); anywhere else, never."""
    if _hooks is not None:
        _hooks.register_before_snapshot(prime)
