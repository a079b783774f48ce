"""Typed models of everything that crosses a boundary: task, plan, handoff, decisions, results.

camelCase on the wire, snake_case in Python (both accepted on input). Anything that comes
from outside forbids unknown fields, so a typo in a task file is an error, not a silent no-op.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

SCHEMA_VERSION = "1"

TaskType = Literal[
    "general",
    "planning",
    "implementation",
    "review",
    "analysis",
    "summarization",
    "classification",
    "extraction",
    "qa",
    "vision",
]
TASK_TYPES: tuple[str, ...] = TaskType.__args__  # type: ignore[attr-defined]
Complexity = Literal["low", "medium", "high"]
Capability = Literal["vision", "json_mode", "tools", "long_context"]
StepStatus = Literal["succeeded", "failed", "skipped", "cancelled"]
RunStatus = Literal["succeeded", "partial", "failed"]

_STEP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
MAX_TIMEOUT_SECONDS = 30 * 24 * 3600
"""The longest ``timeoutSeconds`` a task may give (30 days): a run is not meant to last
longer, and a larger one overflows date arithmetic."""
DEADLINE_YEARS = (1970, 9998)
"""The years a ``deadline`` may fall in: outside them, adding a time zone or a margin to it
overflows ``datetime``."""


def _non_finite_path(value: Any, path: str = "") -> str | None:
    """The dotted path of the first infinite or NaN number inside a JSON-like value."""
    if isinstance(value, float) and not math.isfinite(value):
        return path or "value"
    if isinstance(value, dict):
        for key, item in value.items():
            found = _non_finite_path(item, f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = _non_finite_path(item, f"{path}.{i}" if path else str(i))
            if found is not None:
                return found
    return None


class WireModel(BaseModel):
    """Base: camelCase aliases, snake_case accepted, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=False,
        # Infinity and NaN are not JSON, and a number too large for a float (1e999) reads
        # as infinity: refused everywhere, so none reaches the arithmetic or the output.
        allow_inf_nan=False,
    )

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready camelCase form."""
        return self.model_dump(mode="json", by_alias=True)


class Attachment(WireModel):
    """An image or document that comes with a task, by path (relative to the task file) or
    inline ``data`` (base64 for an image, text for a document)."""

    kind: Literal["image", "document"]
    path: str | None = None
    data: str | None = None
    media_type: str | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Attachment:
        if (self.path is None) == (self.data is None):
            raise ValueError("an attachment needs exactly one of 'path' or 'data'")
        return self


class Constraints(WireModel):
    """A run's limits. Unset limits do not apply."""

    max_steps: int = Field(default=20, ge=1, le=10_000)
    max_token_budget: int | None = Field(default=None, ge=1)
    max_cost_usd: float | None = Field(default=None, gt=0)
    deadline: datetime | None = None
    timeout_seconds: float | None = Field(
        default=None,
        gt=0,
        le=MAX_TIMEOUT_SECONDS,
        description="Relative deadline, from the start of the run (at most 30 days).",
    )

    @field_validator("deadline")
    @classmethod
    def _aware_deadline(cls, value: datetime | None) -> datetime | None:
        # A deadline without a timezone names no instant: refuse it rather than guess.
        if value is not None and value.utcoffset() is None:
            raise ValueError(
                f"deadline {value.isoformat()} has no timezone: add one, "
                "e.g. 2030-01-01T09:00:00Z or 2030-01-01T09:00:00+02:00"
            )
        if value is not None and not DEADLINE_YEARS[0] <= value.year <= DEADLINE_YEARS[1]:
            raise ValueError(
                f"deadline {value.isoformat()} must fall in the years "
                f"{DEADLINE_YEARS[0]}-{DEADLINE_YEARS[1]}"
            )
        return value


class Step(WireModel):
    """One step of a plan."""

    id: str
    description: str = Field(min_length=1)
    type: TaskType = "general"
    depends_on: list[str] = Field(default_factory=list)
    model: str | None = Field(default=None, description="Pin this step to a model id.")
    needs: list[Capability] = Field(default_factory=list)
    output: Literal["text", "json"] = "text"
    use_attachments: bool = False
    max_output_tokens: int | None = Field(default=None, ge=1)

    @field_validator("id")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        if not _STEP_ID.match(value):
            raise ValueError(
                f"step id {value!r} must be 1-64 ASCII letters, digits, '_', '.' or '-'"
                " (starting with a letter or digit)"
            )
        return value


class Plan(WireModel):
    """A dependency graph of steps."""

    steps: list[Step] = Field(min_length=1)
    source: Literal["given", "single", "planner"] = "given"


