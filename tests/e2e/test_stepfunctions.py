"""The real orchestrator ASL, executed by moto's Step Functions interpreter, every Lambda
task dispatched in-process to the real handler, spills in moto S3."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import date
from typing import Any

import pytest

from polyroute.engine import Engine, EngineConfig
from polyroute.errors import CycleError, PlanValidationError, UnknownModelError
from polyroute.execute import RetryPolicy
from polyroute.providers.base import ModelRequest, ModelResponse
from polyroute.providers.simulated import FailurePlan, SimulatedProvider
from polyroute.registry import load_registry
from polyroute.routing import load_policy
from polyroute.schema import RunResult, Task, Usage
from polyroute.sfn_local import BUCKET, LocalStepFunctions, run_on_stepfunctions_local
from polyroute.taskfile import load_task
from polyroute.workflow import STATE_LIMIT_BYTES, Workflow

from ..conftest import EXAMPLES

pytest.importorskip("moto")

DAY = date(2026, 11, 27)


def config(failures: list[str] | None = None, provider: Any = None) -> EngineConfig:
    sim = SimulatedProvider(seed=0, time_scale=0.0, failures=FailurePlan.parse(failures or []))
    chosen = provider or sim
    return EngineConfig(
        registry=load_registry(),
        policy=load_policy(),
        provider_for=lambda _spec: chosen,
        retry=RetryPolicy(base_delay_s=0.001),
        today=DAY,
    )


def local_result(task: Task, failures: list[str] | None = None) -> RunResult:
    return asyncio.run(Engine(config(failures)).run(task))


def steps_of(result: RunResult) -> list[tuple[str, str, str | None, int, str | None, float]]:
    return [
        (s.step_id, s.status, s.model, s.attempts, s.fallback_from, s.cost_usd)
        for s in result.steps
    ]


def largest_state(events: list[dict[str, Any]]) -> int:
    """The largest input, output or parameters string any event of a history carries."""
    largest = 0
    for event in events:
        for key, details in event.items():
            if not key.endswith("EventDetails") or not isinstance(details, dict):
                continue
            for field in ("input", "output", "parameters"):
                value = details.get(field)
                if isinstance(value, str):
                    largest = max(largest, len(value.encode()))
    return largest


def test_code_review_succeeds_with_the_local_engines_models() -> None:
    task = load_task(EXAMPLES / "code_review.json")
    result = run_on_stepfunctions_local(task, config())
    local = local_result(task)
    assert result.status == "succeeded"
    assert steps_of(result) == steps_of(local)
    assert result.totals.cost_usd == local.totals.cost_usd
    assert result.baseline == local.baseline
    assert [c.agent_id for c in result.handoff.completed_steps] == [
        c.agent_id for c in local.handoff.completed_steps
    ]
    assert result.budgets.steps_used == 5


def test_a_529_falls_back_to_the_next_eligible_model_as_locally() -> None:
    task = load_task(EXAMPLES / "code_review.json")
    failures = ["claude-haiku-4-5=529x3"]
    result = run_on_stepfunctions_local(task, config(failures))
    local = local_result(task, failures)
    first = result.steps[0]
    assert first.fallback_from == "claude-haiku-4-5"
    assert first.model != "claude-haiku-4-5"
    assert first.attempts == 4  # three on the overloaded model (Retry), one on the fallback
    assert "OverloadedError" in first.reason
    assert steps_of(result) == steps_of(local)
    assert result.status == "succeeded"


@pytest.mark.parametrize(
    "failures", [["claude-haiku-4-5=refusal"], ["claude-haiku-4-5=truncatedx2"]]
)
def test_a_billed_failure_is_charged_as_locally(failures: list[str]) -> None:
    """A refused or unrepairable answer fails its step, and what it was billed is in the
    step's cost, the totals and the budget, as in the local engine."""
    task = load_task(EXAMPLES / "code_review.json")
    result = run_on_stepfunctions_local(task, config(failures))
    local = local_result(task, failures)
    first = result.steps[0]
    assert first.model == "claude-haiku-4-5" and first.status == "failed"
    assert first.usage.total > 0 and first.cost_usd > 0
    assert steps_of(result) == steps_of(local)
    assert [s.usage for s in result.steps] == [s.usage for s in local.steps]
    assert result.totals.cost_usd == local.totals.cost_usd
    assert result.budgets.cost_used_usd == pytest.approx(local.budgets.cost_used_usd)
    assert result.budgets.tokens_used == local.budgets.tokens_used
    assert result.budgets.steps_used == local.budgets.steps_used


