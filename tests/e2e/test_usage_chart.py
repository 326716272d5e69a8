"""The usage chart and the history as CSV on the page in Chromium against `make dev`: what the user
spends through the page's buttons is drawn, stacked by action, once `functions/insights` has counted
it from the stream (the page asks again until it has); "Download CSV" saves the whole history."""

from __future__ import annotations

import csv
import json
import urllib.request
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Page, expect

from tests.e2e.conftest import DEADLINE_MS, DevStack, new_page, new_phone, run_action, screenshot
from tests.e2e.test_lots_page import grant
from tests.e2e.test_page import expect_history_types, sign_in

CSV_HEADER = "id,amount,balanceAfter,type,description,referenceId,monetaryAmount,currency,createdAt"
# Chart.js's chart on the page's canvas: its days (the API's YYYY-MM-DD), and each dataset's label and values.
CHART_DATA = """() => {
  const chart = Chart.getChart(document.querySelector("#usage-chart"));
  return chart ? { type: chart.config.type, labels: chart.data.labels,
    stacked: [chart.options.scales.x.stacked, chart.options.scales.y.stacked],
    datasets: chart.data.datasets.map((d) => ({ label: d.label, data: d.data })) } : null;
}"""
# True once the chart's bars for the given day add up to the given total.
CHART_DAY_TOTAL = """([day, total]) => {
  const chart = window.Chart && Chart.getChart(document.querySelector("#usage-chart"));
  const i = chart ? chart.data.labels.indexOf(day) : -1;
  return i >= 0 && chart.data.datasets.reduce((sum, d) => sum + d.data[i], 0) === total;
}"""

# How many lines an element's text takes.
LINES = """(selector) => {
  const range = document.createRange();
  range.selectNodeContents(document.querySelector(selector));
  return new Set([...range.getClientRects()].map((r) => Math.round(r.top))).size;
}"""


def prices(stack: DevStack) -> dict[str, int]:
    """The server's price list (GET /credit-prices): action id to credits."""
    with urllib.request.urlopen(f"{stack.url}/credit-prices", timeout=30) as response:
        return {p["action"]: p["credits"] for p in json.loads(response.read())["prices"]}


def label(page: Page, action: str) -> str:
    """The action's name as the page shows it on its button (config.js's actionLabels may rename it)."""
    return page.locator(f'button.action[data-action="{action}"] .action-label').inner_text()


def month_line(spent: dict[str, int]) -> str:
    """What the page says under the chart, most spent first (en-GB numbers)."""
    parts = ", ".join(f"{name} {n:,}" for name, n in sorted(spent.items(), key=lambda kv: (-kv[1], kv[0])))
    total = sum(spent.values())
    return f"This month: {total:,} {'credit' if total == 1 else 'credits'}: {parts}"


def chart_data(page: Page) -> dict[str, Any]:
    data: dict[str, Any] | None = page.evaluate(CHART_DATA)
    assert data is not None, "no Chart.js chart on #usage-chart"
    return data


def test_spending_is_drawn_stacked_by_action_and_the_history_downloads_as_csv(
    browser: Browser, dev_stack: DevStack
) -> None:
    page = new_page(browser, viewport={"width": 1280, "height": 900}, locale="en-GB", timezone_id="UTC")
    try:
        user = sign_in(page, dev_stack)
        expect(page.locator("#usage-month")).to_have_text(
            "Nothing spent this month yet: your paid actions show up here."
        )
        grant(dev_stack, user, 100, "Welcome")
        page.click("#refresh-button")
        expect(page.locator("#balance")).to_have_text("100")

        # Two of the dearest action and one of the next: two actions, neither price named here.
        cost = prices(dev_stack)
        dearest, second = sorted(cost, key=lambda a: (-cost[a], a))[:2]
        for action in (dearest, second, dearest):
            assert run_action(page, action).status == 200
        spent = {dearest: 2 * cost[dearest], second: cost[second]}
        expect(page.locator("#balance")).to_have_text(str(100 - sum(spent.values())))
        expect_history_types(page, ["Usage", "Usage", "Usage", "Gift"])

        # The chart follows once the stream has counted the charges: wait on its data, then read it all.
        today = datetime.now(UTC).date().isoformat()
        page.wait_for_function(CHART_DAY_TOTAL, arg=[today, sum(spent.values())], timeout=DEADLINE_MS)
        chart = chart_data(page)
        assert chart["type"] == "bar" and chart["stacked"] == [True, True]
        assert len(chart["labels"]) == 30 and chart["labels"][-1] == today  # the last 30 days, zeros included
        names = {action: label(page, action) for action in spent}
        drawn = {d["label"]: d["data"][-1] for d in chart["datasets"]}
        assert drawn == {names[action]: n for action, n in spent.items()}  # one dataset per action spent on
        assert all(sum(d["data"][:-1]) == 0 for d in chart["datasets"])  # nothing on the other days
        expect(page.locator("#usage-month")).to_have_text(month_line({names[a]: n for a, n in spent.items()}))
        expect(page.locator("#usage-empty")).to_be_hidden()
        screenshot(page, "24-usage-chart")

        # The whole history as CSV, fetched with the token and saved under the server's file name.
        with page.expect_download() as download:
            page.click("#history-csv")
        assert download.value.suggested_filename == f"credits-history-{user}.csv"
        with Path(download.value.path()).open(newline="", encoding="utf-8") as file:
            header, *rows = list(csv.reader(file))
        assert ",".join(header) == CSV_HEADER
        entries = [dict(zip(header, row, strict=True)) for row in rows]
        usage = Counter((e["description"], int(e["amount"])) for e in entries if e["type"] == "usage")
        assert usage == Counter({(dearest, -cost[dearest]): 2, (second, -cost[second]): 1})
        assert [e["type"] for e in entries] == ["usage", "usage", "usage", "gift"]  # newest first
        assert int(entries[0]["balanceAfter"]) == 100 - sum(spent.values())

        # The chart follows the viewport: narrowed to a phone's width, the canvas shrinks with it.
        page.set_viewport_size({"width": 390, "height": 844})
        page.wait_for_function("document.querySelector('#usage-chart').getBoundingClientRect().right <= innerWidth")
    finally:
        page.context.close()


def test_the_chart_and_the_download_button_fit_a_phone(browser: Browser, dev_stack: DevStack) -> None:
    phone = new_phone(browser, locale="en-GB", timezone_id="UTC")
    try:
        user = sign_in(phone, dev_stack)
        grant(dev_stack, user, 50, "Welcome")
        phone.click("#refresh-button")
        expect(phone.locator("#balance")).to_have_text("50")
        cost = prices(dev_stack)
        for action in cost:  # every action once: the longest line under the chart
            assert run_action(phone, action).status == 200
        names = {action: label(phone, action) for action in cost}
        expect(phone.locator("#usage-month")).to_have_text(month_line({names[a]: n for a, n in cost.items()}))

        canvas = phone.locator("#usage-chart")
        expect(canvas).to_be_visible()
        box = canvas.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390
        assert 150 <= box["height"] <= 400  # a chart one can read, not a sliver nor a page of it
        line = phone.locator("#usage-month").bounding_box()
        assert line is not None and line["x"] + line["width"] <= 390
        assert phone.evaluate(LINES, "#usage-month") >= 2  # too long for one line: it wraps inside the card
        button = phone.locator("#history-csv")
        button.scroll_into_view_if_needed()
        expect(button).to_be_visible()
        expect(button).to_be_in_viewport()
        overflow = phone.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        screenshot(phone, "25-phone-usage-chart")
    finally:
        phone.context.close()
    assert overflow <= 0
