"""`make dev` refuses a port in use with a clear message, not a traceback; after a `kill -9` it stops
what it left running, so the same command comes up again."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from local import dev, leftovers
from local.dynamodb_local import client_for, free_ports
from local.template import ROOT


@pytest.mark.parametrize("flag", ["--port", "--stripe-port", "--dynamodb-port"])
def test_a_port_in_use_gets_a_clear_message(flag: str, capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    ports = dict(zip(["--port", "--stripe-port", "--dynamodb-port"], free_ports(3), strict=True))
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
    port, dynamodb_port = free_ports(2)
    ports = ["--port", str(port), "--dynamodb-port", str(dynamodb_port), "--data-dir", str(tmp_path)]
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


# ---- what a `kill -9` of make dev leaves behind -----------------------------------------------------

STARTUP_DEADLINE = 120.0  # seconds for DynamoDB Local's JVM to answer on a loaded 2-core machine
EXIT_DEADLINE = 60.0  # seconds for a killed process to be gone
# make dev up to its first child that outlives it: the same functions main() calls to claim the ports
# (stopping a leftover first) and to start DynamoDB Local; then it waits, as make dev does.
MAKE_DEV_LIKE = """
import sys, threading
from local import dev
args = dev.parse_args(sys.argv[1:])
if not dev.claim_ports(args, real_stripe=False):
    sys.exit(2)
database = dev.database_for(args).start()
print("serving", database.process.pid, flush=True)
threading.Event().wait()
"""


def start_make_dev_like(args: list[str], log: Path) -> subprocess.Popen[str]:
    with log.open("a") as errors:
        return subprocess.Popen(
            [sys.executable, "-c", MAKE_DEV_LIKE, *args],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": f"{ROOT / 'shared'}{os.pathsep}{ROOT}"},
            stdout=subprocess.PIPE,
            stderr=errors,  # a file, not a pipe nobody reads
            text=True,
            start_new_session=True,  # its own process group, with DynamoDB Local: the test's finally reaches it
        )


def serving(process: subprocess.Popen[str], log: Path) -> tuple[int, list[str]]:
    """The pid of the DynamoDB Local it started, once it serves, and what it printed before."""
    lines: list[str] = []
    done = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.strip())
            if line.startswith("serving"):
                break
        done.set()

    threading.Thread(target=read, daemon=True).start()
    done.wait(STARTUP_DEADLINE)
    assert lines and lines[-1].startswith("serving"), f"{lines}\n{log.read_text()}"
    return int(lines[-1].split()[1]), lines[:-1]


@pytest.mark.slow  # two make dev's, each starting DynamoDB Local (Java)
def test_after_a_kill_9_the_same_command_comes_up_again_on_the_same_ports(tmp_path: Path) -> None:
    """DynamoDB Local is a Java process of its own: a `kill -9` of make dev leaves it running, holding
    its port. Its pid file (in the data folder) lets the next start stop it: same command, same ports."""
    ports = dict(zip(["--port", "--stripe-port", "--dynamodb-port"], free_ports(3), strict=True))
    args = [item for pair in ports.items() for item in (pair[0], str(pair[1]))]
    args += ["--data-dir", str(tmp_path / ".local-data")]
    log = tmp_path / "stderr.log"
    started: list[subprocess.Popen[str]] = []
    try:
        started.append(start_make_dev_like(args, log))
        java, _ = serving(started[0], log)
        java_was = leftovers.identity(java)
        started[0].kill()  # kill -9
        started[0].wait(timeout=EXIT_DEADLINE)
        assert leftovers.identity(java) == java_was  # the premise: it outlived make dev,
        assert not dev.port_free("127.0.0.1", ports["--dynamodb-port"])  # holding its port

        started.append(start_make_dev_like(args, log))
        java_now, before = serving(started[1], log)
        assert before == [f"stopped DynamoDB Local (pid {java}), left running by a make dev that was killed"]
        assert java_now != java and leftovers.identity(java) != java_was
        endpoint = f"http://127.0.0.1:{ports['--dynamodb-port']}"
        assert "TableNames" in client_for(endpoint).list_tables()  # the new one, on the same port
    finally:
        for process in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # it and its DynamoDB Local, whatever is left
            process.wait(timeout=EXIT_DEADLINE)
            if process.stdout is not None:
                process.stdout.close()


def test_a_recorded_process_is_stopped_only_if_it_is_still_ours_and_its_make_dev_is_gone(tmp_path: Path) -> None:
    path = tmp_path / "child.pid"
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    with subprocess.Popen(sleeper) as owner, subprocess.Popen(sleeper) as child:
        try:
            leftovers.record(path, child.pid, owner=owner.pid)
            recorded = path.read_text()
            with pytest.raises(leftovers.StillRunning, match=f"pid {owner.pid}"):  # make dev still runs
                leftovers.stop_leftover(path)
            assert child.poll() is None and path.exists()

            owner.kill()
            owner.wait(timeout=EXIT_DEADLINE)
            # The pid now belongs to another process (another start, another command): never killed.
            path.write_text(json.dumps({**json.loads(recorded), "identity": "1 /usr/bin/something-else"}))
            assert leftovers.stop_leftover(path) is None
            assert child.poll() is None and not path.exists()

            path.write_text(recorded)  # still that process, its make dev gone: a leftover, stopped
            assert leftovers.stop_leftover(path, timeout=EXIT_DEADLINE) == child.pid
            assert child.wait(timeout=EXIT_DEADLINE) == -signal.SIGTERM
            assert not path.exists()
        finally:
            for process in (owner, child):
                if process.poll() is None:
                    process.kill()
