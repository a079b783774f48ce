"""The shared request set against the deployed path, under moto: each request becomes an API
Gateway REST proxy event for the real ``lambdas/api.py`` handler, whose Step Functions client
runs the real orchestrator ASL on moto's interpreter (every Lambda task in-process, statuses
and spills in moto S3, the simulated provider at a tiny time scale). moto does not apply API
Gateway's request validator, so every POST body is also checked against the stack's request
model (``gateway.py``): it must pass every body the function accepts."""

from __future__ import annotations

import base64
import json
import sys
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest

from polyroute.engine import EngineConfig
from polyroute.execute import RetryPolicy
from polyroute.providers.base import ModelRequest, ModelResponse
from polyroute.providers.simulated import SimulatedProvider
from polyroute.registry import load_registry
from polyroute.routing import load_policy
from polyroute.sfn_local import LocalStepFunctions, _Context, runtime_module

from .gateway import GatewayModel
from .request_set import Send, cases, run_request_set

pytest.importorskip("moto")

TASKS = "/v1/tasks"


class SyncStepFunctions:
    """A moto Step Functions client with ``start_sync_execution`` (which moto lacks): start,
    then poll ``describe_execution``, answering as StartSyncExecution does. Records every
    execution started, so a test can tell a replayed request from a second run."""

    def __init__(self, local: LocalStepFunctions) -> None:
        self.local = local
        self.started: list[tuple[str, str]] = []  # (execution name, execution ARN)

    def start_execution(self, **kwargs: Any) -> dict[str, Any]:
        out: dict[str, Any] = self.local.sfn.start_execution(**kwargs)
        self.started.append((kwargs["name"], out["executionArn"]))
        return out

    def start_sync_execution(self, **kwargs: Any) -> dict[str, Any]:
        arn = self.start_execution(**kwargs)["executionArn"]
        desc = self.local.wait(arn, timeout_s=60)
        keys = ("executionArn", "stateMachineArn", "name", "status", "output", "error", "cause")
        return {k: desc[k] for k in keys if k in desc}

    def wait_all(self) -> list[str]:
        """Every execution's final status, once all have ended."""
        return [self.local.wait(arn, timeout_s=60)["status"] for _, arn in self.started]


def proxy_event(
    method: str, path: str, headers: Mapping[str, str], body: bytes | None
) -> dict[str, Any]:
    """The event API Gateway's REST Lambda proxy integration hands the function."""
    url = urlsplit(path)
    query = dict(parse_qsl(url.query, keep_blank_values=True)) or None
    params: dict[str, str] | None = None
    if url.path == TASKS:
        resource = TASKS
    elif url.path.startswith(f"{TASKS}/") and "/" not in url.path[len(TASKS) + 1 :]:
        resource = TASKS + "/{taskId}"
        params = {"taskId": unquote(url.path[len(TASKS) + 1 :])}
    else:
        resource = url.path
    encoded = False
    text: str | None = None
    if body is not None:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text, encoded = base64.b64encode(body).decode("ascii"), True
    return {
        "resource": resource,
        "path": url.path,
        "httpMethod": method,
        "headers": dict(headers),
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": query,
        "multiValueQueryStringParameters": {k: [v] for k, v in (query or {}).items()} or None,
        "pathParameters": params,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": resource,
            "httpMethod": method,
            "path": f"/v1api{url.path}",
            "stage": "v1api",
        },
        "body": text,
        "isBase64Encoded": encoded,
    }


def config() -> EngineConfig:
    sim = SimulatedProvider(seed=0, time_scale=0.001)
    return EngineConfig(
        registry=load_registry(),
        policy=load_policy(),
        provider_for=lambda _spec: sim,
        retry=RetryPolicy(base_delay_s=0.001),
    )


@pytest.fixture
def deployed(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Send, SyncStepFunctions]]:
    local = LocalStepFunctions(config())
    with local.running():
        sfn = SyncStepFunctions(local)
        runtime_module().use_workflow(local.workflow, {"s3": local.s3, "stepfunctions": sfn})
        monkeypatch.setenv("POLYROUTE_EXPRESS_ARN", local.orchestrator())
        monkeypatch.setenv("POLYROUTE_STANDARD_ARN", local.orchestrator("STANDARD"))
        monkeypatch.setenv("POLYROUTE_SYNC_TIMEOUT_S", "25")
        handler = local.handlers["api"]

        def send(
            method: str, path: str, headers: Mapping[str, str], body: bytes | None
        ) -> tuple[int, Mapping[str, str], Any]:
            answer = handler(proxy_event(method, path, headers, body), _Context("api"))
            ctype = answer["headers"].get("Content-Type", "")
            assert "application/json" in ctype, f"content type {ctype!r}"
            return answer["statusCode"], answer["headers"], json.loads(answer["body"])

        try:
            yield send, sfn
        finally:
            # No execution may outlive the mocks (the async ones are not all polled).
            sfn.wait_all()


