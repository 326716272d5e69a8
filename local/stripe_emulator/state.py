"""What the emulator holds: every object it made (by id, in the order made), each Checkout Session's
bookkeeping, the events, the idempotency keys' first answers; kept in a JSON file when asked (`make
dev`), written after every change."""

from __future__ import annotations

import json
import threading
from dataclasses import asdict
from pathlib import Path

from local.serving import write_json
from local.stripe_emulator.objects import Checkout, EmulatorError, Json


class EmulatorState:
    """The stored objects, under one lock (re-entrant: a change may read)."""

    def __init__(self, state_path: Path | None = None) -> None:
        # where `make dev` keeps customers, prices, sessions, payments and events across restarts and
        # crashes: written after every change (`_save`)
        self.state_path = state_path
        self.events: list[Json] = []
        self._objects: dict[str, Json] = {}
        self._checkouts: dict[str, Checkout] = {}
        self._inline: set[str] = set()  # made from price_data: never listed or searched
        self._idempotency: dict[str, tuple[str, bytes, str, int]] = {}  # key: (request, answer, its id, status)
        self._next_off_session: str | None = None  # the next off-session payment's forced outcome
        self._lock = threading.RLock()

    def _save(self) -> None:
        """Write the state, when kept: after every change (a crash of `make dev` loses none of it, as
        DynamoDB Local loses no write), atomically (local.serving.write_json: a crash mid-write leaves
        the previous state whole)."""
        if self.state_path is None:
            return
        with self._lock:  # one writer at a time, and the file always holds a state that was current
            state = {
                "objects": self._objects,
                "checkouts": {k: asdict(v) for k, v in self._checkouts.items()},
                "inline": sorted(self._inline),
                "events": self.events,
                "next_off_session": self._next_off_session,
            }
            write_json(self.state_path, state)

    def _load(self) -> None:
        if self.state_path is None or not self.state_path.exists():
            return
        state = json.loads(self.state_path.read_text())
        with self._lock:
            self._objects = state["objects"]
            self._checkouts = {k: Checkout(**v) for k, v in state["checkouts"].items()}
            self._inline = set(state["inline"])
            self.events = state["events"]
            self._next_off_session = state.get("next_off_session")

    def _get(self, kind: str, obj_id: str, *, param: str = "id", status: int = 404) -> Json:
        """A stored object of the given type, or Stripe's resource_missing error."""
        obj = self._objects.get(obj_id)
        if obj is None or obj["object"] != kind:
            raise EmulatorError(f"No such {kind}: '{obj_id}'", status=status, code="resource_missing", param=param)
        return obj

    def _checkout(self, session_id: str) -> tuple[Json, Checkout]:
        """A session and its bookkeeping."""
        return self._get("checkout.session", session_id, param="session"), self._checkouts[session_id]

    def _store(self, obj: Json) -> Json:
        """Keep an object so it can be retrieved, listed and expanded."""
        self._objects[obj["id"]] = obj
        return obj

    def _all(self, kind: str) -> list[Json]:
        """Stored objects of one type, newest first, without inline (price_data) ones."""
        objects = reversed(self._objects.values())
        return [o for o in objects if o["object"] == kind and o["id"] not in self._inline]
