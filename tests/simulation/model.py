"""The independent model: what the ledger must look like, written from docs/design.md section 4
(and sections 5, 8, 10 and 12 for holds, spend limits and payments), never by calling the ledger's
rules.

It sees two things: every mutation of the table, in commit order (`observe`, called by the
`MemoryStore` for each transaction, single write and TTL deletion), and every answer a client gets
(`answered`). From the commits it keeps, per user, its own balance, ledger, open holds, month's
spend and settings, and checks each commit against the invariants as the commit happens:

1. all or nothing: an entry, a hold or a marker only in a transaction with the account's update;
   a single write never moves money;
2. gapless: entries `seq` N+1, N+2, ... with `balance_after` running from the model's balance; the
   account holds the last; an entry is never rewritten;
3. no overdraft: usage needs a balance >= 0 and `available` >= the amount; an operator's debit
   needs both; a capture never takes the balance below zero; only a clawback (a refund, a dispute,
   a forced adjustment) may;
4. exactly once: an entry answers exactly one request the client made and that is still
   outstanding (an attempt in flight, or one whose answer was lost); a request, a reference, an
   Idempotency-Key (while its marker lives) applies once; nothing applies under a key while its
   refusal is remembered; a key's first definite answer is what every replay returns; a payment
   credits once and its clawbacks never exceed what its facts (as Stripe sent them) require;
5. integer money;
6. holds never pass available: a charge, a reserve or an operator's debit fits in the balance less
   the open, unexpired holds; the account's map of holds is exactly the model's (a hold leaves it
   when it ends, or expired);
7. a hold ends once, by a capture of at most its amount or a release, never after it expired (an
   expired hold never charges), and a repeat replays the first answer;
8. the spend limit: usage this UTC month (charges, captures) plus open holds never passes the limit
   in force when a charge or reserve is decided;
9. to 11. credit lots (`lotchecks.py`): expired credits count for nothing and are recorded once by
   the next write; every debit draws in burn order as the lots stood; refunds never claw back what
   expired; lots and holds hold the balance plus the debt;
12. auto top-up (`topupchecks.py`): exactly one top-up per crossing of the threshold by a charge or
   a hold, only with a card and auto top-up on, one pending at most, numbered with no gap, within
   the month's cap, never within the hour after a failure nor while suspended; each ends once; the
   third failure in a row suspends it.

Every read of the account answers the balance less the credits of lots that expired (and are not
recorded yet), never counting an expired lot, with the lots that count in burn order (`lotmodel.view`).

The decision time of a commit is the time it wrote (`updated_at` on the account, `created_at` on an
entry: the deciding container's clock), checked against that container's clock.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from credits.ledger import Captured, Posted, Released, Reserved, Settings
from tests.simulation import lotmodel
from tests.simulation.commits import Commits
from tests.simulation.records import (
    CLOSED_DISPUTES,
    DECIDED_REFUSALS,
    KEY_MEMORY,
    KNOWN_BUGS,
    MARGIN,
    POSTS,
    REFUSAL_MEMORY,
    Attempt,
    Buy,
    Hold,
    KeyState,
    Payment,
    Req,
    User,
    Violation,
)
from tests.simulation.workload import PACKAGE_BY_ID, Op

if TYPE_CHECKING:
    from tests.simulation.store import Change, MemoryStore

__all__ = ["Attempt", "Model", "Payment", "Req", "Violation"]


class Model(Commits):
    """Checks every commit and every answer; `fail` is called with the first violation."""

    def __init__(
        self,
        table: MemoryStore,
        now: Callable[[], float],
        max_clock: Callable[[], float],
        current: Callable[[], Any],
    ) -> None:
        self.table = table
        self.now = now
        self.max_clock = max_clock
        self.current = current  # the actor in control (whose commit this is)
        self.users: dict[str, User] = {}
        self.reqs: dict[int, Req] = {}
        self.aliases: dict[tuple[str, str, str | None, str], Req] = {}
        self.by_key: dict[tuple[str, str | None], list[Req]] = {}  # (user, key) -> its requests
        self.by_ref: dict[tuple[str, str | None], list[Req]] = {}
        self.payments: dict[str, Payment] = {}
        self.holds: dict[str, Hold] = {}
        self.group_passes = 0
        self.intents_decided = 0
        self.negative_balances = 0
        self.withdrawn = 0  # intents their waiters withdrew
        self.resent = 0  # intents put again after their pass (a resend): taken off, never decided twice
        self.largest_pass = 0  # the most intents one pass decided
        self.tolerate: frozenset[str] = KNOWN_BUGS
        self.known: dict[str, list[Any]] = {}  # known bug -> [times seen, first detail]
        self._by_hold: dict[str, list[Req]] = {}  # hold id -> the captures and releases that named it
        self._commit_changes: Sequence[Change] = ()  # the commit being read
        self.audit_payment: Callable[[Payment], list[str]] = lambda p: []
        self.buys: dict[str, Buy] = {}  # purchases whose lot expires, by source (`purchase:<pl>`)
        self.disputed: set[str] = set()
        self.lot_stats: Counter[str] = Counter()
        self.topup_stats: Counter[str] = Counter(
            dict.fromkeys(("started", "ended_paid", "ended_failed", "suspensions"), 0)
        )

    def expected_view(self, name: str, t_ms: int) -> lotmodel.View:
        """What a read of the account at `t_ms` must answer, from the model's own state (which is
        the table's between commits)."""
        u = self.user(name)
        holds = {h.hold_id: (h.amount, h.until_ms, h.draws) for h in u.open.values()}
        return lotmodel.view(u.balance, u.lots, holds, t_ms)

    # ---- helpers --------------------------------------------------------------------------------

    def req(self, op: Op, fingerprint: str) -> Req:
        """The logical request of an op: its original's; a keyed request is also the same request as
        any other with its key and fingerprint (the ledger cannot tell them apart)."""
        r = self.reqs.get(op.req)
        if r is None:
            same = (op.user, op.kind, op.key, fingerprint) if op.key else None
            r = self.aliases.get(same) if same else None
            if r is None:
                r = Req(op.req, op, fingerprint)
                if same:
                    self.aliases[same] = r
            self.reqs[op.req] = r
            if op.key:
                self.by_key.setdefault((op.user, op.key), []).append(r)
            if op.ref:
                self.by_ref.setdefault((op.user, op.ref), []).append(r)
        return r

    def payment(self, op: Op) -> Payment:
        assert op.pi is not None
        p = self.payments.get(op.pi)
        if p is None:
            package = PACKAGE_BY_ID[op.package or "small"]
            p = self.payments[op.pi] = Payment(op.pi, op.user, package.credits, package.price)
        return p

    def known_bug(self, name: str, detail: str) -> None:
        """A real bug of the code under test, reported and tolerated (unless strict) until fixed."""
        if name not in self.tolerate:
            self.fail(name, detail)
        self.known.setdefault(name, [0, detail])[0] += 1

    # ---- attempts -------------------------------------------------------------------------------

    def started(self, att: Attempt) -> None:
        att.started = self.now()
        att.status = "inflight"
        req = att.req
        req.inflight += 1
        req.attempts += 1
        op = att.op
        if att.hold_id is not None:
            enders = self._by_hold.setdefault(att.hold_id, [])
            if req not in enders:
                enders.append(req)
        if op.kind == "payment":
            p = self.payment(op)
            p.inflight += 1
            if op.event in ("completed", "async_succeeded") and op.paid and not op.mismatch:
                p.paid = True
            elif op.event == "refunded":
                p.refunded = max(p.refunded, op.refunded or 0)
            elif op.event == "dispute":
                assert op.dispute is not None and op.status is not None
                rank = 2 if op.status in CLOSED_DISPUTES else 1
                p.disputes.setdefault(op.dispute, {}).setdefault(rank, op.status)

    def answered(self, att: Attempt, status: str, value: Any, code: str, message: str) -> None:
        """Check an attempt's answer against the model; `status`: ok, refused, unavailable
        (`code` "nothing_written" when it said so), killed, failed (a 5xx)."""
        att.ended = self.now()
        att.status = status
        att.code = code
        req = att.req
        req.inflight -= 1
        op = att.op
        resolves = op.key is not None or op.kind in ("capture", "release")
        if status == "ok" or (status == "refused" and code in DECIDED_REFUSALS):
            if resolves:
                req.ambiguous = 0
        elif status in ("killed",) or (status == "unavailable" and code != "nothing_written"):
            req.ambiguous += 1
        req.last_answer = f"{status} {code}".strip()
        if op.kind == "payment":
            p = self.payment(op)
            p.inflight -= 1
            self._payment_answer(att, p, status, value, code)
            return
        if status != "ok" and status != "refused":
            return
        u = self.user(op.user)
        if op.kind in POSTS:
            self._post_answer(att, u, status, value, code)
        elif op.kind == "reserve":
            self._reserve_answer(att, u, status, value, code)
        elif op.kind in ("capture", "release"):
            self._end_answer(att, u, status, value, code)
        elif op.kind == "settings":
            self._settings_answer(att, u, status, value, code)
        elif op.kind == "autotopup":
            if not self._autotopup_answer(att, u, status, code):
                self._settings_answer(att, u, status, value, code)
        elif op.kind == "card":
            self._card_answer(att, u, status, value)
        elif op.kind == "topup_end":
            self._topup_end_answer(att, u, status, value, code)
        elif op.kind == "read":
            self._read_answer(att, u, status, value)
        elif op.kind == "sweep":
            self._sweep_answer(att, u, status, value)

    def _key_answer(self, att: Attempt, u: User, what: str, decided_refusal: bool) -> None:
        """A key's first definite answer is what every replay returns, while its marker lives."""
        key = att.op.key
        if key is None:
            return
        k = u.keys.setdefault(key, KeyState())
        now = self.now()
        if decided_refusal:
            k.refused_at = now
        if k.first is not None:
            at, first, until, owner = k.first
            if what.startswith("refused") and not decided_refusal and att.started < at:
                return  # a 409 (it writes nothing) decided before the key's marker landed
            if att.started <= until and owner is att.req:
                if first != what:
                    self.fail(
                        "exactly-once",
                        f"Idempotency-Key {key} of {u.name} answered {first} at {at:.3f}, then {what} "
                        f"to attempt {att.n} of r{att.req.rid} (started {att.started:.3f})",
                    )
                return
            if att.started <= until and owner is not att.req and what != "refused idempotency_key_reused":
                self.fail(
                    "exactly-once",
                    f"Idempotency-Key {key} of {u.name} answered {first} for r{owner.rid}; r{att.req.rid} "
                    f"(another request) got {what} instead of idempotency_key_reused",
                )
        if decided_refusal:  # the refusal is kept under the key (a success is kept when it commits)
            k.first = (now, what, now + REFUSAL_MEMORY - MARGIN, att.req)

    def _post_answer(self, att: Attempt, u: User, status: str, value: Any, code: str) -> None:
        req = att.req
        if status == "refused":
            # an entry of the request that its decision must have seen: under a key, any (a refusal
            # under a key is remembered only if no marker landed first); without one, one that
            # landed before the attempt began (a retry may race the attempt whose answer was lost)
            seen = [
                (s, at)
                for s, at in req.entries
                if (at < att.started or att.op.key is not None)
                and (att.op.ref is not None or self.now() - at < KEY_MEMORY - MARGIN)
            ]
            if code not in ("idempotency_key_reused", "reference_id_reused") and seen:
                seq = seen[-1][0]
                self.fail(
                    "exactly-once",
                    f"r{req.rid} of {u.name} was answered {code} though its entry seq {seq} is on the ledger",
                )
            if code == "idempotency_key_reused":
                self._reused(att, u, "key")
            elif code == "reference_id_reused":
                self._reused(att, u, "ref")
            self._key_answer(att, u, f"refused {code}", code in DECIDED_REFUSALS)
            return
        assert isinstance(value, Posted)
        found = u.tids.get(value.transaction_id)
        if found is None:
            self.fail("exactly-once", f"r{req.rid} answered entry {value.transaction_id}, not on {u.name}'s ledger")
            return
        seq = found
        _, amount, balance_after = u.entries[seq - 1]
        owners = {s for s, _ in req.entries}
        if seq not in owners:
            ref = att.op.ref
            owner = u.refs.get(("client", ref)) if ref else None
            if owner is None or owner[0] != seq:
                self.fail(
                    "exactly-once",
                    f"r{req.rid} of {u.name} answered entry seq {seq}, which another request made",
                )
        if (value.amount, value.balance, value.seq) != (amount, balance_after, seq):
            self.fail(
                "exactly-once",
                f"r{req.rid} answered {value} but entry seq {seq} is amount {amount}, balance {balance_after}",
            )
        if not value.replayed and seq not in owners:
            self.fail("exactly-once", f"r{req.rid} answered a fresh entry seq {seq} it did not make")
        req.answered_ok = req.answered_ok or seq in owners  # (else a replay of its reference's owner)
        self._key_answer(att, u, f"ok {value.transaction_id}", False)

    def _reused(self, att: Attempt, u: User, what: str) -> None:
        """A 409 for a reused key or reference: another request of the user used it."""
        op = att.op
        named = self.by_key.get((op.user, op.key)) if what == "key" else self.by_ref.get((op.user, op.ref))
        if not any(other.fingerprint != att.req.fingerprint for other in named or ()):
            self.fail(
                "exactly-once", f"r{att.req.rid} of {u.name} was refused as a reused {what} no other request used"
            )

    def _reserve_answer(self, att: Attempt, u: User, status: str, value: Any, code: str) -> None:
        req = att.req
        if status == "refused":
            now = self.now()
            live = [h for h in req.holds if self.holds[h].state != "released"]
            live = [h for h in live if now - self.holds[h].opened_at < KEY_MEMORY - MARGIN]
            if code != "idempotency_key_reused" and live:
                self.fail("exactly-once", f"r{req.rid} was answered {code} though its hold {live[-1]} stands")
            if code == "idempotency_key_reused":
                self._reused(att, u, "key")
            self._key_answer(att, u, f"refused {code}", code in DECIDED_REFUSALS)
            return
        assert isinstance(value, Reserved)
        if value.hold_id not in req.holds:
            self.fail("exactly-once", f"r{req.rid} answered hold {value.hold_id}, which it did not open")
        hold = self.holds[value.hold_id]
        if value.amount != hold.amount or value.expires_at_ms != hold.until_ms:
            self.fail("holds", f"r{req.rid} answered {value}, the hold is {hold.amount} until {hold.until_ms}")
        req.answered_ok = True
        req.hold_answer = u.last_hold = value.hold_id
        self._key_answer(att, u, f"ok {value.hold_id}", False)

    def _end_answer(self, att: Attempt, u: User, status: str, value: Any, code: str) -> None:
        op = att.op
        hold = self.holds.get(att.hold_id or "")
        if hold is not None and hold.req.user != op.user:
            hold = None
        capture = op.kind == "capture"
        now_ms = int(self.max_clock() * 1000)
        if status == "refused":
            ok = {
                "hold_not_found": hold is None or hold.gone,
                "hold_expired": hold is not None
                and hold.state == "open"
                and (hold.until_ms <= now_ms + 1 or hold.hold_id not in u.open),
                "hold_captured": hold is not None
                and hold.state == "captured"
                and (not capture or op.amount not in (None, hold.captured)),
                "hold_released": hold is not None and hold.state == "released" and capture,
                "capture_exceeds_hold": hold is not None and capture and (op.amount or 0) > hold.amount,
                "insufficient_credits": hold is not None and capture and self._was_short(att, u, hold),
            }.get(code, False)
            if not ok:
                state = "absent" if hold is None else f"{hold.state}, {hold.amount} until {hold.until_ms}"
                self.fail("holds", f"{op.kind} of hold {att.hold_id} ({state}) answered {code} at {now_ms}")
            return
        if hold is None:
            self.fail("holds", f"{op.kind} of hold {att.hold_id} answered {value}, but no such hold exists")
            return
        if capture:
            assert isinstance(value, Captured)
            if hold.state != "captured" or value.charged != hold.captured or value.transaction_id != hold.tx:
                self.fail(
                    "holds",
                    f"capture of {hold.hold_id} answered {value}; the hold is {hold.state} "
                    f"(captured {hold.captured}, entry {hold.tx})",
                )
            if op.amount is not None and op.amount != hold.captured:
                self.fail("holds", f"capture of {op.amount} of {hold.hold_id} answered the capture of {hold.captured}")
            return
        assert isinstance(value, Released)
        if value.released != hold.amount:
            self.fail("holds", f"release of {hold.hold_id} answered {value}; it held {hold.amount}")
        if hold.state == "captured":
            self.fail("holds", f"release of {hold.hold_id} answered {value}, but it was captured")
        if hold.state == "open" and hold.hold_id in u.open and hold.until_ms > now_ms + 1:
            # (a hold a container whose clock ran ahead pruned from the account counts as expired)
            self.fail("holds", f"release of {hold.hold_id} answered {value}, but it is open and unexpired")

    def _was_short(self, att: Attempt, u: User, hold: Hold) -> bool:
        """A capture may be refused for credits only when a clawback took the balance below what it
        charges meanwhile (or took credits its hold drew), never because a lot its hold drew from
        expired: some balance in force while the attempt ran is below the amount."""
        amount = hold.amount if att.op.amount is None else att.op.amount
        if hold.clawed:
            return True  # what the clawback took from it, the lots that count may not cover
        lows = u.lows
        if not lows or lows[0][0] > att.started:
            return True  # no record of the balance back then
        start = bisect.bisect_right(lows, att.started, key=lambda low: low[0]) - 1
        return any(balance < amount for at, balance in lows[start:] if at <= att.ended)

    def _sweep_answer(self, att: Attempt, u: User, status: str, value: Any) -> None:
        """A sweep answers how many expiration entries it wrote: its own write's, none when it wrote
        nothing (a second sweep), or any when a combiner decided it with other changes."""
        if status != "ok":
            return
        if type(value) is not int or value < 0:
            self.fail("sweep", f"r{att.req.rid}: a sweep of {u.name} answered {value!r}")
        if att.swept is not None and value != att.swept:
            self.fail(
                "sweep", f"r{att.req.rid}: a sweep of {u.name} wrote {att.swept} expiration entries, answered {value}"
            )
        if att.swept is None and not att.queued and value:
            self.fail("sweep", f"r{att.req.rid}: a sweep of {u.name} wrote nothing, answered {value}")
        if value:
            self.lot_stats["sweeps_that_wrote"] += 1

    def _settings_answer(self, att: Attempt, u: User, status: str, value: Any, code: str) -> None:
        if status == "ok":
            assert isinstance(value, Settings)
            if att.settings_writes == 0:
                self.fail("settings", f"r{att.req.rid}: settings answered {value}, but nothing was written")
        elif code == "too_many_requests" and att.settings_writes:
            self.known_bug(
                "settings-429-after-write",
                f"r{att.req.rid}: {u.name}'s settings change was answered 429 too_many_requests, "
                f"but it was written ({att.settings_writes} writes)",
            )

    def _read_answer(self, att: Attempt, u: User, status: str, value: Any) -> None:
        if status != "ok":
            return
        view, page = value
        if view.available != view.balance - view.held or view.held < 0:
            self.fail("holds", f"{u.name} read {view}: available is not balance - held")
        self._view_answer(att, u, view)
        last = None
        for tx in page:
            if tx.seq < 1 or tx.seq > len(u.entries):
                self.fail("gapless", f"{u.name}'s page holds seq {tx.seq}, the ledger has {len(u.entries)}")
            tid, amount, balance_after = u.entries[tx.seq - 1]
            if (tx.id, tx.amount, tx.balance_after) != (tid, amount, balance_after):
                self.fail("gapless", f"{u.name}'s page shows {tx} for seq {tx.seq} ({tid}, {amount}, {balance_after})")
            if last is not None and tx.seq != last - 1:
                self.fail("gapless", f"{u.name}'s page goes from seq {last} to {tx.seq}")
            last = tx.seq

    def _view_answer(self, att: Attempt, u: User, view: Any) -> None:
        """The balance as read is the stored balance less the credits of lots that expired and are not
        recorded yet (and what expired holds drew from them): an expired lot never counts, nor shows."""
        expected: lotmodel.View | None = att.view
        if expected is None:
            return
        got = (view.balance, view.available, view.held, dict(view.open_holds))
        if got != (expected.balance, expected.available, expected.held, expected.open_holds):
            self.fail(
                "expired-counted",
                f"{u.name} read balance {view.balance}, available {view.available}, held {view.held} "
                f"(holds {dict(view.open_holds)}); the account's {u.balance} less what expired gives balance "
                f"{expected.balance}, available {expected.available}, held {expected.held} ({expected.open_holds})",
            )
        lots = tuple(
            (v.lot_id, v.category, v.priority, v.expires_at_ms, v.granted, v.remaining, v.held, v.created_ms, v.label)
            for v in view.lots
        )
        if lots != expected.lots:
            self.fail("expired-counted", f"{u.name} read lots {lots}; the lots that count are {expected.lots}")

    def _payment_answer(self, att: Attempt, p: Payment, status: str, value: Any, code: str) -> None:
        op = att.op
        if status == "ok":
            kind = value.kind
            expected = None
            if op.event in ("completed", "async_succeeded", "async_failed"):
                if op.mismatch:
                    expected = "mismatch"
                elif op.event == "async_failed":
                    expected = "failed"
                elif not op.paid:
                    expected = "waiting"
            if expected is not None and kind != expected:
                self.fail("payments", f"{op.event_id} ({op.describe_event()}) answered {kind}, not {expected}")
            if p.inflight == 0 and p.pending == 0:
                self.check_payment(p)
        elif status == "refused":
            self.fail("payments", f"{op.event_id} ({op.describe_event()}) was refused: {code}")

    def check_payment(self, p: Payment) -> None:
        """A payment with no delivery in flight or due: its ledger is exactly what its facts require."""
        if p.net != p.expected_net():
            facts = f"refunded {p.refunded} of {p.price}, disputes {p.disputes}, paid {p.paid}"
            self.fail(
                "payments-settled",
                f"{p.pi} ({p.user}): {p.net} credits on the ledger, its facts ({facts}) require {p.expected_net()}",
            )
        problems = self.audit_payment(p)
        if problems:
            self.fail("payments-audit", f"{p.pi}: {problems}")
        buy = self.buys.get(f"purchase:{p.pi}")
        if buy is not None:
            self._taken_once(self.user(buy.user), buy, int(self.now() * 1000))
