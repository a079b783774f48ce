"""CLI mistakes that used to pass silently or end in a traceback: each is one line on stderr
and exit 2, and nothing is run or written."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import pytest

from polyroute import cli_aws
from polyroute.cli import main
from polyroute.errors import EXIT_BAD_INPUT, EXIT_OK

from ..conftest import EXAMPLES, REPO

QUESTION = str(EXAMPLES / "question.json")


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    return err.strip()


# --- --fail names a model the registry knows --------------------------------------------------


def test_fail_for_an_unknown_model_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", QUESTION, "--time-scale", "0.001", "--fail", "nomodel=429"])
    assert code == EXIT_BAD_INPUT
    err = one_line_error(capsys)
    assert "--fail 'nomodel=429': unknown model 'nomodel'" in err
    assert "claude-haiku-4-5" in err, "with no close match, the known ids are listed"


def test_fail_for_a_misspelt_model_suggests_the_closest(
    capsys: pytest.CaptureFixture[str],
) -> None:
    fails = ["--fail", "claude-haiku-4-5=500", "--fail", "claude-haiku-4=429x2"]
    code = main(["run", QUESTION, "--time-scale", "0.001", *fails])
    assert code == EXIT_BAD_INPUT
    err = one_line_error(capsys)
    assert err.endswith(
        "--fail 'claude-haiku-4=429x2': unknown model 'claude-haiku-4' "
        "(did you mean 'claude-haiku-4-5'?)"
    )


def test_fail_for_a_known_model_still_fires(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["run", QUESTION, "--time-scale", "0.001", "--json", "--fail", "claude-haiku-4-5=429"]
    )
    out = capsys.readouterr().out
    assert code == EXIT_OK
    step = json.loads(out)["steps"][0]
    assert step["model"] == "claude-haiku-4-5" and step["attempts"] == 2


def test_fail_for_an_unknown_model_in_a_batch_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tasks = tmp_path / "t.jsonl"
    tasks.write_text(json.dumps({"description": "What is 2 + 2?"}) + "\n", encoding="utf-8")
    out = tmp_path / "r.jsonl"
    code = main(["batch", str(tasks), "--out", str(out), "--fail", "gpt-5=timeout"])
    assert code == EXIT_BAD_INPUT
    assert "unknown model 'gpt-5'" in one_line_error(capsys)
    assert not out.exists()


# --- submit without botocore ------------------------------------------------------------------


def test_submit_without_botocore_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A core install: every botocore module is missing (None in sys.modules makes the import
    # raise ModuleNotFoundError, as it does when the package is not installed).
    for name in [m for m in sys.modules if m == "botocore" or m.startswith("botocore.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "botocore", None)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    with pytest.raises(ModuleNotFoundError):
        import botocore.auth  # noqa: F401  # the simulation holds
    api = "https://abc123.execute-api.eu-west-1.amazonaws.com/v1api"
    code = main(["submit", QUESTION, "--api", api])
    assert code == EXIT_BAD_INPUT
    err = one_line_error(capsys)
    assert "botocore" in err and f"pip install 'polyroute[{cli_aws.AWS_EXTRA}]'" in err


def test_the_extra_named_for_submit_brings_botocore() -> None:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    extra = meta["project"]["optional-dependencies"][cli_aws.AWS_EXTRA]
    assert any(dep.startswith(("boto3", "botocore")) for dep in extra), extra


# --- cost --mix shares add up -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mix", "message"),
    [
        ("classification=0.5", "the shares add up to 0.5; they must add up to 1 (or to 100)"),
        ("classification=0.3,planning=0.3,implementation=0.3", "add up to 0.9;"),
        ("classification=40%,planning=50%", "the shares add up to 90%; they must add up to 100%"),
        ("classification=0.6,planning=0.6", "add up to 1.2;"),
        ("planning=0.5,planning=0.5", "'planning' is given twice"),
    ],
)
def test_cost_refuses_shares_that_do_not_add_up(
    mix: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["cost", "--mix", mix]) == EXIT_BAD_INPUT
    err = one_line_error(capsys)
    assert err.startswith("polyroute: error: --mix: ") and message in err
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("mix", "shares"),
    [
        ("classification=0.5,implementation=0.5", [0.5, 0.5]),
        ("classification=40,implementation=60", [0.4, 0.6]),
        ("classification=40%,implementation=60%", [0.4, 0.6]),
        ("classification=0.33,implementation=0.33,planning=0.33", [1 / 3] * 3),
    ],
)
def test_cost_takes_shares_of_1_or_100(
    mix: str, shares: list[float], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["cost", "--mix", mix, "--json"]) == EXIT_OK
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["share"] for r in rows] == pytest.approx(shares)


# --- numbers a float cannot hold ------------------------------------------------------------


@pytest.mark.parametrize(
    ("constraints", "field"),
    [
        ('{"maxCostUsd": 1e999}', "constraints.maxCostUsd"),
        ('{"timeoutSeconds": 1e12}', "constraints.timeoutSeconds"),
        ('{"timeoutSeconds": 1e300}', "constraints.timeoutSeconds"),
    ],
)
def test_run_refuses_huge_or_infinite_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], constraints: str, field: str
) -> None:
    task = tmp_path / "t.json"
    task.write_text(f'{{"description": "x", "constraints": {constraints}}}', encoding="utf-8")
    code = main(["run", str(task), "--json", "--time-scale", "0.001"])
    assert code == EXIT_BAD_INPUT
    assert f"{task}: {field}: " in one_line_error(capsys)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--time-scale", "nan"], "--time-scale: 'nan' is not a finite number"),
        (["--time-scale", "inf"], "--time-scale: 'inf' is not a finite number"),
        (["--time-scale", "1e300"], "--time-scale: '1e300' must be at most"),
        (
            ["--fail", "claude-haiku-4-5=refusalx99999999999999999999"],
            "count '99999999999999999999' must be 1-1000",
        ),
        (["--fail", "claude-haiku-4-5=refusalx0"], "count '0' must be 1-1000"),
        (["--fail", "claude-haiku-4-5=429x-1"], "count '-1' must be 1-1000"),
        (["--fail", "claude-haiku-4-5=429@1.5"], "probability '1.5' must be between 0 and 1"),
        (["--fail", "claude-haiku-4-5=429@-0.1"], "probability '-0.1' must be between 0 and 1"),
        (["--fail", "claude-haiku-4-5=429@nan"], "probability 'nan' must be between 0 and 1"),
    ],
)
def test_run_refuses_cli_numbers_out_of_range(
    capsys: pytest.CaptureFixture[str], args: list[str], said: str
) -> None:
    with_scale = args if "--time-scale" in args else ["--time-scale", "0.001", *args]
    try:
        code = main(["run", QUESTION, *with_scale])
    except SystemExit as exc:  # argparse's own refusals
        code = int(exc.code or 0)
    assert code == EXIT_BAD_INPUT
    assert said in one_line_error(capsys)


# --- --engine stepfunctions-local only where it is honoured -----------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["batch", str(EXAMPLES / "batch.jsonl"), "--out", "results.jsonl"],
        ["serve"],
        ["plan", QUESTION],
    ],
)
def test_engine_stepfunctions_local_is_refused_where_it_would_be_ignored(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as caught:
        main([*command, "--engine", "stepfunctions-local"])
    assert caught.value.code == EXIT_BAD_INPUT
    assert "stepfunctions-local is only for 'run'" in one_line_error(capsys)
    assert not (tmp_path / "results.jsonl").exists()


# --- messages that say what is wrong, and where -----------------------------------------------


def test_report_on_the_status_of_a_task_that_failed_before_running_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = tmp_path / "status.json"
    status.write_text(
        json.dumps(
            {"taskId": "t1", "status": "failed", "result": None, "error": "cycle: a -> b -> a"}
        )
    )
    code = main(["report", str(status), "--out", str(tmp_path / "r.html")])
    assert code == EXIT_BAD_INPUT
    assert one_line_error(capsys).endswith(
        f"{status}: a task status (GET /v1/tasks/t1) of a task that failed before producing"
        " a result, so there is nothing to report: cycle: a -> b -> a"
    )
    assert not (tmp_path / "r.html").exists()


def test_cost_with_the_model_registry_as_prices_says_it_is_a_registry(
    capsys: pytest.CaptureFixture[str],
) -> None:
    registry = REPO / "polyroute" / "config" / "models.yaml"
    assert main(["cost", "--prices", str(registry)]) == EXIT_BAD_INPUT
    assert "looks like a model registry, not a prices file" in one_line_error(capsys)


def test_a_pin_that_cannot_run_on_the_date_names_the_task_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    task = tmp_path / "pinned.json"
    step = {"id": "s", "description": "review", "model": "claude-sonnet-4-5"}
    task.write_text(json.dumps({"description": "x", "plan": {"steps": [step]}}))
    code = main(["run", str(task), "--on", "2099-01-01", "--time-scale", "0.001"])
    assert code == EXIT_BAD_INPUT
    assert f"error: {task}: plan.steps.0.model: step s pins claude-sonnet-4-5" in (
        one_line_error(capsys)
    )


# --- a task file's plan: errors name the file and the field ------------------------------------


def _plan_task(tmp_path: Path, steps: list[dict[str, object]], max_steps: int = 20) -> str:
    path = tmp_path / "task.json"
    task = {"description": "d", "constraints": {"maxSteps": max_steps}, "plan": {"steps": steps}}
    path.write_text(json.dumps(task), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("command", ["run", "plan"])
def test_a_plan_longer_than_max_steps_names_the_file_and_fields(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    steps: list[dict[str, object]] = [{"id": f"s{i}", "description": "x"} for i in range(8)]
    path = _plan_task(tmp_path, steps, max_steps=5)
    assert main([command, path, "--time-scale", "0.001"]) == EXIT_BAD_INPUT
    assert one_line_error(capsys) == (
        f"polyroute: error: {path}: plan.steps: the plan has 8 steps, more than"
        " constraints.maxSteps=5"
    )


@pytest.mark.parametrize("command", ["run", "plan"])
def test_a_cycle_in_the_plan_names_the_file_and_the_cycle(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    steps: list[dict[str, object]] = [
        {"id": "a", "description": "x", "dependsOn": ["b"]},
        {"id": "b", "description": "y", "dependsOn": ["a"]},
    ]
    path = _plan_task(tmp_path, steps)
    assert main([command, path, "--time-scale", "0.001"]) == EXIT_BAD_INPUT
    assert one_line_error(capsys) == f"polyroute: error: {path}: plan.steps: cycle: a -> b -> a"
