"""`make dev`: the whole product on one machine, offline.

DynamoDB Local (data kept under .local-data/), the tables from template.yaml, the example catalog,
the Stripe emulator with its hosted checkout page (or real Stripe in test mode, when
STRIPE_SECRET_KEY is set), the local gateway serving the API, the webhook URL and the page, and the
credits table's stream feeding the events function, which puts its events on a local EventBridge
bus (the page shows them), and the expire function's sweep of credit lots, every `--sweep-every`
seconds instead of once a day. Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import string
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from local import leftovers
from local.containers import SHOW_METRICS, ContainerError, ContainerPool
from local.dynamodb_local import DynamoDBLocal, DynamoDBLocalError
from local.eventbridge import LocalEventBridge
from local.schedules import Schedule
from local.serving import write_json
from local.streams import StreamPoller
from local.template import ROOT, TABLE_VARIABLES, TemplateError, create_tables

if TYPE_CHECKING:
    from local.gateway import Gateway
    from local.stripe_emulator import StripeEmulator

TABLES = {"CreditsTable": "credits", "IdempotencyTable": "credits-idempotency"}
EXAMPLE_CATALOG = ROOT / "local" / "packages.example.json"
EMULATOR_API_KEY = "sk_test_local_emulator"
EMULATOR_WEBHOOK_SECRET = "whsec_local_emulator"  # noqa: S105 - the local emulator's, not a secret
IAM_CREDENTIALS_FILE = "local-iam-credentials.json"  # the local key /internal/* accepts, under --data-dir
EVENT_BUS = "credits-local"
EVENTS_FUNCTION = "events"  # the function the credits table's stream invokes (template.yaml)
EXPIRE_FUNCTION = "expire"  # the daily sweep of credit lots (template.yaml), run every --sweep-every s
SWEEP_EVERY = 60.0  # seconds between local sweeps (DEV_SWEEP_EVERY; 0: never)
EVENTS_FILE = "eventbridge-events.json"  # the local bus's events, under --data-dir
STREAM_CHECKPOINTS_FILE = "stream-checkpoints.json"  # how far the events function has read the stream
INSIGHTS_FUNCTION = "insights"  # the stream's second reader: each user's daily usage totals (template.yaml)
INSIGHTS_CHECKPOINTS_FILE = "insights-checkpoints.json"
TOPUP_FUNCTION = "topup"  # the stream's third reader: auto top-ups charged to saved cards (template.yaml)
TOPUP_CHECKPOINTS_FILE = "topup-checkpoints.json"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C, and what a supervisor sends
STATE_FILE = "stack.json"  # where the `credits` CLI finds this stack while it runs (credits.cli)
# DynamoDB Local's pid (and what it is) while it runs, under --data-dir: the next start stops it if a
# `kill -9` of make dev left it running (local.leftovers). The Stripe emulator is a thread of make dev,
# and its containers end when their pipe to it closes: nothing else outlives it.
DYNAMODB_PID_FILE = "dynamodb-local.pid"


class StartupError(Exception):
    """A clear, user-facing reason the stack cannot start."""


def port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(prog="make dev", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=env.get("DEV_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env.get("DEV_PORT", "8000")), help="page, API and webhook")
    parser.add_argument("--stripe-port", type=int, default=int(env.get("DEV_STRIPE_PORT", "12111")))
    parser.add_argument("--dynamodb-port", type=int, default=int(env.get("DEV_DYNAMODB_PORT", "8001")))
    parser.add_argument("--data-dir", type=Path, default=Path(env.get("DEV_DATA_DIR", ROOT / ".local-data")))
    parser.add_argument(
        "--template",
        dest="templates",
        type=Path,
        action="append",
        default=[],
        metavar="PATH",
        help="also serve the HttpApi functions of your own SAM template (repeatable): CodeUri from its "
        "folder, the layer importable, `!ImportValue credits-CreditsTableName` the local table",
    )
    parser.add_argument(
        "--sweep-every",
        type=float,
        default=float(env.get("DEV_SWEEP_EVERY", SWEEP_EVERY)),
        metavar="SECONDS",
        help="run the expire function (credit lots' expirations and warnings; once a day on AWS) every "
        f"SECONDS, the first time at start ({SWEEP_EVERY:g} by default; 0: never)",
    )
    parser.add_argument(
        "--show-metrics",
        action="store_true",
        help="also print the functions' CloudWatch metrics (EMF JSON lines) and Powertools' metric warnings",
    )
    return parser.parse_args(argv)


def stop_leftovers(data_dir: Path) -> None:
    """Stop what an earlier `make dev` on this data folder left running when it was killed (`kill -9`
    gives it no chance to stop DynamoDB Local, a process of its own): found by its pid file, only if
    it is still that process. StillRunning if that `make dev` itself still runs."""
    stopped = leftovers.stop_leftover(data_dir / DYNAMODB_PID_FILE)
    if stopped is not None:
        print(f"stopped DynamoDB Local (pid {stopped}), left running by a make dev that was killed", flush=True)


def request_printer() -> Callable[[str], None]:
    """The request log's printer: one line at a time, stamped with the time of day."""
    lock = threading.Lock()

    def write(line: str) -> None:
        with lock:
            sys.stdout.write(f"{time.strftime('%H:%M:%S')} {line}\n")
            sys.stdout.flush()

    return write


