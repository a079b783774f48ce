"""Routing metrics on hand-made data whose APGR, CPT and savings are known by hand."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from polyroute.errors import InputError, RoutingDataError
from polyroute.routing_eval import (
    RoutingDataset,
    RoutingExample,
    accuracy,
    apgr,
    call_costs,
    cpt,
    evaluate_routers,
    evaluate_scores,
    load_routing_data,
    oracle_accuracy,
    savings_at_quality,
    sweep,
    write_scores_csv,
)

WEAK = [False, False, True, True]
STRONG = [True, True, True, True]
PERFECT = [1.0, 0.9, 0.1, 0.0]


def _dataset(
    weak: list[bool], strong: list[bool], prompts: list[str] | None = None
) -> RoutingDataset:
    prompts = prompts or [f"p{i:03d}" for i in range(len(weak))]
    examples = tuple(
        RoutingExample(p, w, s, "g") for p, w, s in zip(prompts, weak, strong, strict=True)
    )
    return RoutingDataset(examples, "weak", "strong")


def test_sweep_visits_every_share_from_zero_to_all() -> None:
    curve = sweep(PERFECT, WEAK, STRONG)
    assert [p.share for p in curve] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [p.accuracy for p in curve] == [0.5, 0.75, 1.0, 1.0, 1.0]


def test_apgr_and_cpt_of_a_perfect_ranking_match_the_hand_computation() -> None:
    curve = sweep(PERFECT, WEAK, STRONG)
    # PGR at 0, 25, 50, 75, 100% calls: 0, .5, 1, 1, 1 -> trapezoid area 0.75.
    assert apgr(curve, 0.5, 1.0) == pytest.approx(0.75)
    assert cpt(curve, 0.5, 1.0, 0.5) == pytest.approx(0.25)
    # 80% of the gap is accuracy 0.9: 60% of the way from the 25% point to the 50% one.
    assert cpt(curve, 0.5, 1.0, 0.8) == pytest.approx(0.4)


def test_a_reversed_ranking_recovers_the_gap_last() -> None:
    curve = sweep(list(reversed(PERFECT)), WEAK, STRONG)
    assert apgr(curve, 0.5, 1.0) == pytest.approx(0.25)
    assert cpt(curve, 0.5, 1.0, 0.5) == pytest.approx(0.75)


def test_tied_scores_move_together_so_a_constant_router_is_the_random_line() -> None:
    curve = sweep([0.3] * 4, WEAK, STRONG)
    assert [p.share for p in curve] == [0.0, 1.0]
    assert apgr(curve, 0.5, 1.0) == pytest.approx(0.5)


def test_random_scores_recover_half_the_gap_on_synthetic_data() -> None:
    rng = random.Random(7)
    n = 20_000
    weak = [rng.random() < 0.6 for _ in range(n)]
    strong = [rng.random() < 0.8 for _ in range(n)]
    scores = [rng.random() for _ in range(n)]
    ev = evaluate_scores(_dataset(weak, strong), {"random": scores})
    assert ev.results["random"].apgr == pytest.approx(0.5, abs=0.03)


def test_oracle_is_right_whenever_either_model_is() -> None:
    weak = [True, False, False, True]
    strong = [False, True, False, True]
    assert oracle_accuracy(weak, strong) == 0.75
    assert oracle_accuracy([True, False], [False, True]) == 1.0
    ev = evaluate_scores(_dataset(weak, strong), {"x": [0.0, 1.0, 0.5, 0.5]})
    assert ev.oracle_accuracy == 0.75
    assert ev.oracle_share == 0.25
    # Routing exactly the prompts only the strong model gets right reaches the oracle.
    assert max(p.accuracy for p in ev.results["x"].curve) == ev.oracle_accuracy


def test_apgr_is_undefined_and_cpt_none_without_a_gap() -> None:
    curve = sweep([0.1, 0.2], [True, False], [True, False])
    assert apgr(curve, 0.5, 0.5) != apgr(curve, 0.5, 0.5)  # NaN
    assert cpt(curve, 0.5, 0.5, 0.5) is None


def test_savings_at_95pct_route_the_fewest_prompts_that_reach_the_target() -> None:
    weak_cost, strong_cost = call_costs(["same prompt"] * 4, 1.0, 5.0, 5.0, 25.0, output_tokens=1)
    # Same prompt, and both prices five times the weak ones: a strong call costs five weak ones.
    assert strong_cost[0] == pytest.approx(5 * weak_cost[0])
    saved = savings_at_quality(PERFECT, WEAK, STRONG, weak_cost, strong_cost)
    # 95% of the strong model's 100% needs both weak failures routed: 2 strong + 2 weak calls.
    assert saved.share == 0.5
    assert saved.accuracy == 1.0
    assert saved.saved == pytest.approx(1 - (2 * 5 + 2 * 1) / (4 * 5))


def test_output_tokens_are_priced_at_the_output_rate() -> None:
    none, _ = call_costs(["x"], 1.0, 5.0, 5.0, 25.0, output_tokens=0)
    ten, _ = call_costs(["x"], 1.0, 5.0, 5.0, 25.0, output_tokens=10)
    assert ten[0] - none[0] == pytest.approx(10 * 5.0 / 1e6)


def _write_csv(path: Path, rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def test_load_reads_every_csv_and_drops_contaminated_prompts(tmp_path: Path) -> None:
    header = ("prompt", "w", "s")
    _write_csv(tmp_path / "a.csv", [("q1", "True", "True"), ("q2", "False", "True")], header)
    _write_csv(tmp_path / "b.csv", [("q3\nline two", "false", "FALSE")], header)
    (tmp_path / "contaminated_prompts.jsonl").write_text(
        json.dumps({"train_prompt": "x", "eval_prompt": "q2"}) + "\n", encoding="utf-8"
    )
    data = load_routing_data([tmp_path], "w", "s")
    assert data.prompts == ["q1", "q3\nline two"]
    assert data.weak == [True, False]
    assert data.strong == [True, False]
    assert data.groups == ["a", "b"]
    assert data.dropped_contaminated == 1


def test_a_missing_column_names_the_file_and_the_column(tmp_path: Path) -> None:
    _write_csv(tmp_path / "a.csv", [("q1", "True")], ("prompt", "w"))
    with pytest.raises(RoutingDataError) as info:
        load_routing_data([tmp_path], "w", "s")
    assert isinstance(info.value, InputError)  # exit code 2 in the CLI
    message = str(info.value)
    assert "a.csv" in message
    assert "'s'" in message
    assert "\n" not in message


def test_bad_values_folders_and_empty_folders_are_data_errors(tmp_path: Path) -> None:
    with pytest.raises(RoutingDataError, match="no such folder"):
        load_routing_data([tmp_path / "absent"], "w", "s")
    with pytest.raises(RoutingDataError, match="no CSV files"):
        load_routing_data([tmp_path], "w", "s")
    _write_csv(tmp_path / "a.csv", [("q1", "maybe", "True")], ("prompt", "w", "s"))
    with pytest.raises(RoutingDataError, match=r"line 2.*'w'.*maybe"):
        load_routing_data([tmp_path], "w", "s")


def test_scores_file_has_one_row_per_prompt(tmp_path: Path) -> None:
    data = _dataset(WEAK, STRONG)
    out = tmp_path / "scores.csv"
    write_scores_csv(out, data, {"a": PERFECT, "b": [0.5] * 4})
    with out.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4
    assert list(rows[0]) == ["subject", "index", "promptSha256", "weak", "strong", "a", "b"]
    assert float(rows[1]["a"]) == pytest.approx(0.9)


def test_evaluation_json_has_the_headline_keys_and_a_breakdown() -> None:
    class Fixed:
        def __init__(self, name: str, values: dict[str, float]) -> None:
            self.name = name
            self._values = values

        def score(self, prompt: str) -> float:
            return self._values[prompt]

    data = _dataset(WEAK, STRONG, ["a", "b", "c", "d"])
    good = Fixed("good", dict(zip("abcd", PERFECT, strict=True)))
    flat = Fixed("flat", dict.fromkeys("abcd", 0.5))
    prices = {"cheap": (1.0, 5.0), "dear": (5.0, 25.0)}
    ev, scores = evaluate_routers(data, [good, flat], prices.__getitem__, ("cheap", "dear"))
    assert scores["good"] == PERFECT
    out = ev.to_json("good")
    for key in ("apgr", "cpt50", "cpt80", "savingsAt95Pct", "n"):
        assert key in out
    assert out["apgr"] == 0.75
    assert out["n"] == 4
    routers = out["routers"]
    assert isinstance(routers, dict)
    assert set(routers) == {"good", "flat"}
    assert routers["flat"]["apgr"] == 0.5
    assert accuracy(WEAK) == 0.5
