"""Auto top-up on the page, in Chromium against `make dev`: a card saved while buying, auto top-up turned
on, spending below the threshold, and the top-up landing on its own (the balance refilled, the history's
"Auto top-up: ..." row, the state line); a declined top-up chosen with the Test payments card's control.
The contract: /tmp/notes/topup_spec.md (docs/design.md section 18)."""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import urlsplit

from playwright.sync_api import Page, Request, Response, expect

from tests.e2e.conftest import DevStack, on_site, run_action, screenshot
from tests.e2e.test_page import go_to_checkout, sign_in
from tests.e2e.test_stripe_tools import call, token_of

# A top-up is the stream's (the charge's TOPUP# item reaches functions/topup), Stripe's (an off-session
# PaymentIntent) and the webhook's: three cold containers on a loaded machine, after the charge itself.
TOPUP_DEADLINE_MS = 90_000
ON = {"enabled": True, "threshold": 95, "packageId": "starter", "maxPerMonth": 5}


def is_call(method: str, path: str) -> Callable[[Request | Response], bool]:
    """A request (or its response) by method and path: for expect_request and expect_response."""

    def matches(r: Request | Response) -> bool:
        request = r if isinstance(r, Request) else r.request
        return request.method == method and urlsplit(request.url).path == path

    return matches


def buy_saving_the_card(page: Page, stack: DevStack) -> None:
    """Buy Starter with "Use this card for auto top-up" ticked: the checkout asks Stripe to save the card,
    paid with the hosted page's test card (Visa 4242), which then shows as the card on file."""
    page.check("#save-card")
    with page.expect_request(is_call("POST", "/credits/checkout")) as sent:
        go_to_checkout(page, "starter")
    assert sent.value.post_data_json == {"packageId": "starter", "saveCard": True}
    page.click("#pay")
    page.wait_for_url(on_site(stack))
    expect(page.locator("#balance")).to_have_text("100")
    expect(page.locator("#checkout-status")).to_have_text("Payment confirmed: +100 credits")
    expect(page.locator("#card-on-file")).to_contain_text("Visa ending 4242")
    expect(page.locator("#save-card")).not_to_be_checked()  # a new page: unticked again


def turn_on(page: Page) -> None:
    """Auto top-up on: below 95 credits, buy Starter, at most 5 a month."""
    page.check("#autotopup-enabled")
    page.fill("#autotopup-threshold", str(ON["threshold"]))
    page.select_option("#autotopup-package", str(ON["packageId"]))
    page.fill("#autotopup-max", str(ON["maxPerMonth"]))
    with page.expect_response(is_call("PUT", "/credits/settings")) as saved:
        page.click("#autotopup-save")
    assert saved.value.request.post_data_json == {"autoTopUp": ON}
    assert saved.value.status == 200, f"PUT /credits/settings {{autoTopUp}}: {saved.value.status} {saved.value.text()}"
    expect(page.locator("#autotopup-status")).to_have_text("Auto top-up is on.")
    expect(page.locator("#topup-state")).to_have_text(
        "Next top-up: Starter when you fall below 95 credits; 0 of 5 this month"
    )


