"""An example premium function: a team's own routes that charge credits with credits.paywall.

Each route reserves its action's price before it runs, takes about a second, and answers a made-up
result; the hold is captured then. A body of `{"fail": true}` makes the action fail: the hold is
released and the user pays nothing. The body is read before the price is reserved (the middleware
in front of the paywall's): one that is not JSON is 400 and writes nothing. Deployed with
`DeployExamples=true`; `make dev` always serves it.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.middlewares import NextMiddleware
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from credits.http import install_error_handlers, json_body, json_response
from credits.paywall import charge_credits

WORK_SECONDS = float(os.environ.get("EXAMPLE_WORK_SECONDS", "1"))

logger = Logger()
app = APIGatewayHttpResolver()
install_error_handlers(app, logger)


def read_body(resolver: APIGatewayHttpResolver, next_middleware: NextMiddleware) -> Response:
    """Parse the body before the paywall reserves: a body that is not JSON (or not UTF-8, or flagged
    base64 and not) is 400 `invalid_json` with nothing reserved, released or written."""
    resolver.append_context(body=json_body(resolver) if resolver.current_event.body else {})
    return next_middleware(resolver)


def _work(action: str) -> Response:
    body = app.context.get("body")
    time.sleep(WORK_SECONDS)  # the action itself: a search, an analysis, a generation
    if isinstance(body, dict) and body.get("fail") is True:
        message = f"The {action} failed; you were not charged."
        return json_response(502, {"error": {"code": "action_failed", "message": message}})
    digest = hashlib.sha256(f"{action}:{app.current_event.request_context.request_id}".encode()).hexdigest()
    return json_response(200, {"action": action, "result": f"{action} result {digest[:8]}"})


@app.post("/examples/search", middlewares=[read_body, charge_credits("search")])
def search() -> Response:
    return _work("search")


@app.post("/examples/analyze", middlewares=[read_body, charge_credits("analyze")])
def analyze() -> Response:
    return _work("analyze")


@app.post("/examples/generate", middlewares=[read_body, charge_credits("generate")])
def generate() -> Response:
    return _work("generate")


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
