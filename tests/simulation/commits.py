"""The model's checks of every commit: each transaction, single write and TTL deletion of the
table, as the `MemoryStore` reports it, against the model's own balance, ledger, holds, lots, spend
and settings (docs/design.md section 4; the list is in `model.py`, the lots' in `lotchecks.py`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from credits import keys
from tests.simulation import lotmodel as lm
from tests.simulation.lotchecks import LotChecks, LotPass
from tests.simulation.lotmodel import DAY_MS, DEFAULT_PRIORITY, Draws, Terms
from tests.simulation.records import (
    KEY_MEMORY,
    MARGIN,
    MAX_OPEN_HOLDS,
    POSTS,
    REFUSAL_MEMORY,
    SETTINGS_RATE,
    Attempt,
    Hold,
    KeyState,
    Payment,
    Req,
    User,
    Violation,
    iso_ms,
)
from tests.simulation.topupchecks import TopUpChecks
from tests.simulation.workload import LOT_PACKAGE_BY_ID, PACKAGE_BY_ID, REASON, Op

# how the payments side describes a dispute step that gives credits back (it closed; or a refund
# that came while it held them takes them instead)
GIVING_BACK = ("Dispute closed", "Disputed credits passed to a refund")

if TYPE_CHECKING:
    from tests.simulation.store import Change, MemoryStore


class Commits(LotChecks, TopUpChecks):
    """The commit checks; the state is the `Model`'s (declared here)."""

    now: Callable[[], float]
    current: Callable[[], Any]
    users: dict[str, User]
    reqs: dict[int, Req]
    payments: dict[str, Payment]
    holds: dict[str, Hold]
    group_passes: int
    intents_decided: int
    largest_pass: int
    negative_balances: int
    withdrawn: int
    resent: int
    table: MemoryStore
    _by_hold: dict[str, list[Req]]
    _commit_changes: Sequence[Change]

    def user(self, name: str) -> User:
        u = self.users.get(name)
        if u is None:
            u = self.users[name] = User(name)
        return u

    @staticmethod
    def fail(invariant: str, detail: str) -> None:
        raise Violation(invariant, detail)

    # ---- commits --------------------------------------------------------------------------------

    def observe(self, kind: str, changes: list[Change]) -> None:
        self._commit_changes = changes
        by_pk: dict[str, list[Change]] = {}
        for ch in changes:
            by_pk.setdefault(ch.key[0], []).append(ch)
        for pk, mine in by_pk.items():
            if pk.startswith(keys.USER):
                self._user_commit(kind, self.user(pk[len(keys.USER) :]), mine)
            elif kind == "write" and pk.startswith(keys.PAYMENT):
                pass  # facts noted on a payment's record: checked with the payment
            elif kind == "transact" and not pk.startswith((keys.PAYMENT,)):
                self.fail("all-or-nothing", f"a transaction wrote {pk}, outside users and payments")
        if kind == "transact" and not any(pk.startswith(keys.USER) for pk in by_pk):
            self.fail("all-or-nothing", f"a transaction without a ledger: {sorted(by_pk)}")

    def _user_commit(self, kind: str, u: User, changes: list[Change]) -> None:
        for ch in changes:
            sk = ch.key[1]
            if sk.startswith(keys.TX) and ch.before is not None:
                self.fail("gapless", f"{u.name}'s entry {sk} was {'deleted' if ch.after is None else 'rewritten'}")
        if kind == "ttl":
            ch = changes[0]
            if ch.key[1].startswith(keys.HOLD):
                hold = self.holds.get(ch.key[1][len(keys.HOLD) :])
                if hold is not None:
                    hold.gone = True
            elif ch.key[1] == keys.ACCOUNT:
                self.fail("gapless", f"TTL deleted {u.name}'s account")
            return
        if kind == "write":
            self._single_write(u, changes[0])
            return
        account = [ch for ch in changes if ch.key[1] == keys.ACCOUNT]
        if not account:
            moved = [
                ch.key[1]
                for ch in changes
                if ch.key[1].startswith(
                    (keys.TX, keys.HOLD, keys.REF, keys.SYSREF, keys.TOPUP, keys.INTENT, keys.DECIDED)
                )
            ]
            if moved:
                self.fail("all-or-nothing", f"{u.name}: {moved} written without the account's update")
            return
        before, after = account[0].before or {}, account[0].after
        assert after is not None
        if before.get("balance", 0) != u.balance or before.get("seq", 0) != u.seq:
            self.fail("gapless", f"{u.name}'s account read {before.get('balance')}/{before.get('seq')} "
                      f"where the model has {u.balance}/{u.seq}")  # fmt: skip
        stamp = after["updated_at"]
        t_ms = iso_ms(stamp)
        actor = self.current()
        clock_ms = int(actor.clock() * 1000) if actor is not None else t_ms
        if not clock_ms - 40_000 <= t_ms <= clock_ms + 2:
            self.fail("clock", f"{u.name}: a decision at {stamp} committed by a container whose clock reads {clock_ms}")
        if any(ch.key[1].startswith(keys.TOPUP) and ch.before is not None for ch in changes):
            self._topup_ended(u, changes, account[0], t_ms)  # a top-up's end: no money moves
            return
        month = max(stamp[:7], u.month)
        # what a read at the decision time says is available: expired credits count for nothing (invariant 9)
        available_before = u.balance - lm.gone(u.lots, self._hold_draws(u), u.balance, t_ms) - u.held(t_ms)
        clawback = any(
            ch.key[1].startswith(keys.TX)
            and ch.after is not None
            and ch.after["amount"] < 0
            and (ch.after["type"] in ("refund", "dispute") or ch.after.get("reason") is not None)
            for ch in changes
        )
        # the queue first: which intents a pass decided (and took off), or took off as resent
        decided, resent = self._pass_decisions(u, account[0].key[0], changes)
        freed: list[str] = []
        # the lots: what the write owed first (expired holds and lots), then each change in order
        lp = self._lots_begin(u, changes, before, t_ms, month)
        tp = self._topup_begin(u, stamp, t_ms)
        expirations = 0
        for ch in changes:
            sk = ch.key[1]
            if sk.startswith(keys.TX):
                assert ch.after is not None
                if ch.after.get("type") == "expiration":
                    expirations += 1  # replayed where it was owed (`_settle`)
                else:
                    # a charge (usage the client asked for, not a capture's) may start a top-up
                    charge = ch.after["type"] == "usage" and ch.after.get("reference_scope") != "system"
                    available = self._topup_watch(u, t_ms) if charge else None
                    self._entry(u, ch.after, t_ms, month)
                    self._topup_decision(u, tp, f"the charge entry {ch.after['seq']}", available, charge)
            elif sk.startswith(keys.HOLD):
                if ch.before is None:
                    assert ch.after is not None
                    available = self._topup_watch(u, t_ms)
                    self._hold_opened(u, ch.after, t_ms, month, after)
                    self._topup_decision(u, tp, f"the hold {ch.after['hold_id']}", available, True)
                else:
                    self._hold_ended(u, ch, t_ms, lp)
                    self._topup_decision(u, tp, "", None, False)
            elif sk.startswith(keys.TOPUP):
                self._topup_started(u, ch, tp)
            elif sk.startswith(keys.IDEM) and _freed(ch):
                freed.append(sk[len(keys.IDEM) :])
        self._topup_end_of_pass(u, tp)
        for key in freed:
            self._key_freed(u, key)
        if decided:
            self.group_passes += 1
            self.intents_decided += decided
            self.largest_pass = max(self.largest_pass, decided)
        self._lots_end(u, lp, account[0].key[0], before, after)
        self._swept(u, actor, changes, decided + resent, expirations)
        if after.get("balance", 0) != u.balance or after.get("seq", 0) != u.seq:
            self.fail("gapless", f"{u.name}'s account holds {after.get('balance')}/{after.get('seq')} after a commit; "
                      f"its entries add up to {u.balance}/{u.seq}")  # fmt: skip
        self._check_map(u, after, t_ms)
        self._topup_account(u, after)
        # invariant 6 after the commit, at its decision time: open holds fit in the balance; only a
        # clawback takes `available` below zero (or lower, when one already did)
        available = u.balance - lm.gone(u.lots, self._hold_draws(u), u.balance, t_ms) - u.held(t_ms)
        if available < 0 and available < available_before and not clawback and not lp.overdrawn:
            self.fail(
                "holds-available",
                f"{u.name}: available {available} (balance {u.balance}) after a commit at {t_ms}, "
                f"{available_before} before",
            )
        if "spend_month" in after and (after["spend_month"], after.get("spent", 0)) != (u.month, u.spent):
            self.fail(
                "spend-limit",
                f"{u.name}'s account counts {after.get('spent')} spent in {after['spend_month']}; "
                f"its usage adds up to {u.spent} in {u.month}",
            )

    def _pass_decisions(self, u: User, pk: str, changes: list[Change]) -> tuple[int, int]:
        """Exactly one of "decided" and "withdrawn": a pass decides an intent only by taking it off
        the queue (it was there, undecided) and writing its decision apart (`DECIDED#<id>`, new, with
        an `outcome`) in the same transaction; an intent it takes off without deciding is a resend of
        one decided before (its decision stored already), never one left undecided. How many intents
        the pass decided, and how many resent ones it took off."""
        taken: dict[str, Change] = {}  # intents the pass took off the queue, by intent id
        decided: dict[str, Change] = {}  # the decisions it wrote, by intent id
        for ch in changes:
            sk = ch.key[1]
            if sk.startswith(keys.INTENT):
                if ch.after is not None:
                    self.fail("exactly-once", f"{u.name}: a pass wrote intent {sk} (a pass only takes intents off)")
                taken[_intent_id(sk)] = ch
            elif sk.startswith(keys.DECIDED):
                if ch.before is not None or ch.after is None or "outcome" not in ch.after:
                    self.fail("exactly-once", f"{u.name}: a pass wrote {sk} over {ch.before} as {ch.after}")
                decided[sk[len(keys.DECIDED) :]] = ch
        for intent_id in decided:
            off = taken.get(intent_id)
            if off is None or off.before is None or "outcome" in off.before:
                state = "absent" if off is None or off.before is None else "decided already"
                self.fail(
                    "exactly-once",
                    f"{u.name}: a pass decided intent {intent_id} without taking it off the queue (it was {state})",
                )
        for intent_id, ch in taken.items():
            if intent_id in decided:
                continue
            # a resent copy (or none left: its waiter withdrew it meanwhile): decided or withdrawn before
            earlier = self.table.item((pk, keys.decided_sk(intent_id)))
            if earlier is None or not ("outcome" in earlier or earlier.get("withdrawn")):
                self.fail(
                    "exactly-once",
                    f"{u.name}: a pass took intent {intent_id} off the queue without its decision "
                    f"({'absent' if ch.before is None else 'never decided'})",
                )
        resent = len(taken) - len(decided)
        self.resent += resent
        return len(decided), resent

    @staticmethod
    def _hold_draws(u: User) -> list[tuple[int, Draws]]:
        return [(h.until_ms, h.draws) for h in u.open.values()]

    def _readable(self, u: User, t_ms: int) -> tuple[int, int]:
        """The balance and what is available of it at `t_ms` as a read says: expired credits count
        for nothing (invariant 9), open holds are taken out (invariant 6)."""
        balance = u.balance - lm.gone(u.lots, self._hold_draws(u), u.balance, t_ms)
        return balance, balance - u.held(t_ms)

    def _overdrawn(self, u: User, invariant: str, detail: str) -> None:
        """A debit or a hold that the credits that count did not cover: a known bug while credits of
        lots that expired wait beyond what one write records (see `unrecorded-expiry-counts`)."""
        self._lot_pass.overdrawn = True
        self._uncovered(u, detail, invariant)

    def _single_write(self, u: User, ch: Change) -> None:
        sk = ch.key[1]
        tombstone = (
            ch.before is None and ch.after is not None and "outcome" not in ch.after and ch.after.get("withdrawn")
        )
        if sk.startswith(keys.DECIDED) and not tombstone:
            self.fail("all-or-nothing", f"{u.name}: a single write to {sk}")  # a decision: only in its pass
        if sk.startswith((keys.TX, keys.HOLD, keys.REF, keys.SYSREF, keys.EXPIRING, keys.TOPUP)):
            self.fail("all-or-nothing", f"{u.name}: a single write to {sk}")
        if sk.startswith(keys.INTENT) and ch.after is None and ch.before is not None:
            # its waiter's lone delete (decided intents leave the queue in their pass): withdrawn
            if "outcome" in ch.before:
                self.fail("exactly-once", f"{u.name}: a waiter withdrew intent {sk}, decided already")
            self.withdrawn += 1
        if sk.startswith(keys.INTENT) and ch.before is None:
            actor = self.current()
            att = getattr(actor.task, "att", None) if actor is not None else None
            if isinstance(att, Attempt):
                att.queued = True
        if sk.startswith(keys.IDEM):
            if ch.after is not None and "refused" not in ch.after:
                self.fail("all-or-nothing", f"{u.name}: a single write of a success under key {sk}")
            return
        if sk != keys.ACCOUNT:
            return
        before, after = ch.before or {}, ch.after or {}
        for money in ("balance", "seq", "holds", "holds_rev", "spent", "spend_month", "lots", "lots_due", "lots_shard"):
            if before.get(money) != after.get(money):
                self.fail("all-or-nothing", f"{u.name}: a single write changed the account's {money}")
        if self._topup_write(u, before, after):
            return  # an auto top-up setting or a card
        settings = ("low_balance_threshold", "monthly_spend_limit", "settings_window", "settings_changes")
        if all(before.get(s) == after.get(s) for s in settings) and "updated_at" not in after:
            return
        if all(before.get(s) == after.get(s) for s in settings) and before.get("updated_at") == after.get("updated_at"):
            return
        actor = self.current()
        att = getattr(actor.task, "att", None) if actor is not None else None
        if not isinstance(att, Attempt) or att.op.kind != "settings" or att.op.user != u.name:
            self.fail("settings", f"{u.name}'s settings changed by {att.op.describe() if att else 'nobody'}")
            return
        op = att.op
        if after.get("low_balance_threshold") != op.threshold:
            self.fail("settings", f"{u.name}: threshold {after.get('low_balance_threshold')} for {op.describe()}")
        if op.limit == "set" and after.get("monthly_spend_limit") != op.limit_value:
            self.fail("settings", f"{u.name}: limit {after.get('monthly_spend_limit')} for {op.describe()}")
        if op.limit == "clear" and "monthly_spend_limit" in after:
            self.fail("settings", f"{u.name}: limit {after.get('monthly_spend_limit')} for {op.describe()}")
        if after.get("settings_changes", 0) > SETTINGS_RATE:
            self.fail("settings", f"{u.name}: {after.get('settings_changes')} settings changes in a minute")
        att.settings_writes += 1
        u.limit = after.get("monthly_spend_limit")
        u.threshold = after.get("low_balance_threshold")

    # ---- entries ----------------------------------------------------------------------------------

    def _entry(self, u: User, item: Mapping[str, Any], t_ms: int, month: str) -> None:
        seq, amount = item["seq"], item["amount"]
        if type(amount) is not int or type(item["balance_after"]) is not int:
            self.fail("integer-money", f"{u.name}'s entry {seq}: amount {amount!r}")
        if seq != u.seq + 1:
            self.fail("gapless", f"{u.name}: entry seq {seq} after seq {u.seq}")
        if item["balance_after"] != u.balance + amount:
            self.fail(
                "gapless", f"{u.name}: entry {seq} balance_after {item['balance_after']} != {u.balance} + {amount}"
            )
        if iso_ms(item["created_at"]) != t_ms:
            self.fail("clock", f"{u.name}: entry {seq} created at {item['created_at']}, decided at {t_ms}")
        ref = item.get("reference_id")
        scope = "system" if item.get("reference_scope") == "system" else "client"
        if ref is not None and (scope, ref) in u.refs:
            self.fail(
                "exactly-once",
                f"{u.name}: reference {scope}:{ref} applied twice (seq {u.refs[(scope, ref)][0]}, {seq})",
            )
        owner: Req | None = None
        spec: tuple[Any, ...] = ("expiration",)  # what it does to the lots (an expiration: `_settle`)
        default = Terms(label=str(item.get("description", "")))  # credits given no terms
        if scope == "system" and ref is not None:
            if ref.startswith("hold:"):
                spec = ("capture", self._capture_entry(u, item, t_ms, month))
            elif ref.startswith("purchase:"):
                spec = ("credit", self._purchase_entry(u, item, ref[len("purchase:") :]))
            elif ref.startswith("settle:"):
                spec = self._settle_entry(u, item, ref)
            elif not ref.startswith("expire:") or item["type"] != "expiration":
                self.fail("exactly-once", f"{u.name}: entry {seq} with unknown system reference {ref}")
        else:
            owner = self._request_entry(u, item, t_ms, month)
            spec = self._lot_spec(owner.op, default)
        self._lot_entry(u, item, t_ms, spec)
        if spec[0] == "credit" and item["type"] == "purchase":
            self._new_buy(u, item, spec[1])
        if ref is not None:
            u.refs[(scope, ref)] = (seq, owner)
        u.balance += amount
        u.seq = seq
        if u.balance < 0 and u.balance - amount >= 0:
            self.negative_balances += 1
        u.entries.append((item["id"], amount, item["balance_after"]))
        u.tids[item["id"]] = seq
        u.lows.append((self.now(), u.balance - lm.gone(u.lots, self._hold_draws(u), u.balance, t_ms)))  # as a read says
        if len(u.lows) > 256:
            del u.lows[:128]
        if spec[0] in ("credit", "restore"):
            self._settle(u, self._lot_pass)  # a lot granted inside its warning window is announced at once

    @staticmethod
    def _lot_spec(op: Op, default: Terms) -> tuple[Any, ...]:
        """What a request's entry does to the lots: the terms of its credits, or how its debit draws."""
        if op.kind in ("grant", "buy") or (op.kind == "adjust" and (op.amount or 0) > 0):
            if op.category is None:
                return ("credit", default)
            priority = DEFAULT_PRIORITY[op.category] if op.priority is None else op.priority
            return ("credit", Terms(op.category, priority, op.expires_ms, op.label, op.source))
        if op.kind == "claw":
            return ("claw", op.source, op.amount)
        if op.kind == "restore":
            terms = Terms("paid", DEFAULT_PRIORITY["paid"], op.expires_ms, op.label, op.source)
            return ("restore", op.source, op.amount, terms if op.category else default)
        return ("burn", not (op.kind == "adjust" and op.force))

    def _request_entry(self, u: User, item: Mapping[str, Any], t_ms: int, month: str) -> Req:
        desc = str(item.get("description", ""))
        req = self.reqs.get(int(desc[1:])) if desc[:1] == "r" and desc[1:].isdigit() else None
        seq, amount, typ = item["seq"], item["amount"], item["type"]
        if req is None or req.user != u.name or req.kind not in POSTS:
            self.fail("exactly-once", f"{u.name}: entry {seq} ({typ} {amount}, {desc!r}) answers no request")
            raise AssertionError  # unreachable
        op = req.op
        what = f"{u.name}: entry {seq} ({typ} {amount}) for {op.describe()}"
        if item.get("reference_id") != op.ref:
            self.fail("exactly-once", f"{what} carries reference {item.get('reference_id')}")
        balance, avail = self._readable(u, t_ms)  # as a read at the decision time says
        if op.kind == "charge":
            if typ != "usage" or amount != -(op.amount or 0):
                self.fail("exactly-once", f"{what}: not the usage asked")
            if balance < 0 or avail < -amount:
                self._overdrawn(u, "no-overdraft", f"{what}: balance {balance}, available {avail} at {t_ms}")
            self._spend(u, -amount, t_ms, month, what, check=True)
        elif op.kind == "grant":
            if typ != op.type or amount != op.amount:
                self.fail("exactly-once", f"{what}: not the grant asked")
        elif op.kind == "buy":
            package = PACKAGE_BY_ID.get(op.package or "") or LOT_PACKAGE_BY_ID[op.package or ""]
            if (typ, amount, item.get("monetary_amount"), item.get("currency")) != (
                "purchase",
                op.amount,
                package.price,
                package.currency,
            ):
                self.fail("exactly-once", f"{what}: not the purchase asked")
        elif op.kind == "claw":  # rule 5 may post less than asked (`_claw`)
            if typ != op.type or not -(op.amount or 0) <= amount <= 0:
                self.fail("exactly-once", f"{what}: not the clawback asked")
        elif op.kind == "restore":  # a won dispute gives back at most what was asked (`_restore`)
            if typ != "dispute" or not 0 <= amount <= (op.amount or 0):
                self.fail("exactly-once", f"{what}: not the won dispute asked")
        else:
            if typ != "adjustment" or amount != op.amount:
                self.fail("exactly-once", f"{what}: not the adjustment asked")
            if amount < 0:
                if op.force:
                    if item.get("reason") != REASON:
                        self.fail("no-overdraft", f"{what}: forced without its reason")
                elif min(balance, avail) + amount < 0:
                    self._overdrawn(u, "no-overdraft", f"{what}: balance {balance}, available {avail} at {t_ms}")
                elif item.get("reason") is not None:
                    self.fail("no-overdraft", f"{what}: a reason on an adjustment that was not forced")
        self._applies(u, req, what, item["id"])
        req.entries.append((seq, self.now()))
        return req

    def _applies(self, u: User, req: Req, what: str, ident: str) -> None:
        """A request's change lands: it must be outstanding, never applied before (while its key
        lives), and its key neither another request's nor refused a moment ago."""
        now = self.now()
        if not req.outstanding():
            self.fail(
                "exactly-once",
                f"{what} applied with no attempt of it outstanding: its client was told '{req.last_answer}'",
            )
        if req.kind in POSTS and req.entries:
            last = req.entries[-1][1]
            if req.op.key is None or req.op.ref is not None or now - last < KEY_MEMORY - MARGIN:
                self.fail("exactly-once", f"{what} applied twice (first as seq {req.entries[-1][0]})")
        if req.kind == "reserve":
            live = [h for h in req.holds if self.holds[h].state != "released"]
            if live and (req.op.key is None or now - self.holds[live[-1]].opened_at < KEY_MEMORY - MARGIN):
                self.fail("exactly-once", f"{what} opened a second hold (after {live[-1]})")
        key = req.op.key
        if key is None:
            return
        k = u.keys.setdefault(key, KeyState())
        if k.owner is not None and k.owner is not req and now - k.applied_at < KEY_MEMORY - MARGIN:
            self.fail("exactly-once", f"{what}: key {key} was applied for r{k.owner.rid} at {k.applied_at:.3f}")
        if k.refused_at is not None and k.refused_at <= now < k.refused_at + REFUSAL_MEMORY - MARGIN:
            self.fail("exactly-once", f"{what}: key {key} was answered a refusal at {k.refused_at:.3f}")
        k.owner = req
        k.applied_at = now
        # what every answer under the key replays while its marker lives
        k.first = (now, f"ok {ident}", now + KEY_MEMORY - MARGIN, req)

    def _spend(self, u: User, amount: int, t_ms: int, month: str, what: str, *, check: bool) -> None:
        """Usage counts for its month (the later of the decision's and the account's); a charge or
        a reserve (`check`) must fit under the limit with the open holds."""
        spent = u.spent if u.month == month else 0
        if check and u.limit is not None and spent + u.held(t_ms) + amount > u.limit:
            self.fail(
                "spend-limit",
                f"{what}: {spent} spent in {month} + {u.held(t_ms)} held + {amount} passes the limit {u.limit}",
            )
        u.month, u.spent = month, spent + amount

    # ---- holds ------------------------------------------------------------------------------------

    def _hold_opened(self, u: User, item: Mapping[str, Any], t_ms: int, month: str, account: Mapping[str, Any]) -> None:
        desc = str(item.get("description", ""))
        req = self.reqs.get(int(desc[1:])) if desc[:1] == "r" and desc[1:].isdigit() else None
        hold_id = item["hold_id"]
        if req is None or req.kind != "reserve" or req.user != u.name:
            self.fail("holds", f"{u.name}: hold {hold_id} ({desc!r}) answers no reserve")
            raise AssertionError  # unreachable
        op = req.op
        what = f"{u.name}: hold {hold_id} of {item['amount']} for {op.describe()}"
        if item["amount"] != op.amount or item.get("idempotency_key") != op.key or item["state"] != "open":
            self.fail("holds", f"{what}: not the hold asked")
        until = t_ms + (op.ttl or 0) * 1000
        if not until - 2 <= item["until_ms"] <= until + 1:
            self.fail("holds", f"{what}: until {item['until_ms']}, decided at {t_ms} for {op.ttl}s")
        balance, avail = self._readable(u, t_ms)
        if balance < 0 or op.amount is None or op.amount > avail:
            self._overdrawn(u, "holds-available", f"{what}: balance {balance}, available {avail} at {t_ms}")
        assert op.amount is not None
        if u.limit is not None:
            spent = u.spent if u.month == month else 0
            if spent + u.held(t_ms) + op.amount > u.limit:
                self.fail("spend-limit", f"{what}: {spent} spent + {u.held(t_ms)} held passes the limit {u.limit}")
        if sum(1 for h in u.open.values() if h.until_ms > t_ms) >= MAX_OPEN_HOLDS:
            self.fail("holds", f"{what}: more than {MAX_OPEN_HOLDS} open holds")
        self._applies(u, req, what, hold_id)
        hold = Hold(hold_id, req, op.amount, item["until_ms"], op.key, opened_at=self.now())
        if hold_id in self.holds:
            self.fail("holds", f"{what}: hold id {hold_id} used twice")
        self.holds[hold_id] = u.holds[hold_id] = u.open[hold_id] = hold
        req.holds.append(hold_id)
        self._lot_hold_opened(u, hold, account, t_ms)

    def _capture_entry(self, u: User, item: Mapping[str, Any], t_ms: int, month: str) -> Hold:
        hold_id = str(item["reference_id"])[len("hold:") :]
        hold = u.holds.get(hold_id)
        amount = -item["amount"]
        what = f"{u.name}: capture entry {item['seq']} of {amount} from hold {hold_id}"
        if hold is None or hold.state != "open":
            self.fail("holds", f"{what}: the hold is {'absent' if hold is None else hold.state}")
            raise AssertionError  # unreachable
        if hold.until_ms <= t_ms - 1:
            self.fail(
                "expired-hold-charged",
                f"{what}: the hold expired at {hold.until_ms}, the capture was decided at {t_ms}",
            )
        if hold_id not in u.open:
            self.fail("expired-hold-charged", f"{what}: the hold no longer counted (expired, left the account)")
        if item["type"] != "usage" or not 0 < amount <= hold.amount:
            self.fail("holds", f"{what}: the hold is of {hold.amount}")
        if u.balance - amount < 0:
            self.fail("no-overdraft", f"{what}: the balance is {u.balance}")
        if item.get("description", "") != hold.req.desc:
            self.fail("holds", f"{what}: description {item.get('description')!r}")
        self._spend(u, amount, t_ms, month, what, check=False)
        hold.pending_capture = amount
        hold.tx = item["id"]
        return hold

    def _hold_ended(self, u: User, ch: Change, t_ms: int, lp: LotPass) -> None:
        hold_id = ch.key[1][len(keys.HOLD) :]
        hold = u.holds.get(hold_id)
        after = ch.after or {}
        what = f"{u.name}: hold {hold_id} ended {after.get('state')}"
        if hold is None or hold.state != "open" or (ch.before or {}).get("state") != "open":
            self.fail("holds", f"{what}, but it was {'absent' if hold is None else hold.state}")
            raise AssertionError  # unreachable
        if after.get("amount") != hold.amount or after.get("until_ms") != hold.until_ms:
            self.fail("holds", f"{what}: its amount or end changed")
        if hold.until_ms <= t_ms - 1 or hold_id not in u.open:
            invariant = "expired-hold-charged" if after.get("state") == "captured" else "holds"
            self.fail(invariant, f"{what} at {t_ms}, after it expired at {hold.until_ms} (or left the account)")
        state = str(after.get("state"))
        if state == "captured":
            captured = after.get("captured")
            if captured != (hold.pending_capture or 0):
                self.fail("holds", f"{what} of {captured}, its entry took {hold.pending_capture or 0}")
            hold.captured = captured
            if not captured:
                hold.tx = None
        elif state != "released":
            self.fail("holds", f"{what}: unknown state")
        # a request asked for this end: a capture (of this amount, or of all) or a release
        enders = [r for r in self._by_hold.get(hold_id, []) if r.outstanding()]
        if state == "captured":
            asked = [r for r in enders if r.kind == "capture" and (r.op.amount is None or r.op.amount == hold.captured)]
            asked = [r for r in asked if r.op.amount is not None or hold.captured == hold.amount]
        else:
            asked = [r for r in enders if r.kind == "release"]
        if not asked:
            self.fail("exactly-once", f"{what} (captured {hold.captured}) with no such request outstanding")
        hold.state = state
        hold.pending_capture = None
        u.open.pop(hold_id, None)
        if state == "released" and hold.key:
            freed = keys.idem_sk(hold.key)
            if not any(c.key[1] == freed and _freed(c) for c in self._commit_changes):
                self.fail("holds", f"{what}: its key {hold.key} was not freed with it")
        self._lot_hold_ended(u, hold, lp)

    def _key_freed(self, u: User, key: str) -> None:
        holds = [h for h in u.holds.values() if h.key == key and h.state == "released"]
        if not holds:
            self.fail(
                "exactly-once", f"{u.name}: key {key}'s marker freed by a transaction that released no hold of it"
            )
        k = u.keys.get(key)
        if k is not None:
            u.keys[key] = KeyState(refused_at=k.refused_at)

    def _check_map(self, u: User, after: Mapping[str, Any], t_ms: int) -> None:
        stored = after.get("holds") or {}
        for hold_id in list(u.open):
            if hold_id not in stored:
                pruned = u.open[hold_id]
                if pruned.until_ms > t_ms + 1:
                    self.fail(
                        "holds", f"{u.name}: hold {hold_id} left the account at {t_ms}, open until {pruned.until_ms}"
                    )
                del u.open[hold_id]
        for hold_id, value in stored.items():
            hold = u.open.get(hold_id)
            if hold is None:
                self.fail("holds", f"{u.name}: hold {hold_id} is on the account but not open")
                raise AssertionError  # unreachable
            draws = {"d": hold.draws} if hold.draws else {}
            if value != {"a": hold.amount, "u": hold.until_ms, **draws}:
                self.fail("holds", f"{u.name}: hold {hold_id} on the account as {value}, the model's {hold.draws}")

    def _swept(self, u: User, actor: Any, changes: list[Change], intents: int, expirations: int) -> None:
        """A sweep's own (direct) write: what the account owed, nothing else."""
        att = getattr(actor.task, "att", None) if actor is not None else None
        if intents or not isinstance(att, Attempt) or att.op.kind != "sweep" or att.op.user != u.name:
            return
        other = [
            ch.key[1]
            for ch in changes
            if ch.key[1].startswith((keys.TX, keys.HOLD, keys.REF, keys.IDEM))
            and (ch.after or {}).get("type") != "expiration"
        ]
        if other:
            self.fail("sweep", f"{u.name}: a sweep wrote {other}")
        att.swept = expirations

    # ---- payments ---------------------------------------------------------------------------------

    def _purchase_entry(self, u: User, item: Mapping[str, Any], pi: str) -> Terms:
        """A Stripe purchase, credited once to a paid lot of its own (its package's name, expiring
        `expiresInDays` after the webhook credited it, if the package says so); its terms."""
        p = self.payments.get(pi)
        what = f"{u.name}: purchase entry {item['seq']} for {pi}"
        if p is None or not p.paid or p.user != u.name or p.inflight == 0:
            self.fail("payments", f"{what}: no paid delivery of it outstanding")
            raise AssertionError  # unreachable
        if p.credited_to is not None:
            self.fail("exactly-once", f"{what}: the payment was credited before (to {p.credited_to})")
        package = next(pk for pk in PACKAGE_BY_ID.values() if pk.credits == p.credits and pk.price == p.price)
        if (item["type"], item["amount"], item.get("monetary_amount"), item.get("currency")) != (
            "purchase",
            p.credits,
            p.price,
            package.currency,
        ):
            self.fail("payments", f"{what}: {item['amount']} credits for {item.get('monetary_amount')}")
        p.credited_to = u.name
        p.purchase_seq = item["seq"]
        p.entries.append(item["seq"])
        u.payments.add(pi)
        return self._sale_terms(pi, package)

    def _sale_terms(self, pi: str, package: Any) -> Terms:
        """The lot terms of a payment's credits (its purchase, or what a won dispute gives back),
        counted from when the webhook wrote them: the committing container's payments clock."""
        days = package.expires_in_days
        actor = self.current()
        expires = None if days is None or actor is None else actor.payments_ms + days * DAY_MS
        return Terms("paid", DEFAULT_PRIORITY["paid"], expires, package.name, f"purchase:{pi}")

    def _settle_entry(self, u: User, item: Mapping[str, Any], ref: str) -> tuple[Any, ...]:
        """A settlement step of a Stripe payment, counted as the record counts it (credits the ledger
        found expired already included: the entry's `expired_part`); how it moves the lots."""
        _, pi, _step = ref.split(":", 2)
        p = self.payments.get(pi)
        what = f"{u.name}: {item['type']} entry {item['seq']} of {item['amount']} ({ref})"
        if p is None or p.credited_to != u.name:
            self.fail("payments", f"{what}: the payment is not credited to {u.name}")
            raise AssertionError  # unreachable
        if p.inflight == 0:
            self.fail("payments", f"{what}: no delivery of the payment outstanding")
        amount, expired = item["amount"], item.get("expired_part", 0)
        source = f"purchase:{pi}"
        # an entry of 0 tells its direction by its description (a dispute giving back what had expired)
        gives = amount > 0 or (amount == 0 and str(item.get("description", "")).startswith(GIVING_BACK))
        counted = -(amount + expired) if gives else -amount + expired  # credits it takes back (< 0: gives)
        spec: tuple[Any, ...] = ("claw", source, counted)
        if item["type"] == "refund":
            target = p.refund_target()
            if counted <= 0 or p.refunds + counted > target:
                self.fail(
                    "payments-clawback",
                    f"{what}: refunds would take {p.refunds + counted} credits of {p.credits}; the refunds "
                    f"Stripe sent ({p.refunded} of {p.price}) allow {target}",
                )
            p.refunds += counted
        elif item["type"] == "dispute":
            held = p.held + counted
            if not 0 <= held <= p.credits - p.refunds or (counted > 0 and not p.disputes):
                self.fail(
                    "payments-clawback",
                    f"{what}: disputes would hold {held} of {p.credits} credits ({p.refunds} refunded)",
                )
            p.held = held
            if gives:
                package = next(pk for pk in PACKAGE_BY_ID.values() if pk.credits == p.credits and pk.price == p.price)
                spec = ("restore", source, -counted, self._sale_terms(pi, package))
        else:
            self.fail("payments", f"{what}: a settlement step of type {item['type']}")
        # (a refund that comes while a dispute holds the credits is settled after the dispute step that
        # gives back what the refund takes: the refund takes those back, never the user's other credits)
        p.steps += 1
        p.entries.append(item["seq"])
        return spec


def _intent_id(sk: str) -> str:
    """`ACCOUNT#INTENT#<ms>#<id>`'s id."""
    return sk[len(keys.INTENT) :].split("#", 1)[1]


def _freed(ch: Change) -> bool:
    """A key's marker freed by a release: kept with `freed_ms` (an orphaned intent under the key is
    refused), deleted before that existed."""
    return ch.after is None or ("freed_ms" in ch.after and "freed_ms" not in (ch.before or {}))
