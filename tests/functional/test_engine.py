from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime

import pytest

from polyroute.cost import call_cost
from polyroute.engine import Engine, EngineConfig
from polyroute.errors import InvalidRequestError, ProviderError
from polyroute.execute import RetryPolicy
from polyroute.providers.base import ModelRequest, ModelResponse
from polyroute.providers.simulated import FailurePlan, SimulatedProvider
from polyroute.registry import load_registry
from polyroute.routing import load_policy
from polyroute.schema import RunResult, Task, Usage
from polyroute.taskfile import load_task

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
