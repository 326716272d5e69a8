"""A local stand-in for API Gateway and the webhook's Function URL (for `make dev` and the tests).

Routes and their functions are read from template.yaml, so nothing is listed twice (a function
behind a CloudFormation Condition is served too). A `{name}` segment of a route's path matches one
path segment; an exact route wins over a templated one. Each request becomes the payload 2.0 event
the deployed function would receive, with its `pathParameters`. The gateway's own paths (below) are
a table too (`local_routes`: method and path to the handler's method), matched first. A request no
route takes, whatever its method (HEAD, TRACE, QUERY or a made-up one), is answered as API Gateway
answers it: `404 {"message": "Not Found"}`, never the standard library's HTML 501; OPTIONS is a CORS
preflight, which API Gateway answers itself (204).

JWT routes need a token that this gateway signed at `POST /local/sign-in` (a LOCAL-ONLY stand-in
for the JWT authorizer). IAM routes (`/internal/*`) need an AWS Signature Version 4 made with the
gateway's local key (`iam_credentials`, local.sigv4), as API Gateway checks a caller's IAM
signature; without a local key they are refused, as they are to a browser on AWS. The page in web/
is served at `/`, the API's contract (docs/openapi.yaml) at `/openapi.yaml` and a reference to read at
`/docs`. `GET /local/notifications` (LOCAL-ONLY, with a local token) answers the signed-in
user's events from the local EventBridge (local.eventbridge), newest first, for the page to show.
Given the local Stripe emulator's URL (`stripe_emulator_url`), `GET /local/stripe/payments` and
`POST /local/stripe/payments/{sessionId}/{action}` (LOCAL-ONLY, with a local token) are the page's
test tools: the signed-in user's own payments at the emulator, and its control actions on them.

Each function runs in its own container PROCESSES (local.containers), one invocation at a time
each, as on Lambda: never as threads of this server, whose handlers would share Powertools'
resolver state and read each other's requests.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import hmac
import json
import mimetypes
import os
import re
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from credits.ledger import MAX_KEY_BYTES, key_problem
from local.containers import ContainerError, ContainerPool, InvocationError, Runtime
from local.handlers import LocalContext as LocalContext  # re-exported: tests.support imports it from here
from local.handlers import load_handler as load_handler  # re-exported, as LocalContext
from local.serving import BackgroundServer
from local.sigv4 import Rejected, verify
from local.template import (
    ROOT,
    STACK,
    Route,
    TeamTemplate,
    TemplateError,
    exports,
    function_variables,
    functions,
    http_functions,
    load,
    match_route,
    routes,
    team_template,
)

if TYPE_CHECKING:
    from local.eventbridge import LocalEventBridge

WEBHOOK_PATH = "/webhook"
# The API's contract and a readable reference of it (Swagger UI from npm's swagger-ui-dist, pinned in
# package.json, served from node_modules: no CDN), as `make dev` serves them; and the page's one
# third-party script, Chart.js's UMD build (npm's chart.js, pinned the same way) for its usage chart.
OPENAPI_SPEC = ROOT / "docs" / "openapi.yaml"
API_DOCS = {
    "/docs/": ROOT / "local" / "docs" / "index.html",
    "/docs/api-docs.js": ROOT / "local" / "docs" / "api-docs.js",
    "/docs/swagger-ui.css": ROOT / "node_modules" / "swagger-ui-dist" / "swagger-ui.css",
    "/docs/swagger-ui-bundle.js": ROOT / "node_modules" / "swagger-ui-dist" / "swagger-ui-bundle.js",
    "/vendor/chart.umd.js": ROOT / "node_modules" / "chart.js" / "dist" / "chart.umd.js",
}
ISSUER = "credits-local"
AUDIENCE = "credits-local-web"
TOKEN_TTL_SECONDS = 12 * 3600
# A local user name is the `sub` of its tokens, so the sign-in takes exactly the user ids every route
# takes (credits.http.user_id checks `sub` with credits.ledger.validate_token): 1 to 255 bytes (UTF-8)
# of printable characters.
USER_NAME_RULE = f"1 to {MAX_KEY_BYTES} bytes (UTF-8) of printable characters"
NOTIFICATIONS = 20  # the most /local/notifications answers
EVENT_SOURCE = "credits"
# LOCAL-ONLY Stripe test tools (/local/stripe/payments): the emulator's control actions a user may run
# on their own payments, how many payments are listed, and how long an action (its webhooks) may take.
STRIPE_ACTIONS = frozenset({"async_succeed", "async_fail", "refund", "dispute", "close_dispute"})
STRIPE_PAYMENTS = 10
# The page's "Next auto top-up: pays / is declined / needs authentication" control: the emulator's
# /_emulator/next_off_session_payment (what its next off-session PaymentIntent does), passed through.
NEXT_OFF_SESSION_PATH = "/local/stripe/next_off_session_payment"
NEXT_OFF_SESSION_OUTCOMES = frozenset({"succeed", "decline", "insufficient_funds", "authentication_required", "card"})
STRIPE_TIMEOUT = 60.0
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# After answering an error before the request was read in full (a URI or header too long, a bad
# request line), the rest the client still sends is read and dropped for this long, at most this
# much, before the connection is closed: closing with unread data resets it, and a client still
# sending would never read the answer.
LINGER_SECONDS = 5.0
LINGER_BYTES = 64 * 1024 * 1024
# Paths the gateway answers itself, before any route: a team's route may not take them.
GATEWAY_PATHS = re.compile(r"^/(webhook|local(/.*)?|docs(/.*)?|openapi\.yaml)$")
# Our functions' settings a team's function does not get on AWS (nor here): every Variables name of
# template.yaml, and the Stripe settings make dev gives our functions, less the local log level.
OUR_STRIPE_SETTINGS = frozenset({"STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET", "STRIPE_API_BASE"})
LOCAL_SETTINGS = frozenset({"POWERTOOLS_LOG_LEVEL"})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class LocalTokens:
    """HS256 JWTs for the local sign-in; never used outside `make dev` and the tests."""

    def __init__(self, secret: str) -> None:
        self.secret = secret.encode()

    def issue(self, user: str, now: float | None = None) -> str:
        issued = int(now if now is not None else time.time())
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        claims = {"sub": user, "iss": ISSUER, "aud": AUDIENCE, "iat": issued, "exp": issued + TOKEN_TTL_SECONDS}
        body = _b64(json.dumps(claims).encode())
        signature = hmac.new(self.secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
        return f"{header}.{body}.{_b64(signature)}"

    def verify(self, token: str) -> dict[str, Any] | None:
        """The claims of a valid, unexpired token of ours, else None."""
        try:
            header, body, signature = token.split(".")
            expected = hmac.new(self.secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
            if not hmac.compare_digest(expected, _unb64(signature)):
                return None
            claims: dict[str, Any] = json.loads(_unb64(body))
        except (ValueError, json.JSONDecodeError):
            return None
        if claims.get("iss") != ISSUER or claims.get("aud") != AUDIENCE or claims.get("exp", 0) < time.time():
            return None
        return claims


def _shape(path: str) -> str:
    """A route's path with its parameters unnamed: /a/{x} and /a/{y} are one route to API Gateway."""
    return re.sub(r"\{[^}/]*\}", "{}", path)


