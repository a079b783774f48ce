"""Static checks of the state machine definitions: placeholders, transitions, error names."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from infra.asl import batch_definition, load, placeholders
from infra.stack import DEFINITION_SUBSTITUTIONS
from polyroute.errors import all_error_names
from polyroute.workflow import EXECUTE_ATTEMPTS

# Names Step Functions itself raises: its own, and the Lambda service's transient errors.
SERVICE_PREFIXES = ("States.", "Lambda.")


def machines(definition: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The definition and every nested one (Map processors, Parallel branches), each with
    its own ``StartAt`` and ``States``."""
    yield definition
    for state in definition["States"].values():
        for key in ("ItemProcessor", "Iterator"):
            if key in state:
                yield from machines(state[key])
        for branch in state.get("Branches", []):
            yield from machines(branch)


def state_maps(definition: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every ``States`` object, nested ones too."""
    for machine in machines(definition):
        yield machine["States"]


def transitions(state: dict[str, Any]) -> set[str]:
    """The states a state can go to next."""
    targets = {t for t in [state.get("Next"), state.get("Default")] if t}
    targets.update(c["Next"] for c in state.get("Choices", []))
    targets.update(c["Next"] for c in state.get("Catch", []))
    return targets


def definitions() -> list[tuple[str, dict[str, Any]]]:
    return [("orchestrator", load("orchestrator")), ("batch", batch_definition())]


@pytest.mark.parametrize(("name", "definition"), definitions())
def test_every_placeholder_has_a_substitution(name: str, definition: dict[str, Any]) -> None:
    needed = placeholders(definition)
    assert needed, "a definition without placeholders cannot reach its functions"
    assert needed <= set(DEFINITION_SUBSTITUTIONS), needed - set(DEFINITION_SUBSTITUTIONS)


@pytest.mark.parametrize(("name", "definition"), definitions())
def test_every_next_and_start_exists_and_every_state_is_reachable(
    name: str, definition: dict[str, Any]
) -> None:
    for machine in machines(definition):
        states = machine["States"]
        assert machine["StartAt"] in states, machine["StartAt"]
        for name, state in states.items():
            assert (
                state.get("End")
                or state.get("Next")
                or state["Type"] in ("Choice", "Fail", "Succeed")
            ), name
            assert transitions(state) <= set(states), (name, transitions(state) - set(states))
        # Walk from StartAt: a state nothing leads to is dead ASL.
        seen, frontier = {machine["StartAt"]}, [machine["StartAt"]]
        while frontier:
            for target in transitions(states[frontier.pop()]) - seen:
                seen.add(target)
                frontier.append(target)
        assert seen == set(states), f"unreachable in {name}: {sorted(set(states) - seen)}"


def test_the_reachability_check_finds_an_orphan_and_a_wrong_start() -> None:
    orchestrator = load("orchestrator")
    orchestrator["States"]["Orphan"] = {"Type": "Pass", "End": True}
    with pytest.raises(AssertionError, match="unreachable"):
        test_every_next_and_start_exists_and_every_state_is_reachable("x", orchestrator)
    inner = load("orchestrator")
    inner["States"]["Wave"]["ItemProcessor"]["StartAt"] = "Nowhere"
    with pytest.raises(AssertionError, match="Nowhere"):
        test_every_next_and_start_exists_and_every_state_is_reachable("x", inner)


@pytest.mark.parametrize(("name", "definition"), definitions())
def test_every_retry_and_catch_error_name_exists_in_the_code(
    name: str, definition: dict[str, Any]
) -> None:
    known = all_error_names()
    for states in state_maps(definition):
        for state in states.values():
            for clause in [*state.get("Retry", []), *state.get("Catch", [])]:
                for error in clause["ErrorEquals"]:
                    assert error.startswith(SERVICE_PREFIXES) or error in known, error


def test_execute_retries_the_retryable_errors_as_many_times_as_the_workflow_counts() -> None:
    execute = load("orchestrator")["States"]["Wave"]["ItemProcessor"]["States"]["Execute"]
    retry = execute["Retry"][0]
    assert set(retry["ErrorEquals"]) == {
        "RateLimitedError",
        "OverloadedError",
        "ProviderServerError",
        "ProviderTimeoutError",
    }
    assert retry["MaxAttempts"] + 1 == EXECUTE_ATTEMPTS
    assert execute["Catch"][0]["Next"] == "Fallback"


def test_the_wave_map_runs_route_compress_execute_and_returns_to_schedule() -> None:
    wave = load("orchestrator")["States"]["Wave"]
    assert wave["Type"] == "Map" and wave["Next"] == "Schedule"
    assert wave["MaxConcurrencyPath"] == "$.maxConcurrency"
    inner = wave["ItemProcessor"]
    assert inner["StartAt"] == "Route"
    assert inner["States"]["Route"]["Next"] == "Compress"
    assert inner["States"]["Compress"]["Next"] == "Execute"


def test_the_batch_map_is_distributed_with_express_children_running_the_orchestrator() -> None:
    run = batch_definition()["States"]["RunTasks"]
    assert run["ItemProcessor"]["ProcessorConfig"] == {
        "Mode": "DISTRIBUTED",
        "ExecutionType": "EXPRESS",
    }
    assert run["ItemProcessor"]["States"] == load("orchestrator")["States"]
    assert run["ItemReader"]["Resource"] == "arn:aws:states:::s3:getObject"
    assert "ResultWriter" in run
