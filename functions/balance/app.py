"""balance: GET /credits/balance, /credits/holds, /credits/settings, /credits/transactions and /credits/usage
(JWT user), GET /credit-packages and /credit-prices (public).

Read-only; never imports stripe.

Traced by Lambda's own active tracing (template: Tracing: Active), not by Powertools' Tracer:
importing the X-Ray SDK costs about 260 ms of every cold start, on the hottest path we have.

A cold start imports what every route needs and nothing more: the history's CSV export, the usage
insights and the package catalog are imported by the routes that answer with them, on their first
request. Under SnapStart, `_prime` imports and builds them before the snapshot.
"""

from __future__ import annotations

import importlib
from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.logging import correlation_paths

from credits import api, config
from credits.aws import dynamodb_client, register_before_snapshot
from credits.http import header, install_error_handlers, json_response, user_id

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

    from credits.packages import Catalog

PRICES = api.prices_body(config.action_costs(config.require("ACTION_COSTS")))  # the one price list
_client = dynamodb_client()
_table = config.require("CREDITS_TABLE_NAME")
ledger = config.ledger(_client, _table)

logger = Logger()
app = APIGatewayHttpResolver()
install_error_handlers(app, logger)


@cache
def catalog() -> Catalog:
    """The package catalog, built on first use (GET /credit-packages)."""
    from credits.packages import Catalog

    return Catalog(_client, _table)


@app.get("/credits/balance")
def balance() -> Response:
    view = ledger.account(user_id(app))
    return json_response(200, api.balance_body(view), {"Cache-Control": "no-store"})


@app.get("/credits/settings")
def settings() -> Response:
    body = api.settings_body(ledger.settings(user_id(app)), int(ledger.clock() * 1000))
    return json_response(200, body, {"Cache-Control": "no-store"})


@app.get("/credits/holds")
def holds() -> Response:
    return json_response(200, api.holds_body(ledger.holds(user_id(app))), {"Cache-Control": "no-store"})


@app.get("/credits/transactions")
def transactions() -> Response:
    from credits import export

    who = user_id(app)
    params = app.current_event.query_string_parameters or {}
    if export.wants_csv(header(app, "Accept")):  # the whole history from `cursor` on; `limit` is ignored
        pages = export.pages(
            lambda at: api.transactions_page(ledger, who, str(export.PAGE_SIZE), at), params.get("cursor")
        )
        return Response(200, export.CONTENT_TYPE, export.history_csv(pages), export.csv_headers(who))
    page = api.transactions_page(ledger, who, params.get("limit"), params.get("cursor"))
    return json_response(200, page, {"Cache-Control": "no-store"})


@app.get("/credits/usage")
def usage() -> Response:
    from credits import insights

    params = app.current_event.query_string_parameters or {}
    today = datetime.fromtimestamp(ledger.clock(), UTC).date()
    body = insights.usage(
        ledger.store, user_id(app), params.get("from"), params.get("to"), params.get("granularity"), today
    )
    return json_response(200, body, {"Cache-Control": "no-store"})


@app.get("/credit-packages")
def packages() -> Response:
    listed = [p.public() for p in catalog().listed()]
    return json_response(200, {"packages": listed}, {"Cache-Control": "public, max-age=60"})


@app.get("/credit-prices")
def prices() -> Response:
    return json_response(200, PRICES, {"Cache-Control": "public, max-age=60"})


def _prime() -> None:
    """SnapStart, before the snapshot: what the routes import and build on their first request (the
    CSV export, the usage insights, the catalog with its pydantic Package model) is built here, into
    the snapshot. Never at import: without SnapStart, a cold start stays as lean as above.

    What a restore re-creates is not built here: the DynamoDB client's connections (none is opened
    here; a pooled one gone stale is re-opened on first use), the AWS credentials (resolved on the
    first call, after the restore) and the `random` module's seed (reseeded by credits.aws)."""
    for module in ("credits.export", "credits.insights"):
        importlib.import_module(module)
    catalog()


register_before_snapshot(_prime)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