class Task(WireModel):
    """What a user asks polyroute to do."""

    description: str = Field(min_length=1)
    task_id: str | None = None
    type: TaskType | None = None
    complexity: Complexity | None = None
    attachments: list[Attachment] = Field(default_factory=list)
    plan: Plan | None = None
    constraints: Constraints = Field(default_factory=Constraints)
    context: dict[str, Any] = Field(
        default_factory=dict, description="Facts known before the run starts."
    )

    @field_validator("context")
    @classmethod
    def _finite_context(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Any-typed, so allow_inf_nan does not reach it; an infinity here would make the
        # result's JSON invalid.
        found = _non_finite_path(value)
        if found is not None:
            raise ValueError(f"{found} is not a finite number")
        return value


class Classification(WireModel):
    """What the classifier found out about a task or step."""

    type: TaskType
    complexity: Complexity
    needs_vision: bool = False
    token_count: int = Field(ge=0)
    score: float | None = Field(
        default=None,
        description="The local router's score in [0, 1]: higher, more to gain from a strong model.",
    )
    classifier: str = "local"
    cost_usd: float = 0.0


class Candidate(WireModel):
    """One model the router considered, and why it was or was not taken."""

    model: str
    eligible: bool
    why_not: str | None = None
    estimated_cost_usd: float = 0.0
    rule: str | None = None


class RouteDecision(WireModel):
    """Which model takes a step, by which rule, and why."""

    model: str
    rule: str
    reason: str
    classification: Classification
    estimated_cost_usd: float
    estimated_input_tokens: int = 0
    estimated_output_tokens: int = 0
    candidates: list[Candidate] = Field(default_factory=list)
    fallbacks: list[str] = Field(
        default_factory=list, description="Eligible alternatives, best first, for fallback."
    )


class Usage(WireModel):
    """Tokens a call used, by kind."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def total(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_read_tokens
            + self.cache_write_tokens
        )

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
        )


class CompletedStep(WireModel):
    """A finished step as the handoff carries it."""

    agent_id: str
    model: str
    action: str
    result: Any
    confidence: float = Field(ge=0.0, le=1.0)
    duration_ms: int = Field(ge=0)
    tokens_used: int = Field(ge=0)
    cost_usd: float = Field(ge=0.0)


class AgentHandoff(WireModel):
    """The only thing that passes between steps: typed, never raw text or whole history."""

    schema_version: str = SCHEMA_VERSION
    task_id: str
    original_task: str
    completed_steps: list[CompletedStep] = Field(default_factory=list)
    current_context: dict[str, Any] = Field(default_factory=dict)
    remaining_steps: list[str] = Field(default_factory=list)
    constraints: Constraints = Field(default_factory=Constraints)


class StepResult(WireModel):
    """One step of a run as the run report shows it."""

    step_id: str
    description: str
    type: TaskType = "general"
    model: str | None = None
    provider: str | None = None
    reason: str = ""
    rule: str | None = None
    depends_on: list[str] = Field(default_factory=list)
    status: StepStatus
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: int = 0
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float = 0.0
    attempts: int = 0
    fallback_from: str | None = None
    error: str | None = None
    simulated: bool = False
    candidates: list[Candidate] = Field(default_factory=list)


class Totals(WireModel):
    """Sums over a run."""

    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    duration_ms: int = 0
    critical_path_ms: int = 0
    classifier_cost_usd: float = 0.0


class Baseline(WireModel):
    """The cost of running every step on the most expensive model used in the plan."""

    model: str
    cost_usd: float


class BudgetReport(WireModel):
    """Limits of a run and how much of each it used."""

    max_steps: int
    steps_used: int
    max_token_budget: int | None = None
    tokens_used: int = 0
    max_cost_usd: float | None = None
    cost_used_usd: float = 0.0
    deadline: datetime | None = None


class RunResult(WireModel):
    """Everything a run produced: status, steps, totals, baseline, saving and final handoff."""

    schema_version: str = SCHEMA_VERSION
    task_id: str
    status: RunStatus
    stop_reason: str | None = None
    simulated: bool = False
    providers: dict[str, str] = Field(default_factory=dict)
    classification: Classification | None = None
    plan_source: str = "given"
    waves: list[list[str]] = Field(default_factory=list)
    critical_path: list[str] = Field(default_factory=list)
    steps: list[StepResult]
    totals: Totals
    baseline: Baseline
    savings_pct: float
    budgets: BudgetReport
    handoff: AgentHandoff
    started_at: datetime
    finished_at: datetime

    def __repr__(self) -> str:
        # Short on purpose: asyncio.run reprs its finished main task (and so this result)
        # when it restores the SIGINT handler, and the full repr of a 1,000-step run took
        # a third of a second.
        return (
            f"RunResult(task_id={self.task_id!r}, status={self.status!r}, "
            f"steps={len(self.steps)}, cost_usd={self.totals.cost_usd!r})"
        )


class PlanReport(WireModel):
    """What ``polyroute plan`` prints: the validated plan, its waves and critical path."""

    task_id: str
    source: str
    steps: list[Step]
    waves: list[list[str]]
    critical_path: list[str]
    critical_path_estimated_ms: int = 0


def json_schemas() -> dict[str, Any]:
    """The JSON Schemas of the wire models, keyed by name."""
    models: list[type[BaseModel]] = [
        Task,
        Plan,
        Step,
        Constraints,
        Attachment,
        Classification,
        RouteDecision,
        Usage,
        CompletedStep,
        AgentHandoff,
        StepResult,
        RunResult,
    ]
    return {m.__name__: m.model_json_schema(by_alias=True) for m in models}