def claim_ports(args: argparse.Namespace, *, real_stripe: bool) -> bool:
    """Stop what a killed `make dev` on this data folder left running, then check that every port
    is free; False (the reason printed) if one is not, or if that `make dev` still runs."""
    try:
        stop_leftovers(args.data_dir)  # so the same command comes up again on the same ports
    except leftovers.StillRunning as exc:
        print(f"error: {exc}", file=sys.stderr)
        return False
    wanted = {"--port": args.port, "--dynamodb-port": args.dynamodb_port}
    if not real_stripe:
        wanted["--stripe-port"] = args.stripe_port
    for flag, port in wanted.items():
        if not port_free(args.host, port):
            print(
                f"error: port {port} is in use ({flag}); stop what uses it or pick another, e.g. "
                f"`make dev ARGS='{flag} {port + 100}'`",
                file=sys.stderr,
            )
            return False
    return True


def database_for(args: argparse.Namespace) -> DynamoDBLocal:
    """make dev's DynamoDB Local: its data and its pid file under --data-dir."""
    return DynamoDBLocal(
        port=args.dynamodb_port,
        db_path=args.data_dir / "dynamodb",
        host=args.host,
        pid_file=args.data_dir / DYNAMODB_PID_FILE,
    )


def stripe_settings_ok(args: argparse.Namespace, *, real_stripe: bool) -> bool:
    """With real Stripe (STRIPE_SECRET_KEY set), a test-mode key and the webhook secret are set; False
    (the reason printed) if not."""
    if not real_stripe:
        return True
    if not os.environ["STRIPE_SECRET_KEY"].startswith(("sk_test_", "rk_test_")):
        print("error: make dev only uses Stripe test-mode keys (sk_test_...).", file=sys.stderr)
        return False
    if not os.environ.get("STRIPE_WEBHOOK_SECRET"):
        print(
            "error: STRIPE_SECRET_KEY is set, so real Stripe (test mode) is used: also set "
            "STRIPE_WEBHOOK_SECRET to the secret that "
            f"`stripe listen --forward-to http://{args.host}:{args.port}/webhook` prints.",
            file=sys.stderr,
        )
        return False
    return True