def test_a_cyclic_plan_fails_the_execution_cleanly_naming_the_cycle() -> None:
    task = load_task(EXAMPLES / "cyclic_plan.json")
    local = LocalStepFunctions(config())
    with local.running():
        machine = local.orchestrator()
        execution = local.start(machine, {"task": task.to_wire(), "taskId": "cyclic"}, "cyclic")
        desc = local.wait(execution)
        assert desc["status"] == "FAILED"
        assert desc["error"] == "CycleError"
        assert desc["cause"] == "cycle: a -> b -> c -> a"
        # The failure is recorded for GET /v1/tasks/{id}, as a finished run would be.
        status = local.workflow.results.get("cyclic")  # type: ignore[union-attr]
        assert status is not None and status.status == "failed"
        assert "cycle: a -> b -> c -> a" in (status.error or "")
    with pytest.raises(CycleError, match=r"cycle: a -> b -> c -> a"):
        run_on_stepfunctions_local(task, config())


def test_a_budget_that_runs_out_ends_partial() -> None:
    task = Task.model_validate(
        {
            "taskId": "tight",
            "description": "Review the attached diff.",
            "attachments": [
                {"kind": "document", "path": str(EXAMPLES / "data" / "payments_refund.diff")}
            ],
            "constraints": {"maxTokenBudget": 5000},
            "plan": {
                "steps": [
                    {
                        "id": "summarize",
                        "type": "summarization",
                        "useAttachments": True,
                        "description": "Summarise the diff.",
                    },
                    {
                        "id": "security",
                        "type": "review",
                        "dependsOn": ["summarize"],
                        "useAttachments": True,
                        "description": "Review security.",
                    },
                    {
                        "id": "perf",
                        "type": "review",
                        "dependsOn": ["summarize"],
                        "useAttachments": True,
                        "description": "Review performance.",
                    },
                    {
                        "id": "verdict",
                        "type": "classification",
                        "dependsOn": ["security", "perf"],
                        "description": "Verdict.",
                    },
                ]
            },
        }
    )
    result = run_on_stepfunctions_local(task, config())
    local = local_result(task)
    assert result.status == "partial"
    assert result.stop_reason == "budget"
    assert result.budgets.tokens_used <= 5000
    assert [s.status for s in result.steps] == ["succeeded", "succeeded", "skipped", "skipped"]
    assert steps_of(result) == steps_of(local)


class BigAnswers:
    """A provider whose every answer is about 300 KB (so four of them exceed 1 MiB)."""

    name = "big"

    async def request(self, req: ModelRequest) -> ModelResponse:
        text = f"{req.step_id}: " + ("finding " * 38_000)
        return ModelResponse(
            text=text,
            usage=Usage(input_tokens=100, output_tokens=1000),
            latency_ms=1.0,
            model=req.model.id,
            provider=self.name,
        )


def test_results_over_a_mebibyte_succeed_with_every_state_under_256_kib() -> None:
    parts = [
        {"id": f"part-{i}", "type": "analysis", "description": f"Analyse part {i}."}
        for i in range(4)
    ]
    task = Task.model_validate(
        {
            "taskId": "big",
            "description": "Analyse four large parts and combine them.",
            "plan": {
                "steps": [
                    *parts,
                    {
                        "id": "combine",
                        "type": "summarization",
                        "dependsOn": [p["id"] for p in parts],
                        "description": "Combine.",
                    },
                ]
            },
        }
    )
    local = LocalStepFunctions(config(provider=BigAnswers()))
    with local.running():
        result, execution = local.run(task)
        events = local.history(execution)
        spilled = local.s3.list_objects_v2(Bucket=BUCKET, Prefix="spill/")["Contents"]
    total = sum(len(str(c.result).encode()) for c in result.handoff.completed_steps)
    assert result.status == "succeeded"
    assert total > 1024 * 1024
    assert all(len(str(c.result)) > 300_000 for c in result.handoff.completed_steps)
    largest = largest_state(events)
    assert 0 < largest <= STATE_LIMIT_BYTES, largest
    assert any(o["Key"].startswith("spill/output/") for o in spilled)
    print(f"largest state in the history: {largest:,} B of {total:,} B of results")


def test_the_deployed_express_type_executes_and_the_history_is_complete() -> None:
    task = load_task(EXAMPLES / "question.json")
    local = LocalStepFunctions(config())
    with local.running():
        result, execution = local.run(task)
        names = [
            e.get("stateEnteredEventDetails", {}).get("name")
            for e in local.history(execution)
            if "stateEnteredEventDetails" in e
        ]
    assert result.status == "succeeded"
    for state in ("Classify", "Plan", "Schedule", "Route", "Compress", "Execute", "Finalize"):
        assert state in names
    assert json.loads(result.model_dump_json())["status"] == "succeeded"


