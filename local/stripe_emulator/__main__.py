"""The emulator on the command line: serve until Ctrl-C (SIGINT) or SIGTERM.

python -m local.stripe_emulator --port 12111 --webhook-url URL --webhook-secret whsec_x --api-key sk_x
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from local.stripe_emulator.server import StripeEmulator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # what stops the command line (main)


def main(argv: list[str] | None = None) -> None:
    """Command line: serve until Ctrl-C (SIGINT) or SIGTERM."""
    parser = argparse.ArgumentParser(description="Local Stripe emulator: API, checkout page, webhooks.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12111)
    parser.add_argument("--webhook-url", help="where signed events are POSTed (default: only recorded)")
    parser.add_argument("--webhook-secret", default="whsec_local")
    parser.add_argument("--api-key", default="sk_test_local")
    parser.add_argument("--public-url", help="base URL of checkout page links, if not http://HOST:PORT")
    parser.add_argument("--state", type=Path, help="keep the state in this JSON file (every change, as it happens)")
    args = parser.parse_args(argv)
    emulator = StripeEmulator(
        api_key=args.api_key,
        webhook_secret=args.webhook_secret,
        webhook_url=args.webhook_url,
        host=args.host,
        port=args.port,
        state_path=args.state,
    )
    emulator.verbose = True
    # Ctrl-C (SIGINT) and SIGTERM stop it, whatever this process inherited: a background job of a
    # non-interactive shell, nohup and CI runners start it with SIGINT ignored, and Python then installs
    # no KeyboardInterrupt handler of its own. The handler raises (it never sets an Event the main thread
    # waits on: Event.set() in a handler deadlocks if the signal lands while this thread holds its lock).
    previous = {sig: signal.signal(sig, signal.default_int_handler) for sig in STOP_SIGNALS}
    try:
        base_url = emulator.start()
        if args.public_url:
            emulator.base_url = args.public_url.rstrip("/")
        print(
            f"Stripe emulator on {base_url}, webhooks to {args.webhook_url or 'nowhere'}; Ctrl-C stops",
            flush=True,
        )
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        for sig in STOP_SIGNALS:  # a second Ctrl-C does not cut the shutdown short
            signal.signal(sig, signal.SIG_IGN)
        emulator.stop()
        for sig, handler in previous.items():
            if handler is not None:  # None: not installed from Python, nothing to put back
                signal.signal(sig, handler)


if __name__ == "__main__":
    main()