@dataclass
class Stack:
    """What `make dev` runs, as far as it has started; `stop` stops what did, the last started first."""

    args: argparse.Namespace
    real_stripe: bool
    database: DynamoDBLocal
    bridge: LocalEventBridge
    emulator: StripeEmulator | None = None
    gateway: Gateway | None = None
    events: ContainerPool | None = None
    poller: StreamPoller | None = None
    insights: ContainerPool | None = None
    insights_poller: StreamPoller | None = None
    topup: ContainerPool | None = None
    topup_poller: StreamPoller | None = None
    expire: ContainerPool | None = None
    sweeps: Schedule | None = None

    @property
    def base(self) -> str:
        """The page's, the API's and the webhook's address."""
        return f"http://{self.args.host}:{self.args.port}"

    def start(self) -> None:
        """Start everything, in order; the banner printed at the end."""
        args = self.args
        self.database.start()
        create_tables(self.database.client(), TABLES)
        self.bridge.start()
        env = self.environment()
        os.environ.pop("AWS_PROFILE", None)
        if not self.real_stripe:
            self.emulator = self.start_emulator()
            env.update(
                {
                    "STRIPE_SECRET_KEY": EMULATOR_API_KEY,
                    "STRIPE_WEBHOOK_SECRET": EMULATOR_WEBHOOK_SECRET,
                    "STRIPE_API_BASE": self.emulator.base_url,
                }
            )
        os.environ.update(env)

        seed_catalog()

        from local.gateway import Gateway

        stripe_api_base = self.emulator.base_url if self.emulator else None
        key_id, secret = _iam_credentials(args.data_dir)
        self.gateway = Gateway(
            token_secret=_token_secret(args.data_dir),
            host=args.host,
            port=args.port,
            page_config={"apiBase": "", "auth": "local", "stripe": "real" if self.real_stripe else "emulator"},
            iam_credentials=(key_id, secret),
            event_bridge=self.bridge,
            stripe_emulator_url=stripe_api_base,  # the page's test tools
            region=env["AWS_DEFAULT_REGION"],  # /internal/* accepts signatures for this region only
            request_log=request_printer(),  # one line per request
            templates=args.templates,  # teams' own functions, beside ours (TemplateError: a clear stop)
        )
        # The events function runs in its own container, as the stream's event source mapping
        # invokes it on Lambda; cold-started with the gateway's, so a missing setting fails now.
        self.events = ContainerPool(EVENTS_FUNCTION, limit=1)
        self.expire = ContainerPool(EXPIRE_FUNCTION, limit=1)  # as on Lambda: its own container
        self.insights = ContainerPool(INSIGHTS_FUNCTION, limit=1)
        self.topup = ContainerPool(TOPUP_FUNCTION, limit=1)
        pools = (self.events, self.expire, self.insights, self.topup)
        with ThreadPoolExecutor(len(pools)) as warming:
            warm = [warming.submit(pool.warm, 1) for pool in pools]
            self.gateway.start()
            for started in warm:
                started.result()
        # The table's stream, read as each function's event source mapping reads it
        self.poller = self.read_stream(EVENTS_FUNCTION, self.events, STREAM_CHECKPOINTS_FILE)
        self.insights_poller = self.read_stream(INSIGHTS_FUNCTION, self.insights, INSIGHTS_CHECKPOINTS_FILE)
        self.topup_poller = self.read_stream(TOPUP_FUNCTION, self.topup, TOPUP_CHECKPOINTS_FILE)
        if args.sweep_every > 0:
            self.sweeps = self.start_sweeps(self.expire, args.sweep_every)
        write_state(
            args.data_dir,
            api=self.base,
            dynamodb_endpoint=self.database.endpoint,
            region=env["AWS_DEFAULT_REGION"],
            stripe_api_base=stripe_api_base,
        )
        print(self.banner(self.gateway, key_id, secret), flush=True)

    def read_stream(self, function: str, pool: ContainerPool, checkpoints: str) -> StreamPoller:
        """The table's stream delivered to `function`'s containers from the oldest record on (what was
        written while make dev was down is not missed), its checkpoints kept in `checkpoints`."""
        return StreamPoller.for_function(
            function,
            endpoint=self.database.endpoint,
            table_name=TABLES["CreditsTable"],
            deliver=pool.invoke,
            starting_position="TRIM_HORIZON",
            checkpoint_path=self.args.data_dir / checkpoints,
        ).start()

    def environment(self) -> dict[str, str]:
        """The functions' settings (inherited by their containers), less Stripe's."""
        base = self.base
        return {
            "AWS_ENDPOINT_URL_DYNAMODB": self.database.endpoint,
            "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "ACTION_COSTS": os.environ.get("ACTION_COSTS", default_action_costs()),
            "CHECKOUT_SUCCESS_URL": f"{base}/?checkout=success&session_id={{CHECKOUT_SESSION_ID}}",
            "CHECKOUT_CANCEL_URL": f"{base}/?checkout=cancelled",
            "POWERTOOLS_SERVICE_NAME": "credits",
            "POWERTOOLS_METRICS_NAMESPACE": "Credits",
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": os.environ.get("POWERTOOLS_LOG_LEVEL", "WARNING"),
            # Metrics are printed (as EMF lines) only when asked to; the containers leave them out
            # otherwise (local.containers.hide_metrics: this setting alone does not silence them).
            "POWERTOOLS_METRICS_DISABLED": "false" if self.args.show_metrics else "true",
            SHOW_METRICS: "1" if self.args.show_metrics else "0",
            "EVENT_BUS_NAME": EVENT_BUS,
            "AWS_ENDPOINT_URL_EVENTBRIDGE": self.bridge.endpoint,
            "LOW_BALANCE_THRESHOLD": os.environ.get("LOW_BALANCE_THRESHOLD", "10"),
            "EXPIRY_WARNING_DAYS": os.environ.get("EXPIRY_WARNING_DAYS", "7"),
            **{variable: TABLES[logical] for logical, variable in TABLE_VARIABLES.items()},
        }

    def start_sweeps(self, expire: ContainerPool, every: float) -> Schedule:
        """The expire function on a local schedule: a line in the request log when it swept something."""
        log = request_printer()

        def answered(answer: object) -> None:
            if isinstance(answer, dict) and answer.get("accounts"):
                log(f"expire: {answer['accounts']} accounts swept, {answer.get('expirations', 0)} expirations written")

        return Schedule(EXPIRE_FUNCTION, every, expire.invoke, answered=answered, log=log).start()

    def start_emulator(self) -> StripeEmulator:
        """The local Stripe emulator, delivering its webhooks to the gateway's webhook URL."""
        from local.stripe_emulator import StripeEmulator

        emulator = StripeEmulator(
            api_key=EMULATOR_API_KEY,
            webhook_secret=EMULATOR_WEBHOOK_SECRET,
            webhook_url=f"{self.base}/webhook",
            host=self.args.host,
            port=self.args.stripe_port,
            state_path=self.args.data_dir / "stripe-emulator.json",  # customers and prices outlive a restart
        )
        emulator.start()
        return emulator

    def banner(self, gateway: Gateway, key_id: str, secret: str) -> str:
        """What runs where, and how to reach it."""
        args, base = self.args, self.base
        stripe = "real Stripe, test mode" if self.real_stripe else (self.emulator.base_url if self.emulator else "")
        return (
            "\n  Credits, running offline\n"
            f"  page:      {base}/\n"
            f"  API:       {base}  (routes from template.yaml; /internal/* needs SigV4 with the local key below)\n"
            f"  API docs:  {base}/docs  (the contract: {base}/openapi.yaml)\n"
            f"  webhook:   {base}/webhook\n"
            f"{team_routes(gateway)}"
            f"{balance_curl(base)}"
            "  CLI:       .venv/bin/credits user alice  (finds this stack; `credits --help`)\n"
            f"  Stripe:    {stripe}\n"
            f"  DynamoDB:  {self.database.endpoint}  (data in {args.data_dir / 'dynamodb'})\n"
            f"  events:    table stream -> functions/{EVENTS_FUNCTION} -> local EventBridge {self.bridge.endpoint} "
            f"(bus {EVENT_BUS}; GET /_local/events; the page shows yours)\n"
            f"  insights:  table stream -> functions/{INSIGHTS_FUNCTION} -> daily usage totals (GET /credits/usage)\n"
            f"  top-ups:   table stream -> functions/{TOPUP_FUNCTION} -> saved cards charged off-session\n"
            f"{sweep_line(args.sweep_every)}"
            f"{internal_api_help(base, key_id, secret, args.data_dir / IAM_CREDENTIALS_FILE, region=gateway.region)}"
            f"  log:       one line per request{'' if args.show_metrics else '; metrics hidden (--show-metrics)'}\n"
            "  Ctrl-C stops everything.\n"
        )

    def stop(self) -> None:
        """Stop what was started, the last started first (the CLI's state file first of all)."""
        (self.args.data_dir / STATE_FILE).unlink(missing_ok=True)
        if self.sweeps is not None:
            self.sweeps.stop()
        if self.expire is not None:
            self.expire.close()
        if self.topup_poller is not None:
            self.topup_poller.stop()
        if self.topup is not None:
            self.topup.close()
        if self.insights_poller is not None:
            self.insights_poller.stop()
        if self.insights is not None:
            self.insights.close()
        if self.poller is not None:
            self.poller.stop()
        if self.events is not None:
            self.events.close()
        if self.gateway is not None:
            self.gateway.stop()
        self.bridge.stop()
        if self.emulator is not None:
            self.emulator.stop()
        self.database.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    real_stripe = bool(os.environ.get("STRIPE_SECRET_KEY")) and not os.environ.get("STRIPE_API_BASE")
    if not claim_ports(args, real_stripe=real_stripe) or not stripe_settings_ok(args, real_stripe=real_stripe):
        return 2
    bridge = LocalEventBridge(bus_name=EVENT_BUS, host=args.host, state_path=args.data_dir / EVENTS_FILE)
    stack = Stack(args, real_stripe, database_for(args), bridge)
    # Ctrl-C (SIGINT) and SIGTERM stop everything, at any moment (startup included) and whatever this
    # process inherited: a background job of a non-interactive shell, nohup and CI runners start it with
    # SIGINT ignored, and Python then installs no KeyboardInterrupt handler of its own. The handler
    # raises; it never sets an Event the main thread waits on (Event.set() in a signal handler
    # deadlocks when the signal lands while the main thread holds that Event's lock).
    previous = {sig: signal.signal(sig, signal.default_int_handler) for sig in STOP_SIGNALS}
    try:
        stack.start()
        threading.Event().wait()  # until Ctrl-C or SIGTERM
        return 0  # pragma: no cover - the wait only ends by a signal
    except KeyboardInterrupt:
        return 0
    except (StartupError, TemplateError, DynamoDBLocalError, ContainerError, leftovers.StillRunning) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        for sig in STOP_SIGNALS:  # a second Ctrl-C does not cut the shutdown short (nothing left running)
            signal.signal(sig, signal.SIG_IGN)
        stack.stop()
        print("stopped.", flush=True)
        for sig, handler in previous.items():
            if handler is not None:  # None: not installed from Python, nothing to put back
                signal.signal(sig, handler)


