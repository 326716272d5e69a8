"""`make dev` refuses a port in use with a clear message, not a traceback."""

from __future__ import annotations

import socket

import pytest

from local import dev
from local.dynamodb_local import free_port


@pytest.mark.parametrize("flag", ["--port", "--stripe-port", "--dynamodb-port"])
def test_a_port_in_use_gets_a_clear_message(flag: str, capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    ports = {"--port": free_port(), "--stripe-port": free_port(), "--dynamodb-port": free_port()}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", ports[flag]))
        busy.listen()
        args = [item for pair in ports.items() for item in (pair[0], str(pair[1]))]
        assert dev.main([*args, "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"port {ports[flag]} is in use ({flag})" in err
    assert "Traceback" not in err
    assert not (tmp_path / "dynamodb").exists()  # nothing was started
