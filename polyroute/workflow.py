"""The Step Functions workflow's logic: pure functions over a serialisable workflow state.

Each Lambda role is one method of ``Workflow`` (classify, plan, schedule, route, compress,
execute, fallback, finalize); the handlers in ``lambdas/`` only parse the event and call it.
The methods reuse the in-process engine's pieces (``polyroute.engine``), so a step is
routed, compressed, priced, recorded and reported the same way in both engines.

What differs is the shape of the run. Step Functions runs the graph wave by wave: the
scheduler merges a finished wave into the state, settles its budget reservations, and
admits the next wave of ready steps, reserving every step's worst case in one place (so
parallel branches of a Map can never overspend a budget together). Inside the Map, a
failed call is retried by the state machine's ``Retry`` and then caught and re-routed to
the next eligible model by ``fallback``; a fallback that costs more than the step's
reservation goes back to the scheduler, which reserves it from what is left.

Large values never ride in the state: the task, the state itself, a step's output, its
packed prompt and its outcome are spilled (``polyroute.spill``) above a threshold, and the
scheduler sizes each step's outcome so a whole wave's collected output stays well under
Step Functions' 256 KiB limit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import math
import os
import random
import re
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from pydantic import Field

from polyroute.api import TaskStatus
from polyroute.awsclient import TAKEN, error_code
from polyroute.budget import Budget, BudgetState, Reservation
from polyroute.compress import CompressedInput, Document
from polyroute.cost import call_cost
from polyroute.engine import (
    Engine,
    EngineConfig,
    PackedStep,
    Run,
    build_result,
    fact,
    fallback_ok,
    fallback_reason,
    limit_stop_reason,
    merge_step,
    model_request,
    pack_step,
    pending_result,
    planning_failed,
    record_success,
    repair_reserver,
    route_step,
    step_input,
    step_view,
)
from polyroute.errors import (
    RETRYABLE_ERRORS,
    BudgetExceededError,
    CircuitOpenError,
    ConfigError,
    DeadlineExceededError,
    LimitError,
    PlanningError,
    PolyrouteError,
    ProviderError,
    ProviderTimeoutError,
)
from polyroute.execute import (
    RepairNotAffordedError,
    RetriesExhaustedError,
    RetryPolicy,
    call_with_retries,
)
from polyroute.providers.base import ImageInput
from polyroute.registry import ModelSpec
from polyroute.schema import (
    SCHEMA_VERSION,
    AgentHandoff,
    Capability,
    Classification,
    CompletedStep,
    Plan,
    RouteDecision,
    RunResult,
    Step,
    StepResult,
    StepStatus,
    Task,
    Usage,
    WireModel,
)
from polyroute.spill import S3Location, Spiller, is_ref
from polyroute.taskfile import Materialized, materialize

# Step Functions' limit on a state's input or output, and the share of it a wave's collected
# step outcomes may take (the rest is the state that rides along).
STATE_LIMIT_BYTES = 256 * 1024
WAVE_OUTPUT_BUDGET_BYTES = 96 * 1024
MIN_INLINE_BYTES = 512
# A wave admits at most this many steps; the rest wait for the next one. This bounds the
# Map's collected output (even as spill references) and the scheduler's work per call.
MAX_WAVE_STEPS = 200
# Attempts a model gets before the ``Catch`` re-routes: the ``Execute`` state's
# ``Retry.MaxAttempts`` (2) plus the first call. A static test checks the ASL agrees.
EXECUTE_ATTEMPTS = 3
RETRYABLE_NAMES = frozenset(cls.__name__ for cls in RETRYABLE_ERRORS)
FALLBACK_NAMES = RETRYABLE_NAMES | {CircuitOpenError.__name__}
"""Errors after which a step falls back to its next model (a circuit open: without a call)."""
_LIMIT_NAMES = {"BudgetExceededError": "budget", "DeadlineExceededError": "deadline"}

Phase = Literal["waiting", "running", "done"]
OutcomeStatus = Literal["succeeded", "failed", "skipped", "cancelled", "fallback"]


def _utcnow() -> datetime:
    return datetime.now(UTC)


# --- the serialisable state ---------------------------------------------------------------


class StartInput(WireModel):
    """An execution's input: the task (inline, or a spill reference) and its id."""

    task: dict[str, Any]
    task_id: str | None = None


class CallPlan(WireModel):
    """Which model a step's next call uses, what was tried, and what is reserved for it."""

    model: str
    tried: list[str] = Field(default_factory=list)
    attempts: int = 0
    fallback_from: str | None = None
    reason: str | None = None
    reserved_tokens: int = 0
    reserved_cost_usd: float = 0.0
    billed: Usage = Field(
        default_factory=Usage,
        description="What the step's earlier failed calls were billed (a refused or unrepairable "
        "answer), carried to the step's result.",
    )
    billed_cost_usd: float = 0.0


class StepRecord(WireModel):
    """A step as the workflow tracks it: its result so far and its routing decision."""

    phase: Phase = "waiting"
    result: StepResult
    decision: RouteDecision | None = Field(
        default=None, description="The routing decision, without its candidates."
    )
    required: list[Capability] = Field(default_factory=list)
    charged_tokens: int = Field(
        default=0, description="What of the step's billed tokens the budget has been charged."
    )
    charged_cost_usd: float = 0.0


class WorkflowState(WireModel):
    """Everything a run carries between functions (spilled whole when it grows large)."""

    schema_version: str = SCHEMA_VERSION
    task_id: str
    task: dict[str, Any]
    started_at: datetime
    classification: Classification | None = None
    plan: Plan | None = None
    budget: BudgetState
    handoff: AgentHandoff
    steps: dict[str, StepRecord] = Field(default_factory=dict)
    stop_reason: str | None = None
    simulated: bool = False
    providers: dict[str, str] = Field(default_factory=dict)
    classifier_cost_usd: float = 0.0
    classifier_usage: Usage = Field(
        default_factory=Usage, description="What classification and planning used."
    )


class WaveItem(WireModel):
    """One step of a wave, as the Map hands it to an iteration."""

    step_id: str
    inline_limit: int
    call: CallPlan


class StepOutcome(WireModel):
    """What one Map iteration returns for its step."""

    step_id: str
    status: OutcomeStatus
    result: StepResult | None = None
    completed: CompletedStep | None = None
    fact: str | None = None
    call: CallPlan | None = None
    cost_exact_usd: float = 0.0
    stop_reason: str | None = None
    providers: dict[str, str] = Field(default_factory=dict)
    error: str | None = None


# --- the workflow ---------------------------------------------------------------------------


