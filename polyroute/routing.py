"""Routing: a declarative policy picks a model, hard constraints correct it, and every
decision says why, with the candidates it rejected and the reason for each."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from polyroute.cost import estimate_call_cost
from polyroute.errors import (
    BudgetExceededError,
    ConfigError,
    NoEligibleModelError,
    PinnedModelError,
)
from polyroute.registry import ModelSpec, Registry, file_mtime, first_error
from polyroute.schema import (
    Candidate,
    Capability,
    Classification,
    Complexity,
    RouteDecision,
    TaskType,
)

ROUTING_ENV = "POLYROUTE_ROUTING"

# Why a model was not eligible: None (it was), the window, the budget or time, or else.
Kind = Literal["window", "budget", "time", "other"] | None


class Condition(BaseModel):
    """When a rule applies. Every field given must hold; ``any``/``all`` combine others."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: TaskType | list[TaskType] | None = None
    complexity: Complexity | list[Complexity] | None = None
    needs_vision: bool | None = None
    min_tokens: int | None = Field(default=None, ge=0)
    max_tokens: int | None = Field(default=None, ge=0)
    any: list[Condition] | None = None
    all: list[Condition] | None = None

    def matches(self, c: Classification) -> bool:
        """True if the classification meets every part of this condition."""
        if self.type is not None and c.type not in _as_list(self.type):
            return False
        if self.complexity is not None and c.complexity not in _as_list(self.complexity):
            return False
        if self.needs_vision is not None and c.needs_vision != self.needs_vision:
            return False
        if self.min_tokens is not None and c.token_count < self.min_tokens:
            return False
        if self.max_tokens is not None and c.token_count > self.max_tokens:
            return False
        if self.any is not None and not any(sub.matches(c) for sub in self.any):
            return False
        return not (self.all is not None and not all(sub.matches(c) for sub in self.all))

    def describe(self) -> str:
        """A short human reading of the condition."""
        parts: list[str] = []
        if self.type is not None:
            parts.append(f"type is {'/'.join(_as_list(self.type))}")
        if self.complexity is not None:
            parts.append(f"complexity is {'/'.join(_as_list(self.complexity))}")
        if self.needs_vision is not None:
            parts.append("needs vision" if self.needs_vision else "no vision")
        if self.min_tokens is not None:
            parts.append(f"input over {self.min_tokens - 1:,} tokens")
        if self.max_tokens is not None:
            parts.append(f"input at most {self.max_tokens:,} tokens")
        if self.any:
            parts.append("(" + " or ".join(s.describe() for s in self.any) + ")")
        if self.all:
            parts.append("(" + " and ".join(s.describe() for s in self.all) + ")")
        if len(parts) == 1 and parts[0].startswith("("):
            return parts[0][1:-1]
        return " and ".join(parts) or "always"


def _as_list(value: str | list[Any]) -> list[str]:
    return [value] if isinstance(value, str) else [str(v) for v in value]


class Rule(BaseModel):
    """One routing rule: a condition and the tier or model it sends to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    when: Condition = Field(default_factory=Condition)
    tier: str | None = None
    model: str | None = None

    @model_validator(mode="after")
    def _one_target(self) -> Rule:
        if (self.tier is None) == (self.model is None):
            raise ValueError(f"rule {self.name!r} needs exactly one of 'tier' or 'model'")
        return self


class Policy(BaseModel):
    """The routing policy: ordered rules plus the window share a model may fill."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: str = "1"
    window_use: float = Field(default=0.7, gt=0, le=1)
    default_output_tokens: int = Field(default=1024, gt=0)
    rules: list[Rule] = Field(min_length=1)

    def check_against(self, registry: Registry) -> None:
        """Raise if a rule names a tier or model the registry does not have."""
        for rule in self.rules:
            if rule.tier is not None and rule.tier not in registry.tiers:
                raise ConfigError(f"routing rule {rule.name!r}: unknown tier {rule.tier!r}")
            if rule.model is not None:
                registry.get(rule.model)


@lru_cache(maxsize=8)
def _load_policy(path: str | None, mtime: float = 0.0) -> Policy:
    if path is None:
        text = resources.files("polyroute.config").joinpath("routing.yaml").read_text("utf-8")
        source = "routing.yaml (built in)"
    else:
        source = path
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read routing policy: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"{source}: is not valid YAML") from None
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {first_error(exc)}") from None