def test_an_open_circuit_is_shared_through_dynamodb_and_routes_later_steps_around() -> None:
    """The local engine's in-process breaker becomes, on Step Functions, the shared one over
    a DynamoDB table (moto): failures counted by the executor open the circuit, and the
    scheduler routes the next wave around the model, saying why."""
    from polyroute.circuit import CircuitBreaker

    failing = ["claude-opus-4-5", "claude-sonnet-4-5"]
    cfg = config([f"{m}=529x20" for m in failing])
    cfg.breaker = CircuitBreaker(threshold=2, window_s=60, cooldown_s=600)
    task = Task.model_validate(
        {
            "description": "x",
            "plan": {
                "steps": [
                    {"id": "first", "description": "implement part one", "type": "implementation"},
                    {
                        "id": "second",
                        "description": "implement part two",
                        "type": "implementation",
                        "dependsOn": ["first"],
                    },
                ]
            },
        }
    )
    result = run_on_stepfunctions_local(task, cfg)
    first, second = result.steps
    assert first.status == "succeeded" and first.fallback_from in failing
    assert first.model not in failing
    assert second.status == "succeeded" and second.model not in failing
    assert second.fallback_from is None  # routed around up front, not failed over
    routed_around = [c for c in second.candidates if c.model == first.fallback_from]
    assert routed_around and "circuit open" in (routed_around[0].why_not or "")
    assert cfg.breaker.open_models() == frozenset()  # the local breaker was not the one used


# --- classification and planning: retried, budgeted, falling back, as locally ----------------


def planning_task(**constraints: object) -> Task:
    task = load_task(EXAMPLES / "planning.json")
    limits = task.constraints.model_copy(update=constraints)
    return task.model_copy(update={"task_id": "planning", "constraints": limits})


def both(
    task: Task, failures: list[str] | None = None, classifier: str = "local"
) -> tuple[RunResult, RunResult, SimulatedProvider, SimulatedProvider]:
    """The task on Step Functions and on the local engine, each with its own simulated
    provider (so each sees the injected failures from the start)."""
    sims = [
        SimulatedProvider(seed=0, time_scale=0.0, failures=FailurePlan.parse(failures or []))
        for _ in range(2)
    ]
    cfgs = [config(provider=sim) for sim in sims]
    for cfg in cfgs:
        cfg.classifier = classifier
    result = run_on_stepfunctions_local(task, cfgs[0])
    local = asyncio.run(Engine(cfgs[1]).run(task))
    return result, local, sims[0], sims[1]


def plan_calls(sim: SimulatedProvider) -> list[str]:
    return [c.model.id for c in sim.calls if c.purpose == "plan"]


@pytest.mark.parametrize(
    ("failures", "calls"),
    [
        (["claude-opus-4-5=529x1"], ["claude-opus-4-5"] * 2),
        (["claude-opus-4-5=529x3"], ["claude-opus-4-5"] * 3 + ["claude-opus-5-5"]),
    ],
)
def test_a_retried_or_failed_over_planning_call_plans_as_locally(
    failures: list[str], calls: list[str]
) -> None:
    result, local, sfn_sim, local_sim = both(planning_task(), failures)
    assert plan_calls(sfn_sim) == plan_calls(local_sim) == calls
    assert result.status == local.status == "succeeded"
    assert result.plan_source == local.plan_source == "planner"
    assert steps_of(result) == steps_of(local)
    assert result.totals.classifier_cost_usd == local.totals.classifier_cost_usd > 0
    assert result.totals.cost_usd == local.totals.cost_usd
    assert (result.totals.input_tokens, result.totals.output_tokens) == (
        local.totals.input_tokens,
        local.totals.output_tokens,
    )
    assert result.budgets == local.budgets
    assert result.providers == local.providers and calls[-1] in result.providers


def test_a_planner_that_does_not_fit_the_budget_stops_both_engines_alike() -> None:
    result, local, sfn_sim, _ = both(planning_task(max_cost_usd=0.0005))
    assert result.status == local.status == "failed"
    assert result.stop_reason == local.stop_reason == "budget"
    assert steps_of(result) == steps_of(local)
    error = result.steps[0].error or ""
    assert error == local.steps[0].error
    assert error.startswith(
        "no planning model fits the budget (planning on claude-opus-4-5 may cost $0.05"
    )
    assert sfn_sim.calls == []


