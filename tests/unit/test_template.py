"""template.yaml against the code: the IAM a deployed function gets covers the calls its code makes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from credits import keys as keys_
from credits.config import MAX_EXPIRY_WARNING_DAYS
from credits.ledger import ENTRY_TYPES, EXPIRY_WARNING_DAYS
from local.streams import keep
from local.template import ROOT, load, stream_source, table_definitions
from tests.support import load_function

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
    for name in ("UseCreditsFunction", "WebhookFunction", "PremiumExampleFunction", "ExpireFunction"):
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
    assert keep(patterns, record(keys_.expiring_sk("12")))  # a lot about to expire: its note, once
    for sk in ("ACCOUNT", "HOLD#h1", "REF#doc-1", "IDEM#k", "SYSREF#purchase:pi_1"):
        assert not keep(patterns, record(sk)), sk
    assert not keep(patterns, record("TX#000000000001", "MODIFY"))
    assert not keep(patterns, record("TX#000000000001", "REMOVE"))
    assert not keep(patterns, record(keys_.expiring_sk("12"), "REMOVE"))  # its TTL


def test_the_lots_due_index_is_the_sparse_keys_only_index_the_ledger_writes() -> None:
    table = load()["Resources"]["CreditsTable"]["Properties"]
    types = {a["AttributeName"]: a["AttributeType"] for a in table["AttributeDefinitions"]}
    (index,) = [i for i in table["GlobalSecondaryIndexes"] if i["IndexName"] == keys_.LOTS_DUE_INDEX]
    schema = [(k["AttributeName"], k["KeyType"], types[k["AttributeName"]]) for k in index["KeySchema"]]
    assert schema == [("lots_shard", "HASH", "S"), ("lots_due", "RANGE", "N")]
    assert index["Projection"] == {"ProjectionType": "KEYS_ONLY"}  # the sweep reads the account's key only
    # the tests' tables and make dev's are made from these definitions (local.template.create_tables)
    (definition,) = [d for logical_id, d in table_definitions().items() if logical_id == "CreditsTable"]
    assert index in definition["GlobalSecondaryIndexes"]


def test_the_expire_function_runs_daily_and_may_make_exactly_the_calls_of_its_sweep(moto_dynamodb) -> None:
    props = load()["Resources"]["ExpireFunction"]["Properties"]
    assert props["CodeUri"] == "functions/expire/"
    (schedule,) = props["Events"].values()
    assert schedule["Type"] == "ScheduleV2" and schedule["Properties"]["ScheduleExpression"] == "rate(1 day)"
    assert schedule["Properties"]["RetryPolicy"]["MaximumRetryAttempts"] >= 1
    # it stops starting accounts this long before its timeout, so it ends with its counts and error
    assert props["Timeout"] > 2 * load_function("expire").STOP_BEFORE_SECONDS
    # the ledger's calls and the sweep's reads of the table through the ledger policy; the Query
    # of the index on the index alone
    assert {"Ref": "CreditsLedgerPolicy"} in props["Policies"]
    ledger_policy = load()["Resources"]["CreditsLedgerPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    on_table = {action for statement in ledger_policy for action in statement["Action"]}
    statements = [s for p in props["Policies"] if isinstance(p, dict) for s in p.get("Statement", [])]
    index_arn = {"Sub": f"${{CreditsTable.Arn}}/index/{keys_.LOTS_DUE_INDEX}"}
    on_index = {action for s in statements if s["Resource"] == index_arn for action in s["Action"]}
    assert on_index == {"dynamodb:Query"}
    assert dynamodb_actions([CREDITS / "expiry.py"]) == {"dynamodb:Query", "dynamodb:GetItem"} <= on_table | on_index
    alarms = [r for r in load()["Resources"].values() if r["Type"] == "AWS::CloudWatch::Alarm"]
    assert any(
        a["Properties"].get("Dimensions") == [{"Name": "FunctionName", "Value": {"Ref": "ExpireFunction"}}]
        for a in alarms
    )  # a failed sweep (its invocation fails) is alarmed


def test_the_expiry_warning_reaches_every_function_as_the_config_reads_it() -> None:
    template = load()
    parameter = template["Parameters"]["ExpiryWarningDays"]
    assert (parameter["Default"], parameter["MinValue"], parameter["MaxValue"]) == (
        EXPIRY_WARNING_DAYS,
        0,
        MAX_EXPIRY_WARNING_DAYS,
    )
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["EXPIRY_WARNING_DAYS"] == {"Ref": "ExpiryWarningDays"}  # every function that writes
