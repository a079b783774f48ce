"""Run a task on the real state machine, locally: moto's Step Functions interpreter executes
``statemachines/orchestrator.asl.json``, every Lambda task is dispatched in-process to the
real handler in ``lambdas/``, and spilled payloads go to moto's S3.

moto's Lambda cannot run code without Docker, so ``lambda.Invoke`` is intercepted with a
botocore ``before-send`` hook that calls the handler and answers as Lambda would (a raised
error becomes ``X-Amz-Function-Error`` with its class name as ``errorType``, which is what
the ASL's ``Retry``/``Catch`` match). moto has no ``StartSyncExecution``: the run starts and
polls ``DescribeExecution``. The result is the same ``RunResult`` the local engine returns.

Needs a source checkout (``lambdas/`` and ``statemachines/`` beside the package) and moto
(the ``dev`` extra); both are looked for only when this engine is asked for.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import unquote

from polyroute import errors
from polyroute.circuit import CircuitBreaker, SharedCircuitBreaker, create_breaker_table
from polyroute.engine import EngineConfig
from polyroute.errors import ConfigError, PolyrouteError
from polyroute.schema import RunResult, Task
from polyroute.spill import DEFAULT_THRESHOLD_BYTES, S3Store, Spiller
from polyroute.workflow import ResultStore, Workflow

REGION = "us-east-1"
ACCOUNT = "123456789012"
BUCKET = "polyroute-local"
BREAKER_TABLE = "polyroute-local-breaker"
ROOT = Path(__file__).resolve().parents[1]
ORCHESTRATOR_ASL = ROOT / "statemachines" / "orchestrator.asl.json"
LAMBDAS_DIR = ROOT / "lambdas"

# Function construct name (as in ``${ClassifierFunctionArn}``) -> handler module in lambdas/.
FUNCTIONS = {
    "Classifier": "classifier",
    "Planner": "planner",
    "Scheduler": "scheduler",
    "Router": "router",
    "Compressor": "compressor",
    "ModelExecutor": "model_executor",
    "Finalizer": "finalizer",
    "Batch": "batch",
}
_QUIET_ENV = {
    "POWERTOOLS_TRACE_DISABLED": "true",
    "POWERTOOLS_METRICS_DISABLED": "true",
    "POWERTOOLS_LOG_LEVEL": "ERROR",
    "POWERTOOLS_SERVICE_NAME": "polyroute-local",
    "AWS_DEFAULT_REGION": REGION,
}
_NAME_OK = re.compile(r"[^A-Za-z0-9_.-]")


def function_arn(construct: str) -> str:
    """The ARN a function gets in the local account."""
    return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:polyroute-{FUNCTIONS[construct]}"


def substitutions(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Every ``${...FunctionArn}`` of the ASL, as this local account names the functions."""
    subs = {f"{name}FunctionArn": function_arn(name) for name in FUNCTIONS}
    subs["BucketName"] = BUCKET
    subs.update(extra or {})
    return subs


def substitute(definition: str, subs: dict[str, str]) -> str:
    """Replace ``${Name}`` placeholders (as CloudFormation's DefinitionSubstitutions do)."""
    missing = sorted(set(re.findall(r"\$\{([A-Za-z0-9]+)\}", definition)) - set(subs))
    if missing:
        raise ConfigError(f"no substitution for {', '.join(missing)}")
    for key, value in subs.items():
        definition = definition.replace("${" + key + "}", value)
    return definition


class _Context:
    """Enough of a Lambda context for Powertools."""

    def __init__(self, name: str) -> None:
        self.function_name = f"polyroute-{name}"
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"
        self.memory_limit_in_mb = 1024
        self.aws_request_id = uuid.uuid4().hex
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = "local"

    def get_remaining_time_in_millis(self) -> int:
        return 300_000


def _require_moto() -> ModuleType:
    try:
        import moto
    except ImportError:
        raise ConfigError(
            "--engine stepfunctions-local needs moto: pip install -e '.[dev]'"
        ) from None
    return moto


