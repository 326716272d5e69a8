"""`make dev ARGS='--template PATH'`: a team's own SAM template served by the local gateway beside ours.

The README's own snippets (its `ReportsFunction` resource and its paywalled route) are the team's
template and app: served on DynamoDB Local, a signed-in user's POST /reports is charged."""

from __future__ import annotations

import json
import textwrap
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local.dev import parse_args
from local.gateway import Gateway
from local.template import TemplateError
from tests.integration.conftest import LocalTables
from tests.unit.test_readme import snippets

HEADER = 'AWSTemplateFormatVersion: "2010-09-09"\nTransform: AWS::Serverless-2016-10-31\n'
TIMEOUT = 60.0  # a cold start of a container process on a loaded 2-core machine, then the request
# What the README's route snippet leaves to the rest of the team's app.py.
APP_BEFORE = """\
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver

app = APIGatewayHttpResolver()


def build_report():
    return "the report"


"""
APP_AFTER = """

def lambda_handler(event, context):
    return app.resolve(event, context)
"""


def readme_snippet(lang: str, marker: str) -> str:
    (found,) = [s.text for s in snippets() if s.lang == lang and marker in s.text]
    return found


def team_template(folder: Path, resources: str, parameters: str = "") -> Path:
    """A SAM template of these resources (indented as in the README) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    template = folder / "template.yaml"
    text = HEADER + parameters + "Resources:\n" + textwrap.indent(textwrap.dedent(resources), "  ")
    template.write_text(text)
    return template


def readme_team(tmp_path: Path) -> Path:
    """The README's ReportsFunction as a team's template, its route snippet as its app.py."""
    template = team_template(tmp_path / "team", readme_snippet("yaml", "ReportsFunction"))
    code = template.parent / "reports"  # the snippet's CodeUri, relative to the template's folder
    code.mkdir()
    (code / "app.py").write_text(APP_BEFORE + readme_snippet("python", "charge_credits(") + APP_AFTER)
    return template


def request(
    gateway: Gateway, method: str, path: str, body: Any = None, token: str | None = None
) -> tuple[int, dict[str, str], Any]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    sent = urllib.request.Request(gateway.base_url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(sent, timeout=TIMEOUT) as answer:
            return answer.status, dict(answer.headers), json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), json.loads(error.read() or b"null")


def sign_in(gateway: Gateway, user: str) -> str:
    status, _, answer = request(gateway, "POST", "/local/sign-in", {"user": user})
    assert status == 200, answer
    return str(answer["token"])


@pytest.fixture
def serve() -> Iterator[Any]:
    """Start a gateway with these templates (on the tables of `local_tables`); stopped at the end."""
    started: list[Gateway] = []

    def start(*templates: Path) -> Gateway:
        gateway = Gateway(token_secret="team-secret", web_dir=None, templates=list(templates))
        started.append(gateway)
        gateway.start(warm=False)
        return gateway

    try:
        yield start
    finally:
        for gateway in started:
            gateway.stop()


def test_the_readme_s_reports_function_is_served_and_charges(
    local_tables: LocalTables, tmp_path: Path, serve: Any
) -> None:
    gateway = serve(readme_team(tmp_path))
    user = f"team-{uuid.uuid4().hex[:8]}"
    ledger = local_tables.ledger()
    ledger.grant(user, 100, type="gift", description="welcome")

    status, _, _ = request(gateway, "POST", "/reports", {})
    assert status == 401  # a JWT route: the local sign-in's token is needed

    status, headers, body = request(gateway, "POST", "/reports", {}, token=sign_in(gateway, user))
    assert (status, body) == (200, {"report": "the report"})
    # `analyze` is 5 in the snippet's ACTION_COSTS; the route says it used 2.
    assert (headers["Credits-Charged"], headers["Credits-Balance"]) == ("2", "98")
    assert ledger.balance(user) == 98


def test_a_team_function_gets_its_own_environment_and_handler(
    local_tables: LocalTables, tmp_path: Path, serve: Any
) -> None:
    """Its Variables as written and resolved (!ImportValue, !Sub of its Parameters), none of our
    functions' settings; a `package.module.function` handler, with modules next to it importable."""
    template = team_template(
        tmp_path / "team",
        """\
        EnvFunction:
          Type: AWS::Serverless::Function
          Properties:
            Handler: handlers.main.handle
            CodeUri: ./src
            Environment:
              Variables:
                CREDITS_TABLE_NAME: !ImportValue credits-CreditsTableName
                GREETING: !Sub "${Prefix}-hello"
                PLAIN: 3
            Events:
              Env: {Type: HttpApi, Properties: {Path: /team/env, Method: GET}}
              Internal: {Type: HttpApi, Properties: {Path: /internal/team/env, Method: GET}}
        """,
        parameters="Parameters:\n  Prefix: {Type: String, Default: team}\n",
    )
    code = template.parent / "src" / "handlers"
    code.mkdir(parents=True)
    (template.parent / "src" / "helper.py").write_text("NAME = 'helper'\n")
    (code / "main.py").write_text(
        "import os\nimport helper\n\n\n"
        "def handle(event, context):\n"
        "    names = ('CREDITS_TABLE_NAME', 'GREETING', 'PLAIN', 'ACTION_COSTS', 'IDEMPOTENCY_TABLE_NAME')\n"
        "    seen = {name: os.environ.get(name) for name in names}\n"
        "    return {'statusCode': 200, 'body': __import__('json').dumps({**seen, 'helper': helper.NAME})}\n"
    )
    gateway = serve(template)
    status, _, body = request(gateway, "GET", "/team/env", token=sign_in(gateway, "env-user"))
    assert status == 200, body
    assert body == {
        "CREDITS_TABLE_NAME": local_tables.credits,
        "GREETING": "team-hello",
        "PLAIN": "3",
        "ACTION_COSTS": None,  # ours is not theirs: the README's snippet sets its own
        "IDEMPOTENCY_TABLE_NAME": None,
        "helper": "helper",
    }
    status, _, _ = request(gateway, "GET", "/internal/team/env", token=sign_in(gateway, "env-user"))
    assert status == 403  # under /internal: SigV4, as ours (this gateway has no local key)