def write_state(data_dir: Path, *, api: str, dynamodb_endpoint: str, region: str, stripe_api_base: str | None) -> None:
    """What the `credits` CLI needs to find this stack (credits.cli): removed when make dev stops."""
    state = {
        "pid": os.getpid(),
        "api": api,
        "dynamodbEndpoint": dynamodb_endpoint,
        "region": region,
        "creditsTable": TABLES["CreditsTable"],
        "idempotencyTable": TABLES["IdempotencyTable"],
        "lowBalanceThreshold": int(os.environ.get("LOW_BALANCE_THRESHOLD", "10")),
        "expiryWarningDays": int(os.environ.get("EXPIRY_WARNING_DAYS", "7")),
        # the emulator's fixed local key; with real Stripe the CLI reads STRIPE_SECRET_KEY itself
        "stripe": {"apiBase": stripe_api_base, "secretKey": EMULATOR_API_KEY} if stripe_api_base else None,
    }
    write_json(data_dir / STATE_FILE, state, indent=2)


def seed_catalog() -> None:
    """Import the example catalog (and its Stripe prices) when the catalog is empty."""
    from credits.aws import dynamodb_client
    from credits.cli import main as credits_cli
    from credits.packages import Catalog

    if Catalog(dynamodb_client(), os.environ["CREDITS_TABLE_NAME"]).all():
        return
    if credits_cli(["packages", "import", str(EXAMPLE_CATALOG), "--sync-stripe"]) != 0:
        raise StartupError("could not import the example catalog")