def test_request_set_passes_against_api_gateway_and_step_functions(
    deployed: tuple[Send, SyncStepFunctions],
) -> None:
    send, sfn = deployed
    gateway = GatewayModel()
    seen: list[tuple[str, str | None, int]] = []  # (body, API Gateway's refusal, the answer)

    def through_gateway(
        method: str, path: str, headers: Mapping[str, str], body: bytes | None
    ) -> tuple[int, Mapping[str, str], Any]:
        status, answer_headers, answer = send(method, path, headers, body)
        if method == "POST" and urlsplit(path).path == TASKS:
            shown = (body or b"")[:200].decode("utf-8", "replace")
            seen.append((shown, gateway.refusal(body), status))
        return status, answer_headers, answer

    outcomes = run_request_set(through_gateway, local_only=False)
    assert [o.case.name for o in outcomes] == [c.name for c in cases() if not c.local_only]
    # API Gateway lets through every body the function accepts (snake_case too), and what it
    # refuses the function would refuse as well: the two never disagree on a 2xx.
    for body, refusal, status in seen:
        if status in (200, 202):
            assert refusal is None, f"API Gateway would answer 400 to {body}: {refusal}"
        if refusal is not None:
            assert status == 400, f"the function answered {status} to {body}"
    assert any("task_id" in body and refusal is None for body, refusal, _ in seen)
    assert any("max_stepz" in body and refusal is not None for body, refusal, _ in seen)
    # Each task the API answered for ran exactly once: retries with an Idempotency-Key were
    # answered from the first task, not started (and paid for) again.
    answered = {
        o.body["taskId"] for o in outcomes if o.case.method == "POST" and o.status in (200, 202)
    }
    names = [name for name, _ in sfn.started]
    assert sorted(names) == sorted(answered)
    assert set(sfn.wait_all()) == {"SUCCEEDED"}


# --- Express's 5-minute limit, on the real ASL ----------------------------------------------------

START = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


class Clock:
    """The workflow's clock, moved only by model calls: no wall time in the test."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.lock = threading.Lock()

    def __call__(self) -> datetime:
        with self.lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.now += timedelta(seconds=seconds)


class SlowCalls:
    """The simulated provider, each call taking ``seconds`` on the injected clock."""

    name = "simulated"

    def __init__(self, inner: SimulatedProvider, clock: Clock, seconds: float) -> None:
        self.inner, self.clock, self.seconds = inner, clock, seconds

    async def request(self, req: ModelRequest) -> ModelResponse:
        response = await self.inner.request(req)
        self.clock.advance(self.seconds)
        return response


def chain(task_id: str, length: int) -> dict[str, Any]:
    """A plan of ``length`` steps, each waiting for the one before."""
    steps = [
        {"id": f"s{i}", "description": f"Part {i} of the essay."}
        | ({"dependsOn": [f"s{i - 1}"]} if i else {})
        for i in range(length)
    ]
    return {"taskId": task_id, "description": "An essay in parts.", "plan": {"steps": steps}}


def test_a_sync_run_that_would_outlast_express_ends_partial_at_its_deadline() -> None:
    """Three 200-second calls would take Express past its 5 minutes, where Step Functions
    stops the execution and nothing records it. Sent with the API's deadline, the run stops
    admitting steps at 280 s and is recorded ``partial`` with stop reason ``deadline``."""
    from polyroute.api import EXPRESS_LIMIT_S

    clock = Clock(START)
    provider = SlowCalls(SimulatedProvider(seed=0, time_scale=0.001), clock, seconds=200)
    cfg = EngineConfig(
        registry=load_registry(),
        policy=load_policy(),
        provider_for=lambda _spec: provider,
        retry=RetryPolicy(base_delay_s=0.001),
        clock=clock,
    )
    local = LocalStepFunctions(cfg)
    with local.running():
        assert local.workflow is not None and local.workflow.results is not None
        store = local.workflow.results
        module = sys.modules["_polyroute_lambda_api"]
        sfn = SyncStepFunctions(local)
        env = {
            "POLYROUTE_EXPRESS_ARN": local.orchestrator(),
            "POLYROUTE_STANDARD_ARN": local.orchestrator("STANDARD"),
        }
        body = json.dumps(chain("long-essay", 3)).encode()
        answer = module.route(
            proxy_event("POST", TASKS, {"Content-Type": "application/json"}, body),
            sfn=sfn,
            store=store,
            spiller=local.workflow.spiller,
            models=cfg.registry,
            env=env,
            now=START,
        )
        assert sfn.wait_all() == ["SUCCEEDED"]  # ended by the workflow itself, recorded
        recorded = store.get("long-essay")
    assert answer["statusCode"] == 200
    status = json.loads(answer["body"])
    assert status["status"] == "partial", status.get("error")
    result = status["result"]
    assert result["stopReason"] == "deadline"
    deadline = datetime.fromisoformat(result["budgets"]["deadline"])
    assert deadline == START + timedelta(seconds=EXPRESS_LIMIT_S)
    by_id = {s["stepId"]: s["status"] for s in result["steps"]}
    assert by_id["s0"] == "succeeded"
    assert by_id["s2"] == "skipped"  # never started: the deadline had passed
    assert recorded is not None and recorded.status == "partial"
