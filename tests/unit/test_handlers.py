"""The use_credits and balance functions, fed HTTP API payload 2.0 events, on moto."""

from __future__ import annotations

import json
from types import ModuleType

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from credits.ledger import Ledger
from credits.packages import Catalog, Package
from tests.support import environment, http_event, invoke, load_function


def grant(use: ModuleType, user: str, amount: int, **extra: object) -> tuple[int, dict]:
    status, body, _ = invoke(
        use,
        http_event(
            "POST",
            "/internal/credits/grant",
            sub=None,
            body={"userId": user, "amount": amount, "type": "gift", "description": "welcome", **extra},
        ),
    )
    return status, body


def spend(
    use: ModuleType, action: str, *, sub: str = "user-1", key: str | None = None, **extra: object
) -> tuple[int, dict]:
    headers = {"Idempotency-Key": key} if key else None
    status, body, _ = invoke(
        use, http_event("POST", "/credits/use", sub=sub, headers=headers, body={"action": action, **extra})
    )
    return status, body


def test_grant_then_spend_analyze_costs_five(use: ModuleType, bal: ModuleType) -> None:
    assert grant(use, "user-1", 20)[0] == 200
    status, body = spend(use, "analyze")
    assert status == 200
    assert body["charged"] == 5 and body["balance"] == 15 and body["transactionId"]
    status, body, headers = invoke(bal, http_event("GET", "/credits/balance"))
    assert (status, body) == (
        200,
        {"balance": 15, "available": 15, "held": 0, "expiring": [], "byCategory": {"paid": 15, "promotional": 0}},
    )
    assert headers["Content-Type"] == "application/json"


def test_the_price_comes_from_the_server_not_the_client(use: ModuleType) -> None:
    grant(use, "user-1", 20)
    status, body = spend(use, "generate", amount=1)
    assert status == 400 and body["error"]["code"] == "validation_error"
    assert spend(use, "generate")[1]["charged"] == 10


def test_insufficient_credits_is_402_with_required_and_balance(use: ModuleType, ledger: Ledger) -> None:
    grant(use, "user-1", 4)
    status, body = spend(use, "analyze")
    assert status == 402
    assert body["error"]["code"] == "insufficient_credits"
    assert (body["error"]["required"], body["error"]["balance"]) == (5, 4)
    assert ledger.balance("user-1") == 4 and len(ledger.history("user-1")) == 1


def test_an_unknown_action_is_404_and_charges_nothing(use: ModuleType, ledger: Ledger) -> None:
    grant(use, "user-1", 4)
    status, body = spend(use, "teleport")
    assert (status, body["error"]["code"]) == (404, "unknown_action")
    assert ledger.balance("user-1") == 4


def test_no_jwt_subject_is_401(use: ModuleType, bal: ModuleType) -> None:
    status, body, _ = invoke(use, http_event("POST", "/credits/use", sub=None, body={"action": "search"}))
    assert (status, body["error"]["code"]) == (401, "unauthorized")
    status, body, _ = invoke(bal, http_event("GET", "/credits/balance", sub=None))
    assert (status, body["error"]["code"]) == (401, "unauthorized")


def test_the_user_is_the_jwt_subject_never_a_body_field(use: ModuleType, ledger: Ledger) -> None:
    grant(use, "victim", 50)
    status, body = spend(use, "search", sub="attacker", userId="victim")
    assert (status, body["error"]["code"]) == (400, "validation_error")
    assert ledger.balance("victim") == 50


BAD_BODIES = [
    ("{not json", "invalid_json"),
    ("[1, 2]", "invalid_json"),
    ('"search"', "invalid_json"),
    ("null", "invalid_json"),
    ("", "invalid_json"),
    (json.dumps({"action": 5}), "validation_error"),
    (json.dumps({"action": "search", "surprise": 1}), "validation_error"),
    (json.dumps({}), "validation_error"),
    (json.dumps({"action": "search", "referenceId": "r" * 256}), "validation_error"),
    (json.dumps({"action": "search", "referenceId": ""}), "validation_error"),
    (json.dumps({"action": "search", "description": "d" * 501}), "validation_error"),
    # 16 KiB is counted in UTF-8 bytes: 6,000 euro signs are 18,000 bytes
    (json.dumps({"action": "search", "description": "€" * 6000}, ensure_ascii=False), "invalid_json"),
]


