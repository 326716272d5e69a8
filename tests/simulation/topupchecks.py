"""The model's checks of auto top-up (docs/design.md section 18; the rules, written independently of
`credits.ledger.topup`), run inside the commit checks (`commits.py`) for every commit that writes an
account, on every answer of a top-up's end, a card or a setting, and at the end of the run:

- a `TOPUP#<n>` item is written only with the account's update, by a commit that decided a charge or
  a hold (never a grant, a refund, an expiry, an adjustment, a capture or a release), right after the
  decision that took `available` lower than before and below the threshold, when the account had a
  card and auto top-up on, none pending, no suspension, the hour after the last failure gone by, and
  fewer than the `max_per_month` in force started in the decision's UTC month; and such a decision
  always starts one (exactly one per crossing: checked when nothing about the account's top-up
  changed after the committing attempt began, so its decision read what the model has);
- numbered 1..count with no gap; `topup_pending` names the highest, which is `pending`; at most one is
  pending; the item records the threshold, the package, and what the decision left available;
- a top-up ends once, in one transaction with the account (nothing else in it: no money moves),
  asked by a delivery of its end: paid (the failures in a row back to 0, the back-off gone), or
  failed (one failure more, none started for an hour, the third in a row suspends it); the item says
  how it ended; a second delivery changes nothing;
- the setting (`autotopup`) and the card (`card`) are single writes of their own requests: turning it
  on needs a card (`card_required` otherwise, and only then) and clears the failures and the
  suspension; a new card clears them and the back-off; nothing else writes them;
- after every commit the account's `auto_top_up`, `card` and `topup_*` are the model's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from credits import keys
from tests.simulation.records import SETTINGS_RATE, Attempt, TopUps, User, iso_ms
from tests.simulation.workload import TOPUP_PACKAGE

if TYPE_CHECKING:
    from tests.simulation.store import Change, MemoryStore

BACKOFF_MS = 3_600_000  # no new top-up for an hour after a failure
MAX_FAILURES = 3  # in a row: auto top-up is suspended
RECENT = 16  # settings and cards remembered with when they changed
TOPUP_ATTRS = (
    "auto_top_up",
    "card",
    "topup_count",
    "topup_pending",
    "topup_month",
    "topup_started",
    "topup_failures",
    "topup_retry_ms",
    "topup_suspended",
)
# why a top-up must not start that a write of the user's own (a setting, a card) may have made true
# after a decision read the account: the known bug `topup-after-setting-changed`
RACY = frozenset({"off", "card", "cap"})
# what a top-up's end must leave as it was
MONEY = ("balance", "seq", "holds", "holds_rev", "spent", "spend_month", "lots", "lots_due", "lots_shard")


@dataclass
class TopUpPass:
    """One transaction of an account, as the top-up checks follow it."""

    t: int  # the decision time (Unix ms)
    month: str  # its UTC month
    att: Attempt | None  # the committing container's attempt
    stale: bool  # the top-up's state changed after that attempt began: its decision may have read it before
    last: tuple[str, int, int] | None = None  # the last decision, if it spent: (what, available before, after)
    expect: str | None = None  # a decision that crossed the threshold: the next item must be its top-up


class TopUpChecks:
    """The top-up checks; the state is the `Model`'s (declared here)."""

    users: dict[str, User]
    table: MemoryStore
    topup_stats: dict[str, int]
    now: Callable[[], float]
    current: Callable[[], Any]
    fail: Callable[[str, str], None]
    known_bug: Callable[[str, str], None]
    _readable: Callable[[User, int], tuple[int, int]]

    # ---- a transaction --------------------------------------------------------------------------

    def _attempt(self) -> Attempt | None:
        """The attempt of the container whose commit this is (None: no client's)."""
        actor = self.current()
        att = getattr(actor.task, "att", None) if actor is not None else None
        return att if isinstance(att, Attempt) else None

    def _topup_begin(self, u: User, stamp: str, t: int) -> TopUpPass:
        att = self._attempt()
        stale = att is None or u.topups.changed_at >= att.started
        return TopUpPass(t, stamp[:7], att, stale)

    def _topup_watch(self, u: User, t: int) -> int | None:
        """What is available before a charge or a hold (None: the user never set auto top-up)."""
        return self._readable(u, t)[1] if u.topups.settings_seen else None

    def _topup_decision(self, u: User, tp: TopUpPass, what: str, before: int | None, spends: bool) -> None:
        """A decision of the commit (an entry or a hold's start or end) after which `_topup_watch`
        said `before`: a charge or a hold that crosses the threshold must be followed by its top-up."""
        if tp.expect is not None:
            self._topup_missed(u, tp)
        tp.last = None
        if not spends:
            return
        if before is None:  # auto top-up off: no top-up may follow it (`_topup_refusal` says why)
            tp.last = (what, 0, 0)
            return
        after = self._readable(u, tp.t)[1]
        tp.last = (what, before, after)
        rec = u.topups
        if self._topup_refusal(rec, tp) is None and self._crosses(rec.setting, before, after):
            tp.expect = what

    @staticmethod
    def _crosses(setting: Mapping[str, Any] | None, before: int, after: int) -> bool:
        return setting is not None and after < setting["t"] and after < before

    def _topup_missed(self, u: User, tp: TopUpPass) -> None:
        if not tp.stale:
            rec = u.topups
            self.fail(
                "topup-missed",
                f"{u.name}: {tp.expect} at {tp.t} took available below the threshold {(rec.setting or {}).get('t')} "
                f"with auto top-up on, a card, none pending ({rec.count} so far, {rec.per_month(tp.month)} in "
                f"{tp.month}), and started no top-up",
            )
        self.topup_stats["crossings_not_checked"] += 1  # the decision may have read an older setting
        tp.expect = None

    def _topup_end_of_pass(self, u: User, tp: TopUpPass) -> None:
        if tp.expect is not None:
            self._topup_missed(u, tp)

    @staticmethod
    def _topup_refusal(rec: TopUps, tp: TopUpPass) -> str | None:
        """Why no top-up may start at the decision `tp` (None: one starts if the decision crosses)."""
        return (TopUpChecks._topup_refused(rec, tp) or (None, None))[1]

    @staticmethod
    def _topup_refused(rec: TopUps, tp: TopUpPass) -> tuple[str, str] | None:
        """Why no top-up may start at the decision `tp`: (what, the sentence); None: one starts if the
        decision crosses. `what` is in RACY when the user's own write made it so."""
        setting = rec.setting
        if setting is None or not setting["e"]:
            return "off", "auto top-up is off" if setting is not None else "auto top-up is not set"
        if rec.card is None:
            return "card", "the account has no saved card"
        if rec.pending is not None:
            return "pending", f"{rec.pending} is pending"
        if rec.suspended is not None:
            return "suspended", f"auto top-up is suspended ({rec.suspended})"
        if tp.t < rec.retry_ms:
            return "backoff", f"the last failure's back-off runs until {rec.retry_ms}"
        started = rec.per_month(tp.month)
        if started >= setting["m"]:
            return "cap", f"{started} started in {tp.month} already, at most {setting['m']} a month"
        return None

    def _topup_started(self, u: User, ch: Change, tp: TopUpPass) -> None:
        """A `TOPUP#` item written by a transaction: the top-up the decision before it started."""
        rec = u.topups
        item = ch.after
        n = rec.count + 1
        what = f"{u.name}: {ch.key[1]} written at {tp.t}"
        if ch.before is not None or item is None:
            state = (ch.before or {}).get("state")
            self.fail("topup-once", f"{what}: {'deleted' if item is None else 'rewritten'} by a decision ({state})")
            raise AssertionError  # unreachable
        if (ch.key[1], item.get("number"), item.get("topup_id")) != (keys.topup_sk(n), n, f"topup:{u.name}:{n}"):
            self.fail(
                "topup-numbers", f"{what}: number {item.get('number')}, id {item.get('topup_id')}; {rec.count} before"
            )
        if item.get("state") != "pending":
            self.fail("topup-once", f"{what}: started {item.get('state')}")
        if tp.last is None:
            self.fail(
                "topup-trigger", f"{what}: not right after a charge or a hold (the commit decided no such change)"
            )
            raise AssertionError  # unreachable
        decision, before, after = tp.last
        began = tp.att.started if tp.att is not None else self.now()
        refused = self._topup_refused(rec, tp)
        if refused is not None:
            detail = f"{what}, after {decision}: started though {refused[1]}"
            if tp.stale and refused[0] in RACY:
                # the user's write landed between the decision's read of the account and its commit (fixed;
                # reported by its own name)
                self.known_bug(
                    "topup-after-setting-changed",
                    f"{detail} (changed at {rec.changed_at:.6f}, after the committing attempt began at {began:.6f}; "
                    f"the decision read it before)",
                )
            else:
                self.fail("topup-trigger", detail)
        # the setting the decision read: the one in force, or one in force since its attempt began
        since = [s for at, s in rec.settings_seen if at >= began]
        since += [*[s for at, s in rec.settings_seen if at < began][-1:], rec.setting]
        threshold, package = item.get("threshold"), item.get("package_id")
        if not any(s is not None and (s["t"], s["p"]) == (threshold, package) for s in since):
            self.fail("topup-trigger", f"{what}: threshold {threshold}, package {package}; the setting's {rec.setting}")
        if item.get("available") != after or not (isinstance(threshold, int) and after < threshold and after < before):
            self.fail(
                "topup-trigger",
                f"{what}: recorded available {item.get('available')} (threshold {threshold}); {decision} took "
                f"available from {before} to {after}",
            )
        if iso_ms(str(item.get("created_at"))) != tp.t:
            self.fail("clock", f"{what}: created {item.get('created_at')}, decided at {tp.t}")
        tp.expect = tp.last = None
        cap = max((rec.setting or {}).get("m", 0), rec.per_month(tp.month) + 1)  # (past it: reported above)
        rec.count = n
        rec.pending = str(item["topup_id"])
        rec.items[n] = "pending"
        rec.started.append((n, tp.month, cap))
        self.topup_stats["started"] += 1

    def _topup_ended(self, u: User, changes: list[Change], account: Change, t: int) -> None:
        """A transaction that ends a top-up: its item and the account, nothing else."""
        rec = u.topups
        ended = [ch for ch in changes if ch.key[1].startswith(keys.TOPUP)]
        others = [ch.key[1] for ch in changes if ch is not account and ch not in ended]
        if len(ended) != 1 or others:
            self.fail("topup-end", f"{u.name}: a top-up's end wrote {[ch.key[1] for ch in changes]}")
        ch = ended[0]
        before_item, item = ch.before or {}, ch.after or {}
        n = int(ch.key[1][len(keys.TOPUP) :])
        tid = f"topup:{u.name}:{n}"
        what = f"{u.name}: {tid} ended {item.get('state')} at {t}"
        before, after = account.before or {}, account.after or {}
        moved = [attr for attr in MONEY if before.get(attr) != after.get(attr)]
        if moved:
            self.fail("all-or-nothing", f"{what}: the end changed the account's {moved}")
        if before_item.get("state") != "pending" or rec.items.get(n) != "pending":
            self.fail("topup-once", f"{what}: it was {before_item.get('state')} (the model's {rec.items.get(n)})")
        if rec.pending != tid or n != rec.count or before.get("topup_pending") != tid:
            self.fail("topup-once", f"{what}: the pending one is {rec.pending} ({before.get('topup_pending')})")
        att = self._attempt()
        if att is None or att.op.kind != "topup_end" or att.op.user != u.name or att.req.topup_target != tid:
            who = att.op.describe() if att is not None else "nobody"
            self.fail("topup-end", f"{what} by {who}: no delivery of its end")
            raise AssertionError  # unreachable
        failure = att.op.failure
        if iso_ms(str(item.get("finished_at"))) != t:
            self.fail("clock", f"{what}: finished at {item.get('finished_at')}, the account's update at {t}")
        if failure is None:
            if item.get("state") != "succeeded" or not item.get("payment_intent"):
                self.fail("topup-end", f"{what}: its payment was made ({att.op.describe()}); the item says {item}")
            rec.failures, rec.retry_ms = 0, 0
            self.topup_stats["ended_paid"] += 1
        else:
            rec.failures += 1
            rec.retry_ms = t + BACKOFF_MS
            if rec.failures >= MAX_FAILURES:
                if rec.suspended is None:
                    self.topup_stats["suspensions"] += 1
                rec.suspended = failure
            said = (item.get("state"), item.get("code"), item.get("attempt"), item.get("suspended"))
            if said != ("failed", failure, rec.failures, rec.suspended is not None):
                self.fail(
                    "topup-end",
                    f"{what}: (state, code, attempt, suspended) {said}, the model's "
                    f"{('failed', failure, rec.failures, rec.suspended is not None)}",
                )
            self.topup_stats["ended_failed"] += 1
        rec.pending = None
        rec.items[n] = str(item.get("state"))
        rec.changed_at = self.now()
        att.topup_ended = (rec.failures, rec.suspended)
        self._topup_account(u, after)

    # ---- single writes: the setting, the card ---------------------------------------------------

    def _topup_write(self, u: User, before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
        """A single write of the account: a setting's or a card's (True: checked), or one that leaves
        the top-up's attributes as they were."""
        att = self._attempt()
        kind = att.op.kind if att is not None and att.op.user == u.name else None
        changed = {attr for attr in TOPUP_ATTRS if before.get(attr) != after.get(attr)}
        if att is None or kind not in ("autotopup", "card"):
            if changed:
                who = att.op.describe() if att is not None else "nobody"
                self.fail("topup-state", f"{u.name}: {sorted(changed)} changed by a single write of {who}")
            return False
        rec = u.topups
        op = att.op
        now = self.now()
        if kind == "autotopup":
            setting = (
                None
                if op.enabled is None
                else {"e": op.enabled, "t": op.threshold, "p": TOPUP_PACKAGE, "m": op.max_per_month}
            )
            allowed = {"auto_top_up", "topup_failures", "topup_suspended"} if op.enabled else {"auto_top_up"}
            if after.get("auto_top_up") != setting or changed - allowed:
                self.fail("topup-settings", f"{u.name}: {op.describe()} wrote {_topup_part(after)}")
            if op.enabled:
                if "card" not in after:
                    self.fail("topup-card", f"{u.name}: {op.describe()} turned auto top-up on with no card saved")
                if after.get("topup_failures") != 0 or "topup_suspended" in after:
                    self.fail(
                        "topup-settings", f"{u.name}: turned on, {_topup_part(after)}: failures or suspension left"
                    )
                rec.failures, rec.suspended = 0, None
            for setting_attr in ("low_balance_threshold", "monthly_spend_limit"):
                if before.get(setting_attr) != after.get(setting_attr):
                    self.fail("settings", f"{u.name}: {op.describe()} changed {setting_attr}")
            if after.get("settings_changes", 0) > SETTINGS_RATE:
                self.fail("settings", f"{u.name}: {after.get('settings_changes')} settings changes in a minute")
            rec.setting = setting
            rec.settings_seen = [*rec.settings_seen[-RECENT:], (now, setting)]
            self.topup_stats["settings_written"] += 1
        else:
            card = after.get("card")
            if op.detach:
                if card is not None or (before.get("card") or {}).get("id") != op.card or changed != {"card"}:
                    self.fail("topup-card", f"{u.name}: {op.describe()} wrote {_topup_part(after)}")
                rec.card = None
            else:
                stored = before.get("card") or {}
                saved = card if isinstance(card, Mapping) else {}
                newer = int(stored.get("created") or 0) <= int(saved.get("created") or 0)  # not an older card
                if not newer or saved.get("id") != op.card or stored.get("id") == op.card:
                    self.fail("topup-card", f"{u.name}: {op.describe()} wrote {card} over {stored}")
                if after.get("topup_failures") != 0 or {"topup_suspended", "topup_retry_ms"} & after.keys():
                    self.fail("topup-card", f"{u.name}: a new card left {_topup_part(after)}")
                if changed - {"card", "topup_failures", "topup_suspended", "topup_retry_ms"}:
                    self.fail("topup-card", f"{u.name}: {op.describe()} changed {sorted(changed)}")
                rec.card = op.card
                rec.failures, rec.retry_ms, rec.suspended = 0, 0, None
            rec.card_seen = [*rec.card_seen[-RECENT:], (now, rec.card is not None)]
            self.topup_stats["cards_written"] += 1
        rec.changed_at = now
        att.settings_writes += 1
        self._topup_account(u, after)
        return True

    def _topup_account(self, u: User, after: Mapping[str, Any]) -> None:
        """After a commit: the account's setting, card and top-up state are the model's."""
        rec = u.topups
        month = rec.started[-1][1] if rec.started else None
        got = (
            after.get("auto_top_up"),
            (after.get("card") or {}).get("id"),
            after.get("topup_count", 0),
            after.get("topup_pending"),
            after.get("topup_failures", 0),
            after.get("topup_retry_ms", 0),
            after.get("topup_suspended"),
            after.get("topup_month"),
            after.get("topup_started", 0),
        )
        mine = (
            rec.setting,
            rec.card,
            rec.count,
            rec.pending,
            rec.failures,
            rec.retry_ms,
            rec.suspended,
            month,
            rec.per_month(month) if month else 0,
        )
        if got != mine:
            names = ("setting", "card", "count", "pending", "failures", "retry", "suspended", "month", "started")
            diff = {name: (g, m) for name, g, m in zip(names, got, mine, strict=True) if g != m}
            self.fail("topup-state", f"{u.name}: the account's auto top-up differs (stored, model): {diff}")

    # ---- answers --------------------------------------------------------------------------------

    def _autotopup_answer(self, att: Attempt, u: User, status: str, code: str) -> bool:
        """A setting refused for want of a card: only when none was saved at some moment of the
        attempt, and nothing written (True: checked)."""
        if status != "refused" or code != "card_required":
            return False
        rec = u.topups
        if att.settings_writes or not att.op.enabled:
            self.fail("topup-card", f"r{att.req.rid}: {att.op.describe()} answered card_required, but it was written")
        saved = [present for at, present in rec.card_seen if at <= att.started][-1:] or [False]
        during = [present for at, present in rec.card_seen if att.started < at <= att.ended]
        if saved[0] and all(during):
            self.fail("topup-card", f"r{att.req.rid}: {att.op.describe()} answered card_required; a card was saved")
        self.topup_stats["refused_for_no_card"] += 1
        return True

    def _card_answer(self, att: Attempt, u: User, status: str, value: Any) -> None:
        if status != "ok":
            self.fail("topup-card", f"r{att.req.rid}: {att.op.describe()} answered {status} {value}")
        if value and not att.settings_writes:
            self.fail("topup-card", f"r{att.req.rid}: {att.op.describe()} answered {value!r}, nothing was written")
        if not value and att.settings_writes:
            # its write landed, the answer was lost and the resend found the card written: "not saved"
            self.topup_stats["card_written_answered_unchanged"] += 1

    def _topup_end_answer(self, att: Attempt, u: User, status: str, value: Any, code: str) -> None:
        what = f"r{att.req.rid}: {att.op.describe()}"
        if status != "ok":
            self.fail("topup-end", f"{what} answered {status} {code}")
            return
        target, first, second = value
        if target is None:
            if att.topup_ended is not None:
                self.fail("topup-end", f"{what} found none pending, and ended one")
            return
        n = int(str(target).rpartition(":")[2])
        if first is not None:
            state = (first.failures, first.suspended)
            if att.topup_ended is None or state != att.topup_ended or first.pending is not None:
                self.fail("topup-end", f"{what} answered {first} for {target}; its end wrote {att.topup_ended}")
        else:
            if att.topup_ended is not None:
                self.fail("topup-end", f"{what} answered not pending, and it ended {target}")
            if u.topups.items.get(n) == "pending":
                self.fail("topup-end", f"{what} answered {target} not pending, and it is")
            self.topup_stats["ends_delivered_again"] += 1
        if second is not None:
            self.fail("topup-once", f"{what}: delivered again at once, {target} ended again ({second})")
        if att.op.twice:
            self.topup_stats["ends_delivered_again"] += 1

    # ---- at rest --------------------------------------------------------------------------------

    def topups_at_rest(self) -> None:
        """At the end: every user's `TOPUP#` items, numbered 1..count, one pending at most (the
        highest, the account's pending one), every other ended once; no month past its cap."""
        for name in sorted(self.users):
            u = self.users[name]
            rec = u.topups
            pk = keys.user_pk(name)
            items = list(self.table.items_with_prefix(pk, keys.TOPUP))
            account = self.table.item((pk, keys.ACCOUNT)) or {}
            numbers = [item["number"] for item in items]
            if numbers != list(range(1, len(items) + 1)) or len(items) != rec.count:
                self.fail("topup-numbers", f"{name}: TOPUP# numbers {numbers}; {rec.count} started")
            if account.get("topup_count", 0) != len(items):
                self.fail("topup-numbers", f"{name}: topup_count {account.get('topup_count')}, {len(items)} items")
            pending = [item for item in items if item["state"] == "pending"]
            if len(pending) > 1 or (pending and pending[0] is not items[-1]):
                self.fail("topup-once", f"{name}: pending {[item['topup_id'] for item in pending]} of {numbers}")
            if account.get("topup_pending") != (pending[0]["topup_id"] if pending else None):
                self.fail(
                    "topup-once", f"{name}: topup_pending {account.get('topup_pending')}, pending items {pending}"
                )
            for item in items:
                if (
                    item["state"] not in ("pending", "succeeded", "failed")
                    or rec.items[item["number"]] != item["state"]
                ):
                    self.fail("topup-end", f"{name}: {item['topup_id']} is {item['state']}")
            for n, month, cap in rec.started:
                before = sum(1 for m, other, _ in rec.started if m <= n and other == month)
                created = str(items[n - 1]["created_at"])[:7]
                if before > cap or created != month:
                    self.fail(
                        "topup-cap", f"{name}: top-up {n} the {before}th of {month} (created {created}), cap {cap}"
                    )
            self._topup_account(u, account)


def _topup_part(item: Mapping[str, Any]) -> dict[str, Any]:
    return {attr: item[attr] for attr in TOPUP_ATTRS if attr in item}