@dataclass
class Workflow:
    """The roles of the state machine, over an engine configuration and a spiller."""

    cfg: EngineConfig
    spiller: Spiller
    concurrency: int = 8
    results: ResultStore | None = None
    _engine: Engine = field(init=False, repr=False)
    _materialized: OrderedDict[str, Materialized] = field(
        init=False, repr=False, default_factory=OrderedDict
    )

    def __post_init__(self) -> None:
        self._engine = Engine(self.cfg)

    # --- helpers --------------------------------------------------------------------------

    def _now(self) -> datetime:
        return self.cfg.clock()

    def _today(self) -> date:
        return self.cfg.today or self._now().date()

    def _time_limit(self, function_time_s: float | None) -> datetime | None:
        """When a role given ``function_time_s`` (what its Lambda function has left) must have
        stopped calling models, to leave ``FUNCTION_TIME_MARGIN_S`` to write its answer."""
        if function_time_s is None:
            return None
        usable = max(0.0, function_time_s - FUNCTION_TIME_MARGIN_S)
        return self._now() + timedelta(seconds=usable)

    def load_state(self, value: Any) -> WorkflowState:
        """The state from an event value (inline or a spill reference)."""
        return WorkflowState.model_validate(self.spiller.resolve(value))

    def dump_state(self, state: WorkflowState) -> Any:
        """The state for the next event: inline when small, else a spill reference."""
        return self.spiller.maybe_spill(state.to_wire(), "state")

    def task_of(self, state: WorkflowState) -> Task:
        return Task.model_validate(self.spiller.resolve(state.task))

    def _materialize(self, state: WorkflowState, task: Task) -> Materialized:
        # One container serves many steps of a task: read its attachments once.
        key = f"{state.task_id}:{json.dumps(state.task, sort_keys=True)[:200]}"
        mat = self._materialized.get(key)
        if mat is None:
            mat = materialize(task.attachments)
            self._materialized[key] = mat
            while len(self._materialized) > 8:
                self._materialized.popitem(last=False)
        return mat

    def _run(self, task: Task, state: WorkflowState) -> Run:
        """An engine Run restored from the state (for classify and plan)."""
        run = Run(self._engine, task, state.task_id)
        run.started = state.started_at
        run.budget, _ = Budget.from_state(state.budget)
        run.deadline = run.budget.deadline
        run.classifier_cost = state.classifier_cost_usd
        run.classifier_usage = state.classifier_usage
        run.providers = dict(state.providers)
        run.simulated = state.simulated
        return run

    @staticmethod
    def _keep_run(state: WorkflowState, run: Run) -> None:
        """Carry what classification or planning spent and called in the state."""
        state.budget = run.budget.to_state()
        state.classifier_cost_usd = run.classifier_cost
        state.classifier_usage = run.classifier_usage
        state.providers = dict(run.providers)
        state.simulated = run.simulated

    def _resolved_view(self, state: WorkflowState, task: Task, step: Step) -> AgentHandoff:
        """The step's handoff with its dependencies' spilled results read back."""
        assert state.plan is not None
        deps = {s.id: list(s.depends_on) for s in state.plan.steps}
        view = step_view(state.handoff, task, deps, step)
        view.completed_steps = [
            c.model_copy(update={"result": self.spiller.resolve(c.result)})
            for c in view.completed_steps
        ]
        return view

    def _step(self, state: WorkflowState, step_id: str) -> Step:
        assert state.plan is not None
        for s in state.plan.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)

    def _inputs(
        self, state: WorkflowState, task: Task, step: Step
    ) -> tuple[list[Document], tuple[ImageInput, ...], int]:
        if not step.use_attachments:
            return [], (), 0
        mat = self._materialize(state, task)
        return list(mat.documents), mat.images, mat.image_tokens

    # --- classify and plan ----------------------------------------------------------------

    def classify(
        self, event: dict[str, Any], function_time_s: float | None = None
    ) -> dict[str, Any]:
        """Start a run: read the task, classify it, set up the budget and the handoff.

        ``function_time_s`` is what the function has left (the Lambda context's remaining
        time): the model classifier's calls and retries stop in time for the local
        classifier to answer, saying that the function's time ran out."""
        if "task" in event:
            start = StartInput.model_validate(event)
            raw_task = start.task
            task_id = start.task_id
        else:
            raw_task, task_id = event, None
        task = Task.model_validate(self.spiller.resolve(raw_task))
        task_id = task_id or task.task_id or uuid.uuid4().hex[:12]
        run = Run(self._engine, task, task_id, time_limit=self._time_limit(function_time_s))
        mat = materialize(task.attachments)
        # A given plan's pinned models are checked before the classifier is paid.
        self._engine.check_pins(task, mat, run)
        classification = asyncio.run(self._engine.classify(task, mat, run))
        fell_back = _CLASSIFIER_FALLBACK.match(classification.classifier)
        if fell_back and run.out_of_function_time():
            note = f"local (fallback from model:{fell_back.group(1)}: {_out_of_time('Classifier')})"
            classification = classification.model_copy(update={"classifier": note})
        state = WorkflowState(
            task_id=task_id,
            task=self.spiller.maybe_spill(task.to_wire(), "task"),
            started_at=run.started,
            classification=classification,
            budget=run.budget.to_state(),
            handoff=run.handoff,
        )
        self._keep_run(state, run)
        return {"state": self.dump_state(state)}

    def plan(self, event: dict[str, Any], function_time_s: float | None = None) -> dict[str, Any]:
        """Plan the task (given, single step or the planning model) and validate the plan.

        ``function_time_s`` is what the function has left: planning calls, retries and
        fallbacks stop in time to record the result; planning stopped that way fails with a
        ``PlanningError`` saying the function's time ran out (not a deadline stop).

        An invalid plan or an unusable pinned model raises (``CycleError`` names the cycle):
        the state machine catches it into a failed execution. Planning that fails on every
        eligible model or does not fit the budget or the deadline runs no step: the run
        goes on to its result, which carries the error and what was spent."""
        state = self.load_state(event["state"])
        task = self.task_of(state)
        run = self._run(task, state)
        run.time_limit = self._time_limit(function_time_s)
        assert state.classification is not None
        images = 0
        if task.plan is not None and any(s.model and s.use_attachments for s in task.plan.steps):
            images = len(self._materialize(state, task).images)
        try:
            plan = asyncio.run(self._engine.make_plan(task, state.classification, run, images))
        except (PlanningError, LimitError) as exc:
            # No step runs; the scheduler finds nothing to do and the result says why, with
            # what classification and planning spent (as the local engine's does).
            if run.out_of_function_time() and not isinstance(exc, BudgetExceededError):
                tried = f" ({exc})" if isinstance(exc, PlanningError) else ""
                exc = PlanningError(f"planning stopped: {_out_of_time('Planner')}{tried}")
            plan, failed = planning_failed(exc, self._now())
            state.plan = plan
            self._keep_run(state, run)
            state.stop_reason = limit_stop_reason(exc)
            state.handoff.remaining_steps = []
            state.steps = {failed.step_id: StepRecord(phase="done", result=failed)}
            return {"state": self.dump_state(state)}
        state.plan = plan
        self._keep_run(state, run)
        state.handoff.remaining_steps = [s.id for s in plan.steps]
        state.steps = {s.id: StepRecord(result=pending_result(s)) for s in plan.steps}
        return {"state": self.dump_state(state)}

    # --- schedule ---------------------------------------------------------------------------

    def schedule(self, event: dict[str, Any]) -> dict[str, Any]:
        """Merge the finished wave, settle its reservations, admit the next wave."""
        state = self.load_state(event["state"])
        task = self.task_of(state)
        assert state.plan is not None
        budget, held = Budget.from_state(state.budget)
        holds: dict[str, Reservation] = {r.step_id: r for r in held}
        now = self._now()
        requeue: dict[str, CallPlan] = {}

        for raw in event.get("wave") or []:
            out = StepOutcome.model_validate(self.spiller.resolve(raw))
            self._merge(state, budget, holds, out, now, requeue)

        ready = self._ready(state, requeue)
        left_ms = budget.time_left_ms(now)
        if left_ms is not None and left_ms <= 0 and ready:
            state.stop_reason = state.stop_reason or "deadline"
            for sid in ready:
                self._finish(state, sid, "skipped", "deadline passed before it could start", now)
            ready = []

        wave: list[tuple[str, CallPlan]] = []
        single = len(state.plan.steps) == 1
        # Read once a wave: the models every container's failures have opened circuits on.
        breaker = self.cfg.breaker
        open_models = breaker.open_models() if breaker is not None and ready else frozenset()
        for sid in ready:
            if len(wave) >= MAX_WAVE_STEPS:
                break
            if sid in requeue:
                call = requeue[sid]
                try:
                    holds[sid] = budget.reserve(
                        sid, call.reserved_tokens, call.reserved_cost_usd, now
                    )
                except LimitError as exc:
                    self._limit_stop(state, exc)
                    self._finish(state, sid, "failed", str(exc), now)
                    continue
            else:
                admitted = self._admit(state, task, budget, sid, single, now, open_models)
                if admitted is None:
                    continue
                call, holds[sid] = admitted
            state.steps[sid].phase = "running"
            wave.append((sid, call))

        state.budget = budget.to_state(list(holds.values()))
        running = any(r.phase == "running" for r in state.steps.values())
        done = not wave and not running
        if done:
            # Anything still waiting could not become ready (its dependencies failed).
            for sid, rec in state.steps.items():
                if rec.phase == "waiting":
                    self._finish(state, sid, "skipped", "never became ready", now)
        inline = max(MIN_INLINE_BYTES, WAVE_OUTPUT_BUDGET_BYTES // max(1, len(wave)))
        inline = min(inline, self.spiller.threshold)
        items = [WaveItem(step_id=sid, inline_limit=inline, call=c).to_wire() for sid, c in wave]
        return {
            "state": self.dump_state(state),
            "done": done,
            "ready": items,
            "maxConcurrency": max(1, self.concurrency),
        }

    def _limit_stop(self, state: WorkflowState, exc: LimitError) -> None:
        state.stop_reason = state.stop_reason or (
            "deadline" if isinstance(exc, DeadlineExceededError) else "budget"
        )

    def _admit(
        self,
        state: WorkflowState,
        task: Task,
        budget: Budget,
        sid: str,
        single: bool,
        now: datetime,
        open_models: frozenset[str] = frozenset(),
    ) -> tuple[CallPlan, Reservation] | None:
        """Route a ready step and reserve its worst case (the local engine's order and
        checks); None if it cannot start. Every reservation of a wave is taken here, in
        one function, so parallel steps can never overspend a budget together."""
        step = self._step(state, sid)
        rec = state.steps[sid]
        res = rec.result
        res.started_at = now
        assert state.classification is not None
        try:
            docs, images, image_tokens = self._inputs(state, task, step)
            view = self._resolved_view(state, task, step)
            inp = step_input(
                view,
                step,
                docs,
                images,
                image_tokens,
                state.classification,
                single,
                self._engine.local_classifier,
                frozenset(task.context),
            )
            breaker = self.cfg.breaker
            # A pinned step reaches its call even with an open circuit (it then fails over).
            decision = route_step(
                self._engine.engine_route,
                step,
                inp,
                budget,
                now,
                self._today(),
                unavailable=open_models if step.model is None else frozenset(),
                unavailable_reason=breaker.reason() if breaker is not None else "",
            )
            res.model, res.rule, res.reason = decision.model, decision.rule, decision.reason
            res.candidates = decision.candidates
            rec.decision = decision.model_copy(update={"candidates": []})
            rec.required = sorted(inp.required)
            spec = self.cfg.registry.get(decision.model)
            packed = pack_step(
                self._engine.router,
                self.cfg.policy,
                view,
                step,
                spec,
                docs,
                image_tokens,
                frozenset(task.context),
            )
            reservation = budget.reserve(sid, packed.reserve_tokens, packed.worst_cost_usd, now)
        except LimitError as exc:
            self._limit_stop(state, exc)
            self._finish(state, sid, "skipped", str(exc), now)
            return None
        except PolyrouteError as exc:
            self._finish(state, sid, "failed", str(exc), now)
            return None
        call = CallPlan(
            model=decision.model,
            reserved_tokens=reservation.tokens,
            reserved_cost_usd=reservation.cost_usd,
        )
        return call, reservation

    def _merge(
        self,
        state: WorkflowState,
        budget: Budget,
        holds: dict[str, Reservation],
        out: StepOutcome,
        now: datetime,
        requeue: dict[str, CallPlan],
    ) -> None:
        rec = state.steps[out.step_id]
        held = holds.pop(out.step_id, None)
        state.providers.update(out.providers)
        if out.result is not None:
            rec.result = out.result
        # Outcomes carry the step's billing so far; the budget is charged what is new.
        billed_tokens = rec.result.usage.total - rec.charged_tokens
        billed_cost = out.cost_exact_usd - rec.charged_cost_usd
        rec.charged_tokens = rec.result.usage.total
        rec.charged_cost_usd = max(rec.charged_cost_usd, out.cost_exact_usd)
        if out.status == "succeeded" and out.completed is not None:
            if held is not None:
                budget.settle(held, billed_tokens, billed_cost)
            state.simulated = state.simulated or rec.result.simulated
            rec.result.status = "succeeded"
            rec.phase = "done"
            merge_step(state.handoff, out.step_id, out.completed, out.fact or "")
            return
        if held is not None:
            budget.release(held)
        if billed_tokens > 0:
            budget.charge(billed_tokens, billed_cost)
        if out.status == "fallback" and out.call is not None:
            rec.phase = "waiting"
            requeue[out.step_id] = out.call
            return
        if out.stop_reason:
            state.stop_reason = state.stop_reason or out.stop_reason
        status: StepStatus = "failed" if out.status == "fallback" else out.status
        error = out.error or rec.result.error or "failed"
        self._finish(state, out.step_id, status, error, now)

    def _finish(
        self, state: WorkflowState, sid: str, status: StepStatus, error: str | None, now: datetime
    ) -> None:
        """Close a step that did not succeed, and skip its dependants (as the engine does)."""
        rec = state.steps[sid]
        res = rec.result
        res.status = status
        res.error = error
        res.finished_at = res.finished_at or now
        if res.started_at is not None and res.duration_ms == 0:
            res.duration_ms = round((res.finished_at - res.started_at).total_seconds() * 1000)
        rec.phase = "done"
        merge_step(state.handoff, sid, None, None)
        assert state.plan is not None
        for child in state.plan.steps:
            if sid in child.depends_on and state.steps[child.id].phase == "waiting":
                state.steps[child.id].result.error = None
                self._finish(state, child.id, "skipped", f"dependency {sid} {status}", now)

    def _ready(self, state: WorkflowState, requeue: dict[str, CallPlan]) -> list[str]:
        assert state.plan is not None
        ok = {sid for sid, r in state.steps.items() if r.result.status == "succeeded"}
        ok = {sid for sid in ok if state.steps[sid].phase == "done"}
        return [
            s.id
            for s in state.plan.steps
            if state.steps[s.id].phase == "waiting"
            and (s.id in requeue or all(d in ok for d in s.depends_on))
        ]

    # --- inside the Map: route, compress, execute, fallback ---------------------------------

    def route(self, event: dict[str, Any]) -> dict[str, Any]:
        """Confirm the step's model against the deadline before anything is spent."""
        state = self.load_state(event["state"])
        item = WaveItem.model_validate(event["item"])
        left_ms = Budget.from_state(state.budget)[0].time_left_ms(self._now())
        if left_ms is not None and left_ms <= 0:
            raise DeadlineExceededError("deadline passed before the step could start")
        self.cfg.registry.get(item.call.model)
        return {"item": event["item"], "state": event["state"], "call": item.call.to_wire()}

    def _pack(self, state: WorkflowState, task: Task, step: Step, model: str) -> PackedStep:
        """The step's input packed for ``model`` (the engine's ``pack_step``)."""
        docs, _, image_tokens = self._inputs(state, task, step)
        return pack_step(
            self._engine.router,
            self.cfg.policy,
            self._resolved_view(state, task, step),
            step,
            self.cfg.registry.get(model),
            docs,
            image_tokens,
            frozenset(task.context),
        )

    def compress(self, event: dict[str, Any]) -> dict[str, Any]:
        """Pack the step's input for its model's window (spilled when large)."""
        state = self.load_state(event["state"])
        task = self.task_of(state)
        item = WaveItem.model_validate(event["item"])
        call = CallPlan.model_validate(event["call"])
        step = self._step(state, item.step_id)
        packed = self._pack(state, task, step, call.model)
        body = {
            "prefix": packed.input.prefix,
            "prompt": packed.input.prompt,
            "tokens": packed.input.tokens,
            "compressed": packed.input.compressed,
            "outTokens": packed.out_tokens,
        }
        return {
            "item": event["item"],
            "state": event["state"],
            "call": event["call"],
            "packed": self.spiller.maybe_spill(body, "prompt"),
        }

    def execute(self, event: dict[str, Any], function_time_s: float | None = None) -> Any:
        """One call to the step's model. A provider error is raised by name, for the state
        machine's ``Retry`` and ``Catch``; success returns the step's outcome.

        ``function_time_s`` is what the function has left: the call, its repair and their
        retries end in time to answer. A call the function has no time left for is a
        ``ProviderTimeoutError`` (the state machine retries it in a fresh invocation)."""
        state = self.load_state(event["state"])
        task = self.task_of(state)
        item = WaveItem.model_validate(event["item"])
        call = CallPlan.model_validate(event["call"])
        body = self.spiller.resolve(event["packed"])
        retry_count = int(event.get("retryCount") or 0)
        step = self._step(state, item.step_id)
        spec = self.cfg.registry.get(call.model)
        _, images, _ = self._inputs(state, task, step)
        packed = CompressedInput(
            prefix=body["prefix"],
            prompt=body["prompt"],
            tokens=int(body["tokens"]),
            budget=int(body["tokens"]),
            full_tokens=int(body["tokens"]),
            truncated=["input"] if body.get("compressed") else [],
        )
        req = model_request(spec, step, packed, images, int(body["outTokens"]), self.cfg.seed)
        provider = self.cfg.provider_for(spec)
        budget = self._repair_budget(state.budget)
        limit = self._time_limit(function_time_s)

        def time_left_s() -> float | None:
            now = self._now()
            left = budget.time_left_ms(now)
            task_left = None if left is None else left / 1000.0
            if limit is None:
                return task_left
            function_left = (limit - now).total_seconds()
            return function_left if task_left is None else min(task_left, function_left)

        try:
            result = asyncio.run(
                call_with_retries(
                    provider,
                    req,
                    RetryPolicy(max_attempts=1),
                    random.Random(self.cfg.seed),
                    time_left_s,
                    self.cfg.sleep,
                    breaker=self.cfg.breaker,
                    reserve_repair=repair_reserver(budget, spec, self._now, []),
                    repair_policy=dataclasses.replace(
                        self.cfg.retry, max_attempts=EXECUTE_ATTEMPTS
                    ),
                )
            )
        except DeadlineExceededError:
            left = budget.time_left_ms(self._now())
            if limit is None or self._now() < limit or (left is not None and left <= 0):
                raise
            where = f"{spec.id} on {item.step_id}"
            timeout = ProviderTimeoutError(f"{where}: {_out_of_time('ModelExecutor')}")
            raise tag_provider(timeout, provider.name) from None
        except RepairNotAffordedError as exc:
            # The answer was billed and its repair does not fit: the step fails on the budget.
            caught = {"Error": type(exc.limit).__name__, "Cause": str(exc.limit)}
            return self.fallback(
                {**event, "error": caught},
                billed=(spec, exc.usage, exc.attempts),
                provider=provider.name,
            )
        except (RetriesExhaustedError, ProviderError) as exc:
            error = exc.last if isinstance(exc, RetriesExhaustedError) else exc
            if isinstance(exc, RetriesExhaustedError):
                error.attempts = exc.attempts
            if error.usage is None or error.usage.total == 0:
                raise tag_provider(error, provider.name) from None
            # The provider answered and billed it; a Lambda error cannot carry that, so this
            # takes the Catch's path itself, with what was billed.
            caught = {"Error": type(error).__name__, "Cause": str(error)}
            return self.fallback(
                {**event, "error": caught},
                billed=(spec, error.usage, error.attempts),
                provider=provider.name,
            )
        resp = result.response
        rec = state.steps[item.step_id]
        res = rec.result.model_copy(deep=True)
        res.fallback_from = call.fallback_from
        if call.reason:
            res.reason = call.reason
        res.attempts = call.attempts
        res.usage, res.cost_usd = call.billed, round(call.billed_cost_usd, 8)
        # The state machine's retries of this call, then this invocation's calls (an answer
        # and its repair, with the repair's retries), as the local engine counts them.
        attempts = retry_count + result.attempts
        completed = record_success(res, step, spec, resp, packed.compressed, attempts)
        cost = call.billed_cost_usd + call_cost(spec, resp.usage)
        res.status = "succeeded"
        res.finished_at = self._now()
        if res.started_at is not None:
            res.duration_ms = round((res.finished_at - res.started_at).total_seconds() * 1000)
        completed.result = self.spiller.maybe_spill(resp.text, "output")
        if self.cfg.on_step is not None:
            self.cfg.on_step(res)
        outcome = StepOutcome(
            step_id=item.step_id,
            status="succeeded",
            result=res,
            completed=completed,
            fact=fact(resp.text),
            cost_exact_usd=cost,
            providers={spec.id: provider.name},
        )
        wire = self.spiller.maybe_spill(outcome.to_wire(), "outcome", limit=item.inline_limit)
        return {"next": "done", "outcome": wire}

    def _repair_budget(self, state: BudgetState) -> Budget:
        """The budget a Map iteration reserves a repair call from: the wave's, with the
        share of what is left that the other running steps may repair with held back.

        Parallel iterations each read the same state and cannot see one another's
        reservations, so each takes at most an equal share of what the wave left free:
        together they can never overspend a budget."""
        budget, held = Budget.from_state(state)
        running = sum(r.counts_step for r in held)
        if running > 1:
            others = (running - 1) / running
            tokens_left, cost_left = budget.tokens_left(), budget.cost_left_usd()
            if (left_ms := budget.time_left_ms(self._now())) is not None and left_ms <= 0:
                return budget  # the call itself stops at the deadline
            budget.reserve(
                "the other steps of the wave",
                0 if tokens_left is None else math.ceil(tokens_left * others),
                0.0 if cost_left is None else cost_left * others,
                self._now(),
                counts_step=False,
            )
        return budget

    def fallback(
        self,
        event: dict[str, Any],
        billed: tuple[ModelSpec, Usage, int] | None = None,
        provider: str | None = None,
    ) -> dict[str, Any]:
        """The ``Catch``: after a retryable failure, re-route to the next eligible model;
        otherwise close the step with the error. ``billed`` is the model, what the provider
        billed and the calls made for a failed call it answered, and ``provider`` the name of
        the provider that served it (``execute`` passes both).

        The provider is never looked up here: the ``Fallback`` state runs in the Router
        function, which has no vendor SDKs, so every model would look simulated. It comes
        from ``execute``, directly or tagged onto the error it raised (``tag_provider``)."""
        state = self.load_state(event["state"])
        item = WaveItem.model_validate(event["item"])
        call = CallPlan.model_validate(event.get("call") or item.call.to_wire())
        if billed is not None:
            spent = billed[1]
            call.billed = call.billed + spent
            call.billed_cost_usd += call_cost(billed[0], spent)
        name, message = _error_of(event.get("error") or {})
        served_by = provider or provider_of(event.get("error") or {})
        rec = state.steps[item.step_id]
        res = rec.result.model_copy(deep=True)
        res.attempts = call.attempts
        res.fallback_from = call.fallback_from
        if call.reason:
            res.reason = call.reason
        res.usage, res.cost_usd = call.billed, round(call.billed_cost_usd, 8)
        now = self._now()
        reached_model = "packed" in event
        if billed is not None:
            # The calls of this invocation (an answer and its repair), after the state
            # machine's retries of it.
            res.attempts += int(event.get("retryCount") or 0) + billed[2]
        elif reached_model and name != CircuitOpenError.__name__:
            res.attempts += EXECUTE_ATTEMPTS if name in RETRYABLE_NAMES else 1
        # Unknown (the call failed before a provider was chosen, or the function itself
        # failed): nothing is recorded rather than a guess.
        providers = {call.model: served_by} if reached_model and served_by else {}

        def done(status: OutcomeStatus, stop: str | None = None, **extra: Any) -> dict[str, Any]:
            res.finished_at = now
            if res.started_at is not None:
                res.duration_ms = round((now - res.started_at).total_seconds() * 1000)
            if status != "fallback":
                res.status = status
                res.error = message
            if status != "fallback" and self.cfg.on_step is not None:
                self.cfg.on_step(res)
            outcome = StepOutcome(
                step_id=item.step_id,
                status=status,
                result=res,
                stop_reason=stop,
                providers=providers,
                error=message,
                cost_exact_usd=call.billed_cost_usd,
                **extra,
            )
            wire = self.spiller.maybe_spill(outcome.to_wire(), "outcome", limit=item.inline_limit)
            return {"next": "done", "outcome": wire}

        if name in _LIMIT_NAMES:
            return done("skipped" if res.attempts == 0 else "failed", _LIMIT_NAMES[name])
        if name not in FALLBACK_NAMES:
            return done("failed")
        tried = [*call.tried, call.model]
        nxt = self._next_model(state, item.step_id, tried)
        if nxt is None:
            return done("failed")
        task = self.task_of(state)
        packed = self._pack(state, task, self._step(state, item.step_id), nxt)
        assert rec.decision is not None
        first = rec.decision.model
        decision_reason = fallback_reason(rec.decision, first, name)
        next_call = CallPlan(
            model=nxt,
            tried=tried,
            attempts=res.attempts,
            fallback_from=call.fallback_from or first,
            reason=decision_reason,
            reserved_tokens=packed.reserve_tokens,
            reserved_cost_usd=packed.worst_cost_usd,
            billed=call.billed,
            billed_cost_usd=call.billed_cost_usd,
        )
        fits = (
            packed.reserve_tokens <= call.reserved_tokens
            and packed.worst_cost_usd <= call.reserved_cost_usd + 1e-12
        )
        if not fits:
            # The step's reservation does not cover this model: the scheduler reserves it
            # from what is left of the budget, atomically, in the next wave.
            return done("fallback", call=next_call)
        next_call.reserved_tokens = call.reserved_tokens
        next_call.reserved_cost_usd = call.reserved_cost_usd
        item.call = next_call
        return {
            "next": "compress",
            "item": item.to_wire(),
            "state": event["state"],
            "call": next_call.to_wire(),
        }

    def _next_model(self, state: WorkflowState, sid: str, tried: list[str]) -> str | None:
        decision = state.steps[sid].decision
        if decision is None:
            return None
        today = self._today()
        required = frozenset(state.steps[sid].required)
        breaker = self.cfg.breaker
        open_models = breaker.open_models() if breaker is not None else frozenset()
        for model_id in [decision.model, *decision.fallbacks]:
            if model_id in tried or model_id in open_models:
                continue
            if fallback_ok(self.cfg.registry.get(model_id), decision, today, required):
                return model_id
        return None

    # --- finalize -------------------------------------------------------------------------

    def record_failure(self, event: dict[str, Any]) -> dict[str, str]:
        """A run that ended in an error (an invalid plan, a function that failed): record it
        for ``GET /v1/tasks`` and return the clean error and cause for the ``Fail`` state.

        The event is the failed state's input plus the caught ``error``: the execution input
        (with ``taskId``) when classification failed, else the workflow ``state``."""
        name, message = _error_of(event.get("error") or {})
        task_id = str(event.get("taskId") or "")
        if not task_id and "state" in event:
            try:
                task_id = self.load_state(event["state"]).task_id
            except (PolyrouteError, ValueError):
                task_id = ""
        if self.results is not None and task_id:
            self.results.failed(task_id, f"{name}: {message}", self._now())
        return {"Error": name, "Cause": message}

    def finalize(self, event: dict[str, Any]) -> Any:
        """Build the run's result, store its status, and return it (spilled when large)."""
        state = self.load_state(event["state"])
        assert state.plan is not None
        handoff = state.handoff.model_copy(deep=True)
        handoff.completed_steps = [
            c.model_copy(update={"result": self.spiller.resolve(c.result)})
            for c in handoff.completed_steps
        ]
        budget, _ = Budget.from_state(state.budget)
        result = build_result(
            self.cfg.registry,
            task_id=state.task_id,
            plan=state.plan,
            results=[state.steps[s.id].result for s in state.plan.steps],
            classification=state.classification,
            stop_reason=state.stop_reason,
            simulated=state.simulated,
            providers=state.providers,
            classifier_cost=state.classifier_cost_usd,
            classifier_usage=state.classifier_usage,
            budgets=budget.report(),
            handoff=handoff,
            started=state.started_at,
            finished=self._now(),
        )
        if self.results is not None:
            self.results.finished(state.task_id, result)
        return self.spiller.maybe_spill(result.to_wire(), "result")


# What a role leaves itself, of its function's remaining time, to write its answer.
FUNCTION_TIME_MARGIN_S = 10.0
_CLASSIFIER_FALLBACK = re.compile(r"local \(fallback from model:([^:]+): ")


def _out_of_time(function: str) -> str:
    return (
        f"the {function} function's time ran out (its Lambda timeout, less "
        f"{FUNCTION_TIME_MARGIN_S:g} s to answer); the task's deadline had not passed"
    )


_SERVED_BY = re.compile(r" \[served by ([A-Za-z0-9_.\-]+)\]$")


def tag_provider(error: PolyrouteError, provider: str) -> PolyrouteError:
    """``error`` with the name of the provider that served the call at the end of its
    message: a Lambda error carries only its type and message to the ``Catch``, and the
    ``Fallback`` that reads it runs in a function that cannot tell (``provider_of``)."""
    if error.args and isinstance(error.args[0], str) and not _SERVED_BY.search(error.args[0]):
        error.args = (f"{error.args[0]} [served by {provider}]", *error.args[1:])
    return error


def _raw_message(error: dict[str, Any]) -> str:
    name = str(error.get("Error") or "PolyrouteError")
    cause = error.get("Cause")
    message = str(cause or name)
    if isinstance(cause, str):
        try:
            data = json.loads(cause)
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict) and data.get("errorMessage"):
            message = str(data["errorMessage"])
    return message


