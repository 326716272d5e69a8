"""End-to-end fixtures: the `make dev` stack started as a user starts it, and Debian's Chromium."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from local.dynamodb_local import free_port
from local.template import ROOT

SCREENSHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class DevStack:
    url: str
    stripe_url: str
    process: subprocess.Popen[str]
    data_dir: Path  # `--data-dir`: a `.local-data` folder, as in a checkout (the CLI finds it from its parent)

    def emulator(self, session_id: str, action: str) -> dict[str, object]:
        request = urllib.request.Request(f"{self.stripe_url}/_emulator/sessions/{session_id}/{action}", method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            result: dict[str, object] = json.loads(response.read())
            return result


@pytest.fixture(scope="session")
def dev_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    """`python -m local.dev` (what `make dev` runs) on free ports with its own data folder."""
    port, stripe_port, dynamodb_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "AWS_ENDPOINT"))}
    env["PYTHONPATH"] = str(ROOT / "shared")
    data = tmp_path_factory.mktemp("checkout") / ".local-data"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "local.dev",
            "--port",
            str(port),
            "--stripe-port",
            str(stripe_port),
            "--dynamodb-port",
            str(dynamodb_port),
            "--data-dir",
            str(data),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"make dev exited: {process.stdout.read() if process.stdout else ''}")
        try:
            with urllib.request.urlopen(f"{url}/credit-packages", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("make dev did not come up in 90 s")
        time.sleep(0.3)
    yield DevStack(url, f"http://127.0.0.1:{stripe_port}", process, data)
    process.send_signal(signal.SIGINT)  # Ctrl-C stops the whole stack cleanly
    try:
        assert process.wait(timeout=20) == 0
    except subprocess.TimeoutExpired:
        process.kill()
        raise


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    executable = shutil.which("chromium")
    assert executable, "Debian's chromium is not installed: `make install` installs it"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser, dev_stack: DevStack) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    yield tab
    context.close()


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
