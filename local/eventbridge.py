"""A local stand-in for one EventBridge bus (for `make dev` and the tests).

It speaks EventBridge's own protocol for `PutEvents` (JSON 1.1, `X-Amz-Target: AWSEvents.PutEvents`),
so boto3's unchanged `events` client reaches it through `AWS_ENDPOINT_URL_EVENTBRIDGE`; any SigV4
signature is accepted. Each accepted entry is kept as the event a rule's target receives
(`{"version", "id", "detail-type", "source", "account", "time", "region", "resources", "detail"}`,
the detail parsed), in memory and, for `make dev`, in a JSON file so a restart keeps them.

Unlike AWS, which accepts events for a bus that does not exist and drops them, an entry for any bus
but the configured one is refused (an `InvalidArgument` entry): a misnamed bus shows up locally.

    GET /_local/events?userId=alice&detailType=Balance%20Low&limit=20   the events, newest first

For the tests: `events(user_id=, detail_type=)` (in the order they were put) and
`fail_next(count, code)`, which makes the next `count` entries fail with that error code.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from local.serving import BackgroundServer, write_json

Json = dict[str, Any]

ACCOUNT = "000000000000"
CONTENT_TYPE = "application/x-amz-json-1.1"
TARGET_PREFIX = "AWSEvents."
MAX_ENTRIES = 10  # per PutEvents call, as on AWS
MAX_REQUEST_BYTES = 256 * 1024  # the total size AWS allows for one call's entries
logger = logging.getLogger(__name__)


class RequestRejected(Exception):
    """A whole PutEvents call is refused (HTTP 400 with `__type`), as AWS refuses it."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class LocalEventBridge:
    """One event bus: PutEvents over HTTP, the events it took, and injected entry failures."""

    def __init__(
        self,
        *,
        bus_name: str,
        host: str = "127.0.0.1",
        port: int = 0,
        region: str = "us-east-1",
        state_path: Path | None = None,
        keep: int = 2000,
    ) -> None:
        self.bus_name = bus_name
        self.region = region
        self.bus_arn = f"arn:aws:events:{region}:{ACCOUNT}:event-bus/{bus_name}"
        self.host, self.port = host, port
        self.state_path = state_path  # where `make dev` keeps the events across restarts
        self.keep = keep  # the newest events kept; older ones are dropped
        self._events: list[Json] = []
        self._failures: list[tuple[str, str]] = []  # (code, message) for the next entries
        self._lock = threading.Lock()
        self._server: BackgroundServer | None = None

    # ---- lifecycle ------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The URL for AWS_ENDPOINT_URL_EVENTBRIDGE."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> str:
        """Serve in a daemon thread; returns the endpoint."""
        self._load()
        handler = type("Handler", (_Handler,), {"bridge": self})
        self._server = BackgroundServer((self.host, self.port), handler, name="eventbridge")
        self.port = self._server.port
        self._server.start()
        return self.endpoint

    def stop(self) -> None:
        """Stop serving (the events file is written at every put already)."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> LocalEventBridge:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # ---- what the tests and the gateway read --------------------------------------------------

    def events(self, user_id: str | None = None, detail_type: str | None = None) -> list[Json]:
        """The events put on the bus, in the order they were put; only one user's (`detail.userId`)
        or one detail-type's when asked."""
        with self._lock:
            found = list(self._events)
        return [
            e
            for e in found
            if (user_id is None or e["detail"].get("userId") == user_id)
            and (detail_type is None or e["detail-type"] == detail_type)
        ]

    def fail_next(self, count: int = 1, code: str = "InternalFailure", message: str | None = None) -> None:
        """Make the next `count` entries fail with this error code (e.g. InternalFailure,
        ThrottlingException): each gets an error entry instead of an EventId, and is not kept."""
        text = message or f"{code} (injected by the local EventBridge)"
        with self._lock:
            self._failures.extend([(code, text)] * count)

    def clear(self) -> None:
        """Forget every event and every pending injected failure."""
        with self._lock:
            self._events.clear()
            self._failures.clear()
            self._save()

    # ---- PutEvents ----------------------------------------------------------------------------

    def put_events(self, request: Json) -> Json:
        """The PutEvents operation on a parsed request body; returns the response body."""
        entries = request.get("Entries")
        if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_ENTRIES:
            raise RequestRejected(
                "ValidationException",
                f"1 validation error detected: Value at 'entries' failed to satisfy constraint: "
                f"Member must have length between 1 and {MAX_ENTRIES}",
            )
        if len(json.dumps(entries).encode()) > MAX_REQUEST_BYTES:
            raise RequestRejected("ValidationException", "Total size of the entries in the request is over the limit.")
        results: list[Json] = []
        with self._lock:
            for entry in entries:
                if self._failures:
                    code, message = self._failures.pop(0)
                    results.append({"ErrorCode": code, "ErrorMessage": message})
                    continue
                try:
                    event = self._event(entry if isinstance(entry, dict) else {})
                except _EntryRefused as refused:
                    results.append({"ErrorCode": refused.code, "ErrorMessage": str(refused)})
                    continue
                self._events.append(event)
                results.append({"EventId": event["id"]})
            del self._events[: max(0, len(self._events) - self.keep)]
            self._save()
        failed = sum(1 for r in results if "ErrorCode" in r)
        return {"FailedEntryCount": failed, "Entries": results}

    def _event(self, entry: Json) -> Json:
        for field in ("Source", "DetailType", "Detail"):
            if not isinstance(entry.get(field), str) or not entry[field]:
                raise _EntryRefused(
                    "InvalidArgument", f"Parameter {field} is not valid. Reason: {field} is a required argument."
                )
        bus = entry.get("EventBusName") or "default"
        if bus not in (self.bus_name, self.bus_arn):
            raise _EntryRefused("InvalidArgument", f"Event bus {bus} does not exist.")
        try:
            detail = json.loads(entry["Detail"])
        except ValueError:
            detail = None
        if not isinstance(detail, dict):
            raise _EntryRefused("MalformedDetail", "Detail is malformed.")
        return {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": entry["DetailType"],
            "source": entry["Source"],
            "account": ACCOUNT,
            "time": _time(entry.get("Time")),
            "region": self.region,
            "resources": list(entry.get("Resources") or []),
            "detail": detail,
        }

    # ---- state --------------------------------------------------------------------------------

    def _save(self) -> None:
        """Write the events to the state file (the lock is held)."""
        if self.state_path is None:
            return
        write_json(self.state_path, {"bus": self.bus_name, "events": self._events})

    def _load(self) -> None:
        if self.state_path is None or not self.state_path.exists():
            return
        try:
            state = json.loads(self.state_path.read_text())
            events = state["events"] if state.get("bus") == self.bus_name else []
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring the unreadable events file %s (%s)", self.state_path, exc)
            return
        with self._lock:
            self._events = [e for e in events if isinstance(e, dict)][-self.keep :]


