"""Events on the page: the stream of `make dev` runs the events function, whose events reach the
Notifications card; the Settings card sets a monthly limit that then stops an action."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from tests.e2e.conftest import DevStack, on_site, run_action, screenshot
from tests.e2e.test_page import go_to_checkout, sign_in


def test_spending_below_the_threshold_notifies_and_a_monthly_limit_stops_actions(
    page: Page, dev_stack: DevStack
) -> None:
    sign_in(page, dev_stack)
    expect(page.locator("#notifications-empty")).to_be_visible()
    go_to_checkout(page, "starter")
    page.click("#pay")
    page.wait_for_url(on_site(dev_stack))
    expect(page.locator("#balance")).to_have_text("100")
    notes = page.locator("#notifications .notification")
    expect(notes.first).to_have_text(re.compile(r"^100 credits added: Starter\."))

    for action in ["generate"] * 9 + ["search"]:
        assert run_action(page, action).status == 200
    expect(page.locator("#balance")).to_have_text("9")

    low = page.locator('#notifications .notification[data-type="balance-low"]')
    expect(low).to_have_count(1)
    expect(low).to_contain_text("Your balance is low: 9 credits left (under 10).")
    expect(low).to_have_class(re.compile(r"\bis-new\b"))  # arrived while the page was open
    expect(notes.first).to_have_attribute("data-type", "balance-low")  # newest first
    expect(page.locator("#notifications-live")).to_contain_text("Your balance is low")
    screenshot(page, "11-notifications")

    expect(page.locator("#low-balance-threshold")).to_have_value("10")
    expect(page.locator("#spent-this-month")).to_have_text("Spent this month: 91 credits (no limit).")
    page.fill("#monthly-spend-limit", "0")
    page.click("#settings-save")
    expect(page.locator("#settings-status")).to_contain_text("Not saved")
    expect(page.locator("#monthly-spend-limit-error")).to_be_visible()
    expect(page.locator("#monthly-spend-limit")).to_have_attribute("aria-invalid", "true")

    page.fill("#monthly-spend-limit", "95")
    page.click("#settings-save")
    expect(page.locator("#settings-status")).to_have_text("Settings saved.")
    expect(page.locator("#monthly-spend-limit-error")).to_be_hidden()
    expect(page.locator("#spent-this-month")).to_have_text("Spent this month: 91 of 95 credits.")
    page.reload()
    expect(page.locator("#monthly-spend-limit")).to_have_value("95")

    assert run_action(page, "analyze").status == 402  # 5 more would make 96
    expect(page.locator("#message")).to_contain_text("Monthly spending limit reached: you have spent 91 of your 95")
    expect(page.locator("#message")).to_have_attribute("data-kind", "error")
    expect(page.locator("#balance")).to_have_text("9")
    limit = page.locator('#notifications .notification[data-type="spend-limit-reached"]')
    expect(limit).to_have_text(re.compile(r"^Monthly spending limit of 95 credits reached\."))
    screenshot(page, "12-spend-limit")
