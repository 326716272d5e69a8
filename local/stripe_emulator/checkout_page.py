"""The hosted checkout page a Checkout Session's `url` leads to: what is bought and its price, and the
customer's choices (pay by card, pay later by a delayed method, cancel), each redirecting back to the
site as Stripe's page does; once paid, expired or failed, it says so and links back to the site."""

from __future__ import annotations

import html

from local.stripe_emulator.api import Reply
from local.stripe_emulator.control import Control
from local.stripe_emulator.objects import BANK, EmulatorError, Json, format_amount, snapshot

_STYLE = """*{box-sizing:border-box}body{margin:0;min-height:100vh;display:flex;align-items:center;
justify-content:center;background:#f6f9fc;color:#1a1f36;font:16px/1.5 system-ui,-apple-system,sans-serif}
main{width:min(420px,100%);margin:16px;padding:32px;background:#fff;border-radius:12px;
box-shadow:0 6px 24px rgba(50,50,93,.12)}.label{display:inline-block;margin:0;padding:4px 10px;
border-radius:999px;background:#fff4e5;color:#8a4b00;font-size:13px;font-weight:600}
h1{margin:20px 0 4px;font-size:20px}.amount{margin:0 0 24px;font-size:34px;font-weight:700}
button{display:block;width:100%;margin-top:12px;padding:12px;border:1px solid #cfd7df;border-radius:8px;
background:#fff;font:inherit;cursor:pointer}button.primary{background:#635bff;border-color:#635bff;color:#fff;
font-weight:600}button.link{border:0;color:#697386}.note{padding:12px;border-radius:8px;background:#e6f7ee;
color:#0b6b3a}.note.failed{background:#fdecef;color:#c0123c}.error{color:#c0123c}
.credits{margin:0;color:#635bff;font-weight:600}.back{display:block;margin-top:16px;padding:12px;
border-radius:8px;background:#635bff;color:#fff;font-weight:600;text-align:center;text-decoration:none}
.back::before{content:"\\2190  "}.back:focus-visible{outline:3px solid rgba(99,91,255,.4);outline-offset:2px}"""


class HostedCheckout(Control):
    """GET /checkout/{id}, and the form's POST /checkout/{id}/{pay|pay_later|cancel}."""

    def _checkout_page(self, session_id: str, params: Json, notice: str = "", status: int = 200) -> Reply:
        """GET /checkout/{id}: the hosted payment page."""
        with self._lock:
            if session_id not in self._checkouts:
                return _html(404, "Not found", "<h1>No such checkout session</h1>")
            session, checkout = snapshot(self._objects[session_id]), self._checkouts[session_id]
            name, credits = checkout.product_name, self._control_credits(session, checkout)
            state = self._control_summary(session)["state"]
        setup = session["mode"] == "setup"
        amount = "Save a card" if setup else format_amount(session["amount_total"], session["currency"])
        return _html(
            status,
            amount if setup else f"Pay {amount}",
            "".join(
                [
                    '<p class="label">Local Stripe emulator — no real payment</p>',
                    f'<h1 id="product">{html.escape(name or "Card for later payments")}</h1>',
                    f'<p class="credits" id="credits">{credits:,} {"credit" if credits == 1 else "credits"}</p>'
                    if credits
                    else "",
                    f'<p class="amount" id="amount">{amount}</p>',
                    f'<p class="error" id="notice">{html.escape(notice)}</p>' if notice else "",
                    _choices(session, state, amount),
                ]
            ),
        )

    def _checkout_action(self, session_id: str, action: str, params: Json) -> Reply:
        """POST /checkout/{id}/{pay|pay_later|cancel}: act, then redirect as Stripe's hosted page does."""
        with self._lock:
            session = snapshot(self._checkout(session_id)[0])
        if action != "cancel":
            try:
                self._act(self._complete, session_id, "card" if action == "pay" else BANK)
            except EmulatorError as exc:
                return self._checkout_page(session_id, params, exc.message, 409)
        target = session["cancel_url" if action == "cancel" else "success_url"]
        if not target:
            return self._checkout_page(session_id, params, "Checkout cancelled.")
        return 303, {"Location": target.replace("{CHECKOUT_SESSION_ID}", session_id)}, b""


def _choices(session: Json, state: str, amount: str) -> str:
    """The page's form (pay, pay later, cancel) for an open session; for any other, what became of it
    and a link back to the site: after paying (or on its way out), Back is never a dead end."""
    session_id = session["id"]
    back_to = session["success_url" if session["status"] == "complete" else "cancel_url"] or ""
    back = (
        f'<a class="back" id="back" href="{html.escape(back_to.replace("{CHECKOUT_SESSION_ID}", session_id))}">'
        "Back to the site</a>"
        if back_to
        else ""
    )
    if state == "failed":
        return f'<p class="note failed" id="state">This checkout session\'s payment failed.</p>{back}'
    if session["status"] == "complete" and state == "saved":
        return f'<p class="note" id="state">This checkout session saved a card.</p>{back}'
    if session["status"] == "complete":
        pending = "" if state == "paid" else " The payment is still processing."
        return f'<p class="note" id="state">This checkout session is already paid.{pending}</p>{back}'
    if state == "expired":
        return f'<p class="note" id="state">This checkout session has expired.</p>{back}'
    path = f"/checkout/{html.escape(session_id)}"
    return "".join(
        [
            f'<form method="post" action="{path}/pay">',
            f'<button id="pay" class="primary" formaction="{path}/pay">'
            + ("Save card" if session["mode"] == "setup" else f"Pay {amount}")
            + "</button>",
            ""
            if session["mode"] == "setup"
            else f'<button id="pay-later" formaction="{path}/pay_later">Pay later (async)</button>',
            f'<button id="cancel" class="link" formaction="{path}/cancel">Cancel</button>',
            "</form>",
        ]
    )


def _html(status: int, title: str, content: str) -> Reply:
    """A small self-contained HTML page."""
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
        f'content="width=device-width,initial-scale=1"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body><main>{content}</main></body></html>"
    )
    return status, {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"}, page.encode()
