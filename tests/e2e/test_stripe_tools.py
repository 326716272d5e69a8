"""The page's Stripe test tools (LOCAL ONLY: `make dev` with the Stripe emulator), and the page as a person
reads it: a pending bank payment cleared and one failed, a partial refund, disputes lost and won, each
with the balance and the history in words; packages cheapest first; an action the user cannot afford;
the hosted checkout page's credits and its way back to the site."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from playwright.sync_api import Locator, Page, expect

from tests.e2e.conftest import DevStack, on_site, run_action, screenshot
from tests.e2e.test_page import go_to_checkout, sign_in

PAYMENT_FAILED = "The payment failed: nothing was charged and no credits were added."


def payment(page: Page, session_id: str) -> Locator:
    return page.locator(f'#payments .payment[data-session-id="{session_id}"]')


def rows(page: Page) -> Locator:
    return page.locator("#history tbody tr")


COLUMNS = ("td.type", "td.amount", "td.after", "td.desc")  # type, amount, balance after, description


def expect_row(row: Locator, expected: tuple[str, str, str, str]) -> None:
    """Wait until a history row reads (type, amount, balance after, description), as the page shows them."""
    for column, text in zip(COLUMNS, expected, strict=True):
        expect(row.locator(column)).to_have_text(text)


def expect_rows(page: Page, expected: list[tuple[str, str, str, str]]) -> None:
    """Wait until the history reads exactly these rows, newest first: each column is one check of the
    whole list, retried, never a read of rows a request is about to replace."""
    for i, column in enumerate(COLUMNS):
        expect(rows(page).locator(column)).to_have_text([row[i] for row in expected])


def buy(page: Page, stack: DevStack, package: str, expected_balance: str) -> str:
    """Buy a package by card on the hosted page; returns its session id once its credits show and the
    page is done confirming it (the history, read after the balance, lists the purchase newest)."""
    session_id = go_to_checkout(page, package)
    page.click("#pay")
    page.wait_for_url(on_site(stack))
    expect(page.locator("#balance")).to_have_text(expected_balance)
    expect(page.locator("#checkout-status")).to_contain_text("Payment confirmed")
    expect(rows(page).first).to_have_attribute("data-type", "purchase")
    return session_id


def call(stack: DevStack, method: str, path: str, token: str | None, body: object = None) -> tuple[int, object]:
    """A request to the local gateway as another program (or another person) would make it."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(stack.url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read() or b"null")


def token_of(page: Page) -> str:
    return str(page.evaluate("localStorage.getItem('credits.token')"))


def test_a_pending_bank_payment_is_cleared_or_failed_from_the_page(page: Page, dev_stack: DevStack) -> None:
    sign_in(page, dev_stack)
    tools = page.locator("#stripe-tools")
    expect(tools).to_be_visible()
    expect(tools.locator(".tag")).to_have_text("local Stripe emulator only")
    expect(tools).to_contain_text("Local test tools")
    expect(page.locator("#payments-empty")).to_be_visible()

    cleared = go_to_checkout(page, "starter")
    page.click("#pay-later")
    page.wait_for_url(on_site(dev_stack))
    # The tools know at once that the payment is processing: no 30-second wait for credits.
    expect(page.locator("#checkout-status")).to_have_text(
        "Your payment is processing. Credits appear when it clears. The test payment tools below can clear or fail it."
    )
    expect(payment(page, cleared)).to_have_attribute("data-state", "processing")
    expect(payment(page, cleared).locator(".payment-title")).to_have_text("Starter · 100 credits · $5.00")
    expect(payment(page, cleared).locator(".payment-status")).to_contain_text("Processing: paid later by bank debit")
    expect(page.locator("#balance")).to_have_text("0")
    screenshot(page, "21-tools-pending-payment")

    payment(page, cleared).get_by_role("button", name="Payment clears").click()
    expect(page.locator("#stripe-tools-result")).to_have_text("Payment cleared for Starter: +100 credits.")
    expect(page.locator("#stripe-tools-result")).to_have_attribute("data-kind", "success")
    expect(page.locator("#balance")).to_have_text("100")
    expect(page.locator("#checkout-status")).to_have_text("Payment confirmed: +100 credits")
    expect_rows(page, [("Purchase", "+100", "100", "Starter: 100 credits for $5.00")])
    expect(payment(page, cleared)).to_have_attribute("data-state", "paid")
    expect(payment(page, cleared).locator(".payment-status")).to_contain_text("Paid by bank debit")
    added = page.locator("#notifications .notification").first
    expect(added).to_have_text(re.compile(r"^100 credits added: Starter\."))
    screenshot(page, "22-tools-payment-cleared")

    failed = go_to_checkout(page, "pro")
    page.click("#pay-later")
    page.wait_for_url(on_site(dev_stack))
    expect(page.locator("#checkout-status")).to_contain_text("Your payment is processing.")
    expect(payment(page, failed)).to_have_attribute("data-state", "processing")
    payment(page, failed).get_by_role("button", name="Payment fails").click()
    expect(page.locator("#stripe-tools-result")).to_have_text(
        "Payment failed for Pro: nothing was charged, no credits were added."
    )
    expect(page.locator("#checkout-status")).to_have_text(PAYMENT_FAILED)
    expect(page.locator("#checkout-box")).to_have_attribute("data-kind", "error")
    expect(payment(page, failed)).to_have_attribute("data-state", "failed")
    expect(payment(page, failed).locator(".payment-status")).to_contain_text("Payment failed")
    expect(payment(page, failed)).to_contain_text("Nothing left to try on this payment.")
    expect(payment(page, failed).get_by_role("button")).to_have_count(0)
    expect(page.locator("#balance")).to_have_text("100")
    expect(rows(page)).to_have_count(1)
    screenshot(page, "23-tools-payment-failed")

    # Back from the site lands on the hosted page, which says what happened and leads back again;
    # the site then says the same, at once.
    page.go_back()
    expect(page.locator("#state")).to_have_text("This checkout session's payment failed.")
    page.click("#back")
    page.wait_for_url(on_site(dev_stack))
    expect(page.locator("#checkout-status")).to_have_text(PAYMENT_FAILED)
    expect(page.locator("#balance")).to_have_text("100")


