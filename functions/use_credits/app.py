"""use_credits: POST /credits/use and PUT /credits/settings (JWT user); the IAM-only
/internal/credits/use and /grant, and holds: reserve, capture and release (/internal/credits/holds...).

Traced by Lambda's own active tracing (template: Tracing: Active), not by Powertools' Tracer:
importing the X-Ray SDK costs about 260 ms of every cold start, on the hottest path we have.

A cold start imports what every route needs and nothing more: each route imports the request
model it parses (pydantic with it, on the first request that parses one), and only PUT
/credits/settings builds the package catalog. Under SnapStart, `_prime` builds them all before
the snapshot, so a restored container's first request finds them ready.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit

from credits import api, config
from credits.aws import dynamodb_client, register_before_snapshot
from credits.errors import ERRORS_BY_CODE, REFUSAL_METRICS, CreditsError
from credits.http import error_response, header, install_error_handlers, json_body, json_response, user_id

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

    from credits.ledger import Posted
    from credits.packages import Catalog

# Built once per container: configuration (fails here, naming the variable) and the adapters.
PRICES = config.action_costs(config.require("ACTION_COSTS"))
_client, _table = dynamodb_client(), config.require("CREDITS_TABLE_NAME")
ledger = config.ledger(_client, _table)

logger = Logger()
metrics = Metrics()
app = APIGatewayHttpResolver()
install_error_handlers(app, logger)


@cache
def catalog() -> Catalog:
    """The package catalog, built on first use: auto top-up buys one of its packages, so turning it
    on (PUT /credits/settings) needs that package on sale; a charge never reads it."""
    from credits.packages import Catalog

    return Catalog(_client, _table)


def _answer(posted: Posted, body: dict[str, Any], metric: str) -> Response:
    """200 with the body; a replay says so in a header (as Stripe does) and is not counted again."""
    if posted.replayed:
        return json_response(200, body, {"Idempotent-Replayed": "true"})
    metrics.add_metric(name=metric, unit=MetricUnit.Count, value=abs(posted.amount))
    return json_response(200, body)


# Refusals the dashboard counts (402s by cause, 503s), by code; the answer is the standard error body.
@app.exception_handler([ERRORS_BY_CODE[code] for code in REFUSAL_METRICS])
def _refused(exc: CreditsError) -> Response:
    metrics.add_metric(name=REFUSAL_METRICS[exc.code], unit=MetricUnit.Count, value=1)
    return error_response(exc)


@app.post("/credits/use")
def use() -> Response:
    from credits.api_charges import UseRequest

    request = api.parse(UseRequest, json_body(app))
    key = header(app, "Idempotency-Key")
    posted = api.use_credits(ledger, PRICES, user_id(app), request, key)
    return _answer(posted, api.charged_body(posted), "CreditsCharged")


@app.post("/internal/credits/use")
def internal_use() -> Response:
    from credits.api_charges import InternalUseRequest

    request = api.parse(InternalUseRequest, json_body(app))
    posted = api.internal_use(ledger, PRICES, request, header(app, "Idempotency-Key"))
    return _answer(posted, api.charged_body(posted), "CreditsCharged")


@app.post("/internal/credits/grant")
def internal_grant() -> Response:
    from credits.api_grants import GrantRequest

    request = api.parse(GrantRequest, json_body(app))
    posted = api.internal_grant(ledger, request, header(app, "Idempotency-Key"))
    return _answer(posted, api.granted_body(posted), "CreditsGranted")


@app.put("/credits/settings")
def put_settings() -> Response:
    from credits.api_settings import SettingsRequest

    request = api.parse(SettingsRequest, json_body(app))
    settings = api.update_settings(ledger, user_id(app), request, catalog().active)
    return json_response(200, api.settings_body(settings, int(ledger.clock() * 1000)), {"Cache-Control": "no-store"})


@app.post("/internal/credits/holds")
def internal_reserve() -> Response:
    from credits.api_holds import HoldRequest

    request = api.parse(HoldRequest, json_body(app))
    reserved = api.reserve(ledger, PRICES, request, header(app, "Idempotency-Key"))
    if reserved.replayed:
        return json_response(201, api.reserved_body(reserved), {"Idempotent-Replayed": "true"})
    metrics.add_metric(name="CreditsHeld", unit=MetricUnit.Count, value=reserved.amount)
    return json_response(201, api.reserved_body(reserved))


@app.post("/internal/credits/holds/<hold_id>/capture")
def internal_capture(hold_id: str) -> Response:
    from credits.api_holds import CaptureRequest

    request = api.parse(CaptureRequest, json_body(app))
    captured = api.capture(ledger, hold_id, request)
    if captured.replayed:
        return json_response(200, api.captured_body(captured), {"Idempotent-Replayed": "true"})
    metrics.add_metric(name="CreditsCharged", unit=MetricUnit.Count, value=captured.charged)
    return json_response(200, api.captured_body(captured))


@app.post("/internal/credits/holds/<hold_id>/release")
def internal_release(hold_id: str) -> Response:
    from credits.api_holds import ReleaseRequest

    request = api.parse(ReleaseRequest, json_body(app))
    released = api.release(ledger, hold_id, request)
    headers = {"Idempotent-Replayed": "true"} if released.replayed else None
    return json_response(200, api.released_body(released), headers)


def _prime() -> None:
    """SnapStart, before the snapshot: what each route builds on its first request (the request
    models and their validators, pydantic, the catalog) is built here, into the snapshot. Never at
    import: without SnapStart, a cold start stays as lean as above.

    What a restore re-creates is not built here: the DynamoDB client's connections (none is opened
    here; a pooled one gone stale is re-opened on first use), the AWS credentials (resolved on the
    first call, after the restore) and the `random` module's seed (reseeded by credits.aws)."""
    for models in ("credits.api_charges", "credits.api_grants", "credits.api_holds", "credits.api_settings"):
        importlib.import_module(models)  # defines its models: pydantic builds their validators
    catalog()


register_before_snapshot(_prime)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
