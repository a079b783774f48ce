"""The run report: what the page shows, that it is self-contained and escaped, the PNG, and
the ``report`` / ``run --report`` commands."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from polyroute.cli import _make_engine, build_parser, main
from polyroute.errors import EXIT_BAD_INPUT, EXIT_OK, InputError
from polyroute.report import load_run, render_html, write_report, write_timeline_png
from polyroute.schema import RunResult
from polyroute.taskfile import load_task

from ..conftest import EXAMPLES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_example(name: str, *options: str) -> RunResult:
    args = build_parser().parse_args(
        ["run", str(EXAMPLES / name), "--time-scale", "0.001", *options]
    )
    return asyncio.run(_make_engine(args).run(load_task(EXAMPLES / name)))


@pytest.fixture(scope="module")
def review() -> RunResult:
    return run_example("code_review.json")


def test_page_draws_every_step_in_graph_timeline_and_decisions(review: RunResult) -> None:
    page = render_html(review)
    for step in review.steps:
        sid = re.escape(step.step_id)
        assert len(re.findall(rf'<g class="node[^"]*" data-step="{sid}"', page)) == 1
        assert len(re.findall(rf'<g class="row[^"]*" data-step="{sid}"', page)) == 1
        assert len(re.findall(rf'<article class="card decision" data-step="{sid}"', page)) == 1
        assert step.reason and step.reason in page.replace("&gt;", ">")
    edges = sum(len(s.depends_on) for s in review.steps)
    assert page.count('<path class="edge') == edges
    assert page.count('<path class="edge crit"') == len(review.critical_path) - 1
    assert page.count('class="bar crit"') == len(review.critical_path)
    assert page.count('<text class="wave-label"') == len(review.waves)
    # Each model has one colour, and the node and the bar of a step both use it.
    for step in review.steps:
        sid = re.escape(step.step_id)
        node_re = rf'data-step="{sid}" transform=[^>]*>.*?fill="(#[0-9a-f]{{6}})"'
        bar_re = rf'<g class="row[^"]*" data-step="{sid}">.*?class="bar[^"]*"[^>]*fill="(#\w+)"'
        node, bar = re.search(node_re, page, re.S), re.search(bar_re, page, re.S)
        assert node and bar and node.group(1) == bar.group(1)
    assert len({s.model for s in review.steps}) == page.count('class="legend-item"') - 1
    assert f"baseline: all on {review.baseline.model}" in page
    assert f"{review.savings_pct:.1f}%" in page


def test_page_loads_nothing_from_outside(review: RunResult) -> None:
    page = render_html(review)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<link" not in page and "@import" not in page and "url(http" not in page
    assert "<script src" not in page
    assert page.count("<script>") == 1 and page.count("<style>") == 1


def test_text_from_the_task_is_escaped(review: RunResult) -> None:
    evil = "<script>alert('x')</script>"
    steps = [s.model_copy(update={"description": evil, "error": evil}) for s in review.steps]
    bad = review.model_copy(update={"steps": steps})
    page = render_html(bad)
    assert evil not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page


def test_stopped_run_shows_skipped_steps_and_the_budget(tmp_path: Path) -> None:
    task = json.loads((EXAMPLES / "budget_limited.json").read_text())
    task["constraints"]["maxCostUsd"] = 0.001
    task["attachments"][0]["path"] = str(EXAMPLES / "data" / "payments_refund.diff")
    (tmp_path / "t.json").write_text(json.dumps(task))
    args = build_parser().parse_args(["run", str(tmp_path / "t.json"), "--time-scale", "0.001"])
    result = asyncio.run(_make_engine(args).run(load_task(tmp_path / "t.json")))
    assert result.stop_reason == "budget"
    page = render_html(result)
    assert "stopped by budget" in page
    not_run = [s for s in result.steps if s.attempts == 0]
    assert not_run, "the tight budget must leave a step unstarted"
    assert page.count('class="not-run"') == len(not_run)
    assert re.search(r'<div class="fill (warn|over)" style="width:\d', page), "dollar meter"


def test_a_fallback_is_shown_with_the_failed_model(tmp_path: Path) -> None:
    result = run_example("code_review.json", "--fail", "claude-sonnet-4-5=529x9")
    fell = [s for s in result.steps if s.fallback_from]
    assert fell, "the injected overloads must force a fallback"
    page = render_html(result)
    assert f"Fell back from {fell[0].fallback_from}." in page
    assert '<span class="pill rejected">failed</span>' in page


def test_write_report_writes_json_html_and_png(review: RunResult, tmp_path: Path) -> None:
    written = write_report(review, tmp_path / "out")
    assert [p.name for p in written] == ["run.json", "report.html", "timeline.png"]
    assert RunResult.model_validate_json((tmp_path / "out" / "run.json").read_text()) == review
    png = (tmp_path / "out" / "timeline.png").read_bytes()
    assert png.startswith(PNG_MAGIC)
    from PIL import Image

    with Image.open(tmp_path / "out" / "timeline.png") as img:
        assert img.width >= 1000 and img.height >= 300
        assert len(img.convert("RGB").getcolors(maxcolors=1_000_000) or []) > 20


def test_timeline_png_without_matplotlib_is_a_clear_error(
    review: RunResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import builtins

    real_import = builtins.__import__

    def no_mpl(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    with pytest.raises(InputError, match=r"polyroute\[report\]"):
        write_timeline_png(review, tmp_path / "t.png")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("{not json", "invalid JSON at line 1"),
        ('{"taskId": "x"}', "not a RunResult: status"),
    ],
)
def test_bad_run_files_are_one_line_input_errors(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "run.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match=re.escape(message)) as err:
        load_run(path)
    assert "\n" not in str(err.value)


def test_a_task_status_from_the_api_is_accepted(review: RunResult, tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    status = {"taskId": review.task_id, "status": "succeeded", "result": review.to_wire()}
    path.write_text(json.dumps(status))
    assert load_run(path) == review


def test_cli_report_and_run_report(
    review: RunResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_json = tmp_path / "run.json"
    run_json.write_text(json.dumps(review.to_wire()))
    out = tmp_path / "r" / "page.html"
    code = main(["report", str(run_json), "--out", str(out), "--png", str(tmp_path / "t.png")])
    assert code == EXIT_OK and out.read_text().startswith("<!DOCTYPE html>")
    assert (tmp_path / "t.png").read_bytes().startswith(PNG_MAGIC)
    capsys.readouterr()

    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    assert main(["report", str(bad)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a RunResult" in err

    target = tmp_path / "run-report"
    code = main(
        ["run", str(EXAMPLES / "question.json"), "--time-scale", "0.001", "--report", str(target)]
    )
    assert code == EXIT_OK
    assert sorted(p.name for p in target.iterdir()) == ["report.html", "run.json", "timeline.png"]
    assert load_run(target / "run.json").status == "succeeded"


def test_a_run_with_nothing_billed_names_no_baseline_model() -> None:
    from polyroute.engine import Engine

    engine = _make_engine(
        build_parser().parse_args(["run", "x.json", "--time-scale", "0", "--on", "2026-11-27"])
    )
    assert isinstance(engine, Engine)
    task = load_task(EXAMPLES / "planning.json")
    task.constraints.max_cost_usd = 0.0005  # no planning model fits: nothing is billed
    result = asyncio.run(engine.run(task))
    assert result.baseline.model == ""
    page = render_html(result)
    assert "no baseline: no step was billed" in page
    assert "baseline: all on" not in page and "against every step on" not in page