def _linger(connection: socket.socket) -> None:
    """Read and drop what the client still sends (until it closes, LINGER_SECONDS or LINGER_BYTES),
    our answer having been sent and our side shut: a "lingering close"."""
    with contextlib.suppress(OSError):  # a reset, or the time is up (TimeoutError)
        connection.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + LINGER_SECONDS
        dropped = 0
        while dropped < LINGER_BYTES and (left := deadline - time.monotonic()) > 0:
            connection.settimeout(left)
            chunk = connection.recv(65536)
            if not chunk:
                return
            dropped += len(chunk)


def _printable(text: str) -> str:
    """A log line as it may be printed: control characters (from a request line) escaped."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def _event(
    route_key: str, method: str, path: str, query: str, headers: dict[str, str], body: bytes, *, account: str, api: str
) -> dict[str, Any]:
    """The payload 2.0 shape API Gateway and Function URLs share (a body, if any, base64-encoded)."""
    now = datetime.now(UTC)
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "rawQueryString": query,
        "headers": headers,
        "requestContext": {
            "accountId": account,
            "apiId": api,
            "domainName": headers.get("host", "localhost"),
            "domainPrefix": api,
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": headers.get("user-agent", ""),
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": route_key,
            "stage": "$default",
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now.timestamp() * 1000),
        },
        "isBase64Encoded": bool(body),
    }
    if body:
        event["body"] = base64.b64encode(body).decode()
    return event


def _error(code: str, message: str) -> dict[str, Any]:
    """The API's error body."""
    return {"error": {"code": code, "message": message}}