def provider_of(error: dict[str, Any]) -> str | None:
    """The provider ``tag_provider`` put on a caught error, if any."""
    match = _SERVED_BY.search(_raw_message(error))
    return match.group(1) if match else None


def _error_of(error: dict[str, Any]) -> tuple[str, str]:
    """The error name and message from a ``Catch`` result (``{"Error", "Cause"}``), without
    the provider tag."""
    name = str(error.get("Error") or "PolyrouteError")
    return name, _SERVED_BY.sub("", _raw_message(error))


class ResultStore(S3Location):
    """Task statuses in the bucket (``results/<taskId>.json``): Express executions cannot be
    described once finished, so the finalizer records each result for ``GET /v1/tasks``."""

    def __init__(self, bucket: str, client: Any = None, prefix: str = "results/") -> None:
        super().__init__(bucket, prefix, client)

    def key(self, task_id: str) -> str:
        return f"{self.prefix}{task_id}.json"

    def put(self, status: TaskStatus) -> None:
        body = json.dumps(status.to_wire(), separators=(",", ":")).encode()
        self.client.put_object(
            Bucket=self.bucket,
            Key=self.key(status.task_id),
            Body=body,
            ContentType="application/json",
        )

    def get(self, task_id: str) -> TaskStatus | None:
        data = self.read(self.key(task_id))
        return None if data is None else TaskStatus.model_validate_json(data)

    def finished(self, task_id: str, result: RunResult) -> None:
        """Record a finished run (keeping the time it was created)."""
        old = self.get(task_id)
        self.put(
            TaskStatus(
                task_id=task_id,
                status=result.status,
                result=result,
                created_at=old.created_at if old else result.started_at,
                updated_at=result.finished_at,
            )
        )

    def failed(self, task_id: str, error: str, now: datetime) -> None:
        """Record a run that ended without a result (an invalid plan, an internal error)."""
        old = self.get(task_id)
        self.put(
            TaskStatus(
                task_id=task_id,
                status="failed",
                error=error,
                created_at=old.created_at if old else now,
                updated_at=now,
            )
        )


