"""SigV4 for the local gateway's IAM routes: the check API Gateway makes before an `AWS_IAM` route runs.

A request is accepted only if its `Authorization` header is an AWS Signature Version 4 made with
the gateway's local key for the service `execute-api` in the gateway's region (a signature scoped to
another region or service is refused, as API Gateway refuses it), its `X-Amz-Date` is within
15 minutes of now, and the signature verifies over the method, path, query, the signed headers and
the SHA-256 of the body. The canonical request and the signature are recomputed by botocore's own
signer (what every AWS SDK for Python signs with) from the headers the client signed, and only those.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, HTTPHeaders
from botocore.credentials import Credentials

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "execute-api"
MAX_SKEW = timedelta(minutes=15)
TIMESTAMP = "%Y%m%dT%H%M%SZ"  # X-Amz-Date, e.g. 20240131T235959Z

# Who an accepted request is, in the shape of API Gateway's `requestContext.authorizer.iam`.
ACCOUNT_ID = "000000000000"
USER_ID = "AIDALOCALSERVICE0000"
USER_ARN = f"arn:aws:iam::{ACCOUNT_ID}:user/local-service"


class Rejected(Exception):
    """Why a request was refused (the gateway answers 403 whatever the reason, as AWS does)."""


@dataclass(frozen=True)
class Caller:
    """The signer of an accepted request."""

    access_key: str
    region: str  # the region of the credential scope (the gateway's)

    def authorizer(self) -> dict[str, object]:
        """`requestContext.authorizer` of a payload 2.0 event for this caller."""
        return {
            "iam": {
                "accessKey": self.access_key,
                "accountId": ACCOUNT_ID,
                "callerId": USER_ID,
                "cognitoIdentity": None,
                "principalOrgId": None,
                "userArn": USER_ARN,
                "userId": USER_ID,
            }
        }


class _SignedHeadersOnly(SigV4Auth):
    """botocore's signer, canonicalising exactly the headers the client listed in SignedHeaders
    (on its own, botocore picks every header but a few, and adds `host` when missing)."""

    def __init__(self, credentials: Credentials, region: str, signed: list[str]) -> None:
        super().__init__(credentials, SERVICE, region)
        self.signed = signed

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        chosen = HTTPHeaders()
        for name in self.signed:
            chosen[name] = request.headers[name]
        return chosen


def _same(a: str, b: str) -> bool:
    """Constant-time equality of two texts (compare_digest takes only ASCII str, so compare bytes)."""
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass"))


def _parse_authorization(header: str) -> tuple[list[str], list[str], str]:
    """The credential scope parts, signed header names and signature of
    `AWS4-HMAC-SHA256 Credential=KEY/DATE/REGION/SERVICE/aws4_request, SignedHeaders=a;b, Signature=hex`."""
    algorithm, _, rest = header.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise Rejected(f"not a {ALGORITHM} Authorization header")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, _, value = part.strip().partition("=")
        fields[name] = value
    if not all(fields.get(name) for name in ("Credential", "SignedHeaders", "Signature")):
        raise Rejected("the Authorization header lacks Credential, SignedHeaders or Signature")
    return fields["Credential"].split("/"), fields["SignedHeaders"].lower().split(";"), fields["Signature"]


def _check_scope(scope: list[str], access_key: str, region: str | None) -> tuple[str, str, str]:
    """The access key id, date and region of a credential scope that is ours: our key, for
    `execute-api` (in `region`, when given); else Rejected."""
    if len(scope) != 5:
        raise Rejected("malformed credential scope")
    key_id, scope_date, scope_region, service, terminator = scope
    if not _same(key_id, access_key):
        raise Rejected("unknown access key id")
    if service != SERVICE or terminator != "aws4_request" or not scope_region:
        raise Rejected(f"the credential scope is not for {SERVICE}")
    if region is not None and scope_region != region:
        raise Rejected(f"the credential scope is not for {region}, the region this API is in")
    return key_id, scope_date, scope_region


def _check_date(stamp: str, scope_date: str, now: datetime) -> None:
    """X-Amz-Date is well formed, the credential scope's date, and within MAX_SKEW of now; else Rejected."""
    try:
        signed_at = datetime.strptime(stamp, TIMESTAMP).replace(tzinfo=UTC)
    except ValueError:
        raise Rejected("X-Amz-Date missing or malformed") from None
    if scope_date != stamp[:8]:
        raise Rejected("the credential scope's date is not the X-Amz-Date's")
    if abs(now - signed_at) > MAX_SKEW:
        raise Rejected("X-Amz-Date is more than 15 minutes from now")


def _check_signed_headers(signed: list[str], headers: Mapping[str, str], body: bytes) -> None:
    """The host and the date are under the signature, every signed header is here, and a claimed
    body hash is the body's; else Rejected."""
    if not {"host", "x-amz-date"} <= set(signed):
        raise Rejected("host and x-amz-date must be signed")
    missing = [name for name in signed if name not in headers]
    if missing:
        raise Rejected(f"signed headers missing from the request: {', '.join(missing)}")
    # botocore takes X-Amz-Content-SHA256, when sent, as the body's hash without computing it, so
    # make sure it is the body's (which also refuses UNSIGNED-PAYLOAD).
    claimed = headers.get("x-amz-content-sha256")
    if claimed is not None and not _same(claimed, hashlib.sha256(body).hexdigest()):
        raise Rejected("X-Amz-Content-SHA256 is not the body's hash")


def verify(
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    credentials: tuple[str, str],
    region: str | None = None,
    now: datetime | None = None,
) -> Caller:
    """The caller of a request signed with `credentials` (access key id, secret) for `execute-api`
    in `region` (the gateway's), else Rejected. `region=None` takes a signature for any region: only
    to check what a client signs, never for a gateway.

    `path` and `query` are as they came on the wire (still percent-encoded); `headers` have
    lower-case names.
    """
    access_key, secret_key = credentials
    authorization = headers.get("authorization")
    if not authorization:
        raise Rejected("unsigned")
    scope, signed, signature = _parse_authorization(authorization)
    key_id, scope_date, scope_region = _check_scope(scope, access_key, region)
    stamp = headers.get("x-amz-date", "")
    _check_date(stamp, scope_date, now or datetime.now(UTC))
    _check_signed_headers(signed, headers, body)

    url = f"http://{headers['host']}{path}" + (f"?{query}" if query else "")
    request = AWSRequest(method=method, url=url, headers={name: headers[name] for name in signed}, data=body)
    request.context["timestamp"] = stamp  # sign as of the client's date, not now
    signer = _SignedHeadersOnly(Credentials(access_key, secret_key), scope_region, signed)
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    if not _same(expected, signature):
        raise Rejected("the signature does not match (wrong secret, or a changed request)")
    return Caller(key_id, scope_region)
