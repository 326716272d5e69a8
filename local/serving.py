"""What the local stand-ins share: an HTTP server in a background thread, and a JSON file written
atomically (the gateway, the EventBridge bus, the Stripe emulator, the stream poller, `make dev`)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

POLL_INTERVAL = 0.05  # how often serve_forever looks for a shutdown: how long stop() may wait
JOIN_TIMEOUT = 5.0


class BackgroundServer:
    """A ThreadingHTTPServer (one daemon thread per request) bound when made, serving in a daemon
    thread of its own from `start()` until `stop()`. stop() before start(), or twice, only closes the
    socket: it never waits for a serve_forever that is not running (socketserver's shutdown() would
    wait for ever)."""

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], *, name: str) -> None:
        self.server = ThreadingHTTPServer(address, handler)
        self.server.daemon_threads = True
        self.name = name
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        """The port it is bound to (the one the system picked, for port 0)."""
        return int(self.server.server_address[1])

    def start(self) -> None:
        """Serve in a daemon thread (once)."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self.server.serve_forever, kwargs={"poll_interval": POLL_INTERVAL}, name=self.name, daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop serving, if it serves, and release the port."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self.server.shutdown()  # returns once serve_forever has ended
                thread.join(timeout=JOIN_TIMEOUT)
            self.server.server_close()


def write_json(path: Path, value: Any, *, indent: int | None = None) -> None:
    """Write `value` as JSON (and a final newline) to `path`, atomically: to a temporary file of its
    own in the same folder, flushed to disk, then renamed over `path`, the folder flushed too. A crash
    (or a power cut) mid-write leaves the previous file whole, and two writers never share a
    temporary file; readers see the old content or the new, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(value, indent=indent) + "\n"
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as to path
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)  # the rename itself survives a power cut


def _fsync_dir(directory: Path) -> None:
    """Flush a folder's entries (a rename in it) to disk, where the platform allows it."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some platforms and file systems cannot fsync a folder
    finally:
        os.close(descriptor)