CLASHING = """\
UseFunction:
  Type: AWS::Serverless::Function
  Properties:
    Handler: app.lambda_handler
    CodeUri: use/
    Events:
      Use: {Type: HttpApi, Properties: {Path: /credits/use, Method: POST}}
"""


def test_a_route_that_clashes_with_ours_is_a_startup_error(tmp_path: Path) -> None:
    template = team_template(tmp_path, CLASHING)
    (tmp_path / "use").mkdir()
    (tmp_path / "use" / "app.py").write_text("def lambda_handler(event, context):\n    return {}\n")
    with pytest.raises(TemplateError, match=r"POST /credits/use .* clashes with POST /credits/use \(template.yaml\)"):
        Gateway(token_secret="team-secret", web_dir=None, templates=[template])
    # A parameter's name does not make another route, nor may a team take the gateway's own paths.
    for path, problem in (
        ("/internal/credits/holds/{id}/release", "clashes with"),
        ("/webhook", "serves /webhook itself"),
    ):
        template.write_text(
            HEADER + "Resources:\n" + textwrap.indent(CLASHING, "  ").replace("/credits/use", f'"{path}"')
        )
        with pytest.raises(TemplateError, match=problem):
            Gateway(token_secret="team-secret", web_dir=None, templates=[template])


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("!ImportValue credits-Nope", "!ImportValue credits-Nope: not an export of stack 'credits'"),
        ("!ImportValue other-CreditsTableName", "!ImportValue other-CreditsTableName"),
        ("!ImportValue credits-CreditsLayerArn", "!ImportValue credits-CreditsLayerArn has no local value"),
        ("!Ref SomeTable", "!Ref SomeTable: unknown locally"),
        ('!Sub "${Missing}-x"', r"!Sub \$\{Missing\}: unknown locally"),
        ("!GetAtt Table.Arn", "'GetAtt' cannot be resolved locally"),
    ],
)
def test_what_make_dev_cannot_resolve_is_a_startup_error_naming_it(tmp_path: Path, value: str, named: str) -> None:
    resources = CLASHING.replace("/credits/use", "/team/use").replace(
        "    Events:", f"    Environment:\n      Variables:\n        SETTING: {value}\n    Events:"
    )
    template = team_template(tmp_path, resources)
    (tmp_path / "use").mkdir()
    (tmp_path / "use" / "app.py").write_text("def lambda_handler(event, context):\n    return {}\n")
    with pytest.raises(TemplateError, match=f"UseFunction: SETTING: {named}"):
        Gateway(token_secret="team-secret", web_dir=None, templates=[template])


def test_an_unknown_import_in_layers_is_a_startup_error_and_the_ledger_policy_is_ignored(tmp_path: Path) -> None:
    resources = CLASHING.replace("/credits/use", "/team/use").replace(
        "    Events:",
        "    Policies: [!ImportValue credits-CreditsLedgerPolicyArn]\n    Layers: [!ImportValue credits-OtherLayer]\n"
        "    Events:",
    )
    template = team_template(tmp_path, resources)
    (tmp_path / "use").mkdir()
    (tmp_path / "use" / "app.py").write_text("def lambda_handler(event, context):\n    return {}\n")
    with pytest.raises(TemplateError, match="UseFunction: !ImportValue credits-OtherLayer"):
        Gateway(token_secret="team-secret", web_dir=None, templates=[template])
    template.write_text(template.read_text().replace("credits-OtherLayer", "credits-CreditsLayerArn"))
    gateway = Gateway(token_secret="team-secret", web_dir=None, templates=[template])
    gateway.start(warm=False)  # (stop() waits for the server it started)
    try:
        assert [(r.method, r.path, r.auth) for r in gateway.teams[0].routes] == [("POST", "/team/use", "JWT")]
    finally:
        gateway.stop()


def test_make_dev_takes_templates_repeatedly() -> None:
    assert parse_args(["--template", "a/template.yaml", "--template", "b.yaml"]).templates == [
        Path("a/template.yaml"),
        Path("b.yaml"),
    ]
    assert parse_args([]).templates == []