class IdempotencyRecord(WireModel):
    """What an Idempotency-Key was first used for: the request's fingerprint and its task."""

    schema_version: str = SCHEMA_VERSION
    request_sha256: str
    task_id: str


class IdempotencyStore(S3Location):
    """Idempotency-Keys in the bucket (``idempotency/<sha256 of the key>.json``), for the
    deployed API as ``polyroute serve``'s SQLite store keeps them locally.

    A key is claimed with a conditional put (``IfNoneMatch="*"``): of two requests racing with
    the same key, exactly one writes the record and starts its task; the other reads it."""

    def __init__(self, bucket: str, client: Any = None, prefix: str = "idempotency/") -> None:
        super().__init__(bucket, prefix, client)

    def key(self, idempotency_key: str) -> str:
        digest = hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()
        return f"{self.prefix}{digest}.json"

    def get(self, idempotency_key: str) -> IdempotencyRecord | None:
        """The record of a key's first use, or None."""
        data = self.read(self.key(idempotency_key))
        return None if data is None else IdempotencyRecord.model_validate_json(data)

    def claim(self, idempotency_key: str, record: IdempotencyRecord) -> IdempotencyRecord | None:
        """Record the key's first use; None if this call did, else the record that won."""
        body = json.dumps(record.to_wire(), separators=(",", ":")).encode()
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=self.key(idempotency_key),
                Body=body,
                ContentType="application/json",
                IfNoneMatch="*",
            )
        except Exception as exc:
            # 412: another request holds the key; 409: a concurrent conditional put is in
            # flight on the same key (S3 asks the loser to retry, which reads the winner).
            if error_code(exc) not in TAKEN:
                raise
            winner = self.get(idempotency_key)
            if winner is None:  # the winner's put is not visible yet: the client retries
                raise
            return winner
        return None

    def release(self, idempotency_key: str) -> None:
        """Forget a key whose task never started, so a retry with it can start it."""
        self.client.delete_object(Bucket=self.bucket, Key=self.key(idempotency_key))


