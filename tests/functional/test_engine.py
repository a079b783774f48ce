from __future__ import annotations

import asyncio
import re
from datetime import UTC, date, datetime

import pytest

from polyroute.cost import call_cost
from polyroute.engine import Engine, EngineConfig, Run, worst_case
from polyroute.errors import (
    EXIT_BAD_INPUT,
    InvalidRequestError,
    PinnedModelError,
    PlanningError,
    ProviderError,
    UnknownModelError,
)
from polyroute.execute import RetryPolicy
from polyroute.providers.base import ModelRequest, ModelResponse
from polyroute.providers.simulated import FailurePlan, SimulatedProvider
from polyroute.registry import load_registry
from polyroute.routing import load_policy
from polyroute.schema import RunResult, Task, Usage
from polyroute.taskfile import load_task, materialize
from polyroute.tokens import estimate_tokens

from ..conftest import EXAMPLES

DAY = date(2026, 11, 27)


class FakeProvider:
    """Answers after a per-step delay; records prompts, concurrency and call order."""

    name = "fake"

    def __init__(
        self, delays: dict[str, float] | None = None, errors: dict[str, ProviderError] | None = None
    ) -> None:
        self.delays = delays or {}
        self.errors = errors or {}
        self.prompts: dict[str, str] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.events: list[tuple[str, str]] = []

    async def request(self, req: ModelRequest) -> ModelResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.events.append(("start", req.step_id))
        self.prompts[req.step_id] = req.prefix + "\n" + req.prompt
        try:
            await asyncio.sleep(self.delays.get(req.step_id, 0.001))
            if req.step_id in self.errors:
                raise self.errors[req.step_id]
            return ModelResponse(
                text=f"result of {req.step_id}",
                usage=Usage(input_tokens=100, output_tokens=10),
                latency_ms=1.0,
                model=req.model.id,
                provider=self.name,
            )
        finally:
            self.in_flight -= 1
            self.events.append(("end", req.step_id))


def engine(provider: object, **kw: object) -> Engine:
    return Engine(
        EngineConfig(
            registry=load_registry(),
            policy=load_policy(),
            provider_for=lambda _spec: provider,  # type: ignore[arg-type,return-value]
            today=DAY,
            retry=RetryPolicy(base_delay_s=0.001),
            **kw,
        )
    )  # type: ignore[arg-type]


def task(steps: dict[str, list[str]], **constraints: object) -> Task:
    return Task.model_validate(
        {
            "description": "test task",
            "constraints": constraints,
            "plan": {
                "steps": [
                    {"id": k, "description": f"do {k}", "dependsOn": v} for k, v in steps.items()
                ]
            },
        }
    )


def test_a_step_starts_as_soon_as_its_own_dependencies_finish() -> None:
    fake = FakeProvider(delays={"a": 0.01, "slow": 0.3, "c": 0.01})
    result = asyncio.run(engine(fake).run(task({"a": [], "slow": [], "c": ["a"]})))
    assert result.status == "succeeded"
    assert fake.events.index(("start", "c")) < fake.events.index(("end", "slow"))
    by_id = {s.step_id: s for s in result.steps}
    assert by_id["c"].started_at < by_id["slow"].finished_at  # type: ignore[operator]


def test_concurrency_is_bounded() -> None:
    fake = FakeProvider(delays={f"s{i}": 0.02 for i in range(6)})
    asyncio.run(engine(fake, concurrency=2).run(task({f"s{i}": [] for i in range(6)})))
    assert fake.max_in_flight == 2


def test_only_dependencies_results_feed_a_step() -> None:
    fake = FakeProvider()
    asyncio.run(engine(fake).run(task({"a": [], "b": [], "c": ["a"]})))
    assert "result of a" in fake.prompts["c"]
    assert "result of b" not in fake.prompts["c"].split("## Fact")[0]


def test_a_failed_step_skips_its_dependants_and_lets_other_branches_finish() -> None:
    fake = FakeProvider(errors={"bad": InvalidRequestError("400 invalid request")})
    result = asyncio.run(
        engine(fake).run(
            task({"root": [], "bad": ["root"], "after-bad": ["bad"], "other": ["root"]})
        )
    )
    status = {s.step_id: s.status for s in result.steps}
    assert status == {
        "root": "succeeded",
        "bad": "failed",
        "after-bad": "skipped",
        "other": "succeeded",
    }
    assert result.status == "partial"
    assert "400 invalid request" in (result.steps[1].error or "")
    assert result.steps[1].attempts == 1  # not retried


def test_overloaded_model_falls_back_and_the_ledger_says_so() -> None:
    sim = SimulatedProvider(time_scale=0.0, failures=FailurePlan.parse(["claude-sonnet-4-5=529x3"]))
    t = Task.model_validate(
        {
            "description": "x",
            "plan": {
                "steps": [{"id": "impl", "description": "implement it", "type": "implementation"}]
            },
        }
    )
    result = asyncio.run(engine(sim).run(t))
    step = result.steps[0]
    assert step.status == "succeeded"
    assert step.fallback_from == "claude-sonnet-4-5"
    assert step.model != "claude-sonnet-4-5"
    assert step.attempts == 4
    assert "fell back from claude-sonnet-4-5" in step.reason


