from __future__ import annotations

import asyncio
from datetime import date

import pytest

from polyroute.cost import call_cost, estimate_billed_cost, parse_mix, savings_pct
from polyroute.errors import InputError
from polyroute.projection import Projection, project
from polyroute.providers.base import ModelRequest
from polyroute.providers.simulated import SimulatedProvider
from polyroute.registry import load_registry
from polyroute.routing import Router, load_policy
from polyroute.schema import Usage
from polyroute.tokens import estimate_tokens


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


def _project(
    mix: dict[str, float],
    on: date,
    *,
    tasks: int = 1_000_000,
    input_tokens: int = 2000,
    output_tokens: int = 500,
    baseline: str | None = None,
    classifier: str = "local",
) -> Projection:
    reg = load_registry()
    return project(
        reg,
        Router(reg, load_policy()),
        tasks=tasks,
        mix=mix,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        baseline=baseline,
        classifier=classifier,
        on=on,
    )


SEED_MIX = {"classification": 0.4, "implementation": 0.5, "planning": 0.1}


def test_projection_bills_the_5_5_models_token_factor() -> None:
    """By hand from models.yaml: 5.5 models count 1.3 tokens per estimated token, so 2,000 in
    and 500 out bill as 2,600 and 650."""
    proj = _project(SEED_MIX, date(2027, 2, 1))
    rows = {r.key: (r.model, r.cost_usd) for r in proj.rows}
    # Sonnet 5.5 at $2/$10: 500,000 x (2,600 x 2 + 650 x 10) / 1e6 (naive would be $4,500).
    assert rows["implementation"] == ("claude-sonnet-5-5", 5_850.0)
    # Opus 5.5 at $4/$20: 100,000 x (2,600 x 4 + 650 x 20) / 1e6.
    assert rows["planning"] == ("claude-opus-5-5", 2_340.0)
    # Haiku 4.5 has no factor: 400,000 x (2,000 x 1 + 500 x 5) / 1e6.
    assert rows["classification"] == ("claude-haiku-4-5", 1_800.0)
    assert proj.baseline.model == "claude-opus-5-5"
    assert proj.baseline.cost_usd == 23_400.0  # 1,000,000 x (2,600 x 4 + 650 x 20) / 1e6
    assert proj.routed_usd == 1_800.0 + 5_850.0 + 2_340.0


def test_projection_prices_the_long_band_by_billed_prompt_tokens() -> None:
    # 150,000 estimated = 195,000 billed, above Haiku 5.5's 100,000: $0.50/$2.50.
    proj = _project(
        {"claude-haiku-5-5": 1.0},
        date(2026, 11, 27),
        tasks=1000,
        input_tokens=150_000,
        output_tokens=1000,
    )
    assert proj.rows[0].cost_usd == pytest.approx(1000 * (195_000 * 0.50 + 1300 * 2.50) / 1e6)
    assert proj.rows[0].cost_usd == 100.75
    # 80,000 estimated is under the threshold, but 104,000 billed is over it, as a run sees it.
    proj = _project(
        {"claude-haiku-5-5": 1.0},
        date(2026, 11, 27),
        tasks=1000,
        input_tokens=80_000,
        output_tokens=1000,
    )
    assert proj.rows[0].cost_usd == pytest.approx(1000 * (104_000 * 0.50 + 1300 * 2.50) / 1e6)


def test_a_model_classifier_call_is_capped_at_its_max_tokens() -> None:
    haiku55 = load_registry().get("claude-haiku-5-5")
    # Input scaled (2,600); output is the call's max_tokens, already billed tokens.
    assert estimate_billed_cost(haiku55, 2000, 100, max_output_tokens=100) == pytest.approx(
        (2600 * 0.10 + 100 * 0.50) / 1e6
    )


@pytest.mark.parametrize(
    ("model", "words"), [("claude-haiku-5-5", 120_000), ("claude-sonnet-5-5", 300)]
)
def test_a_projected_call_costs_what_a_simulated_run_bills(model: str, words: int) -> None:
    """The projection prices a call of N estimated tokens in and M out exactly as the
    simulated provider bills the same call (long band for Haiku 5.5's long prompt)."""
    spec = load_registry().get(model)
    prompt = " ".join(["review"] * words)
    provider = SimulatedProvider(seed=1, sleep=_no_sleep)
    req = ModelRequest(model=spec, prompt=prompt, max_tokens=100_000, step_type="general")
    resp = asyncio.run(provider.request(req))
    in_est = estimate_tokens("\n" + prompt)  # the simulated provider's system + "\n" + prompt
    out_est = estimate_tokens(resp.text)
    billed = call_cost(spec, resp.usage)
    assert resp.usage.input_tokens == round(in_est * spec.token_factor) != in_est
    assert estimate_billed_cost(spec, in_est, out_est) == pytest.approx(billed, rel=1e-12)
    proj = _project(
        {model: 1.0},
        date(2026, 11, 27),
        tasks=1_000_000,
        input_tokens=in_est,
        output_tokens=out_est,
    )
    assert proj.rows[0].cost_usd == pytest.approx(1_000_000 * billed, abs=0.005)


async def _no_sleep(_: float) -> None:
    return None


def test_projection_notes_each_retired_model_it_replaced() -> None:
    proj = _project(SEED_MIX, date(2026, 12, 1), classifier="model")
    assert proj.notes == [
        "claude-sonnet-4-5 retired on 2026-11-30: implementation runs on its successor"
        " claude-sonnet-5-5"
    ]
    assert proj.warnings == []
    assert _project(SEED_MIX, date(2026, 11, 27)).notes == []
    later = _project(SEED_MIX, date(2027, 2, 1))
    assert [n.split(" ")[0] for n in later.notes] == ["claude-sonnet-4-5", "claude-opus-4-5"]


def test_a_retired_model_given_in_the_mix_or_as_baseline_is_priced_with_a_warning() -> None:
    proj = _project({"claude-sonnet-4-5": 1.0}, date(2027, 2, 1), baseline="claude-opus-4-5")
    assert proj.rows[0].model == "claude-sonnet-4-5"  # the old price, as asked
    assert proj.baseline.model == "claude-opus-4-5"
    assert proj.baseline.cost_usd == 22_500.0
    assert proj.warnings == [
        "--mix claude-sonnet-4-5: claude-sonnet-4-5 retired on 2026-11-30; its successor is"
        " claude-sonnet-5-5; priced as given",
        "--baseline claude-opus-4-5: claude-opus-4-5 retired on 2027-01-22; its successor is"
        " claude-opus-5-5; priced as given",
    ]
    assert _project({"claude-sonnet-4-5": 1.0}, date(2026, 11, 27)).warnings == []
