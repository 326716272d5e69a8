"""use_credits: POST /credits/use and PUT /credits/settings (JWT user); the IAM-only
/internal/credits/use and /grant, and holds: reserve, capture and release (/internal/credits/holds...).

Traced by Lambda's own active tracing (template: Tracing: Active), not by Powertools' Tracer:
importing the X-Ray SDK costs about 260 ms of every cold start, on the hottest path we have."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from credits import api, config
from credits.aws import dynamodb_client
from credits.errors import ERRORS_BY_CODE, REFUSAL_METRICS, CreditsError
from credits.http import error_response, header, install_error_handlers, json_body, json_response, user_id
from credits.ledger import Posted
from credits.packages import Catalog

# Built once per container: configuration (fails here, naming the variable) and the adapters.
PRICES = config.action_costs(config.require("ACTION_COSTS"))
_client, _table = dynamodb_client(), config.require("CREDITS_TABLE_NAME")
ledger = config.ledger(_client, _table)
catalog = Catalog(_client, _table)  # the package auto top-up buys must be on sale when it is turned on

logger = Logger()
metrics = Metrics()
app = APIGatewayHttpResolver()
install_error_handlers(app, logger)


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
    request = api.parse(api.UseRequest, json_body(app))
    key = header(app, "Idempotency-Key")
    posted = api.use_credits(ledger, PRICES, user_id(app), request, key)
    return _answer(posted, api.charged_body(posted), "CreditsCharged")


@app.post("/internal/credits/use")
def internal_use() -> Response:
    request = api.parse(api.InternalUseRequest, json_body(app))
    posted = api.internal_use(ledger, PRICES, request, header(app, "Idempotency-Key"))
    return _answer(posted, api.charged_body(posted), "CreditsCharged")


@app.post("/internal/credits/grant")
def internal_grant() -> Response:
    request = api.parse(api.GrantRequest, json_body(app))
    posted = api.internal_grant(ledger, request, header(app, "Idempotency-Key"))
    return _answer(posted, api.granted_body(posted), "CreditsGranted")


@app.put("/credits/settings")
def put_settings() -> Response:
    request = api.parse(api.SettingsRequest, json_body(app))
    settings = api.update_settings(ledger, user_id(app), request, catalog.active)
    return json_response(200, api.settings_body(settings, int(ledger.clock() * 1000)), {"Cache-Control": "no-store"})


@app.post("/internal/credits/holds")
def internal_reserve() -> Response:
    request = api.parse(api.HoldRequest, json_body(app))
    reserved = api.reserve(ledger, PRICES, request, header(app, "Idempotency-Key"))
    if reserved.replayed:
        return json_response(201, api.reserved_body(reserved), {"Idempotent-Replayed": "true"})
    metrics.add_metric(name="CreditsHeld", unit=MetricUnit.Count, value=reserved.amount)
    return json_response(201, api.reserved_body(reserved))


@app.post("/internal/credits/holds/<hold_id>/capture")
def internal_capture(hold_id: str) -> Response:
    request = api.parse(api.CaptureRequest, json_body(app))
    captured = api.capture(ledger, hold_id, request)
    if captured.replayed:
        return json_response(200, api.captured_body(captured), {"Idempotent-Replayed": "true"})
    metrics.add_metric(name="CreditsCharged", unit=MetricUnit.Count, value=captured.charged)
    return json_response(200, api.captured_body(captured))


@app.post("/internal/credits/holds/<hold_id>/release")
def internal_release(hold_id: str) -> Response:
    request = api.parse(api.ReleaseRequest, json_body(app))
    released = api.release(ledger, hold_id, request)
    headers = {"Idempotent-Replayed": "true"} if released.replayed else None
    return json_response(200, api.released_body(released), headers)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
