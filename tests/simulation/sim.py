"""One simulated run: the real ledger and payments on the in-memory table, from a seed, with faults.

`simulate(seed, count)` generates the seed's workload (`workload.py`), runs it on simulated
containers (`scheduler.py`) whose store is the `MemoryStore` (`store.py`) seen through fault
injection, and checks every commit and every answer against the independent model (`model.py`),
then the end state (the ledger's own audit, the payments audit). It returns a `Result`: the first
violation if any, the counts, and the hash of the event log (the same seed gives the same hash).
"""

from __future__ import annotations

import gc
import hashlib
import heapq
import random
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, Any

from credits import finance, insights, keys
from credits.cards import Cards, SavedCard
from credits.errors import CreditsError, TemporarilyUnavailable
from credits.ledger import AutoTopUp, Idempotency, Ledger, LotTerms
from credits.ledger.codec import transaction
from credits.packages import Catalog
from credits.payments import Payments
from credits.store import Put
from tests.simulation import plants
from tests.simulation.model import Attempt, Model, Payment, Violation
from tests.simulation.records import POSTS
from tests.simulation.scheduler import Actor, ActorStore, Faults, Killed, Scheduler, Stopped
from tests.simulation.store import Change, MemoryStore
from tests.simulation.stripe import event
from tests.simulation.workload import LOT_PACKAGE_BY_ID, PACKAGES, REASON, START, TOPUP_PACKAGE, USERS, Op, generate

# START (workload.py): 2026-01-31T22:00:00Z, the first month ends two hours in
DEFAULT_SEED = 1
TIME_BUDGET = 12.0
MAX_TRIES = 40  # a client gives up on a request after this many attempts (a liveness failure)
MAX_DELIVERIES = 60  # Stripe retries a webhook for days; a payment that never settles is a failure

FAULT_RATES: dict[str, float] = {
    "read_throttle": 0.002,  # a read that ran out of retries: TemporarilyUnavailable
    "write_throttle": 0.003,  # a single write that ran out of retries, not applied
    "write_lost": 0.004,  # a single write applied, its answer lost (resent, or TemporarilyUnavailable)
    "transact_throttle": 0.004,  # a transaction not applied: TemporarilyUnavailable ("may have landed")
    "transact_lost": 0.008,  # a transaction committed, its answer lost (TemporarilyUnavailable, or a resend)
    "combiner_killed": 0.04,  # a combiner dies right after reading the intents
    "crash": 0.0004,  # a container dies at any yield point
    "clock_jump": 0.0003,  # a container's wall clock jumps forward
    "deadline_jump": 0.0004,  # a container's monotonic clock jumps past its deadlines
    "slow_call": 0.01,  # a store call takes 20 to 400 ms
    "short_budget": 0.08,  # a waiter with a short time budget: it gives up and withdraws
}


@dataclass
class Context:
    ledger: Ledger
    payments: Payments
    cards: Cards


@dataclass
class Result:
    seed: int
    ops: list[Op]  # the ops the run admitted (its history)
    violation: Violation | None
    wall: float
    stats: dict[str, Any] = field(default_factory=dict)
    digest: str = ""

    @property
    def ok(self) -> bool:
        return self.violation is None


class Job:
    """An attempt as the scheduler runs it."""

    __slots__ = ("att", "redelivery", "sim")

    def __init__(self, sim: Simulation, att: Attempt, redelivery: bool = False) -> None:
        self.sim = sim
        self.att = att
        self.redelivery = redelivery

    def run(self, actor: Actor) -> Any:
        return self.sim.execute(actor, self.att)


