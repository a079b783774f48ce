"""The router registry, the baseline routers, calibration and the local learned router."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from polyroute.errors import ConfigError, InputError
from polyroute.routers import (
    LengthRouter,
    RandomRouter,
    Router,
    UnknownRouterError,
    calibrate,
    decide,
    get_router,
    register_router,
    router_names,
)
from polyroute.routers.local import (
    HAND_FEATURES,
    ComplexityThresholds,
    LocalModel,
    LocalRouter,
    complexity_from_score,
    default_model,
    features,
    last_question,
    shipped_model,
)
from polyroute.routers.train import TrainConfig, group_folds, out_of_group_scores, train
from polyroute.routing_eval import RoutingDataset, RoutingExample

MMLU_PROMPT = (
    "Which of the following structures is derived from ectomesenchyme?\n"
    "A. Motor neurons\nB. Skeletal muscles\nC. Melanocytes\nD. Sweat glands\nAnswer:"
)
FEW_SHOT = (
    "The following are multiple choice questions (with answers) about anatomy.\n\n"
    "What is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer: B\n\n"
    "Which bone is longest?\nA. Femur\nB. Tibia\nC. Ulna\nD. Rib\nAnswer: A\n\n" + MMLU_PROMPT
)


def test_registry_builds_the_builtin_routers_by_name() -> None:
    assert {"random", "length", "local"} <= set(router_names())
    for name in ("random", "length", "local"):
        router = get_router(name)
        assert router.name == name
        assert isinstance(router, Router)
        assert 0.0 <= router.score(MMLU_PROMPT) <= 1.0


def test_an_unknown_router_is_an_input_error_naming_the_known_ones() -> None:
    with pytest.raises(UnknownRouterError, match=r"unknown router 'nope'.*random") as info:
        get_router("nope")
    assert isinstance(info.value, InputError)


def test_a_new_router_registers_by_name_without_replacing_others() -> None:
    register_router("test-constant", lambda: LengthRouter(scale=1.0, name="test-constant"))
    assert get_router("test-constant").name == "test-constant"
    with pytest.raises(ValueError, match="already registered"):
        register_router("test-constant", RandomRouter)
    with pytest.raises(ValueError, match="comma"):
        register_router("a,b", RandomRouter)


def test_random_router_is_deterministic_per_prompt_and_seed() -> None:
    a, b = RandomRouter(seed=1), RandomRouter(seed=2)
    assert a.score("x") == RandomRouter(seed=1).score("x")
    assert a.score("x") != b.score("x")
    scores = [a.score(f"prompt {i}") for i in range(4000)]
    assert all(0.0 <= s < 1.0 for s in scores)
    assert sum(scores) / len(scores) == pytest.approx(0.5, abs=0.03)


def test_length_router_scores_longer_prompts_higher() -> None:
    router = LengthRouter()
    assert router.score("") == 0.0
    assert router.score("a" * 10) < router.score("a" * 100) < router.score("a" * 10_000) < 1.0


def test_calibrate_picks_the_score_that_routes_the_share() -> None:
    scores = [0.1, 0.9, 0.5, 0.7, 0.3]
    assert calibrate(scores, 0.4) == 0.7
    assert sum(decide(s, calibrate(scores, 0.4)) for s in scores) == 2
    assert not any(decide(s, calibrate(scores, 0.0)) for s in scores)
    assert all(decide(s, calibrate(scores, 1.0)) for s in scores)
    with pytest.raises(ValueError):
        calibrate(scores, 1.5)


@given(
    st.lists(st.floats(0.0, 1.0), min_size=1, max_size=200),
    st.floats(0.0, 1.0),
)
def test_calibrate_routes_at_least_the_share_and_only_ties_beyond(
    scores: list[float], share: float
) -> None:
    threshold = calibrate(scores, share)
    routed = [s for s in scores if decide(s, threshold)]
    k = round(share * len(scores))
    assert len(routed) >= k
    # Anything routed beyond the k asked for is tied with the k-th highest score.
    assert len([s for s in scores if s > threshold]) <= k


def test_last_question_drops_worked_examples_and_splits_options() -> None:
    stem, options, few_shot = last_question(FEW_SHOT)
    assert stem == "Which of the following structures is derived from ectomesenchyme?"
    assert options == ["Motor neurons", "Skeletal muscles", "Melanocytes", "Sweat glands"]
    assert few_shot
    assert last_question(MMLU_PROMPT)[:2] == (stem, options)
    assert not last_question(MMLU_PROMPT)[2]


def test_a_plain_task_description_is_its_own_question() -> None:
    text = "Write a Python function that merges two sorted lists."
    assert last_question(text) == (text, [], False)
    feats = features(text, 18)
    assert feats
    assert all(0 <= i < (1 << 18) + len(HAND_FEATURES) for i, _ in feats)


def test_features_are_stable_and_scaled() -> None:
    one, two = features(MMLU_PROMPT, 18), features(MMLU_PROMPT, 18)
    assert one == two
    hashed = [v for i, v in one if i < 1 << 18]
    assert sum(v * v for v in hashed) == pytest.approx(1.0)
    assert all(0.0 <= v <= 1.5 for _, v in one)


def test_the_few_shot_examples_do_not_change_the_hashed_features() -> None:
    plain = {i for i, _ in features(MMLU_PROMPT, 18) if i < 1 << 18}
    shot = {i for i, _ in features(FEW_SHOT, 18) if i < 1 << 18}
    assert plain == shot


def test_shipped_model_loads_and_scores_within_bounds() -> None:
    model = shipped_model()
    assert model.complexity is not None
    assert model.complexity.high >= model.complexity.medium
    router = LocalRouter.default()
    for prompt in (MMLU_PROMPT, FEW_SHOT, "", "hi", "x" * 100_000):
        assert 0.0 <= router.score(prompt) <= 1.0
        assert 0.0 <= router.p_weak_fails(prompt) <= 1.0
        assert router.complexity(prompt) in ("low", "medium", "high")


def test_complexity_from_score_follows_the_calibrated_thresholds() -> None:
    thresholds = ComplexityThresholds.calibrated([i / 100 for i in range(100)], 0.2, 0.3)
    model = LocalModel(hash_bits=4, weak=shipped_model().weak, strong=shipped_model().strong)
    model.complexity = thresholds
    assert complexity_from_score(0.95, model) == "high"
    assert complexity_from_score(0.6, model) == "medium"
    assert complexity_from_score(0.1, model) == "low"
    levels = [complexity_from_score(i / 100, model) for i in range(100)]
    assert levels.count("high") == 20
    assert levels.count("medium") == 30
    assert complexity_from_score(0.0) in ("low", "medium", "high")


def test_a_model_file_named_in_the_environment_replaces_the_shipped_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = train(_synthetic(80), TrainConfig(epochs=1))
    path = tmp_path / "mine.json"
    model.save(path)
    monkeypatch.setenv("POLYROUTE_LOCAL_ROUTER", str(path))
    default_model.cache_clear()
    try:
        assert default_model().training["examples"] == 80
        assert get_router("local").score("x") == LocalRouter(model).score("x")
    finally:
        monkeypatch.delenv("POLYROUTE_LOCAL_ROUTER")
        default_model.cache_clear()
    assert default_model() is shipped_model()


def test_runtime_needs_no_numpy() -> None:
    code = (
        "import sys; from polyroute.routers import get_router; "
        "get_router('local').score('What is 2+2?'); "
        "assert 'numpy' not in sys.modules and 'sklearn' not in sys.modules, 'heavy import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _synthetic(n: int = 400) -> RoutingDataset:
    # The weak model fails exactly on questions about "quaternions"; the strong one never does.
    examples = []
    for i in range(n):
        hard = i % 4 == 0
        topic = "quaternions" if hard else "apples"
        prompt = f"Question {i}: what is true of {topic} in case {i % 7}?\nA. one\nB. two\nAnswer:"
        examples.append(RoutingExample(prompt, not hard, True, f"group{i % 5}"))
    return RoutingDataset(tuple(examples), "weak", "strong")


def test_training_learns_which_prompts_the_weak_model_fails() -> None:
    data = _synthetic()
    model = train(data, TrainConfig(epochs=3))
    router = LocalRouter(model)
    hard = router.score("Tell me about quaternions in case 3?\nA. one\nB. two\nAnswer:")
    easy = router.score("Tell me about apples in case 3?\nA. one\nB. two\nAnswer:")
    assert hard > easy
    assert router.p_weak_fails("quaternions?") > router.p_weak_fails("apples?")


def test_training_is_reproducible_and_round_trips_through_the_file(tmp_path: Path) -> None:
    data = _synthetic(120)
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    train(data, TrainConfig(epochs=2, seed=3)).save(first)
    train(data, TrainConfig(epochs=2, seed=3)).save(second)
    assert first.read_bytes() == second.read_bytes()
    loaded = LocalRouter.from_file(first)
    again = LocalRouter(LocalModel.from_json(json.loads(first.read_text(encoding="utf-8"))))
    assert loaded.score(MMLU_PROMPT) == again.score(MMLU_PROMPT)
    stored = json.loads(first.read_text(encoding="utf-8"))
    assert stored["training"]["examples"] == 120
    assert stored["kind"] == "polyroute-local-router"


def test_a_file_of_another_kind_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"kind": "something"}), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"m\.json: not a local router model \(its kind is 'some"):
        LocalModel.load(path)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "no such model file"),
        ("{not json", "not JSON (Expecting property name"),
        ('{"kind": "polyroute-local-router", "schemaVersion": 1}', "not a local router model"),
    ],
)
def test_a_bad_router_model_from_the_environment_is_one_line_naming_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str | None, fragment: str
) -> None:
    path = tmp_path / "model.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    monkeypatch.setenv("POLYROUTE_LOCAL_ROUTER", str(path))
    default_model.cache_clear()
    try:
        with pytest.raises(ConfigError) as info:
            default_model()
    finally:
        default_model.cache_clear()
    message = str(info.value)
    assert message.startswith(f"POLYROUTE_LOCAL_ROUTER: {path}: ") and fragment in message
    assert "\n" not in message


def test_out_of_group_scores_never_see_their_own_group() -> None:
    data = _synthetic(100)
    folds = group_folds(data.groups, 5, seed=0)
    assert sorted(g for fold in folds for g in fold) == sorted(set(data.groups))
    scores = out_of_group_scores(data, folds, TrainConfig(epochs=1))
    assert len(scores) == 100
    assert all(0.0 <= s <= 1.0 and not math.isnan(s) for s in scores)
