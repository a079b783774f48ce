"""Planning: a plan given with the task is used; a simple task is one step; a planning or
complex task asks the planning model for a JSON plan (validated, one repair, then an error)."""

from __future__ import annotations

import json
import re
from datetime import date

from pydantic import ValidationError

from polyroute.classify import ModelCall, local_type
from polyroute.cost import call_cost
from polyroute.errors import (
    PinnedModelError,
    PlanningError,
    PlanValidationError,
    ProviderError,
    UnknownModelError,
)
from polyroute.graph import validate_plan
from polyroute.providers.base import ModelRequest, Provider
from polyroute.registry import ModelSpec, Registry, first_error
from polyroute.schema import TASK_TYPES, Capability, Classification, Plan, Step, Task

PLAN_MAX_TOKENS = 2000

PLAN_SYSTEM = (
    "You are the planner of a multi-model system. Break the task into a small dependency "
    "graph of steps that can run in parallel where they do not depend on each other. Answer "
    'with JSON only: {"steps": [{"id": "short-id", "description": "...", "type": one of '
    + ", ".join(TASK_TYPES)
    + ', "dependsOn": ["ids of earlier steps"]}]}. Use at most MAX steps.'
)

_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+(.+)$", re.MULTILINE)


def needs_planner(task: Task, classification: Classification) -> bool:
    """True when the task has no plan and is a planning or high-complexity task."""
    if task.plan is not None:
        return False
    return classification.type == "planning" or classification.complexity == "high"


def single_step_plan(task: Task, classification: Classification) -> Plan:
    """A simple task as one step that reads every attachment."""
    step = Step(
        id="answer",
        description=task.description,
        type=classification.type,
        use_attachments=bool(task.attachments),
        needs=["vision"] if classification.needs_vision else [],
    )
    return Plan(steps=[step], source="single")


def local_plan(description: str, max_steps: int = 8) -> Plan:
    """A deterministic plan from the task text: its listed items as parallel branches, else
    understand -> (options, risks) -> plan -> summary."""
    items = [m.group(1).strip() for m in _ITEM.finditer(description)][: max(1, max_steps - 2)]
    if len(items) >= 2:
        steps = [
            Step(
                id="scope", description="Restate the goal, inputs and constraints.", type="analysis"
            )
        ]
        for i, item in enumerate(items, 1):
            steps.append(
                Step(id=f"part-{i}", description=item, type=local_type(item), depends_on=["scope"])
            )
        steps.append(
            Step(
                id="integrate",
                description="Combine the parts into one answer.",
                type="summarization",
                depends_on=[s.id for s in steps[1:]],
            )
        )
        return Plan(steps=steps, source="planner")
    steps = [
        Step(
            id="understand",
            description="Restate the goal, constraints and success criteria of the task.",
            type="analysis",
        ),
        Step(
            id="options",
            description="List the candidate approaches with their trade-offs.",
            type="analysis",
            depends_on=["understand"],
        ),
        Step(
            id="risks",
            description="Classify the main risks by likelihood and impact.",
            type="classification",
            depends_on=["understand"],
        ),
        Step(
            id="plan",
            description="Write the step-by-step plan, choosing among the "
            "options and mitigating the risks.",
            type="planning",
            depends_on=["options", "risks"],
        ),
        Step(
            id="summary",
            description="Summarise the plan for a stakeholder in five lines.",
            type="summarization",
            depends_on=["plan"],
        ),
    ]
    return Plan(steps=steps[:max_steps], source="planner")


def parse_plan(text: str, max_steps: int) -> Plan:
    """Validate a planner's JSON answer; raise PlanValidationError with the reason."""
    match = re.search(r"\{.*\}", text, re.DOTALL)
    if match is None:
        raise PlanValidationError("no JSON object in the planner's answer")
    try:
        data = json.loads(match.group(0))
    except json.JSONDecodeError as exc:
        raise PlanValidationError(f"invalid JSON: {exc.msg}") from None
    try:
        plan = Plan.model_validate({**data, "source": "planner"})
    except ValidationError as exc:
        raise PlanValidationError(first_error(exc)) from None
    validate_plan(plan, max_steps)
    return plan


def step_needs(step: Step, images: int = 0) -> frozenset[Capability]:
    """The capabilities a step needs whatever its input: those it names, JSON mode for a
    JSON output, vision when it reads attached images."""
    needs: set[Capability] = set(step.needs)
    if step.output == "json":
        needs.add("json_mode")
    if step.use_attachments and images:
        needs.add("vision")
    return frozenset(needs)


