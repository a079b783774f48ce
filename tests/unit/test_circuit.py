"""The per-model circuit breaker, on an injected clock, and how routing honours it."""

from __future__ import annotations

from datetime import date

import pytest

from polyroute.circuit import CircuitBreaker
from polyroute.registry import load_registry
from polyroute.routing import Router, RouteRequest, load_policy
from polyroute.schema import Classification


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_opens_after_threshold_failures_within_the_window() -> None:
    clock = Clock()
    cb = CircuitBreaker(threshold=3, window_s=10, cooldown_s=60, clock=clock)
    assert cb.record_failure("m") is False
    clock.t += 1
    assert cb.record_failure("m") is False
    assert cb.open_models() == frozenset()
    clock.t += 1
    assert cb.record_failure("m") is True
    assert cb.open_models() == frozenset({"m"})
    assert cb.is_open("m") and not cb.is_open("other")


def test_failures_outside_the_window_do_not_count() -> None:
    clock = Clock()
    cb = CircuitBreaker(threshold=3, window_s=10, cooldown_s=60, clock=clock)
    cb.record_failure("m")
    cb.record_failure("m")
    clock.t += 11
    assert cb.record_failure("m") is False
    assert cb.open_models() == frozenset()


def test_success_resets_the_count() -> None:
    cb = CircuitBreaker(threshold=2, window_s=10, cooldown_s=60, clock=Clock())
    cb.record_failure("m")
    cb.record_success("m")
    assert cb.record_failure("m") is False
    assert not cb.is_open("m")


def test_cooldown_then_half_open_trial() -> None:
    clock = Clock()
    cb = CircuitBreaker(threshold=2, window_s=10, cooldown_s=30, clock=clock)
    cb.record_failure("m")
    cb.record_failure("m")
    clock.t += 29.9
    assert cb.is_open("m")
    clock.t += 0.1
    assert not cb.is_open("m")  # half-open: one trial call may go
    assert cb.record_failure("m") is True  # the trial failed: open again at once
    assert cb.is_open("m")
    clock.t += 30
    assert not cb.is_open("m")
    cb.record_success("m")  # the trial succeeded: closed
    assert cb.record_failure("m") is False
    assert not cb.is_open("m")


def test_explicit_now_overrides_the_clock_and_models_are_independent() -> None:
    cb = CircuitBreaker(threshold=1, window_s=5, cooldown_s=10, clock=Clock())
    cb.record_failure("a", now=0.0)
    cb.record_failure("b", now=5.0)
    assert cb.open_models(now=9.0) == frozenset({"a", "b"})
    assert cb.open_models(now=12.0) == frozenset({"b"})
    assert cb.open_models(now=15.0) == frozenset()


def test_threshold_must_be_positive() -> None:
    with pytest.raises(ValueError, match="threshold"):
        CircuitBreaker(threshold=0)


def test_router_routes_around_an_open_model_and_says_why() -> None:
    registry = load_registry()
    router = Router(registry, load_policy())
    cb = CircuitBreaker(threshold=1, window_s=10, cooldown_s=60, clock=Clock())
    cb.record_failure("claude-haiku-4-5")
    decision = router.route(
        RouteRequest(
            classification=Classification(type="classification", complexity="low", token_count=50),
            input_tokens=50,
            today=date(2026, 11, 27),
            unavailable=cb.open_models(),
            unavailable_reason=cb.reason(),
        )
    )
    assert decision.model != "claude-haiku-4-5"
    assert "claude-haiku-4-5" not in decision.fallbacks
    haiku = next(c for c in decision.candidates if c.model == "claude-haiku-4-5")
    assert not haiku.eligible
    assert haiku.why_not is not None and haiku.why_not.startswith("circuit open")
