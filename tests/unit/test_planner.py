from __future__ import annotations

import asyncio
from datetime import date

import pytest

from polyroute.cost import call_cost
from polyroute.errors import (
    ContentRefusedError,
    InputError,
    OverloadedError,
    PinnedModelError,
    PlanningError,
    PlanValidationError,
    UnknownModelError,
)
from polyroute.execute import RetriesExhaustedError
from polyroute.graph import validate_plan, waves
from polyroute.planner import PLAN_MAX_TOKENS, ModelPlanner, check_pins, local_plan, parse_plan
from polyroute.providers.base import ModelRequest, ModelResponse
from polyroute.registry import load_registry
from polyroute.schema import Plan, Task, Usage

DAY = date(2026, 11, 27)


class Scripted:
    name = "scripted"

    def __init__(self, answers: list[str]) -> None:
        self.answers = answers
        self.prompts: list[str] = []

    async def request(self, req: ModelRequest) -> ModelResponse:
        self.prompts.append(req.prompt)
        return ModelResponse(
            text=self.answers.pop(0),
            usage=Usage(input_tokens=300, output_tokens=200),
            latency_ms=1,
            model=req.model.id,
            provider=self.name,
        )


GOOD = (
    '{"steps": [{"id": "a", "description": "first", "type": "analysis"},'
    ' {"id": "b", "description": "second", "dependsOn": ["a"]}]}'
)
CYCLIC = (
    '{"steps": [{"id": "a", "description": "x", "dependsOn": ["b"]},'
    ' {"id": "b", "description": "y", "dependsOn": ["a"]}]}'
)


def test_parse_plan_validates() -> None:
    assert [s.id for s in parse_plan(GOOD, 5).steps] == ["a", "b"]
    with pytest.raises(PlanValidationError, match="cycle: "):
        parse_plan(CYCLIC, 5)
    with pytest.raises(PlanValidationError, match="maxSteps=1"):
        parse_plan(GOOD, 1)
    with pytest.raises(PlanValidationError, match="no JSON"):
        parse_plan("I would rather not", 5)


def test_one_repair_attempt_then_success() -> None:
    opus = load_registry().get("claude-opus-4-5")
    provider = Scripted([CYCLIC, GOOD])
    planner = ModelPlanner(opus, provider)
    plan = asyncio.run(planner.plan(Task(description="plan it")))
    assert plan.source == "planner" and len(plan.steps) == 2
    assert "rejected: cycle: " in provider.prompts[1]
    assert planner.cost_usd == pytest.approx(2 * (300 * 5 + 200 * 25) / 1e6)


def test_two_invalid_plans_are_a_clear_error() -> None:
    opus = load_registry().get("claude-opus-4-5")
    with pytest.raises(PlanningError, match="invalid plan twice"):
        asyncio.run(ModelPlanner(opus, Scripted([CYCLIC, "{}"])).plan(Task(description="x")))


def test_local_planner_makes_parallel_branches_from_listed_items() -> None:
    plan = local_plan("Do these:\n1. audit the API\n2. write the tests\n3. summarise the risks")
    validate_plan(plan, 10)
    assert waves(plan)[1] == ["part-1", "part-2", "part-3"]
    generic = local_plan("Plan a migration")
    validate_plan(generic, 10)
    assert any(len(w) > 1 for w in waves(generic))


def test_an_injected_call_carries_every_planning_request() -> None:
    """The engine's budgeted, retried call replaces the provider's own request."""
    opus = load_registry().get("claude-opus-4-5")
    provider = Scripted([])
    seen: list[ModelRequest] = []

    async def call(req: ModelRequest) -> ModelResponse:
        seen.append(req)
        return ModelResponse(
            text=GOOD,
            usage=Usage(input_tokens=1, output_tokens=1),
            latency_ms=1,
            model="m",
            provider="injected",
        )

    plan = asyncio.run(ModelPlanner(opus, provider, call=call).plan(Task(description="x")))
    assert len(plan.steps) == 2
    assert provider.prompts == [] and len(seen) == 1
    assert seen[0].purpose == "plan" and seen[0].max_tokens == PLAN_MAX_TOKENS


def test_what_the_call_raises_besides_a_provider_error_passes_through() -> None:
    """Retries that ran out reach the caller, which falls back; a provider error is a
    PlanningError naming the model."""
    opus = load_registry().get("claude-opus-4-5")
    exhausted = RetriesExhaustedError(OverloadedError("529"), 3)

    async def overloaded(req: ModelRequest) -> ModelResponse:
        raise exhausted

    async def refused(req: ModelRequest) -> ModelResponse:
        raise ContentRefusedError("refused")

    task = Task(description="x")
    with pytest.raises(RetriesExhaustedError) as info:
        asyncio.run(ModelPlanner(opus, Scripted([]), call=overloaded).plan(task))
    assert info.value is exhausted
    with pytest.raises(PlanningError, match="planning call to claude-opus-4-5 failed: refused"):
        asyncio.run(ModelPlanner(opus, Scripted([]), call=refused).plan(task))


def pinned(model: str, **step: object) -> Plan:
    return Plan.model_validate(
        {
            "steps": [
                {"id": "free", "description": "anything"},
                {"id": "review", "description": "review it", "model": model, **step},
            ]
        }
    )