@pytest.mark.parametrize(("raw", "code"), BAD_BODIES)
def test_bad_bodies_get_a_400_and_write_nothing(use: ModuleType, ledger: Ledger, raw: str, code: str) -> None:
    grant(use, "user-1", 10)
    status, body, _ = invoke(use, http_event("POST", "/credits/use", raw_body=raw))
    assert status == 400
    assert body["error"]["code"] == code
    assert "Traceback" not in json.dumps(body)
    assert ledger.balance("user-1") == 10 and len(ledger.history("user-1")) == 1


BAD_AMOUNTS = [0, -5, 1.5, 2.0, "10", True, None, 1_000_000_001, 10**20]


@pytest.mark.parametrize("amount", BAD_AMOUNTS)
def test_internal_amounts_must_be_positive_integers(use: ModuleType, ledger: Ledger, amount: object) -> None:
    grant(use, "svc-user", 10)
    status, body, _ = invoke(
        use,
        http_event(
            "POST",
            "/internal/credits/use",
            sub=None,
            body={"userId": "svc-user", "amount": amount, "description": "batch export"},
        ),
    )
    assert (status, body["error"]["code"]) == (400, "validation_error")
    status, body = grant(use, "svc-user", amount)  # type: ignore[arg-type]
    assert (status, body["error"]["code"]) == (400, "validation_error")
    assert ledger.balance("svc-user") == 10


def test_internal_use_by_amount_or_action_but_not_both(use: ModuleType, ledger: Ledger) -> None:
    grant(use, "svc-user", 30)
    ok = invoke(
        use,
        http_event(
            "POST",
            "/internal/credits/use",
            sub=None,
            body={"userId": "svc-user", "amount": 7, "description": "export"},
        ),
    )
    assert ok[0] == 200 and ok[1]["charged"] == 7
    ok = invoke(
        use,
        http_event(
            "POST",
            "/internal/credits/use",
            sub=None,
            body={"userId": "svc-user", "action": "generate", "description": "nightly"},
        ),
    )
    assert ok[0] == 200 and ok[1]["charged"] == 10
    both = invoke(
        use,
        http_event(
            "POST",
            "/internal/credits/use",
            sub=None,
            body={"userId": "svc-user", "action": "generate", "amount": 3, "description": "x"},
        ),
    )
    assert both[0] == 400
    assert ledger.balance("svc-user") == 13


def test_grant_type_must_be_gift_or_adjustment(use: ModuleType, ledger: Ledger) -> None:
    status, body, _ = invoke(
        use,
        http_event(
            "POST",
            "/internal/credits/grant",
            sub=None,
            body={"userId": "u", "amount": 5, "type": "purchase", "description": "sneaky"},
        ),
    )
    assert (status, body["error"]["code"]) == (400, "validation_error")
    assert ledger.balance("u") == 0


def test_idempotency_key_replays_the_same_status_and_body(use: ModuleType, ledger: Ledger) -> None:
    grant(use, "user-1", 20)
    first = spend(use, "analyze", key="click-1")
    status, body, headers = invoke(
        use, http_event("POST", "/credits/use", headers={"Idempotency-Key": "click-1"}, body={"action": "analyze"})
    )
    again = (status, body)
    assert first == again
    assert headers.get("Idempotent-Replayed") == "true"
    assert first[0] == 200 and first[1]["balance"] == 15
    assert ledger.balance("user-1") == 15


def test_idempotency_key_reused_for_another_request_is_409(use: ModuleType, ledger: Ledger) -> None:
    grant(use, "user-1", 20)
    spend(use, "analyze", key="click-1")
    status, body = spend(use, "generate", key="click-1")
    assert (status, body["error"]["code"]) == (409, "idempotency_key_reused")
    assert ledger.balance("user-1") == 15