def workflow_from_env(
    environ: dict[str, str] | None = None, s3_client: Any = None, dynamodb_client: Any = None
) -> tuple[Workflow, ResultStore | None]:
    """The workflow a Lambda container runs, configured by its environment (read once).

    ``POLYROUTE_BUCKET`` (spill and results; without it, spills go to
    ``POLYROUTE_SPILL_DIR``), ``POLYROUTE_SPILL_THRESHOLD_BYTES``, ``POLYROUTE_PROVIDER``
    (``auto``: live where keys are present), ``POLYROUTE_CLASSIFIER``,
    ``POLYROUTE_CONCURRENCY``, ``POLYROUTE_SEED``, ``POLYROUTE_TIME_SCALE``, and
    ``POLYROUTE_BREAKER_TABLE`` (the DynamoDB table of the shared circuit breaker; without it
    there is none) with ``POLYROUTE_BREAKER`` = ``threshold,window_s,cooldown_s``
    (default ``5,30,60``)."""
    from polyroute.circuit import SharedCircuitBreaker
    from polyroute.providers.select import provider_selector
    from polyroute.registry import load_registry
    from polyroute.routing import load_policy
    from polyroute.spill import DEFAULT_THRESHOLD_BYTES, DirStore, S3Store

    env = dict(os.environ if environ is None else environ)
    seed = int(env.get("POLYROUTE_SEED", "0"))
    breaker = None
    if env.get("POLYROUTE_BREAKER_TABLE"):
        threshold, window_s, cooldown_s = _breaker_settings(env.get("POLYROUTE_BREAKER", ""))
        breaker = SharedCircuitBreaker(
            env["POLYROUTE_BREAKER_TABLE"], threshold, window_s, cooldown_s, dynamodb_client
        )
    cfg = EngineConfig(
        registry=load_registry(env.get("POLYROUTE_MODELS") or None),
        policy=load_policy(env.get("POLYROUTE_ROUTING") or None),
        provider_for=provider_selector(
            env.get("POLYROUTE_PROVIDER", "auto"),
            seed=seed,
            time_scale=float(env.get("POLYROUTE_TIME_SCALE", "1.0")),
        ),
        classifier=env.get("POLYROUTE_CLASSIFIER", "local"),
        seed=seed,
        breaker=breaker,
    )
    bucket = env.get("POLYROUTE_BUCKET")
    threshold = int(env.get("POLYROUTE_SPILL_THRESHOLD_BYTES") or DEFAULT_THRESHOLD_BYTES)
    store: S3Store | DirStore
    results: ResultStore | None = None
    if bucket:
        store = S3Store(bucket, env.get("POLYROUTE_SPILL_PREFIX", "spill/"), s3_client)
        results = ResultStore(bucket, s3_client)
    else:
        store = DirStore(env.get("POLYROUTE_SPILL_DIR", "/tmp/polyroute-spill"))
    wf = Workflow(
        cfg,
        Spiller(store, threshold),
        concurrency=int(env.get("POLYROUTE_CONCURRENCY", "8")),
        results=results,
    )
    return wf, results


