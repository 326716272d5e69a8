"""Credit lots on the page in Chromium against `make dev`: promotional credits granted by an
operator (the `credits` CLI) shown apart from paid ones with their expiry; the balance drops when
they expire, and the user's next action writes the `Expired` entry the history shows."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from playwright.sync_api import Browser, expect

from tests.e2e.conftest import DevStack, new_page, new_phone, run_action, screenshot
from tests.e2e.test_cli import credits
from tests.e2e.test_page import expect_history_types, sign_in

AHEAD = timedelta(seconds=20)  # long enough for the grant and one look at the page before it expires
EXPIRY_DEADLINE_MS = 120_000  # the page reads the balance again once the expiry passes: a generous bound


def grant(stack: DevStack, user: str, amount: int, description: str, *terms: str) -> None:
    done = credits(stack, "grant", user, str(amount), "--type", "gift", "--description", description, *terms)
    assert done.returncode == 0, done.stdout + done.stderr


def day(at: datetime) -> str:
    """A date as the page words it in en-GB ("3 Jan 2027"; September may read "Sept")."""
    return f"{at.day} {at:%b}\\w* {at.year}"


def test_promotional_credits_show_with_their_expiry_then_expire(browser: Browser, dev_stack: DevStack) -> None:
    page = new_page(browser, viewport={"width": 1280, "height": 900}, locale="en-GB", timezone_id="UTC")
    try:
        user = sign_in(page, dev_stack)
        grant(dev_stack, user, 100, "Welcome")
        granted_on = datetime.now(UTC)
        expires = (granted_on + AHEAD).replace(microsecond=0)
        promo = ("--category", "promotional", "--expires-at", expires.strftime("%Y-%m-%dT%H:%M:%SZ"))
        grant(dev_stack, user, 30, "Launch week bonus", *promo)

        page.click("#refresh-button")
        expect(page.locator("#balance")).to_have_text("130")
        expect(page.locator("#promotional")).to_have_text("(30 promotional)")
        expect(page.locator("#expiring")).to_have_text(
            re.compile(rf"^30 credits expire on {day(expires)} at {expires:%H:%M}$")
        )
        expect_history_types(page, ["Gift", "Gift"])
        screenshot(page, "14-expiring-credits")

        # The expiry passes: the page reads the balance again by itself; nothing was written yet.
        expect(page.locator("#balance")).to_have_text("100", timeout=EXPIRY_DEADLINE_MS)
        expect(page.locator("#promotional")).to_be_hidden()
        expect(page.locator("#expiring")).to_be_hidden()
        expect_history_types(page, ["Gift", "Gift"])

        # The user's next action writes the expiration first, then its own entry.
        assert run_action(page, "analyze").status == 200
        expect(page.locator("#balance")).to_have_text("95")
        expect_history_types(page, ["Usage", "Expiration", "Gift", "Gift"])
        expired = page.locator('#history tbody tr[data-type="expiration"]')
        expect(expired.locator("td.desc")).to_have_text(
            re.compile(rf"^Expired: 30 credits of Launch week bonus \(granted {day(granted_on)}\)$")
        )
        expect(expired.locator("td.amount")).to_have_text("-30")
        expect(expired.locator("td.after")).to_have_text("100")
        notes = page.locator("#notifications .notification-text")
        expect(notes).to_contain_text(["30 credits expired; your balance is 100."])
        screenshot(page, "15-credits-expired")
    finally:
        page.context.close()


def test_promotional_credits_and_their_expiry_fit_a_phone(browser: Browser, dev_stack: DevStack) -> None:
    """Long numbers, the promotional part and the expiry on a phone; the lot was announced (the
    next write after it entered the warning window, 7 days before its expiry, wrote the note)."""
    phone = new_phone(browser, locale="en-GB", timezone_id="UTC")
    try:
        user = sign_in(phone, dev_stack)
        expires = datetime.now(UTC) + timedelta(days=3)
        grant(dev_stack, user, 40_000, "Spring promotion", "--category", "promotional", "--expires-in-days", "3")
        grant(dev_stack, user, 1_250_000, "Enterprise top-up")
        phone.click("#refresh-button")
        expect(phone.locator("#balance")).to_have_text("1,290,000")
        expect(phone.locator("#promotional")).to_have_text("(40,000 promotional)")
        expect(phone.locator("#expiring")).to_have_text(re.compile(rf"^40,000 credits expire on {day(expires)}$"))
        notes = phone.locator("#notifications .notification-text")
        expect(notes).to_contain_text(
            [re.compile(rf"^40,000 credits expire on {day(expires)} \(Spring promotion\)\.$")]
        )
        overflow = phone.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        screenshot(phone, "16-phone-expiring-credits")
    finally:
        phone.context.close()
    assert overflow <= 0