def test_one_users_key_does_not_collide_with_anothers(use: ModuleType, ledger: Ledger) -> None:
    grant(use, "a", 10)
    grant(use, "b", 10)
    assert spend(use, "analyze", sub="a", key="same")[0] == 200
    assert spend(use, "search", sub="b", key="same")[0] == 200
    assert (ledger.balance("a"), ledger.balance("b")) == (5, 9)


def test_an_overlong_idempotency_key_is_400(use: ModuleType, ledger: Ledger) -> None:
    grant(use, "user-1", 20)
    status, body = spend(use, "search", key="k" * 256)
    assert (status, body["error"]["code"]) == (400, "validation_error")
    assert ledger.balance("user-1") == 20


def test_a_reused_reference_for_another_action_is_409(use: ModuleType, ledger: Ledger) -> None:
    grant(use, "user-1", 20)
    assert spend(use, "search", referenceId="doc-1")[0] == 200
    assert spend(use, "search", referenceId="doc-1")[1]["balance"] == 19  # a replay
    status, body = spend(use, "generate", referenceId="doc-1")
    assert (status, body["error"]["code"]) == (409, "reference_id_reused")
    assert ledger.balance("user-1") == 19


def test_a_base64_body_is_decoded(use: ModuleType) -> None:
    grant(use, "user-1", 20)
    status, body, _ = invoke(use, http_event("POST", "/credits/use", body={"action": "search"}, base64_body=True))
    assert (status, body["balance"]) == (200, 19)
    status, body, _ = invoke(use, http_event("POST", "/credits/use", raw_body="%%%", base64_body=False))
    assert status == 400
    event = http_event("POST", "/credits/use", body={"action": "search"})
    event["isBase64Encoded"] = True
    event["body"] = "!!!not-base64"
    status, body, _ = invoke(use, event)
    assert (status, body["error"]["code"]) == (400, "invalid_json")


JSON_ROUTES = [
    ("POST", "/credits/use"),
    ("PUT", "/credits/settings"),
    ("POST", "/internal/credits/use"),
    ("POST", "/internal/credits/grant"),
    ("POST", "/internal/credits/holds"),
    ("POST", "/internal/credits/holds/h1/capture"),
    ("POST", "/internal/credits/holds/h1/release"),
]
UNREADABLE = [
    ("/w==", True),  # base64 of a byte that is not UTF-8
    ("eyJhY3Rpb24iOiAi/yJ9", True),  # {"action": "<0xff>"}
    ("e30=\n", True),  # base64 of {}, with what strict base64 refuses
    ("!!!not-base64", True),
    ("\u00e9t\u00e9", True),  # flagged base64, not even ASCII
    ('{"action": "\ud800"}', False),  # text that cannot be UTF-8: a lone surrogate
]


@pytest.mark.parametrize(("raw", "base64_body"), UNREADABLE)
@pytest.mark.parametrize(("method", "path"), JSON_ROUTES)
def test_a_body_that_is_not_utf8_or_not_base64_is_400_invalid_json_and_writes_nothing(
    use: ModuleType, moto_dynamodb, method: str, path: str, raw: str, base64_body: bool
) -> None:
    grant(use, "user-1", 10)
    before = moto_dynamodb.scan(TableName="credits")["Items"]
    event = http_event(method, path, headers={"Idempotency-Key": "k-1"}, body={})
    event["body"], event["isBase64Encoded"] = raw, base64_body
    event["pathParameters"] = {"hold_id": "h1"} if "/holds/" in path else None
    status, body, _ = invoke(use, event)
    assert (status, body["error"]["code"]) == (400, "invalid_json")
    assert moto_dynamodb.scan(TableName="credits")["Items"] == before


