"""End-to-end fixtures: the `make dev` stack started as a user starts it, and Debian's Chromium."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, Response, expect, sync_playwright

from local.dynamodb_local import free_ports
from local.template import ROOT

SCREENSHOTS = ROOT / "artifacts" / "screenshots"
# How long a person waits for what goes to the server (an action, a purchase, a page of history, an
# event on its way to the Notifications card) on a loaded 2-core machine: every wait of these tests,
# never the library's 5 s default.
DEADLINE_MS = 30_000
expect.set_options(timeout=DEADLINE_MS)
STARTUP_DEADLINE = 120.0  # seconds for `make dev` to serve (DynamoDB Local's JVM, cold containers)
STOP_DEADLINE = 60.0  # seconds for it to stop after Ctrl-C (the stream poller, containers, DynamoDB Local)
# `make dev` is started as a background job of a non-interactive shell, nohup or a CI runner starts it:
# with SIGINT ignored, which it inherits. Ctrl-C must stop it all the same (it sets its own handler).
IGNORING_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)
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
    """`python -m local.dev` (what `make dev` runs) on free ports with its own data folder, stopped by
    Ctrl-C at the end. It runs in its own process group, which is killed whatever happens: nothing it
    started (DynamoDB Local, containers) is left behind."""
    port, stripe_port, dynamodb_port = free_ports(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "AWS_ENDPOINT"))}
    env["PYTHONPATH"] = str(ROOT / "shared")
    checkout = tmp_path_factory.mktemp("checkout")
    data = checkout / ".local-data"
    log_path = checkout / "make-dev.log"  # a file, not a pipe nobody reads while it runs (a full one blocks it)
    args = ["-m", "local.dev", "--port", str(port), "--stripe-port", str(stripe_port)]
    args += ["--dynamodb-port", str(dynamodb_port), "--data-dir", str(data)]
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", IGNORING_SIGINT, *args],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: the finally below reaches all it started
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + STARTUP_DEADLINE
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"make dev exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/credit-packages", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"make dev did not come up in {STARTUP_DEADLINE} s:\n{log_path.read_text()}")
            time.sleep(0.3)
        yield DevStack(url, f"http://127.0.0.1:{stripe_port}", process, data)
        process.send_signal(signal.SIGINT)  # Ctrl-C stops the whole stack cleanly
        try:
            code = process.wait(timeout=STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"make dev did not stop in {STOP_DEADLINE} s:\n{log_path.read_text()}") from None
        assert code == 0, log_path.read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever is left of it, if anything
        process.wait()


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    executable = shutil.which("chromium")
    assert executable, "Debian's chromium is not installed: `make install` installs it"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


def new_page(browser: Browser, **options: Any) -> Page:
    """A tab in a fresh context, whose actions and navigations wait up to DEADLINE_MS."""
    tab = browser.new_context(**options).new_page()
    tab.set_default_timeout(DEADLINE_MS)
    tab.set_default_navigation_timeout(DEADLINE_MS)
    return tab


def new_phone(browser: Browser, **options: Any) -> Page:
    """A tab as a phone shows the page: 390x844, touch, a mobile viewport."""
    return new_page(browser, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True, **options)


@pytest.fixture
def page(browser: Browser, dev_stack: DevStack) -> Iterator[Page]:
    tab = new_page(browser, viewport={"width": 1280, "height": 900})
    yield tab
    tab.context.close()


def on_site(stack: DevStack) -> re.Pattern[str]:
    """The site's URLs (the page, back from the hosted checkout page), and no other."""
    return re.compile("^" + re.escape(stack.url) + "/")


def run_action(page: Page, action: str, *, double: bool = False) -> Response:
    """Click a paid action's button (twice, for a double click) and wait for what a person waits for:
    the answer to its request (the example premium function, `actionPath` in web/config.js), then the
    page done with it (its button no longer busy: the balance and the history are read again)."""
    button = page.locator(f'button.action[data-action="{action}"]')
    path = f"/examples/{action}"
    with page.expect_response(
        lambda r: r.request.method == "POST" and urlsplit(r.url).path == path, timeout=DEADLINE_MS
    ) as answer:
        if double:
            button.dblclick()
        else:
            button.click()
    expect(button).not_to_have_attribute("aria-busy", "true")
    return answer.value


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
