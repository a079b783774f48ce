"""The CLI as a new user runs it: every example, the exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import EXAMPLES, REPO


def polyroute(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "polyroute", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0"},
    )


@pytest.mark.parametrize(
    ("example", "code"),
    [
        ("question.json", 0),
        ("code_review.json", 0),
        ("vision.json", 0),
        ("long_document.json", 0),
        ("planning.json", 0),
    ],
)
def test_every_example_runs(example: str, code: int) -> None:
    proc = polyroute(
        "run", f"examples/{example}", "--time-scale", "0.001", "--json", "--on", "2026-11-27"
    )
    assert proc.returncode == code, proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == "succeeded"
    assert result["simulated"] is True
    for key in ("taskId", "status", "steps", "totals", "baseline", "savingsPct", "handoff"):
        assert key in result
    for step in result["steps"]:
        for key in (
            "stepId",
            "model",
            "reason",
            "dependsOn",
            "status",
            "startedAt",
            "finishedAt",
            "durationMs",
            "usage",
            "costUsd",
            "attempts",
        ):
            assert key in step
    for key in ("costUsd", "inputTokens", "outputTokens", "durationMs", "criticalPathMs"):
        assert key in result["totals"]


def test_table_output_says_it_is_simulated_and_shows_the_saving() -> None:
    proc = polyroute(
        "run", "examples/code_review.json", "--time-scale", "0.001", "--on", "2026-11-27"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("SIMULATED")
    assert "baseline: every step on" in proc.stdout
    assert "saving" in proc.stdout
    for step in ("summarize", "security", "performance", "tests", "verdict"):
        assert step in proc.stdout


def test_budget_stop_exits_3_and_still_prints_the_partial_result(tmp_path: Path) -> None:
    task = json.loads((EXAMPLES / "code_review.json").read_text())
    task["constraints"] = {"maxCostUsd": 0.0005}
    task["attachments"][0]["path"] = str(EXAMPLES / "data/payments_refund.diff")
    path = tmp_path / "tight.json"
    path.write_text(json.dumps(task))
    proc = polyroute("run", str(path), "--time-scale", "0.001", "--json")
    assert proc.returncode == 3, proc.stderr
    result = json.loads(proc.stdout)
    assert result["stopReason"] == "budget"
    assert result["budgets"]["costUsedUsd"] <= 0.0005


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "invalid JSON at line 1"),
        ('{"description": "x", "colour": "red"}', "colour: Extra inputs are not permitted"),
        ('{"description": ""}', "description"),
        (
            '{"description": "x", "attachments": [{"kind": "image", "path": "nope.png"}]}',
            "attachments.0.path: no such file nope.png",
        ),
        ('{"description": "x", "constraints": {"maxSteps": 0}}', "constraints.maxSteps"),
        (
            '{"description": "x", "constraints": {"deadline": "2030-01-01T09:00:00"}}',
            "constraints.deadline: deadline 2030-01-01T09:00:00 has no timezone",
        ),
    ],
)
def test_bad_task_files_exit_2_with_one_line(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "task.json"
    path.write_text(content)
    proc = polyroute("run", str(path))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "task.json" in lines[0] and fragment in lines[0]
    assert "Traceback" not in proc.stderr


def test_cycle_is_named_and_exits_2() -> None:
    proc = polyroute("plan", "examples/cyclic_plan.json")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "polyroute: error: examples/cyclic_plan.json: plan.steps: cycle: a -> b -> c -> a"
    )
    proc = polyroute("run", "examples/cyclic_plan.json")
    assert proc.returncode == 2 and "cycle: a -> b -> c -> a" in proc.stderr


def test_missing_file_and_bad_flags_are_one_line() -> None:
    proc = polyroute("run", "examples/nope.json")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "no such task file" in proc.stderr
    proc = polyroute("run", "examples/question.json", "--concurrency", "zero")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    proc = polyroute("cost", "--mix", "planning=lots")
    assert proc.returncode == 2 and "not a number" in proc.stderr


def test_plan_shows_waves_and_critical_path() -> None:
    proc = polyroute("plan", "examples/code_review.json", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["waves"] == [["summarize"], ["security", "performance", "tests"], ["verdict"]]
    assert report["criticalPath"][0] == "summarize" and report["criticalPath"][-1] == "verdict"


def test_route_explains_its_decision() -> None:
    proc = polyroute("route", "--task", "examples/vision.json", "--json", "--on", "2026-11-27")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["model"] == "gpt-4o-mini" and d["rule"] == "vision"
    for key in ("model", "rule", "reason", "classification", "estimatedCostUsd", "candidates"):
        assert key in d
    assert all({"model", "eligible", "whyNot"} <= set(c) for c in d["candidates"])
    proc = polyroute(
        "route", "Plan a two-quarter migration to event-driven services", "--on", "2026-11-27"
    )
    assert proc.returncode == 0 and "claude-opus-4-5" in proc.stdout


def test_cost_projection_as_json() -> None:
    proc = polyroute("cost", "--json", "--on", "2026-11-27", "--classifier", "model")
    assert proc.returncode == 0, proc.stderr
    p = json.loads(proc.stdout)
    assert p["baseline"]["costUsd"] == 22_500.0
    assert p["classifier"]["costUsd"] == 2_500.0
    assert p["routedUsd"] == 13_300.0
    proc = polyroute("cost", "--mix", "gpt-4o-mini=1", "--json", "--baseline", "gpt-4o")
    p = json.loads(proc.stdout)
    assert p["rows"][0]["model"] == "gpt-4o-mini" and p["baseline"]["model"] == "gpt-4o"


def test_cost_with_a_prices_file(tmp_path: Path) -> None:
    prices = tmp_path / "prices.yaml"
    prices.write_text("claude-opus-4-5: {input: 15, output: 75}\n")
    proc = polyroute("cost", "--json", "--prices", str(prices), "--on", "2026-11-27")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["baseline"]["costUsd"] == 67_500.0  # the seed's old figure
    prices.write_text("claude-opus-4-5: {input: -1}\n")
    proc = polyroute("cost", "--prices", str(prices))
    assert proc.returncode == 2 and "input" in proc.stderr


def test_schema_prints_the_json_schemas() -> None:
    proc = polyroute("schema")
    assert proc.returncode == 0
    schemas = json.loads(proc.stdout)
    assert {"Task", "AgentHandoff", "RunResult"} <= set(schemas)
    proc = polyroute("schema", "Nope")
    assert proc.returncode == 2


def test_injected_failures_fall_back(tmp_path: Path) -> None:
    proc = polyroute(
        "run",
        "examples/code_review.json",
        "--time-scale",
        "0.001",
        "--json",
        "--fail",
        "claude-sonnet-4-5=529x3",
        "--on",
        "2026-11-27",
    )
    assert proc.returncode == 0, proc.stderr
    steps = {s["stepId"]: s for s in json.loads(proc.stdout)["steps"]}
    assert steps["tests"]["fallbackFrom"] == "claude-sonnet-4-5"
    assert steps["tests"]["attempts"] == 4


@pytest.mark.parametrize(("failure", "code"), [("refusal", 1), ("truncatedx2", 1)])
def test_a_failed_planning_call_still_prints_the_result_with_its_spend(
    failure: str, code: int
) -> None:
    proc = polyroute(
        "run",
        "examples/planning.json",
        "--time-scale",
        "0",
        "--json",
        "--on",
        "2026-11-27",
        "--fail",
        f"claude-opus-4-5={failure}",
    )
    assert proc.returncode == code, proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == "failed"
    assert result["totals"]["costUsd"] > 0
    assert result["budgets"]["costUsedUsd"] == pytest.approx(result["totals"]["costUsd"])
    assert result["steps"][0]["stepId"] == "planning" and result["steps"][0]["error"]


def test_planning_stopped_by_the_budget_exits_3_with_the_partial_result(tmp_path: Path) -> None:
    task = json.loads((EXAMPLES / "planning.json").read_text())
    task.setdefault("constraints", {})["maxCostUsd"] = 0.06
    path = tmp_path / "task.json"
    path.write_text(json.dumps(task))
    proc = polyroute(
        "run",
        str(path),
        "--time-scale",
        "0",
        "--json",
        "--on",
        "2026-11-27",
        "--fail",
        "claude-opus-4-5=truncated",
    )
    assert proc.returncode == 3, proc.stderr
    result = json.loads(proc.stdout)
    assert result["stopReason"] == "budget"
    assert 0 < result["totals"]["costUsd"] <= 0.06


@pytest.mark.parametrize("command", ["plan", "run"])
def test_a_step_no_model_can_take_is_refused_before_anything_runs(
    command: str, tmp_path: Path
) -> None:
    task = {
        "description": "t",
        "plan": {
            "steps": [
                {"id": "first", "description": "paid for first"},
                {
                    "id": "a",
                    "description": "x",
                    "maxOutputTokens": 99999999999,
                    "dependsOn": ["first"],
                },
            ]
        },
    }
    path = tmp_path / "task.json"
    path.write_text(json.dumps(task))
    extra = ["--time-scale", "0"] if command == "run" else []
    proc = polyroute(command, str(path), *extra, "--on", "2026-11-27")
    assert proc.returncode == 2, proc.stdout
    assert proc.stdout == ""
    [line] = proc.stderr.strip().splitlines()
    assert "plan.steps.1: no model can take step a (" in line


def test_cost_bills_the_token_factor_and_notes_retired_models() -> None:
    proc = polyroute("cost", "--on", "2027-02-01")
    assert proc.returncode == 0, proc.stderr
    assert "$23,400.00" in proc.stdout and "$5,850.00" in proc.stdout
    assert (
        "note: claude-sonnet-4-5 retired on 2026-11-30: implementation runs on its successor"
        " claude-sonnet-5-5" in proc.stdout
    )
    assert "note: claude-opus-4-5 retired on 2027-01-22" in proc.stdout
    assert proc.stderr == ""
    proc = polyroute(
        "cost", "--mix", "claude-haiku-5-5=100%", "--input-tokens", "150000",
        "--output-tokens", "1000", "--tasks", "1000", "--json",
    )  # fmt: skip
    assert json.loads(proc.stdout)["routedUsd"] == 100.75


def test_cost_warns_of_a_retired_baseline_or_mix_model() -> None:
    proc = polyroute(
        "cost", "--on", "2027-02-01", "--baseline", "claude-opus-4-5", "--mix",
        "claude-sonnet-4-5=1", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines == [
        "polyroute: warning: --mix claude-sonnet-4-5: claude-sonnet-4-5 retired on 2026-11-30;"
        " its successor is claude-sonnet-5-5; priced as given",
        "polyroute: warning: --baseline claude-opus-4-5: claude-opus-4-5 retired on 2027-01-22;"
        " its successor is claude-opus-5-5; priced as given",
    ]
    assert json.loads(proc.stdout)["baseline"]["model"] == "claude-opus-4-5"


def test_models_names_the_successor_of_a_retired_model() -> None:
    proc = polyroute("models", "--on", "2027-02-01")
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines()[2:]}
    assert rows["claude-sonnet-4-5"].endswith("retired 2026-11-30, successor claude-sonnet-5-5")
    assert rows["claude-opus-4-5"].endswith("retired 2027-01-22, successor claude-opus-5-5")
    assert rows["claude-sonnet-5-5"].endswith("active")
    proc = polyroute("models", "--on", "2026-11-27")
    rows = {line.split()[0]: line for line in proc.stdout.splitlines()[2:]}
    assert rows["claude-opus-4-5"].endswith("retires 2027-01-22, successor claude-opus-5-5")
