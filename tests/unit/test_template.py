"""template.yaml against the code: the IAM a deployed function gets covers the calls its code makes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from credits.ledger import ENTRY_TYPES
from local.streams import keep
from local.template import ROOT, load, stream_source

CREDITS = ROOT / "shared" / "credits"
# What each call of the store (credits.store, the one DynamoDB adapter) asks of DynamoDB.
STORE_ACTIONS = {
    "get": {"GetItem"},
    "get_many": {"GetItem", "BatchGetItem"},  # one item, or a batch of several
    "query": {"Query"},
    "query_index": {"Query"},
    "scan": {"Scan"},
}
WRITE_ACTIONS = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem"}  # alone or in a transaction


def dynamodb_actions(sources: list[Path]) -> set[str]:
    """The DynamoDB actions some modules' code asks for: its store reads, and the writes it builds."""
    text = "\n".join(source.read_text() for source in sources)
    actions: set[str] = set()
    for method in re.findall(r"\bstore\.(\w+)\(", text):
        actions |= STORE_ACTIONS.get(method, set())
    actions |= {WRITE_ACTIONS[kind] for kind in re.findall(r"\b(Put|Update|Delete)\(", text)}
    return {f"dynamodb:{a}" for a in actions}


def test_the_ledger_policy_allows_exactly_the_calls_the_ledger_and_the_payments_make() -> None:
    policy = load()["Resources"]["CreditsLedgerPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    allowed = {action for statement in policy for action in statement["Action"]}
    sources = [*CREDITS.glob("ledger/*.py"), *CREDITS.glob("payments*.py"), *CREDITS.glob("payments/*.py")]
    sources += [*CREDITS.glob("settlement*.py")]
    used = dynamodb_actions(sources)
    assert {"dynamodb:BatchGetItem", "dynamodb:Query", "dynamodb:DeleteItem", "dynamodb:GetItem"} <= used
    assert used == allowed


def test_every_function_that_writes_the_ledger_attaches_the_ledger_policy() -> None:
    resources = load()["Resources"]
    for name in ("UseCreditsFunction", "WebhookFunction", "PremiumExampleFunction"):
        assert {"Ref": "CreditsLedgerPolicy"} in resources[name]["Properties"]["Policies"], name
    exported = {output.get("Export", {}).get("Name", {}).get("Sub", "") for output in load()["Outputs"].values()}
    assert "${AWS::StackName}-CreditsLedgerPolicyArn" in exported
    assert "${AWS::StackName}-CreditsLayerArn" in exported


def test_the_dashboard_is_valid_json_and_shows_what_the_code_measures() -> None:
    body, variables = load()["Resources"]["CreditsDashboard"]["Properties"]["DashboardBody"]["Sub"]
    rendered = re.sub(r"\$\{[^}]+\}", "x", body)
    widgets = json.loads(rendered)["widgets"]
    shown = set()
    for widget in widgets:
        namespace = None
        for metric in widget["properties"]["metrics"]:
            namespace = namespace if metric[0] in (".", "...") else metric[0]  # "." repeats the row above
            if namespace == "Credits":
                shown.add(metric[1])
    emitted = set()
    for source in [*ROOT.glob("functions/*/app.py"), *CREDITS.glob("*.py")]:
        emitted |= set(re.findall(r'name="([A-Z][A-Za-z]+)"', source.read_text()))
        emitted |= set(re.findall(r'"[a-z_]+": "([A-Z][A-Za-z]+)"', source.read_text()))  # metric tables
        emitted |= set(re.findall(r': "([A-Z][A-Za-z]+)",\n', source.read_text()))
        emitted |= set(re.findall(r'_answer\(.*, "([A-Z][A-Za-z]+)"\)', source.read_text()))
        emitted |= set(re.findall(r'_metric\("([A-Z][A-Za-z]+)"', source.read_text()))
    assert shown <= emitted, shown - emitted
    assert {"CreditsCharged", "InsufficientCredits", "Unavailable", "CreditsPurchased", "EventsFailed"} <= shown
    assert set(variables) == {"DeadLetterQueue"}


def test_usage_events_are_switched_by_a_parameter_that_reaches_the_events_function() -> None:
    template = load()
    parameter = template["Parameters"]["PublishUsageEvents"]
    assert (parameter["Default"], sorted(parameter["AllowedValues"])) == ("true", ["false", "true"])
    variables = template["Resources"]["EventsFunction"]["Properties"]["Environment"]["Variables"]
    assert variables["PUBLISH_USAGE_EVENTS"] == {"Ref": "PublishUsageEvents"}
    # the function reads it (config.publish_usage_events), and only the events function needs it
    assert "PUBLISH_USAGE_EVENTS" not in template["Globals"]["Function"]["Environment"]["Variables"]


def test_the_stream_filter_delivers_every_ledger_entry_type_and_the_limit_notes_only() -> None:
    patterns = stream_source("events").patterns

    def record(sk: str, name: str = "INSERT", **image: dict[str, str]) -> dict[str, object]:
        keys = {"pk": {"S": "USER#u"}, "sk": {"S": sk}}
        return {"eventName": name, "dynamodb": {"Keys": keys, "NewImage": {**keys, **image}}}

    for kind in ENTRY_TYPES:  # usage included: it is what crosses the low-balance threshold
        assert keep(patterns, record("TX#000000000001", type={"S": kind})), kind
    assert keep(patterns, record("LIMIT#2026-12"))
    for sk in ("ACCOUNT", "HOLD#h1", "REF#doc-1", "IDEM#k", "SYSREF#purchase:pi_1"):
        assert not keep(patterns, record(sk)), sk
    assert not keep(patterns, record("TX#000000000001", "MODIFY"))
    assert not keep(patterns, record("TX#000000000001", "REMOVE"))