def load_handlers(lambdas_dir: Path = LAMBDAS_DIR) -> dict[str, Callable[..., Any]]:
    """The real handlers, imported from ``lambdas/`` (module name -> handler)."""
    if not (lambdas_dir / "polyroute_runtime.py").is_file():
        raise ConfigError(
            f"{lambdas_dir.name}/ not found beside the package: the stepfunctions-local "
            "engine runs from a source checkout"
        )
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    if str(lambdas_dir) not in sys.path:
        sys.path.insert(0, str(lambdas_dir))
    handlers: dict[str, Callable[..., Any]] = {}
    for module in [*FUNCTIONS.values(), "api"]:
        path = lambdas_dir / f"{module}.py"
        if not path.is_file():
            continue
        name = f"_polyroute_lambda_{module}"
        mod = sys.modules.get(name)
        if mod is None:
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec is not None and spec.loader is not None
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod
            spec.loader.exec_module(mod)
        handlers[module] = mod.handler
    return handlers


def runtime_module() -> Any:
    """``lambdas/polyroute_runtime.py`` (after ``load_handlers``)."""
    import polyroute_runtime  # type: ignore[import-not-found]

    return polyroute_runtime


class LambdaDispatcher:
    """A botocore ``before-send`` hook that runs ``lambda.Invoke`` in-process."""

    def __init__(self, handlers: dict[str, Callable[..., Any]]) -> None:
        self.handlers = handlers
        self.calls: list[tuple[str, int, int]] = []

    def __call__(self, request: Any, **_: Any) -> Any:
        from botocore.awsrequest import AWSResponse
        from moto.core.botocore_stubber import MockRawResponse

        match = re.search(r"/functions/([^/]+)/invocations", request.url)
        if match is None:
            return None
        name = unquote(match.group(1)).rsplit(":", 1)[-1].removeprefix("polyroute-")
        handler = self.handlers.get(name)
        if handler is None:
            return None
        body = request.body or b"{}"
        raw_in = body if isinstance(body, bytes) else str(body).encode()
        event = json.loads(raw_in or b"{}")
        headers = {"Content-Type": "application/json", "X-Amz-Executed-Version": "$LATEST"}
        try:
            out = handler(event, _Context(name))
            payload = json.dumps(out, separators=(",", ":"), default=str).encode()
        except Exception as exc:
            payload = json.dumps(
                {"errorMessage": str(exc), "errorType": type(exc).__name__, "stackTrace": []}
            ).encode()
            headers["X-Amz-Function-Error"] = "Unhandled"
        self.calls.append((name, len(raw_in), len(payload)))
        return AWSResponse(request.url, 200, headers, MockRawResponse(payload))


