"""Monthly cost projection, the way the seed's table does it: naive against routed, with the
classifier's own cost as its own row."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from polyroute.classify import CLASSIFY_MAX_TOKENS
from polyroute.cost import estimate_billed_cost, savings_pct
from polyroute.errors import ConfigError
from polyroute.registry import ModelSpec, Price, Registry, first_error
from polyroute.routing import Router, RouteRequest
from polyroute.schema import TASK_TYPES, Classification, WireModel


class ProjectionRow(WireModel):
    """One line of the projection: a mix key, the model it runs on, and its monthly cost."""

    key: str
    model: str
    share: float
    tasks: float
    cost_usd: float
    rule: str = ""


class Projection(WireModel):
    """A month of tasks, routed against naive."""

    tasks: int
    input_tokens: int
    output_tokens: int
    rows: list[ProjectionRow]
    classifier: ProjectionRow
    routed_usd: float
    baseline: ProjectionRow
    savings_usd: float
    savings_pct: float
    prices_as_of: dict[str, str] = Field(default_factory=dict)
    notes: list[str] = Field(
        default_factory=list,
        description="Each retired model the routing replaced, and by what.",
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="Each retired model the mix or --baseline names, priced as given.",
    )


def retired_note(registry: Registry, model_id: str, on: date) -> str | None:
    """``MODEL retired on DATE; its successor is NEXT`` for a model retired by ``on``, else
    None."""
    spec = registry.get(model_id)
    if not spec.is_retired(on):
        return None
    successor, _ = registry.resolve(spec.id, on)
    after = (
        f"its successor is {successor.id}"
        if successor.id != spec.id and not successor.is_retired(on)
        else "it has no successor in the registry"
    )
    return f"{spec.id} retired on {spec.lifecycle.retires_on}; {after}"


def _given_retired(registry: Registry, option: str, key: str, on: date) -> str | None:
    note = retired_note(registry, key, on)
    return None if note is None else f"{option} {key}: {note}; priced as given"


def apply_prices(registry: Registry, path: str | Path) -> Registry:
    """The registry with prices replaced from a YAML/JSON file: ``{model: {input, output,
    cache_read?, cache_write?}}``."""
    p = Path(path)
    try:
        data: Any = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read prices: {exc.strerror}") from None
    except yaml.YAMLError:
        raise ConfigError(f"{p}: is not valid YAML or JSON") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of model id to prices")
    if "models" in data and ("schema_version" in data or "tiers" in data):
        raise ConfigError(
            f"{p}: looks like a model registry, not a prices file: give it with --models, or"
            " give --prices a mapping of model id to prices ({model: {input, output}})"
        )
    models = dict(registry.models)
    for model_id, raw in data.items():
        spec = registry.get(str(model_id))
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: {model_id}: expected a mapping of prices")
        merged = {**spec.price.model_dump(), **raw}
        merged.setdefault("cache_read", merged["input"])
        try:
            price = Price.model_validate(merged)
        except ValidationError as exc:
            raise ConfigError(f"{p}: {model_id}.{first_error(exc)}") from None
        models[spec.id] = spec.model_copy(update={"price": price, "long_context_price": None})
    return registry.model_copy(update={"models": models})


def project(
    registry: Registry,
    router: Router,
    tasks: int,
    mix: dict[str, float],
    input_tokens: int,
    output_tokens: int,
    baseline: str | None,
    classifier: str,
    on: date,
) -> Projection:
    """Project a month: each mix key is a task type (routed) or a model id (as given)."""
    rows: list[ProjectionRow] = []
    notes: list[str] = []
    warnings: list[str] = []

    def replaced(target: str, what: str) -> None:
        spec, passed = registry.resolve(target, on)
        if passed:
            retired = registry.get(passed[0])
            note = f"{retired.id} retired on {retired.lifecycle.retires_on}: {what} {spec.id}"
            if note not in notes:
                notes.append(note)

    for key, share in mix.items():
        if key in TASK_TYPES:
            decision = router.route(
                RouteRequest(
                    classification=Classification(
                        type=key,
                        complexity="medium",
                        token_count=input_tokens,
                    ),
                    input_tokens=input_tokens,
                    output_tokens=output_tokens,
                    today=on,
                )
            )
            spec, rule = registry.get(decision.model), decision.rule
            matched = next((r for r in router.policy.rules if r.name == rule), None)
            if matched is not None:
                target = (
                    registry.tier(matched.tier)
                    if matched.tier
                    else registry.get(str(matched.model))
                )
                replaced(target.id, f"{key} runs on its successor")
        else:
            spec, rule = registry.get(key), "given"
            warning = _given_retired(registry, "--mix", key, on)
            if warning is not None:
                warnings.append(warning)
        n = tasks * share
        cost = n * estimate_billed_cost(spec, input_tokens, output_tokens)
        rows.append(
            ProjectionRow(
                key=key, model=spec.id, share=share, tasks=n, cost_usd=round(cost, 2), rule=rule
            )
        )
    base_spec: ModelSpec = (
        registry.get(baseline) if baseline else registry.most_expensive([r.model for r in rows])
    )
    if baseline:
        warning = _given_retired(registry, "--baseline", baseline, on)
        if warning is not None:
            warnings.append(warning)
    base_cost = tasks * estimate_billed_cost(base_spec, input_tokens, output_tokens)
    if classifier == "model":
        fast = registry.tiers.get("fast", "claude-haiku-4-5")
        clf_spec, _ = registry.resolve(fast, on)
        replaced(fast, "the classifier runs on its successor")
        # The classifier's output is its call's max_tokens, already in billed tokens.
        clf_cost = tasks * estimate_billed_cost(
            clf_spec, input_tokens, CLASSIFY_MAX_TOKENS, max_output_tokens=CLASSIFY_MAX_TOKENS
        )
        clf_row = ProjectionRow(
            key="classifier (model)",
            model=clf_spec.id,
            share=1.0,
            tasks=tasks,
            cost_usd=round(clf_cost, 2),
            rule="classify",
        )
    else:
        clf_row = ProjectionRow(
            key="classifier (local)",
            model="local",
            share=1.0,
            tasks=tasks,
            cost_usd=0.0,
            rule="classify",
        )
    routed = sum(r.cost_usd for r in rows) + clf_row.cost_usd
    used = {r.model for r in rows} | {base_spec.id}
    return Projection(
        tasks=tasks,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        rows=rows,
        classifier=clf_row,
        routed_usd=round(routed, 2),
        baseline=ProjectionRow(
            key="naive (all tasks)",
            model=base_spec.id,
            share=1.0,
            tasks=tasks,
            cost_usd=round(base_cost, 2),
            rule="baseline",
        ),
        savings_usd=round(base_cost - routed, 2),
        savings_pct=savings_pct(routed, base_cost),
        prices_as_of={
            m: registry.get(m).price_as_of.isoformat() for m in sorted(used) if m in registry.models
        },
        notes=notes,
        warnings=warnings,
    )


def projection_json(p: Projection) -> str:
    """The projection as indented JSON."""
    return json.dumps(p.to_wire(), indent=2)
