"""``polyroute run examples/code_review.json --provider auto`` against loopback servers that
speak Anthropic's, OpenAI's and Bedrock's wire formats, through the real SDKs, in a fresh
process: steps on all three providers, costs that match a hand computation from the
registry, and a forced 529 that ends in a recorded fallback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..conftest import EXAMPLES
from ..provider_fakes import FakeProviders, anthropic_error

# Each step is pinned to a model, so that the example's five steps reach all three providers.
PINS = {
    "summarize": "claude-sonnet-4-5",  # Anthropic
    "security": "gpt-4o",  # OpenAI
    "performance": "claude-haiku-4-5",  # Bedrock, by POLYROUTE_ANTHROPIC_VIA
    "tests": "claude-opus-4-5",  # Anthropic: 529 three times, then falls back
    "verdict": "gpt-4o-mini",  # OpenAI, JSON mode
}
# What each model reports, in each API's terms, and the cost by hand from the registry's
# USD per million tokens (input, output, cache read, cache write).
USAGE = {
    # 2,000 x $3 + 400 x $15 + 1,500 cache writes x $3.75
    "claude-sonnet-4-5-20250929": ({"input": 2000, "output": 400, "cache_write": 1500}, 0.017625),
    # 1,976 x $2.50 + 1,024 cached x $1.25 + 500 x $10
    "gpt-4o": ({"input": 1976, "cache_read": 1024, "output": 500}, 0.01122),
    # 1,800 x $1 + 300 x $5 + 4,100 cache reads x $0.10
    "us.anthropic.claude-haiku-4-5-20251001-v1:0": (
        {"input": 1800, "output": 300, "cache_read": 4100},
        0.00371,
    ),
    # the fallback of claude-opus-4-5: 2,500 x $4 + 600 x $20
    "claude-opus-5-5": ({"input": 2500, "output": 600}, 0.022),
    # 900 x $0.15 + 80 x $0.60
    "gpt-4o-mini": ({"input": 900, "output": 80}, 0.000183),
}
STEP_COST = {
    "summarize": 0.017625,
    "security": 0.01122,
    "performance": 0.00371,
    "tests": 0.022,
    "verdict": 0.000183,
}
ANTHROPIC_KEY = "sk-ant-api03-e2e-0123456789abcdef"
OPENAI_KEY = "sk-proj-e2e-0123456789abcdef"


@pytest.fixture
def fake() -> Iterator[FakeProviders]:
    server = FakeProviders().start()
    yield server
    server.stop()


def task_file(tmp_path: Path) -> Path:
    """The code-review example with every step pinned (the diff attached by absolute path)."""
    task = json.loads((EXAMPLES / "code_review.json").read_text())
    for step in task["plan"]["steps"]:
        step["model"] = PINS[step["id"]]
    for att in task["attachments"]:
        att["path"] = str((EXAMPLES / att["path"]).resolve())
    path = tmp_path / "code_review_live.json"
    path.write_text(json.dumps(task))
    return path


def live_env(fake: FakeProviders, tmp_path: Path) -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "SYSTEMROOT", "TMPDIR", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(
        ANTHROPIC_API_KEY=ANTHROPIC_KEY,
        ANTHROPIC_BASE_URL=fake.url,
        OPENAI_API_KEY=OPENAI_KEY,
        OPENAI_BASE_URL=f"{fake.url}/v1",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_REGION="us-east-1",
        AWS_ENDPOINT_URL_BEDROCK_RUNTIME=fake.url,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-aws-credentials"),
        POLYROUTE_ANTHROPIC_VIA="bedrock:claude-haiku-4-5",
        NO_PROXY="127.0.0.1,localhost",
        PYTHONWARNINGS="ignore::DeprecationWarning",
    )
    return env


def run_cli(fake: FakeProviders, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "polyroute",
            "run",
            str(task_file(tmp_path)),
            "--provider",
            "auto",
            "--on",
            "2026-11-27",
            "--time-scale",
            "0.01",
            *args,
        ],
        capture_output=True,
        text=True,
        env=live_env(fake, tmp_path),
        timeout=120,
        check=False,
    )


def test_code_review_runs_on_anthropic_openai_and_bedrock_with_exact_costs(
    fake: FakeProviders, tmp_path: Path
) -> None:
    for model, (usage, _cost) in USAGE.items():
        fake.set_usage(model, **usage)
    fake.queue(
        "claude-opus-4-5-20251101", *[anthropic_error(529, "overloaded_error", "Overloaded")] * 3
    )

    proc = run_cli(fake, tmp_path, "--json")
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    steps = {s["stepId"]: s for s in result["steps"]}

    assert result["status"] == "succeeded" and result["simulated"] is False
    assert {s["provider"] for s in steps.values()} == {"anthropic", "openai", "bedrock"}
    assert steps["summarize"]["provider"] == "anthropic"
    assert steps["security"]["provider"] == "openai"
    assert (steps["performance"]["model"], steps["performance"]["provider"]) == (
        "claude-haiku-4-5",
        "bedrock",
    )
    assert steps["verdict"]["provider"] == "openai"
    assert json.loads(result["handoff"]["completedSteps"][-1]["result"])["verdict"]

    # the forced 529s: three attempts on opus 4.5, then the nearest-priced eligible model
    tests = steps["tests"]
    assert tests["fallbackFrom"] == "claude-opus-4-5"
    assert (tests["model"], tests["provider"], tests["attempts"]) == (
        "claude-opus-5-5",
        "anthropic",
        4,
    )
    assert len(fake.calls("claude-opus-4-5-20251101")) == 3

    # the header's record of which provider served every model
    assert result["providers"] == {
        "claude-sonnet-4-5": "anthropic",
        "gpt-4o": "openai",
        "claude-haiku-4-5": "bedrock",
        "claude-opus-4-5": "anthropic",
        "claude-opus-5-5": "anthropic",
        "gpt-4o-mini": "openai",
    }

    # costs to the cent and below, by hand from the registry
    for step_id, cost in STEP_COST.items():
        assert steps[step_id]["costUsd"] == pytest.approx(cost, abs=1e-9), step_id
    assert result["totals"]["costUsd"] == pytest.approx(sum(STEP_COST.values()), abs=1e-9)
    assert round(result["totals"]["costUsd"], 2) == 0.05
    assert result["totals"]["cacheReadTokens"] == 1024 + 4100
    assert result["totals"]["cacheWriteTokens"] == 1500

    # every request went to the loopback server, none was simulated, no key leaked
    apis = {r.api for r in fake.calls()}
    assert apis == {"anthropic", "openai", "bedrock"}
    assert ANTHROPIC_KEY not in proc.stdout + proc.stderr
    assert OPENAI_KEY not in proc.stdout + proc.stderr


def test_the_run_header_names_each_models_provider(fake: FakeProviders, tmp_path: Path) -> None:
    proc = run_cli(fake, tmp_path)
    assert proc.returncode == 0, proc.stderr
    header = next(line for line in proc.stdout.splitlines() if line.startswith("providers:"))
    assert "claude-haiku-4-5=bedrock" in header
    assert "claude-sonnet-4-5=anthropic" in header
    assert "gpt-4o=openai" in header
    assert "SIMULATED" not in proc.stdout
