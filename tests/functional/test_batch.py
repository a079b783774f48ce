"""The batch runner in-process: parsing lines, results file recovery, resume, progress,
summary and exit codes."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest

from polyroute.batch import (
    BatchRecord,
    Progress,
    ResultWriter,
    backup_path,
    line_sha256,
    read_results,
    read_task_lines,
    render_summary,
    run_batch,
    summarize,
)
from polyroute.cli import _make_engine, build_parser, main
from polyroute.errors import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK, EXIT_STOPPED, InputError
from polyroute.render import usd

from ..conftest import EXAMPLES

QUESTION = {"description": "What is the capital of Australia?"}


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def engine() -> Any:
    args = build_parser().parse_args(["batch", "x.jsonl", "--out", "y", "--time-scale", "0.001"])
    return _make_engine(args)


class CountingEngine:
    """The real engine, counting the runs per task id."""

    def __init__(self) -> None:
        self.inner = engine()
        self.runs: list[str] = []

    async def run(self, task: Any, task_id: str | None = None) -> Any:
        self.runs.append(task_id or "")
        return await self.inner.run(task, task_id=task_id)


def test_lines_parse_with_numbers_comments_and_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "doc.txt").write_text("hello", encoding="utf-8")
    path = write_jsonl(
        tmp_path / "t.jsonl",
        [
            QUESTION,
            "",
            "# a comment",
            '{"description": "broken"',
            {"description": "x", "colour": 1},
            {"description": "x", "attachments": [{"kind": "document", "path": "doc.txt"}]},
            {"description": "x", "attachments": [{"kind": "document", "path": "nope.txt"}]},
        ],
    )
    items = read_task_lines(path)
    assert [i.line for i in items] == [1, 4, 5, 6, 7]
    assert items[0].task is not None and items[0].error is None
    assert items[1].task is None and "invalid JSON" in (items[1].error or "")
    assert items[2].error is not None and items[2].error.startswith("colour:")
    att = items[3].task.attachments[0] if items[3].task else None
    assert att is not None and Path(att.path or "") == (tmp_path / "doc.txt").resolve()
    assert items[4].error == f"attachments.0.path: no such file {(tmp_path / 'nope.txt')}"


def test_unreadable_tasks_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such tasks file"):
        read_task_lines(tmp_path / "missing.jsonl")


def test_a_truncated_last_line_is_dropped_from_the_results_file(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    writer = ResultWriter(out)
    writer.write(BatchRecord(line=1, task_id="a", status="succeeded", cost_usd=0.5))
    writer.write(BatchRecord(line=2, task_id="b", status="invalid", error="bad"))
    writer.close()
    whole = out.read_bytes()
    with out.open("ab") as fh:
        fh.write(b'{"line": 3, "taskId": "c", "sta')  # killed mid-write
    warn = io.StringIO()
    records = read_results(out, warn)
    assert [r.line for r in records] == [1, 2]
    assert out.read_bytes() == whole, "the partial line must be cut off the file"
    assert "incomplete last line" in warn.getvalue()


def test_a_garbled_middle_line_is_ignored_not_fatal(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    rec = BatchRecord(line=2, status="invalid", error="x").to_wire()
    out.write_text('{"line": 1, "oops": true}\n' + json.dumps(rec) + "\n", encoding="utf-8")
    warn = io.StringIO()
    assert [r.line for r in read_results(out, warn)] == [2]
    assert f"{out}:1: unreadable" in warn.getvalue()


def test_batch_runs_every_line_and_reports_invalid_ones(tmp_path: Path) -> None:
    tasks = write_jsonl(
        tmp_path / "t.jsonl",
        [QUESTION, "not json", {**QUESTION, "taskId": "named"}, {"description": ""}],
    )
    out = tmp_path / "out" / "r.jsonl"
    summary = asyncio.run(run_batch(engine(), tasks, out, concurrency=2))
    records = {r.line: r for r in read_results(out)}
    assert sorted(records) == [1, 2, 3, 4]
    assert records[1].status == "succeeded" and records[1].task_id == "t-1"
    assert records[1].result is not None and records[1].result.task_id == "t-1"
    assert records[3].task_id == "named"
    assert records[2].status == "invalid" and "invalid JSON" in (records[2].error or "")
    assert records[4].status == "invalid" and (records[4].error or "").startswith("description")
    assert summary.by_status == {"invalid": 2, "succeeded": 2}
    assert summary.invalid_lines == [2, 4]
    assert summary.exit_code == EXIT_FAILURE
    assert summary.cost_usd == pytest.approx(records[1].cost_usd + records[3].cost_usd)
    assert sum(m.steps for m in summary.by_model.values()) == 2


def test_resume_skips_the_lines_already_in_the_results_file(tmp_path: Path) -> None:
    tasks = write_jsonl(tmp_path / "t.jsonl", [QUESTION] * 5)
    out = tmp_path / "r.jsonl"
    first = CountingEngine()
    asyncio.run(run_batch(first, tasks, out, concurrency=1))
    assert sorted(first.runs) == [f"t-{n}" for n in range(1, 6)]
    # Keep lines 1, 2 and 4 as if the batch had been killed, plus half of line 5.
    kept = [ln for ln in out.read_text().splitlines() if json.loads(ln)["line"] in (1, 2, 4)]
    out.write_text("\n".join(kept) + '\n{"line": 5, "ta', encoding="utf-8")
    second = CountingEngine()
    summary = asyncio.run(run_batch(second, tasks, out, concurrency=2))
    assert sorted(second.runs) == ["t-3", "t-5"]
    assert summary.tasks == 5 and summary.skipped_already_done == 3
    lines = [json.loads(ln)["line"] for ln in out.read_text().splitlines()]
    assert sorted(lines) == [1, 2, 3, 4, 5]
    third = CountingEngine()
    again = asyncio.run(run_batch(third, tasks, out))
    assert third.runs == [] and again.by_status == {"succeeded": 5}
    assert again.exit_code == EXIT_OK


def test_a_task_stopped_by_its_budget_exits_3(tmp_path: Path) -> None:
    tasks = write_jsonl(
        tmp_path / "t.jsonl",
        [QUESTION, {**QUESTION, "constraints": {"maxCostUsd": 0.000001}}],
    )
    summary = asyncio.run(run_batch(engine(), tasks, tmp_path / "r.jsonl"))
    assert summary.stopped == 1 and summary.exit_code == EXIT_STOPPED
    rec = {r.line: r for r in read_results(tmp_path / "r.jsonl")}[2]
    assert rec.stop_reason == "budget" and rec.error


def test_summary_exit_code_prefers_failure_over_stopped() -> None:
    recs = [
        BatchRecord(line=1, status="succeeded"),
        BatchRecord(line=2, status="failed", stop_reason="budget"),
        BatchRecord(line=3, status="failed", error="provider down"),
    ]
    s = summarize(recs)
    assert (s.exit_code, s.stopped, s.failed_lines) == (EXIT_FAILURE, 1, [3])
    assert summarize(recs[:2]).exit_code == EXIT_STOPPED
    assert summarize(recs[:1]).exit_code == EXIT_OK
    text = render_summary(s, "t.jsonl", "r.jsonl")
    assert "failed lines: 3" in text and "stopped by budget/deadline" in text


def test_progress_on_a_terminal_redraws_one_line() -> None:
    stream = io.StringIO()
    prog = Progress(total=4, stream=stream, tty=True)
    prog.started_task()
    prog.finished(BatchRecord(line=1, status="succeeded", cost_usd=0.02), runnable_left=3)
    prog.note("batch: t.jsonl:2: invalid: bad")
    prog.close()
    out = stream.getvalue()
    assert out.count("\n") == 2, "only the note and the final newline end a line"
    bar = prog.bar(runnable_left=3, width=120)
    assert "1/4" in bar and "spent $0.0200" in bar and "est. remaining $0.0600" in bar
    assert "\r\x1b[2K" in out


def test_progress_in_a_log_prints_one_line_per_task() -> None:
    stream = io.StringIO()
    prog = Progress(total=2, stream=stream, tty=False)
    prog.finished(BatchRecord(line=7, task_id="x", status="succeeded", cost_usd=0.01), 1)
    prog.finished(BatchRecord(line=8, status="failed", stop_reason="deadline", cost_usd=0.03), 0)
    lines = stream.getvalue().splitlines()
    assert lines[0] == (
        "batch: 1/2 line 7 (x) succeeded, $0.0100; spent $0.0100, est. remaining $0.0100"
    )
    assert lines[1].startswith("batch: 2/2 line 8 failed by deadline")
    assert "\r" not in stream.getvalue()


def test_cli_batch_writes_results_summary_and_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, summary = tmp_path / "r.jsonl", tmp_path / "s.json"
    code = main(
        [
            "batch",
            str(EXAMPLES / "batch.jsonl"),
            "--out",
            str(out),
            "--summary",
            str(summary),
            "--time-scale",
            "0.001",
        ]
    )
    captured = capsys.readouterr()
    assert code == EXIT_OK, captured.err
    data = json.loads(summary.read_text())
    assert data["tasks"] == 12 and data["byStatus"] == {"succeeded": 12}
    assert data["costUsd"] > 0 and data["baselineCostUsd"] >= data["costUsd"]
    assert set(data["byModel"]) and "saving" in captured.out
    assert captured.err.count("batch: ") >= 12  # one progress line per task (not a TTY)


def test_cli_batch_bad_input_is_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["batch", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "r")]) == (
        EXIT_BAD_INPUT
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such tasks file" in err
    tasks = write_jsonl(tmp_path / "t.jsonl", [QUESTION])
    assert main(["batch", str(tasks), "--out", str(tasks)]) == EXIT_BAD_INPUT


# --- resume matches each line's text, not only its number ----------------------------------------


def records_by_line(out: Path) -> dict[int, dict[str, Any]]:
    """The latest record of each line, as written."""
    return {r["line"]: r for r in map(json.loads, out.read_text().splitlines())}


def test_each_line_and_its_result_carry_the_sha256_of_its_text(tmp_path: Path) -> None:
    text = json.dumps(QUESTION)
    tasks = tmp_path / "t.jsonl"
    tasks.write_text(f"{text}\r\n  {text}  \n", encoding="utf-8")
    items = read_task_lines(tasks)
    digest = hashlib.sha256(text.encode()).hexdigest()
    assert [i.sha256 for i in items] == [digest, digest], "surrounding blanks do not count"
    assert line_sha256(text + " ") == digest != line_sha256(text.replace("Australia", "Peru"))
    out = tmp_path / "r.jsonl"
    asyncio.run(run_batch(engine(), tasks, out))
    assert {r["lineSha256"] for r in records_by_line(out).values()} == {digest}


def test_fixed_bad_lines_run_again_on_resume(tmp_path: Path) -> None:
    tasks = write_jsonl(tmp_path / "t.jsonl", ["not json", {"description": ""}, QUESTION])
    out = tmp_path / "r.jsonl"
    first = asyncio.run(run_batch(CountingEngine(), tasks, out))
    assert first.invalid_lines == [1, 2]
    write_jsonl(
        tasks, [{"description": "What is 2 + 2?"}, {"description": "Name a colour"}, QUESTION]
    )
    stream = io.StringIO()
    again = CountingEngine()
    summary = asyncio.run(
        run_batch(again, tasks, out, progress=Progress(total=0, stream=stream, tty=False))
    )
    assert sorted(again.runs) == ["t-1", "t-2"], "the fixed lines run, the unchanged one not"
    assert summary.by_status == {"succeeded": 3} and summary.exit_code == EXIT_OK
    assert summary.skipped_already_done == 1 and summary.invalid_lines == []
    log = stream.getvalue()
    assert f"resuming: 1 of 3 tasks already in {out}" in log
    assert f"2 of 3 lines changed since their results in {out} were written" in log
    assert "(lines 1, 2)" in log
    assert "1/3" not in log, "the line already done is counted once, not twice"
    latest = records_by_line(out)
    assert [latest[n]["status"] for n in (1, 2, 3)] == ["succeeded"] * 3
    third = CountingEngine()
    assert asyncio.run(run_batch(third, tasks, out)).by_status == {"succeeded": 3}
    assert third.runs == []


def test_an_edited_line_runs_again_and_its_new_result_counts(tmp_path: Path) -> None:
    rows: list[Any] = [{"description": f"Question {n}: what is {n} + {n}?"} for n in range(1, 5)]
    tasks = write_jsonl(tmp_path / "t.jsonl", rows)
    out = tmp_path / "r.jsonl"
    asyncio.run(run_batch(engine(), tasks, out))
    old_cost = records_by_line(out)[3]["costUsd"]
    rows[2] = {**rows[2], "constraints": {"maxCostUsd": 0.000001}}
    write_jsonl(tasks, rows)
    again = CountingEngine()
    summary = asyncio.run(run_batch(again, tasks, out))
    assert again.runs == ["t-3"]
    assert summary.stopped == 1 and summary.exit_code == EXIT_STOPPED, "the new result counts"
    assert summary.tasks == 4 and summary.skipped_already_done == 3
    new = records_by_line(out)[3]
    assert new["stopReason"] == "budget" and new["costUsd"] != old_cost


def test_results_of_another_tasks_file_are_refused_untouched(tmp_path: Path) -> None:
    old_tasks = write_jsonl(tmp_path / "old.jsonl", [QUESTION, {"description": "Name a colour"}])
    out = tmp_path / "r.jsonl"
    asyncio.run(run_batch(engine(), old_tasks, out))
    with out.open("ab") as fh:
        fh.write(b'{"line": 9, "sta')  # even a cut-off last line stays as it was
    before = out.read_bytes()
    new_tasks = write_jsonl(tmp_path / "new.jsonl", [{"description": "What is 2 + 2?"}])
    other = CountingEngine()
    with pytest.raises(InputError) as err:
        asyncio.run(run_batch(other, new_tasks, out))
    message = str(err.value)
    assert "\n" not in message and str(out) in message and "another tasks file" in message
    assert "new --out" in message and "--restart" in message
    assert other.runs == [] and out.read_bytes() == before
    assert not backup_path(out).exists()

    restarted = CountingEngine()
    summary = asyncio.run(run_batch(restarted, new_tasks, out, restart=True))
    assert restarted.runs == ["new-1"] and summary.tasks == 1 and summary.exit_code == EXIT_OK
    assert backup_path(out).read_bytes() == before, "the old results are kept, whole"
    assert list(records_by_line(out)) == [1]


def test_one_shared_line_is_enough_to_resume_not_refuse(tmp_path: Path) -> None:
    tasks = write_jsonl(tmp_path / "t.jsonl", [QUESTION, {"description": "Name a colour"}])
    out = tmp_path / "r.jsonl"
    asyncio.run(run_batch(engine(), tasks, out))
    write_jsonl(tasks, [{"description": "Name a fruit"}, QUESTION])  # reordered and edited
    again = CountingEngine()
    asyncio.run(run_batch(again, tasks, out))
    assert sorted(again.runs) == ["t-1", "t-2"], "matching is by line number and text"


def test_results_without_line_hashes_resume_by_line_number(tmp_path: Path) -> None:
    tasks = write_jsonl(tmp_path / "t.jsonl", [QUESTION] * 3)
    out = tmp_path / "r.jsonl"
    asyncio.run(run_batch(engine(), tasks, out))
    # As an older polyroute wrote them: no lineSha256, and line 3 not done yet.
    legacy = []
    for rec in map(json.loads, out.read_text().splitlines()):
        del rec["lineSha256"]
        if rec["line"] != 3:
            legacy.append(json.dumps(rec))
    out.write_text("\n".join(legacy) + "\n", encoding="utf-8")
    write_jsonl(
        tasks, [{"description": "changed, but there is no hash to tell"}, QUESTION, QUESTION]
    )
    stream = io.StringIO()
    again = CountingEngine()
    summary = asyncio.run(
        run_batch(again, tasks, out, progress=Progress(total=0, stream=stream, tty=False))
    )
    assert again.runs == ["t-3"] and summary.skipped_already_done == 2
    assert "2 result(s)" in stream.getvalue() and "line number only" in stream.getvalue()


def test_restart_refuses_to_move_the_results_onto_the_tasks_file(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    tasks = write_jsonl(tmp_path / "r.jsonl.bak", [QUESTION])
    out.write_text("", encoding="utf-8")
    with pytest.raises(InputError, match="onto the tasks file"):
        asyncio.run(run_batch(engine(), tasks, out, restart=True))
    assert json.loads(tasks.read_text()) == QUESTION


def test_cli_batch_on_another_files_results_is_exit_2_then_restart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.jsonl"
    fast = ["--time-scale", "0.001", "--quiet"]
    a = write_jsonl(tmp_path / "a.jsonl", [QUESTION])
    b = write_jsonl(tmp_path / "b.jsonl", [{"description": "Name a colour"}])
    assert main(["batch", str(a), "--out", str(out), *fast]) == EXIT_OK
    capsys.readouterr()
    assert main(["batch", str(b), "--out", str(out), *fast]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"polyroute: error: batch: {out} holds")
    assert main(["batch", str(b), "--out", str(out), "--restart", *fast]) == EXIT_OK
    assert records_by_line(out)[1]["taskId"] == "b-1"
    assert records_by_line(backup_path(out))[1]["taskId"] == "a-1"


def test_read_results_without_repair_leaves_the_file_alone(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    rec = BatchRecord(line=1, line_sha256="ab", status="invalid", error="x").to_wire()
    out.write_bytes(json.dumps(rec).encode() + b'\n{"line": 2, "st')
    before = out.read_bytes()
    assert [r.line_sha256 for r in read_results(out, repair=False)] == ["ab"]
    assert out.read_bytes() == before


def test_a_line_with_a_huge_or_infinite_number_is_invalid_not_failed(tmp_path: Path) -> None:
    tasks = tmp_path / "t.jsonl"
    tasks.write_text(
        '{"description": "x", "constraints": {"timeoutSeconds": 1e12}}\n'
        '{"description": "x", "constraints": {"maxCostUsd": 1e999}}\n',
        encoding="utf-8",
    )
    out = tmp_path / "r.jsonl"
    asyncio.run(run_batch(engine(), tasks, out, concurrency=1))
    records = {r.line: r for r in read_results(out)}
    assert records[1].status == "invalid"
    assert (records[1].error or "").startswith("constraints.timeoutSeconds: ")
    assert records[2].status == "invalid"
    assert (records[2].error or "").startswith("constraints.maxCostUsd: ")


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n   \n"])
def test_a_tasks_file_without_tasks_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    tasks = tmp_path / "empty.jsonl"
    tasks.write_text(text, encoding="utf-8")
    out = tmp_path / "r.jsonl"
    assert main(["batch", str(tasks), "--out", str(out), "--quiet"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tasks}: no tasks in the file" in err
    assert not out.exists()


def test_the_summary_rows_add_up_to_the_cost_with_a_classifier_planner_row(
    tmp_path: Path,
) -> None:
    planning = json.loads((EXAMPLES / "planning.json").read_text())
    tasks = write_jsonl(tmp_path / "t.jsonl", [QUESTION, planning])
    out = tmp_path / "r.jsonl"
    summary = asyncio.run(run_batch(engine(), tasks, out, concurrency=2))
    assert summary.classifier_cost_usd > 0, "the planning task asks the planning model"
    rows = sum(m.cost_usd for m in summary.by_model.values()) + summary.classifier_cost_usd
    assert rows == pytest.approx(summary.cost_usd, abs=1e-6)
    text = render_summary(summary, "t.jsonl", "r.jsonl")
    row = next(line for line in text.splitlines() if line.startswith("classifier / planner"))
    assert row.split()[-2:] == ["-", usd(summary.classifier_cost_usd)]
    assert summary.to_wire()["classifierCostUsd"] == summary.classifier_cost_usd