def _breaker_settings(text: str) -> tuple[int, float, float]:
    """``threshold,window_s,cooldown_s`` from ``POLYROUTE_BREAKER`` (default ``5,30,60``)."""
    if not text.strip():
        return 5, 30.0, 60.0
    parts = [p.strip() for p in text.split(",")]
    try:
        if len(parts) != 3:
            raise ValueError
        threshold, window_s, cooldown_s = int(parts[0]), float(parts[1]), float(parts[2])
    except ValueError:
        raise ConfigError(
            f"POLYROUTE_BREAKER={text!r}: expected threshold,window_s,cooldown_s (e.g. 5,30,60)"
        ) from None
    if threshold < 1 or window_s <= 0 or cooldown_s <= 0:
        raise ConfigError(f"POLYROUTE_BREAKER={text!r}: every figure must be positive")
    return threshold, window_s, cooldown_s


__all__ = [
    "EXECUTE_ATTEMPTS",
    "MAX_WAVE_STEPS",
    "STATE_LIMIT_BYTES",
    "CallPlan",
    "StartInput",
    "StepOutcome",
    "WaveItem",
    "Workflow",
    "WorkflowState",
    "is_ref",
]


# --- batches: a JSONL file in the bucket, one child execution per line ----------------------

BATCH_PREFIX = "batches/"
BATCH_RESULTS_PREFIX = "batch-results/"
BATCH_WORK_PREFIX = "batch-work/"
# Where the batch Map's ResultWriter puts its output (statemachines/batch.asl.json).
MAP_RUNS_PREFIX = f"{BATCH_RESULTS_PREFIX}map-runs/"


