"""Reads template.yaml, so the tests and the local stack use exactly the tables and routes deployed."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import yaml

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"

# Logical id of each table -> the environment variable that names it (docs/design.md section 7 (Configuration)).
TABLE_VARIABLES = {"CreditsTable": "CREDITS_TABLE_NAME", "IdempotencyTable": "IDEMPOTENCY_TABLE_NAME"}
STACK = "credits"  # the stack name a team's template imports from (`!ImportValue credits-...`, README)


class TemplateError(ValueError):
    """A team's template that `make dev` cannot serve, and why (a startup error, naming the cause)."""


class _CfnLoader(yaml.SafeLoader):
    """A YAML loader that keeps CloudFormation short-form tags (!Ref, !Sub, ...) as plain dicts."""


def _cfn_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {suffix: value}


_CfnLoader.add_multi_constructor("!", _cfn_tag)


def load(path: Path = TEMPLATE) -> dict[str, Any]:
    with path.open() as handle:
        data: dict[str, Any] = yaml.load(handle, Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass
    return data


def table_definitions(template: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """create_table arguments for each AWS::DynamoDB::Table, by logical id (without TableName)."""
    resources = (template or load())["Resources"]
    out: dict[str, dict[str, Any]] = {}
    for logical_id, resource in resources.items():
        if resource["Type"] != "AWS::DynamoDB::Table":
            continue
        props = resource["Properties"]
        definition: dict[str, Any] = {
            "AttributeDefinitions": props["AttributeDefinitions"],
            "KeySchema": props["KeySchema"],
            "BillingMode": props.get("BillingMode", "PAY_PER_REQUEST"),
        }
        if props.get("GlobalSecondaryIndexes"):
            definition["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
        stream = stream_specification(props)
        if stream:
            definition["StreamSpecification"] = stream
        out[logical_id] = definition
    return out


def stream_specification(table_properties: dict[str, Any]) -> dict[str, Any] | None:
    """create_table's StreamSpecification for a table's properties in the template, or None.
    (CloudFormation enables the stream by naming its view type; the API also wants the switch.)"""
    spec = table_properties.get("StreamSpecification") or {}
    view = spec.get("StreamViewType")
    return {"StreamEnabled": True, "StreamViewType": view} if view else None


def ttl_attribute(logical_id: str, template: dict[str, Any] | None = None) -> str | None:
    spec = (template or load())["Resources"][logical_id]["Properties"].get("TimeToLiveSpecification") or {}
    return spec.get("AttributeName") if spec.get("Enabled") else None


def create_tables(client: DynamoDBClient, names: dict[str, str]) -> None:
    """Create each table of the template under the given names (logical id -> name), if missing.
    A table kept from before the template gave it a stream, or one of its indexes, gets it now."""
    existing = set(client.list_tables().get("TableNames", []))
    for logical_id, definition in table_definitions().items():
        name = names[logical_id]
        if name in existing:
            _enable_stream(client, name, definition.get("StreamSpecification"))
            _add_indexes(client, name, definition)
            continue
        client.create_table(TableName=name, **definition)
        client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        attribute = ttl_attribute(logical_id)
        if attribute:
            client.update_time_to_live(
                TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": attribute}
            )


def _enable_stream(client: DynamoDBClient, name: str, wanted: dict[str, Any] | None) -> None:
    if wanted is None:
        return
    current = client.describe_table(TableName=name)["Table"].get("StreamSpecification")
    if current and current.get("StreamEnabled"):
        return
    client.update_table(TableName=name, StreamSpecification=wanted)  # type: ignore[arg-type]
    client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})


def _add_indexes(client: DynamoDBClient, name: str, definition: dict[str, Any]) -> None:
    """Create the template's global secondary indexes a kept table lacks (make dev's data from before
    the template had them), one at a time as DynamoDB requires, each waited for until active."""
    described = client.describe_table(TableName=name)["Table"]
    present = {index["IndexName"] for index in described.get("GlobalSecondaryIndexes", [])}
    for index in definition.get("GlobalSecondaryIndexes", []):
        if index["IndexName"] in present:
            continue
        used = {key["AttributeName"] for key in index["KeySchema"]}
        client.update_table(
            TableName=name,
            AttributeDefinitions=[a for a in definition["AttributeDefinitions"] if a["AttributeName"] in used],
            GlobalSecondaryIndexUpdates=[{"Create": index}],
        )
        _wait_index(client, name, index["IndexName"])


def _wait_index(client: DynamoDBClient, name: str, index: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        table = client.describe_table(TableName=name)["Table"]
        states = {i["IndexName"]: i.get("IndexStatus") for i in table.get("GlobalSecondaryIndexes", [])}
        if states.get(index) == "ACTIVE":
            return
        time.sleep(0.2)
    raise TimeoutError(f"index {index} of table {name} is not active after {timeout} s")


def _code(logical_id: str, properties: dict[str, Any], base: Path | None) -> str:
    """A function's code directory: its CodeUri as written (relative to the repository root) for
    template.yaml, or the absolute folder it names relative to `base` (another template's folder)."""
    uri = properties.get("CodeUri")
    if not isinstance(uri, str):
        raise TemplateError(f"{logical_id}: CodeUri must be a folder (a string), not {uri!r}")
    return Path(uri).as_posix() if base is None else (base / uri).resolve().as_posix()


def functions(template: dict[str, Any] | None = None, base: Path | None = None) -> dict[str, str]:
    """Every AWS::Serverless::Function of the template: its name (the last folder of its CodeUri) ->
    its code directory relative to the repository root (or, given the template's folder `base`, the
    absolute folder its CodeUri names from there). A function behind a CloudFormation `Condition` is
    listed too: locally everything is served."""
    data = template or load()
    out: dict[str, str] = {}
    for logical_id, resource in data["Resources"].items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        code = _code(logical_id, resource["Properties"], base)
        name = Path(code).name
        # The name keys the local container pools and module names, so two CodeUris may not share it.
        assert name not in out, f"{logical_id}: a second function named {name!r} ({code} and {out[name]})"
        out[name] = code
    return out


def function_timeouts(template: dict[str, Any] | None = None) -> dict[str, float]:
    """Every function's Timeout in seconds, by name, as Lambda gives it (its own, else the Globals',
    else Lambda's 3)."""
    data = template or load()
    default = ((data.get("Globals") or {}).get("Function") or {}).get("Timeout", 3)
    return {
        Path(_code(logical_id, resource["Properties"], None)).name: float(
            resource["Properties"].get("Timeout", default)
        )
        for logical_id, resource in data["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function"
    }


@lru_cache(maxsize=1)
def _template_timeouts() -> dict[str, float]:
    return function_timeouts()


def function_timeout(function: str) -> float:
    """The Timeout (seconds) of a function of template.yaml."""
    try:
        return _template_timeouts()[function]
    except KeyError:
        raise KeyError(f"no function {function!r} in {TEMPLATE.name}") from None


def function_variables(template: dict[str, Any] | None = None) -> frozenset[str]:
    """The name of every environment variable the template gives its functions (Globals' and theirs)."""
    data = template or load()
    found = [((data.get("Globals") or {}).get("Function") or {}).get("Environment")]
    for resource in data["Resources"].values():
        if resource["Type"] == "AWS::Serverless::Function":
            found.append((resource.get("Properties") or {}).get("Environment"))
    return frozenset(name for environment in found for name in ((environment or {}).get("Variables") or {}))


@lru_cache(maxsize=1)
def _template_functions() -> dict[str, str]:
    return functions()


def code_dir(function: str) -> str:
    """The code directory (relative to the repository root) of a function of template.yaml."""
    try:
        return _template_functions()[function]
    except KeyError:
        raise KeyError(f"no function {function!r} in {TEMPLATE.name}") from None


@dataclass(frozen=True)
class Route:
    """One HTTP API route of the template and the function that serves it."""

    method: str
    path: str  # as in the template: a `{name}` segment is a path parameter
    function: str  # the function's name: the last folder of its CodeUri
    auth: str  # "JWT", "NONE" or "AWS_IAM"
    code: str  # the function's code directory (its CodeUri, relative to the repository root)

    def match(self, path: str) -> dict[str, str] | None:
        """The path parameters (URL-decoded, as API Gateway passes them) if this route's path
        matches `path`, else None. A `{name}` segment matches exactly one non-empty segment."""
        pattern, actual = self.path.split("/"), path.split("/")
        if len(pattern) != len(actual):
            return None
        parameters: dict[str, str] = {}
        for expected, segment in zip(pattern, actual, strict=True):
            if expected.startswith("{") and expected.endswith("}"):
                if not segment:
                    return None
                parameters[expected[1:-1]] = unquote(segment)
            elif expected != segment:
                return None
        return parameters

    @property
    def parameters(self) -> int:
        """How many path parameters the route has (0 for an exact route)."""
        return self.path.count("{")


def match_route(routes: Mapping[tuple[str, str], Route], method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    """The route serving a request, keyed by (method, template path), and its path parameters: an
    exact route first, else the matching templated route with the fewest parameters."""
    exact = routes.get((method, path))
    if exact is not None and not exact.parameters:  # a literal `{holdId}` in a request is no parameter
        return exact, {}
    for route in sorted(routes.values(), key=lambda r: r.parameters):
        parameters = route.match(path) if route.method == method and route.parameters else None
        if parameters is not None:
            return route, parameters
    return None


def routes(
    template: dict[str, Any] | None = None, base: Path | None = None, *, internal_iam: bool = False
) -> list[Route]:
    """Every HttpApi event of every function in the template (conditions are ignored). `base`: the
    template's folder, for another template than ours (see `functions`). With `internal_iam`, a route
    that names no authorizer is an IAM route under /internal (as ours are), else a JWT route."""
    data = template or load()
    code = functions(data, base)
    out: list[Route] = []
    for logical_id, resource in data["Resources"].items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        function = Path(_code(logical_id, resource["Properties"], base)).name
        for event in (resource["Properties"].get("Events") or {}).values():
            if event["Type"] != "HttpApi":
                continue
            props = event["Properties"]
            internal = props["Path"] == "/internal" or props["Path"].startswith("/internal/")
            default_auth = "AWS_IAM" if internal_iam and internal else "JWT"
            authorizer = (props.get("Auth") or {}).get("Authorizer", default_auth)
            auth = authorizer if authorizer in ("NONE", "AWS_IAM") else "JWT"
            out.append(Route(props["Method"].upper(), props["Path"], function, auth, code[function]))
    return out


def http_functions(template: dict[str, Any] | None = None) -> set[str]:
    """The functions served over HTTP: those with an HttpApi route or a Function URL (the webhook).
    Others (the events function, which a stream invokes) need no container behind the gateway."""
    data = template or load()
    out: set[str] = set()
    for resource in data["Resources"].values():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        props = resource["Properties"]
        events = (props.get("Events") or {}).values()
        if props.get("FunctionUrlConfig") or any(event["Type"] == "HttpApi" for event in events):
            out.add(Path(props["CodeUri"]).name)
    return out


@dataclass(frozen=True)
class StreamSource:
    """One `DynamoDB` event of a function in the template: which table's stream invokes it, and how."""

    function: str  # the function's name: the last folder of its CodeUri
    code: str  # its code directory, relative to the repository root
    table: str  # the logical id of the table whose stream it reads
    batch_size: int
    starting_position: str  # TRIM_HORIZON or LATEST
    patterns: tuple[dict[str, Any], ...]  # FilterCriteria: a record is delivered if it matches one (all if none)
    report_batch_item_failures: bool


def _stream_table(stream: Any) -> str:
    """The table's logical id in `!GetAtt Table.StreamArn` (either form)."""
    target = stream.get("GetAtt", stream.get("Fn::GetAtt")) if isinstance(stream, dict) else None
    parts = target.split(".", 1) if isinstance(target, str) else target
    if not isinstance(parts, list) or len(parts) != 2 or parts[1] != "StreamArn":
        raise ValueError(f"a DynamoDB event's Stream must be !GetAtt <Table>.StreamArn, not {stream!r}")
    return str(parts[0])


def stream_sources(template: dict[str, Any] | None = None) -> list[StreamSource]:
    """Every DynamoDB stream event of every function in the template."""
    data = template or load()
    out: list[StreamSource] = []
    for resource in data["Resources"].values():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        props = resource["Properties"]
        code = Path(props["CodeUri"]).as_posix()
        for event in (props.get("Events") or {}).values():
            if event["Type"] != "DynamoDB":
                continue
            source = event["Properties"]
            filters = (source.get("FilterCriteria") or {}).get("Filters") or []
            out.append(
                StreamSource(
                    function=Path(code).name,
                    code=code,
                    table=_stream_table(source["Stream"]),
                    batch_size=int(source.get("BatchSize", 100)),
                    starting_position=source["StartingPosition"],
                    patterns=tuple(json.loads(f["Pattern"]) for f in filters),
                    report_batch_item_failures="ReportBatchItemFailures" in (source.get("FunctionResponseTypes") or []),
                )
            )
    return out


def stream_source(function: str, template: dict[str, Any] | None = None) -> StreamSource:
    """The one stream event of a function (e.g. `events`)."""
    found = [s for s in stream_sources(template) if s.function == function]
    if len(found) != 1:
        raise KeyError(f"{function!r} has {len(found)} DynamoDB stream events in {TEMPLATE.name}, not one")
    return found[0]


# ---- a team's own template, served by `make dev ARGS='--template PATH'` beside ours ---------------

_SUB_NAME = re.compile(r"\$\{([^}!][^}]*)\}")


@dataclass(frozen=True)
class TeamFunction:
    """One function of a team's template, as the local gateway runs it."""

    logical_id: str
    name: str  # the last folder of its CodeUri
    code: str  # the absolute folder its CodeUri names, from the template's folder
    handler: str  # `module.function`, e.g. app.lambda_handler
    environment: dict[str, str]  # its Variables (Globals' and its own), resolved as on AWS


@dataclass(frozen=True)
class TeamTemplate:
    path: Path
    functions: list[TeamFunction]
    routes: list[Route]  # JWT routes unless under /internal (IAM), or the Authorizer they name


def exports(template: dict[str, Any] | None = None, stack: str = STACK) -> set[str]:
    """The export names of our template's Outputs, as a stack named `stack` exports them."""
    out: set[str] = set()
    for output in (template or load())["Outputs"].values():
        name = (output.get("Export") or {}).get("Name")
        sub = name.get("Sub") if isinstance(name, dict) else name
        if isinstance(sub, str):
            out.add(sub.replace("${AWS::StackName}", stack))
    return out


def _intrinsic(value: dict[str, Any]) -> tuple[str, Any]:
    """(`ImportValue`, its argument) for `!ImportValue x` or `{"Fn::ImportValue": x}`; ("", value) if
    the mapping is no intrinsic function."""
    if len(value) != 1:
        return "", value
    ((key, argument),) = value.items()
    return str(key).removeprefix("Fn::"), argument


class _Resolver:
    """Resolves a team template's values as CloudFormation would, from what make dev knows: the
    exports of our stack (`imports`: name -> local value, None where it has none to give), the
    template's own Parameters' defaults and the region. Anything else is a TemplateError naming it."""

    def __init__(self, path: Path, data: dict[str, Any], imports: Mapping[str, str | None], region: str) -> None:
        self.path, self.imports = path, imports
        self.parameters = {
            name: spec["Default"]
            for name, spec in (data.get("Parameters") or {}).items()
            if isinstance(spec, dict) and "Default" in spec
        }
        self.pseudo = {"AWS::Region": region, "AWS::AccountId": "000000000000", "AWS::StackName": "local"}

    def error(self, where: str, problem: str) -> TemplateError:
        return TemplateError(f"{self.path}: {where}: {problem}")

    def check_imports(self, where: str, node: Any) -> None:
        """Every `!ImportValue` under `node` names an export of our stack (Layers, Policies...)."""
        if isinstance(node, dict):
            kind, argument = _intrinsic(node)
            if kind == "ImportValue":
                self.import_value(where, argument, use=False)
                return
            for value in node.values():
                self.check_imports(where, value)
        elif isinstance(node, list):
            for value in node:
                self.check_imports(where, value)

    def import_value(self, where: str, argument: Any, *, use: bool = True) -> str:
        name = self.value(where, argument)
        if name not in self.imports:
            known = ", ".join(sorted(self.imports))
            raise self.error(where, f"!ImportValue {name}: not an export of stack {STACK!r} (it exports {known})")
        found = self.imports[name]
        if found is None and use:
            raise self.error(where, f"!ImportValue {name} has no local value to give an environment variable")
        return found or ""

    def ref(self, where: str, name: str) -> str:
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.parameters:
            return self.value(where, self.parameters[name])
        raise self.error(where, f"!Ref {name}: unknown locally (not a Parameter with a Default of this template)")

    def value(self, where: str, node: Any) -> str:
        """A Variables value as the function reads it (a string)."""
        if isinstance(node, bool):
            return "true" if node else "false"
        if isinstance(node, str | int | float):
            return str(node)
        if isinstance(node, dict):
            kind, argument = _intrinsic(node)
            if kind == "ImportValue":
                return self.import_value(where, argument)
            if kind == "Ref" and isinstance(argument, str):
                return self.ref(where, argument)
            if kind == "Sub":
                text, names = (argument, {}) if isinstance(argument, str) else (argument[0], argument[1])
                local = {k: self.value(where, v) for k, v in names.items()}

                def substitute(match: re.Match[str]) -> str:
                    name = match[1]
                    if name in local:
                        return local[name]
                    if "." in name:
                        raise self.error(where, f"!Sub ${{{name}}}: unknown locally (a resource's attribute)")
                    try:
                        return self.ref(where, name)
                    except TemplateError:
                        raise self.error(where, f"!Sub ${{{name}}}: unknown locally") from None

                return _SUB_NAME.sub(substitute, str(text)).replace("${!", "${")
            raise self.error(where, f"{kind or node!r} cannot be resolved locally ({node!r})")
        raise self.error(where, f"{node!r} is not a value an environment variable can have")


def team_template(path: Path, imports: Mapping[str, str | None], *, region: str = "us-east-1") -> TeamTemplate:
    """A team's SAM template: its functions with HttpApi routes (CodeUri from the template's folder),
    their environment resolved (see _Resolver), their routes. TemplateError for what cannot be served."""
    path = path.resolve()
    data = _team_data(path)
    base = path.parent
    resolver = _Resolver(path, data, imports, region)
    globals_ = (data.get("Globals") or {}).get("Function") or {}
    try:
        served = routes(data, base, internal_iam=True)
    except AssertionError as exc:  # two functions with one CodeUri folder name
        raise TemplateError(f"{path}: {exc}") from None
    except (KeyError, TypeError) as exc:
        raise TemplateError(f"{path}: an HttpApi event needs Path and Method ({exc})") from None
    named = {route.function for route in served}
    out: list[TeamFunction] = []
    for logical_id, resource in data["Resources"].items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        props = resource.get("Properties") or {}
        code = _code(logical_id, props, base)
        if Path(code).name in named:  # else no HttpApi route: nothing of the gateway's
            out.append(_team_function(path, logical_id, props, code, globals_, resolver))
    if not out:
        raise TemplateError(f"{path}: no AWS::Serverless::Function with an HttpApi event")
    return TeamTemplate(path, out, served)


def _team_data(path: Path) -> dict[str, Any]:
    """A team's template, read; TemplateError if there is none, it is not YAML or it has no Resources."""
    if not path.is_file():
        raise TemplateError(f"{path}: no such template")
    try:
        data = load(path)
    except yaml.YAMLError as exc:
        raise TemplateError(f"{path}: not YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("Resources"), dict):
        raise TemplateError(f"{path}: no Resources")
    return data


def _team_function(
    path: Path, logical_id: str, props: dict[str, Any], code: str, globals_: dict[str, Any], resolver: _Resolver
) -> TeamFunction:
    """One function of a team's template: its imports checked, its environment (the Globals' and
    its own Variables) resolved, its Handler's module found in its code folder."""
    resolver.check_imports(logical_id, {k: props.get(k) for k in ("Layers", "Policies")})
    shared = (globals_.get("Environment") or {}).get("Variables") or {}
    variables = {**shared, **((props.get("Environment") or {}).get("Variables") or {})}
    environment = {name: resolver.value(f"{logical_id}: {name}", v) for name, v in variables.items()}
    handler = str(props.get("Handler") or globals_.get("Handler") or "")
    module, _, attribute = handler.rpartition(".")
    if not module or not attribute or not (Path(code) / f"{module.replace('.', '/')}.py").is_file():
        raise TemplateError(f"{path}: {logical_id}: Handler {handler!r}: no {module or '?'}.py in {code}")
    return TeamFunction(logical_id, Path(code).name, code, handler, environment)
