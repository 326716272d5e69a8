"""`python -m tests.simulation --seed S --ops N [--plant NAME]`: one deterministic run.

Prints a summary (ops run, ops/s, faults injected by kind, outcome counts, the event log's hash);
on a failure, the seed, the op count, the failed invariant and the shortest history that still
fails it, with the command that replays that history. Exit status 1 on a failure.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict

from tests.simulation.plants import PLANTS
from tests.simulation.records import KNOWN_BUGS
from tests.simulation.shrink import parse_ranges, ranges, shrink
from tests.simulation.sim import DEFAULT_SEED, Result, simulate
from tests.simulation.workload import generate

DEFAULT_OPS = 20_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.simulation", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"the seed (default {DEFAULT_SEED})")
    parser.add_argument("--ops", type=int, default=DEFAULT_OPS, help=f"operations to run (default {DEFAULT_OPS})")
    parser.add_argument("--plant", choices=PLANTS, help="patch one known bug into the real code for the run")
    parser.add_argument("--keep", help="run only these ops of the seed's first --ops (e.g. 3,17-20): a shrunk history")
    parser.add_argument("--actors", type=int, default=48, help="most containers at once (default 48)")
    parser.add_argument("--log", help="write the whole event log to this file")
    parser.add_argument(
        "--strict", action="store_true", help=f"fail on the known bugs too ({', '.join(KNOWN_BUGS) or 'none now'})"
    )
    parser.add_argument(
        "--fail-on",
        action="append",
        default=[],
        choices=sorted(KNOWN_BUGS),
        metavar="BUG",
        help="fail on this known bug (repeatable): its shortest history",
    )
    parser.add_argument("--no-shrink", action="store_true", help="on a failure, do not look for a shorter history")
    parser.add_argument("--shrink-seconds", type=float, default=120.0, help="time for shrinking (default 120)")
    args = parser.parse_args(argv)

    started = time.monotonic()
    ops = generate(args.seed, args.ops)
    if args.keep:
        wanted = parse_ranges(args.keep)
        ops = [op for op in ops if op.n in wanted]

    def progress(count: int) -> None:
        elapsed = time.monotonic() - started
        print(f"  ... {count} ops in {elapsed:.0f} s ({count / elapsed:.0f} ops/s)", flush=True)

    log = open(args.log, "w") if args.log else None  # noqa: SIM115 - closed below
    try:
        result = simulate(
            args.seed,
            ops=ops,
            plant=args.plant,
            actors=args.actors,
            log=log,
            strict=args.strict,
            fail_on=args.fail_on,
            progress=progress,
        )
    finally:
        if log is not None:
            log.close()
    summary(result, args.plant)
    if result.ok:
        return 0
    assert result.violation is not None
    print()
    print(f"FAILED: seed {args.seed}, after {len(result.ops)} ops" + (f" (plant {args.plant})" if args.plant else ""))
    print(f"invariant {result.violation.invariant}: {result.violation.detail}")
    if args.no_shrink or args.keep:
        history, count = result.ops, args.ops
    else:
        print(f"shrinking (at most {args.shrink_seconds:.0f} s)...", flush=True)
        shrunk = shrink(
            args.seed,
            result,
            plant=args.plant,
            strict=args.strict,
            fail_on=args.fail_on,
            seconds=args.shrink_seconds,
            say=lambda line: print(line, flush=True),
        )
        history, count = shrunk.ops, shrunk.count
        assert shrunk.result.violation is not None
        print(f"shortest history found ({shrunk.runs} runs, {shrunk.seconds:.0f} s): {len(history)} ops")
        print(f"invariant {shrunk.result.violation.invariant}: {shrunk.result.violation.detail}")
    print()
    shown = history if len(history) <= 500 else history[-500:]
    if len(shown) < len(history):
        print(f"  ... the first {len(history) - len(shown)} ops (in the replay command), then:")
    for op in shown:
        print("  " + op.describe())
    plant = f" --plant {args.plant}" if args.plant else ""
    strict = (" --strict" if args.strict else "") + "".join(f" --fail-on {bug}" for bug in args.fail_on)
    keep = ranges([op.n for op in history])
    replay = f"python -m tests.simulation --seed {args.seed} --ops {count} --keep {keep}{plant}{strict} --no-shrink"
    print(f"\nreplay: {replay}")
    return 1


def summary(result: Result, plant: str | None) -> None:
    stats = result.stats
    ops = len(result.ops)
    cpu = stats.get("cpu_seconds", 0.0)
    print(f"seed {result.seed}" + (f", plant {plant}" if plant else "") + f": {ops} ops in {result.wall:.1f} s")
    print(f"  {ops / result.wall:.0f} ops/s ({ops / cpu if cpu else 0:.0f} ops per CPU second)")
    print(
        f"  {stats['attempts']} attempts on {stats['containers']} containers, {stats['steps']} steps, "
        f"{stats['virtual_seconds'] / 3600:.1f} virtual hours"
    )
    print(
        f"  {stats['transactions']} transactions, {stats['writes']} single writes, {stats['entries']} entries, "
        f"{stats['holds']} holds, {stats['payments_credited']} payments credited, "
        f"{stats['ttl_deleted']} items deleted by TTL"
    )
    print(
        f"  group commit: {stats['group_passes']} passes deciding {stats['intents_decided']} intents "
        f"(at most {stats['largest_pass']} in a pass; the largest transaction {stats['largest_transaction']} items); "
        f"{stats['intents_withdrawn']} intents withdrawn, {stats['intents_resent']} resent (taken off, not decided "
        f"again); {stats['negative_balances']} balances clawed below zero"
    )
    print("  lots: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in stats["lots"].items()))
    print("  auto top-up: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in stats["topups"].items()))
    print("  faults injected: " + ", ".join(f"{k} {v}" for k, v in stats["faults"].items()))
    by_kind: dict[str, list[str]] = defaultdict(list)
    for outcome, n in stats["outcomes"].items():
        kind, _, rest = outcome.partition(" ")
        by_kind[kind].append(f"{rest or 'done'} {n}")
    print("  outcomes:")
    for kind in sorted(by_kind):
        print(f"    {kind}: " + ", ".join(by_kind[kind]))
    if stats.get("known_bugs"):
        print("  known bugs of the code under test observed (tolerated; --strict fails on them): ")
        for name, n in stats["known_bugs"].items():
            print(f"    {name}: {n} times")
    print(f"  event log digest {result.digest}")
    print("  PASSED" if result.ok else "  FAILED")


if __name__ == "__main__":
    sys.exit(main())
