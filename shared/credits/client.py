"""A client of the `/internal` routes for any Python service, signed with SigV4 (IAM on AWS).

    from credits.client import CreditsClient
    client = CreditsClient("https://abc123.execute-api.eu-west-1.amazonaws.com", region="eu-west-1")
    client.grant("alice", 100, description="welcome")
    client.grant("alice", 50, description="Spring promotion", category="promotional", expires_in_days=30)
    client.charge("alice", action="search", description="search", idempotency_key="search-7f3a")
    with client.hold("alice", amount=10, description="report") as held:
        held.use(make_report())  # optional: capture what the work cost (default: all of the hold)

Requests are signed by botocore for `execute-api` with the caller's normal AWS credentials (the
environment, a profile, the Lambda role...), unless `credentials` are given. Errors come back as the
domain's exceptions (`credits.errors`) by the answer's error code; a request API Gateway refused
(403 without an error code: unsigned, unknown key, a bad signature, no IAM permission) is
`Forbidden`, and any other failure a `CreditsClientError`.

The client never retries. Retrying a charge, grant or reserve with the same `idempotency_key` is
safe: it is applied once and the answer replayed (`replayed=True` on the result).
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import botocore.session
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from credits.errors import ERRORS_BY_CODE, CreditsError, InsufficientCredits, ValidationError

logger = logging.getLogger(__name__)

# Error code -> exception class: each error's one stable code (`internal_error` is InternalError).
EXCEPTIONS_BY_CODE: dict[str, type[CreditsError]] = ERRORS_BY_CODE


class CreditsClientError(Exception):
    """The API could not be reached or answered outside its contract (no domain error code)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Forbidden(CreditsClientError):
    """API Gateway refused the request (403): unsigned, unknown key, bad signature or no permission."""


# ---- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Charge:
    """POST /internal/credits/use: what was charged and the balance after it."""

    transaction_id: str
    charged: int
    balance: int
    replayed: bool = False


@dataclass(frozen=True)
class Grant:
    """POST /internal/credits/grant: the entry and the balance after it."""

    transaction_id: str
    balance: int
    replayed: bool = False


@dataclass(frozen=True)
class Hold:
    """POST /internal/credits/holds: credits set aside until captured, released or expired."""

    hold_id: str
    amount: int
    expires_at: str  # ISO 8601 UTC
    balance: int
    available: int
    replayed: bool = False


@dataclass(frozen=True)
class Capture:
    """A captured hold: the usage entry (None when nothing was charged) and the balance after it."""

    transaction_id: str | None
    charged: int
    balance: int
    available: int
    replayed: bool = False  # the same capture again: answered as the first time, charged once


@dataclass(frozen=True)
class Release:
    """A released hold: the credits set free and the balance."""

    released: int
    balance: int
    available: int
    replayed: bool = False


class OpenHold:
    """The hold of a `with client.hold(...)` block. `use(n)` inside the block captures n instead of
    the whole hold on exit; after the block, `captured` (or `released`) is the result."""

    def __init__(self, hold: Hold) -> None:
        self.hold = hold
        self.used: int | None = None  # None: capture all of it
        self.captured: Capture | None = None
        self.released: Release | None = None

    @property
    def hold_id(self) -> str:
        return self.hold.hold_id

    @property
    def amount(self) -> int:
        return self.hold.amount

    def use(self, amount: int) -> None:
        """Capture `amount` (0 to the hold's amount; 0 charges nothing) when the block ends normally."""
        if isinstance(amount, bool) or not isinstance(amount, int) or not 0 <= amount <= self.hold.amount:
            raise ValueError(f"use() takes an integer from 0 to {self.hold.amount}, not {amount!r}")
        self.used = amount


# ---- the client ------------------------------------------------------------------------------


def _fields(**values: Any) -> dict[str, Any]:
    """A JSON body without the fields left out (None)."""
    return {key: value for key, value in values.items() if value is not None}


