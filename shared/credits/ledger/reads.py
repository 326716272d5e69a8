"""Reading a user's ledger: the balance and what is available, settings, holds, history pages, and
the audit that checks the ledger's invariants for one user (docs/design.md section 4)."""

from __future__ import annotations

from typing import Any

from credits import keys
from credits.errors import ValidationError
from credits.ledger import codec
from credits.ledger.account import AccountState
from credits.ledger.context import Context
from credits.ledger.rules import Work
from credits.ledger.values import AccountView, Audit, Hold, Settings, Transaction, validate_token
from credits.store import every, plain


class Reader:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def _account_item(self, user_id: str) -> dict[str, Any] | None:
        validate_token(user_id, "userId")
        return self.ctx.store.get_many(keys.user_pk(user_id), [keys.ACCOUNT]).get(keys.ACCOUNT)

    def account(self, user_id: str) -> AccountView:
        """The balance, what is available of it and what open holds take (one consistent read)."""
        return codec.account_view(self._account_item(user_id), self.ctx.now_ms())

    def state(self, user_id: str) -> AccountState:
        """The account item as the rules read it (one consistent read)."""
        return codec.read_account(self._account_item(user_id))

    def settings(self, user_id: str) -> Settings:
        """The user's low-balance threshold and monthly limit, and the month's usage so far."""
        item = self._account_item(user_id)
        state = codec.read_account(item)
        now = self.ctx.clock()
        spent = Work.of(state, now).spent + state.held(int(now * 1000))
        threshold = state.threshold if state.threshold is not None else self.ctx.default_threshold
        card = plain(item.get("card")) if item and state.card_id else None
        return Settings(threshold, state.spend_limit, spent, state.auto_top_up, state.topup, card)

    def holds(self, user_id: str) -> list[Hold]:
        """The open, unexpired holds, soonest to expire first."""
        view = self.account(user_id)
        if not view.open_holds:
            return []
        found = self.ctx.store.get_many(keys.user_pk(user_id), [keys.hold_sk(h) for h in view.open_holds])
        now_ms = self.ctx.now_ms()
        holds = [codec.hold(item, now_ms) for item in found.values()]
        return sorted((h for h in holds if h.state == "open"), key=lambda h: (h.expires_at_ms, h.hold_id))

    def hold(self, user_id: str, hold_id: str) -> Hold | None:
        """One hold as it stands (state "expired" once past its end while still open), or None."""
        validate_token(user_id, "userId")
        validate_token(hold_id, "holdId")
        item = self.ctx.store.get_many(keys.user_pk(user_id), [keys.hold_sk(hold_id)]).get(keys.hold_sk(hold_id))
        return None if item is None else codec.hold(item, self.ctx.now_ms())

    def transactions(
        self, user_id: str, *, limit: int = 20, cursor: str | None = None
    ) -> tuple[list[Transaction], str | None]:
        """One page of the ledger, newest first, and the cursor of the next page (None at the end)."""
        validate_token(user_id, "userId")
        if type(limit) is not int or not 1 <= limit <= 100:
            raise ValidationError("limit must be an integer from 1 to 100.", [{"field": "limit"}])
        after = keys.tx_sk(codec.decode_cursor(cursor)) if cursor else None
        page = self.ctx.store.query(keys.user_pk(user_id), keys.TX, forward=False, limit=limit, after=after)
        entries = [codec.transaction(item) for item in page.items]
        more = page.last_sk is not None and entries and entries[-1].seq > 1
        return entries, codec.encode_cursor(entries[-1].seq) if more else None

    def history(self, user_id: str) -> list[Transaction]:
        """The whole ledger, oldest first (for audits, exports and tests)."""
        return [codec.transaction(item) for item in every(self.ctx.store, keys.user_pk(user_id), keys.TX)]

    def audit(self, user_id: str) -> Audit:
        """Check invariant 2 for one user: seq 1..N gapless, running balance, account matches."""
        account = self._account_item(user_id) or {}
        entries = self.history(user_id)
        report = Audit(user_id, account.get("balance", 0), account.get("seq", 0), len(entries))
        running = 0
        for expected_seq, tx in enumerate(entries, start=1):
            if tx.seq != expected_seq:
                report.problems.append(f"seq {tx.seq} where {expected_seq} was expected")
            if tx.balance_after != running + tx.amount:
                report.problems.append(f"seq {tx.seq}: balance_after {tx.balance_after} != {running} + {tx.amount}")
            if type(tx.amount) is not int:
                report.problems.append(f"seq {tx.seq}: amount is not an integer")
            running = tx.balance_after
        if report.balance != running:
            report.problems.append(f"account balance {report.balance} != last balance_after {running}")
        if report.seq != len(entries):
            report.problems.append(f"account seq {report.seq} != {len(entries)} entries")
        report.problems += lot_problems(account, entries)
        return report


def lot_problems(account: dict[str, Any], entries: list[Transaction]) -> list[str]:
    """Invariants 9 and 10 as the stored account and entries show them (docs/adr/0010-credit-lots.md):
    what the lots hold, with what open holds drew, is the balance plus any debt (never less), and no
    lot keeps credits while the account owes; a usage or expiration entry drew exactly its amount,
    a clawback at most its amount (the rest is a debt); an expiration entry has its system reference."""
    problems: list[str] = []
    if "lots" in account:
        state = codec.read_account(account)
        inside = sum(lot.remaining for lot in state.lots.values()) + sum(sum(d.values()) for d in state.draws.values())
        debt = inside - state.balance
        if debt < 0:
            problems.append(f"lots hold {inside} credits, less than the balance {state.balance}")
        elif debt > 0 and any(lot.remaining for lot in state.lots.values()):
            problems.append(f"lots keep credits while the account owes {debt}")
    for tx in entries:
        drawn = sum(tx.draws.values())
        if tx.type == "expiration" and not (tx.system_reference and (tx.reference_id or "").startswith("expire:")):
            problems.append(f"seq {tx.seq}: an expiration entry without its system reference")
        if not tx.draws:
            continue  # written before lots, or a debit that found no credits (a debt)
        exact = tx.type in ("usage", "expiration")
        if (exact and drawn != -tx.amount) or (tx.amount < 0 and drawn > -tx.amount):
            problems.append(f"seq {tx.seq}: drew {drawn} credits for {tx.amount}")
    return problems
