from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polyroute.errors import CycleError, PlanValidationError
from polyroute.graph import (
    check_graph,
    critical_path,
    descendants,
    find_cycle,
    validate_plan,
    waves,
)
from polyroute.schema import Plan, Step


def plan(edges: dict[str, list[str]]) -> Plan:
    return Plan(steps=[Step(id=k, description=k, depends_on=v) for k, v in edges.items()])


def test_cycle_is_named_in_run_order() -> None:
    with pytest.raises(CycleError) as err:
        validate_plan(plan({"a": ["c"], "b": ["a"], "c": ["b"]}), 10)
    assert str(err.value) == "cycle: a -> b -> c -> a"


def test_self_dependency_is_a_cycle() -> None:
    with pytest.raises(CycleError, match="cycle: a -> a"):
        validate_plan(plan({"a": ["a"]}), 10)


def test_unknown_dependency_and_duplicates_and_max_steps() -> None:
    with pytest.raises(PlanValidationError, match="unknown step 'z'"):
        validate_plan(plan({"a": ["z"]}), 10)
    dup = Plan(steps=[Step(id="a", description="x"), Step(id="a", description="y")])
    with pytest.raises(PlanValidationError, match="duplicate step id 'a'"):
        validate_plan(dup, 10)
    with pytest.raises(PlanValidationError, match="maxSteps=2"):
        validate_plan(plan({"a": [], "b": [], "c": []}), 2)


def test_waves_and_critical_path_of_a_diamond() -> None:
    p = plan({"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]})
    assert waves(p) == [["a"], ["b", "c"], ["d"]]
    durations = {"a": 1.0, "b": 5.0, "c": 2.0, "d": 1.0}
    path, length = critical_path(p, lambda s: durations[s.id])
    assert path == ["a", "b", "d"] and length == 7.0
    assert descendants(p, "a") == {"b", "c", "d"}


def test_long_chain_does_not_hit_the_recursion_limit() -> None:
    n = 5000
    edges = {f"s{i}": [f"s{i - 1}"] if i else [] for i in range(n)}
    edges["s0"] = [f"s{n - 1}"]
    cycle = find_cycle(edges)
    assert cycle is not None and len(cycle) == n + 1


@st.composite
def dags(draw: st.DrawFn) -> dict[str, list[str]]:
    n = draw(st.integers(min_value=1, max_value=30))
    edges: dict[str, list[str]] = {}
    for i in range(n):
        deps = draw(st.lists(st.integers(0, max(0, i - 1)), max_size=3, unique=True)) if i else []
        edges[f"n{i}"] = [f"n{d}" for d in deps]
    return edges


@settings(max_examples=150, deadline=None)
@given(dags())
def test_waves_respect_every_dependency(edges: dict[str, list[str]]) -> None:
    p = plan(edges)
    validate_plan(p, 100)
    level = {sid: i for i, wave in enumerate(waves(p)) for sid in wave}
    assert set(level) == set(edges)
    for sid, deps in edges.items():
        for d in deps:
            assert level[d] < level[sid]
    path, length = critical_path(p)
    assert length == len(waves(p)) == len(path)


@settings(max_examples=150, deadline=None)
@given(dags(), st.data())
def test_adding_a_back_edge_is_always_caught(
    edges: dict[str, list[str]], data: st.DataObject
) -> None:
    p = plan(edges)
    path, _ = critical_path(p)
    if len(path) < 2:
        return
    first, last = path[0], path[-1]
    edges[first] = [*edges[first], last]
    with pytest.raises(CycleError) as err:
        validate_plan(plan(edges), 100)
    names = str(err.value).removeprefix("cycle: ").split(" -> ")
    assert names[0] == names[-1]
    for a, b in itertools.pairwise(names):
        assert a in edges[b], f"{b} does not depend on {a}"


def test_check_graph_ignores_the_number_of_steps_but_not_a_cycle() -> None:
    check_graph(plan({"a": [], "b": ["a"], "c": ["b"]}))
    with pytest.raises(CycleError, match="cycle: a -> b -> a"):
        check_graph(plan({"a": ["b"], "b": ["a"]}))
    with pytest.raises(PlanValidationError, match="unknown step 'z'"):
        check_graph(plan({"a": ["z"]}))