class _EntryRefused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _time(value: Any) -> str:
    """An entry's Time (boto3 sends epoch seconds; an ISO 8601 string is taken too) as EventBridge
    writes it in an event, else now."""
    when = datetime.now(UTC)
    if isinstance(value, int | float):
        when = datetime.fromtimestamp(value, UTC)
    elif isinstance(value, str):
        with contextlib.suppress(ValueError):  # not a time: now
            when = datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


class _Handler(BaseHTTPRequestHandler):
    bridge: LocalEventBridge
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Json, content_type: str = CONTENT_TYPE) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, kind: str, message: str) -> None:
        self._send(400, {"__type": kind, "message": message})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        target = self.headers.get("X-Amz-Target", "")
        if target != TARGET_PREFIX + "PutEvents":
            self._error("UnknownOperationException", f"The local EventBridge only serves PutEvents, not {target!r}.")
            return
        try:
            request = json.loads(raw or b"{}")
        except ValueError:
            self._error("SerializationException", "The request body is not JSON.")
            return
        try:
            self._send(200, self.bridge.put_events(request if isinstance(request, dict) else {}))
        except RequestRejected as rejected:
            self._error(rejected.kind, str(rejected))

    def do_GET(self) -> None:
        split = urlsplit(self.path)
        if split.path != "/_local/events":
            self._send(404, {"message": "Not Found"}, "application/json")
            return
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        events = self.bridge.events(user_id=query.get("userId"), detail_type=query.get("detailType"))
        events.reverse()
        try:
            limit = int(query["limit"]) if "limit" in query else len(events)
        except ValueError:
            self._send(400, {"message": "limit must be an integer"}, "application/json")
            return
        self._send(200, {"events": events[: max(0, limit)]}, "application/json")