def implement_task() -> Task:
    return Task.model_validate(
        {
            "description": "x",
            "plan": {
                "steps": [{"id": "impl", "description": "implement it", "type": "implementation"}]
            },
        }
    )


def run_with(failures: list[str]) -> tuple[SimulatedProvider, RunResult]:
    sim = SimulatedProvider(time_scale=0.0, failures=FailurePlan.parse(failures))
    return sim, asyncio.run(engine(sim).run(implement_task()))


def test_a_refused_answer_is_billed_to_the_step_the_totals_and_the_budget() -> None:
    _, result = run_with(["claude-sonnet-4-5=refusal"])
    step = result.steps[0]
    assert step.status == "failed" and "refused" in (step.error or "")
    assert step.usage.input_tokens > 0 and step.usage.output_tokens > 0
    spec = load_registry().get("claude-sonnet-4-5")
    assert step.cost_usd == pytest.approx(call_cost(spec, step.usage))
    assert result.totals.cost_usd == pytest.approx(step.cost_usd)
    assert result.budgets.cost_used_usd == pytest.approx(step.cost_usd)
    assert result.budgets.tokens_used == step.usage.total
    assert result.budgets.steps_used == 0  # only a step that succeeds counts


def test_a_cut_off_answer_and_its_repair_are_both_billed() -> None:
    sim, result = run_with(["claude-sonnet-4-5=truncated"])
    step = result.steps[0]
    assert step.status == "succeeded" and step.attempts == 2
    first, repair = sim.calls
    assert step.usage.output_tokens > first.max_tokens  # the cut-off answer was all billed
    spec = load_registry().get("claude-sonnet-4-5")
    assert result.totals.cost_usd == pytest.approx(call_cost(spec, step.usage))
    assert repair.prompt.startswith(first.prompt) and "cut off" in repair.prompt


def test_a_billed_failure_before_a_fallback_stays_in_the_steps_cost() -> None:
    _, plain = run_with(["claude-sonnet-4-5=529x3"])
    _, billed = run_with(["claude-sonnet-4-5=truncated", "claude-sonnet-4-5=529x3"])
    a, b = plain.steps[0], billed.steps[0]
    assert a.status == b.status == "succeeded"
    assert a.model == b.model != "claude-sonnet-4-5" and b.fallback_from == "claude-sonnet-4-5"
    cut = Usage(
        input_tokens=b.usage.input_tokens - a.usage.input_tokens,
        output_tokens=b.usage.output_tokens - a.usage.output_tokens,
    )
    assert cut.input_tokens > 0 and cut.output_tokens > 0
    sonnet = load_registry().get("claude-sonnet-4-5")
    assert b.cost_usd == pytest.approx(a.cost_usd + call_cost(sonnet, cut))
    assert billed.totals.cost_usd == pytest.approx(b.cost_usd)
    assert billed.budgets.cost_used_usd == pytest.approx(b.cost_usd)


def test_the_deadline_cancels_running_calls() -> None:
    fake = FakeProvider(delays={"slow": 5.0})
    result = asyncio.run(
        engine(fake).run(task({"fast": [], "slow": [], "after": ["slow"]}, timeoutSeconds=0.3))
    )
    status = {s.step_id: s.status for s in result.steps}
    assert status["fast"] == "succeeded"
    assert status["slow"] == "cancelled"
    assert status["after"] == "skipped"
    assert result.stop_reason == "deadline"
    assert result.totals.duration_ms < 4000


def test_budget_stops_the_run_without_overspending() -> None:
    sim = SimulatedProvider(time_scale=0.0)
    t = task({f"s{i}": [] for i in range(10)}, maxCostUsd=0.002)
    result = asyncio.run(engine(sim).run(t))
    assert result.budgets.cost_used_usd <= 0.01
    assert result.stop_reason == "budget"
    assert result.status == "partial"
    assert any(s.status == "skipped" for s in result.steps)


def test_baseline_is_every_step_on_the_most_expensive_model_used() -> None:
    sim = SimulatedProvider(time_scale=0.0)
    result = asyncio.run(engine(sim).run(load_task(EXAMPLES / "code_review.json")))
    assert result.status == "succeeded"
    reg = load_registry()
    used = {s.model for s in result.steps if s.model}
    assert len(used) >= 2
    top = reg.most_expensive(sorted(used))  # type: ignore[arg-type]
    assert result.baseline.model == top.id
    expected = sum(call_cost(top, s.usage) for s in result.steps)
    assert result.baseline.cost_usd == pytest.approx(expected, rel=1e-6)
    assert result.totals.cost_usd == pytest.approx(sum(s.cost_usd for s in result.steps))
    assert 0 < result.savings_pct < 100
    assert len(result.handoff.completed_steps) == 5
    assert result.handoff.remaining_steps == []


