"""Configuration from the environment, read once at cold start by the handlers (never by domain code)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from credits.errors import ConfigError
from credits.ledger import DEFAULT_LOW_BALANCE_THRESHOLD, EXPIRY_WARNING_DAYS, MAX_AMOUNT, Ledger

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

MAX_EXPIRY_WARNING_DAYS = 365


def require(name: str, env: Mapping[str, str] | None = None) -> str:
    """The value of a required variable, or ConfigError naming it."""
    value = (os.environ if env is None else env).get(name, "").strip()
    if not value:
        raise ConfigError(f"Missing required environment variable {name}.")
    return value


def action_costs(raw: str) -> dict[str, int]:
    """Parse ACTION_COSTS: a JSON object of action name to positive integer credits."""
    try:
        costs = json.loads(raw)
    except ValueError as exc:
        raise ConfigError("ACTION_COSTS is not valid JSON.") from exc
    if not isinstance(costs, dict) or not costs:
        raise ConfigError("ACTION_COSTS must be a non-empty JSON object of action to credits.")
    for action, cost in costs.items():
        if not action or type(cost) is not int or not 0 < cost <= MAX_AMOUNT:
            raise ConfigError(f"ACTION_COSTS[{action!r}] must be a positive integer number of credits.")
    return dict(costs)


def secret(name: str, env: Mapping[str, str] | None = None) -> str:
    """A secret: the variable itself (local, tests), or the SSM SecureString named by `<name>_PARAM`.

    Read once per container at cold start; Powertools Parameters caches it.
    """
    values = os.environ if env is None else env
    if values.get(name, "").strip():
        return values[name].strip()
    parameter = values.get(f"{name}_PARAM", "").strip()
    if not parameter:
        raise ConfigError(f"Missing required environment variable {name} or {name}_PARAM.")
    from aws_lambda_powertools.utilities import parameters

    value = parameters.get_parameter(parameter, decrypt=True, max_age=3600)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"The SSM parameter named by {name}_PARAM is empty.")
    return value


def optional(name: str, env: Mapping[str, str] | None = None) -> str | None:
    """The value of an optional variable, or None when unset or blank."""
    value = (os.environ if env is None else env).get(name, "").strip()
    return value or None


def low_balance_threshold(env: Mapping[str, str] | None = None) -> int:
    """LOW_BALANCE_THRESHOLD: the balance under which Balance Low fires for users who set none (0: off)."""
    raw = optional("LOW_BALANCE_THRESHOLD", env)
    if raw is None:
        return DEFAULT_LOW_BALANCE_THRESHOLD
    if not (raw.isascii() and raw.isdigit()) or int(raw) > MAX_AMOUNT:
        raise ConfigError("LOW_BALANCE_THRESHOLD must be an integer from 0 to 1000000000.")
    return int(raw)


def expiry_warning_days(env: Mapping[str, str] | None = None) -> int:
    """EXPIRY_WARNING_DAYS: how many days before a credit lot expires its credits are announced
    (Credits Expiring Soon, once per lot); 0 announces nothing. Every function that writes the ledger
    builds it with `ledger()`: the time an idle account is next due depends on it."""
    raw = optional("EXPIRY_WARNING_DAYS", env)
    if raw is None:
        return EXPIRY_WARNING_DAYS
    if not (raw.isascii() and raw.isdigit()) or int(raw) > MAX_EXPIRY_WARNING_DAYS:
        raise ConfigError(f"EXPIRY_WARNING_DAYS must be an integer from 0 to {MAX_EXPIRY_WARNING_DAYS}.")
    return int(raw)


def publish_usage_events(env: Mapping[str, str] | None = None) -> bool:
    """PUBLISH_USAGE_EVENTS: whether usage entries announce Credits Used ("true", the default; "false"
    for very high volume). Balance Low and Balance Negative are published either way."""
    raw = optional("PUBLISH_USAGE_EVENTS", env)
    if raw is None:
        return True
    if raw.lower() not in ("true", "false"):
        raise ConfigError('PUBLISH_USAGE_EVENTS must be "true" or "false".')
    return raw.lower() == "true"


def ledger(client: DynamoDBClient, table_name: str) -> Ledger:
    """The ledger as every function that writes it is configured: the default low-balance threshold
    (LOW_BALANCE_THRESHOLD) and how early expiring credits are announced (EXPIRY_WARNING_DAYS). One
    place, so that no function writes the ledger with other settings than the rest."""
    return Ledger(
        client,
        table_name,
        default_threshold=low_balance_threshold(),
        expiry_warning_days=expiry_warning_days(),
    )