class BatchItem(WireModel):
    """One line of a batch as the Distributed Map reads it: the child execution's input."""

    line: int
    task_id: str
    task: dict[str, Any]


class PreparedBatch(WireModel):
    """What ``prepare_batch`` wrote, and where the results will go.

    This is the batch workflow's state: the invalid lines' records are in the bucket
    (``invalid_key``), not here, so that a file of many long invalid lines cannot take the
    state past Step Functions' 256 KiB. ``invalid`` is only read: records inline in the
    state of an execution prepared before they were written to the bucket."""

    bucket: str
    key: str
    name: str
    items_key: str
    results_prefix: str
    count: int
    invalid_key: str | None = None
    invalid_count: int = 0
    invalid: list[dict[str, Any]] = Field(default_factory=list)
    max_concurrency: int = 10


def batch_name(key: str) -> str:
    """``batches/team/nightly.jsonl`` -> ``team/nightly``."""
    name = key.removeprefix(BATCH_PREFIX)
    return name.removesuffix(".jsonl") or "batch"


def parse_batch_lines(text: str, stem: str) -> tuple[list[tuple[int, str, Task]], list[Any]]:
    """Valid tasks (line, task id, task) and invalid lines (as ``BatchRecord``s).

    Blank lines and ``#`` comments are skipped, as in ``polyroute batch``; attachments must be
    inline (a path means nothing in the bucket)."""
    from polyroute.api import parse_task_body
    from polyroute.batch import BatchRecord
    from polyroute.errors import InputError

    valid: list[tuple[int, str, Task]] = []
    invalid: list[BatchRecord] = []
    seen: set[str] = set()
    for n, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            task = parse_task_body(json.loads(stripped))
        except json.JSONDecodeError as exc:
            invalid.append(BatchRecord(line=n, status="invalid", error=f"invalid JSON: {exc.msg}"))
            continue
        except InputError as exc:
            invalid.append(BatchRecord(line=n, status="invalid", error=str(exc)))
            continue
        task_id = task.task_id or f"{stem.replace('/', '-')}-{n}"
        if task_id in seen:
            invalid.append(
                BatchRecord(line=n, task_id=task_id, status="invalid", error="duplicate taskId")
            )
            continue
        seen.add(task_id)
        valid.append((n, task_id, task))
    return valid, invalid