def test_simulated_runs_are_deterministic_and_say_they_are_simulated() -> None:
    def once() -> list[tuple[str | None, int, int]]:
        sim = SimulatedProvider(seed=3, time_scale=0.0)
        r = asyncio.run(engine(sim, seed=3).run(load_task(EXAMPLES / "code_review.json")))
        assert r.simulated and all(s.simulated for s in r.steps)
        assert all(
            "[simulated]" in str(c.result) or "simulated" in str(c.result)
            for c in r.handoff.completed_steps
        )
        return [(s.model, s.usage.input_tokens, s.usage.output_tokens) for s in r.steps]

    assert once() == once()


def test_planning_task_gets_its_plan_from_the_planner() -> None:
    sim = SimulatedProvider(time_scale=0.0)
    result = asyncio.run(engine(sim).run(load_task(EXAMPLES / "planning.json")))
    assert result.plan_source == "planner"
    assert len(result.steps) >= 3
    assert result.totals.classifier_cost_usd > 0  # the planning call is paid for
    assert any(len(w) > 1 for w in result.waves)


def test_vision_and_long_document_examples_route_as_the_seed_says() -> None:
    sim = SimulatedProvider(time_scale=0.0)
    vision = asyncio.run(engine(sim).run(load_task(EXAMPLES / "vision.json")))
    assert vision.steps[0].model == "gpt-4o-mini"
    assert vision.steps[0].usage.input_tokens > 700  # the image is counted
    long_doc = asyncio.run(engine(sim).run(load_task(EXAMPLES / "long_document.json")))
    assert long_doc.steps[0].model == "claude-opus-4-5"
    assert long_doc.steps[0].rule == "long-context"


def test_clock_is_injectable() -> None:
    fixed = datetime(2026, 12, 5, tzinfo=UTC)
    sim = SimulatedProvider(time_scale=0.0)
    e = Engine(
        EngineConfig(
            registry=load_registry(),
            policy=load_policy(),
            provider_for=lambda _s: sim,
            clock=lambda: fixed,
        )
    )
    t = Task.model_validate(
        {
            "description": "x",
            "plan": {
                "steps": [{"id": "impl", "description": "implement it", "type": "implementation"}]
            },
        }
    )
    result = asyncio.run(e.run(t))
    # after 2026-11-30 the balanced tier's Sonnet 4.5 is retired: its successor answers
    assert result.steps[0].model == "claude-sonnet-5-5"
    assert "successor claude-sonnet-5-5" in result.steps[0].reason


def test_facts_of_nearest_ancestors_reach_a_step_but_not_unrelated_ones() -> None:
    fake = FakeProvider()
    t = task({"a": [], "b": ["a"], "c": ["b"], "unrelated": []})
    t.context["currency"] = "EUR"
    result = asyncio.run(engine(fake).run(t))
    assert result.status == "succeeded"
    prompt_c = fake.prompts["c"]
    assert "Fact: a" in prompt_c  # an indirect ancestor's fact
    assert "result of b" in prompt_c  # its dependency's result
    assert "Fact: unrelated" not in prompt_c
    assert "currency" in prompt_c.split("## Your step")[0]  # shared facts are in the prefix


