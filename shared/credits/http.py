"""What every HTTP handler shares: JSON errors, the caller's identity, the body and headers."""

from __future__ import annotations

import base64
import json
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError

from credits.errors import (
    CreditsError,
    InternalError,
    InvalidJson,
    NotFound,
    TemporarilyUnavailable,
    TooManyRequests,
    Unauthorized,
    http_error,
)
from credits.ledger import validate_token
from credits.store import AWS_ERRORS, domain_error

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
    if isinstance(exc, TooManyRequests):
        headers = {"Retry-After": str(exc.retry_after)}
    return json_response(status, body, headers)


def install_error_handlers(app: APIGatewayHttpResolver, logger: Logger) -> None:
    """Map domain errors through the one table in credits.errors; never leak an exception's text."""

    @app.exception_handler(CreditsError)
    def _domain_error(exc: CreditsError) -> Response:
        if exc.status == 500:  # our own failure (a store error, a missing setting): with its stack
            logger.exception("request failed", extra={"error": exc.code})
        else:
            logger.info("request refused", extra={"error": exc.code})
        return error_response(exc)

    @app.not_found
    def _not_found(exc: NotFoundError) -> Response:
        return error_response(NotFound("No such route."))

    @app.exception_handler(list(AWS_ERRORS))
    def _aws_failed(exc: Exception) -> Response:
        # An AWS call of a team's own code behind the paywall (ours go through credits.store, which
        # answers in domain errors): throttling, an unknown outcome or an outage is retriable, so
        # 503 with Retry-After; any other AWS error is a bug, 500.
        translated = domain_error(exc)
        if isinstance(translated, TemporarilyUnavailable):
            logger.warning("AWS unavailable", extra={"error": str(exc)})
        else:
            logger.exception("unhandled AWS error")
        return error_response(translated)

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


def raw_body(app: APIGatewayHttpResolver) -> bytes:
    """The body's bytes as the client sent them, never decoded as text.

    API Gateway base64-encodes a body it does not take for text (isBase64Encoded, e.g. any
    `application/octet-stream`): those bytes are decoded from base64, strictly. Otherwise the body
    is the event's text, as its UTF-8 bytes (lone surrogates, which no real request carries, kept as
    such rather than refused). A body flagged base64 that is not base64 is InvalidJson: 400,
    refused before anything is read or written.
    """
    event = app.current_event
    body = event.body or ""
    if event.is_base64_encoded:
        try:
            return base64.b64decode(body, validate=True)
        except ValueError:  # binascii.Error (not base64), or text that is not even ASCII
            raise InvalidJson("The body is flagged base64 but is not valid base64.") from None
    return body.encode("utf-8", "surrogatepass")


def json_body(app: APIGatewayHttpResolver) -> object:
    """The decoded JSON body (base64 or not), or InvalidJson: decoded as UTF-8 only after the checks."""
    body = app.current_event.body or ""
    # The limit is in UTF-8 bytes (a character can take four), but a body that is too large even by
    # its length in characters, or in base64 (4 characters per 3 bytes), is refused before decoding.
    longest = (MAX_BODY_BYTES + 2) // 3 * 4 if app.current_event.is_base64_encoded else MAX_BODY_BYTES
    if len(body) > longest:
        raise InvalidJson("The body is too large.")
    raw = raw_body(app)
    if not raw:
        raise InvalidJson("The body must be a JSON object.")
    if len(raw) > MAX_BODY_BYTES:
        raise InvalidJson("The body is too large.")
    try:
        text = raw.decode("utf-8")  # strict: no lone surrogates, no stray bytes; a BOM stays and fails
    except UnicodeDecodeError:
        raise InvalidJson("The body is not valid JSON: it is not UTF-8 text.") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # malformed JSON; absurdly nested JSON
        raise InvalidJson("The body is not valid JSON.") from None


def header(app: APIGatewayHttpResolver, name: str) -> str | None:
    """A request header, case-insensitive (API Gateway lower-cases them; tests may not)."""
    value = app.current_event.headers.get(name.lower())
    if value is None:
        value = app.current_event.headers.get(name)
    return value
