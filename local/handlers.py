"""A function's handler as Lambda runs it: its module loaded from its code folder, and the context
object it is called with. The gateway (local.gateway) and the containers (local.containers) both
use these; this module imports neither."""

from __future__ import annotations

import importlib.util
import sys
import time
import uuid
from types import ModuleType

from local.template import ROOT, code_dir


class LocalContext:
    """The Lambda context attributes Powertools reads, and the time an invocation has left: its
    function's Timeout (`timeout_seconds`, template.yaml's Globals default) from when it is made."""

    function_version = "$LATEST"
    memory_limit_in_mb = 512

    def __init__(self, name: str = "local-function", timeout_seconds: float = 15.0) -> None:
        self.function_name = name
        self.invoked_function_arn = f"arn:aws:lambda:local:000000000000:function:{name}"
        self.aws_request_id = str(uuid.uuid4())
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def load_handler(
    function: str, module_name: str | None = None, *, code: str | None = None, file: str = "app.py"
) -> ModuleType:
    """Import a function's `<code>/app.py` (or `file`) as its own module: one container, with its own
    cold start.

    `code` is the function's code directory relative to the repository root (default: its CodeUri
    in template.yaml, e.g. functions/use_credits or examples/premium), or an absolute folder."""
    name = module_name or f"local_fn_{function}"
    directory = ROOT / (code if code is not None else code_dir(function))
    spec = importlib.util.spec_from_file_location(name, directory / file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