def test_a_partial_refund_and_disputes_lost_and_won(page: Page, dev_stack: DevStack) -> None:
    sign_in(page, dev_stack)
    starter = buy(page, dev_stack, "starter", "100")
    item = payment(page, starter)
    expect(item).to_have_attribute("data-state", "paid")
    expect(item.locator(".refund-amount")).to_have_value("5.00")  # what is left to refund

    item.locator(".refund-amount").fill("2.50")
    item.get_by_role("button", name="Refund").click()
    expect(page.locator("#stripe-tools-result")).to_have_text("Refunded $2.50 of Starter: 50 credits taken back.")
    expect(page.locator("#balance")).to_have_text("50")
    expect_rows(
        page,
        [
            ("Refund", "-50", "50", "Refund: $2.50 of Starter"),
            ("Purchase", "+100", "100", "Starter: 100 credits for $5.00"),
        ],
    )
    expect(item.locator(".payment-status")).to_contain_text("Paid by card · $2.50 refunded")
    expect(item.locator(".refund-amount")).to_have_value("2.50")
    expect(page.locator('#notifications .notification[data-type="credits-clawed-back"]').first).to_have_text(
        re.compile(r"^50 credits taken back after a refund; your balance is 50\.")
    )
    screenshot(page, "24-tools-partial-refund")

    item.locator(".refund-amount").fill("9.99")  # more than is left: the emulator refuses, nothing changes
    item.get_by_role("button", name="Refund").click()
    expect(page.locator("#stripe-tools-result")).to_contain_text(
        "Refund amount ($9.99) is greater than unrefunded amount on charge ($2.50)."
    )
    expect(page.locator("#stripe-tools-result")).to_have_attribute("data-kind", "error")
    expect(page.locator("#balance")).to_have_text("50")

    item.get_by_role("button", name="Open a dispute").click()
    expect(page.locator("#stripe-tools-result")).to_have_text(
        "Dispute opened on Starter: 50 credits held back while the bank decides."
    )
    expect(page.locator("#balance")).to_have_text("0")
    expect_row(rows(page).first, ("Dispute", "-50", "0", "Dispute opened: $5.00 of Starter"))
    expect(item.locator(".payment-status")).to_contain_text("disputed, waiting for the bank's decision")
    expect(item.get_by_role("button", name="Refund")).to_have_count(0)  # a disputed charge is not refunded
    expect(page.locator('button.action[data-action="search"]')).to_be_disabled()

    item.get_by_role("button", name="Close dispute: lost").click()
    expect(page.locator("#stripe-tools-result")).to_have_text(
        "Dispute lost: Starter, the credits held back stay taken."
    )
    expect(page.locator("#balance")).to_have_text("0")
    expect(rows(page)).to_have_count(3)  # a lost dispute keeps what its opening took
    expect(item.locator(".payment-status")).to_contain_text("dispute lost")
    expect(item).to_contain_text("Nothing left to try on this payment.")
    screenshot(page, "25-tools-dispute-lost")

    pro = buy(page, dev_stack, "pro", "1,200")
    payment(page, pro).get_by_role("button", name="Open a dispute").click()
    expect(page.locator("#stripe-tools-result")).to_have_text(
        "Dispute opened on Pro: 1,200 credits held back while the bank decides."
    )
    expect(page.locator("#balance")).to_have_text("0")
    payment(page, pro).get_by_role("button", name="Close dispute: won").click()
    expect(page.locator("#stripe-tools-result")).to_have_text("Dispute won: Pro, 1,200 credits restored.")
    expect(page.locator("#balance")).to_have_text("1,200")
    expect_rows(
        page,
        [
            ("Dispute", "+1,200", "1,200", "Dispute won: Pro, credits restored"),
            ("Dispute", "-1,200", "0", "Dispute opened: $50.00 of Pro"),
            ("Purchase", "+1,200", "1,200", "Pro: 1,200 credits for $50.00"),
            ("Dispute", "-50", "0", "Dispute opened: $5.00 of Starter"),
            ("Refund", "-50", "50", "Refund: $2.50 of Starter"),
            ("Purchase", "+100", "100", "Starter: 100 credits for $5.00"),
        ],
    )
    expect(payment(page, pro).get_by_role("button", name="Refund")).to_have_count(1)  # won: refundable again
    screenshot(page, "26-tools-dispute-won")