class Simulation:
    def __init__(
        self,
        seed: int,
        ops: list[Op],
        *,
        actors: int = 48,
        rates: dict[str, float] | None = None,
        log: IO[str] | None = None,
    ) -> None:
        self.seed = seed
        self.ops = ops
        self.log_file = log
        self.hash = hashlib.blake2b(digest_size=16)
        self.lines: list[str] = []
        root = random.Random(f"simulation:{seed}")
        self.ids = random.Random(root.getrandbits(64))
        self.ttl_rng = random.Random(root.getrandbits(64))
        self.faults = Faults(dict(FAULT_RATES if rates is None else rates))
        self.sched = Scheduler(
            random.Random(root.getrandbits(64)),
            self.faults,
            start=START,
            max_actors=actors,
            setup=self._setup,
            log=self.log,
            trace=self.trace,
        )
        self.table = MemoryStore(lambda: self.sched.now, lambda: self.ttl_rng.uniform(0, 7200.0))
        self.model = Model(self.table, lambda: self.sched.now, self.sched.max_clock, lambda: self.sched.current)
        self.model.audit_payment = self._audit_payment
        self.table.observers.append(self._observe)
        self.sched.on_step = self.table.sweep_ttl
        self.violation: Violation | None = None
        self.outcomes: Counter[str] = Counter()
        self.attempts = 0
        self.admitted: list[Op] = []
        self.progress: Callable[[int], None] | None = None
        self.feed = Feed(self)
        # a container of our own, outside the run: reads for the audits (no yields, no faults)
        self.checker = Ledger(None, store=self.table, clock=lambda: self.sched.now, new_id=self.new_id)
        catalog = Catalog.on(self.table)
        self.checker_payments = Payments(self.checker, catalog, store=self.table, clock=lambda: self.sched.now)
        for package in PACKAGES:
            catalog.put(package)
        for i in range(USERS):  # each user's Stripe customer (a detached card names it)
            user = f"u{i:02d}"
            self.table.write(Put({"pk": keys.customer_pk(customer(user)), "sk": keys.CUSTOMER_SK, "user_id": user}))

    # ---- plumbing -------------------------------------------------------------------------------

    def log(self, line: str) -> None:
        lines = self.lines
        lines.append(f"{self.sched.now:.6f} {line}\n")
        if len(lines) >= 4096:
            self.flush()

    def trace(self, who: str, what: str) -> None:
        lines = self.lines
        lines.append(f"{who} {what}\n")
        if len(lines) >= 4096:
            self.flush()

    def flush(self) -> None:
        text = "".join(self.lines)
        self.lines.clear()
        self.hash.update(text.encode())
        if self.log_file is not None:
            self.log_file.write(text)

    def new_id(self) -> str:
        return f"{self.ids.getrandbits(128):032x}"

    def _setup(self, actor: Actor) -> None:
        store = ActorStore(actor, self.table, self.log)
        ledger = Ledger(
            None,
            store=store,
            clock=actor.clock,
            monotonic=actor.monotonic,
            sleep=actor.sleep,
            rng=actor.rng,
            new_id=self.new_id,
            time_budget=TIME_BUDGET,
        )
        actor.payments_ms = 0

        def payments_clock() -> float:
            # the last time payments read (what a purchase's lot expiry counts from): the model's
            now = actor.clock()
            actor.payments_ms = int(now * 1000)
            return now

        payments = Payments(ledger, Catalog.on(store), store=store, clock=payments_clock)
        actor.context = Context(ledger, payments, Cards(store=store, clock=actor.clock))

    def fail(self, violation: Violation) -> None:
        """The first violation stops the run."""
        if self.violation is None:
            self.violation = violation
            self.log(f"VIOLATION {violation}")
        self.sched.stop()
        raise Stopped

    def _observe(self, kind: str, changes: list[Change]) -> None:
        if self.log_file is not None:
            self.log(f"{kind} {' '.join(f'{c.key[0]}/{c.key[1]}' for c in changes)}")
        try:
            self.model.observe(kind, changes)
        except Violation as violation:
            self.fail(violation)
        except Exception:  # noqa: BLE001 - the model's own failure, never the code's: stop the run
            self.fail(Violation("simulator", traceback.format_exc()))

    # ---- attempts -------------------------------------------------------------------------------

    def attempt(self, op: Op, try_no: int) -> Attempt:
        self.attempts += 1
        req = self.model.req(op, self._fingerprint(op))
        # its own generator: its faults, backoff and client's choices stay its own in any history
        att = Attempt(self.attempts, op, req, try_no, rng=random.Random((self.seed << 48) | (op.n << 8) | try_no))
        if op.kind in ("capture", "release"):
            if req.hold_target is None:
                # the hold its reserve was answered; else (not answered yet, refused) most often the
                # user's latest hold, else one that does not exist; a retry or repeat names the same
                target = self.model.reqs.get(op.target) if op.target is not None else None
                hold = target.hold_answer if target is not None else None
                if hold is None and att.rng.random() < 0.7:
                    hold = self.model.user(op.user).last_hold
                req.hold_target = hold or f"none-r{op.target}"
            att.hold_id = req.hold_target
        return att

    @staticmethod
    def _fingerprint(op: Op) -> str:
        """What a client's Idempotency-Key is sent with (the HTTP layer hashes route, user and body)."""
        terms = f"|{op.category}|{op.priority}|{op.expires_ms}|{op.label}" if op.category else ""
        return f"{op.kind}|{op.user}|{op.amount}|{op.ref}|{op.type}|{op.ttl}|{op.force}{terms}"

    @staticmethod
    def _terms(op: Op) -> LotTerms | None:
        if op.category is None:
            return None
        return LotTerms(op.category, op.priority, op.expires_ms, op.label, op.source)

    def start(self, job: Job) -> None:
        att = job.att
        if job.redelivery:
            self.model.payment(att.op).pending -= 1
        r = att.rng
        if att.op.kind not in ("payment", "read") and self.faults.roll("short_budget", r):
            att.budget = r.uniform(0.001, 0.03) if r.random() < 0.5 else r.uniform(0.03, 0.3)
        self.model.started(att)

    def execute(self, actor: Actor, att: Attempt) -> tuple[str, Any, str, str]:
        """Run one attempt on a container: (status, value, code, message)."""
        att.actor = actor.name
        ctx: Context = actor.context
        self.log(f"{actor.name} start a{att.n} #{att.op.n} try {att.try_no}")
        ledger = ctx.ledger
        actor.frng = ledger.ctx.rng = att.rng
        if att.budget is not None:
            ledger.time_budget = att.budget
        try:
            return "ok", self._call(actor, ctx, att), "", ""
        except TemporarilyUnavailable as exc:
            written = "nothing_written" if "nothing was written" in str(exc) else ""
            return "unavailable", None, written, str(exc)
        except CreditsError as exc:
            return ("refused" if exc.status < 500 else "failed"), exc, exc.code, str(exc)
        except Exception:  # noqa: BLE001 - the code under test crashed: reported as a violation
            return "crash", None, "crash", traceback.format_exc()
        finally:
            ledger.time_budget = TIME_BUDGET

    def _call(self, actor: Actor, ctx: Context, att: Attempt) -> Any:
        op = att.op
        ledger = ctx.ledger
        user = op.user
        idem = Idempotency(op.key, att.req.fingerprint) if op.key else None
        desc = att.req.desc
        kind = op.kind
        assert op.amount is not None or kind not in ("charge", "grant", "adjust", "reserve", "buy", "claw", "restore")
        if kind == "charge":
            return ledger.charge(user, op.amount or 0, description=desc, reference_id=op.ref, idempotency=idem)
        if kind == "grant":
            return ledger.grant(
                user,
                op.amount or 0,
                type=op.type or "gift",
                description=desc,
                reference_id=op.ref,
                idempotency=idem,
                lot=self._terms(op),
            )
        if kind == "adjust":
            return ledger.adjust(
                user,
                op.amount or 0,
                description=desc,
                reference_id=op.ref,
                force_negative=op.force,
                reason=REASON if op.force else None,
                lot=self._terms(op),
            )
        if kind in ("buy", "claw", "restore", "sweep"):
            return self._lots_call(ledger, att)
        if kind == "reserve":
            return ledger.reserve(user, op.amount or 0, description=desc, ttl_seconds=op.ttl or 1, idempotency=idem)
        if kind == "capture":
            return ledger.capture(user, att.hold_id or "", op.amount)
        if kind == "release":
            return ledger.release(user, att.hold_id or "")
        if kind == "settings":
            limit: Any = {"keep": ..., "clear": None, "set": op.limit_value}[op.limit]
            if limit is ...:
                return ledger.update_settings(user, low_balance_threshold=op.threshold)
            return ledger.update_settings(user, low_balance_threshold=op.threshold, monthly_spend_limit=limit)
        if kind == "read":
            view = ledger.account(user)
            # what it must answer, at the time it read (no other container ran since)
            att.view = self.model.expected_view(user, int(actor.clock() * 1000))
            page, _ = ledger.transactions(user, limit=op.page or 1)
            return view, page
        if kind == "payment":
            return ctx.payments.handle(event(op))
        if kind == "autotopup":
            auto = (
                None
                if op.enabled is None
                else AutoTopUp(op.enabled, op.threshold or 0, TOPUP_PACKAGE, op.max_per_month or 1)
            )
            return ledger.update_settings(user, auto_top_up=auto)
        if kind == "card":
            card_id = op.card or ""
            if op.detach:
                return ctx.cards.forget(card_id, customer(user))
            number = int(card_id.rpartition("_")[2])
            card = SavedCard(card_id, "visa", "4242", f"fp_{card_id}", 12, 2030, customer(user), number)
            return ctx.cards.save(user, card)
        if kind == "topup_end":
            return self._topup_end(ledger, att)
        raise AssertionError(f"unknown op kind {kind}")

    def _lots_call(self, ledger: Ledger, att: Attempt) -> Any:
        """A purchase whose lot expires (its lot names the purchase), its refund or dispute (which
        names it too), a won dispute, a sweep."""
        op = att.op
        user, desc, amount = op.user, att.req.desc, op.amount or 0
        if op.kind == "buy":
            package = LOT_PACKAGE_BY_ID[op.package or ""]
            return ledger.grant(
                user,
                amount,
                type="purchase",
                description=desc,
                reference_id=op.ref,
                monetary_amount=package.price,
                currency=package.currency,
                lot=self._terms(op),
            )
        if op.kind == "claw" and op.type == "dispute" and not att.req.entries and op.source in self.model.disputed:
            # the payments side holds a purchase's credits for one dispute at a time
            raise TemporarilyUnavailable("Another dispute of this purchase is open; nothing was written.")
        if op.kind == "claw":
            return ledger.claw_back(
                user, amount, type=op.type or "refund", description=desc, reference_id=op.ref or "", source=op.source
            )
        if op.kind == "restore":
            if not att.req.entries and op.source not in self.model.disputed:
                # the client (the payments side) ends a dispute only once its clawback is on the ledger
                raise TemporarilyUnavailable("The dispute is not on the ledger yet; nothing was written.")
            lot = self._terms(op)  # a paid lot with the purchase's terms
            return ledger.grant(
                user, amount, type="dispute", description=desc, reference_id=op.ref, source=op.source, lot=lot
            )
        return ledger.sweep(user)

    @staticmethod
    def _topup_end(ledger: Ledger, att: Attempt) -> tuple[str | None, Any, Any]:
        """The payment of the user's pending top-up ended (as `functions/topup` ends it): the top-up
        it names (read once: a retry or a repeat of the delivery names the same), its state after the
        end, and that of a second delivery at once (`twice`)."""
        op, req = att.op, att.req
        target = req.topup_target
        if target is None:
            target = ledger.top_ups(op.user)[1].pending
            if target is None:
                return None, None, None  # none pending: nothing to end
            req.topup_target = target
        number = target.rpartition(":")[2]
        if op.failure is None:
            package = LOT_PACKAGE_BY_ID[TOPUP_PACKAGE]
            details: dict[str, Any] = {
                "payment_intent": f"pi_topup_{op.user}_{number}",
                "credits": package.credits,
                "amount": package.price,
                "currency": package.currency,
                "package_name": package.name,
            }
        else:
            details = {"message": "Your card was declined."}
        first = ledger.finish_top_up(op.user, target, failure=op.failure, details=details)
        second = ledger.finish_top_up(op.user, target, failure=op.failure, details=details) if op.twice else None
        return target, first, second

    def finished(self, actor: Actor, job: Job, result: Any) -> None:
        att = job.att
        op = att.op
        if isinstance(result, Killed):
            status, value, code, message = "killed", None, "", str(result)
        else:
            status, value, code, message = result
        self.log(f"{actor.name} answer a{att.n} #{op.n} {status} {code}")
        self.outcomes[f"{op.kind} {status} {code}".strip()] += 1
        if status == "crash":
            self.fail(Violation("crash", f"{op.describe()} raised:\n{message}"))
        try:
            self.model.answered(att, status, value, code, message)
        except Violation as violation:
            self.fail(violation)
        except Exception:  # noqa: BLE001
            self.fail(Violation("simulator", traceback.format_exc()))
        if status in ("ok", "refused"):
            return
        if op.kind == "payment":
            p = self.model.payment(op)
            p.failures += 1
            if att.try_no >= MAX_DELIVERIES:
                self.fail(Violation("liveness", f"{op.event_id} failed {att.try_no} deliveries: {status} {message}"))
            p.pending += 1
            self.feed.later_job(att.rng.uniform(1.0, 60.0), Job(self, self.attempt(op, att.try_no + 1), True))
            return
        if op.kind == "read" or (op.kind in ("settings", "autotopup") and code != "nothing_written"):
            return
        # (a top-up's end and a card are redelivered until they succeed, as the stream and Stripe do)
        retriable = bool(op.key or op.ref) or op.kind in ("capture", "release", "card", "topup_end")
        retriable |= code == "nothing_written"
        if not retriable:
            return
        if att.try_no >= MAX_TRIES:
            self.fail(Violation("liveness", f"{op.describe()}: no definite answer after {att.try_no} attempts"))
        self.feed.later_job(att.rng.uniform(0.05, 2.0), Job(self, self.attempt(op, att.try_no + 1)))

    def leap(self, op: Op) -> None:
        """Time passes: to where the workload says the ops after the leap arrive (a leap waits for the
        run to be quiet; that wait is time passing too), so their lots' expiries keep their distance."""
        self.sched.now = max(self.sched.now + 1.0, START + op.at + op.leap)
        self.log(f"leap {op.leap:.3f}")
        self.table.sweep_ttl()

    def _audit_payment(self, p: Payment) -> list[str]:
        if p.credited_to is None:
            return []
        pk = keys.user_pk(p.credited_to)
        history = [transaction(item) for s in p.entries if (item := self.table.item((pk, keys.tx_sk(s)))) is not None]
        return self.checker_payments.audit(p.credited_to, history)

    # ---- the run ----------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self.sched.run(self.feed)
        finally:
            self.flush()
        if self.sched.error is not None and self.violation is None:
            exc = self.sched.error
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            self.violation = Violation("simulator", text)
        leftover = [a.name for a in self.sched.actors if a.started and a.thread.is_alive()]
        if leftover and self.violation is None:
            self.violation = Violation("simulator", f"threads left behind: {leftover}")
        if self.violation is None:
            try:
                self.end_checks()
            except Violation as violation:
                self.violation = violation

    def end_checks(self) -> None:
        """At rest: the ledger's own audit and the payments audit agree with the model."""
        model = self.model
        for name in sorted(model.users):
            u = model.users[name]
            audit = self.checker.audit(name)
            # (entries the model reported as paid with expired credits, a known bug, drew less: counted)
            problems = [p for p in audit.problems if _seq_of(p) not in u.uncovered]
            if problems:
                raise Violation("audit", f"{name}: {problems}")
            if (audit.balance, audit.seq) != (u.balance, u.seq):
                raise Violation("audit", f"{name}: audit {audit.balance}/{audit.seq}, model {u.balance}/{u.seq}")
            if u.payments:
                # the payments audit of the user's whole ledger, one payment at a time (it reads only
                # each payment's own entries: the same answer, without reading the ledger per payment);
                # the Stripe payments only (a `buy` is posted without a payment record)
                by_payment: dict[str, list[Any]] = {}
                for tx in self.checker.history(name):
                    ref = tx.reference_id or ""
                    settles = tx.type in ("purchase", "refund", "dispute") and ref.startswith(("purchase:", "settle:"))
                    if settles and ref.split(":")[1] in u.payments:
                        by_payment.setdefault(ref.split(":")[1], []).append(tx)
                for pi in sorted(by_payment):
                    problems = self.checker_payments.audit(name, by_payment[pi])
                    if problems:
                        raise Violation("payments-audit", f"{name}: {problems}")
            for hold in u.holds.values():
                item = self.table.item((keys.user_pk(name), keys.hold_sk(hold.hold_id)))
                if item is None and not hold.gone:
                    raise Violation("holds", f"{name}: hold {hold.hold_id} is gone")
                if item is not None and item["state"] != hold.state:
                    raise Violation("holds", f"{name}: hold {hold.hold_id} is {item['state']}, model {hold.state}")
        for p in model.payments.values():
            if p.inflight or p.pending:
                raise Violation("liveness", f"{p.pi}: deliveries still outstanding at the end")
            model.check_payment(p)
        self.lots_at_rest()
        model.topups_at_rest()
        for req in model.reqs.values():
            if req.answered_ok and req.kind in POSTS and not req.entries:
                raise Violation("exactly-once", f"r{req.rid} was answered applied, and no entry of it exists")
        self._finance_check(sorted(model.users))

    def _finance_check(self, users: list[str]) -> None:
        """The finance report's figures, counted from every entry and repayment note as the stream
        function counts them (each twice, shuffled), agree with the ledger replayed, month by month,
        and with every account's lots (`finance.verify`)."""
        self.table.observers.clear()  # the last check: it writes the product's figures, no user's
        items: list[dict[str, Any]] = []
        for name in users:
            pk = keys.user_pk(name)
            items += finance.every_item(self.table, pk, keys.TX) + finance.every_item(self.table, pk, keys.REPAID)
        notes = sum(1 for item in items if str(item["sk"]).startswith(keys.REPAID))
        self.model.lot_stats["debts_repaid_by_credits_coming_back"] += notes
        self.model.lot_stats["months_reconciled"] += len({str(item["created_at"])[:7] for item in items})
        deliveries = items * 2
        random.Random(len(items)).shuffle(deliveries)
        for item in deliveries:
            insights.count_item(self.table, item, self.sched.now)
        problems = finance.verify(self.table, users, "9999-12")
        if problems:
            raise Violation("finance", "; ".join(problems[:5]))

    def lots_at_rest(self) -> None:
        """At the end, every account as read: its balance less what expired, never an expired lot."""
        model = self.model
        now_ms = int(self.sched.now * 1000)
        for name in sorted(model.users):
            view = self.checker.account(name)
            expected = model.expected_view(name, int(self.checker.clock() * 1000))
            got = (view.balance, view.available, view.held)
            if got != (expected.balance, expected.available, expected.held):
                raise Violation(
                    "expired-counted", f"{name}: at the end, read {got}; the model's {expected} at {now_ms}"
                )

    def stats(self) -> dict[str, Any]:
        model = self.model
        return {
            "ops": len(self.admitted),
            "attempts": self.attempts,
            "virtual_seconds": self.sched.now - START,
            "steps": self.sched.steps,
            "switches": self.sched.switches,
            "containers": len(self.sched.actors),
            "transactions": self.table.transactions,
            "writes": self.table.writes,
            "ttl_deleted": self.table.ttl_deleted,
            "group_passes": model.group_passes,
            "intents_decided": model.intents_decided,
            "intents_withdrawn": model.withdrawn,
            "intents_resent": model.resent,
            "largest_pass": model.largest_pass,
            "largest_transaction": self.table.largest_transaction,
            "entries": sum(u.seq for u in model.users.values()),
            "holds": len(model.holds),
            "payments_credited": sum(1 for p in model.payments.values() if p.credited_to),
            "negative_balances": model.negative_balances,
            "lots": dict(sorted(model.lot_stats.items())),
            "topups": dict(sorted(model.topup_stats.items())),
            "faults": {k: v for k, v in sorted(self.faults.counts.items())},
            "known_bugs": {k: v[0] for k, v in sorted(model.known.items())},
            "outcomes": dict(sorted(self.outcomes.items())),
        }


