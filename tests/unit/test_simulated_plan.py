"""The simulated planning model keeps to the step limit its prompt gives, as a real one is
asked to, so a task with a small maxSteps can be planned offline."""

from __future__ import annotations

import asyncio
import json

import pytest

from polyroute.planner import plan_request
from polyroute.providers.simulated import SimulatedProvider
from polyroute.registry import load_registry
from polyroute.schema import Task

OPUS = load_registry().get("claude-opus-4-5")


@pytest.mark.parametrize("limit", [1, 2, 3, 8])
def test_the_simulated_plan_has_at_most_the_prompts_step_limit(limit: int) -> None:
    task = Task.model_validate(
        {
            "description": "Plan the migration of the billing service, with a rollback plan.",
            "type": "planning",
            "constraints": {"maxSteps": limit},
        }
    )
    req = plan_request(OPUS, task)
    assert f"At most {limit} steps." in req.prompt
    answer = asyncio.run(SimulatedProvider(time_scale=0.0).request(req))
    steps = json.loads(answer.text)["steps"]
    assert 1 <= len(steps) <= limit
    ids = {s["id"] for s in steps}
    assert all(set(s.get("dependsOn", [])) <= ids for s in steps)