@pytest.mark.parametrize(
    ("failures", "constraints"),
    [([], {"max_cost_usd": 0.03}), (["claude-opus-4-5=truncated"], {"max_cost_usd": 0.06})],
)
def test_planning_steps_down_to_a_cheaper_model_on_both_engines_alike(
    failures: list[str], constraints: dict[str, object]
) -> None:
    result, local, sfn_sim, local_sim = both(planning_task(**constraints), failures)
    calls = plan_calls(sfn_sim)
    assert calls == plan_calls(local_sim) and calls[-1] != "claude-opus-4-5"
    assert result.plan_source == local.plan_source == "planner"
    assert steps_of(result) == steps_of(local)
    assert result.budgets == local.budgets
    assert result.budgets.cost_used_usd <= constraints["max_cost_usd"]  # type: ignore[operator]


@pytest.mark.parametrize(
    ("failures", "constraints", "stop"),
    [
        (["claude-opus-4-5=refusal"], {}, None),
        (["claude-opus-4-5=truncatedx2"], {}, None),
    ],
)
def test_a_failed_planning_call_ends_in_a_result_with_its_spend_as_locally(
    failures: list[str], constraints: dict[str, object], stop: str | None
) -> None:
    result, local, _, _ = both(planning_task(**constraints), failures)
    assert result.status == local.status == "failed"
    assert result.stop_reason == local.stop_reason == stop
    assert steps_of(result) == steps_of(local)
    assert result.steps[0].error == local.steps[0].error
    assert result.totals.cost_usd == local.totals.cost_usd > 0
    assert result.totals.classifier_cost_usd == local.totals.classifier_cost_usd
    assert result.budgets == local.budgets
    assert result.classification == local.classification
    assert result.providers == local.providers


def test_a_budget_limited_planning_run_counts_the_planner_as_locally() -> None:
    result, local, _, _ = both(planning_task(max_token_budget=5000))
    assert result.stop_reason == local.stop_reason == "budget"
    assert result.status == local.status == "partial"
    assert steps_of(result) == steps_of(local)
    assert result.budgets == local.budgets
    steps_tokens = sum(s.usage.total for s in result.steps)
    assert steps_tokens < result.budgets.tokens_used <= 5000  # the planning call counts


def test_the_model_classifier_falls_back_to_the_local_one_as_locally() -> None:
    task = load_task(EXAMPLES / "question.json")
    result, local, _, _ = both(task, ["claude-haiku-4-5=529x3"], classifier="model")
    assert result.classification == local.classification
    assert result.classification is not None
    assert result.classification.classifier.startswith(
        "local (fallback from model:claude-haiku-4-5: OverloadedError after 3"
    )
    assert steps_of(result) == steps_of(local)
    assert result.status == "succeeded"


def test_a_misspelled_pin_fails_the_execution_before_any_model_is_called() -> None:
    task = load_task(EXAMPLES / "code_review.json")
    assert task.plan is not None
    task.plan.steps[4].model = "claude-sonet-4-5"
    sim = SimulatedProvider(seed=0, time_scale=0.0)
    cfg = config(provider=sim)
    cfg.classifier = "model"
    with pytest.raises(UnknownModelError) as on_sfn:
        run_on_stepfunctions_local(task, cfg)
    assert sim.calls == []  # not even the classifier was paid
    with pytest.raises(UnknownModelError) as locally:
        asyncio.run(Engine(config()).run(task))
    assert str(on_sfn.value) == str(locally.value)
    assert str(on_sfn.value).startswith(
        "plan.steps.4.model: step verdict pins unknown model 'claude-sonet-4-5'"
    )


def test_a_run_whose_every_step_failed_says_it_was_simulated_as_locally() -> None:
    task = load_task(EXAMPLES / "question.json")
    result, local, _, _ = both(task, ["claude-haiku-4-5=refusal"])
    assert result.status == local.status == "failed"
    assert result.simulated and local.simulated
    assert result.providers == local.providers