class LocalStepFunctions:
    """moto's Step Functions and S3 with the real ASL and handlers, inside ``mock_aws``."""

    def __init__(self, cfg: EngineConfig, threshold: int = DEFAULT_THRESHOLD_BYTES) -> None:
        self.cfg = cfg
        self.threshold = threshold
        self.handlers = load_handlers()
        self.dispatcher = LambdaDispatcher(self.handlers)
        self.sfn: Any = None
        self.s3: Any = None
        self.workflow: Workflow | None = None

    @contextmanager
    def running(self) -> Iterator[LocalStepFunctions]:
        """Start the mocks, the clients, the bucket and the hook; stop them after."""
        moto = _require_moto()
        import boto3

        saved = {k: os.environ.get(k) for k in _QUIET_ENV}
        # moto logs a failed execution as an error; here it is an answer, raised as such.
        moto_log = logging.getLogger("moto")
        saved_level = moto_log.level
        moto_log.setLevel(logging.CRITICAL)
        for key, value in _QUIET_ENV.items():
            os.environ.setdefault(key, value)
        with moto.mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
            session = boto3._get_default_session()
            session.events.register_first("before-send.lambda.Invoke", self.dispatcher)
            try:
                self.s3 = boto3.client("s3", region_name=REGION)
                self.sfn = boto3.client("stepfunctions", region_name=REGION)
                self.s3.create_bucket(Bucket=BUCKET)
                self.workflow = Workflow(
                    self._shared_breaker(boto3.client("dynamodb", region_name=REGION)),
                    Spiller(S3Store(BUCKET, client=self.s3), self.threshold),
                    concurrency=self.cfg.concurrency,
                    results=ResultStore(BUCKET, self.s3),
                )
                runtime_module().use_workflow(
                    self.workflow, {"s3": self.s3, "stepfunctions": self.sfn}
                )
                yield self
            finally:
                session.events.unregister("before-send.lambda.Invoke", self.dispatcher)
                runtime_module().use_workflow(None)
                moto_log.setLevel(saved_level)
                for key, old in saved.items():
                    if old is None:
                        os.environ.pop(key, None)
        for key, old in saved.items():
            if old is not None:
                os.environ[key] = old

    def _shared_breaker(self, dynamodb: Any) -> EngineConfig:
        """The configuration with its in-process breaker swapped for the deployed kind, a
        ``SharedCircuitBreaker`` over a table in moto, with the same settings."""
        local = self.cfg.breaker
        if not isinstance(local, CircuitBreaker):
            return self.cfg
        create_breaker_table(dynamodb, BREAKER_TABLE)
        shared = SharedCircuitBreaker(
            BREAKER_TABLE, local.threshold, local.window_s, local.cooldown_s, client=dynamodb
        )
        return replace(self.cfg, breaker=shared)

    def create(self, definition: str, name: str, kind: str = "EXPRESS") -> str:
        """Create a state machine; return its ARN."""
        arn: str = self.sfn.create_state_machine(
            name=name,
            definition=definition,
            roleArn=f"arn:aws:iam::{ACCOUNT}:role/polyroute-{name}",
            type=kind,
        )["stateMachineArn"]
        return arn

    def orchestrator(self, kind: str = "EXPRESS") -> str:
        """The orchestrator state machine, from the real ASL file (``STANDARD`` as the
        deployed ``OrchestratorStandard`` for long asynchronous tasks)."""
        text = substitute(ORCHESTRATOR_ASL.read_text(encoding="utf-8"), substitutions())
        name = "polyroute-orchestrator" + ("" if kind == "EXPRESS" else f"-{kind.lower()}")
        return self.create(text, name, kind)

    def batch_machine(self, definition: str) -> str:
        """The batch workflow (Standard). moto's interpreter knows no ``EXPRESS`` execution
        type for a Distributed Map's children, so they run as ``STANDARD`` here: the one
        difference from the deployed definition."""
        text = substitute(definition, substitutions()).replace(
            '"ExecutionType": "EXPRESS"', '"ExecutionType": "STANDARD"'
        )
        return self.create(text, "polyroute-batch", "STANDARD")

    def start(self, machine: str, payload: Any, name: str) -> str:
        arn: str = self.sfn.start_execution(
            stateMachineArn=machine, name=name, input=json.dumps(payload)
        )["executionArn"]
        return arn

    def wait(self, execution: str, timeout_s: float = 600.0) -> dict[str, Any]:
        """Poll until the execution ends (moto has no StartSyncExecution)."""
        end = time.monotonic() + timeout_s
        while True:
            desc: dict[str, Any] = self.sfn.describe_execution(executionArn=execution)
            if desc["status"] != "RUNNING":
                return desc
            if time.monotonic() > end:
                raise PolyrouteError(f"execution did not finish within {timeout_s:.0f}s")
            time.sleep(0.02)

    def history(self, execution: str) -> list[dict[str, Any]]:
        """Every event of an execution."""
        events: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"executionArn": execution, "maxResults": 1000}
        while True:
            page = self.sfn.get_execution_history(**kwargs)
            events.extend(page["events"])
            if not page.get("nextToken"):
                return events
            kwargs["nextToken"] = page["nextToken"]

    def result(self, desc: dict[str, Any]) -> RunResult:
        """The RunResult of a finished execution, or the error it failed with, raised."""
        if desc["status"] != "SUCCEEDED":
            raise execution_error(desc.get("error"), desc.get("cause"), desc["status"])
        assert self.workflow is not None
        output = self.workflow.spiller.resolve(json.loads(desc["output"]))
        return RunResult.model_validate(output)

    def run(self, task: Task) -> tuple[RunResult, str]:
        """Run one task on the orchestrator; its result and execution ARN."""
        machine = self.orchestrator()
        task_id = task.task_id or uuid.uuid4().hex[:12]
        name = _NAME_OK.sub("-", task_id)[:80]
        execution = self.start(machine, {"task": task.to_wire(), "taskId": task_id}, name)
        return self.result(self.wait(execution)), execution


def execution_error(error: str | None, cause: str | None, status: str) -> PolyrouteError:
    """The polyroute error a failed execution ended with (by its class name), so the CLI
    answers as the local engine does (a cycle is exit 2 with the cycle named)."""
    cls = getattr(errors, error or "", None)
    message = cause or f"execution {status.lower()}"
    if isinstance(cls, type) and issubclass(cls, PolyrouteError):
        return cls(message)
    return PolyrouteError(f"{error or status}: {message}")


def run_on_stepfunctions_local(task: Task, cfg: EngineConfig) -> RunResult:
    """Run ``task`` on the real ASL under moto, each Lambda in-process; same RunResult."""
    local = LocalStepFunctions(cfg)
    with local.running():
        result, _ = local.run(task)
    return result
