from __future__ import annotations

import pytest
from pydantic import ValidationError

from polyroute.schema import AgentHandoff, Attachment, Task, json_schemas


def test_camel_case_on_the_wire_and_snake_case_accepted() -> None:
    task = Task.model_validate(
        {"description": "x", "constraints": {"maxSteps": 3, "max_cost_usd": 1.5}}
    )
    assert task.constraints.max_steps == 3
    assert task.constraints.max_cost_usd == 1.5
    wire = task.to_wire()
    assert wire["constraints"]["maxSteps"] == 3
    assert "max_steps" not in wire["constraints"]


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError, match="descripton"):
        Task.model_validate({"description": "x", "descripton": "typo"})


def test_attachment_needs_exactly_one_source() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        Attachment(kind="image")
    with pytest.raises(ValidationError, match="exactly one"):
        Attachment(kind="image", path="a.png", data="AAAA")
    assert Attachment(kind="document", data="hello").data == "hello"


def test_handoff_fields_are_the_designed_ones() -> None:
    wire = AgentHandoff(task_id="t", original_task="do it").to_wire()
    assert set(wire) == {
        "schemaVersion",
        "taskId",
        "originalTask",
        "completedSteps",
        "currentContext",
        "remainingSteps",
        "constraints",
    }
    assert set(wire["constraints"]) >= {"maxSteps", "maxTokenBudget", "maxCostUsd", "deadline"}


def test_json_schemas_cover_the_contract() -> None:
    schemas = json_schemas()
    for name in (
        "Task",
        "Plan",
        "Step",
        "Classification",
        "RouteDecision",
        "Usage",
        "CompletedStep",
        "AgentHandoff",
        "RunResult",
    ):
        assert name in schemas
    assert "dependsOn" in schemas["Step"]["properties"]
    assert "completedSteps" in schemas["AgentHandoff"]["properties"]


def test_step_ids_are_checked() -> None:
    with pytest.raises(ValidationError, match="step id"):
        Task.model_validate(
            {"description": "x", "plan": {"steps": [{"id": "has space", "description": "d"}]}}
        )


@pytest.mark.parametrize("naive", ["2030-01-01", "2030-01-01T09:00:00"])
def test_a_deadline_without_a_timezone_is_refused_with_what_to_write(naive: str) -> None:
    with pytest.raises(ValidationError, match=r"has no timezone: add one, e\.g\. 2030-01-01T09"):
        Task.model_validate({"description": "x", "constraints": {"deadline": naive}})


@pytest.mark.parametrize("aware", ["2030-01-01T09:00:00Z", "2030-01-01T09:00:00+02:00"])
def test_a_deadline_with_a_timezone_is_an_instant(aware: str) -> None:
    task = Task.model_validate({"description": "x", "constraints": {"deadline": aware}})
    assert task.constraints.deadline is not None
    assert task.constraints.deadline.utcoffset() is not None