def prepare_batch(
    s3: Any, spiller: Spiller, bucket: str, key: str, max_concurrency: int = 10
) -> PreparedBatch:
    """Read a JSONL batch, validate each line, write the Map's items file (JSON array).

    Each line runs as an Express child execution, so its task gets at most
    ``EXPRESS_LIMIT_S`` from its own start (``for_express_later``): a long line ends
    ``partial`` and is recorded, rather than being stopped at 5 minutes with nothing written."""
    from polyroute.api import for_express_later

    name = batch_name(key)
    if f"{BATCH_RESULTS_PREFIX}{name}/".startswith(MAP_RUNS_PREFIX):
        # Its results would be mixed with the Map's and expire with them.
        raise ConfigError(f"{key}: a batch cannot be named {name!r} ({MAP_RUNS_PREFIX} is taken)")
    text = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8", "replace")
    valid, invalid = parse_batch_lines(text, name)
    items = [
        BatchItem(
            line=n,
            task_id=tid,
            task=spiller.maybe_spill(for_express_later(task).to_wire(), "task"),
        ).to_wire()
        for n, tid, task in valid
    ]
    items_key = f"{BATCH_WORK_PREFIX}{name}/items.json"
    s3.put_object(Bucket=bucket, Key=items_key, Body=json.dumps(items).encode())
    invalid_key = None
    if invalid:
        invalid_key = f"{BATCH_WORK_PREFIX}{name}/invalid.json"
        body = json.dumps([r.to_wire() for r in invalid], separators=(",", ":"))
        s3.put_object(Bucket=bucket, Key=invalid_key, Body=body.encode())
    return PreparedBatch(
        bucket=bucket,
        key=key,
        name=name,
        items_key=items_key,
        results_prefix=f"{BATCH_RESULTS_PREFIX}{name}/",
        count=len(items),
        invalid_key=invalid_key,
        invalid_count=len(invalid),
        max_concurrency=max_concurrency,
    )


def summarize_batch(s3: Any, results: ResultStore, prepared: PreparedBatch) -> dict[str, Any]:
    """Collect every line's recorded status into ``results.jsonl`` and ``summary.json``
    beside each other under ``batch-results/<name>/`` (the same records and summary as
    ``polyroute batch`` writes locally)."""
    from polyroute.batch import BatchRecord, summarize

    items = json.loads(s3.get_object(Bucket=prepared.bucket, Key=prepared.items_key)["Body"].read())
    invalid = list(prepared.invalid)
    if prepared.invalid_key is not None:
        obj = s3.get_object(Bucket=prepared.bucket, Key=prepared.invalid_key)
        invalid.extend(json.loads(obj["Body"].read()))
    records = [BatchRecord.model_validate(r) for r in invalid]
    for raw in items:
        item = BatchItem.model_validate(raw)
        status = results.get(item.task_id)
        if status is None or status.status == "running":
            records.append(
                BatchRecord(
                    line=item.line,
                    task_id=item.task_id,
                    status="failed",
                    error="no result was recorded for this task",
                )
            )
        elif status.result is None:
            records.append(
                BatchRecord(
                    line=item.line, task_id=item.task_id, status="failed", error=status.error
                )
            )
        else:
            records.append(BatchRecord.of_result(item.line, item.task_id, status.result))
    records.sort(key=lambda rec: rec.line)
    lines = "".join(json.dumps(rec.to_wire(), separators=(",", ":")) + "\n" for rec in records)
    summary = summarize(records)
    results_key = f"{prepared.results_prefix}results.jsonl"
    summary_key = f"{prepared.results_prefix}summary.json"
    s3.put_object(Bucket=prepared.bucket, Key=results_key, Body=lines.encode())
    s3.put_object(
        Bucket=prepared.bucket, Key=summary_key, Body=json.dumps(summary.to_wire()).encode()
    )
    return {
        "results": f"s3://{prepared.bucket}/{results_key}",
        "summary": f"s3://{prepared.bucket}/{summary_key}",
        "tasks": summary.tasks,
        "byStatus": summary.by_status,
        "costUsd": summary.cost_usd,
    }
