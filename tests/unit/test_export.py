"""GET /credits/transactions as CSV (`Accept: text/csv`): the balance function on moto, and the bound
of credits.export that keeps every answer inside a Lambda response."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

from credits import api, export, keys
from credits.errors import ExportTooLarge
from credits.ledger import Ledger
from credits.store import to_item
from local.template import ROOT
from tests.simulation.store import MemoryStore
from tests.support import FakeContext, http_event, invoke

# The documented columns (README, docs/openapi.yaml): a JSON history row's fields, in its order.
DOCUMENTED = [
    "id",
    "amount",
    "balanceAfter",
    "type",
    "description",
    "referenceId",
    "monetaryAmount",
    "currency",
    "createdAt",
]
LAMBDA_RESPONSE_LIMIT = 6 * 1024 * 1024


def post_history(moto_dynamodb, user: str, count: int) -> None:
    """`count` gifts of 1 credit ("entry 1", "entry 2", ...) posted through the ledger, quickly.

    moto copies the whole table for every transaction (to roll it back), so 1,000 changes straight
    on moto take minutes: the ledger decides and writes them on the simulator's in-memory table
    (the store's semantics), and its items are then copied to moto, 25 to a batch."""
    memory = MemoryStore(time.time)
    ledger = Ledger(None, store=memory)
    for n in range(1, count + 1):
        ledger.grant(user, 1, type="gift", description=f"entry {n}")
    items = list(memory.items_with_prefix(keys.user_pk(user), ""))
    for start in range(0, len(items), 25):
        batch = [{"PutRequest": {"Item": to_item(item)}} for item in items[start : start + 25]]
        assert not moto_dynamodb.batch_write_item(RequestItems={"credits": batch})["UnprocessedItems"]
    assert Ledger(moto_dynamodb, "credits").audit(user).ok


def get(
    bal: ModuleType, accept: str | None = "text/csv", *, query: dict[str, str] | None = None, sub: str = "user-1"
) -> dict[str, Any]:
    """GET /credits/transactions with this Accept header (None: none): the Lambda response as is."""
    headers = {"Accept": accept} if accept is not None else None
    event = http_event("GET", "/credits/transactions", headers=headers, query=query, sub=sub)
    response: dict[str, Any] = bal.lambda_handler(event, FakeContext())
    return response


def csv_rows(response: dict[str, Any]) -> tuple[list[str], list[dict[str, str]]]:
    """The header row and the rows of a CSV answer, as a spreadsheet's CSV reader reads them."""
    assert response["statusCode"] == 200, response["body"]
    assert not response.get("isBase64Encoded")
    reader = csv.DictReader(io.StringIO(response["body"], newline=""))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


def json_history(bal: ModuleType, user: str = "user-1") -> list[dict[str, Any]]:
    """Every row of the JSON history, page after page, as a client pages it."""
    rows: list[dict[str, Any]] = []
    query = {"limit": "100"}
    while True:
        status, page, _ = invoke(bal, http_event("GET", "/credits/transactions", query=query, sub=user))
        assert status == 200
        rows += page["transactions"]
        if page["nextCursor"] is None:
            return rows
        query = {"limit": "100", "cursor": page["nextCursor"]}


def test_a_thousand_entries_export_whole_in_the_json_history_s_order(moto_dynamodb, bal: ModuleType) -> None:
    post_history(moto_dynamodb, "user-1", 1000)
    response = get(bal)
    assert response["headers"]["Content-Type"] == "text/csv; charset=utf-8"
    assert response["headers"]["Content-Disposition"] == 'attachment; filename="credits-history-user-1.csv"'
    assert response["headers"]["Cache-Control"] == "no-store"
    header, rows = csv_rows(response)
    assert header == DOCUMENTED
    assert response["body"].count("\r\n") == 1001  # the header and one line a row: nothing else
    assert len(rows) == 1000
    # newest first, as the JSON history: the n-th row is entry 1001 - n, every one of them
    for n, row in enumerate(rows):
        seq = 1000 - n
        assert (row["description"], row["balanceAfter"], row["amount"]) == (f"entry {seq}", str(seq), "1"), n
        assert (row["type"], row["referenceId"], row["monetaryAmount"], row["currency"]) == ("gift", "", "", "")
    history = json_history(bal)
    assert [list(t) for t in history[:1]] == [DOCUMENTED]  # the JSON row's fields, in the same order
    assert [row["id"] for row in rows] == [t["id"] for t in history]
    assert [row["createdAt"] for row in rows] == [t["createdAt"] for t in history]


def test_text_that_would_break_a_csv_or_run_as_a_formula_comes_back_as_written(moto_dynamodb, bal: ModuleType) -> None:
    ledger = Ledger(moto_dynamodb, "credits")
    plain = 'Dinner, "the good one"\nsecond line'
    formula = '=HYPERLINK("http://evil.example","click"), "x"\ny'
    ledger.grant("user-1", 100, type="gift", description=plain, reference_id="a,b")
    ledger.charge("user-1", 5, description=formula, reference_id="@SUM(A1)")
    ledger.charge("user-1", 1, description="+1 for me", reference_id="-cmd")
    ledger.charge("user-1", 1, description="\tindented\r")
    ledger.charge("user-1", 1, description="a = b - c")
    header, rows = csv_rows(get(bal))
    assert header == DOCUMENTED
    assert [row["description"] for row in rows] == ["a = b - c", "'\tindented\r", "'+1 for me", "'" + formula, plain]
    assert [row["referenceId"] for row in rows] == ["", "", "'-cmd", "'@SUM(A1)", "a,b"]
    # numbers are numbers: a debit's negative amount is never prefixed
    assert [row["amount"] for row in rows] == ["-1", "-1", "-1", "-5", "100"]
    assert [row["balanceAfter"] for row in rows] == ["92", "93", "94", "95", "100"]


@pytest.mark.parametrize(
    ("accept", "as_csv"),
    [
        ("text/csv", True),
        ("text/csv; charset=utf-8", True),
        ("Text/CSV", True),
        ("text/csv;q=0.9, application/json;q=0.8", True),
        ("application/json;q=0.5, text/csv", True),
        ("application/*;q=0.1, text/csv", True),
        ("text/csv, */*;q=0.1", True),
        ("text/*", True),
        ("application/json, text/csv;q=0.5", False),
        ("text/csv;q=0.5, application/json;q=0.5", False),  # a tie: JSON, the default
        ("text/csv;q=0", False),
        ("text/csv;q=abc", False),  # not a qvalue: that range is left out
        ("text/csv;q=2", False),
        ('text/csv;note="a,b";q=0.2, application/json;q=0.3', False),  # a comma inside quotes
        ("text/csv;q=0.3, text/csv;charset=utf-8;q=0", False),  # the more specific range decides
        ("*/*", False),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", False),  # a browser's
        ("application/json", False),
        ("", False),
        ("csv", False),
        (None, False),
    ],
)
def test_the_accept_header_chooses_csv_or_json(accept: str | None, as_csv: bool) -> None:
    assert export.wants_csv(accept) is as_csv


def test_the_function_answers_in_the_format_the_accept_header_chose(moto_dynamodb, bal: ModuleType) -> None:
    Ledger(moto_dynamodb, "credits").grant("user-1", 7, type="gift", description="welcome")
    for csv_accept in ("text/csv", "application/json;q=0.5, text/csv;charset=utf-8"):
        response = get(bal, csv_accept)
        assert (response["statusCode"], response["headers"]["Content-Type"]) == (200, "text/csv; charset=utf-8")
        assert [row["amount"] for row in csv_rows(response)[1]] == ["7"]
    for accept in (None, "*/*", "application/json, text/csv;q=0.5"):
        response = get(bal, accept)
        assert (response["statusCode"], response["headers"]["Content-Type"]) == (200, "application/json")
        assert [t["amount"] for t in json.loads(response["body"])["transactions"]] == [7]


def test_json_stays_the_default_one_page_at_a_time(moto_dynamodb, bal: ModuleType) -> None:
    post_history(moto_dynamodb, "user-1", 30)
    for accept in (None, "*/*"):
        response = get(bal, accept)
        assert response["statusCode"] == 200
        assert response["headers"]["Content-Type"] == "application/json"
        assert "Content-Disposition" not in response["headers"]
        page = json.loads(response["body"])
        assert [t["description"] for t in page["transactions"]] == [f"entry {n}" for n in range(30, 10, -1)]
        assert page["nextCursor"] is not None


def test_csv_reads_every_page_whatever_the_limit_from_the_cursor_on(moto_dynamodb, bal: ModuleType) -> None:
    post_history(moto_dynamodb, "user-1", 130)
    for limit in ("1", "0", "ten"):  # ignored by the export, even when it is not a valid page size
        _, rows = csv_rows(get(bal, query={"limit": limit}))
        assert [row["description"] for row in rows] == [f"entry {n}" for n in range(130, 0, -1)]
    _, page, _ = invoke(bal, http_event("GET", "/credits/transactions", query={"limit": "5"}))
    _, rows = csv_rows(get(bal, query={"cursor": page["nextCursor"]}))
    assert [row["description"] for row in rows] == [f"entry {n}" for n in range(125, 0, -1)]


@pytest.mark.parametrize("cursor", ["@@", "bm9wZQ", "eyJzZXEiOiAwfQ"])
def test_a_malformed_cursor_is_still_a_400_in_json(moto_dynamodb, bal: ModuleType, cursor: str) -> None:
    post_history(moto_dynamodb, "user-1", 3)
    response = get(bal, query={"cursor": cursor, "limit": "ten"})
    assert (response["statusCode"], response["headers"]["Content-Type"]) == (400, "application/json")
    error = json.loads(response["body"])["error"]
    assert (error["code"], error["errors"]) == ("validation_error", [{"field": "cursor"}])


def test_no_history_is_the_header_row_alone(moto_dynamodb, bal: ModuleType) -> None:
    response = get(bal, sub="newcomer")
    assert response["body"] == ",".join(DOCUMENTED) + "\r\n"
    assert csv_rows(response) == (DOCUMENTED, [])


def test_without_a_user_it_is_401_in_json(bal: ModuleType) -> None:
    event = http_event("GET", "/credits/transactions", headers={"Accept": "text/csv"}, sub=None)
    status, body, headers = invoke(bal, event)
    assert (status, body["error"]["code"], headers["Content-Type"]) == (401, "unauthorized", "application/json")


def test_the_file_name_is_safe_whatever_the_user_id(moto_dynamodb, bal: ModuleType) -> None:
    ledger = Ledger(moto_dynamodb, "credits")
    for user in ['ann "the boss"', "../../etc/passwd", "a;b\\c", "ÉLODIE", "x" * 200, "用户", "-", "a.b@example.com"]:
        ledger.grant(user, 1, type="gift", description="welcome")
        response = get(bal, sub=user)
        prefix, name = response["headers"]["Content-Disposition"].split('filename="')
        assert prefix == "attachment; " and name.endswith('.csv"'), user
        stem = name.removesuffix('.csv"').removeprefix("credits-history-")
        assert stem and len(stem) <= 64, user
        assert all(c.isascii() and (c.isalnum() or c in "_-") for c in stem), user
        assert [row["amount"] for row in csv_rows(response)[1]] == ["1"], user


def test_two_users_never_download_the_same_file_name() -> None:
    users = ["a.b", "a/b", "ab", "a b", "ÉLODIE", "ÈLODIE", "x" * 100, "x" * 101]
    names = {export.filename(user) for user in users}
    assert len(names) == len(users)


def test_a_history_over_the_bound_is_413_and_says_how_to_page_the_json_history(
    moto_dynamodb, bal: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    post_history(moto_dynamodb, "user-1", 250)
    whole = get(bal)["body"]
    size = len(json.dumps(whole)) - 2  # as it travels in the Lambda response, escapes included

    monkeypatch.setattr(export, "MAX_EXPORT_BYTES", size)
    assert len(csv_rows(get(bal))[1]) == 250  # exactly at the bound: answered

    read: list[str | None] = []
    page = api.transactions_page

    def counted(ledger: Ledger, user: str, limit: str | None, cursor: str | None) -> dict[str, Any]:
        read.append(cursor)
        return page(ledger, user, limit, cursor)

    monkeypatch.setattr(api, "transactions_page", counted)
    monkeypatch.setattr(export, "MAX_EXPORT_BYTES", 5000)
    response = get(bal)
    assert (response["statusCode"], response["headers"]["Content-Type"]) == (413, "application/json")
    error = json.loads(response["body"])["error"]
    assert error["code"] == "export_too_large"
    assert error["limitBytes"] == 5000
    assert "cursor" in error["message"] and "nextCursor" in error["message"] and "JSON" in error["message"]
    assert len(read) == 1  # it stopped reading as soon as the file would pass the bound (of 3 pages)

    monkeypatch.setattr(export, "MAX_EXPORT_BYTES", size - 1)
    assert get(bal)["statusCode"] == 413  # a byte over: refused
    monkeypatch.undo()
    status, page_one, _ = invoke(bal, http_event("GET", "/credits/transactions", query={"limit": "100"}))
    assert (status, len(page_one["transactions"])) == (200, 100)  # the JSON history still reads it


def _pages(description: str, rows: int, read: list[int]) -> Iterator[list[dict[str, Any]]]:
    """History pages of 100 rows with this description, counting the pages read."""
    for start in range(0, rows, 100):
        read.append(start)
        yield [
            {
                "id": "3f2b8c1e-7a4d-4e9b-8c2f-1d5e6a7b8c9d",
                "amount": -1_000_000_000,
                "balanceAfter": 1_000_000_000,
                "type": "usage",
                "description": description,
                "referenceId": "r" * 255,
                "monetaryAmount": None,
                "currency": None,
                "createdAt": "2027-01-03T00:00:00.000Z",
            }
            for _ in range(start, min(start + 100, rows))
        ]


@pytest.mark.parametrize(
    "description",
    ["x" * 500, '"\n' * 250, "é" * 500, "😀" * 500, "\x01" * 500],
    ids=["ascii", "quotes-and-newlines", "accents", "emoji", "control"],
)
def test_every_export_answered_fits_in_a_lambda_response(description: str) -> None:
    """Whatever the text (max-length descriptions that escaping makes up to 12 bytes a character),
    an answer is within Lambda's 6 MB however the runtime writes it, or it is a 413 that stopped
    reading early."""
    read: list[int] = []
    try:
        body = export.history_csv(_pages(description, 200_000, read))
    except ExportTooLarge:
        assert len(read) < 2000  # not the whole history: it stopped at the bound
        body = export.history_csv(_pages(description, 100 * (len(read) - 1), []))  # the pages that fitted
    response = {"statusCode": 200, "headers": {**export.csv_headers("user-1"), "Content-Type": export.CONTENT_TYPE}}
    escaped = json.dumps({**response, "body": body}).encode()  # Python 3.11's runtime: \uXXXX escapes
    unescaped = json.dumps({**response, "body": body}, ensure_ascii=False).encode()  # 3.12's: UTF-8
    assert export.MAX_EXPORT_BYTES * 0.8 < len(escaped) <= LAMBDA_RESPONSE_LIMIT - 512 * 1024
    assert len(unescaped) <= len(escaped)


def test_the_csv_and_the_413_answer_as_docs_openapi_yaml_says(
    moto_dynamodb, bal: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The contract suite's Schemathesis always sends `Accept: */*` (JSON): these answers are held
    to the document here."""
    spec = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text())
    operation = spec["paths"]["/credits/transactions"]["get"]
    assert ",".join(DOCUMENTED) in operation["description"]  # the columns as documented

    Ledger(moto_dynamodb, "credits").grant("ann.b@example.com", 10, type="gift", description="welcome")
    answer = get(bal, sub="ann.b@example.com")
    documented = operation["responses"]["200"]
    assert answer["headers"]["Content-Type"].split(";")[0] in documented["content"]
    assert re.fullmatch(
        documented["headers"]["Content-Disposition"]["schema"]["pattern"], answer["headers"]["Content-Disposition"]
    )
    assert answer["headers"]["Cache-Control"] == "no-store"

    monkeypatch.setattr(export, "MAX_EXPORT_BYTES", 10)
    refused = get(bal, sub="ann.b@example.com")
    documented = operation["responses"]["413"]
    assert refused["statusCode"] == 413 and refused["headers"]["Content-Type"] in documented["content"]
    Draft202012Validator(documented["content"]["application/json"]["schema"]).validate(json.loads(refused["body"]))