def test_the_tools_act_only_on_the_signed_in_users_own_payments(page: Page, dev_stack: DevStack) -> None:
    sign_in(page, dev_stack)
    theirs = buy(page, dev_stack, "starter", "100")
    owner = token_of(page)
    page.click("#signout-button")
    sign_in(page, dev_stack)
    expect(page.locator("#payments-empty")).to_be_visible()
    other = token_of(page)

    assert call(dev_stack, "GET", "/local/stripe/payments", None)[0] == 401
    status, body = call(dev_stack, "GET", "/local/stripe/payments", other)
    assert (status, body) == (200, {"payments": []})
    status, body = call(dev_stack, "POST", f"/local/stripe/payments/{theirs}/refund", other, {})
    assert status == 404 and isinstance(body, dict) and body["error"]["code"] == "not_found"
    status, body = call(dev_stack, "POST", f"/local/stripe/payments/{theirs}/expire", owner, {})
    assert status == 404  # only the tools' actions, not every control of the emulator
    status, body = call(dev_stack, "POST", f"/local/stripe/payments/{theirs}/refund", owner, {"amount": "all"})
    assert status == 400 and isinstance(body, dict) and body["error"]["code"] == "validation_error"
    status, body = call(dev_stack, "GET", "/local/stripe/payments", owner)
    assert status == 200 and isinstance(body, dict)
    assert [(p["id"], p["state"], p["refunded"], p["actions"]) for p in body["payments"]] == [
        (theirs, "paid", 0, ["refund", "dispute"])
    ]


def test_no_tools_without_the_stripe_emulator(page: Page, dev_stack: DevStack) -> None:
    """With real Stripe (the local config says so) or a gateway without the emulator's routes, the
    page shows no tools and never asks for them."""
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url) if "/local/stripe/" in request.url else None)
    page.route(
        "**/local/config.json",
        lambda route: route.fulfill(json={"apiBase": "", "auth": "local", "stripe": "real"}),
    )
    sign_in(page, dev_stack)
    expect(page.locator("#payments-mode")).to_have_text("Stripe test mode")
    expect(page.locator("#balance")).to_have_text("0")
    page.click("#refresh-button")
    expect(page.locator("#balance")).to_have_text("0")
    expect(page.locator("#stripe-tools")).to_be_hidden()
    assert asked == []

    page.unroute("**/local/config.json")
    page.route("**/local/stripe/payments", lambda route: route.fulfill(status=404, json={"message": "Not Found"}))
    with page.expect_response(lambda r: urlsplit(r.url).path == "/local/stripe/payments") as told:
        page.reload()
    assert told.value.status == 404  # it asked, and was told there are none...
    expect(page.locator("#payments-mode")).to_have_text("Test payments: no real money")
    page.click("#refresh-button")
    expect(page.locator("#balance")).to_have_text("0")
    expect(page.locator("#message")).to_be_empty()
    expect(page.locator("#stripe-tools")).to_be_hidden()  # ...and shows none
    assert asked


