"""Auto top-ups' events (docs/design.md sections 10 and 18): how a `TOPUP#<n>` item ended.

The ledger writes a top-up's item once as `pending` (an INSERT: no event) and modifies it exactly
once, to `succeeded`, `failed` or `cancelled` (no event), in the same transaction that clears the account's pending mark
(`Ledger.finish_top_up`). The stream is NEW_IMAGE (no old image), so a MODIFY whose new image has an
end state is that end, and announces it:

- `Auto Top-Up Succeeded`: `topUpId`, `packageId`, `packageName`, `credits`, `amount`, `currency`,
  `paymentIntentId`;
- `Auto Top-Up Failed`: `topUpId`, `packageId`, `code`, `message`, `attempt` (failures in a row,
  counting this one), `suspended` (whether it suspended auto top-up), `paymentIntentId` (null when
  no PaymentIntent was created).

The `eventId` is a hash of the top-up's id and its end state: the same on every delivery. A record
that does not read as the ledger writes it is `Unpublishable` (credits.events reads it strictly).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from credits import keys
from credits.events import Event, Unpublishable, _integer, _string, _value
from credits.ledger.topup import topup_id as topup_id_of

SUCCEEDED = "Auto Top-Up Succeeded"
FAILED = "Auto Top-Up Failed"
END_STATES = {"succeeded": SUCCEEDED, "failed": FAILED}
PENDING = "pending"
CANCELLED = "cancelled"
_WHERE = "NewImage"


def event_id(topup_id: str, state: str) -> str:
    """The same id on every delivery of the same end of the same top-up."""
    return hashlib.sha256(f"{topup_id}\n{state}".encode()).hexdigest()[:32]


def topup_events(keys_: Mapping[str, Any], new_image: Mapping[str, Any]) -> list[Event]:
    """The event of a MODIFY of a user's `TOPUP#<n>` item (`Keys` and `NewImage` in DynamoDB JSON):
    one when it ended, [] while it is still pending; Unpublishable for one that does not read as the
    ledger writes it."""
    pk, sk = _string(keys_, "pk", "Keys"), _string(keys_, "sk", "Keys")
    assert pk is not None and sk is not None
    if not pk.startswith(keys.USER) or pk == keys.USER:
        raise Unpublishable("a TOPUP# item outside a user's partition (Keys.pk is not USER#<id>)")
    digits = sk[len(keys.TOPUP) :]
    if not (sk.startswith(keys.TOPUP) and len(digits) == keys.SEQ_DIGITS and digits.isascii() and digits.isdigit()):
        raise Unpublishable(f"Keys.sk is not TOPUP#<{keys.SEQ_DIGITS} digits>")
    user, number = pk[len(keys.USER) :], int(digits)
    state = _string(new_image, "state", _WHERE)
    if state in (PENDING, CANCELLED):
        # not ended (the ledger never modifies it so), or ended with no payment made (turned off
        # before it was paid, or an operator ended it): nothing to announce
        return []
    if state not in END_STATES:
        raise Unpublishable(f"{_WHERE}.state {str(state)[:40]!r} is not pending, succeeded, failed or cancelled")
    topup_id = _string(new_image, "topup_id", _WHERE)
    if topup_id != topup_id_of(user, number):
        raise Unpublishable(f"{_WHERE}.topup_id is not the top-up its key names")
    if _integer(new_image, "number", _WHERE) != number:
        raise Unpublishable(f"{_WHERE}.number is not the number its key names")
    detail: dict[str, Any] = {
        "eventId": event_id(topup_id, state),
        "userId": user,
        "topUpId": topup_id,
        "packageId": _string(new_image, "package_id", _WHERE),
    }
    if state == "succeeded":
        detail.update(
            packageName=_string(new_image, "package_name", _WHERE),
            credits=_integer(new_image, "credits", _WHERE),
            amount=_integer(new_image, "amount", _WHERE),
            currency=_string(new_image, "currency", _WHERE),
            paymentIntentId=_string(new_image, "payment_intent", _WHERE),
        )
    else:
        attempt = _integer(new_image, "attempt", _WHERE)
        assert attempt is not None
        if attempt < 1:
            raise Unpublishable(f"{_WHERE}.attempt is not 1 or more")
        detail.update(
            code=_string(new_image, "code", _WHERE),
            message=_string(new_image, "message", _WHERE),
            attempt=attempt,
            suspended=_boolean(new_image, "suspended"),
            paymentIntentId=_string(new_image, "payment_intent", _WHERE, required=False),
        )
    return [Event(END_STATES[state], detail)]


def _boolean(image: Mapping[str, Any], name: str) -> bool:
    data = _value(image, name, "BOOL", _WHERE)
    if data is None:
        raise Unpublishable(f"{_WHERE}.{name} is missing")
    if not isinstance(data, bool):
        raise Unpublishable(f"{_WHERE}.{name} is not a boolean")
    return data
