"""What every command shares: errors as one line and exit 2, never a traceback; amounts and times
as an operator reads them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from typing import Any, TypeVar

import click
import pydantic
from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

from credits.errors import CreditsError
from credits.store import AWS_ERRORS

F = TypeVar("F", bound=Callable[..., Any])


class Failed(click.ClickException):
    """The command could not run: one line on stderr, exit 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def aws_problem(exc: BaseException) -> str:
    """An AWS failure as the operator needs it: the service's code and message when it answered (no
    such table, no such stack, access denied), else botocore's own words (no credentials, no region)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        return f"AWS refused: {error.get('Code', 'error')}: {error.get('Message', '')}"
    return f"AWS: {exc}"


def one_line_errors(command: F) -> F:
    """Domain and AWS errors become one line and exit 2, never a traceback."""

    @wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except CreditsError as exc:
            # the store's StoreError or TemporarilyUnavailable for an AWS failure: say what AWS said
            cause = exc.__cause__
            raise Failed(aws_problem(cause) if isinstance(cause, AWS_ERRORS) else str(exc)) from None
        except AWS_ERRORS as exc:  # CloudFormation and SSM (--stack), or a client that cannot be made
            raise Failed(aws_problem(exc)) from None
        except GetParameterError as exc:  # STRIPE_SECRET_KEY_PARAM names a parameter SSM did not give
            raise Failed(f"SSM: {exc}") from None

    return run  # type: ignore[return-value]


def invalid(exc: pydantic.ValidationError) -> Failed:
    """The first problem pydantic found, as `field: message`."""
    problem = exc.errors(include_url=False)[0]
    return Failed(f"{'.'.join(str(p) for p in problem['loc'])}: {problem['msg']}")


def credits(n: int) -> str:
    return f"{n:,} credit" if abs(n) == 1 else f"{n:,} credits"


def when(moment: str | int) -> str:
    """An ISO 8601 time or Unix milliseconds, as UTC minutes."""
    if isinstance(moment, int):
        at = datetime.fromtimestamp(moment / 1000, UTC)
    else:
        at = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    return at.strftime("%Y-%m-%d %H:%M UTC")
