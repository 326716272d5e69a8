"""Charge credits for your own routes: a Powertools route middleware (docs/design.md section 9).

    from credits.paywall import charge_credits

    @app.post("/reports", middlewares=[charge_credits("analyze")])
    def create_report(): ...

Before the route runs, the price is reserved as a hold (402 with the standard error body if it does
not fit, and the route does not run). A route that answers 2xx or 3xx has the hold captured, or
less of it with `app.append_context(credits_used=n)`; a route that raises or answers 4xx or 5xx has
it released, so the user pays nothing. A hold outlives the invocation (its TTL is the function's
remaining time plus a margin), so a container that dies mid-route leaves a hold that expires by
itself and never charges. With an `Idempotency-Key` the route runs at most once per key: while the
first request runs, a retry is 409 `request_in_progress`; once it was charged, a retry gets the first
response again (kept with the capture, up to 32 KB); once it failed (nothing charged), a retry runs
and pays as usual; the same key with another request is 409 `idempotency_key_reused`. A capture
that fails after the route succeeded is retried; if it still fails, the hold expires (the user is
not charged), an error is logged and the `CaptureFailed` metric is raised (template.yaml alarms on
it).

Configuration comes from the environment at cold start (CREDITS_TABLE_NAME, ACTION_COSTS), or from
an injected `Paywall` (tests, several tables).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.middlewares import NextMiddleware
from aws_lambda_powertools.metrics import MetricUnit, single_metric

from credits import config
from credits.errors import (
    REFUSAL_METRICS,
    ConfigError,
    CreditsError,
    HoldCaptured,
    HoldExpired,
    IdempotencyKeyReused,
    RequestInProgress,
    TemporarilyUnavailable,
)
from credits.http import error_response, header, raw_body, user_id
from credits.ledger import (
    DEFAULT_HOLD_TTL_SECONDS,
    MAX_HOLD_TTL_SECONDS,
    MAX_NOTE_BYTES,
    Captured,
    Idempotency,
    Ledger,
    fingerprint,
    validate_amount,
)

logger = Logger(service="credits-paywall")

HOLD_MARGIN_SECONDS = 60  # a hold outlives the invocation that made it by this much
CAPTURE_ATTEMPTS = 3


class Paywall:
    """The ledger and price list the middleware charges with; built once per container."""

    def __init__(
        self,
        ledger: Ledger,
        prices: Mapping[str, int],
        *,
        ttl_seconds: int | None = None,
        capture_attempts: int = CAPTURE_ATTEMPTS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.ledger = ledger
        self.prices = dict(prices)
        self.ttl_seconds = ttl_seconds  # None: the invocation's remaining time plus a margin
        self.capture_attempts = capture_attempts
        self.sleep = sleep

    def price(self, action: str) -> int:
        try:
            return self.prices[action]
        except KeyError:
            raise ConfigError(f"charge_credits({action!r}): the action is not in ACTION_COSTS.") from None

    def run(self, app: APIGatewayHttpResolver, next_middleware: NextMiddleware, price: int, label: str) -> Response:
        """Reserve, run the route, then capture or release (the middleware's whole behaviour)."""
        try:
            user = user_id(app)
            body = raw_body(app)  # a body flagged base64 that is not: 400 before anything is written
            reserved = self.ledger.reserve(
                user,
                price,
                description=label,
                ttl_seconds=self._ttl(app),
                idempotency=self._idempotency(app, user, price, body),
                action=label,
            )
            if reserved.replayed:
                return self._replay(user, reserved.hold_id)  # the route never runs twice for one key
        except CreditsError as refused:
            if refused.code in REFUSAL_METRICS:
                _metric(REFUSAL_METRICS[refused.code], 1)
            return error_response(refused)  # 401, 402, 409 or 503: the route does not run
        try:
            response = next_middleware(app)
        except Exception:
            self._release(user, reserved.hold_id)
            raise
        if not 200 <= response.status_code < 400:
            self._release(user, reserved.hold_id)
            return response
        used = self._credits_used(app, price)
        response.headers["Credits-Charged"] = str(used)  # kept with the capture, for a replay
        captured = self._capture(user, reserved.hold_id, used, _note(app, response))
        if captured is None:
            del response.headers["Credits-Charged"]
            return response
        response.headers["Credits-Charged"] = str(captured.charged)
        response.headers["Credits-Balance"] = str(captured.balance)
        if not captured.replayed:
            _metric("CreditsCharged", captured.charged)  # on the dashboard and the anomaly alarm
        return response

    def _replay(self, user: str, hold_id: str) -> Response:
        """A request whose Idempotency-Key already opened a hold: the first answer, never a second run."""
        hold = self.ledger.hold(user, hold_id)
        if hold is None or hold.state in ("open", "released"):
            # running right now (or just failed, which frees the key): the client retries shortly
            raise RequestInProgress("A request with this Idempotency-Key is running; retry once it has answered.")
        if hold.state == "expired":
            raise HoldExpired("This Idempotency-Key's request was never charged and its hold expired; use a new key.")
        if hold.response is None:
            raise IdempotencyKeyReused(
                "This Idempotency-Key's request already ran and was charged once; its response was too large to "
                "keep. Use a new key for a new request."
            )
        kept = json.loads(hold.response)
        body = base64.b64decode(kept["body"]) if kept.get("base64") else kept["body"]
        headers = {**kept["headers"], "Idempotent-Replayed": "true"}
        if hold.balance_after is not None:
            headers["Credits-Balance"] = str(hold.balance_after)
        return Response(status_code=kept["status"], body=body, headers=headers, content_type=kept.get("contentType"))

    def _ttl(self, app: APIGatewayHttpResolver) -> int:
        if self.ttl_seconds is not None:
            return self.ttl_seconds
        context = getattr(app, "lambda_context", None)
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        if remaining is None:
            return DEFAULT_HOLD_TTL_SECONDS
        seconds = math.ceil(remaining() / 1000) + HOLD_MARGIN_SECONDS
        return min(max(seconds, 1), MAX_HOLD_TTL_SECONDS)

    def _idempotency(self, app: APIGatewayHttpResolver, user: str, price: int, body: bytes) -> Idempotency | None:
        """The key, and a fingerprint of the whole request: the same key with another body is 409.

        The body is fingerprinted as the bytes the client sent (`raw_body`), never decoded as text:
        a route may take any bytes (an upload, `application/octet-stream`), and whether they are
        valid for it is the route's to say, not a 500 of the paywall's.
        """
        key = header(app, "Idempotency-Key")
        if key is None:
            return None
        event = app.current_event
        request = {
            "paywall": f"{event.http_method} {event.path}",
            "query": event.raw_event.get("rawQueryString", ""),
            "body": hashlib.sha256(body).hexdigest(),
            "userId": user,
            "amount": price,
        }
        return Idempotency(key, fingerprint(request))

    def _credits_used(self, app: APIGatewayHttpResolver, price: int) -> int:
        """What the route says it used (`app.append_context(credits_used=n)`), else the whole price."""
        used: Any = app.context.get("credits_used", price)
        if type(used) is not int or not 0 <= used <= price:
            # a bug in the route: charge the price it declared, never more, and say so
            logger.error("credits_used must be an integer from 0 to the price", extra={"credits_used": repr(used)})
            return price
        return used

    def _capture(self, user: str, hold_id: str, amount: int, note: str | None) -> Captured | None:
        """Capture, retrying what a retry can fix; None (logged, alarmed) when it failed for good."""
        for attempt in range(self.capture_attempts):
            try:
                return self.ledger.capture(user, hold_id, amount, note=note)
            except HoldCaptured:
                # a retry with the same Idempotency-Key whose route used a different amount: the
                # first capture stands, and is what this response reports
                hold = self.ledger.hold(user, hold_id)
                if hold is None or hold.captured is None:
                    break
                view = self.ledger.account(user)
                return Captured(hold_id, hold.transaction_id, hold.captured, view.balance, view.available, True)
            except TemporarilyUnavailable:
                pass  # nothing was written, or a resend replays what was: retry
            except CreditsError:
                break  # expired (the route outlived its hold), released: a retry cannot help
            except Exception:
                logger.exception("capture attempt failed", extra={"hold_id": hold_id})
            if attempt + 1 < self.capture_attempts:
                self.sleep(0.1 * 2**attempt)
        logger.error(
            "capture failed after the route succeeded: the hold expires and the user is not charged",
            extra={"user_id": user, "hold_id": hold_id, "amount": amount},
        )
        _metric("CaptureFailed", 1)
        return None

    def _release(self, user: str, hold_id: str) -> None:
        """Best effort: a hold that is not released expires by itself and charges nothing."""
        try:
            self.ledger.release(user, hold_id)
        except Exception:
            logger.exception("release failed; the hold will expire", extra={"user_id": user, "hold_id": hold_id})


def _metric(name: str, value: int) -> None:
    """One metric in the stack's namespace and dimension, whatever the team's function uses for its own."""
    with single_metric(
        name=name, unit=MetricUnit.Count, value=value, namespace="Credits", default_dimensions={"service": "credits"}
    ):
        pass


def _note(app: APIGatewayHttpResolver, response: Response) -> str | None:
    """The route's response as kept with its capture, to replay; None when too large to keep."""
    body: Any = response.body
    encoded = isinstance(body, bytes)
    if encoded:
        body = base64.b64encode(body).decode()
    elif body is not None and not isinstance(body, str):
        body = app._serializer(body)  # what the resolver itself sends for a dict or a model
    headers = {k: v for k, v in response.headers.items() if isinstance(v, str)}
    kept = {"status": response.status_code, "headers": headers, "body": body, "contentType": response.content_type}
    note = json.dumps({**kept, "base64": encoded}, separators=(",", ":"))
    return note if len(note.encode()) <= MAX_NOTE_BYTES else None


@functools.cache
def default_paywall() -> Paywall:
    """The paywall of this container, from CREDITS_TABLE_NAME and ACTION_COSTS (read once)."""
    from credits.aws import dynamodb_client

    raw_prices = config.optional("ACTION_COSTS")
    prices = config.action_costs(raw_prices) if raw_prices else {}
    table = config.require("CREDITS_TABLE_NAME")
    ledger = config.ledger(dynamodb_client(), table)
    return Paywall(ledger, prices)


class _ChargeCredits:
    """The middleware one route gets from `charge_credits`."""

    def __init__(self, paywall: Paywall | None, price: int | None, action: str | None) -> None:
        self._paywall = paywall
        self._price = price
        self.action = action
        self.__name__ = f"charge_credits({action or price})"  # Powertools names middlewares in its logs

    @property
    def paywall(self) -> Paywall:
        return self._paywall or default_paywall()

    def __call__(self, app: APIGatewayHttpResolver, next_middleware: NextMiddleware) -> Response:
        paywall = self.paywall
        price = self._price if self._price is not None else paywall.price(str(self.action))
        return paywall.run(app, next_middleware, price, self.action or "charge")


def charge_credits(
    action: str | None = None, *, amount: int | None = None, paywall: Paywall | None = None
) -> _ChargeCredits:
    """A route middleware that charges `action`'s price (from ACTION_COSTS) or a fixed `amount`.

    The price list is checked now, at cold start: an action missing from ACTION_COSTS, or a missing
    CREDITS_TABLE_NAME, fails the import naming it, not the first paying request.
    """
    if (action is None) == (amount is None):
        raise ConfigError("charge_credits takes an action or amount=n, not both.")
    if amount is not None:
        validate_amount(amount)
    middleware = _ChargeCredits(paywall, amount, action)
    if action is not None:
        middleware.paywall.price(action)
    return middleware
