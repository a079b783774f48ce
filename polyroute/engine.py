"""The in-process engine: classify, plan, then run the graph with asyncio.

A step starts the moment its own dependencies are done (not wave by wave), bounded by the
concurrency limit. Every call reserves its worst case against the budgets first; at the
deadline nothing new starts and running calls are cancelled. A failed step skips its
dependants and lets independent branches finish.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from polyroute.budget import Budget, Reservation
from polyroute.circuit import Breaker
from polyroute.classify import ClassifyInput, LocalClassifier, ModelCall, ModelClassifier
from polyroute.compress import (
    CompressedInput,
    Document,
    build_sections,
    compress,
    measure_sections,
)
from polyroute.cost import call_cost, estimate_call_cost, savings_pct
from polyroute.errors import (
    BudgetExceededError,
    ClassificationError,
    DeadlineExceededError,
    LimitError,
    NoEligibleModelError,
    PinnedModelError,
    PlanningError,
    PolyrouteError,
    ProviderError,
)
from polyroute.execute import (
    RepairNotAffordedError,
    ReserveRepair,
    RetriesExhaustedError,
    RetryPolicy,
    call_with_retries,
)
from polyroute.graph import critical_path, validate_plan, waves
from polyroute.planner import (
    PLAN_MAX_TOKENS,
    ModelPlanner,
    check_pins,
    needs_planner,
    plan_request,
    single_step_plan,
)
from polyroute.providers.base import ImageInput, ModelRequest, ModelResponse, Provider
from polyroute.providers.simulated import SimulatedProvider
from polyroute.registry import ModelSpec, Registry
from polyroute.routing import Policy, Router, RouteRequest
from polyroute.schema import (
    AgentHandoff,
    Baseline,
    BudgetReport,
    Capability,
    Classification,
    CompletedStep,
    Plan,
    RouteDecision,
    RunResult,
    Step,
    StepResult,
    Task,
    Totals,
    Usage,
)
from polyroute.taskfile import Materialized, materialize
from polyroute.tokens import IMAGE_TOKENS_DEFAULT, estimate_tokens

logger = logging.getLogger(__name__)

STEP_SYSTEM = (
    "You are one agent in a multi-model pipeline. Do only your step, using the task, the "
    "results of the steps it depends on and the facts given. Be concise and concrete."
)
SYSTEM_TOKENS = estimate_tokens(STEP_SYSTEM)
FACT_CHARS = 280
# A step sees the facts of at most this many of its nearest indirect ancestors.
MAX_STEP_FACTS = 16

ProviderFor = Callable[[ModelSpec], Provider]


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class EngineConfig:
    """How a run is carried out; everything external is injectable."""

    registry: Registry
    policy: Policy
    provider_for: ProviderFor
    classifier: str = "local"
    concurrency: int = 8
    seed: int = 0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    clock: Callable[[], datetime] = _utcnow
    today: date | None = None
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    on_step: Callable[[StepResult], None] | None = None
    breaker: Breaker | None = None


@dataclass
class _StepState:
    step: Step
    result: StepResult
    completed: CompletedStep | None = None
    decision: RouteDecision | None = None
    output: Any = None


class Run:
    """One task's run: its plan, budget, handoff and step states.

    ``time_limit`` is when the process running this part of the run must stop (a Lambda
    function's timeout, less a margin): calls and retry waits end by it as by the task's
    deadline, whichever comes first (``out_of_function_time`` tells which one ran out)."""

    def __init__(
        self, engine: Engine, task: Task, task_id: str, time_limit: datetime | None = None
    ) -> None:
        self.engine = engine
        self.time_limit = time_limit
        self.cfg = engine.cfg
        self.task = task
        self.task_id = task_id
        self.started = self.cfg.clock()
        deadline = task.constraints.deadline
        if task.constraints.timeout_seconds is not None:
            rel = self.started + timedelta(seconds=task.constraints.timeout_seconds)
            deadline = min(deadline, rel) if deadline is not None else rel
        self.deadline = deadline
        self.budget = Budget(task.constraints, deadline=deadline)
        self.handoff = AgentHandoff(
            task_id=task_id,
            original_task=task.description,
            current_context=dict(task.context),
            constraints=task.constraints,
        )
        self.stop_reason: str | None = None
        self.rng = random.Random(self.cfg.seed)
        # What classification and planning used and cost (the budget holds it too).
        self.classifier_cost = 0.0
        self.classifier_usage = Usage()
        self.providers: dict[str, str] = {}
        self.simulated = False
        self.deps: dict[str, list[str]] = {}
        # The model that planned, and why the ones before it did not (set by model_plan).
        self.planned_by: str | None = None

    def time_left_s(self) -> float | None:
        now = self.cfg.clock()
        left = self.budget.time_left_ms(now)
        task_left = None if left is None else left / 1000.0
        if self.time_limit is None:
            return task_left
        function_left = (self.time_limit - now).total_seconds()
        return function_left if task_left is None else min(task_left, function_left)

    def out_of_function_time(self) -> bool:
        """True when ``time_limit`` has passed while the task's deadline has not: a call
        stopped for want of time was stopped by the function, not by the task."""
        if self.time_limit is None:
            return False
        now = self.cfg.clock()
        if now < self.time_limit:
            return False
        left = self.budget.time_left_ms(now)
        return left is None or left > 0

    def today(self) -> date:
        return self.cfg.today or self.cfg.clock().date()

    def record_overhead(self, spec: ModelSpec, usage: Usage) -> float:
        """Add a classification or planning call's usage to the run's; return its cost."""
        cost = call_cost(spec, usage)
        self.classifier_usage = self.classifier_usage + usage
        self.classifier_cost += cost
        return cost

    def charge_overhead(self, spec: ModelSpec, billed: Usage | None) -> None:
        """Charge what a failed classification or planning call was billed (an HTTP error
        bills nothing) to the run and its budget."""
        if billed is not None and billed.total > 0:
            self.budget.charge(billed.total, self.record_overhead(spec, billed))


class Engine:
    """Runs tasks in-process."""

    def __init__(self, cfg: EngineConfig) -> None:
        self.cfg = cfg
        self.router = Router(cfg.registry, cfg.policy)
        self.local_classifier = LocalClassifier()

    # --- classification and planning -----------------------------------------------------

    async def classify(
        self, task: Task, mat: Materialized, run: Run | None = None
    ) -> Classification:
        """Classify the task with the configured classifier.

        The model classifier's calls are budgeted and retried as a step's are; when it
        fails, or does not fit the budget or the deadline, the free local classifier answers
        and its ``classifier`` says why."""
        item = ClassifyInput(
            text=task.description,
            type_hint=task.type,
            complexity_hint=task.complexity,
            image_count=len(mat.images),
            extra_tokens=mat.document_tokens + mat.image_tokens,
        )
        if self.cfg.classifier != "model":
            return self.local_classifier.classify_sync(item)
        if run is None:
            run = Run(self, task, task.task_id or "classify")
        spec, _ = self.cfg.registry.resolve(
            self.cfg.registry.tiers.get("fast", "claude-haiku-4-5"), run.today()
        )
        spent = run.classifier_cost
        clf = ModelClassifier(
            spec,
            self.cfg.provider_for(spec),
            seed=self.cfg.seed,
            call=self.budgeted_call(run, "classification", spec),
            # Classifying needs no more of the task than fits the window share.
            max_input_tokens=self.router.window_tokens(spec),
        )
        try:
            return await clf.classify(item)
        except (RetriesExhaustedError, ClassificationError, LimitError) as exc:
            why = failure_note(exc)
        local = self.local_classifier.classify_sync(item)
        return local.model_copy(
            update={
                "classifier": f"local (fallback from model:{spec.id}: {why})",
                "cost_usd": round(run.classifier_cost - spent, 8),
            }
        )

    def check_pins(self, task: Task, mat: Materialized, run: Run) -> None:
        """Refuse a given plan that pins an unknown or ineligible model (exit 2), before
        anything is spent."""
        if task.plan is not None:
            check_pins(task.plan, self.cfg.registry, run.today(), len(mat.images))

    async def make_plan(
        self, task: Task, classification: Classification, run: Run, images: int = 0
    ) -> Plan:
        """The task's plan: given, from the planner, or a single step; always validated.

        A given plan's pinned models are checked (``images``: how many the task attaches).
        The planning call is budgeted and retried as a step's is, then falls back to the
        next eligible planning model (a cheaper one when it does not fit the budget);
        ``BudgetExceededError`` if no planning model fits the budget, ``PlanningError`` when
        no model is left."""
        if task.plan is not None:
            plan = task.plan
        elif needs_planner(task, classification):
            plan = await self.model_plan(task, run)
            if task.attachments:
                plan = Plan(
                    steps=[s.model_copy(update={"use_attachments": True}) for s in plan.steps],
                    source=plan.source,
                )
        else:
            plan = single_step_plan(task, classification)
        validate_plan(plan, task.constraints.max_steps)
        if task.plan is not None:
            check_pins(plan, self.cfg.registry, run.today(), images)
        return plan

    def planning_models(self, task: Task, run: Run) -> list[ModelSpec]:
        """The planning model (the reasoning tier's, past retired models), then the models
        a planning call may fall back to, nearest in price first: as the router orders a
        step's fallbacks, among the live models with JSON mode and room for the plan.

        Only models whose window share (``Router.window_tokens``) holds the planning
        request are listed, in that order; ``PlanningError``, naming the size, if none does."""
        registry = self.cfg.registry
        primary, _ = registry.resolve(
            registry.tiers.get("reasoning", "claude-opus-4-5"), run.today()
        )
        req = plan_request(primary, task)
        tokens = estimate_tokens(f"{req.system}\n{req.prompt}")
        models = self._planning_candidates(primary, tokens, run)
        # As a step's input, the planning request must fit the share of a model's window the
        # policy lets a call fill; a planning request is not compressed, so a model whose
        # share it exceeds cannot plan.
        fitting = [s for s in models if tokens <= self.router.window_tokens(s)]
        if not fitting:
            shares = ", ".join(f"{s.id}: {self.router.window_tokens(s):,}" for s in models)
            raise PlanningError(
                f"the planning request is {tokens:,} tokens, more than "
                f"{self.cfg.policy.window_use:.0%} of the window of every planning model "
                f"({shares}); shorten the task's description or give a plan"
            )
        return fitting

    def _planning_candidates(self, primary: ModelSpec, tokens: int, run: Run) -> list[ModelSpec]:
        """The planning model and its fallbacks, whatever the request's size."""
        registry = self.cfg.registry
        route = RouteRequest(
            classification=Classification(type="planning", complexity="high", token_count=tokens),
            input_tokens=tokens,
            output_tokens=PLAN_MAX_TOKENS,
            required=frozenset({"json_mode"}),
            pinned=primary.id,
            today=run.today(),
        )
        try:
            decision = self.router.route(route)
        except PinnedModelError:
            # The tier's model cannot plan (a custom registry): the policy's choice leads.
            try:
                decision = self.router.route(replace(route, pinned=None))
            except NoEligibleModelError:
                return [primary]
            return [registry.get(decision.model), *map(registry.get, decision.fallbacks)]
        return [primary, *map(registry.get, decision.fallbacks)]

    async def model_plan(self, task: Task, run: Run) -> Plan:
        """A plan from the planning model, falling back to the next eligible model when its
        retries run out (or its circuit is open), or when it does not fit what is left of the
        budget (a cheaper one may, as a step moves to a cheaper model): ``BudgetExceededError``
        only when no planning model fits. ``run.planned_by`` says which model planned and why.
        """
        failed: list[str] = []
        over_budget: list[str] = []
        b = self.cfg.breaker
        for i, spec in enumerate(self.planning_models(task, run)):
            if i > 0 and b is not None and b.is_open(spec.id):
                failed.append(f"{spec.id}: {b.reason()}")
                continue
            planner = ModelPlanner(
                spec,
                self.cfg.provider_for(spec),
                seed=self.cfg.seed,
                call=self.budgeted_call(run, "planning", spec),
            )
            try:
                plan = await planner.plan(task)
            except RetriesExhaustedError as exc:
                failed.append(f"{spec.id}: {failure_note(exc)}")
                continue
            except BudgetExceededError as exc:
                over_budget.append(str(exc))
                continue
            passed = "; ".join(failed + over_budget)
            run.planned_by = spec.id if not passed else f"{spec.id} ({passed})"
            if passed:
                logger.info("task %s planned on %s", run.task_id, run.planned_by)
            return plan
        tried = "; ".join(failed + over_budget)
        if over_budget:
            raise BudgetExceededError(f"no planning model fits the budget ({tried})")
        raise PlanningError(f"planning failed on every eligible model ({tried})")

    def budgeted_call(self, run: Run, what: str, spec: ModelSpec) -> ModelCall:
        """How a classification or planning call of ``spec`` is made: its worst case reserved
        first (not as a step), then the engine's retries, backoff, deadline and breaker; what
        it used settled after. On failure the reservation is given back and what the
        provider billed is charged. Raises ``RetriesExhaustedError`` when retries run out,
        ``LimitError`` when it does not fit the budget or the deadline."""
        provider = self.cfg.provider_for(spec)

        async def call(req: ModelRequest) -> ModelResponse:
            reservation = reserve_call(
                run.budget, f"{what} on {spec.id}", spec, req, self.cfg.clock()
            )
            run.providers[spec.id] = provider.name
            try:
                result = await call_with_retries(
                    provider,
                    req,
                    self.cfg.retry,
                    run.rng,
                    run.time_left_s,
                    self.cfg.sleep,
                    breaker=self.cfg.breaker,
                    repair=False,
                )
            except RetriesExhaustedError as exc:
                run.budget.release(reservation)
                run.charge_overhead(spec, exc.last.usage)
                raise
            except ProviderError as exc:
                run.budget.release(reservation)
                run.charge_overhead(spec, exc.usage)
                raise
            except BaseException:
                run.budget.release(reservation)
                raise
            resp = result.response
            run.budget.settle(reservation, resp.usage.total, run.record_overhead(spec, resp.usage))
            run.simulated = run.simulated or resp.simulated
            return resp

        return call

    # --- the run ---------------------------------------------------------------------------

    async def run(self, task: Task, task_id: str | None = None) -> RunResult:
        """Run a task to its result. Raises for bad input (an invalid plan, a pinned model
        that cannot take its step, config). When planning fails or does not fit the budget
        or the deadline, no step runs and the result says so (``planning_failed``), with
        what classification and planning spent."""
        run = Run(self, task, task_id or task.task_id or uuid.uuid4().hex[:12])
        mat = materialize(task.attachments)
        self.check_pins(task, mat, run)
        classification = await self.classify(task, mat, run)
        try:
            plan = await self.make_plan(task, classification, run, len(mat.images))
        except (PlanningError, LimitError) as exc:
            plan, failed = planning_failed(exc, self.cfg.clock())
            run.stop_reason = limit_stop_reason(exc)
            run.handoff.remaining_steps = []
            return self._result(
                run, plan, {failed.step_id: _StepState(plan.steps[0], failed)}, classification
            )
        states = {s.id: _StepState(step=s, result=pending_result(s)) for s in plan.steps}
        run.handoff.remaining_steps = [s.id for s in plan.steps]
        run.deps = {s.id: list(s.depends_on) for s in plan.steps}
        await self._run_graph(run, plan, states, mat, classification)
        return self._result(run, plan, states, classification)

    async def _run_graph(
        self,
        run: Run,
        plan: Plan,
        states: dict[str, _StepState],
        mat: Materialized,
        classification: Classification,
    ) -> None:
        waiting = {s.id: len(s.depends_on) for s in plan.steps}
        children: dict[str, list[str]] = {s.id: [] for s in plan.steps}
        for s in plan.steps:
            for d in s.depends_on:
                children[d].append(s.id)
        sem = asyncio.Semaphore(max(1, self.cfg.concurrency))
        tasks: set[asyncio.Task[None]] = set()
        done_event = asyncio.Event()
        remaining = len(plan.steps)
        single = len(plan.steps) == 1

        def finish(step_id: str) -> None:
            nonlocal remaining
            remaining -= 1
            state = states[step_id]
            if self.cfg.on_step is not None:
                self.cfg.on_step(state.result)
            ok = state.result.status == "succeeded"
            for child in children[step_id]:
                if not ok:
                    skip(child, f"dependency {step_id} {state.result.status}")
                    continue
                waiting[child] -= 1
                if waiting[child] == 0 and states[child].result.error is None:
                    start(child)
            if remaining == 0:
                done_event.set()

        def skip(step_id: str, why: str) -> None:
            res = states[step_id].result
            if res.error is not None:
                return
            res.status = "skipped"
            res.error = why
            finish(step_id)

        def start(step_id: str) -> None:
            t = asyncio.ensure_future(worker(step_id))
            tasks.add(t)
            t.add_done_callback(tasks.discard)

        crashed: list[BaseException] = []

        async def worker(step_id: str) -> None:
            try:
                async with sem:
                    await self._run_step(run, states[step_id], mat, classification, single)
                finish(step_id)
            except Exception as exc:
                # Not the step's failure (that is recorded in it) but the engine's own, or an
                # on_step callback's: fail the run rather than wait for a step that never ends.
                crashed.append(exc)
                done_event.set()

        for s in plan.steps:
            if waiting[s.id] == 0:
                start(s.id)
        if remaining == 0:
            return
        left = run.time_left_s()
        try:
            await asyncio.wait_for(done_event.wait(), timeout=left)
        except TimeoutError:
            run.stop_reason = run.stop_reason or "deadline"
            for t in list(tasks):
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            now = self.cfg.clock()
            for st in states.values():
                if st.result.status == "skipped" and st.result.error is None:
                    st.result.error = "deadline passed before it could start"
                elif st.result.status == "cancelled":
                    st.result.finished_at = st.result.finished_at or now
        if crashed:
            for t in list(tasks):
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise crashed[0]

    def step_handoff(self, run: Run, step: Step) -> AgentHandoff:
        """The handoff a step receives (see ``step_view``)."""
        return step_view(run.handoff, run.task, run.deps, step)

    def step_inputs(
        self, run: Run, state: _StepState, mat: Materialized
    ) -> tuple[list[Document], tuple[ImageInput, ...], int]:
        """Documents, images and image tokens a step reads."""
        if not state.step.use_attachments:
            return [], (), 0
        return list(mat.documents), mat.images, mat.image_tokens

    async def _run_step(
        self,
        run: Run,
        state: _StepState,
        mat: Materialized,
        task_class: Classification,
        single: bool,
    ) -> None:
        step, res = state.step, state.result
        res.started_at = self.cfg.clock()
        t0 = time.perf_counter()
        res.status = "failed"
        try:
            await self._route_and_call(run, state, mat, task_class, single)
            res.status = "succeeded"
        except asyncio.CancelledError:
            res.status = "cancelled"
            res.error = "cancelled at the deadline"
            run.stop_reason = run.stop_reason or "deadline"
        except LimitError as exc:
            res.status = "skipped" if res.attempts == 0 else "failed"
            res.error = str(exc)
            run.stop_reason = run.stop_reason or (
                "deadline" if isinstance(exc, DeadlineExceededError) else "budget"
            )
        except PolyrouteError as exc:
            res.status = "failed"
            res.error = str(exc)
        except Exception as exc:
            # A bug or an unexpected error (a provider's, a counter's): the step fails with
            # it, and the run goes on; it must never leave the run waiting.
            logger.exception("step %s failed unexpectedly", step.id)
            res.status = "failed"
            res.error = f"internal error: {type(exc).__name__}: {exc}"
        finally:
            res.finished_at = self.cfg.clock()
            res.duration_ms = round((time.perf_counter() - t0) * 1000)
        ok = res.status == "succeeded" and state.completed is not None
        merge_step(run.handoff, step.id, state.completed if ok else None, state.output)

    async def _route_and_call(
        self,
        run: Run,
        state: _StepState,
        mat: Materialized,
        task_class: Classification,
        single: bool,
    ) -> None:
        step, res = state.step, state.result
        docs, images, image_tokens = self.step_inputs(run, state, mat)
        view = self.step_handoff(run, step)
        inp = step_input(
            view, step, docs, images, image_tokens, task_class, single, self.local_classifier
        )
        b = self.cfg.breaker
        # A pinned step reaches its call even with an open circuit (it then fails over).
        open_models = b.open_models() if b is not None and step.model is None else frozenset()
        decision = route_step(
            self.engine_route,
            step,
            inp,
            run.budget,
            self.cfg.clock(),
            run.today(),
            unavailable=open_models,
            unavailable_reason=b.reason() if b is not None else "",
        )
        state.decision = decision
        res.model, res.rule, res.reason = decision.model, decision.rule, decision.reason
        res.candidates = decision.candidates
        chain = [decision.model, *decision.fallbacks]
        last_error: ProviderError | None = None
        for i, model_id in enumerate(chain):
            spec = self.cfg.registry.get(model_id)
            if i > 0:
                # Re-check the fallback against what is left now, with its own window.
                if not fallback_ok(spec, decision, run.today(), inp.required):
                    continue
                if b is not None and b.is_open(spec.id):
                    continue
                res.fallback_from = res.fallback_from or decision.model
                res.reason = fallback_reason(decision, chain[0], last_error)
            done = await self._call_model(run, state, spec, view, docs, images, image_tokens)
            if done is None:
                return
            last_error = done
        if last_error is not None:
            raise last_error

    def engine_route(self, req: RouteRequest) -> RouteDecision:
        """Route one step (a seam for tests and the Step Functions router)."""
        return self.router.route(req)

    async def _call_model(
        self,
        run: Run,
        state: _StepState,
        spec: ModelSpec,
        view: AgentHandoff,
        docs: list[Document],
        images: tuple[ImageInput, ...],
        image_tokens: int,
    ) -> ProviderError | None:
        """One model, with retries. None on success; the error when it should fall back."""
        step, res = state.step, state.result
        shared = frozenset(run.task.context)
        pack = functools.partial(
            pack_step, self.router, self.cfg.policy, view, step, spec, docs, image_tokens, shared
        )
        provider = self.cfg.provider_for(spec)
        packed = await fit_exactly(provider, spec, step, self.cfg.policy, pack(), pack, images)
        reservation = run.budget.reserve(
            step.id, packed.reserve_tokens, packed.worst_cost_usd, self.cfg.clock()
        )
        run.providers[spec.id] = provider.name
        req = model_request(spec, step, packed.input, images, packed.out_tokens, self.cfg.seed)
        repairs: list[Reservation] = []
        try:
            call = await call_with_retries(
                provider,
                req,
                self.cfg.retry,
                run.rng,
                run.time_left_s,
                self.cfg.sleep,
                breaker=self.cfg.breaker,
                reserve_repair=repair_reserver(run.budget, spec, self.cfg.clock, repairs),
            )
        except RetriesExhaustedError as exc:
            release_all(run.budget, repairs)
            charge_failure(run.budget, reservation, res, spec, exc.last)
            res.attempts += exc.attempts
            return exc.last
        except ProviderError as exc:
            release_all(run.budget, repairs)
            charge_failure(run.budget, reservation, res, spec, exc)
            res.attempts += exc.attempts
            raise
        except RepairNotAffordedError as exc:
            release_all(run.budget, repairs)
            run.budget.release(reservation)
            run.budget.charge(exc.usage.total, record_billed(res, spec, exc.usage))
            res.attempts += exc.attempts
            raise exc.limit from None
        except BaseException:
            release_all(run.budget, repairs)
            run.budget.release(reservation)
            res.attempts += 1
            raise
        release_all(run.budget, repairs)
        resp = call.response
        run.budget.settle(reservation, resp.usage.total, call_cost(spec, resp.usage))
        run.simulated = run.simulated or resp.simulated
        state.output = resp.text
        state.completed = record_success(
            res, step, spec, resp, packed.input.compressed, call.attempts
        )
        return None

    # --- the result --------------------------------------------------------------------------

    def _result(
        self,
        run: Run,
        plan: Plan,
        states: dict[str, _StepState],
        classification: Classification,
    ) -> RunResult:
        return build_result(
            self.cfg.registry,
            task_id=run.task_id,
            plan=plan,
            results=[states[s.id].result for s in plan.steps],
            classification=classification,
            stop_reason=run.stop_reason,
            simulated=run.simulated,
            providers=run.providers,
            classifier_cost=run.classifier_cost,
            classifier_usage=run.classifier_usage,
            budgets=run.budget.report(),
            handoff=run.handoff,
            started=run.started,
            finished=self.cfg.clock(),
        )


# --- the pieces of a step, shared with the Step Functions workflow (polyroute.workflow) -------


def pending_result(step: Step) -> StepResult:
    """A step's result before it runs: ``skipped`` until it has run or been refused."""
    return StepResult(
        step_id=step.id,
        description=step.description,
        type=step.type,
        depends_on=list(step.depends_on),
        status="skipped",
    )


PLANNING_STEP_ID = "planning"
NO_BASELINE_MODEL = ""
"""The baseline's model when no step was billed: there is no baseline to compare with."""


def planning_failed(exc: PolyrouteError, now: datetime) -> tuple[Plan, StepResult]:
    """The plan and record of a run whose planning failed or did not fit its budget or
    deadline: one record, ``planning``, that carries the error; no step of the task ran.
    What classification and planning spent is the run's classification cost, as ever."""
    step = Step(
        id=PLANNING_STEP_ID,
        description="Plan the task with the planning model (no plan: no step ran).",
        type="planning",
    )
    res = pending_result(step)
    res.status = "failed"
    res.error = str(exc)
    res.started_at = res.finished_at = now
    return Plan(steps=[step], source="planner"), res


def limit_stop_reason(exc: BaseException) -> str | None:
    """The stop reason a limit error gives a run (None for any other error)."""
    if isinstance(exc, DeadlineExceededError):
        return "deadline"
    return "budget" if isinstance(exc, LimitError) else None


def step_view(
    handoff: AgentHandoff, task: Task, deps: Mapping[str, list[str]], step: Step
) -> AgentHandoff:
    """The handoff a step receives: its dependencies' results, the task's own facts and
    the facts of its nearest ancestors, never the whole history."""
    wanted = set(step.depends_on)
    done = {c.agent_id: c for c in handoff.completed_steps if c.agent_id in wanted}
    facts = {k: handoff.current_context[k] for k in task.context}
    seen: set[str] = set(step.depends_on)
    frontier = list(step.depends_on)
    while frontier and len(facts) < len(task.context) + MAX_STEP_FACTS:
        nxt: list[str] = []
        for sid in frontier:
            for dep in deps.get(sid, ()):
                if dep not in seen:
                    seen.add(dep)
                    nxt.append(dep)
                    if dep in handoff.current_context:
                        facts[dep] = handoff.current_context[dep]
        frontier = nxt
    return AgentHandoff(
        task_id=handoff.task_id,
        original_task=task.description,
        completed_steps=[done[d] for d in step.depends_on if d in done],
        current_context=facts,
        remaining_steps=[],
        constraints=task.constraints,
    )


@dataclass(frozen=True)
class StepInput:
    """What routing needs to know about a step's input: its classification, its size and
    the capabilities it requires."""

    classification: Classification
    input_tokens: int
    required: frozenset[Capability]


def step_input(
    view: AgentHandoff,
    step: Step,
    docs: list[Document],
    images: tuple[ImageInput, ...],
    image_tokens: int,
    task_class: Classification,
    single: bool,
    classifier: LocalClassifier,
    shared: frozenset[str] = frozenset(),
) -> StepInput:
    """Measure a step's full input and classify it (a one-step plan reuses the task's)."""
    sections = build_sections(view, step, docs, shared)
    input_tokens = measure_sections(sections) + image_tokens + SYSTEM_TOKENS
    if single:
        # The task's own classification, but a given step's explicit type wins.
        step_type = step.type if step.type != "general" else task_class.type
        classification = task_class.model_copy(
            update={"token_count": input_tokens, "type": step_type}
        )
    else:
        classification = classifier.classify_sync(
            ClassifyInput(
                text=step.description,
                type_hint=step.type,
                image_count=len(images),
            )
        ).model_copy(update={"token_count": input_tokens})
    required: set[Capability] = set(step.needs)
    if step.output == "json":
        required.add("json_mode")
    if images:
        required.add("vision")
    return StepInput(classification, input_tokens, frozenset(required))


def route_step(
    route: Callable[[RouteRequest], RouteDecision],
    step: Step,
    inp: StepInput,
    budget: Budget,
    now: datetime,
    today: date,
    unavailable: frozenset[str] = frozenset(),
    unavailable_reason: str = "",
) -> RouteDecision:
    """Enforce the deadline and ``maxSteps``, then route the step against what is left,
    around models whose circuit is open."""
    left_ms = budget.time_left_ms(now)
    if left_ms is not None and left_ms <= 0:
        raise DeadlineExceededError("deadline passed before the step could start")
    if budget.steps_left() < 1:
        raise BudgetExceededError(f"maxSteps={budget.max_steps} reached")
    return route(
        RouteRequest(
            classification=inp.classification,
            input_tokens=inp.input_tokens,
            output_tokens=step.max_output_tokens,
            required=inp.required,
            pinned=step.model,
            cost_left_usd=budget.cost_left_usd(),
            tokens_left=budget.tokens_left(),
            time_left_ms=left_ms,
            today=today,
            unavailable=unavailable,
            unavailable_reason=unavailable_reason or "circuit open after repeated failures",
        )
    )


def fallback_ok(
    spec: ModelSpec, decision: RouteDecision, today: date, required: frozenset[Capability]
) -> bool:
    """True when a fallback model is live and has every capability the step needs."""
    if spec.is_retired(today):
        return False
    needs = set(required)
    if decision.classification.needs_vision:
        needs.add("vision")
    return needs <= spec.capabilities


def fallback_reason(decision: RouteDecision, first: str, error: BaseException | str | None) -> str:
    """The reason a step gives when a fallback model took it."""
    name = error if isinstance(error, str) else type(error).__name__
    return f"{decision.reason}; fell back from {first} after {name if error else 'failure'}"


@dataclass(frozen=True)
class PackedStep:
    """A step's input compressed for one model, and the worst case its call may use."""

    input: CompressedInput
    billed_in: int
    out_tokens: int
    worst_cost_usd: float

    @property
    def reserve_tokens(self) -> int:
        return self.billed_in + self.out_tokens


def pack_step(
    router: Router,
    policy: Policy,
    view: AgentHandoff,
    step: Step,
    spec: ModelSpec,
    docs: list[Document],
    image_tokens: int,
    shared: frozenset[str] = frozenset(),
    budget_tokens: int | None = None,
) -> PackedStep:
    """Compress the step's input to the model's window (or to ``budget_tokens``, in the
    estimator's units) and price its worst case."""
    if budget_tokens is None:
        budget_tokens = router.window_tokens(spec) - image_tokens - SYSTEM_TOKENS
    packed = compress(view, step, budget_tokens, docs, shared)
    out_tokens = min(step.max_output_tokens or policy.default_output_tokens, spec.max_output_tokens)
    billed_in = round((packed.tokens + image_tokens + SYSTEM_TOKENS) * spec.token_factor)
    worst = call_cost(spec, Usage(input_tokens=billed_in, output_tokens=out_tokens))
    return PackedStep(packed, billed_in, out_tokens, worst)


async def fit_exactly(
    provider: Provider,
    spec: ModelSpec,
    step: Step,
    policy: Policy,
    packed: PackedStep,
    pack: Callable[..., PackedStep],
    images: tuple[ImageInput, ...],
) -> PackedStep:
    """When the estimate made compression cut a step's input, ask the provider's count
    endpoint (free; Anthropic's) for the exact figure, and keep more of the input if it fits.

    The estimator errs high on purpose (it must never undercount), so an input it puts just
    over the window share often fits: counted exactly, the whole input is sent when it is
    within the share; otherwise it is cut again to a budget scaled by the measured ratio and
    counted once more. A failure to count keeps the estimate's packing."""
    count = getattr(provider, "count_tokens", None)
    if count is None or not packed.input.compressed:
        return packed
    limit = math.floor(spec.context_window * policy.window_use)

    async def exact_tokens(candidate: PackedStep) -> int | None:
        req = model_request(spec, step, candidate.input, images, candidate.out_tokens, 0)
        try:
            return int(await count(req))
        except Exception as exc:  # counting only refines the estimate: never fail a step on it
            logger.warning("exact token count for %s on %s failed: %s", spec.id, step.id, exc)
            return None

    def priced(candidate: PackedStep, exact: int) -> PackedStep:
        worst = call_cost(spec, Usage(input_tokens=exact, output_tokens=candidate.out_tokens))
        return PackedStep(candidate.input, exact, candidate.out_tokens, worst)

    whole = pack(budget_tokens=packed.input.full_tokens)
    exact = await exact_tokens(whole)
    if exact is None:
        return packed
    if exact <= limit:
        return priced(whole, exact)
    # Scale the estimator's budget by how far it overcounted this input, then check.
    scale = whole.billed_in / exact
    budget = math.floor(packed.input.budget * min(scale, 2.0))
    if budget <= packed.input.budget:
        return packed
    more = pack(budget_tokens=budget)
    exact = await exact_tokens(more)
    return priced(more, exact) if exact is not None and exact <= limit else packed


def model_request(
    spec: ModelSpec,
    step: Step,
    packed: CompressedInput,
    images: tuple[ImageInput, ...],
    out_tokens: int,
    seed: int,
) -> ModelRequest:
    """The provider request that runs a step."""
    return ModelRequest(
        model=spec,
        system=STEP_SYSTEM,
        prefix=packed.prefix,
        prompt=packed.prompt,
        images=images,
        json_mode=step.output == "json",
        max_tokens=out_tokens,
        purpose="execute",
        step_id=step.id,
        step_type=step.type,
        seed=seed,
    )


def record_billed(res: StepResult, spec: ModelSpec, usage: Usage) -> float:
    """Add tokens a call of ``spec`` was billed to the step's usage and cost; return the cost.

    Every call the provider answered counts, not only the one that succeeded: a refused,
    cut-off or invalid answer, and the repair attempt after it, cost money too."""
    cost = call_cost(spec, usage)
    res.usage = res.usage + usage
    res.cost_usd = round(res.cost_usd + cost, 8)
    return cost


def charge_failure(
    budget: Budget, reservation: Reservation, res: StepResult, spec: ModelSpec, exc: ProviderError
) -> None:
    """Give a failed call's reservation back, and charge what the provider billed for it (a
    refused or unrepairable answer) to the budget and the step; an HTTP error bills nothing.
    Only a step that succeeds counts against ``maxSteps``, as before any failure."""
    budget.release(reservation)
    if exc.usage is not None and exc.usage.total > 0:
        budget.charge(exc.usage.total, record_billed(res, spec, exc.usage))


def record_success(
    res: StepResult,
    step: Step,
    spec: ModelSpec,
    resp: ModelResponse,
    compressed: bool,
    attempts: int,
) -> CompletedStep:
    """Fill a step's result from a successful call; return the handoff's record of it.

    The step's usage and cost add this call to whatever earlier failed calls were billed."""
    record_billed(res, spec, resp.usage)
    res.attempts += attempts
    res.model = spec.id
    res.provider = resp.provider
    res.simulated = resp.simulated
    return CompletedStep(
        agent_id=step.id,
        model=spec.id,
        action=step.description[:200],
        result=resp.text,
        confidence=_confidence(resp.stop_reason, compressed, res.fallback_from),
        duration_ms=round(resp.latency_ms),
        tokens_used=res.usage.total,
        cost_usd=res.cost_usd,
    )


def merge_step(
    handoff: AgentHandoff, step_id: str, completed: CompletedStep | None, output: Any
) -> None:
    """Record a finished step in the handoff: its result and a short fact if it succeeded."""
    if completed is not None:
        handoff.completed_steps.append(completed)
        handoff.current_context[step_id] = fact(output)
    if step_id in handoff.remaining_steps:
        handoff.remaining_steps.remove(step_id)


def build_result(
    registry: Registry,
    *,
    task_id: str,
    plan: Plan,
    results: list[StepResult],
    classification: Classification | None,
    stop_reason: str | None,
    simulated: bool,
    providers: dict[str, str],
    classifier_cost: float,
    budgets: BudgetReport,
    handoff: AgentHandoff,
    started: datetime,
    finished: datetime,
    classifier_usage: Usage | None = None,
) -> RunResult:
    """A run's result: status, totals, critical path and the one-model baseline.

    The baseline prices every billed step's usage (a failed step's billed answers too) on
    the most expensive model a billed call used; with nothing billed there is none (its
    model is ``NO_BASELINE_MODEL``, its cost 0).

    The totals count classification and planning (``classifier_cost``,
    ``classifier_usage``) with the steps. A run is simulated when any provider it called,
    for any purpose and whether or not the call succeeded, is the simulated one."""
    usage = sum((r.usage for r in results), classifier_usage or Usage())
    simulated = simulated or SimulatedProvider.name in providers.values()
    routed = sum(r.cost_usd for r in results)
    # Every step that was billed, failed or not, is in the routed cost: so in the baseline.
    billed = [r for r in results if r.model and r.usage.total > 0]
    if billed:
        base_spec = registry.most_expensive(sorted({r.model for r in billed if r.model}))
        baseline = Baseline(
            model=base_spec.id,
            cost_usd=round(sum(call_cost(base_spec, r.usage) for r in billed), 8),
        )
    else:
        baseline = Baseline(model=NO_BASELINE_MODEL, cost_usd=0.0)
    baseline_cost = baseline.cost_usd
    total_routed = routed + classifier_cost
    durations = {r.step_id: float(r.duration_ms) for r in results}
    path, length = critical_path(plan, lambda s: durations.get(s.id, 0.0))
    ok = sum(r.status == "succeeded" for r in results)
    status = "succeeded" if ok == len(results) else ("partial" if ok else "failed")
    return RunResult(
        task_id=task_id,
        status=status,
        stop_reason=stop_reason,
        simulated=simulated,
        providers=providers,
        classification=classification,
        plan_source=plan.source,
        waves=waves(plan),
        critical_path=path,
        steps=results,
        totals=Totals(
            cost_usd=round(total_routed, 8),
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            duration_ms=round((finished - started).total_seconds() * 1000),
            critical_path_ms=round(length),
            classifier_cost_usd=round(classifier_cost, 8),
        ),
        baseline=baseline,
        savings_pct=savings_pct(total_routed, baseline_cost),
        budgets=budgets,
        handoff=handoff,
        started_at=started,
        finished_at=finished,
    )


def reserve_call(
    budget: Budget, what: str, spec: ModelSpec, req: ModelRequest, now: datetime
) -> Reservation:
    """Reserve a call's worst case (``worst_case``) that is not a step of its own (a
    classification, planning or repair call); raise a ``LimitError`` if it does not fit."""
    tokens, cost = worst_case(spec, req)
    return budget.reserve(what, tokens, cost, now, counts_step=False)


def repair_reserver(
    budget: Budget, spec: ModelSpec, clock: Callable[[], datetime], held: list[Reservation]
) -> ReserveRepair:
    """The hook ``call_with_retries`` calls before a step's repair call: it reserves the
    repair's worst case from ``budget`` (as a planning call's is) and adds the reservation
    to ``held``, for the caller to release once the call has settled."""

    def reserve(fix: ModelRequest) -> None:
        what = f"the repair of {fix.step_id or 'the call'} on {spec.id}"
        held.append(reserve_call(budget, what, spec, fix, clock()))

    return reserve


def release_all(budget: Budget, held: list[Reservation]) -> None:
    """Give back the reservations in ``held`` (a step's repair calls, once settled)."""
    while held:
        budget.release(held.pop())


def worst_case(spec: ModelSpec, req: ModelRequest) -> tuple[int, float]:
    """The most a call may use, in billed tokens and dollars: its input estimate and its
    full ``max_tokens`` of output, at the model's prices (what a budget reserves)."""
    text_tokens = sum(estimate_tokens(part) for part in (req.system or "", req.prefix, req.prompt))
    billed_in = math.ceil(text_tokens * spec.token_factor) + IMAGE_TOKENS_DEFAULT * len(req.images)
    return billed_in + req.max_tokens, estimate_call_cost(spec, billed_in, req.max_tokens)


def failure_note(exc: BaseException) -> str:
    """A short line for why a classification or planning call gave up."""
    if isinstance(exc, RetriesExhaustedError):
        tries = f"after {exc.attempts} attempt(s)" if exc.attempts else "without a call"
        return f"{type(exc.last).__name__} {tries}"
    return str(exc)


def fact(output: Any) -> str:
    """A short fact from a step's output for later steps (never the whole history)."""
    text = output if isinstance(output, str) else str(output)
    text = " ".join(text.split())
    return text if len(text) <= FACT_CHARS else text[: FACT_CHARS - 1] + "…"


def _confidence(stop_reason: str, compressed: bool, fallback_from: str | None) -> float:
    """A plain heuristic: lower when the answer was cut, the input compressed, or a fallback
    model answered."""
    value = 0.9
    if stop_reason in ("max_tokens", "length"):
        value -= 0.3
    if compressed:
        value -= 0.1
    if fallback_from:
        value -= 0.1
    return round(max(0.0, value), 2)
