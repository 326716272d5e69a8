"""What every HTTP handler shares: JSON errors, the caller's identity, the body and headers."""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from credits.errors import (
    CreditsError,
    InternalError,
    InvalidJson,
    NotFound,
    TemporarilyUnavailable,
    Unauthorized,
    http_error,
)
from credits.ledger import RETRIABLE_CODES, validate_token

MAX_BODY_BYTES = 16 * 1024


def json_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(
        status_code=status,
        content_type=content_types.APPLICATION_JSON,
        body=json.dumps(body, separators=(",", ":")),
        headers=headers or {},
    )


def error_response(exc: CreditsError) -> Response:
    status, body = http_error(exc)
    retry = status == 503 or body["error"]["code"] == "request_in_progress"
    headers = {"Retry-After": "1"} if retry else None
    return json_response(status, body, headers)


def install_error_handlers(app: APIGatewayHttpResolver, logger: Logger) -> None:
    """Map domain errors through the one table in credits.errors; never leak an exception's text."""

    @app.exception_handler(CreditsError)
    def _domain_error(exc: CreditsError) -> Response:
        logger.info("request refused", extra={"error": type(exc).__name__})
        return error_response(exc)

    @app.not_found
    def _not_found(exc: NotFoundError) -> Response:
        return error_response(NotFound("No such route."))

    @app.exception_handler([ClientError, BotoConnectionError, HTTPClientError])
    def _store_failed(exc: Exception) -> Response:
        # An AWS call no retry of the ledger's wrapped (a read of the catalog, of the ledger's pages;
        # in a team's paywalled function, its own calls): throttling, an unknown outcome or an outage
        # is retriable, so 503 with Retry-After; any other AWS error is a bug of ours.
        code = exc.response.get("Error", {}).get("Code", "") if isinstance(exc, ClientError) else "connection"
        if code == "connection" or code in RETRIABLE_CODES:
            logger.warning("store unavailable", extra={"error": code})
            return error_response(TemporarilyUnavailable("A service this request needs is unavailable. Please retry."))
        logger.exception("unhandled AWS error")
        return error_response(InternalError("Internal error."))

    @app.exception_handler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # Our own failure: logged with its stack; the client gets no detail of it.
        logger.exception("unhandled error")
        return error_response(InternalError("Internal error."))


def user_id(app: APIGatewayHttpResolver) -> str:
    """The caller's user id: the JWT `sub` claim, and nothing else."""
    authorizer = app.current_event.request_context.authorizer
    claims = (authorizer.jwt_claim if authorizer else None) or {}
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise Unauthorized("Sign in first: no user identity on this request.")
    return validate_token(sub, "sub")


def json_body(app: APIGatewayHttpResolver) -> object:
    """The decoded JSON body (base64 or not), or InvalidJson."""
    try:
        raw = app.current_event.decoded_body  # base64-decoded when isBase64Encoded
        if not raw:
            raise InvalidJson("The body must be a JSON object.")
        # In UTF-8 bytes, as the limit says (a character can take four); the length in characters
        # first, so that a huge body is refused before it is encoded.
        if len(raw) > MAX_BODY_BYTES or len(raw.encode("utf-8", "surrogatepass")) > MAX_BODY_BYTES:
            raise InvalidJson("The body is too large.")
        return json.loads(raw)
    except (ValueError, RecursionError):  # bad base64, UTF-8 or JSON; absurdly nested JSON
        raise InvalidJson("The body is not valid JSON.") from None


def header(app: APIGatewayHttpResolver, name: str) -> str | None:
    """A request header, case-insensitive (API Gateway lower-cases them; tests may not)."""
    value = app.current_event.headers.get(name.lower())
    if value is None:
        value = app.current_event.headers.get(name)
    return value