def customer(user: str) -> str:
    """The user's Stripe customer (what their saved cards belong to)."""
    return f"cus_{user}"


def _seq_of(problem: str) -> int | None:
    """The entry an audit problem names (`seq 12: ...`), if any."""
    head = problem.split(":", 1)[0].split()
    return int(head[1]) if len(head) == 2 and head[0] == "seq" and head[1].isdigit() else None


class Feed:
    """The workload's ops as they arrive, and the retries and redeliveries they cause."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.ops = sim.ops
        self.i = 0
        self.due: deque[Job] = deque()
        self.later: list[tuple[float, int, Job]] = []
        self.n = 0
        self.next_at = START + self.ops[0].at if self.ops else float("inf")

    def later_job(self, delay: float, job: Job) -> None:
        self.n += 1
        heapq.heappush(self.later, (self.sim.sched.now + delay, self.n, job))

    def _blocked(self) -> bool:
        """A leap (time passing) waits until nothing is in flight or due."""
        return bool(self.sim.sched.busy or self.due or self.later)

    def admit(self, now: float) -> None:
        later = self.later
        if self.next_at > now and not (later and later[0][0] <= now):
            return
        sim = self.sim
        ops = self.ops
        while self.i < len(ops):
            op = ops[self.i]
            if START + op.at > now:
                break
            if op.kind == "leap":
                if self._blocked():
                    break
                self.i += 1
                sim.admitted.append(op)
                sim.outcomes["leap"] += 1
                sim.leap(op)
                now = sim.sched.now
                continue
            self.i += 1
            sim.admitted.append(op)
            sim.log(f"arrive #{op.n} {op.kind} {op.user}")
            if len(sim.admitted) % 50_000 == 0:
                if len(sim.admitted) % 100_000 == 0:
                    gc.freeze()
                if sim.progress is not None:
                    sim.progress(len(sim.admitted))
            self.due.append(Job(sim, sim.attempt(op, 1)))
        self.next_at = START + ops[self.i].at if self.i < len(ops) else float("inf")
        if self.i < len(ops) and ops[self.i].kind == "leap":
            self.next_at = now  # waiting for the run to be quiet
        while later and later[0][0] <= now:
            self.due.append(heapq.heappop(later)[2])

    def has_due(self) -> bool:
        return bool(self.due)

    def take(self) -> Job:
        job = self.due.popleft()
        self.sim.start(job)
        return job

    def next_time(self) -> float | None:
        t: float | None = None
        if self.i < len(self.ops) and not (self.ops[self.i].kind == "leap" and self._blocked()):
            t = START + self.ops[self.i].at
        if self.later and (t is None or self.later[0][0] < t):
            t = self.later[0][0]
        return t

    def finished(self, actor: Actor, task: Any, result: Any) -> None:
        self.sim.finished(actor, task, result)


def simulate(
    seed: int = DEFAULT_SEED,
    count: int = 1000,
    *,
    ops: Iterable[Op] | None = None,
    plant: str | None = None,
    actors: int = 48,
    rates: dict[str, float] | None = None,
    log: IO[str] | None = None,
    strict: bool = False,
    fail_on: Iterable[str] = (),
    progress: Callable[[int], None] | None = None,
) -> Result:
    """Run `count` ops of the seed's workload (or exactly `ops`), with `plant` patched in. `strict`:
    the known bugs of the code under test fail the run too; `fail_on`: these known bugs do."""
    history = list(ops) if ops is not None else generate(seed, count)
    started = time.perf_counter()
    cpu = time.process_time()
    thresholds = gc.get_threshold()
    # millions of long-lived objects (the table, the model): full collections, which walk them all,
    # rarely (and what is old is frozen out of them every 100,000 ops, see Feed.admit)
    gc.set_threshold(50_000, 20, 100)
    try:
        with plants.planted(plant):
            sim = Simulation(seed, history, actors=actors, rates=rates, log=log)
            if strict:
                sim.model.tolerate = frozenset()
            sim.model.tolerate -= frozenset(fail_on)
            sim.progress = progress
            sim.run()
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
    wall = time.perf_counter() - started
    stats = sim.stats()
    stats["cpu_seconds"] = time.process_time() - cpu
    return Result(seed, sim.admitted, sim.violation, wall, stats, sim.hash.hexdigest())