def test_unknown_routes_are_404_json(use: ModuleType, bal: ModuleType) -> None:
    status, body, _ = invoke(use, http_event("POST", "/credits/steal", body={}))
    assert (status, body["error"]["code"]) == (404, "not_found")
    status, body, _ = invoke(bal, http_event("DELETE", "/credits/balance"))
    assert status in (404, 405) and "error" in body


def test_transactions_newest_first_with_paging(use: ModuleType, bal: ModuleType) -> None:
    grant(use, "user-1", 100)
    for action in ("search", "analyze", "generate"):
        spend(use, action)
    status, page, _ = invoke(bal, http_event("GET", "/credits/transactions", query={"limit": "2"}))
    assert status == 200
    assert [t["amount"] for t in page["transactions"]] == [-10, -5]
    assert page["transactions"][0]["balanceAfter"] == 84
    assert page["transactions"][0]["type"] == "usage"
    assert page["transactions"][0]["createdAt"].endswith("Z")
    status, page2, _ = invoke(
        bal, http_event("GET", "/credits/transactions", query={"limit": "2", "cursor": page["nextCursor"]})
    )
    assert [t["amount"] for t in page2["transactions"]] == [-1, 100]
    assert page2["nextCursor"] is None
    assert set(page2["transactions"][1]) == {
        "id",
        "amount",
        "balanceAfter",
        "type",
        "description",
        "referenceId",
        "monetaryAmount",
        "currency",
        "createdAt",
    }


@pytest.mark.parametrize("query", [{"limit": "0"}, {"limit": "101"}, {"limit": "ten"}, {"cursor": "@@"}])
def test_bad_paging_parameters_are_400(bal: ModuleType, query: dict[str, str]) -> None:
    status, body, _ = invoke(bal, http_event("GET", "/credits/transactions", query=query))
    assert (status, body["error"]["code"]) == (400, "validation_error")


def test_packages_are_public_and_list_only_active_ones(bal: ModuleType, moto_dynamodb) -> None:
    status, body, _ = invoke(bal, http_event("GET", "/credit-packages", sub=None))
    assert (status, body) == (200, {"packages": []})
    catalog = Catalog(moto_dynamodb, "credits")
    catalog.put(Package(id="starter", name="Starter", credits=100, price=500, currency="usd"))
    catalog.put(Package(id="old", name="Old", credits=1, price=100, currency="usd", active=False))
    status, body, _ = invoke(bal, http_event("GET", "/credit-packages", sub=None))
    assert body == {
        "packages": [
            {
                "id": "starter",
                "name": "Starter",
                "description": "",
                "credits": 100,
                "price": 500,
                "currency": "usd",
            }
        ]
    }


def test_our_own_failure_is_a_json_500_without_details(use: ModuleType, moto_dynamodb) -> None:
    grant(use, "user-1", 10)

    def explode(**_: object) -> None:
        raise RuntimeError("secret internals")

    use.ledger.client.meta.events.register("before-call.dynamodb.GetItem", explode)
    status, body = spend(use, "search")
    assert (status, body["error"]["code"]) == (500, "internal_error")
    assert "secret" not in json.dumps(body)


@pytest.mark.parametrize("missing", ["CREDITS_TABLE_NAME", "ACTION_COSTS"])
def test_a_missing_setting_fails_at_cold_start_naming_it(moto_dynamodb, missing: str) -> None:
    with environment(**{missing: None}), pytest.raises(Exception, match=missing):
        load_function("use_credits")


@pytest.mark.parametrize("costs", ['{"search": 0}', '{"search": 1.5}', '{"search": "1"}', "[]", "{", "{}"])
def test_a_malformed_price_list_fails_at_cold_start(moto_dynamodb, costs: str) -> None:
    with environment(ACTION_COSTS=costs), pytest.raises(Exception, match="ACTION_COSTS"):
        load_function("use_credits")


def test_the_price_list_is_read_from_configuration(moto_dynamodb) -> None:
    with environment(ACTION_COSTS='{"render": 3}'):
        fn = load_function("use_credits")
    assert fn.PRICES == {"render": 3}


