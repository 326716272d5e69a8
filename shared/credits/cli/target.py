"""Where the commands act: a deployed stack (--stack), the table CREDITS_TABLE_NAME names, or the
running `make dev` (the state file it leaves in its data folder); and the credits objects on it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import boto3
import click

from credits import config, keys
from credits.cli.common import Failed
from credits.ledger import DEFAULT_LOW_BALANCE_THRESHOLD, EXPIRY_WARNING_DAYS, Ledger
from credits.packages import Catalog
from credits.payments import Payments
from credits.store import DynamoStore

STATE_FILE = "stack.json"  # what `make dev` leaves in its data folder while it runs
DATA_DIR = ".local-data"  # make dev's default data folder, under the repository root
REPOSITORY = Path(__file__).resolve().parents[3]  # shared/credits/cli/target.py -> the checkout


@dataclass
class Target:
    """Where the commands act: a DynamoDB client, the credits table, and a line saying which."""

    client: Any
    table: str
    where: str
    stripe_api_base: str | None = None
    stripe_secret_key: str | None = None
    stripe_key_parameter: str | None = None  # --stack: the SSM SecureString the stack reads its key from
    session: Any = None
    low_balance_threshold: int = DEFAULT_LOW_BALANCE_THRESHOLD
    expiry_warning_days: int = EXPIRY_WARNING_DAYS

    def stripe(self) -> Any:
        """The Stripe adapter: make dev's emulator; with --stack, the secret key the stack itself uses
        (its SSM parameter, never a key that happens to be in the shell: another account's sessions
        must not be credited into this stack's table); else STRIPE_SECRET_KEY (or _PARAM)."""
        from credits.stripe_gateway import StripeGateway  # only the commands that talk to Stripe load it

        key = self.stripe_secret_key
        if self.stripe_key_parameter:
            answer = self.session.client("ssm").get_parameter(Name=self.stripe_key_parameter, WithDecryption=True)
            key = str(answer["Parameter"]["Value"])
        return StripeGateway.connect(key or config.secret("STRIPE_SECRET_KEY"), self.stripe_api_base)

    @cached_property
    def store(self) -> DynamoStore:
        """The table, for what the CLI reads itself (whether an account exists, the accounts listed)."""
        return DynamoStore(self.client, self.table)

    def ledger(self) -> Ledger:
        # the stack's LOW_BALANCE_THRESHOLD, so entries the CLI posts carry the threshold in force
        return Ledger(
            self.client,
            self.table,
            default_threshold=self.low_balance_threshold,
            expiry_warning_days=self.expiry_warning_days,
        )

    def catalog(self) -> Catalog:
        return Catalog(self.client, self.table)

    def payments(self, ledger: Ledger) -> Payments:
        return Payments(ledger, self.catalog(), self.client, self.table)

    def has_account(self, user: str) -> bool:
        return self.store.get((keys.user_pk(user), keys.ACCOUNT), attributes=("pk",)) is not None


def target_of(ctx: click.Context) -> Target:
    """The command's target, located once per run (the group's --stack and --region)."""
    found: Target = ctx.obj.get("target") or locate(ctx.obj["stack"], ctx.obj["region"])
    ctx.obj["target"] = found
    return found


def locate(stack: str | None, region: str | None) -> Target:
    """The stack to act on: --stack, else explicit variables, else the running `make dev`."""
    if stack:
        return _deployed(stack, region)
    if os.environ.get("CREDITS_TABLE_NAME"):
        return _configured()
    return _make_dev()


def _deployed(stack: str, region: str | None) -> Target:
    """A deployed stack: the table from its outputs, its Stripe key parameter and threshold."""
    session = boto3.session.Session(region_name=region)
    answer = session.client("cloudformation").describe_stacks(StackName=stack)
    outputs = {o["OutputKey"]: o["OutputValue"] for o in answer["Stacks"][0].get("Outputs", [])}
    if "CreditsTableName" not in outputs:
        raise Failed(f"stack {stack} has no CreditsTableName output: is it this project's stack?")
    parameters = {p["ParameterKey"]: p.get("ParameterValue") for p in answer["Stacks"][0].get("Parameters", [])}
    found = Target(session.client("dynamodb"), outputs["CreditsTableName"], f"stack {stack}")
    found.stripe_key_parameter = parameters.get("StripeSecretKeyParam")
    found.session = session
    found.low_balance_threshold = config.low_balance_threshold(
        {"LOW_BALANCE_THRESHOLD": parameters.get("LowBalanceThreshold") or ""}
    )
    found.expiry_warning_days = config.expiry_warning_days(
        {"EXPIRY_WARNING_DAYS": parameters.get("ExpiryWarningDays") or ""}
    )
    return found


def _configured() -> Target:
    """CREDITS_TABLE_NAME (and the usual AWS variables)."""
    from credits.aws import dynamodb_client

    table = config.require("CREDITS_TABLE_NAME")
    found = Target(dynamodb_client(), table, f"table {table}", config.optional("STRIPE_API_BASE"))
    found.low_balance_threshold = config.low_balance_threshold()
    found.expiry_warning_days = config.expiry_warning_days()
    return found


def _make_dev() -> Target:
    """The running `make dev`, from the state file it keeps while it runs."""
    path = _dev_state()
    if path is None:
        raise Failed(
            "no stack to act on: start `make dev` (the CLI finds it), or pass --stack NAME, or set CREDITS_TABLE_NAME"
        )
    try:
        state = json.loads(path.read_text())
        pid = int(state["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        raise Failed(f"cannot read make dev's state in {path}: restart `make dev`") from None
    if not _alive(pid):
        raise Failed(f"make dev is not running (its last state is in {path}): start it with `make dev`")
    client = boto3.client(
        "dynamodb",
        endpoint_url=state["dynamodbEndpoint"],
        region_name=state["region"],
        aws_access_key_id="local",
        aws_secret_access_key="local",  # noqa: S106 - DynamoDB Local's, not a secret
    )
    stripe = state.get("stripe") or {}
    found = Target(
        client, state["creditsTable"], f"make dev at {state['api']}", stripe.get("apiBase"), stripe.get("secretKey")
    )
    found.low_balance_threshold = config.low_balance_threshold(
        {"LOW_BALANCE_THRESHOLD": str(state.get("lowBalanceThreshold", ""))}
    )
    found.expiry_warning_days = config.expiry_warning_days(
        {"EXPIRY_WARNING_DAYS": str(state.get("expiryWarningDays", ""))}
    )
    return found


def _dev_state() -> Path | None:
    """make dev's state file: under DEV_DATA_DIR when set, else .local-data/ of the repository that
    holds the working directory (or, failing that, of the repository this code is in)."""
    if os.environ.get("DEV_DATA_DIR"):
        path = Path(os.environ["DEV_DATA_DIR"]) / STATE_FILE
        return path if path.is_file() else None
    for folder in [Path.cwd(), *Path.cwd().parents, REPOSITORY]:
        if (folder / DATA_DIR / STATE_FILE).is_file():
            return folder / DATA_DIR / STATE_FILE
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
