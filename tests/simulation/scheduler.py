"""Deterministic concurrency: simulated containers (actors) as threads, one running at a time.

Each actor is a Python thread, but only ONE runs at a time: it runs until its next yield point
(every store call, every sleep), where the scheduler (a seeded `random.Random`) picks which actor
runs next and hands control to it directly (a lock per actor), or keeps running the same one.
There is no preemption: the interleaving is a function of the seed alone, so a seed replays the same
run. The scheduler's own code runs in whichever thread holds control.

Time is virtual: `now` (Unix seconds) advances by a small random latency at every yield point and
jumps to the next wake-up when every actor sleeps. Each actor's wall clock is `now + skew` (a
clock-jump fault moves its skew forward), its monotonic clock `now + mono` (a jump past a waiter's
deadline moves it). Wall clocks tick in whole milliseconds.

A killed actor (a container that dies: a combiner after reading intents, or a crash anywhere) gets
`Killed`, a BaseException no `except Exception` in the code under test catches, at its next yield
point; its thread ends and a new container replaces it when needed. When the run stops (an
invariant failed), every actor gets `Stopped` the same way. Every thread is joined at the end.
"""

from __future__ import annotations

import heapq
import math
import random
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from credits import keys
from credits.errors import TemporarilyUnavailable
from credits.store import Cond, ConditionFailed, Key, Page, Write
from tests.simulation.store import MemoryStore, _key_of

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence


class Killed(BaseException):
    """The container died: no `except Exception` in the code under test catches it."""


class Stopped(BaseException):
    """The run is stopping (an invariant failed): unwind whatever runs."""


YIELD_FAULTS = ("crash", "clock_jump", "slow_call", "deadline_jump")
MAY_HAVE_LANDED = "The credits store is unavailable. Retry with the same Idempotency-Key: the change may have landed."
STORE_UNAVAILABLE = "The credits store is unavailable. Please retry."


class Task(Protocol):
    def run(self, actor: Actor) -> Any: ...


class Feed(Protocol):
    """Where tasks come from (the workload, retries, redeliveries) and where their results go."""

    def admit(self, now: float) -> None: ...
    def has_due(self) -> bool: ...
    def take(self) -> Task: ...
    def next_time(self) -> float | None: ...
    def finished(self, actor: Actor, task: Task, result: Any) -> None: ...


