"""One price list: ActionCosts, read by every function (ACTION_COSTS) and served by GET /credit-prices;
the page reads it from there and keeps no copy."""

from __future__ import annotations

import json
import re

from credits.api import prices_body
from credits.config import action_costs
from local.template import ROOT, load, routes

WEB = ROOT / "web"


def test_the_price_list_is_served_publicly_by_the_balance_function() -> None:
    (route,) = [r for r in routes() if r.path == "/credit-prices"]
    assert (route.method, route.function, route.auth) == ("GET", "balance", "NONE")
    template = load()
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["ACTION_COSTS"] == {"Ref": "ActionCosts"}  # the balance function reads the same list
    default = action_costs(template["Parameters"]["ActionCosts"]["Default"])
    assert prices_body(default)["prices"][0] == {"action": "search", "credits": 1}


def test_the_page_reads_the_prices_from_the_api_and_keeps_no_copy() -> None:
    config = (WEB / "config.js").read_text()
    code = "\n".join(line for line in config.splitlines() if not line.lstrip().startswith("//"))
    assert not re.search(r"\b(actions|cost)\s*:", code), "web/config.js holds action prices again"
    default = json.loads(load()["Parameters"]["ActionCosts"]["Default"])
    page = (WEB / "app.js").read_text()
    assert 'api("GET", "/credit-prices")' in page
    for action in default:  # no action of the price list is named in the page's code either
        assert not re.search(rf"""["']{action}["']\s*[,:}}]""", code + page), action