def _instant(value: datetime | str | None) -> str | None:
    """A time as the API takes it: ISO 8601 in UTC (`Z`). A datetime must say its time zone."""
    if not isinstance(value, datetime):
        return value
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("expires_at needs a time zone: datetime(..., tzinfo=UTC), not a naive datetime")
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class CreditsClient:
    """The `/internal` routes of one deployment (its `ApiUrl` output, or the local gateway's address)."""

    def __init__(
        self,
        api_url: str,
        *,
        region: str = "us-east-1",
        credentials: Credentials | None = None,
        timeout: float = 10.0,
    ) -> None:
        if not api_url.startswith(("https://", "http://")):
            raise ValueError(f"api_url must be an http(s) URL, not {api_url!r}")
        if credentials is None:
            credentials = botocore.session.Session().get_credentials()
        if credentials is None:
            raise CreditsClientError(
                "No AWS credentials to sign with: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile, "
                "or a role, or pass credentials=botocore.credentials.Credentials(key, secret)."
            )
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self._signer = SigV4Auth(credentials, "execute-api", region)

    def charge(
        self,
        user_id: str,
        *,
        amount: int | None = None,
        action: str | None = None,
        description: str,
        reference_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> Charge:
        """Charge `amount` credits, or the price of `action`; InsufficientCredits when they are not there."""
        body = _fields(userId=user_id, amount=amount, action=action, description=description, referenceId=reference_id)
        data, replayed = self._post("/internal/credits/use", body, idempotency_key)
        return Charge(data["transactionId"], data["charged"], data["balance"], replayed)

    def grant(
        self,
        user_id: str,
        amount: int,
        *,
        type: str = "gift",  # the API's name: "gift" or "adjustment"
        description: str,
        reference_id: str | None = None,
        idempotency_key: str | None = None,
        category: str | None = None,
        priority: int | None = None,
        expires_at: datetime | str | None = None,
        expires_in_days: int | None = None,
    ) -> Grant:
        """Add credits: a `gift` or an `adjustment`, to a lot with these terms (none given: paid
        credits that never expire). `category` "paid" or "promotional"; `priority` 0-100 (lower
        spends first; default paid 50, promotional 10); an expiry, either `expires_at` (a datetime
        with its time zone, or ISO 8601 text such as "2027-01-03T00:00:00Z") or `expires_in_days`
        (1-3650), never both. The server checks them (ValidationError)."""
        if expires_at is not None and expires_in_days is not None:
            raise ValueError("give at most one of expires_at and expires_in_days")
        body = _fields(
            userId=user_id,
            amount=amount,
            type=type,
            description=description,
            referenceId=reference_id,
            category=category,
            priority=priority,
            expiresAt=_instant(expires_at),
            expiresInDays=expires_in_days,
        )
        data, replayed = self._post("/internal/credits/grant", body, idempotency_key)
        return Grant(data["transactionId"], data["balance"], replayed)

    def reserve(
        self,
        user_id: str,
        *,
        amount: int | None = None,
        action: str | None = None,
        description: str,
        ttl_seconds: int | None = None,
        idempotency_key: str | None = None,
    ) -> Hold:
        """Set credits aside (a hold) until `capture` or `release`, or until it expires (server default 300 s)."""
        body = _fields(userId=user_id, amount=amount, action=action, description=description, ttlSeconds=ttl_seconds)
        data, replayed = self._post("/internal/credits/holds", body, idempotency_key)
        return Hold(data["holdId"], data["amount"], data["expiresAt"], data["balance"], data["available"], replayed)

    def capture(self, user_id: str, hold_id: str, amount: int | None = None) -> Capture:
        """Charge `amount` of a hold (default: all of it) and end it; the rest is set free."""
        path = f"/internal/credits/holds/{quote(hold_id, safe='')}/capture"
        data, replayed = self._post(path, _fields(userId=user_id, amount=amount))
        return Capture(data["transactionId"], data["charged"], data["balance"], data["available"], replayed)

    def release(self, user_id: str, hold_id: str) -> Release:
        """End a hold without charging anything."""
        path = f"/internal/credits/holds/{quote(hold_id, safe='')}/release"
        data, replayed = self._post(path, {"userId": user_id})
        return Release(data["released"], data["balance"], data["available"], replayed)

    @contextmanager
    def hold(
        self,
        user_id: str,
        *,
        amount: int | None = None,
        action: str | None = None,
        description: str,
        ttl_seconds: int | None = None,
        idempotency_key: str | None = None,
    ) -> Iterator[OpenHold]:
        """Reserve, run the block, then capture (all of the hold, or what `use(n)` said) if the block
        ends normally, or release if it raises. The block's exception always propagates: a release
        that fails too is logged (the hold then expires by itself, charging nothing). A capture that
        fails raises its error; the hold then expires by itself too."""
        opened = OpenHold(
            self.reserve(
                user_id,
                amount=amount,
                action=action,
                description=description,
                ttl_seconds=ttl_seconds,
                idempotency_key=idempotency_key,
            )
        )
        try:
            yield opened
        except BaseException:
            try:
                opened.released = self.release(user_id, opened.hold_id)
            except Exception:
                logger.exception("Could not release hold %s of %s; it expires by itself", opened.hold_id, user_id)
            raise
        opened.captured = self.capture(user_id, opened.hold_id, opened.used)

    # ---- HTTP ----------------------------------------------------------------------------------

    def _post(self, path: str, body: Mapping[str, Any], idempotency_key: str | None = None) -> tuple[Any, bool]:
        """POST a signed JSON body; the decoded answer and whether it was an idempotent replay."""
        headers = {"Content-Type": "application/json"}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        url, data = self.api_url + path, json.dumps(body).encode()
        signed = AWSRequest("POST", url, headers, data)
        self._signer.add_auth(signed)  # adds X-Amz-Date and Authorization (and a session token, if any)
        # api_url is http(s), checked in __init__.
        request = urllib.request.Request(url, data, dict(signed.headers.items()), method="POST")  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                raw, status = response.read(), response.status
                replayed = response.headers.get("Idempotent-Replayed", "").lower() == "true"
        except urllib.error.HTTPError as err:
            with err:
                raise _error(err.code, err.read()) from None
        except (OSError, http.client.HTTPException) as exc:
            # The request may or may not have been applied: retry with the same idempotency key.
            raise CreditsClientError(f"POST {path} failed: {exc}") from exc
        try:
            return json.loads(raw), replayed
        except ValueError:
            raise CreditsClientError(f"POST {path} answered {status} with a body that is not JSON", status) from None


def _error(status: int, raw: bytes) -> Exception:
    """The exception for an error answer: the domain's by error code, else Forbidden or CreditsClientError."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        message = body.get("message") if isinstance(body, dict) else None
        text = message if isinstance(message, str) else raw[:200].decode("utf-8", "replace")
        if status == 403:
            return Forbidden(f"Forbidden by the API (403): {text}", status)
        return CreditsClientError(f"HTTP {status}: {text}", status)
    code, message = error.get("code"), str(error.get("message", ""))
    cls = EXCEPTIONS_BY_CODE.get(code) if isinstance(code, str) else None
    if cls is None:
        return CreditsClientError(f"HTTP {status} {code}: {message}", status)
    if issubclass(cls, InsufficientCredits):
        return cls(error["required"], error["balance"], error.get("available"))
    if issubclass(cls, ValidationError):
        return cls(message, error.get("errors"))
    if cls.__init__ is CreditsError.__init__:  # takes the message only
        return cls(message)
    # A constructor of its own (UnknownAction(action), ...): the server's message, and its details as
    # attributes (`packageId` -> `package_id`).
    exc = cls.__new__(cls)
    CreditsError.__init__(exc, message)
    for key, value in error.items():
        if key not in ("code", "message"):
            setattr(exc, re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower(), value)
    return exc