def default_action_costs() -> str:
    """The price list: the template's `ActionCosts` default, the one list everything serves."""
    from local.template import load

    return str(load()["Parameters"]["ActionCosts"]["Default"])


def team_routes(gateway: Gateway) -> str:
    """The banner's lines for the routes of the teams' templates (--template), if any."""
    lines = []
    for team in gateway.teams:
        served = ", ".join(f"{r.method} {r.path}" + (" (SigV4)" if r.auth == "AWS_IAM" else "") for r in team.routes)
        lines.append(f"  yours:     {served}  (from {team.path})\n")
    return "".join(lines)


def sweep_line(every: float) -> str:
    """The banner's line on the expire function's local schedule."""
    when = f"every {every:g} s" if every > 0 else "never (--sweep-every 0)"
    return (
        f"  expiry:    functions/{EXPIRE_FUNCTION} (credit lots' expirations and warnings) {when}; "
        "once a day on AWS (--sweep-every SECONDS)\n"
    )


def balance_curl(base: str) -> str:
    """The banner's lines for the JWT routes with curl: sign in locally, then ask the balance."""
    sign_in = f'curl -s -X POST {base}/local/sign-in -d \'{{"user": "alice"}}\''
    parse_answer = "python3 -c 'import json, sys; print(json.load(sys.stdin)[\"token\"])'"
    return (
        f"  curl:      TOKEN=$({sign_in} | {parse_answer})\n"
        f'             curl -s {base}/credits/balance -H "Authorization: Bearer $TOKEN"\n'
    )


