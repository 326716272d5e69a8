"""The emulator as an HTTP server: its routes (Stripe's REST API, the control API, the hosted checkout
page), each request's answer, and serving in a background thread."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from local.serving import BackgroundServer
from local.stripe_emulator.api import COLLECTIONS, Reply, RestApi, json_reply
from local.stripe_emulator.checkout_page import HostedCheckout
from local.stripe_emulator.objects import EmulatorError, new_id
from local.stripe_emulator.params import request_params

logger = logging.getLogger("local.stripe_emulator")


class StripeEmulator(HostedCheckout, RestApi):
    """An in-process fake of Stripe: REST subset, hosted checkout page, and signed webhook events.

    Its parts, by module: the objects it holds (state), Stripe's REST endpoints (api), the events and
    their signed deliveries (webhooks), the payments' control actions (payments, control), the test
    cards and off-session PaymentIntents (cards, intents) and the hosted checkout page (checkout_page)."""

    # (method, path, kind, handler): "api" needs the secret key and answers Stripe's JSON; "control"
    # answers JSON; "page" answers what its handler makes (HTML, a redirect).
    ROUTES: ClassVar[list[tuple[str, re.Pattern[str], str, str]]] = [
        (verb, re.compile(path), kind, handler)
        for verb, path, kind, handler in [
            ("POST", r"/v1/customers", "api", "_create_customer"),
            ("POST", r"/v1/products", "api", "_create_product"),
            ("GET", r"/v1/products/search", "api", "_search_products"),
            ("POST", r"/v1/prices", "api", "_create_price"),
            ("GET", r"/v1/prices", "api", "_list_prices"),
            ("POST", r"/v1/checkout/sessions", "api", "_create_session"),
            ("GET", r"/v1/checkout/sessions", "api", "_list_sessions"),
            ("GET", r"/v1/refunds", "api", "_list_refunds"),
            ("GET", r"/v1/disputes", "api", "_list_disputes"),
            ("GET", r"/v1/events", "api", "_list_events"),
            ("POST", r"/v1/payment_intents", "api", "_create_payment_intent"),
            ("GET", r"/v1/customers/([^/]+)/payment_methods", "api", "_list_payment_methods"),
            ("POST", r"/v1/payment_methods/([^/]+)/detach", "api", "_detach_payment_method"),
            ("GET", r"/v1/(" + "|".join(COLLECTIONS) + r")/([^/]+)", "api", "_retrieve"),
            ("POST", r"/_emulator/sessions/([^/]+)/(\w+)", "control", "_control_session"),
            ("GET", r"/_emulator/sessions", "control", "_control_sessions"),
            ("POST", r"/_emulator/payment_intents/([^/]+)/(\w+)", "control", "_control_payment_intent"),
            ("POST", r"/_emulator/next_off_session_payment", "control", "_control_next_off_session_payment"),
            ("GET", r"/_emulator/next_off_session_payment", "control", "_control_next_off_session_payment"),
            ("POST", r"/_emulator/events/([^/]+)/redeliver", "control", "_control_redeliver"),
            ("GET", r"/_emulator/events", "control", "_control_events"),
            ("POST", r"/_emulator/webhooks", "control", "_control_webhooks"),
            ("GET", r"/checkout/([^/]+)", "page", "_checkout_page"),
            ("POST", r"/checkout/([^/]+)/(pay|pay_later|cancel)", "page", "_checkout_action"),
        ]
    ]

    def __init__(
        self,
        *,
        api_key: str,
        webhook_secret: str,
        webhook_url: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        state_path: Path | None = None,
    ) -> None:
        super().__init__(state_path)
        self.api_key, self.webhook_secret, self.webhook_url = api_key, webhook_secret, webhook_url
        self.host, self.port, self.verbose = host, port, False
        self.base_url = f"http://{self._public_host()}:{port}"
        self.deliveries = []
        self.drop_deliveries = False
        self._server: BackgroundServer | None = None

    # ---- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> str:
        """Serve in a daemon thread; returns the base URL."""
        self._load()
        handler = type("Handler", (_Handler,), {"emulator": self})
        self._server = BackgroundServer((self.host, self.port), handler, name="stripe-emulator")
        self.port = self._server.port
        self.base_url = f"http://{self._public_host()}:{self.port}"
        self._server.start()
        return self.base_url

    def stop(self) -> None:
        """Stop serving and release the port (saving the state first, when kept)."""
        self._save()
        if self._server is not None:
            self._server.stop()
            self._server = None

    def _public_host(self) -> str:
        """The host to put in URLs (a wildcard bind is reached through loopback)."""
        return "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host

    # ---- one request --------------------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Reply:
        """Route one HTTP request; returns (status, headers, body)."""
        url, request_id = urlsplit(target), new_id("req", 14)
        lowered, base = {k.lower(): v for k, v in headers.items()}, {"Request-Id": request_id}
        route = next(
            (
                (kind, name, m)
                for verb, pattern, kind, name in self.ROUTES
                if verb == method and (m := pattern.fullmatch(url.path))
            ),
            None,
        )
        if route is None:
            error = EmulatorError(
                f"Unrecognized request URL ({method}: {url.path}). Please see "
                "https://stripe.com/docs or we can help at https://support.stripe.com/.",
                status=404,
            )
            return json_reply(404, error.body(), base)
        kind, name, match = route
        try:
            params = request_params(url.query if method == "GET" else body.decode(errors="replace"), lowered)
            handler = getattr(self, name)
            if kind == "page":
                status, extra, out = handler(*match.groups(), params)
                return status, {**base, **extra}, out
            if kind == "control":
                return json_reply(200, handler(*match.groups(), params), base)
            return self._api(handler, method, url.path, match.groups(), params, lowered, base)
        except EmulatorError as exc:
            return json_reply(exc.status, exc.body(), base)
        except Exception:
            logger.exception("stripe emulator failed on %s %s", method, url.path)
            error = EmulatorError("The emulator failed; see its log.", status=500, kind="api_error")
            return json_reply(500, error.body(), {**base, "Stripe-Should-Retry": "false"})


class _Handler(BaseHTTPRequestHandler):
    """Hands every request to the emulator's router."""

    emulator: StripeEmulator
    server_version = "stripe-emulator/1.0"

    def _serve(self) -> None:
        """Read the body, route, and write the reply."""
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, headers, out = self.emulator.handle(self.command, self.path, dict(self.headers.items()), body)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Log only when asked to (the command line is verbose; tests are quiet)."""
        if self.emulator.verbose:
            super().log_message(format, *args)
