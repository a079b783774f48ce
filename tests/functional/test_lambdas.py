"""The role handlers, called as Lambda would call them, over a workflow whose spills go to a
folder: the scheduler's atomic wave reservations, wave sizing, error names for the ASL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from polyroute.budget import BudgetState
from polyroute.cost import call_cost
from polyroute.engine import EngineConfig
from polyroute.errors import OverloadedError
from polyroute.providers.simulated import FailurePlan, SimulatedProvider
from polyroute.registry import load_registry
from polyroute.routing import load_policy
from polyroute.schema import StepResult, Task, Usage
from polyroute.sfn_local import _Context, load_handlers, runtime_module
from polyroute.spill import DirStore, Spiller
from polyroute.taskfile import load_task
from polyroute.workflow import MAX_WAVE_STEPS, Workflow

from ..conftest import EXAMPLES

pytest.importorskip("aws_lambda_powertools")


@pytest.fixture
def make_handlers(tmp_path: Path) -> Iterator[Callable[[list[str]], Any]]:
    """Handlers over a workflow whose simulated provider fails as ``failures`` say."""
    found = load_handlers()

    def make(failures: list[str]) -> Any:
        sim = SimulatedProvider(time_scale=0.0, failures=FailurePlan.parse(failures))
        cfg = EngineConfig(
            registry=load_registry(), policy=load_policy(), provider_for=lambda _s: sim
        )
        wf = Workflow(cfg, Spiller(DirStore(tmp_path), 32 * 1024))
        runtime_module().use_workflow(wf)

        def call(name: str, event: dict[str, Any]) -> Any:
            return found[name](event, _Context(name))

        call.workflow = wf  # type: ignore[attr-defined]
        return call

    yield make
    runtime_module().use_workflow(None)


@pytest.fixture
def handlers(make_handlers: Callable[[list[str]], Any]) -> Any:
    return make_handlers(["claude-haiku-4-5=529x1"])


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
    answer = handlers("model_executor", {**packed, "retryCount": 1})
    assert answer["next"] == "done"
    outcome = answer["outcome"]
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


def test_a_billed_answer_before_a_fallback_is_charged_once(
    make_handlers: Callable[[list[str]], Any],
) -> None:
    """The cut-off answer was billed, then its repair hit 529s until its retries (made in
    the executor, as the local engine makes them) ran out: the executor takes the Catch's
    path itself, so the billing travels with the next model's call, the budget is charged
    it when the step is requeued, and the step's result carries both calls."""
    handlers = make_handlers(["claude-haiku-4-5=truncated", "claude-haiku-4-5=529x3"])
    task = load_task(EXAMPLES / "code_review.json").to_wire()
    started = handlers("classifier", {"task": task, "taskId": "cr"})
    wave = handlers("scheduler", handlers("planner", started))
    routed = handlers("router", {"item": wave["ready"][0], "state": wave["state"]})
    assert routed["call"]["model"] == "claude-haiku-4-5"
    answer = handlers("model_executor", {**handlers("compressor", routed), "retryCount": 0})
    # The next model's worst case is more than was reserved: requeued for the next wave.
    outcome = answer["outcome"]
    assert (answer["next"], outcome["status"]) == ("done", "fallback")
    call = outcome["call"]
    assert call["model"] != "claude-haiku-4-5" and call["fallbackFrom"] == "claude-haiku-4-5"
    billed = Usage.model_validate(call["billed"])
    billed_cost = call_cost(load_registry().get("claude-haiku-4-5"), billed)
    assert billed.output_tokens > 0
    assert call["billedCostUsd"] == outcome["costExactUsd"] == pytest.approx(billed_cost)

    wave = handlers("scheduler", {"state": wave["state"], "wave": [outcome]})
    budget = handlers.workflow.load_state(wave["state"]).budget
    assert budget.cost_used_usd == pytest.approx(billed_cost)
    assert budget.tokens_used == billed.total
    item = next(i for i in wave["ready"] if i["stepId"] == routed["item"]["stepId"])
    assert item["call"]["billed"] == call["billed"]

    routed = handlers("router", {"item": item, "state": wave["state"]})
    answer = handlers("model_executor", {**handlers("compressor", routed), "retryCount": 0})
    outcome = answer["outcome"]
    assert outcome["status"] == "succeeded"
    usage = Usage.model_validate(outcome["result"]["usage"])
    assert usage.output_tokens > billed.output_tokens
    assert outcome["costExactUsd"] > billed_cost
    others = [o for o in wave["ready"] if o["stepId"] != item["stepId"]]
    after = handlers("scheduler", {"state": wave["state"], "wave": [outcome]})
    budget = handlers.workflow.load_state(after["state"]).budget
    # Charged once: the billed answer at the requeue, the rest now.
    assert budget.cost_used_usd == pytest.approx(outcome["costExactUsd"])
    assert budget.tokens_used == usage.total
    assert budget.steps_used == 1
    assert len(budget.reservations) == len(others) + len(after["ready"])


def test_parallel_steps_of_a_wave_repair_only_from_their_share_of_what_is_left(
    make_handlers: Callable[[list[str]], Any],
) -> None:
    """Map iterations cannot see each other's repair reservations: each may take only an
    equal share of what the wave left free, so together they never overspend."""
    from polyroute.budget import BudgetState, ReservationState

    wf = make_handlers([]).workflow
    state = BudgetState(
        max_steps=10,
        max_tokens=10_000,
        max_cost_usd=1.0,
        tokens_used=1_000,
        cost_used_usd=0.1,
        reservations=[
            ReservationState(step_id=f"s{i}", tokens=1_000, cost_usd=0.1) for i in range(3)
        ],
    )
    budget = wf._repair_budget(state)
    # 6,000 tokens and $0.60 free, three steps running: each may repair with a third.
    assert budget.tokens_left() == 2_000
    assert budget.cost_left_usd() == pytest.approx(0.2)
    alone = wf._repair_budget(state.model_copy(update={"reservations": state.reservations[:1]}))
    assert alone.tokens_left() == 8_000 and alone.cost_left_usd() == pytest.approx(0.8)
