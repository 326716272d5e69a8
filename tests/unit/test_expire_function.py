"""functions/expire (the daily sweep of credit lots) on moto: every shard of the lots-due index is
queried page after page, every account due is swept until it owes nothing, the others are not
touched; one failing account (or shard) never stops the rest, and fails the invocation at the end."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from types import ModuleType
from typing import Any

import pytest
from botocore.exceptions import ClientError

from credits import keys
from credits.errors import TemporarilyUnavailable
from credits.ledger import Ledger, LotTerms
from credits.ledger.codec import due_shard
from local import dev
from local.handlers import LocalContext
from local.schedules import Schedule
from local.template import function_timeout
from tests.support import FakeContext, environment, load_function

HOUR_MS = 3_600_000
EVENT = {"source": "aws.scheduler"}


class SmallPages:
    """The moto client, every Query of the lots-due index cut to pages of 2 items (so a shard of a
    few accounts takes several pages), counted by shard; `broken` shards' Queries fail."""

    def __init__(self, client: Any, broken: frozenset[str] = frozenset()) -> None:
        self.client = client
        self.pages: Counter[str] = Counter()
        self.broken = broken

    def query(self, **request: Any) -> Any:
        if request.get("IndexName") == keys.LOTS_DUE_INDEX:
            (shard,) = [v["S"] for v in request["ExpressionAttributeValues"].values()]
            self.pages[shard] += 1
            if shard in self.broken:
                raise ClientError({"Error": {"Code": "ValidationException", "Message": "broken"}}, "Query")
            request = {**request, "Limit": 2}
        return self.client.query(**request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


class Failing:
    """The function's ledger, whose sweep of `bad` users fails (the store unreachable)."""

    def __init__(self, ledger: Ledger, bad: set[str]) -> None:
        self.ledger, self.bad = ledger, bad

    def sweep(self, user_id: str) -> int:
        if user_id in self.bad:
            raise TemporarilyUnavailable("The credits store is unavailable. Please retry.")
        return self.ledger.sweep(user_id)


def past_ledger(client: Any) -> Ledger:
    """A ledger whose clock is an hour behind: lots it grants expire in the past of the real clock."""
    return Ledger(client, "credits", clock=lambda: time.time() - 3600, sleep=lambda _s: None)


def grant_expired(ledger: Ledger, user: str, credits: int = 10, *, after_ms: int = 60_000) -> None:
    """Credits in a lot that expired (by the real clock) `after_ms` after the ledger's hour-old now."""
    expires = int(ledger.clock() * 1000) + after_ms
    ledger.grant(user, credits, type="gift", description="trial", lot=LotTerms(expires_at_ms=expires, label="Trial"))


def users_by_shard(per_shard: int, crowded: str, crowd: int) -> dict[str, list[str]]:
    """User ids filling every shard of the index with `per_shard` accounts, `crowded` with `crowd`."""
    found: dict[str, list[str]] = {f"{keys.LOTS_DUE_PARTITION}{n}": [] for n in range(keys.LOTS_DUE_SHARDS)}
    n = 0
    while any(len(users) < (crowd if shard == crowded else per_shard) for shard, users in found.items()):
        user = f"u{n}"
        shard = due_shard(keys.user_pk(user))
        if len(found[shard]) < (crowd if shard == crowded else per_shard):
            found[shard].append(user)
        n += 1
    return found


def account(client: Any, user: str) -> dict[str, Any]:
    item = client.get_item(TableName="credits", Key={"pk": {"S": keys.user_pk(user)}, "sk": {"S": keys.ACCOUNT}})
    return dict(item["Item"])


def metrics(output: str) -> dict[str, list[float]]:
    """The metrics of the function's EMF output, by name."""
    found: dict[str, list[float]] = {}
    for line in output.splitlines():
        if line.startswith('{"_aws"'):
            blob = json.loads(line)
            for definition in blob["_aws"]["CloudWatchMetrics"]:
                for metric in definition["Metrics"]:
                    value = blob[metric["Name"]]
                    found.setdefault(metric["Name"], []).extend(value if isinstance(value, list) else [value])
    return found


@pytest.fixture
def expire(moto_dynamodb: Any) -> ModuleType:
    with environment(POWERTOOLS_METRICS_DISABLED="false"):
        return load_function("expire")


def test_every_shard_is_paged_through_and_only_the_accounts_due_are_swept(
    moto_dynamodb: Any, expire: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    crowded = f"{keys.LOTS_DUE_PARTITION}5"
    shards = users_by_shard(1, crowded, 5)
    due = [user for users in shards.values() for user in users]
    past = past_ledger(moto_dynamodb)
    for user in due:
        grant_expired(past, user)
    grant_expired(past, "many", 3)  # ten lots, expired: more than one write's worth of entries
    for n in range(1, 10):
        grant_expired(past, "many", 3, after_ms=60_000 + n)
    now = Ledger(moto_dynamodb, "credits")
    # not due: a lot expiring in 30 days (its warning is 23 days away) in the crowded shard, no expiry
    later = next(f"v{n}" for n in range(1000) if due_shard(keys.user_pk(f"v{n}")) == crowded)
    in_a_month = int(time.time() * 1000) + 30 * 24 * HOUR_MS
    now.grant(later, 10, type="gift", description="later", lot=LotTerms(expires_at_ms=in_a_month))
    now.grant("forever", 10, type="gift", description="no expiry")
    untouched = {user: account(moto_dynamodb, user) for user in (later, "forever")}
    assert "lots_due" in untouched[later] and "lots_due" not in untouched["forever"]

    pages = SmallPages(moto_dynamodb)
    expire.store.client = pages
    answer = expire.lambda_handler(EVENT, FakeContext("expire", 900))

    assert answer == {
        "accounts": len(due) + 1,
        "expirations": len(due) + 10,
        "shards": 16,
        "failed": 0,
        "unfinished": False,
    }
    assert set(pages.pages) == set(shards)  # every shard was queried
    assert pages.pages[crowded] >= 3  # five due accounts and one not due, two a page: it paged
    for user in [*due, "many"]:
        history = now.history(user)
        expired = [t for t in history if t.type == "expiration"]
        assert len(expired) == (10 if user == "many" else 1), user
        assert now.balance(user) == 0 and now.audit(user).ok
        item = account(moto_dynamodb, user)
        assert "lots_due" not in item and "lots_shard" not in item  # out of the index: nothing pending
    assert {user: account(moto_dynamodb, user) for user in untouched} == untouched  # not written at all
    out = metrics(capsys.readouterr().out)
    assert (out["ExpirySweptAccounts"], out["ExpirationsWritten"], out["ExpirySweepFailed"]) == (
        [len(due) + 1],
        [len(due) + 10],
        [0],
    )

    again = expire.lambda_handler(EVENT, FakeContext("expire", 900))
    assert (again["accounts"], again["expirations"], again["failed"]) == (0, 0, 0)
    assert [t.type for t in now.history("many")].count("expiration") == 10


def test_an_account_owing_more_than_one_write_takes_is_swept_until_it_owes_nothing(
    moto_dynamodb: Any, expire: ModuleType
) -> None:
    """Twelve lots granted ten days before their expiry, four days ago, entered their warning window
    at once with no write since: one run announces every one of them, however many announcements a
    single write of the account takes (none of them is an expiration entry)."""
    four_days_ago = Ledger(moto_dynamodb, "credits", clock=lambda: time.time() - 96 * 3600, sleep=lambda _s: None)
    in_six_days = int(time.time() * 1000) + 6 * 24 * HOUR_MS
    for n in range(12):
        terms = LotTerms(expires_at_ms=in_six_days + n, label=f"Promo {n}")
        four_days_ago.grant("busy", 5, type="gift", description="promo", lot=terms)
    assert "EXPIRING" not in str(moto_dynamodb.scan(TableName="credits")["Items"])  # none announced yet
    ledger = Ledger(moto_dynamodb, "credits")
    answer = expire.lambda_handler(EVENT, FakeContext("expire", 900))
    assert (answer["accounts"], answer["expirations"]) == (1, 0)
    notes = moto_dynamodb.query(
        TableName="credits",
        KeyConditionExpression="pk = :pk AND begins_with(sk, :sk)",
        ExpressionAttributeValues={":pk": {"S": keys.user_pk("busy")}, ":sk": {"S": keys.EXPIRING}},
    )["Items"]
    assert sorted(n["label"]["S"] for n in notes) == sorted(f"Promo {n}" for n in range(12))  # each once
    assert account(moto_dynamodb, "busy")["lots_due"] == {"N": str(in_six_days)}  # next: the first expiry
    assert ledger.balance("busy") == 60 and [t.type for t in ledger.history("busy")] == ["gift"] * 12
    assert expire.lambda_handler(EVENT, FakeContext("expire", 900))["accounts"] == 0


def test_a_failing_account_does_not_stop_the_others_and_fails_the_invocation_at_the_end(
    moto_dynamodb: Any,
    expire: ModuleType,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    past = past_ledger(moto_dynamodb)
    for user in ("ann", "bad", "cy"):
        grant_expired(past, user)
    real = expire.ledger
    monkeypatch.setattr(expire, "ledger", Failing(real, {"bad"}))
    with pytest.raises(expire.SweepIncomplete, match="1 accounts or shards failed"):
        expire.lambda_handler(EVENT, FakeContext("expire", 900))
    ledger = Ledger(moto_dynamodb, "credits")
    assert [t.type for t in ledger.history("ann")] == ["gift", "expiration"]
    assert [t.type for t in ledger.history("cy")] == ["gift", "expiration"]
    assert [t.type for t in ledger.history("bad")] == ["gift"]  # still due: in the index
    assert "lots_due" in account(moto_dynamodb, "bad")
    (logged,) = [r for r in caplog.records if r.getMessage() == "an account's sweep failed"]
    assert (logged.levelname, getattr(logged, "user_id", None)) == ("ERROR", "bad")
    assert "TemporarilyUnavailable" in getattr(logged, "error", "")
    out = metrics(capsys.readouterr().out)
    assert (out["ExpirySweptAccounts"], out["ExpirationsWritten"], out["ExpirySweepFailed"]) == ([2], [2], [1])

    monkeypatch.setattr(expire, "ledger", real)  # the retry, once the store answers: only what was left
    answer = expire.lambda_handler(EVENT, FakeContext("expire", 900))
    assert (answer["accounts"], answer["expirations"], answer["failed"]) == (1, 1, 0)
    for user in ("ann", "bad", "cy"):
        assert [t.type for t in ledger.history(user)] == ["gift", "expiration"] and ledger.audit(user).ok


def test_a_shard_whose_query_fails_does_not_stop_the_other_shards(
    moto_dynamodb: Any, expire: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    shards = users_by_shard(1, f"{keys.LOTS_DUE_PARTITION}0", 1)
    past = past_ledger(moto_dynamodb)
    for users in shards.values():
        grant_expired(past, users[0])
    broken = f"{keys.LOTS_DUE_PARTITION}3"
    expire.store.client = SmallPages(moto_dynamodb, broken=frozenset({broken}))
    with pytest.raises(expire.SweepIncomplete, match="1 accounts or shards failed"):
        expire.lambda_handler(EVENT, FakeContext("expire", 900))
    ledger = Ledger(moto_dynamodb, "credits")
    for shard, (user,) in shards.items():
        swept = [t.type for t in ledger.history(user)].count("expiration")
        assert swept == (0 if shard == broken else 1), shard
    (logged,) = [r for r in caplog.records if r.getMessage() == "a shard's Query failed"]
    assert getattr(logged, "shard", None) == broken and getattr(logged, "user_id", "x") is None

    expire.store.client = moto_dynamodb
    answer = expire.lambda_handler(EVENT, FakeContext("expire", 900))
    assert (answer["accounts"], answer["expirations"], answer["shards"]) == (1, 1, 16)


def test_a_run_out_of_time_stops_before_an_account_and_fails_so_it_is_retried(
    moto_dynamodb: Any, expire: ModuleType
) -> None:
    grant_expired(past_ledger(moto_dynamodb), "late")
    short = FakeContext("expire", expire.STOP_BEFORE_SECONDS)  # no time left for an account
    with pytest.raises(expire.SweepIncomplete, match="stopped before its timeout"):
        expire.lambda_handler(EVENT, short)
    ledger = Ledger(moto_dynamodb, "credits")
    assert [t.type for t in ledger.history("late")] == ["gift"]
    assert expire.lambda_handler(EVENT, FakeContext("expire", 900))["expirations"] == 1
    assert [t.type for t in ledger.history("late")] == ["gift", "expiration"]


def test_a_lot_granted_inside_its_warning_window_is_announced_with_its_grant_and_never_again(
    moto_dynamodb: Any, expire: ModuleType
) -> None:
    ledger = Ledger(moto_dynamodb, "credits")
    in_two_days = int(time.time() * 1000) + 48 * HOUR_MS  # within the 7 days' warning
    ledger.grant("soon", 40, type="gift", description="trial", lot=LotTerms(expires_at_ms=in_two_days, label="Trial"))
    note = moto_dynamodb.get_item(
        TableName="credits", Key={"pk": {"S": keys.user_pk("soon")}, "sk": {"S": keys.expiring_sk("1")}}
    )["Item"]
    assert (note["credits"], note["expires_at_ms"], note["label"]) == (
        {"N": "40"},
        {"N": str(in_two_days)},
        {"S": "Trial"},
    )
    assert account(moto_dynamodb, "soon")["lots_due"] == {"N": str(in_two_days)}  # next: its expiry
    assert expire.lambda_handler(EVENT, FakeContext("expire", 900))["accounts"] == 0  # not due again before then
    assert ledger.balance("soon") == 40 and [t.type for t in ledger.history("soon")] == ["gift"]


def test_a_mistyped_warning_setting_stops_the_function_at_cold_start(moto_dynamodb: Any) -> None:
    with environment(EXPIRY_WARNING_DAYS="a week"), pytest.raises(Exception, match="EXPIRY_WARNING_DAYS"):
        load_function("expire")


# ---- make dev: the function on a local schedule, with the time its template gives it ---------------


def test_the_local_schedule_runs_at_once_then_at_its_rate_and_a_failed_run_does_not_stop_it() -> None:
    answers: list[Any] = []
    lines: list[str] = []
    third = threading.Event()

    def invoke(event: dict[str, Any]) -> Any:
        assert event["schedule"] == "expire" and event["source"] == "local.scheduler"
        if schedule.runs == 1:
            raise RuntimeError("the store is down")
        if schedule.runs == 3:
            third.set()
        return {"accounts": schedule.runs}

    schedule = Schedule("expire", 0.01, invoke, answered=answers.append, log=lines.append)
    schedule.start()
    try:
        assert third.wait(30)
    finally:
        schedule.stop()
    runs = schedule.runs
    assert runs >= 3 and schedule.failures == 1
    assert lines == ["expire: the scheduled run failed: RuntimeError: the store is down"]
    assert answers[:2] == [{"accounts": 2}, {"accounts": 3}]
    assert schedule.run_once() == {"accounts": runs + 1}  # stopped: only a run asked for happens
    with pytest.raises(ValueError, match="positive"):
        Schedule("expire", 0, invoke)


def test_make_dev_sweeps_every_minute_unless_told_otherwise() -> None:
    assert dev.parse_args([]).sweep_every == 60
    assert dev.parse_args(["--sweep-every", "5"]).sweep_every == 5
    assert "every 5 s" in dev.sweep_line(5) and "once a day on AWS" in dev.sweep_line(5)
    assert "never" in dev.sweep_line(0)


def test_a_local_invocation_has_its_functions_timeout_counting_down() -> None:
    assert (function_timeout("expire"), function_timeout("use_credits"), function_timeout("reconcile")) == (
        900,
        15,
        300,
    )
    context = LocalContext("expire", 900)
    assert 899_000 < context.get_remaining_time_in_millis() <= 900_000
    assert LocalContext("x", 0).get_remaining_time_in_millis() == 0
