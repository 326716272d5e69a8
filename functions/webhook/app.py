"""webhook: Stripe events through a Lambda Function URL; signature first, then exactly-once processing.

Purchases, refunds and disputes need nothing but the event; a saved card (credits.cards) is read from
Stripe, with the secret key (STRIPE_SECRET_KEY, or its SSM parameter STRIPE_SECRET_KEY_PARAM): without
one, card events are answered `ignored`."""

from __future__ import annotations

import base64
import json
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import LambdaFunctionUrlEvent
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyAlreadyInProgressError
from aws_lambda_powertools.utilities.typing import LambdaContext

from credits import config
from credits.aws import dynamodb_client
from credits.cards import CardEvents, Cards
from credits.errors import (
    CreditsError,
    InternalError,
    PaymentProviderError,
    SettlementFailed,
    TemporarilyUnavailable,
    ValidationError,
    http_error,
)
from credits.packages import Catalog
from credits.payments import Payments
from credits.stripe_gateway import InvalidWebhook, StripeGateway, verify_webhook

_client = dynamodb_client()
_table = config.require("CREDITS_TABLE_NAME")
WEBHOOK_SECRET = config.secret("STRIPE_WEBHOOK_SECRET")
ledger = config.ledger(_client, _table)
# Read now, used on the first card event: an SSM parameter is read then, never at a cold start.
_stripe_key = {
    name: value for name in ("STRIPE_SECRET_KEY", "STRIPE_SECRET_KEY_PARAM") if (value := config.optional(name))
}
_stripe_api_base = config.optional("STRIPE_API_BASE")


def stripe_gateway() -> StripeGateway:
    """Stripe, to read the card a session saved: made on the first card event (most events need none)."""
    return StripeGateway.connect(config.secret("STRIPE_SECRET_KEY", _stripe_key), _stripe_api_base)


card_events = CardEvents(Cards(_client, _table), stripe_gateway) if _stripe_key else None
payments = Payments(ledger, Catalog(_client, _table), _client, _table, cards=card_events)

# Event-id dedupe in front; the ledger's payment reference is what makes credits exactly-once.
persistence = DynamoDBPersistenceLayer(table_name=config.require("IDEMPOTENCY_TABLE_NAME"), boto3_client=_client)
idempotency = IdempotencyConfig(event_key_jmespath="id", expires_after_seconds=24 * 3600)

logger = Logger()
metrics = Metrics()
tracer = Tracer()

OUTCOME_METRICS = {
    "granted": "CreditsPurchased",
    "clawed_back": "CreditsClawedBack",
    "restored": "CreditsRestored",
    "mismatch": "PaymentMismatch",
    "failed": "AsyncPaymentFailed",
    "card_saved": "CardSaved",
    "card_removed": "CardRemoved",
}


@idempotent_function(data_keyword_argument="event", persistence_store=persistence, config=idempotency)
def process(event: dict[str, Any]) -> dict[str, Any]:
    """Apply one verified event; the result is stored under the event id."""
    outcome = payments.handle(event)
    log = logger.error if outcome.kind == "mismatch" else logger.info
    log("stripe event", extra={"event_id": event["id"], "event_type": event["type"], **outcome.body()})
    if outcome.kind in OUTCOME_METRICS:
        metrics.add_metric(name=OUTCOME_METRICS[outcome.kind], unit=MetricUnit.Count, value=outcome.credits or 1)
    return outcome.body()


def respond(status: int, body: dict[str, Any]) -> dict[str, Any]:
    return {"statusCode": status, "headers": {"Content-Type": "application/json"}, "body": json.dumps(body)}


def raw_body(request: LambdaFunctionUrlEvent) -> bytes:
    """The bytes Stripe signed, never decoded as text here: base64-decoded (strictly) when the
    Function URL encoded them, else the text's UTF-8 (lone surrogates kept, so they fail the
    signature and its UTF-8 check as 400, never a 500)."""
    body = request.body or ""
    if request.is_base64_encoded:
        try:
            return base64.b64decode(body, validate=True)
        except ValueError:  # binascii.Error (not base64), or text that is not even ASCII
            raise InvalidWebhook("The webhook body is not valid.") from None
    return body.encode("utf-8", "surrogatepass")


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    idempotency.register_lambda_context(context)
    request = LambdaFunctionUrlEvent(event)
    if request.request_context.http.method != "POST":
        return respond(405, {"error": {"code": "method_not_allowed", "message": "Stripe posts events here."}})
    try:
        # The signature is checked on the raw bytes before anything else is read or written.
        stripe_event = verify_webhook(raw_body(request), request.headers.get("stripe-signature"), WEBHOOK_SECRET)
        logger.append_keys(stripe_event_id=stripe_event["id"])
        result = process(event=stripe_event)
    except IdempotencyAlreadyInProgressError:
        # The same event is being processed right now: answer non-2xx so Stripe tries again later.
        status, body = http_error(TemporarilyUnavailable("This event is being processed; retry later."))
        return respond(status, body)
    except InvalidWebhook as exc:
        metrics.add_metric(name="WebhookRejected", unit=MetricUnit.Count, value=1)
        return respond(*http_error(exc))
    except (ValidationError, TemporarilyUnavailable) as exc:
        return respond(*http_error(exc))  # a body that is not an event (400); busy, retry (503)
    except PaymentProviderError as exc:
        # Stripe did not answer our read of a saved card: 502, so Stripe sends the event again.
        logger.warning("stripe unavailable", extra={"reason": str(exc)})
        return respond(*http_error(exc))
    except CreditsError as exc:
        # A signed event we cannot settle is OUR failure, never the sender's: 5xx so Stripe retries,
        # an error log line, and the alarmed SettlementFailed metric.
        failure = exc if isinstance(exc, SettlementFailed) else SettlementFailed(type(exc).__name__)
        logger.error("payment not settled", extra={"reason": str(failure), "error": type(exc).__name__})
        metrics.add_metric(name="SettlementFailed", unit=MetricUnit.Count, value=1)
        return respond(*http_error(failure))
    except Exception:
        logger.exception("webhook failed")  # ours: 5xx, so Stripe retries; nothing half-written
        return respond(*http_error(InternalError("Internal error.")))
    return respond(200, {"received": True, **result})
