"""The workload: a seed's list of operations, each a client request (or a Stripe delivery), readable.

`generate(seed, n)` is prefix-stable (`generate(s, n)[:m] == generate(s, m)`), so a failing run can
be shortened by op count, and every op carries all it needs (a repeat carries its original's
parameters, a capture the request whose hold it ends, a lot its absolute expiry), so any subset of
a history still runs. Arrival times are absolute (seconds after the start), so dropping an op moves
no other.

Auto top-up: a third of the users (`topup_users`, from the seed) save a card (`card`: a newer card, or
the card detached; Stripe resends it) and turn auto top-up on at the start, then change it
(`autotopup`: on with varied thresholds and 1..5 a month, off, or removed; sometimes for a user with no
card); a card or a setting often arrives at the instant a charge of the user does (it is decided
meanwhile); `topup_end` ends the user's pending top-up as the payment would (paid, most often followed
by a grant of the package's credits, or failed with a decline code: some users' cards mostly decline),
sometimes delivered twice at once, or again later.

Credit lots: grants and adjustments with lot terms (paid or promotional, a priority, an expiry from
under a second to twenty days away, or none), purchases whose lot expires (`buy`, posted the way a
purchase with an expiring package is: its lot names the purchase), their refunds and disputes
(`claw`, after part of them was spent and often after they expired) and won disputes (`restore`),
sweeps (often two of one user at once), and time leaps that carry lots, holds and purchases across
their expiry.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from credits.packages import Package

START = 1_769_896_800.0  # 2026-01-31T22:00:00Z (Unix seconds): virtual time starts here
USERS = 30
HOT_USERS = 3  # most traffic hits these: contended balances, group commit
# The catalog every run starts with: (id, credits, price in minor units, currency, expiry).
# One expires (`expiresInDays`): a day after the purchase is credited, crossed by leaps.
PACKAGES = (
    Package(id="small", name="Small", credits=20, price=199, currency="usd"),
    Package(id="medium", name="Medium", credits=60, price=499, currency="usd", expires_in_days=1),
    Package(id="yen", name="Yen pack", credits=100, price=800, currency="jpy"),
)
PACKAGE_BY_ID = {p.id: p for p in PACKAGES}
# What a `buy` sells: packages whose credits expire (posted as their purchase would be).
LOT_PACKAGES = (
    Package(id="starter", name="Starter", credits=50, price=499, currency="usd"),
    Package(
        id="pro",
        name="Pro pack with a rather long name that the label keeps only the start of",
        credits=200,
        price=1499,
        currency="eur",
    ),
)
LOT_PACKAGE_BY_ID = {p.id: p for p in LOT_PACKAGES}
REASON = "chargeback under review"
TOPUP_SHARE = 3  # one user in three has a saved card and auto top-up
TOPUP_PACKAGE = "starter"  # what a top-up buys (LOT_PACKAGES)
TOPUP_THRESHOLDS = (0, 15, 60, 250, 1000, 100_000)  # 100,000: below it always (every charge crosses)
TOPUP_THRESHOLD_WEIGHTS = (1, 2, 3, 3, 3, 4)
DECLINES = ("card_declined", "insufficient_funds", "authentication_required", "processing_error")
DECLINING = 3  # of the top-up users, the first (in the seed's order) whose cards mostly decline
PRIORITIES = (0, 10, 30, 50, 100)

# kind -> weight (per 1000 ops)
WEIGHTS: dict[str, float] = {
    "charge": 300,
    "grant": 55,
    "adjust": 35,
    "reserve": 115,
    "capture": 85,
    "release": 40,
    "settings": 22,
    "repeat": 85,
    "read": 35,
    "sweep": 12,
    "buy": 14,
    "claw": 14,
    "purchase": 85,
    "refund": 40,
    "dispute": 45,
    "redeliver": 40,
    "leap": 0.8,
    "storm": 0.25,  # 30 to 60 requests at once on one user: passes up to their item limit
    "flood": 0.12,  # 55 to 70 differently dated lots on one user: the bound (50 lots), then refunds
    "autotopup": 2,  # auto top-up settings (on, off, removed), mostly of the users with a card
    "card": 0.6,  # a newer card saved (it ends a suspension), or the card detached
    "topup_end": 22,  # the payment of a user's pending top-up ends: paid or failed
}


def topup_users(seed: int) -> list[str]:
    """The users with a saved card and auto top-up (a third, from the seed); the first DECLINING of
    them have cards that mostly decline."""
    users = [f"u{i:02d}" for i in range(USERS)]
    return random.Random(f"topup-users:{seed}").sample(users, USERS // TOPUP_SHARE)


@dataclass(slots=True)
class Op:
    """One client request or Stripe delivery. `req`: the logical request it belongs to (the op
    number that first made it): a repeat shares its original's, and so its key, reference and
    description."""

    n: int
    at: float  # arrival, seconds after the start
    kind: str
    user: str = ""
    req: int = -1
    amount: int | None = None
    key: str | None = None
    ref: str | None = None
    type: str | None = None  # a grant's entry type
    force: bool = False  # an adjustment forced below zero (with REASON)
    ttl: int | None = None  # a reserve's
    target: int | None = None  # capture/release: the reserve request whose hold it ends
    threshold: int | None = None  # settings
    limit: str = "keep"  # settings: keep, set, clear
    limit_value: int | None = None
    page: int | None = None  # read: the page size
    # payments: the Stripe event delivered
    event: str | None = None  # completed, async_succeeded, async_failed, refunded, dispute
    pi: str | None = None
    package: str | None = None
    paid: bool = True
    terms: bool = False  # the session carries its terms in metadata
    mismatch: bool = False  # the session paid another amount than the package's price
    refunded: int | None = None  # the charge's cumulative refunded money
    dispute: str | None = None
    status: str | None = None
    event_id: str | None = None
    leap: float = 0.0
    repeat: bool = False  # a repeat of an earlier request (same key/reference/parameters)
    # credit lots: a grant's or an adjustment's terms (category None: none given), a buy's lot
    category: str | None = None
    priority: int | None = None
    expires_ms: int | None = None  # absolute (Unix ms), so a repeat names the same expiry
    label: str = ""
    source: str | None = None  # buy, claw, restore: the purchase (`purchase:<pl>`) its lot answers for
    # auto top-up: a setting (`enabled` None: the setting removed; `threshold` above), a card saved or
    # detached, a top-up's end (`failure`: its decline code, None: paid; `twice`: delivered twice)
    enabled: bool | None = None
    max_per_month: int | None = None
    card: str | None = None
    detach: bool = False
    failure: str | None = None
    twice: bool = False

    def describe(self) -> str:
        t = f"#{self.n} t={self.at:9.3f}s"
        k = self.kind
        if k == "leap":
            return f"{t} time passes: {self.leap / 3600:.2f} h"
        who = f"{self.user} "
        req = f" [request r{self.req}{', repeated' if self.repeat else ''}]"
        idem = f" key={self.key}" if self.key else ""
        ref = f" ref={self.ref}" if self.ref else ""
        if k == "charge":
            return f"{t} charge {who}{self.amount}{idem}{ref}{req}"
        if k == "grant":
            return f"{t} grant {who}{self.amount} ({self.type}){self.describe_terms()}{idem}{ref}{req}"
        if k == "adjust":
            forced = f" forced ({REASON})" if self.force else ""
            return f"{t} adjust {who}{self.amount:+d}{forced}{self.describe_terms()}{ref}{req}"
        if k == "buy":
            return f"{t} buy {who}{self.amount} credits ({self.package}){self.describe_terms()}{ref}{req}"
        if k == "claw":
            return f"{t} claw back {who}{self.amount} ({self.type} of {self.source}){ref}{req}"
        if k == "restore":
            return f"{t} restore {who}{self.amount} (dispute of {self.source} won){ref}{req}"
        if k == "sweep":
            return f"{t} sweep {who.strip()}{req}"
        if k == "reserve":
            return f"{t} reserve {who}{self.amount} for {self.ttl}s{idem}{req}"
        if k == "capture":
            what = "all" if self.amount is None else str(self.amount)
            return f"{t} capture {who}{what} of the hold of r{self.target}{req}"
        if k == "release":
            return f"{t} release {who}the hold of r{self.target}{req}"
        if k == "settings":
            limit = {"keep": "", "clear": " limit=none", "set": f" limit={self.limit_value}"}[self.limit]
            return f"{t} settings {who}threshold={self.threshold}{limit}{req}"
        if k == "read":
            return f"{t} read {who}balance and a page of {self.page}"
        if k == "autotopup":
            if self.enabled is None:
                return f"{t} auto top-up {who}setting removed{req}"
            state = "on" if self.enabled else "off"
            return f"{t} auto top-up {who}{state} below {self.threshold}, at most {self.max_per_month} a month{req}"
        if k == "card":
            return f"{t} card {who}{'detached' if self.detach else 'saved'}: {self.card}{req}"
        if k == "topup_end":
            how = "paid" if self.failure is None else f"failed ({self.failure})"
            return f"{t} top-up of {who}ends {how}{' (delivered twice)' if self.twice else ''}{req}"
        return f"{t} deliver {self.event_id} {self.describe_event()}"

    def describe_terms(self) -> str:
        if self.category is None:
            return ""
        expires = "never" if self.expires_ms is None else f"t={self.expires_ms / 1000 - START:.3f}s"
        priority = "" if self.priority is None else f" priority {self.priority}"
        return f" [{self.category}{priority}, expires {expires}]"

    def describe_event(self) -> str:
        e = self.event
        if e in ("completed", "async_succeeded", "async_failed"):
            extra = "" if self.paid else " (unpaid)"
            extra += " with terms" if self.terms else ""
            extra += " MISMATCHED amount" if self.mismatch else ""
            return f"checkout.session.{e} {self.pi} {self.user} {self.package}{extra}"
        if e == "refunded":
            return f"charge.refunded {self.pi} refunded={self.refunded}"
        return f"charge.dispute {self.dispute} {self.pi} {self.status}"


@dataclass(eq=False)
class _Payment:
    pi: str
    user: str
    package: Package
    refunded: int = 0
    disputes: dict[str, str] = field(default_factory=dict)  # id -> status
    purchase_due: list[Op] = field(default_factory=list)  # the purchase, delivered after its facts


@dataclass(eq=False)
class _Buy:
    """A purchase whose lot expires, as the generator remembers it: what its claws asked so far."""

    pi: str
    user: str
    credits: int
    label: str
    asked: int = 0  # refunds (and lost disputes) so far
    dispute: int | None = None  # an open dispute's amount
    disputed_at: int = 0  # the op that opened it (its end comes well after)
    claws: int = 0


class Generator:
    """Makes ops one at a time from the seed (prefix-stable)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(f"workload:{seed}")
        self.n = 0
        self.at = 0.0
        self.users = [f"u{i:02d}" for i in range(USERS)]
        self.last_user = self.users[0]
        self.recent: deque[Op] = deque(maxlen=60)  # keyed or referenced requests, to repeat
        self.reserves: dict[str, deque[Op]] = {u: deque(maxlen=12) for u in self.users}
        self.payments: deque[_Payment] = deque(maxlen=40)  # the recent ones: refunds and disputes name them
        self.deliveries: deque[Op] = deque(maxlen=40)
        self.pending_purchases: list[tuple[int, Op]] = []  # (deliver at op number, purchase)
        self.kinds = list(WEIGHTS)
        self.cum_weights = list(itertools.accumulate(WEIGHTS.values()))
        self.storm_left = 0
        self.storm_user = ""
        self.buys: deque[_Buy] = deque(maxlen=40)
        self.echo: deque[Callable[[int], Op | None]] = deque()  # ops that follow one another at once
        # auto top-up: its users save a card and turn it on first
        self.topup_users = topup_users(seed)
        self.declining = frozenset(self.topup_users[:DECLINING])
        self.cards: dict[str, int] = {}  # user -> the number of their latest card (0: none saved yet)
        self.card_on: dict[str, bool] = {}  # user -> whether their latest card is still saved
        for user in self.topup_users:
            self.echo.append(functools.partial(self._card, user=user, save=True))
        for user in self.topup_users:
            self.echo.append(functools.partial(self._autotopup, user=user, on=True))

    def __iter__(self) -> Generator:
        return self

    def __next__(self) -> Op:
        rng = self.rng
        n = self.n
        self.n += 1
        while self.echo:
            self.at += rng.uniform(0, 0.002)
            op = self.echo.popleft()(n)
            if op is not None:
                return op
        if self.storm_left:
            self.storm_left -= 1
            self.at += rng.uniform(0, 0.001)
            kind = rng.choices(("charge", "reserve", "grant", "repeat"), (80, 10, 5, 5))[0]
            return getattr(self, f"_{kind}")(n, self.storm_user) or self._charge(n, self.storm_user)
        burst = rng.random() < 0.4
        self.at += rng.uniform(0, 0.003) if burst else rng.expovariate(1 / 0.05)
        if burst and rng.random() < 0.85:
            user = self.last_user
        elif rng.random() < 0.5:
            user = self.users[rng.randrange(HOT_USERS)]
        else:
            user = rng.choice(self.users)
        self.last_user = user
        if self.pending_purchases and self.pending_purchases[0][0] <= n:
            _, op = self.pending_purchases.pop(0)
            return self._delivery(replace(op, n=n, at=self.at, req=n))
        kind = rng.choices(self.kinds, cum_weights=self.cum_weights)[0]
        op = getattr(self, f"_{kind}")(n, user)
        if op is None:
            op = self._charge(n, user)
        return op

    # ---- ledger requests ------------------------------------------------------------------------

    def _base(self, n: int, kind: str, user: str, **fields: object) -> Op:
        return Op(n=n, at=self.at, kind=kind, user=user, req=n, **fields)  # type: ignore[arg-type]

    def _keyed(self, op: Op) -> Op:
        if op.key or op.ref:
            self.recent.append(op)
        return op

    def _charge(self, n: int, user: str) -> Op:
        rng = self.rng
        key = f"k{n}" if rng.random() < 0.7 else None
        ref = f"ref{n}" if rng.random() < 0.15 else None
        amount = rng.randint(1, 25) if rng.random() < 0.95 else rng.randint(100, 400)
        reuse = rng.random()
        same_user = [o for o in self.recent if o.user == user and o.kind == "charge"]
        if reuse < 0.05 and same_user:
            old = rng.choice(same_user)
            if old.key:  # the same key for a different request
                return self._keyed(self._base(n, "charge", user, amount=(old.amount or 0) + 1, key=old.key))
        elif reuse < 0.08 and same_user:
            old = rng.choice(same_user)
            if old.ref:  # the same reference for a different amount
                return self._keyed(self._base(n, "charge", user, amount=(old.amount or 0) + 2, ref=old.ref))
        return self._keyed(self._base(n, "charge", user, amount=amount, key=key, ref=ref))

    def _grant(self, n: int, user: str, expires_in: float | None = None) -> Op:
        rng = self.rng
        amount = rng.randint(5, 60) if rng.random() < 0.9 else rng.randint(200, 1500)
        key = f"k{n}" if rng.random() < 0.5 else None
        ref = f"ref{n}" if rng.random() < 0.2 else None
        kind = "gift" if rng.random() < 0.7 else "adjustment"
        terms = self._terms(expires_in) if expires_in is not None or rng.random() < 0.6 else {}
        return self._keyed(self._base(n, "grant", user, amount=amount, key=key, ref=ref, type=kind, **terms))

    def _terms(self, expires_in: float | None = None) -> dict[str, object]:
        """A lot's terms: a category, maybe a priority, maybe an expiry (seconds away, minutes,
        hours or days: time passing, clocks that disagree and leaps carry the lot across it)."""
        rng = self.rng
        category = "promotional" if rng.random() < 0.5 else "paid"
        priority = rng.choice(PRIORITIES) if rng.random() < 0.3 else None
        if expires_in is None:
            expires_in = self._expires_in()
        expires = None if expires_in is None else int((START + self.at + expires_in) * 1000)
        label = rng.choice(("Welcome bonus", "Spring promotion", "Support credit", ""))
        return {"category": category, "priority": priority, "expires_ms": expires, "label": label}

    def _expires_in(self) -> float | None:
        rng = self.rng
        r = rng.random()
        if r < 0.2:
            return None
        if r < 0.65:
            return rng.uniform(0.3, 20.0)  # seconds: busy users' writes and skewed clocks cross it
        if r < 0.9:
            return rng.uniform(20.0, 300.0)
        if r < 0.96:
            return rng.uniform(3600.0, 48 * 3600.0)  # hours: a leap crosses it
        return rng.uniform(6 * 86400.0, 20 * 86400.0)  # days: in the warning window, or a leap away

    def _adjust(self, n: int, user: str) -> Op:
        rng = self.rng
        amount = rng.randint(1, 60)
        force = False
        if rng.random() < 0.6:
            amount = -amount
            force = rng.random() < 0.3
        ref = f"ref{n}" if rng.random() < 0.3 else None
        terms = self._terms() if amount > 0 and rng.random() < 0.4 else {}
        return self._keyed(self._base(n, "adjust", user, amount=amount, ref=ref, force=force, **terms))

    def _reserve(self, n: int, user: str) -> Op:
        rng = self.rng
        ttl = rng.randint(1, 6) if rng.random() < 0.6 else 300
        key = f"k{n}" if rng.random() < 0.6 else None
        op = self._base(n, "reserve", user, amount=rng.randint(1, 40), ttl=ttl, key=key)
        self.reserves[user].append(op)
        return self._keyed(op)

    def _capture(self, n: int, user: str) -> Op | None:
        rng = self.rng
        if not self.reserves[user]:
            return None
        target = rng.choice(self.reserves[user])
        held = target.amount or 1
        r = rng.random()
        amount: int | None
        if r < 0.4:
            amount = None
        elif r < 0.5:
            amount = 0
        elif r < 0.9:
            amount = rng.randint(1, held)
        else:
            amount = held + rng.randint(1, 5)
        op = self._base(n, "capture", user, amount=amount, target=target.req)
        self.recent.append(op)
        return op

    def _release(self, n: int, user: str) -> Op | None:
        if not self.reserves[user]:
            return None
        target = self.rng.choice(self.reserves[user])
        op = self._base(n, "release", user, target=target.req)
        self.recent.append(op)
        return op

    def _settings(self, n: int, user: str) -> Op:
        rng = self.rng
        r = rng.random()
        limit, value = ("set", rng.randint(50, 5000)) if r < 0.3 else (("clear", None) if r < 0.7 else ("keep", None))
        return self._base(n, "settings", user, threshold=rng.randint(0, 200), limit=limit, limit_value=value)

    def _repeat(self, n: int, user: str) -> Op | None:
        if not self.recent:
            return None
        old = self.rng.choice(self.recent)
        return replace(old, n=n, at=self.at, repeat=True)

    def _read(self, n: int, user: str) -> Op:
        return self._base(n, "read", user, page=self.rng.randint(1, 30))

    def _sweep(self, n: int, user: str) -> Op:
        if self.rng.random() < 0.4:  # two sweeps of one user at once: they write what is owed once
            self.echo.append(lambda m: self._base(m, "sweep", user))
        return self._base(n, "sweep", user)

    def _buy(self, n: int, user: str, expires_in: float | None = None) -> Op:
        """A purchase whose credits expire: its lot names it, so its refunds draw it first."""
        rng = self.rng
        if user in self.users[:HOT_USERS] and rng.random() < 0.7:
            # an expired purchase's lot stays on the account (empty, for its refunds): mostly others'
            user = self.users[HOT_USERS + rng.randrange(USERS - HOT_USERS)]
        package = rng.choice(LOT_PACKAGES)
        pi = f"pl_{n:07d}"
        if expires_in is None:
            r = rng.random()
            if r < 0.1:
                expires_in = None
            elif r < 0.6:
                expires_in = rng.uniform(0.5, 30.0)  # expires while it is being spent and refunded
            else:
                expires_in = self._expires_in() or rng.uniform(30.0, 600.0)
        expires = None if expires_in is None else int((START + self.at + expires_in) * 1000)
        priority = rng.choice((None, None, None, 20, 60))
        self.buys.append(_Buy(pi, user, package.credits, package.name))
        source = f"purchase:{pi}"
        op = self._base(
            n,
            "buy",
            user,
            amount=package.credits,
            ref=source,
            source=source,
            type="purchase",
            package=package.id,
            category="paid",
            priority=priority,
            expires_ms=expires,
            label=package.name,
        )
        return self._keyed(op)

    def _claw(self, n: int, user: str, buy: _Buy | None = None) -> Op | None:
        """A refund or a dispute of a `buy` (partial, or all that is left), or the end of its dispute."""
        rng = self.rng
        if buy is None:
            disputed = [b for b in self.buys if b.dispute is not None and n - b.disputed_at >= 30]
            open_ = [b for b in self.buys if b.asked < b.credits and b.dispute is None]
            if disputed and (rng.random() < 0.4 or not open_):
                buy = rng.choice(disputed)
            elif open_:
                buy = rng.choice(open_)
            else:
                return None
        elif buy.dispute is not None and n - buy.disputed_at < 30:
            return None  # its dispute just opened: it ends later
        k = buy.claws
        buy.claws += 1
        source = f"purchase:{buy.pi}"
        if buy.dispute is not None:
            asked, buy.dispute = buy.dispute, None
            if rng.random() < 0.35:  # lost: the credits it took stay taken
                buy.asked += asked
                return None
            # given back to a paid lot with the purchase's terms (a new expiry, hours or days away, or none)
            expires = rng.uniform(3600.0, 30 * 86400.0) if rng.random() < 0.7 else None
            op = self._base(
                n,
                "restore",
                buy.user,
                amount=asked,
                type="dispute",
                ref=f"won:{buy.pi}:{k}",
                source=source,
                category="paid",
                expires_ms=None if expires is None else int((START + self.at + expires) * 1000),
                label=buy.label,
            )
            return self._keyed(op)
        rest = buy.credits - buy.asked
        if rest <= 0:
            return None
        if rng.random() < 0.35:
            buy.dispute, buy.disputed_at = rest, n
            op = self._base(
                n, "claw", buy.user, amount=rest, type="dispute", ref=f"dispute:{buy.pi}:{k}", source=source
            )
            return self._keyed(op)
        amount = rest if rng.random() < 0.4 else rng.randint(1, rest)
        buy.asked += amount
        op = self._base(n, "claw", buy.user, amount=amount, type="refund", ref=f"refund:{buy.pi}:{k}", source=source)
        return self._keyed(op)

    def _flood(self, n: int, user: str) -> Op:
        """More differently dated lots than an account keeps (a purchase among them, spent in part):
        past the bound, new credits join the lot that expires last, and expired purchase lots kept
        for their refunds make room; then a leap expires many of them, and refunds follow."""
        rng = self.rng
        user = self.users[HOT_USERS + rng.randrange(USERS - HOT_USERS)]
        first = self._buy(n, user, rng.uniform(1.0, 5.0))
        later: list[Callable[[int], Op | None]] = []
        for i in range(rng.randint(55, 70)):
            expires_in = rng.uniform(2.0, 20.0) if i % 5 == 0 else rng.uniform(3600.0, 30 * 3600.0)
            make = self._buy if i % 7 == 3 else self._grant
            later.append(functools.partial(make, user=user, expires_in=expires_in))
            if i % 5 == 0:
                later.append(lambda m: self._charge(m, user))
        later += [lambda m: self._base(m, "reserve", user, amount=rng.randint(1, 30), ttl=300)]
        later += [lambda m: self._claw(m, user, next((b for b in self.buys if b.user == user), None))]
        self.echo.extend(later)
        return first

    def _storm(self, n: int, user: str) -> Op:
        self.storm_left = self.rng.randint(30, 60)
        self.storm_user = self.users[self.rng.randrange(HOT_USERS)]
        return self._grant(n, self.storm_user)

    def _leap(self, n: int, user: str) -> Op:
        """Time passes; first a lot, a purchase and a hold that expire on the way, then (after the
        leap) a read, two sweeps and a refund of that purchase, which it finds expired."""
        rng = self.rng
        hours = rng.choice((0.1, 1.0, 6.0, 30.0, 50.0, 24.0 * 8))
        seconds = hours * 3600 * rng.uniform(0.9, 1.1)
        quiet = rng.choice(self.users)  # a user nobody else is likely to write to meanwhile
        buy = self._buy(n, quiet, rng.uniform(0.05, 0.95) * seconds)
        self.echo.extend(
            (
                lambda m: self._grant(m, quiet, rng.uniform(0.05, 0.95) * seconds),
                lambda m: self._base(m, "reserve", quiet, amount=rng.randint(1, 30), ttl=300),
                lambda m: self._leap_op(m, seconds),
                lambda m: self._base(m, "read", quiet, page=5),
                lambda m: self._base(m, "sweep", quiet),
                lambda m: self._base(m, "sweep", quiet),
                lambda m: self._claw(m, quiet, next((b for b in self.buys if b.pi == f"pl_{n:07d}"), None)),
            )
        )
        return buy

    def _leap_op(self, n: int, seconds: float) -> Op:
        op = Op(n=n, at=self.at, kind="leap", leap=seconds)
        self.at += seconds  # the ops after it arrive after it
        return op

    # ---- auto top-up ----------------------------------------------------------------------------

    def _topup_user(self, user: str) -> str:
        return user if user in self.topup_users else self.rng.choice(self.topup_users)

    def _autotopup(self, n: int, user: str, on: bool = False) -> Op:
        """The user's auto top-up setting: on (mostly; a user with no card is refused), off, removed."""
        rng = self.rng
        if not on and rng.random() < 0.9:
            user = self._topup_user(user)
            if user in self.declining and rng.random() < 0.7:  # (turning it on ends their failures)
                user = rng.choice(self.topup_users[DECLINING:])
        r = rng.random()
        enabled = True if on or r < 0.8 else (False if r < 0.93 else None)
        threshold = rng.choices(TOPUP_THRESHOLDS, TOPUP_THRESHOLD_WEIGHTS)[0]
        most = rng.randint(1, 5)
        if on:
            self.at += 0.02  # after the cards
            threshold, most = max(threshold, 250), max(most, 3)  # at first, top-ups start often
        op = self._base(n, "autotopup", user, enabled=enabled, threshold=threshold, max_per_month=most)
        if not on and rng.random() < 0.4:  # while a charge of the user is being decided
            self.echo.append(lambda m: replace(op, n=m, at=self.at, req=m))
            return self._charge(n, user)
        return op

    def _card(self, n: int, user: str, save: bool = False) -> Op:
        """A newer card saved (the webhook's `credits.cards`), or the saved card detached."""
        user = self._topup_user(user)
        k = self.cards.get(user, 0)
        if not save and k and self.card_on.get(user) and self.rng.random() < 0.3:
            self.card_on[user] = False
            op = self._base(n, "card", user, card=f"pm_{user}_{k}", detach=True)
        else:
            self.cards[user] = k + 1
            self.card_on[user] = True
            op = self._base(n, "card", user, card=f"pm_{user}_{k + 1}")
        if not save and self.rng.random() < 0.4:  # while a charge of the user is being decided
            self.echo.append(lambda m: self._sent_again(replace(op, n=m, at=self.at, req=m)))
            return self._charge(n, user)
        return self._sent_again(op)

    def _sent_again(self, op: Op) -> Op:
        self.recent.append(op)  # Stripe sends it again, maybe late
        return op

    def _topup_end(self, n: int, user: str) -> Op:
        """The payment of the user's pending top-up ends (if one is pending when it runs): paid, and
        then (most often) the package's credits arrive, or declined; sometimes delivered twice."""
        rng = self.rng
        user = self._topup_user(user)
        declines = rng.random() < (0.9 if user in self.declining else 0.25)
        failure = rng.choice(DECLINES) if declines else None
        op = self._base(n, "topup_end", user, failure=failure, twice=rng.random() < 0.1)
        self.recent.append(op)
        if rng.random() < 0.1:  # the same delivery again at once (the stream delivers a record twice)
            self.echo.append(lambda m: replace(op, n=m, at=self.at, repeat=True))
        if failure is None and rng.random() < 0.7:
            package = LOT_PACKAGE_BY_ID[TOPUP_PACKAGE]
            self.echo.append(
                lambda m: self._keyed(
                    self._base(
                        m,
                        "grant",
                        user,
                        amount=package.credits,
                        key=f"k{m}",
                        type="gift",
                        category="paid",
                        label=f"Auto top-up: {package.name}",
                    )
                )
            )
        return op

    # ---- Stripe deliveries ----------------------------------------------------------------------

    def _delivery(self, op: Op) -> Op:
        op = replace(op, event_id=f"evt_{op.n:07d}")
        self.deliveries.append(op)
        return op

    def _purchase(self, n: int, user: str) -> Op:
        rng = self.rng
        package = rng.choice(PACKAGES)
        if package.expires_in_days and user in self.users[:HOT_USERS] and rng.random() < 0.8:
            package = PACKAGES[0]  # an expired purchase's lot stays on the account: mostly on others'
        pi = f"pi_{n:07d}"
        payment = _Payment(pi, user, package)
        r = rng.random()
        base = self._base(n, "payment", user, pi=pi, package=package.id, terms=rng.random() < 0.5)
        if r < 0.05:  # paid another amount than the package's price: never credited
            return self._delivery(replace(base, event="completed", mismatch=True))
        self.payments.append(payment)
        if r < 0.13:  # an async method: unpaid first, its result later
            later = replace(base, event="async_succeeded" if rng.random() < 0.7 else "async_failed")
            if later.event == "async_failed":
                self.payments.pop()  # never paid: nothing to refund or dispute
            self.pending_purchases.append((n + rng.randint(1, 40), later))
            self.pending_purchases.sort(key=lambda p: p[0])
            return self._delivery(replace(base, event="completed", paid=False))
        if r < 0.2:  # facts arrive before the purchase does
            self.pending_purchases.append((n + rng.randint(2, 30), replace(base, event="completed")))
            self.pending_purchases.sort(key=lambda p: p[0])
            return self._refund(n, user, payment) or self._delivery(replace(base, event="completed"))
        return self._delivery(replace(base, event="completed"))

    def _refund(self, n: int, user: str, payment: _Payment | None = None) -> Op | None:
        rng = self.rng
        candidates = [p for p in self.payments if p.refunded < p.package.price]
        if payment is None:
            if not candidates:
                return None
            payment = rng.choice(candidates)
        price = payment.package.price
        payment.refunded = min(price, payment.refunded + rng.randint(1, price))
        return self._delivery(
            self._base(
                n,
                "payment",
                payment.user,
                event="refunded",
                pi=payment.pi,
                package=payment.package.id,
                refunded=payment.refunded,
            )
        )

    def _dispute(self, n: int, user: str) -> Op | None:
        rng = self.rng
        if not self.payments:
            return None
        payment = rng.choice(self.payments)
        open_ = [d for d, s in payment.disputes.items() if s == "needs_response"]
        if open_ and rng.random() < 0.7:
            dispute = rng.choice(open_)
            status = rng.choice(("won", "lost", "warning_closed"))
        elif len(payment.disputes) < 2:
            dispute = f"dp_{n:07d}"
            status = "needs_response"
        else:
            return None
        payment.disputes[dispute] = status
        op = self._base(
            n,
            "payment",
            payment.user,
            event="dispute",
            pi=payment.pi,
            package=payment.package.id,
            dispute=dispute,
            status=status,
            amount=payment.package.price,
        )
        return self._delivery(op)

    def _redeliver(self, n: int, user: str) -> Op | None:
        if not self.deliveries:
            return None
        old = self.rng.choice(self.deliveries)
        return replace(old, n=n, at=self.at, repeat=True)


def generate(seed: int, count: int) -> list[Op]:
    gen = Generator(seed)
    return [next(gen) for _ in range(count)]
