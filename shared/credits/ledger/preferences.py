"""A user's settings on the account item (threshold, spend limit, auto top-up) and the end of a
pending auto top-up: the part of `Ledger` that never moves a balance (docs/design.md section 10)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from credits.ledger import commit
from credits.ledger.context import Context
from credits.ledger.reads import Reader
from credits.ledger.topup import AutoTopUp, TopUpState
from credits.ledger.values import UNCHANGED, Settings, Unchanged, validate_token


class UserSettings:
    """Mixed into `Ledger`, which sets these three."""

    ctx: Context
    reader: Reader
    settings_rate: int

    def update_settings(
        self,
        user_id: str,
        *,
        low_balance_threshold: int | None = None,
        monthly_spend_limit: int | Unchanged | None = UNCHANGED,
        auto_top_up: AutoTopUp | Unchanged | None = UNCHANGED,
    ) -> Settings:
        """Change a user's settings (None threshold: keep it; `monthly_spend_limit=None`: no limit).
        They live on the account item but never touch its balance, ledger or holds. At most
        `settings_rate` changes per user in a UTC minute: TooManyRequests past that."""
        validate_token(user_id, "userId")
        commit.update_settings(
            self.ctx, user_id, self.settings_rate, low_balance_threshold, monthly_spend_limit, auto_top_up
        )
        return self.settings(user_id)

    def finish_top_up(
        self, user_id: str, topup_id: str, *, failure: str | None = None, details: Mapping[str, Any] | None = None
    ) -> TopUpState | None:
        """The pending auto top-up `topup_id` was paid (`failure` None) or failed (its code): it is no
        longer pending, failures count towards the back-off and the suspension
        (credits.ledger.topup), and its `TOPUP#` item records how it ended with `details` (the
        payment, or the message for the user). None when it was not pending (a repeated delivery)."""
        validate_token(user_id, "userId")
        return commit.finish_top_up(self.ctx, user_id, topup_id, failure, details or {})

    def cancel_top_up(self, user_id: str, topup_id: str, reason: str, message: str) -> TopUpState | None:
        """End the pending top-up `topup_id` with no payment made and no failure counted (`reason`:
        `turned_off` when the user turned auto top-up off before it was paid, `cancelled` by an
        operator); None when it was not pending."""
        validate_token(user_id, "userId")
        return commit.finish_top_up(self.ctx, user_id, topup_id, reason, {"message": message}, cancel=True)

    def top_ups(self, user_id: str) -> tuple[AutoTopUp | None, TopUpState]:
        """The user's auto top-up settings and where their top-ups stand."""
        state = self.reader.state(user_id)
        return state.auto_top_up, state.topup

    def settings(self, user_id: str) -> Settings:
        return self.reader.settings(user_id)
