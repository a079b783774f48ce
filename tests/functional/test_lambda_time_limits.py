"""The classifier, planner and model executor handlers bound their calls and retries by the
Lambda context's remaining time (less a margin), not only by the task's deadline: a Standard
run has no deadline, and a function that outlives its timeout fails the run instead of
falling back. The clock and the provider's latency are fake; nothing waits."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from polyroute.engine import EngineConfig
from polyroute.errors import ProviderTimeoutError
from polyroute.providers.base import ModelRequest, ModelResponse
from polyroute.registry import load_registry
from polyroute.routing import load_policy
from polyroute.schema import Task
from polyroute.sfn_local import _Context, load_handlers, runtime_module
from polyroute.spill import DirStore, Spiller
from polyroute.taskfile import load_task
from polyroute.workflow import FUNCTION_TIME_MARGIN_S, Workflow

from ..conftest import EXAMPLES

pytest.importorskip("aws_lambda_powertools")

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


class FakeTime:
    def __init__(self) -> None:
        self.now = T0

    def clock(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Slow:
    """A provider whose every call takes ``latency_s`` of fake time: cut short by a smaller
    ``timeout_s``, it times out when that time is up."""

    name = "slow"

    def __init__(self, time: FakeTime, latency_s: float = 120.0) -> None:
        self.time = time
        self.latency_s = latency_s
        self.timeouts: list[float | None] = []

    async def request(self, req: ModelRequest) -> ModelResponse:
        self.timeouts.append(req.timeout_s)
        if req.timeout_s is not None and req.timeout_s < self.latency_s:
            self.time.now += timedelta(seconds=req.timeout_s)
            raise ProviderTimeoutError(f"{req.model.id}: no answer in {req.timeout_s:g} s")
        raise AssertionError("a call longer than the function's time was let through")


class Context(_Context):
    def __init__(self, name: str, remaining_ms: int) -> None:
        super().__init__(name)
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Any, Slow, Workflow]]:
    found = load_handlers()
    time = FakeTime()
    slow = Slow(time)
    cfg = EngineConfig(
        registry=load_registry(),
        policy=load_policy(),
        provider_for=lambda _s: slow,
        classifier="model",
        clock=time.clock,
        sleep=time.sleep,
    )
    wf = Workflow(cfg, Spiller(DirStore(tmp_path), 32 * 1024))
    runtime_module().use_workflow(wf)

    def call(name: str, event: dict[str, Any], remaining_s: float = 300.0) -> Any:
        return found[name](event, Context(name, int(remaining_s * 1000)))

    yield call, slow, wf
    runtime_module().use_workflow(None)


def test_the_classifier_falls_back_to_local_when_the_function_time_runs_out(
    setup: tuple[Any, Slow, Workflow],
) -> None:
    call, slow, wf = setup
    task = Task.model_validate({"taskId": "t", "description": "What is 2 plus 2?"}).to_wire()
    out = call("classifier", {"task": task, "taskId": "t"}, remaining_s=60.0)
    state = wf.load_state(out["state"])
    assert state.classification is not None
    note = state.classification.classifier
    assert note.startswith("local (fallback from model:")
    assert "Classifier function's time ran out" in note and "deadline passed" not in note
    # one call, cut to what the function had left less the margin; no retry past it
    assert slow.timeouts == [60.0 - FUNCTION_TIME_MARGIN_S]


def test_the_planner_fails_saying_the_function_time_ran_out_not_the_deadline(
    setup: tuple[Any, Slow, Workflow],
) -> None:
    call, slow, wf = setup
    task = load_task(EXAMPLES / "planning.json").model_copy(update={"task_id": "p"})
    wf.cfg.classifier = "local"
    started = call("classifier", {"task": task.to_wire(), "taskId": "p"})
    out = call("planner", started, remaining_s=100.0)
    state = wf.load_state(out["state"])
    assert state.stop_reason is None  # not a "deadline" stop: the task has none
    [failed] = state.steps.values()
    assert failed.result.status == "failed"
    assert "planning stopped: the Planner function's time ran out" in (failed.result.error or "")
    # the planning model's call was cut to the function's time; its fallback found none left
    assert slow.timeouts == [100.0 - FUNCTION_TIME_MARGIN_S]


def execute_event(call: Any) -> dict[str, Any]:
    task = Task.model_validate(
        {
            "taskId": "x",
            "description": "Analyse it.",
            "plan": {"steps": [{"id": "s0", "type": "analysis", "description": "Analyse it."}]},
        }
    ).to_wire()
    started = call("classifier", {"task": task, "taskId": "x"})
    wave = call("scheduler", call("planner", started))
    routed = call("router", {"item": wave["ready"][0], "state": wave["state"]})
    packed: dict[str, Any] = call("compressor", routed)
    return {**packed, "retryCount": 0}


def test_the_executor_cuts_its_call_to_the_function_time(
    setup: tuple[Any, Slow, Workflow],
) -> None:
    call, slow, wf = setup
    wf.cfg.classifier = "local"
    event = execute_event(call)
    with pytest.raises(ProviderTimeoutError):
        call("model_executor", event, remaining_s=40.0)
    assert slow.timeouts == [40.0 - FUNCTION_TIME_MARGIN_S]


def test_the_executor_with_no_time_left_raises_a_retryable_timeout_saying_why(
    setup: tuple[Any, Slow, Workflow],
) -> None:
    call, slow, wf = setup
    wf.cfg.classifier = "local"
    event = execute_event(call)
    with pytest.raises(ProviderTimeoutError, match="ModelExecutor function's time ran out"):
        call("model_executor", event, remaining_s=FUNCTION_TIME_MARGIN_S / 2)
    assert slow.timeouts == []
