from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from polyroute.errors import BudgetExceededError, ConfigError, PinnedModelError
from polyroute.registry import load_registry
from polyroute.routing import Router, RouteRequest, load_policy
from polyroute.schema import Classification

DAY = date(2026, 11, 27)


@pytest.fixture(scope="module")
def router() -> Router:
    return Router(load_registry(), load_policy())


def req(
    type_: str = "general",
    complexity: str = "medium",
    tokens: int = 2000,
    vision: bool = False,
    **kw: object,
) -> RouteRequest:
    c = Classification(
        type=type_,
        complexity=complexity,
        needs_vision=vision,  # type: ignore[arg-type]
        token_count=tokens,
    )
    return RouteRequest(classification=c, input_tokens=tokens, today=kw.pop("today", DAY), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "model", "rule"),
    [
        ({"vision": True}, "gpt-4o-mini", "vision"),
        ({"tokens": 110_000}, "claude-opus-4-5", "long-context"),
        ({"type_": "planning"}, "claude-opus-4-5", "planning-or-complex"),
        ({"complexity": "high"}, "claude-opus-4-5", "planning-or-complex"),
        ({"type_": "implementation"}, "claude-sonnet-4-5", "implementation"),
        ({"type_": "classification"}, "claude-haiku-4-5", "classification-or-simple"),
        ({"complexity": "low"}, "claude-haiku-4-5", "classification-or-simple"),
        ({}, "claude-sonnet-4-5", "default"),
    ],
)
def test_default_policy_reproduces_the_seed(
    router: Router, kwargs: dict[str, object], model: str, rule: str
) -> None:
    d = router.route(req(**kwargs))  # type: ignore[arg-type]
    assert (d.model, d.rule) == (model, rule)
    assert d.reason.startswith(f"rule {rule}")


def test_image_with_a_long_document_goes_to_opus_not_the_128k_model(router: Router) -> None:
    d = router.route(req(vision=True, tokens=110_000))
    assert d.model == "claude-opus-4-5"
    assert d.rule == "long-context"
    mini = next(c for c in d.candidates if c.model == "gpt-4o-mini")
    assert not mini.eligible and "window" in (mini.why_not or "")
    assert "passed over gpt-4o-mini" in d.reason


def test_every_candidate_says_why_not(router: Router) -> None:
    d = router.route(req(vision=True))
    assert {c.model for c in d.candidates} == set(load_registry().models)
    assert all(c.eligible == (c.why_not is None) for c in d.candidates)


def test_a_retired_model_is_replaced_by_its_successor_and_the_decision_says_so(
    router: Router,
) -> None:
    d = router.route(req(type_="implementation", today=date(2026, 11, 30)))
    assert d.model == "claude-sonnet-5-5"
    assert "retired on 2026-11-30" in d.reason and "successor claude-sonnet-5-5" in d.reason
    retired = next(c for c in d.candidates if c.model == "claude-sonnet-4-5")
    assert not retired.eligible and "retired" in (retired.why_not or "")


def test_budget_aware_routes_to_a_cheaper_model_before_giving_up(router: Router) -> None:
    full = router.route(req(type_="planning"))
    assert full.model == "claude-opus-4-5"
    cheap = router.route(req(type_="planning", cost_left_usd=full.estimated_cost_usd / 3))
    assert cheap.model != "claude-opus-4-5"
    assert cheap.estimated_cost_usd <= full.estimated_cost_usd / 3
    opus = next(c for c in cheap.candidates if c.model == "claude-opus-4-5")
    assert "left" in (opus.why_not or "")
    with pytest.raises(BudgetExceededError, match="budget left"):
        router.route(req(type_="planning", cost_left_usd=1e-9))


def test_time_left_moves_to_faster_models(router: Router) -> None:
    d = router.route(req(type_="planning", time_left_ms=15_000))
    assert d.model in ("claude-haiku-4-5", "claude-haiku-5-5")
    opus = next(c for c in d.candidates if c.model == "claude-opus-4-5")
    assert "15.0s left" in (opus.why_not or "")


def test_pinned_model_is_honoured_if_eligible_else_clear_error(router: Router) -> None:
    d = router.route(req(pinned="gpt-4o"))
    assert (d.model, d.rule) == ("gpt-4o", "pinned")
    with pytest.raises(PinnedModelError, match="lacks long_context"):
        router.route(req(pinned="gpt-4o-mini", required=frozenset({"long_context"})))
    with pytest.raises(PinnedModelError, match="retired on 2026-11-30"):
        router.route(req(pinned="claude-sonnet-4-5", today=date(2026, 12, 1)))


def test_json_mode_and_unavailable_models(router: Router) -> None:
    d = router.route(req(type_="implementation", unavailable=frozenset({"claude-sonnet-4-5"})))
    assert d.model != "claude-sonnet-4-5"
    sonnet = next(c for c in d.candidates if c.model == "claude-sonnet-4-5")
    assert "circuit open" in (sonnet.why_not or "")


def test_input_beyond_every_window_goes_to_the_largest_window(router: Router) -> None:
    d = router.route(req(tokens=5_000_000))
    assert d.rule == "largest-window"
    assert load_registry().get(d.model).context_window == 1_000_000


def test_fallbacks_are_eligible_alternatives(router: Router) -> None:
    d = router.route(req(type_="implementation"))
    assert d.model not in d.fallbacks
    assert "claude-sonnet-4-5" not in d.fallbacks
    eligible = {c.model for c in d.candidates if c.eligible}
    assert set(d.fallbacks) <= eligible


def test_a_policy_naming_an_unknown_tier_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text("rules:\n  - name: x\n    when: {}\n    tier: nonexistent\n")
    with pytest.raises(ConfigError, match="unknown tier 'nonexistent'"):
        Router(load_registry(), load_policy(path))
    path.write_text("rules:\n  - name: x\n    when: {colour: red}\n    tier: fast\n")
    with pytest.raises(ConfigError, match="colour"):
        load_policy(path)
