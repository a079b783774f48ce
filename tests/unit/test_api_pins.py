"""The API refuses a task with an unusable pinned model up front, with the engines' own
check (``polyroute.planner.check_pins``): 400, the step's model field named."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from polyroute.api import Refused, accept_task
from polyroute.registry import load_registry


def body(model: str, **step: Any) -> dict[str, Any]:
    return {
        "description": "x",
        "plan": {
            "steps": [
                {"id": "a", "description": "a"},
                {"id": "b", "description": "b", "dependsOn": ["a"], "model": model, **step},
            ]
        },
    }


@pytest.mark.parametrize(
    ("task", "today", "message"),
    [
        (body("claude-sonet-4-5"), None, "step b pins unknown model 'claude-sonet-4-5'"),
        (
            body("claude-sonnet-4-5"),
            date(2026, 12, 1),
            "step b pins claude-sonnet-4-5, which cannot take it: retired on 2026-11-30",
        ),
        (
            body("gpt-4o-mini", needs=["long_context"]),
            None,
            "step b pins gpt-4o-mini, which cannot take it: lacks long_context",
        ),
    ],
)
def test_an_unusable_pin_is_a_400_naming_the_step_and_its_model_field(
    task: dict[str, Any], today: date | None, message: str
) -> None:
    with pytest.raises(Refused) as info:
        accept_task(task, load_registry(), today)
    assert info.value.status == 400
    assert info.value.body.field == "plan.steps.1.model"
    assert message in info.value.body.error and "\n" not in info.value.body.error


def test_a_usable_pin_is_accepted() -> None:
    task = accept_task(body("claude-sonnet-4-5"), load_registry(), date(2026, 11, 27))
    assert task.plan is not None and task.plan.steps[1].model == "claude-sonnet-4-5"


def test_a_batch_line_gets_at_most_the_express_limit_from_its_own_start() -> None:
    from polyroute.api import EXPRESS_LIMIT_S, for_express_later
    from polyroute.schema import Task

    long = Task.model_validate({"description": "x"})
    assert for_express_later(long).constraints.timeout_seconds == EXPRESS_LIMIT_S
    own = Task.model_validate({"description": "x", "constraints": {"timeoutSeconds": 30}})
    assert for_express_later(own) is own
    longer = Task.model_validate({"description": "x", "constraints": {"timeoutSeconds": 900}})
    assert for_express_later(longer).constraints.timeout_seconds == EXPRESS_LIMIT_S
