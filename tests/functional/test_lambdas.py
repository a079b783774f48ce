"""The role handlers, called as Lambda would call them, over a workflow whose spills go to a
folder: the scheduler's atomic wave reservations, wave sizing, error names for the ASL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from polyroute.budget import BudgetState
from polyroute.engine import EngineConfig
from polyroute.errors import OverloadedError
from polyroute.providers.simulated import FailurePlan, SimulatedProvider
from polyroute.registry import load_registry
from polyroute.routing import load_policy
from polyroute.schema import StepResult, Task, Usage
from polyroute.sfn_local import _Context, load_handlers, runtime_module
from polyroute.spill import DirStore, Spiller
from polyroute.workflow import MAX_WAVE_STEPS, Workflow

pytest.importorskip("aws_lambda_powertools")


@pytest.fixture
def handlers(tmp_path: Path) -> Iterator[Any]:
    found = load_handlers()
    sim = SimulatedProvider(time_scale=0.0, failures=FailurePlan.parse(["claude-haiku-4-5=529x1"]))
    cfg = EngineConfig(registry=load_registry(), policy=load_policy(), provider_for=lambda _s: sim)
    wf = Workflow(cfg, Spiller(DirStore(tmp_path), 32 * 1024))
    runtime_module().use_workflow(wf)

    def call(name: str, event: dict[str, Any]) -> Any:
        return found[name](event, _Context(name))

    call.workflow = wf  # type: ignore[attr-defined]
    yield call
    runtime_module().use_workflow(None)


def fan_out(n: int, max_cost: float | None = None) -> dict[str, Any]:
    steps = [
        {"id": f"s{i}", "type": "analysis", "description": f"Analyse part {i}."} for i in range(n)
    ]
    constraints: dict[str, Any] = {"maxSteps": n + 1}
    if max_cost is not None:
        constraints["maxCostUsd"] = max_cost
    return Task.model_validate(
        {
            "taskId": "fan",
            "description": "Analyse the parts.",
            "plan": {"steps": steps},
            "constraints": constraints,
        }
    ).to_wire()


def first_wave(handlers: Any, task: dict[str, Any]) -> dict[str, Any]:
    started = handlers("classifier", {"task": task, "taskId": "fan"})
    planned = handlers("planner", started)
    out: dict[str, Any] = handlers("scheduler", planned)
    return out


def test_the_scheduler_reserves_a_whole_wave_within_the_budget(handlers: Any) -> None:
    unlimited = first_wave(handlers, fan_out(6))
    assert len(unlimited["ready"]) == 6
    one = unlimited["ready"][0]["call"]["reservedCostUsd"]
    # Room for three steps' worst case: the other three wait for the budget, not overspend.
    wave = first_wave(handlers, fan_out(6, max_cost=one * 3.5))
    state = handlers.workflow.load_state(wave["state"])
    reserved = sum(r.cost_usd for r in state.budget.reservations)
    assert reserved <= one * 3.5
    assert {item["stepId"] for item in wave["ready"]} <= {f"s{i}" for i in range(6)}
    assert wave["done"] is False
    skipped = [r for r in state.steps.values() if r.result.status == "skipped" and r.result.error]
    assert len(wave["ready"]) + len(skipped) == 6
    assert BudgetState.model_validate(state.budget.to_wire()).reservations


def test_a_huge_wave_is_capped_and_its_outcomes_sized_to_fit_the_state(handlers: Any) -> None:
    wave = first_wave(handlers, fan_out(MAX_WAVE_STEPS + 20))
    assert len(wave["ready"]) == MAX_WAVE_STEPS
    assert wave["ready"][0]["inlineLimit"] * MAX_WAVE_STEPS <= 128 * 1024
    assert wave["maxConcurrency"] >= 1


def test_the_executor_raises_provider_errors_by_their_own_name(handlers: Any) -> None:
    wave = first_wave(handlers, fan_out(1))
    item = wave["ready"][0]
    routed = handlers("router", {"item": item, "state": wave["state"]})
    packed = handlers("compressor", routed)
    if routed["call"]["model"] == "claude-haiku-4-5":
        with pytest.raises(OverloadedError):
            handlers("model_executor", {**packed, "retryCount": 0})
    outcome = handlers("model_executor", {**packed, "retryCount": 1})
    assert outcome["status"] == "succeeded"
    assert outcome["result"]["attempts"] == 2
    assert outcome["completed"]["agentId"] == "s0"


def test_the_router_re_routes_after_a_caught_retryable_error(handlers: Any) -> None:
    wave = first_wave(handlers, fan_out(1))
    routed = handlers("router", {"item": wave["ready"][0], "state": wave["state"]})
    packed = handlers("compressor", routed)
    error = {
        "Error": "OverloadedError",
        "Cause": '{"errorMessage": "529 overloaded_error", "errorType": "OverloadedError"}',
    }
    answer = handlers("router", {**packed, "error": error})
    first = routed["call"]["model"]
    if answer["next"] == "compress":
        assert answer["call"]["model"] != first
        assert answer["call"]["fallbackFrom"] == first
        assert answer["call"]["attempts"] == 3
    else:
        outcome = answer["outcome"]
        assert outcome["status"] == "fallback" and outcome["call"]["model"] != first


def test_a_non_retryable_error_closes_the_step_with_its_message(handlers: Any) -> None:
    wave = first_wave(handlers, fan_out(1))
    routed = handlers("router", {"item": wave["ready"][0], "state": wave["state"]})
    packed = handlers("compressor", routed)
    error = {
        "Error": "InvalidRequestError",
        "Cause": '{"errorMessage": "400 bad request", "errorType": "InvalidRequestError"}',
    }
    answer = handlers("router", {**packed, "error": error})
    assert answer["next"] == "done"
    assert answer["outcome"]["status"] == "failed"
    assert answer["outcome"]["error"] == "400 bad request"
    assert answer["outcome"]["result"]["attempts"] == 1


def test_step_metrics_report_tokens_and_cost_by_model() -> None:
    load_handlers()
    runtime = runtime_module()
    result = StepResult(
        step_id="s",
        description="d",
        status="succeeded",
        model="claude-haiku-4-5",
        usage=Usage(input_tokens=120, output_tokens=30),
        cost_usd=0.0012,
        attempts=1,
    )
    runtime.step_metrics(result)
    metric_set = runtime.metrics.metric_set
    try:
        assert metric_set["StepInputTokens"]["Value"] == [120.0]
        assert metric_set["StepCostUsd"]["Value"] == [0.0012]
        assert runtime.metrics.dimension_set["model"] == "claude-haiku-4-5"
    finally:
        runtime.metrics.clear_metrics()