def test_an_open_circuit_routes_later_steps_around_the_model() -> None:
    from polyroute.circuit import CircuitBreaker

    failing = ["claude-opus-4-5", "claude-sonnet-4-5"]
    sim = SimulatedProvider(
        time_scale=0.0, failures=FailurePlan.parse([f"{m}=529x20" for m in failing])
    )
    breaker = CircuitBreaker(threshold=2, window_s=60, cooldown_s=600)
    t = Task.model_validate(
        {
            "description": "x",
            "plan": {
                "steps": [
                    {
                        "id": "first",
                        "description": "implement part one",
                        "type": "implementation",
                        "model": None,
                    },
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
    result = asyncio.run(engine(sim, breaker=breaker).run(t))
    first, second = result.steps
    assert first.status == "succeeded" and first.fallback_from in failing
    assert breaker.is_open(first.fallback_from or "")
    assert second.status == "succeeded" and second.model not in failing
    routed_around = [c for c in second.candidates if c.model == first.fallback_from]
    assert routed_around and "circuit" in (routed_around[0].why_not or "")


# --- classification and planning: retried, budgeted, falling back ----------------------------


def planning_task(**constraints: object) -> Task:
    task = load_task(EXAMPLES / "planning.json")
    return task.model_copy(update={"constraints": task.constraints.model_copy(update=constraints)})


def purposes(sim: SimulatedProvider, purpose: str) -> list[str]:
    return [c.model.id for c in sim.calls if c.purpose == purpose]


def test_an_overloaded_planning_call_is_retried_on_the_planning_model() -> None:
    sim = SimulatedProvider(time_scale=0.0, failures=FailurePlan.parse(["claude-opus-4-5=529x1"]))
    result = asyncio.run(engine(sim).run(planning_task()))
    assert result.status == "succeeded" and result.plan_source == "planner"
    assert purposes(sim, "plan") == ["claude-opus-4-5", "claude-opus-4-5"]
    assert result.totals.classifier_cost_usd > 0


def test_planning_falls_back_to_the_next_eligible_model_when_retries_run_out() -> None:
    sim = SimulatedProvider(time_scale=0.0, failures=FailurePlan.parse(["claude-opus-4-5=529x3"]))
    result = asyncio.run(engine(sim).run(planning_task()))
    assert result.status == "succeeded" and result.plan_source == "planner"
    plan_calls = purposes(sim, "plan")
    assert plan_calls[:3] == ["claude-opus-4-5"] * 3
    assert len(plan_calls) == 4 and plan_calls[3] != "claude-opus-4-5"
    assert plan_calls[3] in result.providers


def test_planning_skips_a_model_whose_circuit_is_open() -> None:
    from polyroute.circuit import CircuitBreaker

    breaker = CircuitBreaker(threshold=2, window_s=60, cooldown_s=600)
    sim = SimulatedProvider(time_scale=0.0, failures=FailurePlan.parse(["claude-opus-4-5=529x9"]))
    result = asyncio.run(engine(sim, breaker=breaker).run(planning_task()))
    assert result.plan_source == "planner"
    # The circuit opened after two failures: no third attempt on Opus.
    assert purposes(sim, "plan")[:2] == ["claude-opus-4-5"] * 2
    assert purposes(sim, "plan")[2] != "claude-opus-4-5"


def test_planning_fails_in_one_line_when_no_model_is_left() -> None:
    everyone = [f"{m}=529x3" for m in load_registry().models]
    sim = SimulatedProvider(time_scale=0.0, failures=FailurePlan.parse(everyone))
    result = asyncio.run(engine(sim).run(planning_task()))
    assert result.status == "failed" and result.stop_reason is None  # exit 1
    [planning] = result.steps
    message = planning.error or ""
    assert planning.step_id == "planning" and planning.status == "failed"
    assert message.startswith("planning failed on every eligible model (claude-opus-4-5: ")
    assert "OverloadedError after 3 attempt(s)" in message and "\n" not in message
    assert purposes(sim, "execute") == []  # no step ran


@pytest.mark.parametrize(
    ("constraints", "message"),
    [
        ({"max_cost_usd": 0.0005}, r"planning on claude-opus-4-5 may cost \$0\.05\d+; \$0\.0005"),
        ({"max_token_budget": 300}, r"planning on claude-opus-4-5 needs up to 2,\d{3} tokens; 300"),
    ],
)
def test_when_no_planning_model_fits_the_budget_the_run_stops_before_any_is_called(
    constraints: dict[str, object], message: str
) -> None:
    sim = SimulatedProvider(time_scale=0.0)
    result = asyncio.run(engine(sim).run(planning_task(**constraints)))
    assert result.status == "failed" and result.stop_reason == "budget"  # exit 3
    error = result.steps[0].error or ""
    assert error.startswith("no planning model fits the budget (") and "\n" not in error
    assert re.search(message, error)
    assert "planning on claude-haiku-5-5" in error  # the cheapest was tried too
    assert sim.calls == []
    assert result.totals.cost_usd == result.budgets.cost_used_usd == 0


@pytest.mark.parametrize(
    ("failure", "calls", "error"),
    [
        ("refusal", 1, "planning call to claude-opus-4-5 failed: .*refused"),
        ("truncatedx2", 2, "claude-opus-4-5 returned an invalid plan twice"),
    ],
)
def test_a_failed_planning_call_ends_in_a_result_with_its_spend(
    failure: str, calls: int, error: str
) -> None:
    sim = SimulatedProvider(
        time_scale=0.0, failures=FailurePlan.parse([f"claude-opus-4-5={failure}"])
    )
    result = asyncio.run(engine(sim).run(planning_task()))
    assert result.status == "failed" and result.stop_reason is None
    assert result.classification is not None and result.classification.type == "planning"
    assert re.search(error, result.steps[0].error or "")
    assert purposes(sim, "plan") == ["claude-opus-4-5"] * calls
    assert purposes(sim, "execute") == []
    opus = load_registry().get("claude-opus-4-5")
    t = result.totals
    spent = Usage(input_tokens=t.input_tokens, output_tokens=t.output_tokens)
    assert spent.total > 0
    assert t.cost_usd == t.classifier_cost_usd == pytest.approx(call_cost(opus, spent))
    assert result.budgets.cost_used_usd == pytest.approx(t.cost_usd)
    assert result.budgets.tokens_used == spent.total
    assert result.providers == {"claude-opus-4-5": "simulated"}


def test_planning_steps_down_to_a_cheaper_model_when_the_planner_does_not_fit_the_budget() -> None:
    sim = SimulatedProvider(time_scale=0.0)
    e = engine(sim)
    t = planning_task(max_cost_usd=0.03)
    run = Run(e, t, "low-budget")
    classification = asyncio.run(e.classify(t, materialize([]), run))
    plan = asyncio.run(e.make_plan(t, classification, run))
    assert plan.source == "planner"
    [model] = purposes(sim, "plan")
    order = [s.id for s in e.planning_models(t, run)]
    # The nearest in price after claude-opus-4-5 that fits: none before it in the list did.
    assert order[0] == "claude-opus-4-5" and model in order[1:]
    assert run.planned_by is not None and run.planned_by.startswith(f"{model} (")
    assert "planning on claude-opus-4-5 may cost $0.05" in run.planned_by
    assert run.budget.cost_used_usd <= 0.03
    result = asyncio.run(engine(SimulatedProvider(time_scale=0.0)).run(t))
    assert result.plan_source == "planner" and result.budgets.cost_used_usd <= 0.03


def test_planning_cut_short_by_the_budget_after_spending_steps_down_and_keeps_its_spend() -> None:
    """The first answer is cut off and billed; its repair does not fit: a cheaper model
    plans, and the first one's spend stays in the result."""
    sim = SimulatedProvider(
        time_scale=0.0, failures=FailurePlan.parse(["claude-opus-4-5=truncated"])
    )
    result = asyncio.run(engine(sim).run(planning_task(max_cost_usd=0.06)))
    assert result.plan_source == "planner"
    calls = purposes(sim, "plan")
    assert calls[0] == "claude-opus-4-5" and len(calls) == 2 and calls[1] != calls[0]
    assert 0.04 < result.totals.classifier_cost_usd <= result.budgets.cost_used_usd <= 0.06
    assert result.totals.cost_usd == pytest.approx(result.budgets.cost_used_usd)


def test_planning_is_counted_in_the_budget_and_the_totals() -> None:
    sim = SimulatedProvider(time_scale=0.0)
    result = asyncio.run(engine(sim).run(planning_task(max_token_budget=5000)))
    steps = sum((s.usage for s in result.steps), Usage())
    t = result.totals
    total = t.input_tokens + t.output_tokens + t.cache_read_tokens + t.cache_write_tokens
    assert total > steps.total  # the planning call's tokens are in the totals
    assert result.budgets.tokens_used == total <= 5000
    assert result.budgets.cost_used_usd == pytest.approx(t.cost_usd)
    assert t.classifier_cost_usd == pytest.approx(
        t.cost_usd - sum(s.cost_usd for s in result.steps)
    )


def model_classified(
    failures: list[str], **constraints: object
) -> tuple[SimulatedProvider, RunResult]:
    sim = SimulatedProvider(time_scale=0.0, failures=FailurePlan.parse(failures))
    t = implement_task()
    t.constraints = t.constraints.model_copy(update=constraints)
    return sim, asyncio.run(engine(sim, classifier="model").run(t))


def test_the_model_classifier_is_charged_its_tokens() -> None:
    _, result = model_classified([])
    c = result.classification
    assert c is not None and c.classifier == "model:claude-haiku-4-5"
    step = result.steps[0]
    assert result.budgets.tokens_used > step.usage.total
    assert result.budgets.cost_used_usd == pytest.approx(step.cost_usd + c.cost_usd)
    assert result.totals.input_tokens > step.usage.input_tokens


def test_the_model_classifier_falls_back_to_the_local_one_after_its_retries() -> None:
    sim, result = model_classified(["claude-haiku-4-5=529x3"])
    c = result.classification
    assert c is not None
    assert c.classifier == (
        "local (fallback from model:claude-haiku-4-5: OverloadedError after 3 attempt(s))"
    )
    assert purposes(sim, "classify") == ["claude-haiku-4-5"] * 3
    assert result.status == "succeeded"
    assert result.totals.classifier_cost_usd == 0  # an HTTP error bills nothing


def test_a_billed_classifier_failure_is_charged_and_the_local_classifier_answers() -> None:
    _, result = model_classified(["claude-haiku-4-5=refusal"])
    c = result.classification
    assert c is not None and c.classifier.startswith("local (fallback from model:claude-haiku")
    assert "refused" in c.classifier
    assert c.cost_usd > 0 and result.totals.classifier_cost_usd == pytest.approx(c.cost_usd)
    assert result.budgets.tokens_used > result.steps[0].usage.total


def test_a_model_classifier_that_does_not_fit_the_budget_gives_way_to_the_local_one() -> None:
    sim, result = model_classified([], max_token_budget=105)
    c = result.classification
    assert c is not None and c.classifier.startswith("local (fallback from model:claude-haiku")
    assert "classification on claude-haiku-4-5 needs up to" in c.classifier
    assert purposes(sim, "classify") == []
    assert result.totals.classifier_cost_usd == 0


def test_a_billed_planning_failure_is_charged_before_the_error() -> None:
    sim = SimulatedProvider(time_scale=0.0, failures=FailurePlan.parse(["claude-opus-4-5=refusal"]))
    e = engine(sim)
    task = planning_task()
    run = Run(e, task, "refused")
    classification = asyncio.run(e.classify(task, materialize([]), run))
    with pytest.raises(PlanningError, match="planning call to claude-opus-4-5 failed"):
        asyncio.run(e.make_plan(task, classification, run))
    assert run.classifier_usage.total > 0
    assert run.budget.tokens_used == run.classifier_usage.total
    opus = load_registry().get("claude-opus-4-5")
    assert run.budget.cost_used_usd == pytest.approx(call_cost(opus, run.classifier_usage))
    assert run.budget.report().steps_used == 0


# --- pinned models are checked before anything runs ------------------------------------------


def test_a_misspelled_pin_is_refused_before_anything_is_spent() -> None:
    sim = SimulatedProvider(time_scale=0.0)
    t = task({"a": [], "b": ["a"], "c": ["b"]})
    assert t.plan is not None
    t.plan.steps[2].model = "claude-sonet-4-5"
    with pytest.raises(UnknownModelError) as info:
        asyncio.run(engine(sim, classifier="model").run(t))
    assert str(info.value).startswith(
        "plan.steps.2.model: step c pins unknown model 'claude-sonet-4-5'"
    )
    assert info.value.exit_code == EXIT_BAD_INPUT
    assert sim.calls == []  # neither the classifier nor a step was paid


def test_a_pin_on_a_retired_model_is_refused_before_anything_runs() -> None:
    sim = SimulatedProvider(time_scale=0.0)
    t = task({"a": [], "b": ["a"]})
    assert t.plan is not None
    t.plan.steps[1].model = "claude-sonnet-4-5"
    late = engine(sim)
    late.cfg.today = date(2026, 12, 1)
    with pytest.raises(PinnedModelError, match="step b pins claude-sonnet-4-5, which cannot"):
        asyncio.run(late.run(t))
    assert sim.calls == []


# --- a run says it was simulated whenever a simulated provider was called --------------------


def test_a_run_whose_steps_all_failed_still_says_it_was_simulated() -> None:
    _, result = run_with(["claude-sonnet-4-5=refusal"])
    assert result.status == "failed"
    assert result.simulated
    assert result.providers == {"claude-sonnet-4-5": "simulated"}


def test_a_run_cut_short_by_its_deadline_still_says_it_was_simulated() -> None:
    sim = SimulatedProvider(time_scale=1.0)
    result = asyncio.run(engine(sim).run(task({"a": []}, timeoutSeconds=0.05)))
    assert result.status == "failed" and result.stop_reason == "deadline"
    assert result.simulated


def test_a_run_on_a_live_provider_is_not_simulated() -> None:
    result = asyncio.run(engine(FakeProvider()).run(task({"a": []})))
    assert result.status == "succeeded" and result.providers == {"claude-haiku-4-5": "fake"}
    assert not result.simulated


class Counting(FakeProvider):
    """A provider with a count endpoint whose figure is ``ratio`` times our estimate."""

    def __init__(self, ratio: float, fail: bool = False) -> None:
        super().__init__()
        self.ratio = ratio
        self.fail = fail
        self.counted: list[int] = []

    async def count_tokens(self, req: ModelRequest) -> int:
        if self.fail:
            raise InvalidRequestError("count endpoint unavailable")
        n = round(self.ratio * estimate_tokens(f"{req.system}\n{req.prefix}\n{req.prompt}"))
        self.counted.append(n)
        return n


def document_task(limit_share: float) -> tuple[Task, str]:
    """A task whose document is ``limit_share`` of gpt-4o-mini's window share, by estimate,
    pinned to that model; and the document."""
    limit = load_registry().get("gpt-4o-mini").context_window * load_policy().window_use
    words = [f"w{i % 997}x{i % 13}" for i in range(200)]
    sentences, tokens = [], 0
    while tokens < limit * limit_share:
        sentence = " ".join(words[(len(sentences) * 7 + k) % 200] for k in range(20)) + "."
        sentences.append(sentence)
        tokens += estimate_tokens(sentence) + 1
    text = "\n".join(sentences)
    task = Task.model_validate(
        {
            "description": "Summarise the document.",
            "attachments": [{"kind": "document", "data": text, "name": "doc.txt"}],
            "plan": {
                "steps": [
                    {
                        "id": "s",
                        "description": "Summarise the document",
                        "type": "summarization",
                        "model": "gpt-4o-mini",
                        "useAttachments": True,
                    }
                ]
            },
        }
    )
    return task, text


def test_an_input_the_estimate_cuts_is_sent_whole_when_the_exact_count_fits() -> None:
    task, text = document_task(1.08)
    counting = Counting(ratio=0.85)
    result = asyncio.run(engine(counting).run(task))
    assert result.steps[0].status == "succeeded"
    assert len(counting.counted) == 1
    assert text in counting.prompts["s"]  # nothing was cut
    limit = load_registry().get("gpt-4o-mini").context_window * load_policy().window_use
    assert counting.counted[0] <= limit


def test_an_exact_count_over_the_window_keeps_the_cut_and_a_failed_count_changes_nothing() -> None:
    task, text = document_task(1.08)
    plain = FakeProvider()
    asyncio.run(engine(plain).run(task))
    assert text not in plain.prompts["s"]  # the estimate cut it
    over = Counting(ratio=1.3)
    asyncio.run(engine(over).run(task))
    assert over.prompts["s"] == plain.prompts["s"] and len(over.counted) == 1
    broken = Counting(ratio=0.85, fail=True)
    asyncio.run(engine(broken).run(task))
    assert broken.prompts["s"] == plain.prompts["s"]


def test_a_scaled_cut_keeps_more_when_the_whole_input_does_not_fit() -> None:
    task, _ = document_task(1.3)
    plain = FakeProvider()
    asyncio.run(engine(plain).run(task))
    counting = Counting(ratio=0.9)
    asyncio.run(engine(counting).run(task))
    assert len(counting.counted) == 2  # the whole input, then the scaled cut
    limit = load_registry().get("gpt-4o-mini").context_window * load_policy().window_use
    assert counting.counted[1] <= limit
    assert len(counting.prompts["s"]) > len(plain.prompts["s"])


def implement_task_within(**constraints: object) -> Task:
    return implement_task().model_copy(
        update={
            "constraints": Task.model_validate(
                {"description": "x", "constraints": constraints}
            ).constraints
        }
    )


@pytest.mark.parametrize("limit", ["maxTokenBudget", "maxCostUsd"])
def test_a_repair_that_does_not_fit_the_budget_is_not_made(limit: str) -> None:
    """The budget holds one call's worst case but not its repair's: the cut-off answer is
    charged, the repair is never made, the step fails on the budget and nothing overspends."""
    sim, _ = run_with([])
    spec = load_registry().get("claude-sonnet-4-5")
    tokens, cost = worst_case(spec, sim.calls[0])
    room = {"maxTokenBudget": tokens + 50, "maxCostUsd": cost * 1.05}[limit]
    sim = SimulatedProvider(
        time_scale=0.0, failures=FailurePlan.parse(["claude-sonnet-4-5=truncatedx2"])
    )
    result = asyncio.run(engine(sim).run(implement_task_within(**{limit: room})))
    step = result.steps[0]
    assert len(sim.calls) == 1  # the repair was not made
    assert step.status == "failed" and step.attempts == 1
    assert "cut off" in (step.error or "") and "repair does not fit" in (step.error or "")
    assert result.stop_reason == "budget"
    assert step.usage.total > 0 and step.cost_usd == pytest.approx(call_cost(spec, step.usage))
    assert result.budgets.tokens_used == step.usage.total
    assert result.budgets.cost_used_usd == pytest.approx(step.cost_usd)
    assert result.budgets.tokens_used <= (result.budgets.max_token_budget or tokens * 10)
    assert result.budgets.cost_used_usd <= (result.budgets.max_cost_usd or 1.0)


def test_a_repair_that_fits_the_budget_is_made_and_settled() -> None:
    sim, _ = run_with([])
    spec = load_registry().get("claude-sonnet-4-5")
    tokens, _ = worst_case(spec, sim.calls[0])
    sim = SimulatedProvider(
        time_scale=0.0, failures=FailurePlan.parse(["claude-sonnet-4-5=truncated"])
    )
    result = asyncio.run(engine(sim).run(implement_task_within(maxTokenBudget=3 * tokens)))
    step = result.steps[0]
    assert len(sim.calls) == 2 and step.status == "succeeded" and step.attempts == 2
    assert result.budgets.tokens_used == step.usage.total <= 3 * tokens


class Broken(FakeProvider):
    """Raises a plain RuntimeError (not a provider error) for the steps it is told to."""

    def __init__(self, broken: set[str]) -> None:
        super().__init__()
        self.broken = broken

    async def request(self, req: ModelRequest) -> ModelResponse:
        if req.step_id in self.broken:
            raise RuntimeError(f"bug in the provider on {req.step_id}")
        return await super().request(req)


def test_an_unexpected_error_fails_its_step_and_never_hangs_the_run() -> None:
    provider = Broken({"b"})
    t = task({"a": [], "b": [], "c": ["b"], "d": ["a"]})
    # wait_for only guards the test suite against the old hang; nothing here is timed.
    result = asyncio.run(asyncio.wait_for(engine(provider).run(t), timeout=60))
    status = {s.step_id: s.status for s in result.steps}
    assert status == {"a": "succeeded", "b": "failed", "c": "skipped", "d": "succeeded"}
    b = result.steps[1]
    assert b.error == "internal error: RuntimeError: bug in the provider on b"
    assert result.status == "partial"


def test_an_on_step_callback_that_raises_fails_the_run_instead_of_hanging_it() -> None:
    def on_step(_res: object) -> None:
        raise RuntimeError("callback bug")

    run = engine(FakeProvider(), on_step=on_step).run(task({"a": [], "b": ["a"]}))
    with pytest.raises(RuntimeError, match="callback bug"):
        asyncio.run(asyncio.wait_for(run, timeout=60))


@pytest.mark.parametrize("failure", ["claude-haiku-4-5=refusal", "claude-sonnet-4-5=refusal"])
def test_the_baseline_prices_every_billed_step_on_a_model_a_billed_call_used(
    failure: str,
) -> None:
    """A refused answer is billed: it is in the routed cost, so it is in the baseline, and
    the baseline model is one that was billed, never an unused one at $0."""
    sim = SimulatedProvider(time_scale=0.0, failures=FailurePlan.parse([failure]))
    result = asyncio.run(engine(sim).run(load_task(EXAMPLES / "code_review.json")))
    reg = load_registry()
    billed = [s for s in result.steps if s.usage.total > 0]
    assert any(s.status == "failed" for s in billed)
    top = reg.most_expensive(sorted({s.model for s in billed if s.model}))
    assert result.baseline.model == top.id
    assert result.baseline.cost_usd == pytest.approx(sum(call_cost(top, s.usage) for s in billed))
    assert result.baseline.cost_usd >= result.totals.cost_usd - 1e-9  # like with like
    assert 0 <= result.savings_pct < 100


def test_with_nothing_billed_there_is_no_baseline() -> None:
    from polyroute.render import render_run

    sim = SimulatedProvider(time_scale=0.0)
    result = asyncio.run(engine(sim).run(planning_task(max_cost_usd=0.0005)))
    assert result.baseline.model == "" and result.baseline.cost_usd == 0
    assert result.savings_pct == 0
    text = render_run(result)
    assert "baseline: none (no step was billed)" in text and "opus" not in text.split("why")[0]


# --- planning and the model classifier keep to the window share, as a step does ------------


def long_planning_task(tokens: int, **constraints: object) -> Task:
    """A planning task whose description is about ``tokens`` estimated tokens long."""
    words = " ".join(f"plan milestone{i % 97} of the parser" for i in range(tokens // 6))
    t = planning_task(**constraints)
    return t.model_copy(update={"description": f"Plan the parser's rewrite. {words}"})


def plan_inputs(sim: SimulatedProvider) -> list[tuple[str, int]]:
    return [
        (c.model.id, estimate_tokens(f"{c.system}\n{c.prompt}"))
        for c in sim.calls
        if c.purpose == "plan"
    ]


def test_planning_skips_models_whose_window_share_cannot_hold_the_request() -> None:
    sim = SimulatedProvider(time_scale=0.0)
    e = engine(sim)
    t = long_planning_task(224_000)
    models = [s.id for s in e.planning_models(t, Run(e, t, "long"))]
    assert "claude-opus-4-5" not in models and models  # 140,000-token share
    assert all(e.router.window_tokens(e.cfg.registry.get(m)) >= 224_000 for m in models)
    result = asyncio.run(e.run(t))
    assert result.plan_source == "planner"
    [(model, tokens)] = plan_inputs(sim)
    assert model == models[0] and tokens <= e.router.window_tokens(e.cfg.registry.get(model))


def test_a_short_planning_request_keeps_the_planning_model_and_its_order() -> None:
    e = engine(SimulatedProvider(time_scale=0.0))
    t = planning_task()
    models = [s.id for s in e.planning_models(t, Run(e, t, "short"))]
    assert models[0] == "claude-opus-4-5" and len(models) > 3


def test_planning_too_large_for_every_window_share_fails_naming_its_size() -> None:
    sim = SimulatedProvider(time_scale=0.0)
    e = engine(sim)
    e.router = type(e.router)(e.cfg.registry, e.cfg.policy.model_copy(update={"window_use": 0.01}))
    e.cfg.policy = e.router.policy
    result = asyncio.run(e.run(long_planning_task(20_000)))
    assert result.status == "failed" and result.stop_reason is None  # exit 1
    error = result.steps[0].error or ""
    assert re.match(r"the planning request is 2\d,\d{3} tokens, more than 1% of the window", error)
    assert "claude-opus-5-5: 7,692" in error
    assert purposes(sim, "plan") == [] and purposes(sim, "execute") == []


def test_the_model_classifier_reads_only_what_fits_its_window_share() -> None:
    sim = SimulatedProvider(time_scale=0.0)
    e = engine(sim, classifier="model")
    t = long_planning_task(224_000)
    c = asyncio.run(e.classify(t, materialize([]), Run(e, t, "long")))
    haiku = e.cfg.registry.get("claude-haiku-4-5")
    [call] = [c for c in sim.calls if c.purpose == "classify"]
    sent = estimate_tokens(f"{call.system}\n{call.prompt}")
    assert sent <= e.router.window_tokens(haiku) < estimate_tokens(t.description)
    assert re.fullmatch(
        r"model:claude-haiku-4-5 \(read the first 1\d\d,\d{3} of 2\d\d,\d{3} tokens of the task\)",
        c.classifier,
    )
    assert c.token_count == estimate_tokens(t.description)  # the whole task's size


# --- vision needs an image ------------------------------------------------------------------


def test_look_at_steps_over_a_diff_are_not_routed_by_the_vision_rule() -> None:
    t = load_task(EXAMPLES / "code_review.json")
    assert t.plan is not None
    for step in t.plan.steps[1:3]:  # review and analysis, reading the .diff
        step.description = f"Look at the diff. {step.description}"
    result = asyncio.run(engine(SimulatedProvider(time_scale=0.0)).run(t))
    looked = [s for s in result.steps if s.description.startswith("Look at")]
    assert [s.type for s in looked] == ["review", "analysis"]
    assert all(s.rule != "vision" and s.model != "gpt-4o-mini" for s in looked)


def test_a_task_that_says_look_at_without_an_image_is_not_a_vision_task() -> None:
    sim = SimulatedProvider(time_scale=0.0)
    t = Task(description="Look at this bug in the parser")
    result = asyncio.run(engine(sim).run(t))
    c = result.classification
    assert c is not None and (c.type, c.needs_vision) != ("vision", True)
    assert not c.needs_vision and result.steps[0].rule != "vision"
