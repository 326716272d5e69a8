"""checkout: POST /credits/checkout {"packageId", "saveCard"?} starts a Stripe Checkout Session for the
JWT user; POST /credits/cards starts one in setup mode, where the user saves a card for auto top-up."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from credits import api, config
from credits.aws import dynamodb_client
from credits.checkout import CheckoutUrls, Customers, start_card_setup, start_checkout
from credits.http import install_error_handlers, json_body, json_response, raw_body, user_id
from credits.packages import Catalog
from credits.stripe_gateway import StripeGateway

_client = dynamodb_client()
_table = config.require("CREDITS_TABLE_NAME")
catalog = Catalog(_client, _table)
customers = Customers(_client, _table)
stripe_gateway = StripeGateway.connect(config.secret("STRIPE_SECRET_KEY"), config.optional("STRIPE_API_BASE"))
urls = CheckoutUrls(config.require("CHECKOUT_SUCCESS_URL"), config.require("CHECKOUT_CANCEL_URL"))

logger = Logger()
metrics = Metrics()
tracer = Tracer()
app = APIGatewayHttpResolver()
install_error_handlers(app, logger)


@app.post("/credits/checkout")
@tracer.capture_method
def checkout() -> Response:
    request = api.parse(api.CheckoutRequest, json_body(app))
    body = start_checkout(
        catalog, customers, stripe_gateway, urls, user_id(app), request.packageId, save_card=request.saveCard
    )
    metrics.add_metric(name="CheckoutStarted", unit=MetricUnit.Count, value=1)
    return json_response(201, body)


@app.post("/credits/cards")
@tracer.capture_method
def save_card() -> Response:
    if raw_body(app):  # no body, or `{}`
        api.parse(api.CardRequest, json_body(app))
    body = start_card_setup(catalog, customers, stripe_gateway, urls, user_id(app))
    metrics.add_metric(name="CardSetupStarted", unit=MetricUnit.Count, value=1)
    return json_response(200, body)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