class Faults:
    """Seeded fault decisions, each with its probability, counted by kind. The generator is the one
    of the attempt making the call (seeded by the seed, the op and the try), so an op keeps its
    faults when other ops are dropped from a history (shrinking)."""

    def __init__(self, rates: dict[str, float]) -> None:
        self.rates = rates
        self.counts: dict[str, int] = dict.fromkeys(rates, 0)

    def pick(self, kinds: tuple[str, ...], rng: random.Random) -> str | None:
        """At most one of `kinds`, each with its own probability, from one draw."""
        r = rng.random()
        for kind in kinds:
            rate = self.rates.get(kind, 0.0)
            if r < rate:
                self.counts[kind] += 1
                return kind
            r -= rate
        return None

    def roll(self, kind: str, rng: random.Random) -> bool:
        rate = self.rates.get(kind, 0.0)
        if rate and rng.random() < rate:
            self.counts[kind] += 1
            return True
        return False

    def count(self, kind: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1


class Actor:
    """A simulated container: a thread, its clocks, its own ledger (made by `setup`)."""

    def __init__(self, sched: Scheduler, index: int, skew: float, mono: float, rng: random.Random) -> None:
        self.sched = sched
        self.index = index
        self.name = f"c{index}"
        self.skew = skew
        self.mono = mono
        self.rng = rng
        self.lock = threading.Lock()
        self.lock.acquire()
        self.thread = threading.Thread(target=self._main, name=f"sim-container-{index}")
        self.started = False
        self.task: Task | None = None
        self.wake_at = 0.0
        self.doomed: str | None = None
        self.dead = False
        self.shutdown = False
        self.context: Any = None  # what the simulation builds for it (its ledger, payments)
        self.frng = rng  # the generator of the attempt it runs (its faults, its backoff)
        self.payments_ms = 0  # when its payments last read the clock (a purchase's expiry counts from it)

    # ---- what the code under test is given ------------------------------------------------------

    def clock(self) -> float:
        """The wall clock, ticking in whole milliseconds (read at the middle of each): the time a
        decision uses (`int(clock * 1000)`) and the time it writes (ISO, milliseconds) agree, so the
        model knows to the millisecond which lots and holds had expired for it."""
        return (math.floor((self.sched.now + self.skew) * 1000) + 0.5) / 1000

    def monotonic(self) -> float:
        return self.sched.now + self.mono

    def sleep(self, seconds: float) -> None:
        self.sched.pause(self, max(float(seconds), 0.0))

    def step(self, label: str, *, killable: bool = True) -> None:
        self.sched.yield_point(self, label, killable)

    # ---- the thread ---------------------------------------------------------------------------

    def _main(self) -> None:
        sched = self.sched
        self.lock.acquire()  # our first turn
        exiting = False
        try:
            while not (self.shutdown or sched.stopping) and self.task is not None:
                task = self.task
                try:
                    result = task.run(self)
                except Killed as killed:
                    result = killed
                self.task = None
                if isinstance(result, Killed):
                    self.dead = True
                    sched.finished(self, task, result)
                    exiting = True
                    break
                sched.finished(self, task, result)  # returns once we have a task again (or shut down)
        except Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - the simulator's own failure: stop the run
            sched.crashed(exc)
        finally:
            if exiting and not sched.stopping:
                sched.leave(self)


class Scheduler:
    """Runs the actors one at a time, choosing by `rng`, on virtual time."""

    def __init__(
        self,
        rng: random.Random,
        faults: Faults,
        *,
        start: float,
        max_actors: int,
        setup: Callable[[Actor], None],
        log: Callable[[str], None],
        trace: Callable[[str, str], None],
        latency: tuple[float, float] = (0.0005, 0.003),
        max_skew: float = 0.25,
        stay: float = 0.5,
    ) -> None:
        self.rng = rng
        self.faults = faults
        self.now = start
        self.max_actors = max_actors
        self.setup = setup
        self.log = log  # an event, with the time
        self.trace = trace  # a step: who, what (the time follows from the steps)
        self.latency = latency
        self.max_skew = max_skew
        self.stay = stay  # the chance a yield point goes on with the same container
        self.feed: Feed | None = None
        self.actors: list[Actor] = []  # every actor ever made (joined at the end)
        self.live: list[Actor] = []
        self.idle: list[Actor] = []
        self.ready: list[Actor] = []
        self.sleeping: list[tuple[float, int, Actor]] = []
        self._sleep_n = 0
        self.current: Actor | None = None
        self.stopping = False
        self.error: BaseException | None = None
        self.main_lock = threading.Lock()
        self.main_lock.acquire()
        self._main_released = False
        self.steps = 0
        self.switches = 0
        self.on_step: Callable[[], None] | None = None  # after time moves (TTL sweeps)
        self.busy = 0  # actors with a task

    # ---- running ------------------------------------------------------------------------------

    def run(self, feed: Feed) -> None:
        """Run until the feed is exhausted and every actor is idle, or the run stops."""
        self.feed = feed
        try:
            nxt = self._next()
            if nxt is not None:
                self._resume(nxt)
                self.main_lock.acquire()
        except BaseException:  # an interrupt: whatever runs stops at its next yield point
            self.stopping = True
            raise
        finally:
            self._shutdown()

    def _release_main(self, *, done: bool = True) -> None:
        if not self._main_released:
            self._main_released = True
            if done:
                self.current = None
            self.main_lock.release()

    def _shutdown(self) -> None:
        """Join every thread: the one that stopped the run first, then each other one in turn."""
        if self.current is not None and self.current.started:
            self.current.thread.join()
        for actor in self.actors:
            if not actor.started:
                continue
            if actor.dead or not actor.thread.is_alive():
                actor.thread.join()
                continue
            actor.shutdown = True
            self.current = actor
            actor.lock.release()
            actor.thread.join()
        self.current = None

    def stop(self) -> None:
        """Stop the run (from the thread in control): the main thread takes over the shutdown."""
        self.stopping = True
        self._release_main(done=False)

    def crashed(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.stop()

    # ---- choosing who runs ------------------------------------------------------------------------

    def _next(self) -> Actor | None:
        """The actor to run next (maybe one given a new task), advancing time when all sleep; None
        when there is nothing left to do."""
        feed = self.feed
        assert feed is not None
        rng = self.rng
        while True:
            if self.stopping:
                return None
            feed.admit(self.now)
            n_ready = len(self.ready)
            can_start = feed.has_due() and (bool(self.idle) or len(self.live) < self.max_actors)
            total = n_ready + (1 if can_start else 0)
            if total:
                r = rng.randrange(total) if total > 1 else 0
                if r < n_ready:
                    return self.ready.pop(r)
                task = feed.take()
                if self.idle:
                    actor = self.idle.pop(rng.randrange(len(self.idle)) if len(self.idle) > 1 else 0)
                else:
                    actor = self._spawn()
                actor.task = task
                self.busy += 1
                return actor
            wake = self.sleeping[0][0] if self.sleeping else None
            later = feed.next_time()
            if wake is None and later is None:
                return None
            t = min(x for x in (wake, later) if x is not None)
            if t > self.now:
                self.now = t
                if self.on_step is not None:
                    self.on_step()
            while self.sleeping and self.sleeping[0][0] <= self.now:
                self.ready.append(heapq.heappop(self.sleeping)[2])

    def _spawn(self) -> Actor:
        index = len(self.actors)
        skew = self.rng.uniform(-self.max_skew, self.max_skew)
        mono = self.rng.uniform(1_000.0, 100_000.0) - self.now
        actor = Actor(self, index, skew, mono, random.Random(self.rng.getrandbits(64)))
        self.setup(actor)
        self.actors.append(actor)
        self.live.append(actor)
        self.log(f"spawn {actor.name} skew={skew:+.4f}")
        return actor

    def _resume(self, actor: Actor) -> None:
        self.current = actor
        self.switches += 1
        if not actor.started:
            actor.started = True
            actor.thread.start()
        actor.lock.release()

    def _switch(self, me: Actor, nxt: Actor | None) -> None:
        """Hand control to `nxt` (or to the main thread: nothing left) and wait for our turn."""
        if nxt is None:
            self._release_main()
        else:
            self._resume(nxt)
        me.lock.acquire()

    def _check(self, actor: Actor, killable: bool) -> None:
        if self.stopping:
            raise Stopped
        if killable and actor.doomed is not None:
            raise Killed(actor.doomed)

    # ---- yield points -------------------------------------------------------------------------

    def yield_point(self, actor: Actor, label: str, killable: bool = True) -> None:
        self._check(actor, killable)
        self.steps += 1
        self.now += self.rng.uniform(*self.latency)
        self.trace(actor.name, label)
        if self.on_step is not None:
            self.on_step()
        frng = actor.frng
        fault = self.faults.pick(YIELD_FAULTS if killable else YIELD_FAULTS[1:], frng)
        if fault is not None:
            if fault == "crash":
                actor.doomed = "the container crashed"
                self.log(f"crash {actor.name} at {label}")
            elif fault == "clock_jump":
                jump = frng.uniform(0.2, 3.0)
                actor.skew = min(actor.skew + jump, self.max_skew + 8.0)
                self.log(f"clock-jump {actor.name} +{jump:.3f}")
            elif fault == "slow_call":
                # a latency spike: the call takes a while (a slow partition, a long GC pause)
                self.pause(actor, frng.uniform(0.02, 0.4), killable)
            else:
                actor.mono += frng.uniform(5.0, 30.0)
                self.log(f"deadline-jump {actor.name}")
        if label[0] != "t" and self.rng.random() < self.stay:
            # the same container goes on: fewer thread switches (still the seed's choice); never
            # before a transaction, where lost races are made
            return
        self.ready.append(actor)
        nxt = self._next()
        if nxt is not actor:
            self._switch(actor, nxt)
        self._check(actor, killable)

    def pause(self, actor: Actor, seconds: float, killable: bool = True) -> None:
        self._check(actor, killable)
        self.steps += 1
        self.trace(actor.name, "sleep")
        self._sleep_n += 1
        actor.wake_at = self.now + seconds
        heapq.heappush(self.sleeping, (actor.wake_at, self._sleep_n, actor))
        nxt = self._next()
        if nxt is not actor:
            self._switch(actor, nxt)
        self._check(actor, killable)

    def finished(self, actor: Actor, task: Task, result: Any) -> None:
        """A task ended: report it; then wait for a new task (or, for a dead actor, hand over)."""
        self.busy -= 1
        assert self.feed is not None
        self.feed.finished(actor, task, result)
        if actor.dead:
            self.live.remove(actor)
            return
        self.idle.append(actor)
        nxt = self._next()
        if nxt is not actor:
            self._switch(actor, nxt)
        if self.stopping:
            raise Stopped

    def leave(self, actor: Actor) -> None:
        """A dead actor's thread ends: hand control on without waiting."""
        nxt = self._next()
        if nxt is None:
            self._release_main()
        else:
            self._resume(nxt)

    def max_clock(self) -> float:
        """The latest wall clock any live container reads now."""
        return self.now + max((a.skew for a in self.live), default=0.0)


class ActorStore:
    """The store as one container sees it: every call a yield point, with the injected faults.

    It behaves as `credits.store.DynamoStore` does after its own retries: a throttled call that ran
    out of retries is `TemporarilyUnavailable` (after the time the retries took); a transaction
    whose answer was lost either raises `TemporarilyUnavailable` ("may have landed") or, as a
    resend with the same token does, returns normally; a single write whose answer was lost is
    resent as is (its condition evaluated again) or raises `TemporarilyUnavailable`.
    """

    def __init__(self, actor: Actor, table: MemoryStore, log: Callable[[str], None]) -> None:
        self.actor = actor
        self.table = table
        self.faults = actor.sched.faults
        self.log = log

    def _unavailable(self, kind: str, message: str) -> TemporarilyUnavailable:
        self.actor.sleep(self.actor.frng.uniform(0.05, 1.5))  # the retries it took
        return TemporarilyUnavailable(message)

    def _read(self, label: str) -> None:
        self.actor.step(label)
        if self.faults.roll("read_throttle", self.actor.frng):
            self.log(f"{self.actor.name} fault read-throttle {label}")
            raise self._unavailable("read", STORE_UNAVAILABLE)

    def get_many(self, pk: str, sks: Sequence[str]) -> dict[str, dict[str, Any]]:
        self._read(f"get_many {pk} {len(sks)}")
        return self.table.get_many(pk, sks)

    def get(self, key: Key) -> dict[str, Any] | None:
        self._read(f"get {key[0]} {key[1]}")
        return self.table.get(key)

    def query(
        self,
        pk: str,
        prefix: str,
        *,
        forward: bool = True,
        limit: int | None = None,
        after: str | None = None,
        without: str | None = None,
    ) -> Page:
        self._read(f"query {pk} {prefix} {forward} {limit} {after} {without}")
        page = self.table.query(pk, prefix, forward=forward, limit=limit, after=after, without=without)
        if prefix == keys.ACCOUNT and without == "outcome" and self.faults.roll("combiner_killed", self.actor.frng):
            # the combiner dies right after reading the queue: its intents are orphaned
            self.actor.doomed = "the combiner died after reading the intents"
            self.log(f"{self.actor.name} doomed: combiner")
        return page

    def query_index(self, index: str, attr: str, value: str) -> Iterator[dict[str, Any]]:
        self._read(f"query_index {index}")
        return iter(list(self.table.query_index(index, attr, value)))

    def scan(self, where: Cond, attributes: Sequence[str] = ()) -> Iterator[dict[str, Any]]:
        self._read("scan")
        return iter(list(self.table.scan(where, attributes)))

    def _wait_out(self, key: Key, conflicts: bool, once: bool) -> None:
        """A single write on an item a transaction holds: TransactionConflict, which DynamoStore
        retries with backoff for a `conflicts` caller (unless `once`: then it is unavailable) and
        reports as ConditionFailed otherwise."""
        tries = 0
        while key in self.table.inflight:
            self.faults.count("write_conflict")
            if not conflicts:
                raise ConditionFailed("TransactionConflict")
            tries += 1
            if once or tries > 64:
                raise TemporarilyUnavailable(STORE_UNAVAILABLE)
            self.actor.sleep(self.actor.frng.uniform(0, min(0.2, 0.004 * 2**tries)))

    def write(self, op: Write, *, conflicts: bool = False, once: bool = False) -> None:
        """`once`: DynamoStore tries the write once: no retries (nor their time), no resend."""
        key = _key_of(op)
        self.actor.step(f"write {type(op).__name__} {key[0]} {key[1]}")
        if self.faults.roll("write_throttle", self.actor.frng):
            self.log(f"{self.actor.name} fault write-throttle")
            if once:
                raise TemporarilyUnavailable(STORE_UNAVAILABLE)
            raise self._unavailable("write", STORE_UNAVAILABLE)
        self._wait_out(key, conflicts, once)
        self.table.write(op, conflicts=conflicts)
        if self.faults.roll("write_lost", self.actor.frng):
            if once or self.actor.frng.random() < 0.5:
                self.log(f"{self.actor.name} fault write-lost raise")
                if once:
                    raise TemporarilyUnavailable(STORE_UNAVAILABLE)
                raise self._unavailable("write", STORE_UNAVAILABLE)
            self.log(f"{self.actor.name} fault write-lost resend")
            self.actor.sleep(self.actor.frng.uniform(0, 0.01))
            self._wait_out(key, conflicts, once)
            self.table.write(op, conflicts=conflicts)  # the resend, its condition evaluated again

    def transact(self, ops: Sequence[Write], *, token: str) -> None:
        actor = self.actor
        actor.step(f"transact {len(ops)} {token}")
        if self.faults.roll("transact_throttle", actor.frng):
            self.log(f"{actor.name} fault transact-throttle")
            raise self._unavailable("transact", MAY_HAVE_LANDED)
        prepared = self.table.prepare(ops, token)
        if prepared is None:
            return  # a resend of a committed token
        try:
            # a container that dies now: it commits anyway; another container runs meanwhile (a
            # transaction in flight is where races are made: a write to one of its items conflicts)
            actor.step("transaction in flight", killable=False)
            if actor.frng.random() < 0.5:  # DynamoDB holds the items for milliseconds
                actor.step("transaction in flight", killable=False)
        except Stopped:
            self.table.abandon(prepared)
            raise
        except BaseException:  # pragma: no cover - nothing kills a container in flight
            self.table.commit(prepared)
            raise
        self.table.commit(prepared)
        if self.faults.roll("transact_lost", actor.frng):
            if actor.frng.random() < 0.5:
                self.log(f"{actor.name} fault transact-lost raise")
                raise self._unavailable("transact", MAY_HAVE_LANDED)
            self.log(f"{actor.name} fault transact-lost resend")
            actor.sleep(actor.frng.uniform(0, 0.01))
            if self.table.prepare(ops, token) is not None:  # pragma: no cover - the token is known
                raise AssertionError("a resent token applied again")
