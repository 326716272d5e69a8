"""local/serving.py: a JSON file written atomically, an HTTP server in a background thread."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from local import serving
from local.serving import BackgroundServer, write_json


def test_a_json_file_is_written_whole_with_a_final_newline_and_no_temporary_file_left(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "folder" / "state.json"  # its folders are made
    write_json(path, {"a": [1, 2]})
    assert path.read_text() == '{"a": [1, 2]}\n'
    write_json(path, {"b": "é"}, indent=1)  # replaces it
    assert json.loads(path.read_text()) == {"b": "é"} and path.read_text().startswith("{\n ")
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]


def test_a_write_that_fails_leaves_the_previous_file_whole_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    write_json(path, {"version": 1})

    def power_cut(*args: Any) -> None:
        raise OSError("the rename never happened")

    monkeypatch.setattr(os, "replace", power_cut)
    with pytest.raises(OSError, match="rename"):
        write_json(path, {"version": 2})
    assert json.loads(path.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
    with pytest.raises(TypeError):  # not JSON: nothing is written at all
        write_json(path, {"version": object()})
    assert json.loads(path.read_text()) == {"version": 1}


def test_concurrent_writers_never_share_a_temporary_file(tmp_path: Path) -> None:
    """Each write is one writer's whole value (the stand-ins write from several threads)."""
    path = tmp_path / "state.json"
    values = [{"writer": n, "payload": "x" * 10_000} for n in range(8)]

    def write(value: dict[str, Any]) -> None:
        for _ in range(20):
            write_json(path, value)

    threads = [threading.Thread(target=write, args=(value,)) for value in values]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert json.loads(path.read_text()) in values
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a served connection may be in TIME_WAIT
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def stop_within(server: BackgroundServer, seconds: float) -> None:
    """stop(), which must return within `seconds` (it runs in a thread: a hang fails, not hangs, the test)."""
    thread = threading.Thread(target=server.stop, daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"stop() still waits after {time.monotonic() - started:.1f} s"


def test_a_server_bound_but_never_started_stops_at_once_and_frees_its_port() -> None:
    """socketserver's shutdown() waits for serve_forever to end, for ever if it never began."""
    server = BackgroundServer(("127.0.0.1", 0), _Hello, name="never-started")
    port = server.port
    assert port > 0 and not port_is_free(port)  # bound when made
    stop_within(server, 5)
    assert port_is_free(port)
    stop_within(server, 5)  # again: nothing left to do


def test_a_started_server_serves_until_stopped_then_frees_its_port() -> None:
    server = BackgroundServer(("127.0.0.1", 0), _Hello, name="serving")
    server.start()
    server.start()  # once only
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/", timeout=10) as answer:
            assert answer.read() == b"hello"
        assert [t.name for t in threading.enumerate()].count("serving") == 1
    finally:
        stop_within(server, 5)
    assert port_is_free(server.port)
    assert "serving" not in [t.name for t in threading.enumerate()]
    stop_within(server, 5)  # a second stop() is harmless
    assert serving.POLL_INTERVAL <= 0.1  # so stop() returns promptly
