"""`make dev` serves the API's contract at /openapi.yaml and a reference to read at /docs."""

from __future__ import annotations

import urllib.request

from playwright.sync_api import Page, expect

from local.template import ROOT, routes
from tests.e2e.conftest import DevStack, screenshot


def test_the_contract_is_served_as_the_repository_has_it(dev_stack: DevStack) -> None:
    with urllib.request.urlopen(f"{dev_stack.url}/openapi.yaml", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("application/yaml")
        assert response.read() == (ROOT / "docs" / "openapi.yaml").read_bytes()


def test_the_reference_shows_every_route_of_the_template(page: Page, dev_stack: DevStack) -> None:
    page.goto(f"{dev_stack.url}/docs")
    expect(page.locator(".information-container .title")).to_contain_text("Credits")
    operations = page.locator(".opblock")
    expect(operations.first).to_be_visible()
    expect(operations).to_have_count(len(routes()))  # all of them rendered, before they are read
    shown = {
        (
            block.locator(".opblock-summary-method").inner_text().strip().upper(),
            block.locator(".opblock-summary-path").get_attribute("data-path"),
        )
        for block in operations.all()
    }
    assert shown == {(r.method, r.path) for r in routes()}
    screenshot(page, "api-docs")

    # One operation opens to say what it takes and answers, as an integrator reads it.
    use = page.locator('.opblock-post:has(.opblock-summary-path[data-path="/credits/use"])')
    use.locator(".opblock-summary").click()
    expect(use.locator(".responses-table")).to_contain_text("402")
    expect(use.locator(".parameters-container")).to_contain_text("Idempotency-Key")
    expect(use.locator(".opblock-section-request-body")).to_contain_text("action")