def internal_api_help(base: str, key_id: str, secret: str, kept_in: Path, *, region: str = "us-east-1") -> str:
    """The banner's lines on calling /internal/* (IAM on AWS) with the local key, ready to paste:
    signed for `region`, the only one the local gateway accepts."""
    grant = '{"userId":"alice","amount":100,"type":"gift","description":"welcome"}'
    client = "from credits.client import CreditsClient; " + (
        f'print(CreditsClient("{base}", region="{region}").grant("alice", 100, description="welcome"))'
    )
    return (
        f"  IAM key:   {key_id} (local only; kept in {kept_in}); /internal/* with curl (region {region}):\n"
        f'    curl --aws-sigv4 "aws:amz:{region}:execute-api" --user "{key_id}:{secret}" \\\n'
        f"      -H 'content-type: application/json' -d '{grant}' {base}/internal/credits/grant\n"
        "  and from Python (credits.client, the caller's AWS credential chain):\n"
        f"    AWS_ACCESS_KEY_ID={key_id} AWS_SECRET_ACCESS_KEY={secret} \\\n"
        f"      PYTHONPATH=shared .venv/bin/python -c '{client}'\n"
    )


def _kept(path: Path, make: Callable[[], str]) -> str:
    """A local secret kept with the data (created once, readable by its owner only)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(make())
    return path.read_text().strip()


def _token_secret(data_dir: Path) -> str:
    """The local sign-in key, kept with the data so sign-ins survive a restart."""
    return _kept(data_dir / "local-signing-key", lambda: secrets.token_urlsafe(32))


def _iam_credentials(data_dir: Path) -> tuple[str, str]:
    """The local IAM key (access key id, secret access key) that /internal/* accepts SigV4 signatures
    of, kept with the data so a service configured with it keeps working across restarts."""

    def make() -> str:
        upper = string.ascii_uppercase + string.digits
        key_id = "AKIALOCAL" + "".join(secrets.choice(upper) for _ in range(11))
        secret = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(40))
        return json.dumps({"accessKeyId": key_id, "secretAccessKey": secret})

    kept = json.loads(_kept(data_dir / IAM_CREDENTIALS_FILE, make))
    return kept["accessKeyId"], kept["secretAccessKey"]


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "shared"))
    sys.exit(main())
