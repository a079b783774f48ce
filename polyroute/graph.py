"""Plans as dependency graphs: validation, waves and the critical path."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from polyroute.errors import CycleError, PlanValidationError
from polyroute.schema import Plan, Step


def validate_plan(plan: Plan, max_steps: int) -> None:
    """Raise if ids repeat, a dependency is unknown, there is a cycle, or too many steps."""
    check_graph(plan)
    if len(plan.steps) > max_steps:
        raise PlanValidationError(
            f"plan has {len(plan.steps)} steps, more than maxSteps={max_steps}"
        )


def check_graph(plan: Plan) -> None:
    """Raise if ids repeat, a dependency is unknown, or there is a cycle (whatever the
    number of steps)."""
    ids: set[str] = set()
    for step in plan.steps:
        if step.id in ids:
            raise PlanValidationError(f"duplicate step id {step.id!r}")
        ids.add(step.id)
    for step in plan.steps:
        for dep in step.depends_on:
            if dep not in ids:
                raise PlanValidationError(f"step {step.id!r} depends on unknown step {dep!r}")
            if dep == step.id:
                raise CycleError(f"cycle: {step.id} -> {step.id}")
    cycle = find_cycle({s.id: s.depends_on for s in plan.steps})
    if cycle:
        raise CycleError("cycle: " + " -> ".join(cycle))


def find_cycle(deps: Mapping[str, list[str]]) -> list[str] | None:
    """A cycle as a closed path in dependency order (``a -> b -> c -> a``), or None.

    Iterative depth-first search, so a 10,000-step chain does not hit the recursion limit."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(deps, white)
    # Edges run from a step to the steps that depend on it, so a cycle reads in run order.
    dependants: dict[str, list[str]] = {k: [] for k in deps}
    for node, ds in deps.items():
        for d in ds:
            if d in dependants:
                dependants[d].append(node)
    for root in deps:
        if colour[root] != white:
            continue
        path: list[str] = [root]
        iters = [iter(dependants[root])]
        colour[root] = grey
        while iters:
            nxt = next(iters[-1], None)
            if nxt is None:
                colour[path.pop()] = black
                iters.pop()
                continue
            if colour[nxt] == grey:
                start = path.index(nxt)
                return [*path[start:], nxt]
            if colour[nxt] == white:
                colour[nxt] = grey
                path.append(nxt)
                iters.append(iter(dependants[nxt]))
    return None


def waves(plan: Plan) -> list[list[str]]:
    """Steps grouped by depth: each wave depends only on earlier waves (Kahn's algorithm)."""
    remaining = {s.id: set(s.depends_on) for s in plan.steps}
    order = [s.id for s in plan.steps]
    done: set[str] = set()
    result: list[list[str]] = []
    while remaining:
        wave = [sid for sid in order if sid in remaining and remaining[sid] <= done]
        if not wave:
            cycle = find_cycle({k: list(v) for k, v in remaining.items()})
            raise CycleError("cycle: " + " -> ".join(cycle or list(remaining)))
        result.append(wave)
        done.update(wave)
        for sid in wave:
            del remaining[sid]
    return result


def critical_path(
    plan: Plan, duration: Callable[[Step], float] | None = None
) -> tuple[list[str], float]:
    """The longest chain of dependent steps and its length (unit durations by default)."""
    by_id = {s.id: s for s in plan.steps}
    cost = duration or (lambda _s: 1.0)
    finish: dict[str, float] = {}
    best_prev: dict[str, str | None] = {}
    for wave in waves(plan):
        for sid in wave:
            step = by_id[sid]
            prev = max(step.depends_on, key=lambda d: finish[d], default=None)
            start = finish[prev] if prev is not None else 0.0
            finish[sid] = start + cost(step)
            best_prev[sid] = prev
    if not finish:
        return [], 0.0
    end = max(finish, key=lambda k: finish[k])
    chain: list[str] = []
    node: str | None = end
    while node is not None:
        chain.append(node)
        node = best_prev[node]
    return chain[::-1], finish[end]


def dependants(plan: Plan) -> dict[str, list[str]]:
    """For each step, the steps that depend on it directly."""
    result: dict[str, list[str]] = {s.id: [] for s in plan.steps}
    for s in plan.steps:
        for d in s.depends_on:
            result[d].append(s.id)
    return result


def descendants(plan: Plan, step_id: str) -> set[str]:
    """Every step that depends on ``step_id``, directly or not."""
    children = dependants(plan)
    seen: set[str] = set()
    stack = list(children[step_id])
    while stack:
        sid = stack.pop()
        if sid not in seen:
            seen.add(sid)
            stack.extend(children[sid])
    return seen
