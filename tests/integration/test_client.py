"""credits.client through the local gateway (SigV4 on /internal/*) to use_credits on DynamoDB Local."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from botocore.credentials import Credentials

from credits.client import CreditsClient, Forbidden
from credits.errors import HoldReleased, InsufficientCredits, ValidationError
from credits.ledger import Ledger
from local.gateway import Gateway
from tests.integration.conftest import LocalTables

KEY = ("AKIALOCALCLIENTTEST1", "Zq8Xw3Ev6Rt1Yu4Io7Pa0Sd2Fg5Hj8Kl1Mn4Bv7C")


@dataclass
class Api:
    gateway: Gateway
    ledger: Ledger

    def client(self, secret: str = KEY[1]) -> CreditsClient:
        return CreditsClient(self.gateway.base_url, credentials=Credentials(KEY[0], secret))


@pytest.fixture
def api(local_tables: LocalTables) -> Iterator[Api]:
    gateway = Gateway(token_secret="test-secret", web_dir=None, iam_credentials=KEY)
    gateway.start(warm=False)  # only use_credits is used: its containers start with the first request
    try:
        yield Api(gateway, local_tables.ledger())
    finally:
        gateway.stop()


def test_a_signed_grant_then_charges_leave_the_right_balance(api: Api) -> None:
    """Grant 100, charge analyze (5) and 10 by amount, retry the latter: 85 left, charged once."""
    client = api.client()
    assert client.grant("alice", 100, description="welcome").balance == 100
    analyze = client.charge("alice", action="analyze", description="report")
    assert (analyze.charged, analyze.balance, analyze.replayed) == (5, 95, False)
    first = client.charge("alice", amount=10, description="export", idempotency_key="export-1")
    again = client.charge("alice", amount=10, description="export", idempotency_key="export-1")
    assert (first.balance, again.balance, again.replayed, again.transaction_id) == (85, 85, True, first.transaction_id)
    assert api.ledger.balance("alice") == 85
    assert [(t.type, t.amount) for t in api.ledger.history("alice")] == [("gift", 100), ("usage", -5), ("usage", -10)]
    assert api.ledger.audit("alice").ok


def test_the_caller_s_credential_chain_signs_by_default(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", KEY[1])  # with the session token the tests' environment has
    assert CreditsClient(api.gateway.base_url).grant("erin", 7, description="welcome").balance == 7


def test_an_unsigned_charge_is_refused_and_writes_nothing(api: Api) -> None:
    api.client().grant("bob", 50, description="welcome")
    body = json.dumps({"userId": "bob", "amount": 10, "description": "free lunch"}).encode()
    request = urllib.request.Request(
        api.gateway.base_url + "/internal/credits/use", body, {"Content-Type": "application/json"}, method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert (refused.value.code, json.loads(refused.value.read())) == (403, {"message": "Forbidden"})
    assert api.ledger.balance("bob") == 50
    assert len(api.ledger.history("bob")) == 1


def test_a_wrong_secret_is_forbidden_and_writes_nothing(api: Api) -> None:
    with pytest.raises(Forbidden) as refused:
        api.client(secret="not-the-secret").grant("carol", 1_000, description="free credits")
    assert refused.value.status == 403
    assert api.ledger.balance("carol") == 0
    assert api.ledger.history("carol") == []


def test_insufficient_credits_come_back_with_their_fields(api: Api) -> None:
    client = api.client()
    client.grant("dave", 3, description="welcome")
    with pytest.raises(InsufficientCredits) as short:
        client.charge("dave", amount=10, description="export")
    assert (short.value.required, short.value.balance, short.value.available) == (10, 3, 3)
    with pytest.raises(ValidationError):
        client.charge("dave", amount=1, action="search", description="both")
    assert api.ledger.balance("dave") == 3


def test_a_hold_block_that_succeeds_captures_the_hold(api: Api) -> None:
    client = api.client()
    client.grant("frank", 100, description="welcome")
    with client.hold("frank", amount=30, description="report") as held:
        assert api.ledger.account("frank").available == 70  # set aside while the work runs
    assert held.captured is not None
    assert (held.captured.charged, held.captured.balance, held.captured.available) == (30, 70, 70)
    assert api.ledger.balance("frank") == 70
    usage = [(t.type, t.amount, t.reference_id) for t in api.ledger.history("frank")][-1]
    assert usage == ("usage", -30, f"hold:{held.hold_id}")
    assert api.ledger.audit("frank").ok


def test_a_hold_block_may_capture_less(api: Api) -> None:
    client = api.client()
    client.grant("gina", 100, description="welcome")
    with client.hold("gina", action="generate", description="draft") as held:
        assert held.amount == 10
        held.use(4)
    assert api.ledger.balance("gina") == 96
    assert api.ledger.account("gina").available == 96  # the rest is set free


def test_a_hold_block_that_raises_releases_the_hold(api: Api) -> None:
    client = api.client()
    client.grant("hank", 100, description="welcome")
    with pytest.raises(RuntimeError, match="the work failed"), client.hold("hank", amount=30, description="x") as held:
        raise RuntimeError("the work failed")
    assert held.released is not None and held.released.released == 30
    assert (api.ledger.balance("hank"), api.ledger.account("hank").available) == (100, 100)
    assert [t.type for t in api.ledger.history("hank")] == ["gift"]
    with pytest.raises(HoldReleased):
        client.capture("hank", held.hold_id)  # a hold's end is final
