from __future__ import annotations

import asyncio

import pytest

from polyroute.errors import PlanningError, PlanValidationError
from polyroute.graph import validate_plan, waves
from polyroute.planner import ModelPlanner, local_plan, parse_plan
from polyroute.providers.base import ModelRequest, ModelResponse
from polyroute.registry import load_registry
from polyroute.schema import Task, Usage


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
