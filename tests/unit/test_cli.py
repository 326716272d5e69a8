"""The `credits` CLI's commands on moto (CREDITS_TABLE_NAME set, as against AWS with explicit
variables): what an operator reads, and the exit codes scripts rely on."""

from __future__ import annotations

import json
import subprocess
import sys

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
    assert "welcome" not in out  # only the last entry


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
    assert "known: balance 5 credits, 1 entries: ok" in out
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
