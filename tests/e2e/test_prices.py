"""The page's paid actions and their prices come from the API (GET /credit-prices), never from a copy."""

from __future__ import annotations

import json
import urllib.request

from playwright.sync_api import Page, Route, expect

from tests.e2e.conftest import DevStack
from tests.e2e.test_page import sign_in


def test_the_actions_are_the_servers_price_list(page: Page, dev_stack: DevStack) -> None:
    with urllib.request.urlopen(f"{dev_stack.url}/credit-prices", timeout=30) as response:
        served = json.load(response)["prices"]
    sign_in(page, dev_stack)
    buttons = page.locator("button.action")
    expect(buttons).to_have_count(len(served))
    for i, price in enumerate(served):  # in the served order: cheapest first
        expect(buttons.nth(i)).to_have_attribute("data-action", price["action"])
    expect(page.locator('button.action[data-action="search"] .action-label')).to_have_text("Search")


def test_another_price_list_changes_the_page_and_a_missing_one_says_so(page: Page, dev_stack: DevStack) -> None:
    prices = {"prices": [{"action": "search", "credits": 2}, {"action": "deep_scan", "credits": 7}]}

    def other(route: Route) -> None:
        route.fulfill(status=200, content_type="application/json", body=json.dumps(prices))

    page.route("**/credit-prices", other)
    sign_in(page, dev_stack)
    expect(page.locator("button.action")).to_have_count(2)
    expect(page.locator('button.action[data-action="search"] .action-cost')).to_have_text(" · 2 credits")
    expect(page.locator('button.action[data-action="deep_scan"] .action-label')).to_have_text("Deep scan")

    page.unroute("**/credit-prices")
    page.route("**/credit-prices", lambda route: route.fulfill(status=500, body='{"message":"Internal Server Error"}'))
    page.reload()
    expect(page.locator("#actions")).to_contain_text("Prices could not be loaded")
    expect(page.locator("button.action")).to_have_count(0)
