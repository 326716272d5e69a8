"""Every snippet of the README is checked: YAML by the template linter inside a small SAM template,
Python run (on moto, or against a local stub), shell commands against what they name (make targets,
the CLIs' options, AWS's API model) or run for real against the local gateway. A snippet no check
knows fails: a new one needs its check here."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import textwrap
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, cast

import click
import pytest
import yaml

from local.gateway import Gateway
from local.template import ROOT, _CfnLoader, load
from tests.integration.conftest import LocalTables, local_tables  # noqa: F401 - the fixture, for the curl snippet
from tests.support import FakeContext, decode, environment, http_event

README = ROOT / "README.md"
CFN_LINT = ROOT / ".venv-sam" / "bin" / "cfn-lint"
SAM = ROOT / ".venv-sam" / "bin" / "sam"
CREDITS_CLI = ROOT / ".venv" / "bin" / "credits"
STACK = "credits"  # the stack name the README's snippets import from
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w-]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
CHECKED = {"bash", "yaml", "python", "text"}  # text: a command's output, checked where it is made


@dataclass(frozen=True)
class Snippet:
    lang: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.lang})"


def snippets() -> list[Snippet]:
    text = README.read_text()
    found = []
    for match in FENCE.finditer(text):
        body = textwrap.dedent(match["body"]) if match["indent"] else match["body"]
        found.append(Snippet(match["lang"], text.count("\n", 0, match.start()) + 2, body))
    return found


def of(lang: str) -> list[Any]:
    return [pytest.param(s, id=f"line{s.line}") for s in snippets() if s.lang == lang]


def test_every_fenced_block_is_one_the_tests_check() -> None:
    assert snippets(), "no snippets found: the fence pattern no longer matches the README"
    assert README.read_text().count("```") == 2 * len(snippets()), "an unpaired or unrecognised ``` fence"
    unchecked = [str(s) for s in snippets() if s.lang not in CHECKED]
    assert not unchecked, f"snippets in a language no test checks (or with no language): {unchecked}"


# ---- YAML: resources of your own stack, linted inside a SAM template -------------------------------

EXPORTS = {
    output["Export"]["Name"]["Sub"].replace("${AWS::StackName}", STACK)
    for output in load()["Outputs"].values()
    if "Export" in output
}


def imports(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "ImportValue":
                yield value
            else:
                yield from imports(value)
    elif isinstance(node, list):
        for value in node:
            yield from imports(value)


def is_resources(data: Any) -> bool:
    return (
        isinstance(data, dict)
        and bool(data)
        and all(isinstance(v, dict) and isinstance(v.get("Type"), str) for v in data.values())
    )


def lint(resources_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """cfn-lint (SAM transform included) on a template of these resources, indented as in the README."""
    template = tmp_path / "template.yaml"
    header = 'AWSTemplateFormatVersion: "2010-09-09"\nTransform: AWS::Serverless-2016-10-31\nResources:\n'
    template.write_text(header + textwrap.indent(textwrap.dedent(resources_text), "  "))
    (tmp_path / "reports").mkdir(exist_ok=True)  # a CodeUri the snippet names
    return subprocess.run(
        [str(CFN_LINT), str(template)], capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False
    )


@pytest.mark.slow  # a cfn-lint process for each snippet
@pytest.mark.parametrize("snippet", of("yaml"))
def test_yaml_snippets_lint_in_a_stack_that_imports_this_one(snippet: Snippet, tmp_path: Path) -> None:
    data = yaml.load(snippet.text, Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass
    assert data is not None, f"{snippet}: empty"
    if not is_resources(data):
        return  # a YAML document of another kind: parsed is what can be checked
    unknown = set(imports(data)) - EXPORTS
    assert not unknown, f"{snippet} imports what stack {STACK!r} does not export: {unknown} (exports: {EXPORTS})"
    result = lint(snippet.text, tmp_path)
    assert result.returncode == 0, f"{snippet} fails cfn-lint:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("snippet", of("yaml"))
def test_a_function_with_the_layer_runs_where_the_layer_was_built(snippet: Snippet) -> None:
    """The layer carries compiled code (pydantic's core) for one architecture and runtime: a function
    that attaches it must set both as the stack's own functions do, or it fails to import on AWS."""
    template = load()
    globals_ = template["Globals"]["Function"]
    layer = template["Resources"]["CreditsLayer"]["Properties"]
    data = yaml.load(snippet.text, Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass
    for name, resource in data.items() if is_resources(data) else []:
        properties = resource.get("Properties") or {}
        layers = list(imports(properties.get("Layers", [])))
        if resource["Type"] not in ("AWS::Serverless::Function", "AWS::Lambda::Function"):
            continue
        if f"{STACK}-CreditsLayerArn" not in layers:
            continue
        assert properties.get("Architectures") == globals_["Architectures"], f"{snippet}: {name}'s Architectures"
        assert properties["Architectures"] == layer["CompatibleArchitectures"]
        assert properties.get("Runtime") == globals_["Runtime"], f"{snippet}: {name}'s Runtime"
        assert properties["Runtime"] in layer["CompatibleRuntimes"]


@pytest.mark.slow  # a cfn-lint process
def test_the_linter_would_catch_a_broken_resource(tmp_path: Path) -> None:
    """Not vacuous: the same check fails on a mistyped property."""
    broken = "Topic:\n  Type: AWS::SNS::Topic\n  Properties: {TopicNme: x}\n"
    assert lint(broken, tmp_path).returncode != 0


# ---- Python: run -----------------------------------------------------------------------------------


@pytest.mark.parametrize("snippet", of("python"))
def test_python_snippets_compile(snippet: Snippet) -> None:
    compile(snippet.text, str(snippet), "exec")


def run_paywall(snippet: Snippet, moto: Any) -> None:
    """A team's route behind charge_credits, on moto: it runs, and the price it says is charged."""
    from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
    from aws_lambda_powertools.utilities.typing import LambdaContext

    from credits.ledger import Ledger

    ledger = Ledger(moto, "credits")
    ledger.grant("alice", 100, type="gift", description="welcome")
    app = APIGatewayHttpResolver()
    with environment(CREDITS_TABLE_NAME="credits"):
        exec(compile(snippet.text, str(snippet), "exec"), {"app": app, "build_report": lambda: "the report"})  # noqa: S102
        status, body, headers = decode(
            app.resolve(http_event("POST", "/reports", body={}, sub="alice"), cast(LambdaContext, FakeContext()))
        )
    assert (status, body) == (200, {"report": "the report"})
    assert (headers["Credits-Charged"], headers["Credits-Balance"]) == ("2", "98")
    assert ledger.balance("alice") == 98


class Stub:
    """A local stand-in for the API's /internal routes: canned answers, recorded requests."""

    ANSWERS: ClassVar[dict[str, tuple[int, dict[str, Any]]]] = {
        "/internal/credits/use": (200, {"transactionId": "t-1", "charged": 1, "balance": 99}),
        "/internal/credits/holds": (
            201,
            {"holdId": "h-1", "amount": 10, "expiresAt": "2030-01-01T00:00:00Z", "balance": 99, "available": 89},
        ),
        "/internal/credits/holds/h-1/capture": (
            200,
            {"transactionId": "t-2", "charged": 7, "balance": 92, "available": 92},
        ),
    }

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                stub.requests.append((self.path, body, {k.lower(): v for k, v in self.headers.items()}))
                status, answer = stub.ANSWERS.get(self.path, (404, {"message": "Not Found"}))
                raw = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()  # close() waits a poll

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def run_client(snippet: Snippet, moto: Any) -> None:
    """CreditsClient's snippet against a local stub of the API: a signed charge, a hold, its capture."""
    urls = re.findall(r'CreditsClient\("([^"]+)"', snippet.text)
    assert len(urls) == 1, f"{snippet}: expected one CreditsClient(URL, ...)"
    stub = Stub()
    try:
        code = snippet.text.replace(urls[0], stub.url)
        exec(compile(code, str(snippet), "exec"), {"run_export": lambda: 7})  # noqa: S102
    finally:
        stub.close()
    assert [(path, body) for path, body, _ in stub.requests] == [
        ("/internal/credits/use", {"userId": "alice", "action": "search", "description": "search"}),
        ("/internal/credits/holds", {"userId": "alice", "amount": 10, "description": "export"}),
        ("/internal/credits/holds/h-1/capture", {"userId": "alice", "amount": 7}),
    ]
    assert stub.requests[0][2]["idempotency-key"] == "search-7f3a"
    for _, _, headers in stub.requests:
        assert headers["authorization"].startswith("AWS4-HMAC-SHA256 ")
        assert "/eu-west-1/execute-api/aws4_request" in headers["authorization"]


PYTHON_RUNNERS: dict[str, Callable[[Snippet, Any], None]] = {
    "charge_credits(": run_paywall,
    "CreditsClient(": run_client,
}


@pytest.mark.parametrize("snippet", of("python"))
def test_python_snippets_run(snippet: Snippet, moto_dynamodb: Any) -> None:
    runners = [run for marker, run in PYTHON_RUNNERS.items() if marker in snippet.text]
    assert len(runners) == 1, f"{snippet}: no way to run it is known here: add one to PYTHON_RUNNERS"
    runners[0](snippet, moto_dynamodb)


# ---- shell: the commands exist, with the options used; the curl lines run --------------------------


def commands(text: str) -> list[list[str]]:
    """The snippet's commands as argument lists: continuations joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    return [words for line in joined.splitlines() if (words := shlex.split(line, comments=True))]


def strip_environment(words: list[str]) -> tuple[dict[str, str], list[str]]:
    env = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    return env, words


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][a-z0-9-]*):", (ROOT / "Makefile").read_text(), re.M))


def check_make(words: list[str]) -> None:
    targets = [w for w in words[1:] if "=" not in w]
    assert targets, "make with no target"
    missing = set(targets) - make_targets()
    assert not missing, f"no such make target: {missing}"


def help_text(*argv: str) -> str:
    result = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"{' '.join(argv)} --help failed:\n{result.stdout}{result.stderr}"
    return result.stdout


def options(words: list[str]) -> set[str]:
    return {w.split("=", 1)[0] for w in words if w.startswith("--")}


def lists(text: str, option: str) -> bool:
    """Whether a help text lists this option (whole: --guide is not --guided)."""
    return re.search(re.escape(option) + r"(?![\w-])", text) is not None


def check_sam(words: list[str]) -> None:
    assert SAM.exists(), f"{SAM} is not installed: `make install` installs it"
    text = help_text(str(SAM), words[1])
    missing = {o for o in options(words[2:]) if not lists(text, o)}
    assert not missing, f"sam {words[1]} has no options {missing}"


def check_credits(words: list[str]) -> None:
    """Walk the Click commands as the CLI parses them, then ask the installed entry point for help."""
    from credits.cli import cli

    command: click.Command = cli
    path: list[str] = []
    args = iter(words[1:])
    for word in args:
        params = {opt: p for p in command.params for opt in p.opts if isinstance(p, click.Option)}
        if word.startswith("--"):
            param = params.get(word.split("=", 1)[0])
            assert param, f"credits {' '.join(path)} has no option {word}"
            if not param.is_flag and "=" not in word:
                next(args)
        elif isinstance(command, click.Group):
            sub = command.commands.get(word)
            assert sub, f"credits {' '.join(path)} has no subcommand {word!r}"
            command, path = sub, [*path, word]
    assert not isinstance(command, click.Group), f"credits {' '.join(path)} names a group, not a command"
    text = help_text(str(CREDITS_CLI), *path) + help_text(str(CREDITS_CLI))  # the command's and the group's
    missing = {o for o in options(words[1:]) if not lists(text, o)}
    assert not missing, f"`credits {' '.join(path)} --help` does not list {missing}"


def check_aws(words: list[str]) -> None:
    """The AWS CLI's `aws SERVICE OPERATION --option` against botocore's model of the API."""
    import botocore.session

    service, operation = words[1], words[2]
    model = botocore.session.get_session().get_service_model(service)
    name = "".join(part.capitalize() for part in operation.split("-"))
    assert name in model.operation_names, f"aws {service} has no operation {operation}"
    shape = model.operation_model(name).input_shape
    assert shape is not None, f"aws {service} {operation} takes no options"
    members = shape.members
    for option in options(words[3:]):
        member = "".join(part.capitalize() for part in option[2:].split("-"))
        assert member in members, f"aws {service} {operation} has no option {option}"


# The Stripe CLI is not installed here nor modelled anywhere offline: the commands the README uses are
# listed with their options from Stripe's documentation, so a new one fails until it is checked.
STRIPE_CLI = {"listen": {"--forward-to", "--events", "--forward-connect-to", "--skip-verify"}}


def check_stripe(words: list[str]) -> None:
    assert words[1] in STRIPE_CLI, f"stripe {words[1]}: not a Stripe CLI command checked here"
    assert options(words[2:]) <= STRIPE_CLI[words[1]], f"stripe {words[1]}: unchecked options"
    for url in (w for w in words if w.startswith("http://127.0.0.1:8000/")):
        assert url.endswith("/webhook"), f"{url}: the local webhook is /webhook"


SHELL_CHECKS: dict[str, Callable[[list[str]], None]] = {
    "make": check_make,
    ".venv-sam/bin/sam": check_sam,
    ".venv/bin/credits": check_credits,
    "aws": check_aws,
    "stripe": check_stripe,
}
READ_BY_CODE = [ROOT / "shared", ROOT / "local", ROOT / "functions"]


def read_by_the_code(name: str) -> bool:
    return any(name in path.read_text() for folder in READ_BY_CODE for path in folder.rglob("*.py"))


def runs_for_real(snippet: Snippet) -> bool:
    return "curl " in snippet.text


def asks_for_help(snippet: Snippet) -> bool:
    """Whether checking it runs `sam ... --help` or `credits ... --help` (a process each: slow)."""
    return any(word in (".venv-sam/bin/sam", ".venv/bin/credits") for words in commands(snippet.text) for word in words)


@pytest.mark.parametrize(
    "snippet",
    [
        pytest.param(*p.values, id=p.id, marks=[pytest.mark.slow] if asks_for_help(p.values[0]) else [])
        for p in of("bash")
        if not runs_for_real(p.values[0])
    ],
)
def test_shell_snippets_name_commands_and_options_that_exist(snippet: Snippet) -> None:
    for words in commands(snippet.text):
        env, words = strip_environment(words)
        for name in env:
            assert read_by_the_code(name), f"{snippet}: {name} is read by nothing"
        check = SHELL_CHECKS.get(words[0])
        assert check, f"{snippet}: no check for the command {words[0]!r}: add one to SHELL_CHECKS"
        try:
            check(words)
        except AssertionError as failed:
            raise AssertionError(f"{snippet}: {shlex.join(words)}: {failed}") from None


@pytest.fixture
def gateway(local_tables: LocalTables) -> Iterator[Gateway]:  # noqa: F811 - the imported fixture
    served = Gateway(token_secret="readme-secret", web_dir=None)
    served.start(warm=False)
    try:
        yield served
    finally:
        served.stop()


@pytest.mark.slow  # DynamoDB Local (Java) and a gateway with its containers
@pytest.mark.parametrize("snippet", [s for s in of("bash") if runs_for_real(s.values[0])])
def test_curl_snippets_run_against_the_local_gateway(snippet: Snippet, gateway: Gateway) -> None:
    """As typed against `make dev` (its default address), against a gateway of the same code on
    DynamoDB Local: the sign-in's token is accepted, and a new user's balance is 0."""
    assert "http://127.0.0.1:8000/" in snippet.text, f"{snippet}: not against make dev's address"
    script = snippet.text.replace("http://127.0.0.1:8000", gateway.base_url)
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PATH": os.environ.get("PATH", "")},
    )
    assert result.returncode == 0, f"{snippet} failed:\n{result.stdout}{result.stderr}"
    assert json.loads(result.stdout) == {
        "balance": 0,
        "available": 0,
        "held": 0,
        "expiring": [],
        "byCategory": {"paid": 0, "promotional": 0},
    }


@pytest.mark.slow  # DynamoDB Local (Java) and a gateway with its containers
def test_the_make_dev_banner_s_curl_lines_run_as_printed(gateway: Gateway) -> None:
    """The banner prints a ready curl for GET /credits/balance: pasted as printed, it answers."""
    from local.dev import balance_curl

    lines = [line.removeprefix("  curl:").strip() for line in balance_curl(gateway.base_url).splitlines()]
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", "\n".join(lines)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout) == {
        "balance": 0,
        "available": 0,
        "held": 0,
        "expiring": [],
        "byCategory": {"paid": 0, "promotional": 0},
    }


# ---- text: what a command prints, made and compared by the test of that command --------------------

TEXT_CHECKS = {"$ credits report --month 2027-01 --verify": "tests/unit/test_finance.py"}


@pytest.mark.parametrize("snippet", of("text"))
def test_text_snippets_are_outputs_a_test_makes(snippet: Snippet) -> None:
    first = snippet.text.splitlines()[0]
    assert first in TEXT_CHECKS, f"{snippet}: no test makes the output of {first!r}"
    assert first in (ROOT / TEXT_CHECKS[first]).read_text()
