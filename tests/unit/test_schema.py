from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from polyroute.registry import first_error
from polyroute.schema import MAX_TIMEOUT_SECONDS, AgentHandoff, Attachment, Task, json_schemas


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


# --- numbers a float cannot hold, and durations date arithmetic cannot ----------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"constraints": {"maxCostUsd": float("inf")}}, "constraints.maxCostUsd"),
        ({"constraints": {"maxCostUsd": float("nan")}}, "constraints.maxCostUsd"),
        ({"constraints": {"timeoutSeconds": float("inf")}}, "constraints.timeoutSeconds"),
        ({"constraints": {"timeoutSeconds": 1e12}}, "constraints.timeoutSeconds"),
        ({"constraints": {"timeoutSeconds": 1e300}}, "constraints.timeoutSeconds"),
        ({"constraints": {"deadline": "9999-12-31T23:00:00-14:00"}}, "constraints.deadline"),
        ({"context": {"k": [1, float("inf")]}}, "context"),
    ],
)
def test_non_finite_numbers_and_huge_durations_are_refused(
    body: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        Task.model_validate({"description": "x", **body})
    assert first_error(caught.value).startswith(f"{field}: ")


def test_a_thirty_day_timeout_is_still_accepted() -> None:
    task = Task.model_validate({"description": "x", "constraints": {"timeoutSeconds": 2592000}})
    assert task.constraints.timeout_seconds == MAX_TIMEOUT_SECONDS


def test_a_non_ascii_step_id_is_refused_as_not_ascii() -> None:
    with pytest.raises(ValidationError, match="ASCII letters"):
        Task.model_validate(
            {"description": "x", "plan": {"steps": [{"id": "étape", "description": "y"}]}}
        )