def test_use_credits_and_balance_never_import_stripe() -> None:
    import subprocess
    import sys

    code = (
        "import os, sys; os.environ.setdefault('CREDITS_TABLE_NAME','t');"
        "os.environ.setdefault('ACTION_COSTS','{\"a\":1}');"
        "from tests.support import load_function;"
        "load_function('use_credits'); load_function('balance');"
        "print('stripe' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**__import__("os").environ, "PYTHONPATH": "shared:."},
    )
    assert out.stdout.strip() == "False"


def test_absurdly_nested_json_and_unicode_digits_are_400(use: ModuleType, bal: ModuleType) -> None:
    status, body, _ = invoke(use, http_event("POST", "/credits/use", raw_body="[" * 5000))
    assert (status, body["error"]["code"]) == (400, "invalid_json")
    status, body, _ = invoke(bal, http_event("GET", "/credits/transactions", query={"limit": "²"}))
    assert (status, body["error"]["code"]) == (400, "validation_error")


class Failing:
    """A DynamoDB client whose reads fail with `error` (a ClientError code, or a lost connection)."""

    def __init__(self, client: object, error: str) -> None:
        self.client, self.error = client, error

    def __getattr__(self, name: str) -> object:
        if name not in ("query", "scan", "get_item", "batch_get_item"):
            return getattr(self.client, name)

        def fail(**_: object) -> None:
            if self.error == "connection":
                raise EndpointConnectionError(endpoint_url="https://dynamodb.us-east-1.amazonaws.com")
            raise ClientError({"Error": {"Code": self.error, "Message": "no"}}, name)

        return fail


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        ("ThrottlingException", 503, "temporarily_unavailable"),
        ("ProvisionedThroughputExceededException", 503, "temporarily_unavailable"),
        ("connection", 503, "temporarily_unavailable"),
        ("AccessDeniedException", 500, "internal_error"),
    ],
)
def test_a_read_the_store_refuses_is_retriable_when_it_can_be(
    bal: ModuleType, monkeypatch: pytest.MonkeyPatch, error: str, status: int, code: str
) -> None:
    """Throttled or unreachable reads (the ledger's pages, the catalog) say "retry", with Retry-After;
    any other AWS error is ours (500), and no answer carries its text."""
    for adapter in (bal.ledger, bal.catalog()):
        store = adapter.store  # the one DynamoDB adapter: it retries, then answers in domain errors
        monkeypatch.setattr(store, "client", Failing(store.client, error))
        monkeypatch.setattr(store, "sleep", lambda _s: None)
    for path, sub in (("/credits/transactions", "user-1"), ("/credit-packages", None)):
        got, body, headers = invoke(bal, http_event("GET", path, sub=sub))
        assert (got, body["error"]["code"]) == (status, code), path
        assert (headers.get("Retry-After") == "1") == (status == 503)
        assert error not in json.dumps(body)


def test_the_price_list_is_public_served_from_action_costs_cheapest_first(moto_dynamodb) -> None:
    status, body, headers = invoke(load_function("balance"), http_event("GET", "/credit-prices", sub=None))
    assert (status, body) == (
        200,
        {
            "prices": [
                {"action": "search", "credits": 1},
                {"action": "analyze", "credits": 5},
                {"action": "generate", "credits": 10},
            ]
        },
    )
    assert headers["Cache-Control"] == "public, max-age=60"
    # the deployed ActionCosts, whatever it holds: ties by name, in the same order on every cold start
    with environment(ACTION_COSTS='{"zeta": 2, "alpha": 2, "export": 1}'):
        _, body, _ = invoke(load_function("balance"), http_event("GET", "/credit-prices", sub=None))
    assert body["prices"] == [
        {"action": "export", "credits": 1},
        {"action": "alpha", "credits": 2},
        {"action": "zeta", "credits": 2},
    ]


def test_the_balance_function_does_not_start_with_a_bad_price_list(moto_dynamodb) -> None:
    with environment(ACTION_COSTS='{"search": 0}'), pytest.raises(Exception, match="ACTION_COSTS"):
        load_function("balance")
