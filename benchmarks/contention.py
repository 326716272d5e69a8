"""`make bench`: how many attempts a hot balance needs on DynamoDB Local, and whether any request ran out.

Many writers charge ONE user at once (the worst case for the ledger's seq guard). For each writer
count it prints throughput, outcomes and the distribution of retries per request, which is what the
Ledger's retry bounds (max_attempts, time_budget) are sized by.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "shared"))

from credits.errors import InsufficientCredits, TemporarilyUnavailable
from credits.ledger import Ledger
from local.dynamodb_local import DynamoDBLocal
from local.template import create_tables


class CountingLedger(Ledger):
    """A Ledger that counts the backoffs (lost races and retriable errors) of each request."""

    retries = threading.local()

    def _backoff(self, attempt: int) -> None:
        self.retries.count = getattr(self.retries, "count", 0) + 1
        super()._backoff(attempt)


def run(client: object, table: str, writers: int, requests: int, balance: int) -> None:
    ledger = CountingLedger(client, table)  # type: ignore[arg-type]
    user = f"hot-{writers}"
    ledger.grant(user, balance, type="gift", description="bench")
    retries: Counter[int] = Counter()
    lock = threading.Lock()

    def charge(_: int) -> str:
        ledger.retries.count = 0
        try:
            ledger.charge(user, 1, description="bench")
            outcome = "200"
        except InsufficientCredits:
            outcome = "402"
        except TemporarilyUnavailable:
            outcome = "503"
        with lock:
            retries[ledger.retries.count] += 1
        return outcome

    start = time.perf_counter()
    with ThreadPoolExecutor(writers) as pool:
        outcomes = Counter(pool.map(charge, range(requests)))
    elapsed = time.perf_counter() - start
    ordered = sorted(retries.elements())
    p99 = ordered[int(len(ordered) * 0.99) - 1]
    audit = ledger.audit(user)
    print(
        f"{writers:>7} {requests / elapsed:>8.0f} {outcomes['200']:>5} {outcomes['402']:>5} {outcomes['503']:>5}"
        f" {ordered[len(ordered) // 2]:>6} {p99:>6} {ordered[-1]:>6}   {'ok' if audit.ok else 'BROKEN'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--balance", type=int, default=200)
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    args = parser.parse_args()
    with DynamoDBLocal() as database:
        client = database.client()
        create_tables(client, {"CreditsTable": "bench-credits", "IdempotencyTable": "bench-idempotency"})
        print(f"{args.requests} charges of 1 credit against a balance of {args.balance}, one user")
        print("writers  req/s   200   402   503  p50-re p99-re max-re   audit")
        for writers in args.writers:
            run(client, "bench-credits", writers, args.requests, args.balance)


if __name__ == "__main__":
    main()