@pytest.mark.parametrize(("limit", "room"), [("maxTokenBudget", 1150), ("maxCostUsd", 0.0163)])
def test_a_repair_that_does_not_fit_the_budget_is_not_made_as_locally(
    limit: str, room: float
) -> None:
    """One call's worst case fits, its repair's does not: both engines charge the cut-off
    answer, skip the repair and stop on the budget without overspending it."""
    task = Task.model_validate(
        {
            "description": "x",
            "constraints": {limit: room},
            "plan": {
                "steps": [{"id": "impl", "description": "implement it", "type": "implementation"}]
            },
        }
    )
    failures = ["claude-sonnet-4-5=truncatedx2"]
    result = run_on_stepfunctions_local(task, config(failures))
    local = local_result(task, failures)
    step = result.steps[0]
    assert step.model == "claude-sonnet-4-5" and step.status == "failed"
    assert "repair does not fit" in (step.error or "")
    assert result.stop_reason == local.stop_reason == "budget"
    assert steps_of(result) == steps_of(local)
    assert result.budgets.tokens_used == local.budgets.tokens_used == step.usage.total
    assert result.budgets.cost_used_usd == pytest.approx(local.budgets.cost_used_usd)
    assert result.budgets.cost_used_usd <= (result.budgets.max_cost_usd or 1.0)
    assert result.budgets.tokens_used <= (result.budgets.max_token_budget or 10**6)


@pytest.mark.parametrize(
    ("failures", "attempts"),
    [
        (["claude-haiku-4-5=truncated"], 2),
        (["claude-haiku-4-5=truncated", "claude-haiku-4-5=429x3"], 5),
        (["claude-haiku-4-5=429x1", "claude-haiku-4-5=truncated"], 3),
    ],
)
def test_attempts_count_the_repair_and_its_retries_as_locally(
    failures: list[str], attempts: int
) -> None:
    """A repaired answer is two calls; a repair retried three times and then failed over is
    five, on both engines."""
    task = load_task(EXAMPLES / "question.json")
    result = run_on_stepfunctions_local(task, config(failures))
    local = local_result(task, failures)
    assert result.steps[0].attempts == local.steps[0].attempts == attempts
    assert steps_of(result) == steps_of(local)
    assert result.totals.cost_usd == local.totals.cost_usd


def test_a_step_no_model_can_take_fails_the_execution_before_any_model_is_called() -> None:
    task = Task.model_validate(
        {
            "description": "t",
            "plan": {
                "steps": [
                    {"id": "first", "description": "paid for first"},
                    {"id": "a", "description": "x", "maxOutputTokens": 10**11},
                ]
            },
        }
    )
    sim = SimulatedProvider(seed=0, time_scale=0.0)
    with pytest.raises(PlanValidationError, match=r"plan.steps.1: no model can take step a"):
        run_on_stepfunctions_local(task, config(provider=sim))
    with pytest.raises(PlanValidationError, match=r"plan.steps.1: no model can take step a"):
        asyncio.run(Engine(config(provider=sim)).run(task))
    assert sim.calls == []


# --- a failover recorded with the executor's provider, not the Router's ---------------------


class LiveNamed:
    """Stands in for a vendor provider: answers (and fails) as the simulated one does, under
    another name, as the model executor's function (the one with the SDKs) would."""

    name = "anthropic"

    def __init__(self, inner: SimulatedProvider) -> None:
        self.inner = inner

    async def request(self, req: ModelRequest) -> ModelResponse:
        resp = await self.inner.request(req)
        return replace(resp, provider=self.name, simulated=False)


def test_a_failover_keeps_the_provider_that_served_the_failed_call() -> None:
    """On AWS the Fallback state runs in the Router function, whose bundle has no vendor SDKs:
    its own provider lookup says "simulated" for every model. The provider that served the
    failed call must come from the Execute invocation, or the run is flagged simulated."""
    # Every call on the model fails: no later success records its provider again.
    sim = SimulatedProvider(
        seed=0, time_scale=0.0, failures=FailurePlan.parse(["claude-haiku-4-5=529x99"])
    )
    local = LocalStepFunctions(config(provider=LiveNamed(sim)))
    with local.running():
        assert local.workflow is not None
        in_router = Workflow(
            replace(local.workflow.cfg, provider_for=lambda _spec: SimulatedProvider()),
            local.workflow.spiller,
            concurrency=local.workflow.concurrency,
            results=local.workflow.results,
        )

        def router(event: dict[str, Any], _context: Any) -> Any:
            return in_router.fallback(event) if "error" in event else in_router.route(event)

        local.dispatcher.handlers["router"] = router
        result, _ = local.run(load_task(EXAMPLES / "code_review.json"))
    first = result.steps[0]
    assert first.status == "succeeded" and first.fallback_from == "claude-haiku-4-5"
    assert "OverloadedError" in first.reason and "served by" not in first.reason
    assert result.providers["claude-haiku-4-5"] == "anthropic"
    assert "simulated" not in result.providers.values()
    assert not result.simulated
