from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
import yaml

from polyroute.errors import ConfigError, UnknownModelError
from polyroute.registry import load_registry, parse_registry


def test_seed_models_have_current_list_prices() -> None:
    reg = load_registry()
    expected = {
        "claude-opus-4-5": (5.0, 25.0),
        "claude-sonnet-4-5": (3.0, 15.0),
        "claude-haiku-4-5": (1.0, 5.0),
        "gpt-4o-mini": (0.15, 0.60),
        "gpt-4o": (2.50, 10.0),
    }
    for model_id, (inp, out) in expected.items():
        spec = reg.get(model_id)
        assert (spec.price.input, spec.price.output) == (inp, out), model_id
        assert spec.price_source.startswith("https://")
        assert spec.price_as_of is not None


def test_current_generation_of_each_claude_tier_is_listed() -> None:
    reg = load_registry()
    for tier in ("opus", "sonnet", "haiku"):
        spec = reg.get(f"claude-{tier}-5-5")
        assert spec.provider == "anthropic"
        assert spec.context_window == 1_000_000


def test_tiers_map_to_the_seed_models() -> None:
    reg = load_registry()
    assert reg.tier("reasoning").id == "claude-opus-4-5"
    assert reg.tier("balanced").id == "claude-sonnet-4-5"
    assert reg.tier("fast").id == "claude-haiku-4-5"
    assert reg.tier("cheap_vision").id == "gpt-4o-mini"


def test_retirement_dates_follow_the_sdk_deprecation_table() -> None:
    reg = load_registry()
    assert reg.get("claude-sonnet-4-5").lifecycle.retires_on == date(2026, 11, 30)
    assert reg.get("claude-opus-4-5").lifecycle.retires_on == date(2027, 1, 22)


def test_a_retired_model_resolves_to_its_successor() -> None:
    reg = load_registry()
    spec, passed = reg.resolve("claude-sonnet-4-5", date(2026, 11, 29))
    assert spec.id == "claude-sonnet-4-5" and passed == []
    spec, passed = reg.resolve("claude-sonnet-4-5", date(2026, 11, 30))
    assert spec.id == "claude-sonnet-5-5" and passed == ["claude-sonnet-4-5"]


def test_api_ids_resolve_too() -> None:
    assert load_registry().get("claude-haiku-4-5-20251001").id == "claude-haiku-4-5"


def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(UnknownModelError, match="gpt-4o-mini"):
        load_registry().get("gpt-5-imaginary")


def test_long_context_price_band() -> None:
    spec = load_registry().get("claude-haiku-5-5")
    assert spec.price_for(100_000).input == 0.10
    assert spec.price_for(100_001).input == 0.50


def _user_registry(tmp_path: Path, **change: object) -> Path:
    data = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "polyroute/config/models.yaml").read_text()
    )
    data.update(change)
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_user_file_overrides_by_flag_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _user_registry(
        tmp_path,
        tiers={
            "reasoning": "gpt-4o",
            "balanced": "gpt-4o",
            "fast": "gpt-4o-mini",
            "cheap_vision": "gpt-4o-mini",
        },
    )
    assert load_registry(path).tier("reasoning").id == "gpt-4o"
    monkeypatch.setenv("POLYROUTE_MODELS", str(path))
    assert load_registry().tier("reasoning").id == "gpt-4o"


def test_a_bad_registry_names_the_file_and_field(tmp_path: Path) -> None:
    path = _user_registry(tmp_path, tiers={"reasoning": "no-such-model"})
    with pytest.raises(ConfigError, match=r"models\.yaml.*no-such-model"):
        load_registry(path)
    with pytest.raises(ConfigError, match="context_window"):
        parse_registry(
            {
                "tiers": {},
                "models": {
                    "m": {
                        "api_id": "m",
                        "provider": "x",
                        "max_output_tokens": 1,
                        "price_source": "s",
                        "price_as_of": "2026-01-01",
                        "price": {"input": 1, "output": 1, "cache_read": 1, "cache_write": 1},
                        "latency": {"ttft_ms": 1, "output_tokens_per_s": 1},
                    }
                },
            },
            "test",
        )
