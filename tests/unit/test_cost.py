from __future__ import annotations

from datetime import date

import pytest

from polyroute.cost import call_cost, parse_mix, savings_pct
from polyroute.errors import InputError
from polyroute.projection import project
from polyroute.registry import load_registry
from polyroute.routing import Router, load_policy
from polyroute.schema import Usage


def test_every_kind_of_token_at_its_own_price() -> None:
    opus = load_registry().get("claude-opus-4-5")
    usage = Usage(
        input_tokens=1000, output_tokens=200, cache_read_tokens=5000, cache_write_tokens=3000
    )
    # 1000*5 + 200*25 + 5000*0.5 + 3000*6.25 = 5000 + 5000 + 2500 + 18750 per million
    assert call_cost(opus, usage) == pytest.approx(31_250 / 1e6)


def test_the_long_context_band_applies_above_its_threshold() -> None:
    haiku55 = load_registry().get("claude-haiku-5-5")
    small = call_cost(haiku55, Usage(input_tokens=100_000, output_tokens=1000))
    large = call_cost(haiku55, Usage(input_tokens=100_001, output_tokens=1000))
    assert small == pytest.approx((100_000 * 0.10 + 1000 * 0.50) / 1e6)
    assert large == pytest.approx((100_001 * 0.50 + 1000 * 2.50) / 1e6)


def test_savings() -> None:
    assert savings_pct(25.0, 100.0) == 75.0
    assert savings_pct(1.0, 0.0) == 0.0


def test_mix_parsing() -> None:
    assert parse_mix("a=40,b=60") == {"a": 0.4, "b": 0.6}
    assert parse_mix("a=0.5, b=0.5") == {"a": 0.5, "b": 0.5}
    with pytest.raises(InputError, match="not a number"):
        parse_mix("a=lots")
    with pytest.raises(InputError, match="KEY=share"):
        parse_mix("a")


def test_seed_projection_at_current_prices() -> None:
    """The seed's table, redone: 1M tasks x (2,000 in + 500 out), 40/50/10."""
    reg = load_registry()
    proj = project(
        reg,
        Router(reg, load_policy()),
        tasks=1_000_000,
        mix={"classification": 0.4, "implementation": 0.5, "planning": 0.1},
        input_tokens=2000,
        output_tokens=500,
        baseline=None,
        classifier="model",
        on=date(2026, 11, 27),
    )
    rows = {r.key: (r.model, r.cost_usd) for r in proj.rows}
    assert rows["classification"] == ("claude-haiku-4-5", 1_800.0)
    assert rows["implementation"] == ("claude-sonnet-4-5", 6_750.0)
    assert rows["planning"] == ("claude-opus-4-5", 2_250.0)
    assert proj.baseline.model == "claude-opus-4-5"
    assert proj.baseline.cost_usd == 22_500.0
    # The seed's own cheap-model classifier: 2,000 tokens in, up to 100 out, on Haiku 4.5.
    assert proj.classifier.cost_usd == 2_500.0
    assert proj.routed_usd == 13_300.0
    assert proj.savings_pct == pytest.approx(40.89, abs=0.01)