def test_history_and_numbers_read_as_a_person_reads_them(page: Page, dev_stack: DevStack) -> None:
    sign_in(page, dev_stack)
    names = page.locator(".package .package-name")
    expect(names).to_have_text(["Starter", "Pro", "Team", "Starter (JPY)"])  # cheapest first, per currency
    expect(page.locator('.package[data-package-id="pro"] .package-credits')).to_have_text("1,200 credits")
    expect(page.locator('button.action[data-action="search"] .action-cost')).to_have_text(" · 1 credit")

    buy(page, dev_stack, "pro", "1,200")
    for action in ("generate", "search"):
        assert run_action(page, action).status == 200
    expect(page.locator("#balance")).to_have_text("1,189")
    expect_rows(
        page,
        [
            ("Usage", "-1", "1,189", "Search"),
            ("Usage", "-10", "1,190", "Generate"),
            ("Purchase", "+1,200", "1,200", "Pro: 1,200 credits for $50.00"),
        ],
    )
    expect(page.locator('#notifications .notification[data-type="credits-purchased"]')).to_have_text(
        re.compile(r"^1,200 credits added: Pro\.")
    )
    expect(page.locator("#spent-this-month")).to_have_text("Spent this month: 11 credits (no limit).")
    page.fill("#low-balance-threshold", "1500")
    page.fill("#monthly-spend-limit", "2000")
    page.click("#settings-save")
    expect(page.locator("#settings-status")).to_have_text("Settings saved.")
    expect(page.locator("#spent-this-month")).to_have_text("Spent this month: 11 of 2,000 credits.")
    expect(page.locator("#low-balance")).to_have_text(
        "Your balance is low (under 1,500 credits): buy credits to keep using paid actions."
    )
    screenshot(page, "27-readable-history")


def test_an_action_the_user_cannot_afford_is_disabled_and_says_why(page: Page, dev_stack: DevStack) -> None:
    sign_in(page, dev_stack)
    expect(page.locator("#balance")).to_have_text("0")
    for action, why in [
        ("search", "Needs 1 credit, you have 0"),
        ("analyze", "Needs 5 credits, you have 0"),
        ("generate", "Needs 10 credits, you have 0"),
    ]:
        button = page.locator(f'button.action[data-action="{action}"]')
        expect(button).to_be_disabled()
        expect(button).to_have_attribute("title", why)
        expect(button).to_have_accessible_description(why)
        expect(page.locator(f"#{button.get_attribute('aria-describedby')}")).to_have_text(why)
    screenshot(page, "28-actions-unaffordable")

    starter = buy(page, dev_stack, "starter", "100")
    for action in ("search", "analyze", "generate"):
        button = page.locator(f'button.action[data-action="{action}"]')
        expect(button).to_be_enabled()
        expect(button).not_to_have_attribute("title", re.compile("."))
        expect(page.locator(f"#{button.get_attribute('aria-describedby')}")).to_be_hidden()

    payment(page, starter).locator(".refund-amount").fill("4.75")
    payment(page, starter).get_by_role("button", name="Refund").click()
    expect(page.locator("#balance")).to_have_text("5")
    expect(page.locator('button.action[data-action="generate"]')).to_be_disabled()
    expect(page.locator('button.action[data-action="generate"]')).to_have_accessible_description(
        "Needs 10 credits, you have 5"
    )
    expect(page.locator('button.action[data-action="analyze"]')).to_be_enabled()


def test_the_hosted_checkout_page_shows_the_credits_and_leads_back(page: Page, dev_stack: DevStack) -> None:
    sign_in(page, dev_stack)
    go_to_checkout(page, "pro")
    expect(page.locator("#product")).to_have_text("Pro")
    expect(page.locator("#credits")).to_have_text("1,200 credits")
    expect(page.locator("#amount")).to_have_text("$50.00")
    expect(page.locator("#back")).to_have_count(0)  # not paid yet: Pay, Pay later or Cancel
    screenshot(page, "29-checkout-credits")

    page.click("#pay")
    page.wait_for_url(on_site(dev_stack))
    expect(page.locator("#checkout-status")).to_have_text("Payment confirmed: +1,200 credits")

    page.go_back()  # to the hosted page: paid, and a way back to the site
    expect(page.locator("#state")).to_have_text("This checkout session is already paid.")
    expect(page.locator("#credits")).to_have_text("1,200 credits")
    back = page.locator("#back")
    expect(back).to_have_text("Back to the site")
    expect(back).to_have_attribute("href", re.compile("^" + re.escape(dev_stack.url + "/?checkout=success")))
    screenshot(page, "30-checkout-paid-back-link")
    back.click()
    page.wait_for_url(on_site(dev_stack))
    # The page remembers this checkout: it says so at once, and adds nothing.
    expect(page.locator("#checkout-status")).to_have_text("Payment confirmed: +1,200 credits")
    expect(page.locator("#balance")).to_have_text("1,200")
    expect(rows(page)).to_have_count(1)
