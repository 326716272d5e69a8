"""The `credits` CLI's commands on moto (CREDITS_TABLE_NAME set, as against AWS with explicit
variables): what an operator reads, and the exit codes scripts rely on."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from credits.cli import main
from credits.ledger import Ledger
from tests.support import environment


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_user_with_no_account_has_zero_and_exit_0(moto_dynamodb, capsys) -> None:
    code, out, _ = run(capsys, "user", "nobody")
    assert code == 0
    assert "nobody  (table credits; no account yet)" in out
    assert "balance      0 credits" in out and "no ledger entries" in out


def test_grant_shows_in_user_and_a_reference_grants_once(moto_dynamodb, capsys) -> None:
    code, out, _ = run(capsys, "grant", "alice", "1200", "--type", "gift", "--description", "welcome")
    assert (code, out.strip()) == (0, "granted 1,200 credits to alice (gift): balance 1,200 credits (table credits)")
    args = ("grant", "alice", "1", "--type", "adjustment", "--description", "goodwill", "--reference", "ticket-7")
    assert run(capsys, *args)[0] == 0
    code, out, _ = run(capsys, *args)
    assert (code, out.strip()) == (0, "already granted with reference ticket-7, nothing granted now (table credits)")
    assert Ledger(moto_dynamodb, "credits").balance("alice") == 1201

    code, out, _ = run(capsys, "user", "alice", "--entries", "1")
    assert code == 0
    assert "balance      1,201 credits" in out and "available    1,201 credits" in out
    assert "held         0 credits in 0 open holds" in out
    assert "monthly limit none" in out
    assert "last 1 entry, newest first:" in out and "adjustment" in out and "goodwill" in out
    entries = out.split("last 1 entry, newest first:")[1]
    assert "welcome" not in entries  # only the last entry
    # both grants went to one lot: paid, never expiring, named after the grant that opened it
    assert "  lots         1, in the order they are spent:" in out
    assert out.split("label\n")[1].split("\n")[0].split() == ["1", "paid", "50", "1,201", "0", "never", "welcome"]


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (("grant", "alice", "0", "--type", "gift", "--description", "x"), "0 is not in the range"),
        (("grant", "alice", "5", "--type", "purchase", "--description", "x"), "'purchase' is not one of"),
        (("grant", "alice", "5", "--type", "gift"), "Missing option '--description'"),
        (("grant", "a\x00b", "5", "--type", "gift", "--description", "x"), "error: userId:"),
        (("audit",), "name users, or pass --all"),
        (("nonsense",), "No such command 'nonsense'"),
    ],
)
def test_bad_input_is_one_clear_error_exit_2_and_writes_nothing(moto_dynamodb, capsys, args, complaint) -> None:
    code, _, err = run(capsys, *args)
    assert code == 2
    assert complaint in err and "Traceback" not in err
    assert moto_dynamodb.scan(TableName="credits")["Items"] == []


def test_audit_of_an_unknown_user_is_an_error(moto_dynamodb, capsys) -> None:
    Ledger(moto_dynamodb, "credits").grant("known", 5, type="gift", description="x")
    code, out, _ = run(capsys, "audit", "known", "knwon")
    assert code == 1
    assert "known: balance 5 credits, 1 entry: ok" in out
    assert "knwon: no such user (no account in table credits)" in out


def test_audit_all_checks_every_account_and_sums_up(moto_dynamodb, capsys) -> None:
    ledger = Ledger(moto_dynamodb, "credits")
    for user in ("u1", "u2", "u3"):
        ledger.grant(user, 10, type="gift", description="x")
        ledger.charge(user, 3, description="use")
    code, out, err = run(capsys, "audit", "--all")
    assert (code, out.strip()) == (0, "3 accounts audited: 3 ok, 0 with problems")
    assert "auditing 3 accounts" in err  # the progress bar

    moto_dynamodb.delete_item(TableName="credits", Key={"pk": {"S": "USER#u2"}, "sk": {"S": "TX#000000000001"}})
    code, out, _ = run(capsys, "audit", "--all")
    assert code == 1
    assert out.startswith("u2: PROBLEMS\n  - ")
    assert out.strip().endswith("3 accounts audited: 2 ok, 1 with problems")


def test_with_nothing_to_act_on_it_says_how_to_point_it(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with environment(CREDITS_TABLE_NAME=None, DEV_DATA_DIR=str(tmp_path / "none")):
        code, _, err = run(capsys, "user", "alice")
    assert code == 2
    assert err.strip() == (
        "error: no stack to act on: start `make dev` (the CLI finds it), "
        "or pass --stack NAME, or set CREDITS_TABLE_NAME"
    )


def test_a_stopped_make_dev_is_named_as_such(tmp_path, capsys, monkeypatch) -> None:
    data = tmp_path / ".local-data"
    data.mkdir()
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    finished = int(ended.stdout)  # a pid that no longer runs
    (data / "stack.json").write_text(json.dumps({"pid": finished, "api": "x", "dynamodbEndpoint": "x", "region": "x"}))
    monkeypatch.chdir(tmp_path)
    with environment(CREDITS_TABLE_NAME=None, DEV_DATA_DIR=None):
        code, _, err = run(capsys, "audit", "--all")
    assert code == 2
    assert "make dev is not running" in err and str(data / "stack.json") in err


# ---- credits adjust: an operator's correction, a debit never below zero unless forced ------------


def test_grant_still_refuses_a_debit(moto_dynamodb, capsys) -> None:
    code, _, err = run(capsys, "grant", "alice", "-5", "--type", "adjustment", "--description", "x")
    assert code == 2 and "Traceback" not in err


def test_adjust_takes_credits_away_but_never_below_zero(moto_dynamodb, capsys) -> None:
    ledger = Ledger(moto_dynamodb, "credits")
    ledger.grant("alice", 10, type="gift", description="welcome")
    code, out, _ = run(capsys, "adjust", "alice", "-4", "--description", "duplicate gift", "--reference", "t-1")
    assert (code, out.strip()) == (0, "took 4 credits from alice (adjustment): balance 6 credits (table credits)")
    code, out, _ = run(capsys, "adjust", "alice", "-4", "--description", "duplicate gift", "--reference", "t-1")
    assert (code, out.strip()) == (0, "already adjusted with reference t-1, nothing changed now (table credits)")

    code, out, err = run(capsys, "adjust", "alice", "-7", "--description", "too much")
    assert (code, out) == (1, "")
    assert err == (
        "refused: taking 7 credits from alice would go below zero (balance 6 credits); nothing changed. "
        "To allow it: --force-negative --reason TEXT\n"
    )
    assert ledger.balance("alice") == 6

    ledger.reserve("alice", 5, description="running")  # open holds count: 1 available
    code, _, err = run(capsys, "adjust", "alice", "-2", "--description", "x")
    assert code == 1 and "(balance 6 credits, 5 credits held)" in err

    code, out, _ = run(capsys, "adjust", "alice", "3", "--description", "goodwill")
    assert (code, out.strip()) == (0, "added 3 credits to alice (adjustment): balance 9 credits (table credits)")
    assert [(t.type, t.amount) for t in ledger.history("alice")] == [
        ("gift", 10),
        ("adjustment", -4),
        ("adjustment", 3),
    ]
    assert ledger.audit("alice").ok


def test_adjust_forced_below_zero_keeps_the_reason(moto_dynamodb, capsys) -> None:
    ledger = Ledger(moto_dynamodb, "credits")
    ledger.grant("bob", 2, type="gift", description="welcome")
    args = ("adjust", "bob", "-5", "--description", "promo reversed", "--force-negative", "--reason", "ticket 9")
    code, out, _ = run(capsys, *args)
    assert (code, out.strip()) == (0, "took 5 credits from bob (adjustment): balance -3 credits (table credits)")
    last = ledger.history("bob")[-1]
    assert (last.amount, last.description, last.reason) == (-5, "promo reversed", "ticket 9")
    assert ledger.audit("bob").ok
    code, out, _ = run(capsys, "user", "bob", "--entries", "1")
    assert code == 0 and "promo reversed  [forced: ticket 9]" in out


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (("adjust", "bob", "0", "--description", "x"), "AMOUNT must not be 0"),
        (
            ("adjust", "bob", "-5", "--description", "x", "--force-negative"),
            "--force-negative and --reason go together",
        ),
        (("adjust", "bob", "-5", "--description", "x", "--reason", "why"), "--force-negative and --reason go together"),
        (("adjust", "bob", "5", "--description", "x", "--force-negative", "--reason", "y"), "is for a debit"),
        (("adjust", "bob", "-5", "--description", "x", "--force-negative", "--reason", " "), "--reason must say why"),
        (("adjust", "bob", "-5"), "Missing option '--description'"),
        (("adjust", "bob", "-1000000001", "--description", "x"), "not in the range"),
        (("adjust", "b\x00b", "-5", "--description", "x"), "error: userId:"),
        (("adjust", "bob", "-5", "--description", "x", "--refrence", "r"), "unexpected extra argument"),
    ],
)
def test_adjust_bad_input_exits_2_and_writes_nothing(moto_dynamodb, capsys, args, complaint) -> None:
    code, _, err = run(capsys, *args)
    assert code == 2
    assert complaint in err and "Traceback" not in err
    assert moto_dynamodb.scan(TableName="credits")["Items"] == []


# ---- credits users / credits export ------------------------------------------------------------


def test_users_lists_every_account_with_its_balance_a_page_at_a_time(moto_dynamodb, capsys, monkeypatch) -> None:
    ledger = Ledger(moto_dynamodb, "credits")
    for n in range(7):
        ledger.grant(f"u{n}", 10 + n, type="gift", description="x")  # each also has a TX and no REF
    ledger.reserve("u3", 4, description="running")
    ledger.update_settings("settings-only", low_balance_threshold=5)  # an account item, no ledger yet

    seen: list[str] = []
    cursor: list[str] = []
    pages = 0
    while True:
        code, out, _ = run(capsys, "users", "--limit", "3", *cursor)
        assert code == 0
        *lines, last = out.splitlines()
        assert len(lines) <= 3
        seen += lines
        pages += 1
        if last.startswith("no more users"):
            assert last == "no more users (table credits)"
            break
        assert last.startswith("next cursor: ")
        cursor = ["--cursor", last.removeprefix("next cursor: ")]
    assert pages == 3
    assert sorted(seen) == sorted(
        [f"u{n}  balance {10 + n} credits, available {10 + n} credits" for n in range(7) if n != 3]
        + ["u3  balance 13 credits, available 9 credits", "settings-only  balance 0 credits, available 0 credits"]
    )


def test_users_refuses_a_cursor_it_did_not_print(moto_dynamodb, capsys) -> None:
    code, _, err = run(capsys, "users", "--cursor", "bm9wZQ")
    assert (code, err) == (2, "error: --cursor is not valid: pass the one the last page printed\n")


def test_export_columns_are_the_http_history_fields() -> None:
    from credits import api
    from credits.cli import EXPORT_COLUMNS
    from credits.ledger import Transaction

    tx = Transaction("id", 1, 5, 5, "gift", "d", None, None, None, "2026-01-01T00:00:00.000Z")
    assert tuple(api.transaction_body(tx)) == EXPORT_COLUMNS


def test_export_writes_the_whole_ledger_as_csv_and_json(moto_dynamodb, capsys, monkeypatch) -> None:
    import csv
    import io

    import credits.cli.listing
    from credits import api

    monkeypatch.setattr(credits.cli.listing, "EXPORT_PAGE", 2)  # every page: 7 entries are 4 pages

    ledger = Ledger(moto_dynamodb, "credits")
    ledger.grant(
        "zoe",
        500,
        type="purchase",
        description='Starter, "big"',
        reference_id="pi_1",
        monetary_amount=500,
        currency="usd",
    )
    for n in range(6):
        ledger.charge("zoe", 1, description=f"use {n}")
    page, cursor = ledger.transactions("zoe", limit=100)
    every = [api.transaction_body(t) for t in page]
    assert (len(every), cursor) == (7, None)

    code, out, _ = run(capsys, "export", "zoe", "--format", "json")
    assert code == 0
    assert json.loads(out) == every  # newest first, as the HTTP history pages it

    code, out, _ = run(capsys, "export", "zoe", "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 7
    assert list(rows[0]) == [
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
    assert rows[0]["amount"] == "-1" and rows[0]["referenceId"] == "" and rows[0]["balanceAfter"] == "494"
    assert rows[-1] == {k: "" if v is None else str(v) for k, v in every[-1].items()}
    assert rows[-1]["description"] == 'Starter, "big"' and rows[-1]["monetaryAmount"] == "500"


def test_export_of_an_empty_ledger_and_of_no_user(moto_dynamodb, capsys) -> None:
    Ledger(moto_dynamodb, "credits").update_settings("quiet", low_balance_threshold=1)
    assert run(capsys, "export", "quiet", "--format", "json")[:2] == (0, "[]\n")
    code, out, _ = run(capsys, "export", "quiet")
    assert (code, out.splitlines()) == (
        0,
        ["id,amount,balanceAfter,type,description,referenceId,monetaryAmount,currency,createdAt"],
    )
    code, out, err = run(capsys, "export", "ghost", "--format", "csv")
    assert (code, out, err) == (1, "", "ghost: no such user (no account in table credits)\n")


def test_export_csv_never_hands_a_spreadsheet_a_formula(moto_dynamodb, capsys) -> None:
    """A user chooses their own descriptions and references; an operator opens the export."""
    import csv
    import io

    ledger = Ledger(moto_dynamodb, "credits")
    ledger.grant("eve", 10, type="gift", description="seed")
    ledger.charge("eve", 1, description='=HYPERLINK("http://evil.example","x")', reference_id="@SUM(A1)")
    code, out, _ = run(capsys, "export", "eve", "--format", "csv")
    assert code == 0
    rows = list(csv.reader(io.StringIO(out)))
    usage = next(r for r in rows if "usage" in r)
    assert '\'=HYPERLINK("http://evil.example","x")' in usage
    assert "'@SUM(A1)" in usage
    assert "-1" in usage  # numbers stay numbers
    assert all(not cell.startswith(("=", "@", "+")) for row in rows for cell in row)


# ---- credit lots: a grant's terms, and the lots `credits user` shows --------------------------------


def test_grant_with_terms_and_user_shows_the_lots_in_the_order_they_are_spent(moto_dynamodb, capsys) -> None:
    soon = (datetime.now(UTC) + timedelta(days=10)).replace(second=0, microsecond=0)
    iso = soon.strftime("%Y-%m-%dT%H:%M:%SZ")
    shown = soon.strftime("%Y-%m-%d %H:%M UTC")
    code, out, err = run(capsys, "grant", "alice", "100", "--type", "gift", "--description", "Welcome")
    assert code == 0, err
    promo = ("--category", "promotional", "--expires-at", iso)
    code, out, err = run(capsys, "grant", "alice", "40", "--type", "gift", "--description", "Spring promotion", *promo)
    assert code == 0, err
    assert out.strip() == (
        f"granted 40 credits to alice (gift, promotional, expires {shown}): balance 140 credits (table credits)"
    )
    late = ("--priority", "60", "--expires-in-days", "30")
    code, out, err = run(capsys, "grant", "alice", "25", "--type", "adjustment", "--description", "Goodwill", *late)
    assert code == 0, err
    assert "(adjustment, priority 60, expires in 30 days): balance 165 credits" in out
    ledger = Ledger(moto_dynamodb, "credits")
    ledger.reserve("alice", 45, description="report")  # 40 promotional, then 5 paid

    code, out, _ = run(capsys, "user", "alice")
    assert code == 0
    lines = out.splitlines()
    start = lines.index("  lots         3, in the order they are spent:")
    header, *rows = lines[start + 1 : start + 5]
    assert header.split() == ["lot", "category", "priority", "remaining", "held", "expires", "label"]
    assert [row.split()[1:6] for row in rows] == [
        ["promotional", "10", "0", "40", *shown.split()[:1]],
        ["paid", "50", "95", "5", "never"],
        ["paid", "60", "25", "0", *rows[2].split()[5:6]],
    ]
    assert rows[0].endswith(f"{shown}  Spring promotion")
    assert rows[1].endswith("never                 Welcome")
    assert rows[2].endswith("  Goodwill") and "UTC" in rows[2]


def test_a_user_without_credits_has_no_lots(moto_dynamodb, capsys) -> None:
    assert "  lots         none" in run(capsys, "user", "nobody")[1]


@pytest.mark.parametrize(
    ("terms", "complaint"),
    [
        (("--category", "bonus"), "'bonus' is not one of 'paid', 'promotional'"),
        (("--priority", "101"), "101 is not in the range 0<=x<=100"),
        (("--expires-at", "2020-01-01T00:00:00Z"), "error: expiresAt must be in the future."),
        (("--expires-at", "tomorrow"), "error: expiresAt: Value error, must be an ISO 8601 date and time"),
        (("--expires-at", "2099-01-01T00:00:00"), "must say its time zone"),
        (("--expires-in-days", "0"), "0 is not in the range 1<=x<=3650"),
        (("--expires-at", "2099-01-01T00:00:00Z", "--expires-in-days", "3"), "not both"),
    ],
)
def test_grant_refuses_bad_terms_exit_2_and_writes_nothing(moto_dynamodb, capsys, terms, complaint) -> None:
    code, _, err = run(capsys, "grant", "alice", "5", "--type", "gift", "--description", "x", *terms)
    assert code == 2
    assert complaint in err and "Traceback" not in err
    assert moto_dynamodb.scan(TableName="credits")["Items"] == []
