"""``eval routing``, ``train-router`` and ``calibrate`` through ``cli_routing.register``.

The real MMLU outcome data sits beside the repository (``../shared/data/routing/mmlu``); the
tests that need it skip when it is absent. Prices come from a table here, not the registry.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from polyroute import cli_routing

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "routing" / "mmlu"
WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG = "gpt-4-1106-preview"
TEST_PRICES = {"claude-haiku-4-5": (1.0, 5.0), "claude-opus-4-5": (5.0, 25.0)}

needs_data = pytest.mark.skipif(
    not DATA.is_dir(), reason="MMLU routing data not found at ../shared/data/routing/mmlu"
)


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="polyroute")
    cli_routing.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


@pytest.fixture(autouse=True)
def _test_prices(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(cli_routing, "_prices", TEST_PRICES.__getitem__)
    yield


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One eval over the whole data set, with every output asked for."""
    if not DATA.is_dir():
        pytest.skip("MMLU routing data not found at ../shared/data/routing/mmlu")
    out = tmp_path_factory.mktemp("eval")
    scores, plot = out / "scores.csv", out / "plot.png"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli_routing, "_prices", TEST_PRICES.__getitem__)
        import contextlib
        import io

        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            code = _run(
                [
                    "eval", "routing", "--data", str(DATA), "--weak", WEAK, "--strong", STRONG,
                    "--json", "--scores", str(scores), "--plot", str(plot),
                ]
            )  # fmt: skip
    return {"code": code, "json": json.loads(buffer.getvalue()), "scores": scores, "plot": plot}


@needs_data
def test_eval_json_has_the_headline_keys(full_run: dict[str, object]) -> None:
    assert full_run["code"] == 0
    result = full_run["json"]
    assert isinstance(result, dict)
    for key in ("apgr", "cpt50", "cpt80", "savingsAt95Pct", "n"):
        assert key in result
    assert result["router"] == "local"
    assert result["n"] > 10_000
    assert result["droppedContaminated"] > 0
    assert set(result["routers"]) == {"random", "length", "local"}
    assert 0.0 < result["savingsAt95Pct"] < 1.0
    # The shipped model was trained on this folder: the output says the figure is in-sample.
    assert result["inSample"] == ["local"]


@needs_data
def test_local_router_beats_random_on_apgr(full_run: dict[str, object]) -> None:
    # In-sample for the shipped model (trained on these subjects); held-out figures are in
    # benchmarks/ROUTING.md.
    routers = full_run["json"]["routers"]  # type: ignore[index]
    assert routers["local"]["apgr"] > routers["random"]["apgr"] + 0.05
    assert abs(routers["random"]["apgr"] - 0.5) < 0.05


@needs_data
def test_scores_file_has_one_row_per_prompt(full_run: dict[str, object]) -> None:
    path = full_run["scores"]
    assert isinstance(path, Path)
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == full_run["json"]["n"]  # type: ignore[index]
    assert {"subject", "promptSha256", "weak", "strong", "random", "length", "local"} <= set(
        rows[0]
    )


@needs_data
def test_plot_is_a_png(full_run: dict[str, object]) -> None:
    path = full_run["plot"]
    assert isinstance(path, Path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _small_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    with (folder / "topic.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "w", "s"])
        for i in range(60):
            hard = i % 3 == 0
            word = "quaternion" if hard else "apple"
            writer.writerow([f"Q{i} about a {word}?\nA. x\nB. y\nAnswer:", not hard, True])
    return folder


def test_eval_prints_a_table_for_a_chosen_router(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _small_folder(tmp_path)
    code = _run(
        ["eval", "routing", "--data", str(folder), "--weak", "w", "--strong", "s",
         "--router", "length,random"]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "length *" in out
    assert "random" in out
    assert "local" not in out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--data", "{missing}", "--weak", "w", "--strong", "s"], "no such folder"),
        (["--data", "{empty}", "--weak", "w", "--strong", "s"], "no CSV files"),
        (["--data", "{small}", "--weak", "w", "--strong", "nope"], "no column 'nope'"),
        (["--data", "{small}", "--weak", "w", "--strong", "s", "--router", "x"], "unknown router"),
        (["--data", "{small}", "--weak", "w", "--strong", "s", "--price-pair", "a"], "price-pair"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    (tmp_path / "empty").mkdir()
    small = _small_folder(tmp_path)
    paths = {"missing": tmp_path / "absent", "empty": tmp_path / "empty", "small": small}
    argv = [a.format(**{k: str(v) for k, v in paths.items()}) for a in argv]
    code = _run(["eval", "routing", *argv])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert needle in lines[0]
    assert "Traceback" not in captured.err


def test_train_calibrate_and_eval_a_retrained_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _small_folder(tmp_path)
    model = tmp_path / "model.json"
    base = ["--data", str(folder), "--weak", "w", "--strong", "s"]
    assert _run(["train-router", *base, "--out", str(model), "--seed", "1"]) == 0
    assert json.loads(model.read_text(encoding="utf-8"))["training"]["examples"] == 60

    calibrated = tmp_path / "calibrated.json"
    code = _run(
        ["calibrate", *base, "--strong-share", "0.25", "--model", str(model),
         "--out", str(calibrated), "--json"]
    )  # fmt: skip
    assert code == 0
    capsys.readouterr()
    stored = json.loads(calibrated.read_text(encoding="utf-8"))
    assert stored["thresholds"]["strongShare"]["share"] == 0.25
    assert stored["thresholds"]["complexity"]["highShare"] == 0.25

    assert _run(["eval", "routing", *base, "--model", str(calibrated), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    # The retrained model learned the one word that decides, so it routes the third of the
    # prompts the weak model fails first: the best APGR there is, 1 - (1/3) / 2.
    assert result["routers"]["local"]["apgr"] == pytest.approx(1 - 1 / 6, abs=0.01)


def test_calibrate_prints_the_threshold_and_refuses_bad_shares(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _small_folder(tmp_path)
    base = ["calibrate", "--data", str(folder), "--weak", "w", "--strong", "s"]
    assert _run([*base, "--strong-share", "0.5", "--router", "length"]) == 0
    assert "threshold" in capsys.readouterr().out
    assert _run([*base, "--strong-share", "1.5"]) == 2
    assert "--strong-share" in capsys.readouterr().err
    assert _run([*base, "--strong-share", "0.2", "--model", str(tmp_path / "none.json")]) == 2
    assert "no such model file" in capsys.readouterr().err
