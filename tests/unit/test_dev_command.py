"""`make dev` refuses a port in use with a clear message, not a traceback."""

from __future__ import annotations

import re
import socket
import stat

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


def test_real_stripe_needs_a_test_key_and_the_webhook_secret(
    capsys: pytest.CaptureFixture[str], tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STRIPE_API_BASE", raising=False)
    monkeypatch.delenv("STRIPE_WEBHOOK_SECRET", raising=False)
    ports = ["--port", str(free_port()), "--dynamodb-port", str(free_port()), "--data-dir", str(tmp_path)]
    monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_live_real_money")
    assert dev.main(ports) == 2
    assert "test-mode keys" in capsys.readouterr().err
    monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_test_abc")
    assert dev.main(ports) == 2
    assert "stripe listen --forward-to" in capsys.readouterr().err
    assert not (tmp_path / "dynamodb").exists()


def test_the_local_iam_key_is_made_once_kept_private_and_printed_ready_to_paste(tmp_path) -> None:
    key_id, secret = dev._iam_credentials(tmp_path)
    assert re.fullmatch(r"AKIALOCAL[A-Z0-9]{11}", key_id)
    assert re.fullmatch(r"[A-Za-z0-9]{40}", secret)
    assert dev._iam_credentials(tmp_path) == (key_id, secret)  # kept across restarts
    assert stat.S_IMODE((tmp_path / dev.IAM_CREDENTIALS_FILE).stat().st_mode) == 0o600
    banner = dev.internal_api_help("http://127.0.0.1:8000", key_id, secret, tmp_path / dev.IAM_CREDENTIALS_FILE)
    assert f'--aws-sigv4 "aws:amz:us-east-1:execute-api" --user "{key_id}:{secret}"' in banner
    assert "http://127.0.0.1:8000/internal/credits/grant" in banner
    assert f"AWS_ACCESS_KEY_ID={key_id} AWS_SECRET_ACCESS_KEY={secret}" in banner