def load_policy(path: str | Path | None = None) -> Policy:
    """The routing policy from ``path``, ``$POLYROUTE_ROUTING``, or the built-in default."""
    import os

    chosen = path if path is not None else os.environ.get(ROUTING_ENV) or None
    if chosen is None:
        return _load_policy(None)
    return _load_policy(str(chosen), file_mtime(Path(chosen)))


@dataclass(frozen=True)
class RouteRequest:
    """Everything the router needs to know about one step."""

    classification: Classification
    input_tokens: int
    output_tokens: int | None = None
    required: frozenset[Capability] = frozenset()
    pinned: str | None = None
    cost_left_usd: float | None = None
    tokens_left: int | None = None
    time_left_ms: float | None = None
    today: date = field(default_factory=date.today)
    unavailable: frozenset[str] = frozenset()
    unavailable_reason: str = "circuit open after repeated failures"


class Router:
    """Scores the policy's rules against a step, then decides under hard constraints."""

    def __init__(self, registry: Registry, policy: Policy) -> None:
        policy.check_against(registry)
        self.registry = registry
        self.policy = policy

    def window_tokens(self, spec: ModelSpec) -> int:
        """Input tokens (in our estimator's units) that fit the share of the window we use."""
        return math.floor(spec.context_window * self.policy.window_use / spec.token_factor)

    def _needs(self, req: RouteRequest) -> frozenset[Capability]:
        needs = set(req.required)
        if req.classification.needs_vision:
            needs.add("vision")
        return frozenset(needs)

    def _check(
        self, spec: ModelSpec, req: RouteRequest, out_tokens: int
    ) -> tuple[str | None, float, Kind]:
        """(why not, estimated cost, kind of failure) for one model."""
        in_tokens = min(req.input_tokens, self.window_tokens(spec))
        billed_in = math.ceil(in_tokens * spec.token_factor)
        est_cost = estimate_call_cost(spec, billed_in, out_tokens)
        if spec.is_retired(req.today):
            return f"retired on {spec.lifecycle.retires_on}", est_cost, "other"
        missing = sorted(self._needs(req) - spec.capabilities)
        if missing:
            return f"lacks {', '.join(missing)}", est_cost, "other"
        if spec.id in req.unavailable:
            return req.unavailable_reason, est_cost, "other"
        if out_tokens > spec.max_output_tokens:
            why = f"max output {spec.max_output_tokens:,} < {out_tokens:,} tokens"
            return why, est_cost, "other"
        if req.cost_left_usd is not None and est_cost > req.cost_left_usd:
            return (
                f"estimated ${est_cost:.4f} exceeds the ${req.cost_left_usd:.4f} left",
                est_cost,
                "budget",
            )
        if req.tokens_left is not None and billed_in + out_tokens > req.tokens_left:
            return (
                f"estimated {billed_in + out_tokens:,} tokens exceed the {req.tokens_left:,} left",
                est_cost,
                "budget",
            )
        if req.time_left_ms is not None:
            latency = spec.estimated_latency_ms(out_tokens)
            if latency > req.time_left_ms:
                return (
                    f"typical {latency / 1000:.1f}s exceeds the "
                    f"{req.time_left_ms / 1000:.1f}s left",
                    est_cost,
                    "time",
                )
        window = self.window_tokens(spec)
        if req.input_tokens > window:
            return (
                f"{req.input_tokens:,} input tokens exceed {self.policy.window_use:.0%} of its "
                f"{spec.context_window:,}-token window",
                est_cost,
                "window",
            )
        return None, est_cost, None

    def route(self, req: RouteRequest) -> RouteDecision:
        """Pick the model for one step; raise if none can take it."""
        out_tokens = req.output_tokens or self.policy.default_output_tokens
        checks = {
            mid: self._check(spec, req, out_tokens) for mid, spec in self.registry.models.items()
        }
        c = req.classification

        def decision(spec: ModelSpec, rule: str, reason: str) -> RouteDecision:
            candidates = [
                Candidate(
                    model=mid,
                    eligible=why is None,
                    why_not=why,
                    estimated_cost_usd=round(cost, 8),
                    rule=rule_of.get(mid),
                )
                for mid, (why, cost, _w) in checks.items()
            ]
            chosen_cost = checks[spec.id][1]
            return RouteDecision(
                model=spec.id,
                rule=rule,
                reason=reason,
                classification=c,
                estimated_cost_usd=round(chosen_cost, 8),
                estimated_input_tokens=min(req.input_tokens, self.window_tokens(spec)),
                estimated_output_tokens=out_tokens,
                candidates=candidates,
                fallbacks=self._fallbacks(spec, checks),
            )

        rule_of: dict[str, str] = {}
        if req.pinned is not None:
            spec = self.registry.get(req.pinned)
            why = checks[spec.id][0]
            if why is not None and checks[spec.id][2] != "window":
                raise PinnedModelError(f"pinned model {spec.id} cannot take this step: {why}")
            rule_of[spec.id] = "pinned"
            note = "" if why is None else f"; {why}, so the input is compressed to fit"
            return decision(spec, "pinned", f"pinned to {spec.id} by the plan{note}")

        rejected: list[str] = []
        for rule in self.policy.rules:
            if not rule.when.matches(c):
                continue
            target = (
                self.registry.tier(rule.tier) if rule.tier else self.registry.get(rule.model or "")
            )
            spec, passed = self.registry.resolve(target.id, req.today)
            rule_of.setdefault(spec.id, rule.name)
            via = f"tier {rule.tier} -> {target.id}" if rule.tier else target.id
            if passed:
                retired = self.registry.get(passed[0])
                via += f" (retired on {retired.lifecycle.retires_on}; successor {spec.id})"
            why = checks[spec.id][0]
            if why is None:
                facts = f"{c.type}, {c.complexity} complexity, {c.token_count:,} tokens" + (
                    ", vision" if c.needs_vision else ""
                )
                reason = f"rule {rule.name} ({rule.when.describe()}; step: {facts}) -> {via}"
                if rejected:
                    reason += "; passed over " + "; ".join(rejected)
                return decision(spec, rule.name, reason)
            rejected.append(f"{spec.id} ({rule.name}): {why}")

        eligible = [self.registry.models[m] for m, (why, _, _) in checks.items() if why is None]
        if eligible:
            spec = min(eligible, key=lambda s: (checks[s.id][1], s.id))
            return decision(
                spec,
                "cheapest-eligible",
                "no rule's model was eligible (" + "; ".join(rejected) + f"); {spec.id} is the "
                "cheapest eligible model",
            )
        window_only = [self.registry.models[m] for m, (_, _, k) in checks.items() if k == "window"]
        if window_only:
            spec = max(window_only, key=lambda s: (self.window_tokens(s), -checks[s.id][1]))
            return decision(
                spec,
                "largest-window",
                f"input of {req.input_tokens:,} tokens exceeds every eligible window; "
                f"{spec.id} has the largest, and the input is compressed to fit",
            )
        time_only = [self.registry.models[m] for m, (_, _, k) in checks.items() if k == "time"]
        if time_only:
            spec = min(time_only, key=lambda s: (s.estimated_latency_ms(out_tokens), s.id))
            return decision(
                spec,
                "fastest",
                f"no model is expected to finish in the {(req.time_left_ms or 0) / 1000:.1f}s "
                f"left; {spec.id} is the fastest eligible one",
            )
        reasons = "; ".join(f"{m}: {why}" for m, (why, _, _) in checks.items())
        if any(kind == "budget" for _, _, kind in checks.values()):
            raise BudgetExceededError(f"no model fits the budget left ({reasons})")
        raise NoEligibleModelError(f"no eligible model ({reasons})")

    def _fallbacks(
        self, chosen: ModelSpec, checks: dict[str, tuple[str | None, float, Kind]]
    ) -> list[str]:
        """Other eligible models, nearest in price to the chosen one first."""
        base = math.log(chosen.price.input + chosen.price.output + 1e-9)
        others = [
            self.registry.models[m]
            for m, (why, _, kind) in checks.items()
            if m != chosen.id and (why is None or kind in ("window", "time"))
        ]
        others.sort(
            key=lambda s: (abs(math.log(s.price.input + s.price.output + 1e-9) - base), s.id)
        )
        return [s.id for s in others]