def pin_problem(spec: ModelSpec, step: Step, today: date, images: int = 0) -> str | None:
    """Why a pinned model can never take the step (None if it may): retired, missing a
    capability, or unable to write the step's output. The window and the budget are checked
    when the step is routed (an input too large for the window is compressed)."""
    if spec.is_retired(today):
        return f"retired on {spec.lifecycle.retires_on}"
    missing = sorted(step_needs(step, images) - spec.capabilities)
    if missing:
        return f"lacks {', '.join(missing)}"
    if step.max_output_tokens is not None and step.max_output_tokens > spec.max_output_tokens:
        return f"max output {spec.max_output_tokens:,} < {step.max_output_tokens:,} tokens"
    return None


def check_pins(plan: Plan, registry: Registry, today: date, images: int = 0) -> None:
    """Check every step of a plan against the registry before anything runs: an input error
    (one line, naming the step) if a step pins a model the registry does not know or one
    that cannot take it (``plan.steps.<i>.model: ...``), or if no model at all can take an
    unpinned step by its hard requirements (``plan.steps.<i>: ...``: capabilities, output
    size, retired on ``today``; the input's size and the budget are the router's, at run
    time). ``images``: how many images the task attaches."""
    for i, step in enumerate(plan.steps):
        if step.model is None:
            check_takers(step, i, registry, today, images)
            continue
        where = f"plan.steps.{i}.model"
        try:
            spec = registry.get(step.model)
        except UnknownModelError as exc:
            raise UnknownModelError(f"{where}: step {step.id} pins {exc}") from None
        why = pin_problem(spec, step, today, images)
        if why is not None and spec.is_retired(today):
            why += successor_note(spec, registry, today)
        if why is not None:
            raise PinnedModelError(
                f"{where}: step {step.id} pins {spec.id}, which cannot take it: {why}"
            )


def successor_note(spec: ModelSpec, registry: Registry, today: date) -> str:
    """What replaces a retired model, for its error: the registry's successor, followed
    past successors that have retired too, or that it has none."""
    live, _ = registry.resolve(spec.id, today)
    if live.is_retired(today):
        return "; it has no live successor in the registry"
    return f"; pin its successor {live.id} instead"


def check_takers(step: Step, index: int, registry: Registry, today: date, images: int) -> None:
    """Raise ``PlanValidationError`` when no model of the registry can ever take ``step``,
    with why for the models nearest to taking it."""
    problems: dict[str, list[str]] = {}
    for spec in registry.models.values():
        why = pin_problem(spec, step, today, images)
        if why is None:
            return
        problems.setdefault(why, []).append(spec.id)
    shown = [
        f"{', '.join(ids[:2])}{f' and {len(ids) - 2} more' if len(ids) > 2 else ''}: {why}"
        for why, ids in sorted(problems.items(), key=lambda kv: -len(kv[1]))[:3]
    ]
    more = "; …" if len(problems) > 3 else ""
    raise PlanValidationError(
        f"plan.steps.{index}: no model can take step {step.id} ({'; '.join(shown)}{more})"
    )


class ModelPlanner:
    """Asks the planning model for a plan; one repair attempt on an invalid answer.

    A provider error is a ``PlanningError``; what ``call`` raises otherwise (the engine's
    retries running out, a budget or deadline) passes through, for the caller to fall back
    or stop."""

    def __init__(
        self, model: ModelSpec, provider: Provider, seed: int = 0, call: ModelCall | None = None
    ) -> None:
        self.model = model
        self.provider = provider
        self.seed = seed
        self.call = call or provider.request
        self.cost_usd = 0.0
        self.tokens = 0

    async def plan(self, task: Task) -> Plan:
        max_steps = task.constraints.max_steps
        problem = ""
        for attempt in range(2):
            req = plan_request(self.model, task, self.seed + attempt, problem)
            try:
                resp = await self.call(req)
            except ProviderError as exc:
                # A refused or cut-off answer was billed all the same.
                if exc.usage is not None:
                    self.cost_usd += call_cost(self.model, exc.usage)
                    self.tokens += exc.usage.total
                raise PlanningError(f"planning call to {self.model.id} failed: {exc}") from exc
            self.cost_usd += call_cost(self.model, resp.usage)
            self.tokens += resp.usage.total
            try:
                return parse_plan(resp.text, max_steps)
            except PlanValidationError as exc:
                problem = str(exc)
        raise PlanningError(f"{self.model.id} returned an invalid plan twice ({problem})")


def plan_request(model: ModelSpec, task: Task, seed: int = 0, problem: str = "") -> ModelRequest:
    """The planning call for a task (``problem``: why the previous plan was rejected)."""
    max_steps = task.constraints.max_steps
    prompt = f"\n\n## Task\n{task.description}\n\n## Limits\nAt most {max_steps} steps."
    if problem:
        prompt += f"\n\n## Repair\nYour previous plan was rejected: {problem}."
    return ModelRequest(
        model=model,
        system=PLAN_SYSTEM.replace("MAX", str(max_steps)),
        prompt=prompt,
        json_mode=True,
        max_tokens=PLAN_MAX_TOKENS,
        purpose="plan",
        step_type="planning",
        seed=seed,
    )