def test_a_saved_card_tops_up_the_balance_when_spending_crosses_the_threshold(page: Page, dev_stack: DevStack) -> None:
    sign_in(page, dev_stack)
    state = page.locator("#topup-state")
    expect(page.locator("#autotopup-form")).to_have_attribute("aria-busy", "false")  # the settings are read
    expect(page.locator("#card-on-file")).to_have_text("No card on file")
    expect(page.get_by_role("button", name="Add a card")).to_be_visible()
    expect(state).to_have_text("Auto top-up is off")
    expect(state).to_have_attribute("data-state", "off")

    # Turned on without a card: the API refuses (409 card_required) and the page says what to do.
    page.check("#autotopup-enabled")
    with page.expect_response(is_call("PUT", "/credits/settings")) as refused:
        page.click("#autotopup-save")
    assert refused.value.status == 409, f"PUT /credits/settings without a card: {refused.value.status}"
    expect(page.locator("#autotopup-status")).to_have_text("Add a card first: auto top-up pays with the card on file.")
    expect(page.locator("#autotopup-status")).to_have_attribute("data-kind", "error")
    expect(state).to_have_text("Auto top-up is off")
    screenshot(page, "40-auto-topup-no-card")

    buy_saving_the_card(page, dev_stack)
    expect(page.get_by_role("button", name="Add a new card")).to_be_visible()
    turn_on(page)
    screenshot(page, "41-auto-topup-on")

    # 100 - 10 = 90: below 95, so the charge starts a top-up, which lands a moment later on its own; the
    # page follows it (no click on Refresh): the balance, the history's row, the month's count.
    assert run_action(page, "generate").status == 200
    expect(page.locator("#balance")).to_have_text("190", timeout=TOPUP_DEADLINE_MS)
    topped_up = page.locator("#history tbody tr").filter(has_text=re.compile("Auto top-up:"))
    expect(topped_up.locator("td.desc")).to_have_text(["Auto top-up: Starter, 100 credits for $5.00"])
    expect(topped_up.locator("td.type")).to_have_text(["Purchase"])
    expect(topped_up.locator("td.amount")).to_have_text(["+100"])
    expect(state).to_have_text("Next top-up: Starter when you fall below 95 credits; 1 of 5 this month")
    # The hold of the action started it: the top-up may land before or after the action's charge.
    expect(page.locator('#history tbody tr[data-type="purchase"]')).to_have_count(2)
    expect(page.locator('#history tbody tr[data-type="usage"]')).to_have_count(1)
    screenshot(page, "42-auto-topup-landed")

    # Turned off: the same settings with enabled false.
    page.uncheck("#autotopup-enabled")
    with page.expect_response(is_call("PUT", "/credits/settings")) as off:
        page.click("#autotopup-save")
    assert off.value.request.post_data_json == {"autoTopUp": {**ON, "enabled": False}}
    assert off.value.status == 200
    expect(state).to_have_text("Auto top-up is off")
    page.reload()
    expect(page.locator("#autotopup-threshold")).to_have_value("95")
    expect(page.locator("#autotopup-enabled")).not_to_be_checked()
    expect(state).to_have_text("Auto top-up is off")


def test_a_declined_top_up_is_said_and_waits_before_trying_again(page: Page, dev_stack: DevStack) -> None:
    sign_in(page, dev_stack)
    buy_saving_the_card(page, dev_stack)
    turn_on(page)

    # The Test payments card (the Stripe emulator only) decides what the next off-session payment does,
    # through the gateway's LOCAL-ONLY route to the emulator's /_emulator/next_off_session_payment (the
    # page has no way to the emulator itself): without it, the page offers no such control.
    status, answer = call(dev_stack, "GET", "/local/stripe/next_off_session_payment", token_of(page))
    assert status == 200 and isinstance(answer, dict) and "nextOffSessionPayment" in answer, (
        f"GET /local/stripe/next_off_session_payment (local/gateway.py) answered {status} {answer}"
    )
    control = page.get_by_role("group", name="Next auto top-up:")
    expect(control).to_be_visible()
    declined = control.get_by_role("button", name="is declined")
    with page.expect_response(is_call("POST", "/local/stripe/next_off_session_payment")) as chosen:
        declined.click()
    assert chosen.value.request.post_data_json == {"outcome": "decline"}
    expect(page.locator("#stripe-tools-result")).to_have_text("The next auto top-up will be declined by the bank.")
    expect(declined).to_have_attribute("aria-pressed", "true")

    assert run_action(page, "generate").status == 200
    state = page.locator("#topup-state")
    expect(state).to_have_attribute("data-state", "retry", timeout=TOPUP_DEADLINE_MS)
    expect(state).to_have_text(re.compile(r"^Last top-up failed; next attempt after \d{1,2}:\d{2}"))
    expect(page.locator("#balance")).to_have_text("90")
    expect(page.locator("#history tbody tr").filter(has_text="Auto top-up:")).to_have_count(0)
    failed = page.locator('#notifications .notification[data-type="auto-top-up-failed"]')
    expect(failed).to_have_count(1)
    expect(failed).to_contain_text("Auto top-up failed:")
    page.click("#refresh-button")  # the emulator used the outcome up: the card decides again
    expect(declined).to_have_attribute("aria-pressed", "false")
    expect(page.locator("#stripe-tools-result")).to_be_empty()  # "will be declined" is no longer true
    screenshot(page, "43-auto-topup-declined")