class _Refused(ValueError):
    """A test action's body that is refused (400), with the API's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _action_params(action: str, body: bytes) -> dict[str, Any]:
    """The emulator's parameters for a test action, from the page's JSON body: a refund's `amount`
    (optional, a positive whole number), a closed dispute's `status` (won or lost)."""
    try:
        given = json.loads(body or b"{}")
    except ValueError:
        given = None
    if not isinstance(given, dict):
        raise _Refused("invalid_json", "The body must be a JSON object.")
    params: dict[str, Any] = {}
    if action == "refund" and given.get("amount") is not None:
        amount = given["amount"]
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 1:
            raise _Refused("validation_error", "amount: a positive whole number.")
        params["amount"] = amount
    if action == "close_dispute":
        if given.get("status") not in ("won", "lost"):
            raise _Refused("validation_error", "status: won or lost.")
        params["status"] = given["status"]
    return params


class Gateway:
    """The HTTP server: API routes, the webhook URL, local sign-in and the static page."""

    def __init__(
        self,
        *,
        token_secret: str,
        web_dir: Path | None = ROOT / "web",
        host: str = "127.0.0.1",
        port: int = 0,
        page_config: dict[str, Any] | None = None,
        containers_per_function: int = 8,
        iam_credentials: tuple[str, str] | None = None,
        event_bridge: LocalEventBridge | None = None,
        stripe_emulator_url: str | None = None,
        region: str = "us-east-1",
        request_log: Callable[[str], None] | None = None,
        templates: Sequence[Path] = (),
        credits_table: str | None = None,
    ) -> None:
        """`templates`: teams' SAM templates whose HttpApi functions are served beside ours, wired to
        `credits_table` (default: CREDITS_TABLE_NAME) as their `!ImportValue credits-CreditsTableName`
        (`team_templates`); TemplateError if one cannot be served."""
        self.tokens = LocalTokens(token_secret)
        # Given, one line per request: method, path, status, milliseconds and the user when known
        # (`make dev` prints them). A client that went away mid-answer is one such line, no traceback.
        self.request_log = request_log
        # The local Stripe emulator's base URL: the page's test tools act on the signed-in user's own
        # Checkout Sessions through /local/stripe/payments. None (real Stripe, AWS): no such routes.
        self.stripe_emulator_url = stripe_emulator_url.rstrip("/") if stripe_emulator_url else None
        self.event_bridge = event_bridge  # where /local/notifications reads the events; None: no such route
        # (access key id, secret access key) that IAM routes accept SigV4 signatures of; None refuses all.
        self.iam_credentials = iam_credentials
        # The region this API is in: IAM routes accept signatures for `execute-api` in it only.
        self.region = region
        self.web_dir = web_dir
        template = load()
        self.routes: dict[tuple[str, str], Route] = {(r.method, r.path): r for r in routes(template)}
        # Every function served over HTTP (the webhook has no route: it is the Function URL). One a
        # stream invokes (events) is not the gateway's: local.streams feeds it.
        served = http_functions(template)
        self.pools = {
            name: ContainerPool(name, limit=containers_per_function, code=code)
            for name, code in sorted(functions(template).items())
            if name in served
        }
        self.teams = self._team_templates(template, templates, credits_table, containers_per_function)
        self.page_config = page_config or {}
        # The paths the gateway answers itself (before the template's routes), for this configuration.
        self.local_routes = local_routes(
            notifications=event_bridge is not None, stripe_tools=self.stripe_emulator_url is not None
        )
        self._serving = BackgroundServer((host, port), self._handler_class(), name="gateway")  # bound now
        self.server = self._serving.server

    def _team_templates(
        self, ours: dict[str, Any], paths: Sequence[Path], credits_table: str | None, limit: int
    ) -> list[TeamTemplate]:
        """Each team template's routes and a container pool per function (keyed by its code folder,
        so a team's `reports` never meets another's); a route that clashes with one already served
        (ours, the gateway's own paths, another template's) is a TemplateError naming both."""
        table = credits_table or os.environ.get("CREDITS_TABLE_NAME")
        local = {
            f"{STACK}-CreditsTableName": table,
            f"{STACK}-EventBusName": os.environ.get("EVENT_BUS_NAME"),
        }
        imports = {name: local.get(name) for name in exports(ours)}  # the layer and the policy: nothing to give
        unset = (function_variables(ours) | OUR_STRIPE_SETTINGS) - LOCAL_SETTINGS
        owners = {(method, _shape(path)): f"{method} {path} (template.yaml)" for method, path in self.routes}
        teams: list[TeamTemplate] = []
        for path in paths:
            team = team_template(Path(path), imports, region=self.region)
            by_name = {f.name: f for f in team.functions}
            for route in team.routes:
                if route.function not in by_name:
                    continue
                here = f"{route.method} {route.path} ({team.path})"
                if GATEWAY_PATHS.match(route.path):
                    raise TemplateError(f"{here}: the local gateway serves {route.path} itself; pick another path")
                clash = owners.get((route.method, _shape(route.path)))
                if clash is not None:
                    raise TemplateError(f"{here} clashes with {clash}: one route, two functions")
                owners[(route.method, _shape(route.path))] = here
                function = by_name[route.function]
                served = Route(route.method, route.path, function.code, route.auth, function.code)
                self.routes[(route.method, route.path)] = served
            for function in team.functions:
                runtime = Runtime(function.handler, function.environment, unset)
                pool = ContainerPool(function.name, limit=limit, code=function.code, runtime=runtime)
                self.pools[function.code] = pool
            teams.append(team)
        return teams

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self, *, warm: bool = True) -> str:
        # Cold starts now, in parallel, so a missing setting fails at start-up, naming it. Two warm
        # containers per function: a page asks for its balance and its history at once. Without
        # `warm` a function's first container starts with its first request (tests that use one).
        if warm:
            with ThreadPoolExecutor(len(self.pools)) as pool:
                list(pool.map(lambda p: p.warm(2), self.pools.values()))  # re-raises a failed cold start
        self._serving.start()
        return self.base_url

    def stop(self) -> None:
        """Stop serving (if it serves: a gateway never started stops too) and close every container."""
        self._serving.stop()
        for pool in self.pools.values():
            pool.close()

    def invoke(self, function: str, event: dict[str, Any]) -> dict[str, Any]:
        """One invocation in one of the function's containers. A function that raises or dies is
        answered as AWS answers it: 500 from the HTTP API, 502 from a Function URL (the webhook)."""
        try:
            return self.pools[function].invoke(event)
        except (ContainerError, InvocationError):
            status = 502 if event.get("routeKey") == "$default" else 500
            body = json.dumps({"message": "Internal Server Error"})
            return {"statusCode": status, "headers": {"Content-Type": "application/json"}, "body": body}

    def notifications(self, user: str, limit: int = NOTIFICATIONS) -> list[dict[str, Any]]:
        """The user's events on the local bus, newest first, each once however often it was
        delivered (events are delivered at least once; `detail.eventId` names the fact)."""
        assert self.event_bridge is not None
        seen: set[str] = set()
        found: list[dict[str, Any]] = []
        for event in self.event_bridge.events(user_id=user):
            event_id = str(event["detail"].get("eventId") or event["id"])
            if event["source"] != EVENT_SOURCE or event_id in seen:
                continue
            seen.add(event_id)
            found.append(
                {"id": event_id, "detailType": event["detail-type"], "detail": event["detail"], "time": event["time"]}
            )
        return found[::-1][:limit]

    def stripe_payments(self, user: str, limit: int = STRIPE_PAYMENTS) -> list[dict[str, Any]]:
        """The user's payments at the local Stripe emulator (their Checkout Sessions that were paid or
        submitted, newest first), each with the control actions that apply to it now."""
        status, answer = self._emulator("GET", "/_emulator/sessions?" + urlencode({"client_reference_id": user}))
        if status != 200:
            raise ValueError(f"the Stripe emulator answered {status} to its list of sessions")
        sessions = answer.get("sessions") or []
        return [s for s in sessions if s.get("state") not in ("open", "expired")][:limit]

    def stripe_action(self, user: str, session_id: str, action: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """One emulator control action on one of the user's own payments: (status, answer)."""
        if action not in STRIPE_ACTIONS:
            return 404, _error("not_found", f"No such test action: {action}.")
        try:
            params = _action_params(action, body)
        except _Refused as refused:
            return 400, _error(refused.code, refused.message)
        if not any(p.get("id") == session_id for p in self.stripe_payments(user, limit=1000)):
            return 404, _error("not_found", "No such payment of yours.")
        status, answer = self._emulator("POST", f"/_emulator/sessions/{quote(session_id, safe='')}/{action}", params)
        if status != 200:
            error = answer.get("error") or {}
            message = str(error.get("message") or f"The Stripe emulator answered {status}.")
            return 409, _error(str(error.get("code") or "emulator_refused"), message)
        delivered = [int(d[1]) for d in answer.get("deliveries") or []]
        payment = next((p for p in self.stripe_payments(user, limit=1000) if p.get("id") == session_id), None)
        return 200, {"payment": payment, "delivered": all(200 <= d < 300 for d in delivered), "deliveries": delivered}

    def next_off_session_payment(self, body: bytes | None) -> tuple[int, dict[str, Any]]:
        """GET (body None): the outcome waiting for the next off-session payment; POST {"outcome"}: set
        it. The emulator's answer, {"nextOffSessionPayment": outcome | null}."""
        params = None
        if body is not None:
            try:
                outcome = json.loads(body or b"{}").get("outcome")
            except (ValueError, AttributeError):
                outcome = None
            if not isinstance(outcome, str) or outcome not in NEXT_OFF_SESSION_OUTCOMES:
                named = ", ".join(sorted(NEXT_OFF_SESSION_OUTCOMES))
                return 400, _error("validation_error", f"outcome must be one of {named}.")
            params = {"outcome": outcome}
        status, answer = self._emulator("POST" if params else "GET", "/_emulator/next_off_session_payment", params)
        if status != 200:
            raise ValueError(f"the Stripe emulator answered {status} to next_off_session_payment")
        return 200, {"nextOffSessionPayment": answer.get("nextOffSessionPayment")}

    def _emulator(self, method: str, path: str, params: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        """A call to the emulator's control API (no proxy: it is on this machine)."""
        assert self.stripe_emulator_url is not None
        data = json.dumps(params).encode() if params is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}  # a GET's query is a form
        request = urllib.request.Request(self.stripe_emulator_url + path, data=data, method=method, headers=headers)
        try:
            with _NO_PROXY.open(request, timeout=STRIPE_TIMEOUT) as response:
                return int(response.status), json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                return exc.code, json.loads(exc.read() or b"{}")
            except ValueError:
                return exc.code, {}
            finally:
                exc.close()

    # ---- events -----------------------------------------------------------------------------

    def api_event(
        self,
        route: Route,
        path: str,
        query: str,
        headers: dict[str, str],
        body: bytes,
        *,
        authorizer: dict[str, Any] | None = None,
        path_parameters: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """The HTTP API payload 2.0 event API Gateway sends for this request; `routeKey` is the
        template's route (`POST /internal/credits/holds/{holdId}/capture`)."""
        route_key = f"{route.method} {route.path}"
        event = _event(route_key, route.method, path, query, headers, body, account="000000000000", api="local")
        event["queryStringParameters"] = dict(parse_qsl(query, keep_blank_values=True)) or None
        if path_parameters:
            event["pathParameters"] = path_parameters
        if authorizer is not None:
            event["requestContext"]["authorizer"] = authorizer
        return event

    def url_event(self, path: str, headers: dict[str, str], body: bytes, method: str) -> dict[str, Any]:
        """The Function URL event Lambda sends the webhook (payload 2.0)."""
        return _event("$default", method, path, "", headers, body, account="anonymous", api="local-webhook")

    # ---- HTTP ---------------------------------------------------------------------------------

    def _handler_class(self) -> type[GatewayHandler]:
        """The request handler class of this gateway's server."""
        return type("Handler", (GatewayHandler,), {"gateway": self})


# ---- the paths the gateway answers itself -------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One request as a route's handler sees it: the path and query as they came (percent-encoded),
    header names in lower case, and the path's `{name}` parameters of the route that matched."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    parameters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LocalRoute:
    """A path the gateway answers itself: its method (None: every method), its path (a `{name}`
    segment matches one non-empty segment, as in the template's routes), and the handler's method
    that answers it."""

    method: str | None
    path: str
    answer: Callable[[GatewayHandler, Request], None]

    def match(self, method: str, path: str) -> dict[str, str] | None:
        """The path parameters (as they came) if this route takes the request, else None."""
        if self.method is not None and self.method != method:
            return None
        found = _path_pattern(self.path).fullmatch(path)
        return found.groupdict() if found else None


@functools.cache
def _path_pattern(path: str) -> re.Pattern[str]:
    """A route's path as a pattern: each `{name}` segment a named group of one non-empty segment."""
    return re.compile(
        "/".join(
            f"(?P<{part[1:-1]}>[^/]+)" if part[:1] + part[-1:] == "{}" else re.escape(part) for part in path.split("/")
        )
    )


def local_routes(*, notifications: bool, stripe_tools: bool) -> list[LocalRoute]:
    """The gateway's own paths, matched before the template's routes: the webhook's Function URL
    (any method), the local sign-in and the page's configuration, the contract and its reference;
    the page's notifications with a local EventBridge, its Stripe test tools with the emulator."""
    table = [
        LocalRoute(None, WEBHOOK_PATH, GatewayHandler.webhook),
        LocalRoute("POST", "/local/sign-in", GatewayHandler.sign_in),
        LocalRoute("GET", "/local/config.json", GatewayHandler.page_config),
        LocalRoute("GET", "/docs", GatewayHandler.docs),
        LocalRoute("GET", "/openapi.yaml", GatewayHandler.openapi),
        *(LocalRoute("GET", path, GatewayHandler.api_docs) for path in API_DOCS),
    ]
    if notifications:
        table.append(LocalRoute("GET", "/local/notifications", GatewayHandler.notifications))
    if stripe_tools:
        table.append(LocalRoute("GET", "/local/stripe/payments", GatewayHandler.stripe_payments))
        table.append(LocalRoute("POST", "/local/stripe/payments/{sessionId}/{action}", GatewayHandler.stripe_action))
        for verb in ("GET", "POST"):
            table.append(LocalRoute(verb, NEXT_OFF_SESSION_PATH, GatewayHandler.stripe_next_off_session_payment))
    return table


class GatewayHandler(BaseHTTPRequestHandler):
    """One connection to the gateway (`gateway` is set on the subclass each Gateway makes). Every
    method is dispatched: a request is answered by the first of the gateway's own routes that takes
    it, else by the template route it matches (its function), else by a file of the page (GET), else
    with API Gateway's `404 {"message": "Not Found"}`, whatever the method (TRACE, HEAD,
    QUERY or a made-up one; OPTIONS is a CORS preflight, 204): never the standard library's HTML 501."""

    gateway: Gateway
    protocol_version = "HTTP/1.1"
    unread = False  # an error was answered before the request was read in full
    status: int | None = None  # of the answer to the current request, once sent
    user: str | None = None  # who made it, when known (a valid local token, a sign-in, a key)
    started = 0.0
    begun = False  # the current request's line was read

    def __getattr__(self, name: str) -> Any:
        # http.server looks up `do_<METHOD>` for each request and answers 501 when there is none:
        # here every method has one, the dispatcher.
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    def do_OPTIONS(self) -> None:
        # The webhook's Function URL hands every method to its function; anywhere else OPTIONS is a
        # CORS preflight, which the API's CorsConfiguration (template.yaml) makes API Gateway answer
        # itself, with no route and no function.
        if urlsplit(self.path).path == WEBHOOK_PATH:
            self._dispatch()
        else:
            self._send(204, b"", {"Allow": "GET, POST, PUT, OPTIONS"})

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def handle_one_request(self) -> None:
        """One request, and its line in the request log. A client that closes the connection
        before it has the whole answer (a browser tab closed, a reload) ends the connection
        with one line in the log, not a traceback."""
        self.status, self.user, self.started, self.begun = None, None, time.perf_counter(), False
        try:
            super().handle_one_request()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True
            if self.begun or self.status is not None:  # not an idle connection closed
                self._log("(the client closed the connection)")
            return
        if self.status is not None:
            self._log()

    def parse_request(self) -> bool:
        # the request line is in: the time an idle keep-alive connection waited is not counted
        self.started, self.begun = time.perf_counter(), True
        return super().parse_request()

    def send_response(self, code: int, message: str | None = None) -> None:
        self.status = code
        super().send_response(code, message)

    def _log(self, note: str = "") -> None:
        if self.gateway.request_log is None:
            return
        took = (time.perf_counter() - self.started) * 1000
        path = urlsplit(getattr(self, "path", "") or "").path or "-"
        fields = [getattr(self, "command", None) or "-", path[:200], str(self.status or "-"), f"{took:.0f} ms"]
        if self.user:
            fields.append(self.user)
        if note:
            fields.append(note)
        with contextlib.suppress(OSError, ValueError):  # where it prints to is gone (closed, a broken pipe)
            self.gateway.request_log(_printable(" ".join(fields)))

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Every error http.server answers by itself (414 URI too long, 400 bad request line,
        431 headers too large, 505...) as API Gateway answers: `{"message": ...}` in JSON, never
        the standard library's HTML page. The message is the status's phrase (the detail
        http.server passes may quote the request). The connection is closed: what follows on it
        cannot be read as a request."""
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = message or "Error"
        # A request line that did not parse leaves http.server's default version, HTTP/0.9,
        # which would send the body with no status line nor headers: answer in HTTP/1.1.
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = self.protocol_version
        self.send_response(code, phrase)
        self.send_header("Connection", "close")
        body = b""
        # No body for 1xx, 204, 205 and 304 (RFC 9110), as http.server's own send_error.
        if code >= 200 and code not in (HTTPStatus.NO_CONTENT, HTTPStatus.RESET_CONTENT, HTTPStatus.NOT_MODIFIED):
            body = json.dumps({"message": phrase}).encode()
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        self.unread = True

    def finish(self) -> None:
        super().finish()  # flushes the answer
        if self.unread:
            _linger(self.connection)

    # ---- answering ----------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":  # a HEAD answer has the headers of its GET, never a body
            self.wfile.write(body)

    def _json(self, status: int, body: dict[str, Any]) -> None:
        self._send(status, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def _not_found(self) -> None:
        self._json(404, {"message": "Not Found"})

    def _dispatch(self) -> None:
        """Read the request, then answer it by the first route that takes it (see the class)."""
        request = self._read()
        if request is None:
            return
        for route in self.gateway.local_routes:
            parameters = route.match(request.method, request.path)
            if parameters is not None:
                route.answer(self, replace(request, parameters=parameters))
                return
        found = match_route(self.gateway.routes, request.method, request.path)
        if found is not None:
            self._function(request, *found)
        elif not (request.method == "GET" and self._static(request.path)):
            self._not_found()

    def _read(self) -> Request | None:
        """The request with its body; None (400 answered) if its Content-Length is no length."""
        declared = self.headers.get("Content-Length") or "0"
        if not declared.isascii() or not declared.strip().isdigit():  # neither a number nor >= 0
            self.send_error(HTTPStatus.BAD_REQUEST)
            return None
        length = int(declared)
        body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        return Request(self.command, split.path, split.query, headers, body)

    def _function(self, request: Request, route: Route, parameters: dict[str, str]) -> None:
        """A template route: the caller authorized as API Gateway authorizes it, then its function."""
        authorizer = None
        if route.auth == "AWS_IAM":
            # As on AWS, a request without a valid signature is refused before any function runs.
            authorizer = self._iam_authorizer(request)
            if authorizer is None:
                self._json(403, {"message": "Forbidden"})
                return
        elif route.auth == "JWT":
            claims = self._claims(request.headers)
            if claims is None:
                self._json(401, {"message": "Unauthorized"})
                return
            authorizer = {"jwt": {"claims": {k: str(v) for k, v in claims.items()}, "scopes": None}}
        event = self.gateway.api_event(
            route,
            request.path,
            request.query,
            request.headers,
            request.body,
            authorizer=authorizer,
            path_parameters=parameters,
        )
        self._lambda(self.gateway.invoke(route.function, event))

    def _iam_authorizer(self, request: Request) -> dict[str, Any] | None:
        """The IAM authorizer context of a request signed with the gateway's local key, else None."""
        if self.gateway.iam_credentials is None:
            return None
        try:
            caller = verify(
                request.method,
                request.path,
                request.query,
                request.headers,
                request.body,
                credentials=self.gateway.iam_credentials,
                region=self.gateway.region,
            )
        except Rejected:
            return None
        self.user = f"iam:{caller.access_key}"
        return caller.authorizer()

    def _claims(self, headers: dict[str, str]) -> dict[str, Any] | None:
        """The claims of the request's bearer token, if the gateway signed it and it is valid."""
        auth = headers.get("authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else ""
        claims = self.gateway.tokens.verify(token) if token else None
        if claims is not None:
            self.user = str(claims.get("sub"))
        return claims

    def _lambda(self, response: dict[str, Any]) -> None:
        raw = response.get("body") or ""
        data = base64.b64decode(raw) if response.get("isBase64Encoded") else raw.encode()
        headers = {str(k): str(v) for k, v in (response.get("headers") or {}).items()}
        headers.setdefault("Content-Type", "application/json")
        self._send(int(response.get("statusCode", 200)), data, headers)

    # ---- the gateway's own routes (local_routes) ----------------------------------------------

    def webhook(self, request: Request) -> None:
        """The webhook's Function URL: any method, no authorizer (the function checks Stripe's signature)."""
        event = self.gateway.url_event(request.path, request.headers, request.body, request.method)
        self._lambda(self.gateway.invoke("webhook", event))

    def sign_in(self, request: Request) -> None:
        """POST /local/sign-in `{"user": NAME}`: a local token for that user (LOCAL-ONLY)."""
        try:
            user = json.loads(request.body or b"{}").get("user", "")
        except (ValueError, AttributeError):  # not JSON (nor UTF-8), or not an object
            user = ""
        if not isinstance(user, str) or key_problem(user) is not None:
            self._json(400, _error("validation_error", f"Pick a user name: {USER_NAME_RULE}."))
            return
        self.user = user
        self._json(200, {"token": self.gateway.tokens.issue(user), "userId": user, "localOnly": True})

    def page_config(self, request: Request) -> None:
        """GET /local/config.json: the page's settings."""
        self._json(200, self.gateway.page_config)

    def notifications(self, request: Request) -> None:
        """GET /local/notifications: the signed-in user's events on the local bus (LOCAL-ONLY)."""
        claims = self._claims(request.headers)
        if claims is None:
            self._json(401, {"message": "Unauthorized"})
            return
        self._json(200, {"notifications": self.gateway.notifications(str(claims["sub"]))})

    def stripe_payments(self, request: Request) -> None:
        """GET /local/stripe/payments: the signed-in user's payments at the emulator (LOCAL-ONLY)."""
        self._stripe_tool(request, lambda user: (200, {"payments": self.gateway.stripe_payments(user)}))

    def stripe_action(self, request: Request) -> None:
        """POST /local/stripe/payments/{sessionId}/{action}: a control action on one of the signed-in
        user's own payments (LOCAL-ONLY)."""
        session_id, action = request.parameters["sessionId"], request.parameters["action"]
        self._stripe_tool(request, lambda user: self.gateway.stripe_action(user, session_id, action, request.body))

    def stripe_next_off_session_payment(self, request: Request) -> None:
        """GET/POST /local/stripe/next_off_session_payment: what the next auto top-up's payment does at
        the emulator (LOCAL-ONLY, a signed-in user's test tool; the emulator's setting is global)."""
        body = request.body if request.method == "POST" else None
        self._stripe_tool(request, lambda user: self.gateway.next_off_session_payment(body))

    def _stripe_tool(self, request: Request, answer: Callable[[str], tuple[int, dict[str, Any]]]) -> None:
        """A test tool's answer for the signed-in user; 502 if the emulator did not answer."""
        claims = self._claims(request.headers)
        if claims is None:
            self._json(401, {"message": "Unauthorized"})
            return
        try:
            self._json(*answer(str(claims["sub"])))
        except (OSError, ValueError):
            self._json(502, _error("emulator_unavailable", "The local Stripe emulator did not answer."))

    def docs(self, request: Request) -> None:
        """GET /docs: to the reference's folder."""
        self._send(308, b"", {"Location": "/docs/"})

    def openapi(self, request: Request) -> None:
        """GET /openapi.yaml: the API's contract."""
        self._file(OPENAPI_SPEC, "application/yaml; charset=utf-8")

    def api_docs(self, request: Request) -> None:
        """GET /docs/...: the reference (Swagger UI) and its files."""
        self._file(API_DOCS[request.path])

    def _file(self, target: Path, kind: str | None = None) -> None:
        if not target.is_file():
            self._not_found()
            return
        kind = kind or mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        self._send(200, target.read_bytes(), {"Content-Type": kind, "Cache-Control": "no-cache"})

    def _static(self, path: str) -> bool:
        """A file of the page (web/), if there is one at this path."""
        if self.gateway.web_dir is None:
            return False
        root = self.gateway.web_dir.resolve()
        target = (root / path.lstrip("/")).resolve()
        if path.endswith("/"):
            target = target / "index.html"
        if not target.is_file() or root not in target.parents:
            return False
        self._file(target)
        return True
