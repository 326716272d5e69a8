"""A person using the page in Chromium against `make dev`: buy, spend, double-click, run out, async, cancel."""

from __future__ import annotations

import json
import re
import urllib.request
import uuid

from playwright.sync_api import Page, expect

from tests.e2e.conftest import DevStack, new_phone, on_site, run_action, screenshot


def sign_in(page: Page, stack: DevStack, name: str | None = None) -> str:
    user = name or f"user-{uuid.uuid4().hex[:8]}"
    page.goto(stack.url + "/")
    expect(page.locator("#signin-form")).to_contain_text(re.compile("local", re.I))
    page.fill("#user-name", user)
    page.click("#signin-button")
    expect(page.locator("#signed-in-as")).to_contain_text(user)
    return user


def go_to_checkout(page: Page, package: str = "starter") -> str:
    """Click Buy on a package; returns the session id of the hosted checkout page we land on."""
    page.locator(f'.package[data-package-id="{package}"] button.buy').click()
    page.wait_for_url(re.compile(r"/checkout/cs_"))
    return page.url.rstrip("/").split("/")[-1]


def spend_elsewhere(page: Page, stack: DevStack, action: str) -> None:
    """Spend the signed-in user's credits as another tab of theirs would, behind this page's back."""
    token = page.evaluate("localStorage.getItem('credits.token')")
    request = urllib.request.Request(
        f"{stack.url}/credits/use",
        data=json.dumps({"action": action}).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


def expect_history_types(page: Page, types: list[str]) -> None:
    """Wait until the history lists exactly entries of these types (as the page words them), newest first.
    One check of the whole list, retried: never a read of rows a request is about to replace."""
    expect(page.locator("#history tbody tr td.type")).to_have_text(types)


def test_buy_spend_double_click_and_run_out(page: Page, dev_stack: DevStack) -> None:
    sign_in(page, dev_stack)
    expect(page.locator("#balance")).to_have_text("0")
    expect(page.locator("#low-balance")).to_contain_text("You have no credits yet: buy credits to use paid actions.")
    expect(page.locator("#settings-form")).to_have_attribute("aria-busy", "false")  # loaded: no longer blank
    expect(page.locator("#low-balance-threshold")).to_have_value("10")
    expect(page.locator('.package[data-package-id="starter"] .package-price')).to_have_text("$5.00")
    expect(page.locator('.package[data-package-id="starter-jpy"] .package-price')).to_contain_text("800")
    expect(page.locator('.package[data-package-id="starter-jpy"] .package-price')).not_to_contain_text(".")
    screenshot(page, "01-new-user")

    go_to_checkout(page, "starter")
    expect(page.locator("body")).to_contain_text("$5.00")
    screenshot(page, "02-hosted-checkout")
    page.click("#pay")
    page.wait_for_url(on_site(dev_stack))
    expect(page.locator("#balance")).to_have_text("100")
    expect(page.locator("#checkout-status")).to_contain_text(re.compile("confirmed", re.I))
    expect_history_types(page, ["Purchase"])
    screenshot(page, "03-after-purchase")

    assert run_action(page, "analyze").status == 200
    expect(page.locator("#balance")).to_have_text("95")
    expect(page.locator("#history tbody tr").first).to_have_attribute("data-type", "usage")
    expect(page.locator("#history tbody tr").first).to_contain_text("95")
    expect_history_types(page, ["Usage", "Purchase"])

    assert run_action(page, "generate", double=True).status == 200  # one request, one charge
    expect(page.locator("#balance")).to_have_text("85")
    page.click("#refresh-button")
    expect(page.locator("#balance")).to_have_text("85")
    expect_history_types(page, ["Usage", "Usage", "Purchase"])
    screenshot(page, "04-after-spending")

    for _ in range(8):
        assert run_action(page, "generate").status == 200
    expect(page.locator("#balance")).to_have_text("5")
    generate = page.locator('button.action[data-action="generate"]')
    expect(generate).to_be_disabled()  # the page knows it cannot be afforded, and says why
    expect(generate).to_have_accessible_description("Needs 10 credits, you have 5")
    expect(page.locator("#low-balance")).to_be_visible()

    # Spent elsewhere (another tab, another device): the page still shows 5, the API refuses.
    spend_elsewhere(page, dev_stack, "analyze")
    assert run_action(page, "analyze").status == 402
    expect(page.locator("#message")).to_have_text("Not enough credits: this needs 5 credits, you have 0 available.")
    expect(page.locator("#message")).to_have_attribute("data-kind", "error")
    expect(page.locator("#balance")).to_have_text("0")
    expect(page.locator('button.action[data-action="analyze"]')).to_be_disabled()
    screenshot(page, "05-insufficient-credits")
    page.click("#refresh-button")
    newest = page.locator("#history tbody tr").first
    expect(newest.locator("td.desc")).to_have_text("Analyze")  # what was spent elsewhere, as the page words it
    expect(newest.locator("td.after")).to_have_text("0")
    expect_history_types(page, ["Usage"] * 10)  # the newest ten entries: one page


def test_a_failed_action_holds_its_price_while_it_runs_and_charges_nothing(page: Page, dev_stack: DevStack) -> None:
    sign_in(page, dev_stack)
    go_to_checkout(page, "starter")
    page.click("#pay")
    page.wait_for_url(on_site(dev_stack))
    expect(page.locator("#balance")).to_have_text("100")
    expect_history_types(page, ["Purchase"])

    page.check("#fail-next")
    analyze = page.locator('button.action[data-action="analyze"]')
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/examples/analyze")) as answer:
        analyze.click()
        expect(page.locator("#held")).to_contain_text("5 credits held")  # while the action runs
        expect(page.locator("#held")).to_contain_text("95 available")
        screenshot(page, "09-action-running")
    assert answer.value.status == 502
    expect(page.locator("#message")).to_contain_text("failed, so nothing was charged")
    expect(page.locator("#message")).to_have_attribute("data-kind", "error")
    expect(page.locator("#held")).to_be_hidden()
    expect(page.locator("#balance")).to_have_text("100")
    expect_history_types(page, ["Purchase"])
    screenshot(page, "10-action-failed")

    assert run_action(page, "analyze").status == 200  # the box clears itself: this one succeeds
    expect(page.locator("#message")).to_contain_text("5 credits spent")
    expect(page.locator("#balance")).to_have_text("95")
    expect_history_types(page, ["Usage", "Purchase"])


def test_an_async_payment_credits_when_it_clears(page: Page, dev_stack: DevStack) -> None:
    sign_in(page, dev_stack)
    session_id = go_to_checkout(page, "starter")
    page.click("#pay-later")
    page.wait_for_url(on_site(dev_stack))
    expect(page.locator("#checkout-status")).to_contain_text(re.compile("processing", re.I))
    expect(page.locator("#balance")).to_have_text("0")
    screenshot(page, "06-async-processing")

    dev_stack.emulator(session_id, "async_succeed")
    page.click("#refresh-button")
    expect(page.locator("#balance")).to_have_text("100")
    expect_history_types(page, ["Purchase"])  # the history arrives on its own request


def test_a_cancelled_checkout_adds_nothing(page: Page, dev_stack: DevStack) -> None:
    sign_in(page, dev_stack)
    go_to_checkout(page, "pro")
    page.click("#cancel")
    page.wait_for_url(on_site(dev_stack))
    expect(page.locator("#checkout-status")).to_contain_text(re.compile("cancelled", re.I))
    expect(page.locator("#balance")).to_have_text("0")
    expect(page.locator("#history-empty")).to_be_visible()  # the history was read: nothing in it
    expect_history_types(page, [])
    screenshot(page, "07-cancelled")


def test_the_page_fits_a_phone(browser, dev_stack: DevStack) -> None:
    phone = new_phone(browser)
    try:
        sign_in(phone, dev_stack)
        expect(phone.locator('.package[data-package-id="starter"]')).to_be_visible()
        expect(phone.locator("#balance")).to_have_text("0")  # the page is filled in: nothing more to lay out
        overflow = phone.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        screenshot(phone, "08-phone")
    finally:
        phone.context.close()
    assert overflow <= 0


def test_a_reload_keeps_the_user_and_the_balance(page: Page, dev_stack: DevStack) -> None:
    user = sign_in(page, dev_stack)
    go_to_checkout(page, "starter")
    page.click("#pay")
    page.wait_for_url(on_site(dev_stack))
    expect(page.locator("#balance")).to_have_text("100")
    page.reload()
    expect(page.locator("#signed-in-as")).to_contain_text(user)
    expect(page.locator("#balance")).to_have_text("100")


def test_a_spend_limit_refusal_disables_what_no_longer_fits_and_says_why(page: Page, dev_stack: DevStack) -> None:
    sign_in(page, dev_stack)
    go_to_checkout(page, "starter")
    page.click("#pay")
    page.wait_for_url(on_site(dev_stack))
    expect(page.locator("#balance")).to_have_text("100")
    page.fill("#monthly-spend-limit", "0")  # refused by the API: said in plain words, not pydantic's
    page.click("#settings-save")
    expect(page.locator("#monthly-spend-limit-error")).to_have_text(
        "Enter a whole number of credits from 1 to 1,000,000,000, or leave it empty for no limit."
    )
    page.fill("#monthly-spend-limit", "20")
    page.click("#settings-save")
    expect(page.locator("#settings-status")).to_have_text("Settings saved.")
    for action in ["generate", "analyze", "search", "search", "search"]:  # 18 of 20, behind the page's back
        spend_elsewhere(page, dev_stack, action)

    analyze = page.locator('button.action[data-action="analyze"]')
    expect(analyze).to_be_enabled()  # the page has not seen the limit refuse anything yet
    assert run_action(page, "analyze").status == 402
    expect(page.locator("#message")).to_contain_text("you have spent 18 of your 20 credits this month; Analyze needs 5")
    why = "Monthly spending limit: 18 of 20 used; Analyze needs 5"
    expect(analyze).to_be_disabled()  # not offered again for the same 402
    expect(analyze).to_have_attribute("title", why)
    expect(analyze).to_have_accessible_description(why)
    expect(analyze).to_have_attribute("data-blocked", "limit")
    expect(page.locator('button.action[data-action="generate"]')).to_be_disabled()
    expect(page.locator('button.action[data-action="search"]')).to_be_enabled()  # 19 of 20 still fits
    expect(page.locator("#balance")).to_have_text("82")
    screenshot(page, "13-spend-limit-disables")

    page.fill("#monthly-spend-limit", "")  # no limit: every action is offered again
    page.click("#settings-save")
    expect(page.locator("#settings-status")).to_have_text("Settings saved.")
    expect(analyze).to_be_enabled()
    expect(page.locator(f"#{analyze.get_attribute('aria-describedby')}")).to_be_hidden()
    assert run_action(page, "analyze").status == 200
    expect(page.locator("#balance")).to_have_text("77")


def test_a_dispute_hides_the_payment_confirmation_and_a_won_one_reads_as_credits_back(
    page: Page, dev_stack: DevStack
) -> None:
    from tests.e2e.test_stripe_tools import buy, payment

    sign_in(page, dev_stack)
    pro = buy(page, dev_stack, "pro", "1,200")
    expect(page.locator("#checkout-status")).to_have_text("Payment confirmed: +1,200 credits")
    payment(page, pro).get_by_role("button", name="Open a dispute").click()
    expect(page.locator("#balance")).to_have_text("0")
    expect(page.locator("#checkout-box")).to_be_hidden()  # no longer true: the credits were taken back
    expect(page.locator("#history tbody tr").first.locator(".badge")).not_to_have_class(re.compile("restored"))
    payment(page, pro).get_by_role("button", name="Close dispute: won").click()
    expect(page.locator("#balance")).to_have_text("1,200")
    expect(page.locator("#history tbody tr").first.locator(".badge")).to_have_class(re.compile(r"\bbadge-restored\b"))