def test_check_pins_accepts_models_that_can_take_their_step() -> None:
    registry = load_registry()
    check_pins(pinned("claude-opus-4-5", output="json"), registry, DAY)
    check_pins(pinned("gpt-4o-mini", useAttachments=True), registry, DAY, images=1)


@pytest.mark.parametrize(
    ("plan", "day", "images", "error", "message"),
    [
        (
            pinned("claude-sonet-4-5"),
            DAY,
            0,
            UnknownModelError,
            "plan.steps.1.model: step review pins unknown model 'claude-sonet-4-5' (known: ",
        ),
        (
            pinned("claude-sonnet-4-5"),
            date(2026, 12, 1),
            0,
            PinnedModelError,
            "plan.steps.1.model: step review pins claude-sonnet-4-5, which cannot take it: "
            "retired on 2026-11-30; pin its successor claude-sonnet-5-5 instead",
        ),
        (
            pinned("gpt-4o-mini", needs=["long_context"]),
            DAY,
            0,
            PinnedModelError,
            "step review pins gpt-4o-mini, which cannot take it: lacks long_context",
        ),
        (
            pinned("gpt-4o", maxOutputTokens=100_000),
            DAY,
            0,
            PinnedModelError,
            "step review pins gpt-4o, which cannot take it: max output 16,384 < 100,000 tokens",
        ),
    ],
)
def test_check_pins_names_the_step_and_the_model_in_one_line(
    plan: Plan, day: date, images: int, error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as info:
        check_pins(plan, load_registry(), day, images)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, InputError)  # exit 2, and a 400 from the API


def test_a_refused_planning_answer_is_counted_in_the_planners_spend() -> None:
    opus = load_registry().get("claude-opus-4-5")
    billed = Usage(input_tokens=300, output_tokens=40)

    async def refused(req: ModelRequest) -> ModelResponse:
        raise ContentRefusedError("refused").billed(billed)

    planner = ModelPlanner(opus, Scripted([]), call=refused)
    with pytest.raises(PlanningError):
        asyncio.run(planner.plan(Task(description="x")))
    assert planner.tokens == billed.total
    assert planner.cost_usd == pytest.approx(call_cost(opus, billed)) and planner.cost_usd > 0


def unpinned(**step: object) -> Plan:
    return Plan.model_validate(
        {
            "steps": [
                {"id": "free", "description": "anything"},
                {"id": "big", "description": "x", "dependsOn": ["free"], **step},
            ]
        }
    )


def test_an_unpinned_step_some_model_can_take_passes() -> None:
    registry = load_registry()
    check_pins(unpinned(maxOutputTokens=100_000, needs=["long_context"]), registry, DAY)
    check_pins(unpinned(useAttachments=True, output="json"), registry, DAY, images=2)


def test_an_unpinned_step_no_model_can_take_is_refused_before_anything_runs() -> None:
    with pytest.raises(PlanValidationError) as info:
        check_pins(unpinned(maxOutputTokens=99_999_999_999), load_registry(), DAY)
    message = str(info.value)
    assert message.startswith("plan.steps.1: no model can take step big (")
    assert "< 99,999,999,999 tokens" in message and "\n" not in message
    assert isinstance(info.value, InputError)  # exit 2, HTTP 400


def test_an_unpinned_step_whose_only_takers_are_retired_is_refused() -> None:
    registry = load_registry()
    sonnet = registry.get("claude-sonnet-4-5")
    only_sonnet = registry.model_copy(update={"models": {sonnet.id: sonnet}})
    check_pins(unpinned(), only_sonnet, DAY)
    with pytest.raises(PlanValidationError, match=r"claude-sonnet-4-5: retired on 2026-11-30"):
        check_pins(unpinned(), only_sonnet, date(2026, 12, 1))


def test_a_capability_no_live_model_has_is_refused() -> None:
    registry = load_registry()
    gpt = registry.get("gpt-4o")
    only_gpt = registry.model_copy(update={"models": {gpt.id: gpt}})
    with pytest.raises(PlanValidationError, match=r"step big \(gpt-4o: lacks long_context\)"):
        check_pins(unpinned(needs=["long_context"]), only_gpt, DAY)


def test_a_pin_on_a_retired_model_names_the_live_successor_past_retired_ones() -> None:
    registry = load_registry()
    opus = registry.get("claude-opus-4-5")
    sonnet = registry.get("claude-sonnet-4-5")
    # claude-sonnet-4-5 -> claude-opus-4-5 (retired too) -> claude-opus-5-5.
    chained = sonnet.model_copy(
        update={"lifecycle": sonnet.lifecycle.model_copy(update={"successor": opus.id})}
    )
    registry = registry.model_copy(update={"models": {**registry.models, sonnet.id: chained}})
    late = date(2027, 2, 1)
    with pytest.raises(PinnedModelError) as info:
        check_pins(pinned("claude-sonnet-4-5"), registry, late)
    assert str(info.value).endswith(
        "retired on 2026-11-30; pin its successor claude-opus-5-5 instead"
    )
    orphan = sonnet.model_copy(
        update={"lifecycle": sonnet.lifecycle.model_copy(update={"successor": None})}
    )
    registry = registry.model_copy(update={"models": {**registry.models, sonnet.id: orphan}})
    with pytest.raises(PinnedModelError, match="retired on 2026-11-30; it has no live successor"):
        check_pins(pinned("claude-sonnet-4-5"), registry, late)
