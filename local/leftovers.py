"""Processes `make dev` starts that would outlive it, recorded so that the next start stops them.

A `kill -9` of `make dev` (or of the terminal it ran in) gives it no chance to stop what it started.
Its containers end by themselves (their pipe to it closes) and the Stripe emulator is a thread of
it, but DynamoDB Local is a Java process of its own: it keeps running, holding its port and its
data folder, and the next `make dev` could only say that the port is in use.

So each such child is recorded in a pid file in the data folder: its pid, what it is (its start
time and name, so that a pid the system has since given to another process is never taken for it;
its command line too, for people) and which `make dev` started it (likewise). On the next start,
`stop_leftover` stops the recorded process if it is still that process and the `make dev` that
started it is gone; if that `make dev` still runs, it is not a leftover: `StillRunning` says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from local.serving import write_json

STOP_TIMEOUT = 30.0  # seconds a leftover has to end after SIGTERM (a JVM on a loaded machine) before SIGKILL


class StillRunning(Exception):
    """The `make dev` that started the recorded process is still running."""

    def __init__(self, owner: int, path: Path) -> None:
        super().__init__(
            f"make dev (pid {owner}) is already running with this data folder ({path.parent}); "
            "stop it first, or give this one another --data-dir"
        )
        self.owner = owner


def identity(pid: int) -> str | None:
    """What process `pid` is: its start time and name; None if there is none. Two processes that had
    the same pid never have the same identity (they did not start at the same moment)."""
    if Path("/proc/self/stat").exists():  # Linux: the start time in clock ticks since boot, exact
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        name, _, rest = stat.partition(" (")[2].rpartition(") ")
        fields = rest.split()
        return f"{fields[19]} {name}" if len(fields) > 19 else None
    try:  # macOS and other systems without /proc: ps gives the start time to the second
        shown = subprocess.run(
            ["ps", "-o", "lstart=", "-o", "comm=", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    line = " ".join(shown.stdout.split())
    return line if shown.returncode == 0 and line else None


def command_line(pid: int) -> str | None:
    """Its command line, for people reading the pid file (identity() is what is compared)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None


def running(pid: int, known: str) -> bool:
    """Process `pid` is still the one `known` names, and not over: on Linux, a multi-threaded
    process whose first thread ended shows as a zombie while its other threads (a JVM's, holding
    its port) still run, so every thread is looked at."""
    if identity(pid) != known:
        return False
    tasks = Path(f"/proc/{pid}/task")
    if not tasks.is_dir():
        return True  # no /proc: ps answered for a live process
    try:
        states = [(task / "stat").read_text().rpartition(") ")[2].split()[0] for task in tasks.iterdir()]
    except (OSError, IndexError):
        return identity(pid) == known  # it ended while we looked, unless it is still listed
    return any(state not in ("Z", "X") for state in states)


def record(path: Path, pid: int, *, owner: int | None = None) -> None:
    """Record child `pid` of `owner` (this process by default) in `path`, atomically."""
    owner = os.getpid() if owner is None else owner
    entry = {
        "pid": pid,
        "identity": identity(pid),
        "commandLine": command_line(pid),
        "owner": owner,
        "ownerIdentity": identity(owner),
    }
    write_json(path, entry)


def forget(path: Path) -> None:
    """The recorded process was stopped cleanly: nothing to find next time."""
    path.unlink(missing_ok=True)


def stop_leftover(path: Path, *, timeout: float = STOP_TIMEOUT) -> int | None:
    """Stop the process recorded in `path` if it is a leftover (still that process, its `make dev`
    gone): SIGTERM, then SIGKILL after `timeout` seconds. Returns its pid if one was stopped. A
    process whose pid was reused is left alone. StillRunning if its `make dev` is still running."""
    try:
        entry = json.loads(path.read_text())
        pid, known = int(entry["pid"]), entry["identity"]
        owner, owner_known = int(entry["owner"]), entry["ownerIdentity"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):  # unreadable: it names nothing we could trust
        forget(path)
        return None
    if owner != os.getpid() and owner_known is not None and running(owner, owner_known):
        raise StillRunning(owner, path)
    if known is None or not running(pid, known):  # ended, or its pid is another process's now
        forget(path)
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        if not _ended(pid, known, timeout):
            os.kill(pid, signal.SIGKILL)
            _ended(pid, known, timeout)
    forget(path)
    return pid


def _ended(pid: int, known: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while running(pid, known):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
