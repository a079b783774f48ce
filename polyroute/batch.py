"""``polyroute batch``: many tasks from a JSONL file, the local twin of the EventBridge batch.

One task per line (attachment paths relative to the JSONL file; blank lines and lines
starting with ``#`` are skipped). Each finished task appends one result line to the results
file and flushes it to disk, so an interrupted batch resumes where it stopped: on start the
results file is read, and a line is skipped when the latest result for its line number was
written for the same text (each result carries the sha256 of its line's text). A line whose
text changed since (a bad line fixed, a question edited) runs again; a last result line cut
off mid-write (no newline, or not JSON) is dropped and its task run again.

When no line of the tasks file matches a result and some of those results are of tasks that
ran, the results file belongs to another tasks file: the batch refuses to start (InputError)
rather than mix the two, unless told to ``restart``, which moves the old results aside to
``RESULTS.jsonl.bak``. Results written before line hashes existed are matched by line number
only, with a note.

A line that is not a valid task becomes a result with status ``invalid`` and the error; the
other lines still run. Exit code: 1 if any task failed or was invalid, else 3 if any was
stopped by a budget or its deadline, else 0.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import shutil
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal

from pydantic import Field, ValidationError

from polyroute.cost import savings_pct
from polyroute.errors import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_STOPPED,
    InputError,
    PolyrouteError,
)
from polyroute.render import table, usd
from polyroute.schema import RunResult, Task, WireModel
from polyroute.taskfile import parse_task

if TYPE_CHECKING:
    from polyroute.engine import Engine

RecordStatus = Literal["succeeded", "partial", "failed", "invalid"]
STOP_REASONS = ("budget", "deadline")


class BatchRecord(WireModel):
    """One line of the results file: which input line, and how its task ended."""

    line: int = Field(ge=1)
    line_sha256: str | None = None
    """The sha256 of the input line's text (stripped); None in results written before it."""
    task_id: str | None = None
    status: RecordStatus
    stop_reason: str | None = None
    cost_usd: float = 0.0
    baseline_cost_usd: float = 0.0
    error: str | None = None
    result: RunResult | None = None

    @classmethod
    def of_result(
        cls, line: int, task_id: str | None, result: RunResult, line_sha256: str | None = None
    ) -> BatchRecord:
        """The record of a line whose task ran (locally, or as a batch child on AWS)."""
        return cls(
            line=line,
            line_sha256=line_sha256,
            task_id=task_id,
            status=result.status,
            stop_reason=result.stop_reason,
            cost_usd=result.totals.cost_usd,
            baseline_cost_usd=result.baseline.cost_usd,
            error=next((s.error for s in result.steps if s.error), None),
            result=result,
        )

    @property
    def stopped(self) -> bool:
        """Stopped by a budget or the deadline (and not otherwise failed)."""
        return self.stop_reason in STOP_REASONS and self.status != "succeeded"


CLASSIFIER_ROW = "classifier / planner"
"""The summary table's row for what classifying and planning cost, outside any step."""


class ModelUsage(WireModel):
    """Steps and dollars one model took across the batch."""

    steps: int = 0
    cost_usd: float = 0.0


class BatchSummary(WireModel):
    """What a batch did: tasks by status, cost by model, and the saving against the
    baseline."""

    tasks: int
    by_status: dict[str, int]
    stopped: int
    skipped_already_done: int
    cost_usd: float
    baseline_cost_usd: float
    savings_pct: float
    by_model: dict[str, ModelUsage]
    classifier_cost_usd: float = Field(
        default=0.0,
        description="What classifying and planning the tasks cost, outside any step: with "
        "byModel, it adds up to costUsd.",
    )
    invalid_lines: list[int] = Field(default_factory=list)
    failed_lines: list[int] = Field(default_factory=list)
    exit_code: int


@dataclass
class TaskLine:
    """One input line: its task, or why it is not one."""

    line: int
    task: Task | None = None
    error: str | None = None
    sha256: str = ""
    """The sha256 of the line's text (stripped), which ties a result to this text."""


def line_sha256(text: str) -> str:
    """The hash a result keeps of its input line: the line's text without surrounding
    whitespace (so CRLF or trailing blanks do not count as a change)."""
    return hashlib.sha256(text.strip().encode("utf-8")).hexdigest()


def read_task_lines(path: Path) -> list[TaskLine]:
    """Parse the JSONL file; a bad line becomes a TaskLine with the error, not an exception.
    An unreadable file is an InputError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such tasks file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read: {exc}") from None
    base = path.parent
    lines: list[TaskLine] = []
    for n, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        digest = line_sha256(stripped)
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as exc:
            error = f"invalid JSON at column {exc.colno}: {exc.msg}"
            lines.append(TaskLine(n, error=error, sha256=digest))
            continue
        except RecursionError:
            lines.append(TaskLine(n, error="invalid JSON: nested too deeply", sha256=digest))
            continue
        try:
            task = parse_task(data, f"line {n}", base)
        except InputError as exc:
            error = str(exc).removeprefix(f"line {n}: ")
            lines.append(TaskLine(n, error=error, sha256=digest))
            continue
        missing = next(
            (
                (i, a.path)
                for i, a in enumerate(task.attachments)
                if a.path is not None and not Path(a.path).is_file()
            ),
            None,
        )
        if missing is not None:
            i, p = missing
            error = f"attachments.{i}.path: no such file {p}"
            lines.append(TaskLine(n, error=error, sha256=digest))
            continue
        lines.append(TaskLine(n, task=task, sha256=digest))
    return lines


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc}") from None


def drop_incomplete_tail(path: Path, warn: IO[str] | None = None) -> None:
    """Cut a last line left without its newline (a write cut off by a kill) off the file."""
    data = _read_bytes(path)
    if data is None:
        return
    complete_end = data.rfind(b"\n") + 1
    if complete_end == len(data):
        return
    with path.open("r+b") as fh:
        fh.truncate(complete_end)
        fh.flush()
        os.fsync(fh.fileno())
    if warn is not None:
        warn.write(f"batch: {path}: dropped an incomplete last line (its task runs again)\n")


def read_results(
    path: Path, warn: IO[str] | None = None, *, repair: bool = True
) -> list[BatchRecord]:
    """The records already in the results file. A last line cut off mid-write is ignored, and
    with ``repair`` removed from the file; other unreadable lines are ignored (their tasks run
    again)."""
    data = _read_bytes(path)
    if data is None:
        return []
    records: list[BatchRecord] = []
    complete_end = data.rfind(b"\n") + 1
    if repair and complete_end < len(data):
        drop_incomplete_tail(path, warn)
    for n, raw in enumerate(data[:complete_end].splitlines(), 1):
        if not raw.strip():
            continue
        try:
            records.append(BatchRecord.model_validate_json(raw))
        except ValidationError:
            if warn is not None:
                warn.write(f"batch: {path}:{n}: unreadable result line ignored\n")
    return records


class ResultWriter:
    """Appends one record per line; each line is written whole and synced before the next."""

    def __init__(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise InputError(f"{path}: cannot write: {exc}") from None

    def write(self, record: BatchRecord) -> None:
        """Append the record and flush it to disk."""
        data = (json.dumps(record.to_wire(), separators=(",", ":")) + "\n").encode("utf-8")
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


# --- progress --------------------------------------------------------------------------------


@dataclass
class Progress:
    """Tasks done, spend so far and the estimated remaining cost, on stderr.

    On a terminal: one bar redrawn in place. Otherwise (a log, CI): one line per task."""

    total: int
    done: int = 0
    spent_usd: float = 0.0
    costed: int = 0
    running: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    stream: IO[str] = field(default_factory=lambda: sys.stderr)
    enabled: bool = True
    tty: bool | None = None
    started: float = field(default_factory=time.monotonic)
    _drawn: bool = False
    _last_left: int = 0

    def __post_init__(self) -> None:
        if self.tty is None:
            isatty = getattr(self.stream, "isatty", None)
            self.tty = bool(isatty and isatty()) and os.environ.get("TERM") != "dumb"
        enc = (getattr(self.stream, "encoding", None) or "").lower()
        self._fill, self._empty = ("█", "░") if "utf" in enc else ("#", "-")

    def seed(self, records: list[BatchRecord]) -> None:
        """Count records from an earlier, interrupted run."""
        for rec in records:
            self._count(rec)

    def _count(self, rec: BatchRecord) -> None:
        self.done += 1
        self.counts[rec.status] += 1
        if rec.status != "invalid":
            self.spent_usd += rec.cost_usd
            self.costed += 1

    def remaining_usd(self, runnable_left: int) -> float | None:
        """Average cost per task so far times the tasks left; None before the first."""
        if self.costed == 0:
            return None
        return self.spent_usd / self.costed * runnable_left

    def note(self, message: str) -> None:
        """A message line that stays (above the bar on a terminal)."""
        if not self.enabled:
            return
        self._clear()
        self.stream.write(message + "\n")
        self._redraw()

    def started_task(self) -> None:
        self.running += 1
        self._redraw()

    def finished(self, rec: BatchRecord, runnable_left: int) -> None:
        """Count a finished task and show it."""
        self.running = max(0, self.running - 1)
        self._count(rec)
        if not self.enabled:
            return
        left = self.remaining_usd(runnable_left)
        if self.tty:
            self._redraw(runnable_left)
            return
        who = f" ({rec.task_id})" if rec.task_id else ""
        est = "?" if left is None else usd(left)
        self.stream.write(
            f"batch: {self.done}/{self.total} line {rec.line}{who} {rec.status}"
            f"{' by ' + rec.stop_reason if rec.stopped and rec.stop_reason else ''},"
            f" {usd(rec.cost_usd)}; spent {usd(self.spent_usd)}, est. remaining {est}\n"
        )
        self.stream.flush()

    def bar(self, runnable_left: int | None = None, width: int | None = None) -> str:
        """The one-line bar (without carriage return)."""
        cols = width or shutil.get_terminal_size((100, 20)).columns
        left = self.remaining_usd(runnable_left if runnable_left is not None else 0)
        ok = self.counts["succeeded"]
        bad = self.done - ok
        est = "?" if left is None else usd(left)
        elapsed = int(time.monotonic() - self.started)
        text = (
            f" {self.done}/{self.total}  ok {ok}  not ok {bad}  running {self.running}"
            f"  spent {usd(self.spent_usd)}  est. remaining {est}  {elapsed}s"
        )
        size = max(10, min(30, cols - len(text) - 4))
        filled = round(size * self.done / self.total) if self.total else size
        line = f"[{self._fill * filled}{self._empty * (size - filled)}]{text}"
        return line[: max(20, cols - 1)]

    def _redraw(self, runnable_left: int | None = None) -> None:
        if not (self.enabled and self.tty):
            return
        self._last_left = runnable_left if runnable_left is not None else self._last_left
        self.stream.write("\r\x1b[2K" + self.bar(self._last_left))
        self.stream.flush()
        self._drawn = True

    def _clear(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\r\x1b[2K")
            self._drawn = False

    def close(self) -> None:
        """End the bar's line."""
        if self.enabled and self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


# --- the run ---------------------------------------------------------------------------------


async def _run_one(engine: Engine, item: TaskLine, task_id: str) -> BatchRecord:
    assert item.task is not None
    line, digest = item.line, item.sha256
    try:
        result = await engine.run(item.task, task_id=task_id)
    except InputError as exc:
        return BatchRecord(
            line=line, line_sha256=digest, task_id=task_id, status="invalid", error=str(exc)
        )
    except PolyrouteError as exc:
        return BatchRecord(
            line=line, line_sha256=digest, task_id=task_id, status="failed", error=str(exc)
        )
    except Exception as exc:  # one broken task must not stop the batch
        return BatchRecord(
            line=line,
            line_sha256=digest,
            task_id=task_id,
            status="failed",
            error=f"internal error: {type(exc).__name__}: {exc}",
        )
    return BatchRecord.of_result(item.line, task_id, result, item.sha256)


def task_id_for(item: TaskLine, stem: str) -> str:
    """The task's own id, or one made from the file name and line number."""
    if item.task is not None and item.task.task_id:
        return item.task.task_id
    return f"{stem}-{item.line}"


@dataclass
class ResumePlan:
    """Which lines of the tasks file already have their result, and which run."""

    done: dict[int, BatchRecord]
    """Line number to its standing result: the latest one, written for the same text."""
    todo: list[TaskLine]
    changed: list[int]
    """Lines that have a result, but for a text that has changed since: they run again."""
    by_line_only: int
    """Results without a line hash (an older polyroute wrote them), matched by line number."""
    foreign: bool
    """The results are from another tasks file: no line matches any of them, and some
    of them are of tasks that ran (not only invalid lines, which a user fixes)."""


def plan_resume(items: list[TaskLine], previous: list[BatchRecord]) -> ResumePlan:
    """Match the tasks file against the results already written."""
    latest = {r.line: r for r in previous}  # a line run again appends a newer result
    hashed = [r for r in previous if r.line_sha256 is not None]
    current = {it.sha256 for it in items}
    ran = any(r.status != "invalid" for r in hashed)
    matched = bool(current & {r.line_sha256 for r in hashed})
    plan = ResumePlan(done={}, todo=[], changed=[], by_line_only=0, foreign=ran and not matched)
    for it in items:
        rec = latest.get(it.line)
        if rec is None:
            plan.todo.append(it)
        elif rec.line_sha256 is None:
            plan.done[it.line] = rec
            plan.by_line_only += 1
        elif rec.line_sha256 == it.sha256:
            plan.done[it.line] = rec
        else:
            plan.changed.append(it.line)
            plan.todo.append(it)
    return plan


def backup_path(out_path: Path) -> Path:
    """Where ``restart`` moves the earlier results: ``RESULTS.jsonl.bak``."""
    return out_path.with_name(out_path.name + ".bak")


async def run_batch(
    engine: Engine,
    tasks_path: Path,
    out_path: Path,
    *,
    concurrency: int = 4,
    progress: Progress | None = None,
    restart: bool = False,
) -> BatchSummary:
    """Run every line that has no result in ``out_path`` for its current text; the summary
    covers every line of the tasks file.

    Results of another tasks file are refused (InputError) before anything is written;
    ``restart`` moves an existing results file aside to :func:`backup_path` and runs every
    line. A file with no task lines (empty, or only blank and comment lines) is an
    InputError: there is nothing to run."""
    items = read_task_lines(tasks_path)
    if not items:
        raise InputError(
            f"{tasks_path}: no tasks in the file (it is empty, or holds only blank and comment"
            " lines); put one task per line as JSON"
        )
    prog = progress or Progress(total=len(items), enabled=False)
    prog.total = len(items)
    warn = progress.stream if progress is not None and progress.enabled else None
    if restart and out_path.exists():
        backup = backup_path(out_path)
        if backup.resolve() == tasks_path.resolve():
            raise InputError(f"batch: --restart would move {out_path} onto the tasks file")
        try:
            out_path.replace(backup)
        except OSError as exc:
            raise InputError(f"{out_path}: cannot move it aside to {backup}: {exc}") from None
        prog.note(f"batch: restarting: the earlier results in {out_path} are now in {backup}")
    # Warnings about the results file wait until it is known to be ours: a refusal is one line.
    held = io.StringIO()
    previous = read_results(out_path, held, repair=False)
    plan = plan_resume(items, previous)
    if plan.foreign:
        raise InputError(
            f"batch: {out_path} holds the results of another tasks file (none of them matches"
            f" a line of {tasks_path.name}); give a new --out, or --restart to start over"
            f" (the old results are moved to {backup_path(out_path).name})"
        )
    for message in held.getvalue().splitlines():
        prog.note(message)
    drop_incomplete_tail(out_path, warn)
    todo = plan.todo
    prog.seed(list(plan.done.values()))
    skipped = len(plan.done)
    if skipped:
        prog.note(f"batch: resuming: {skipped} of {len(items)} tasks already in {out_path}")
    if plan.changed:
        prog.note(
            f"batch: {len(plan.changed)} of {len(items)} lines changed since their results in"
            f" {out_path} were written; running them again (lines {_line_list(plan.changed)})"
        )
    if plan.by_line_only:
        prog.note(
            f"batch: {plan.by_line_only} result(s) in {out_path} were written without a line"
            " hash (an older polyroute) and are matched by line number only; use --restart if"
            " those lines changed"
        )
    writer = ResultWriter(out_path)
    runnable_left = sum(1 for it in todo if it.task is not None)
    stem = tasks_path.stem
    queue: asyncio.Queue[TaskLine] = asyncio.Queue()
    records: list[BatchRecord] = []

    def record(rec: BatchRecord) -> None:
        writer.write(rec)
        records.append(rec)

    try:
        for it in todo:
            if it.task is None:
                rec = BatchRecord(
                    line=it.line, line_sha256=it.sha256, status="invalid", error=it.error
                )
                record(rec)
                prog.note(f"batch: {tasks_path.name}:{it.line}: invalid: {it.error}")
                prog.finished(rec, runnable_left)
            else:
                queue.put_nowait(it)

        async def worker() -> None:
            nonlocal runnable_left
            while True:
                try:
                    it = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                prog.started_task()
                rec = await _run_one(engine, it, task_id_for(it, stem))
                runnable_left -= 1
                record(rec)
                if rec.status == "invalid":
                    prog.note(f"batch: {tasks_path.name}:{it.line}: invalid: {rec.error}")
                prog.finished(rec, runnable_left)

        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    finally:
        writer.close()
        prog.close()
    final = dict(plan.done)
    final.update({r.line: r for r in records})
    return summarize(list(final.values()), skipped_already_done=skipped)


def _line_list(lines: list[int], limit: int = 10) -> str:
    shown = ", ".join(map(str, lines[:limit]))
    return shown + (f" and {len(lines) - limit} more" if len(lines) > limit else "")


def summarize(records: list[BatchRecord], skipped_already_done: int = 0) -> BatchSummary:
    """Tasks by status, cost and steps by model, the saving, and the batch's exit code."""
    by_status: Counter[str] = Counter(r.status for r in records)
    by_model: dict[str, ModelUsage] = defaultdict(ModelUsage)
    for r in records:
        if r.result is None:
            continue
        for s in r.result.steps:
            if s.model is None or (s.attempts == 0 and s.cost_usd == 0):
                continue
            mu = by_model[s.model]
            mu.steps += 1
            mu.cost_usd = round(mu.cost_usd + s.cost_usd, 8)
    classifier = round(
        sum(r.result.totals.classifier_cost_usd for r in records if r.result is not None), 8
    )
    cost = round(sum(r.cost_usd for r in records), 8)
    baseline = round(sum(r.baseline_cost_usd for r in records), 8)
    stopped = sum(r.stopped for r in records)
    failed = sorted(r.line for r in records if r.status != "succeeded" and not r.stopped)
    invalid = sorted(r.line for r in records if r.status == "invalid")
    if failed:
        code = EXIT_FAILURE
    elif stopped:
        code = EXIT_STOPPED
    else:
        code = EXIT_OK
    return BatchSummary(
        tasks=len(records),
        by_status=dict(sorted(by_status.items())),
        stopped=stopped,
        skipped_already_done=skipped_already_done,
        cost_usd=cost,
        baseline_cost_usd=baseline,
        savings_pct=savings_pct(cost, baseline),
        by_model=dict(sorted(by_model.items())),
        classifier_cost_usd=classifier,
        invalid_lines=invalid,
        failed_lines=[n for n in failed if n not in invalid],
        exit_code=code,
    )


def render_summary(summary: BatchSummary, source: str, out: str) -> str:
    """The summary as a person reads it at the end of a batch."""
    lines = [f"batch {source} -> {out}: {summary.tasks} task(s)"]
    if summary.skipped_already_done:
        lines[0] += f" ({summary.skipped_already_done} done in an earlier run)"
    lines.append("")
    status_rows = [[k, str(v)] for k, v in summary.by_status.items()]
    if summary.stopped:
        status_rows.append(["(stopped by budget/deadline)", str(summary.stopped)])
    lines.append(table(["status", "tasks"], status_rows, right={1}))
    lines.append("")
    model_rows = [[m, str(u.steps), usd(u.cost_usd)] for m, u in summary.by_model.items()]
    if summary.classifier_cost_usd:
        # Spend outside any step, so that the rows add up to the cost below.
        model_rows.append([CLASSIFIER_ROW, "-", usd(summary.classifier_cost_usd)])
    if model_rows:
        lines.append(table(["model", "steps", "cost"], model_rows, right={1, 2}))
        lines.append("")
    lines.append(
        f"cost {usd(summary.cost_usd)}; baseline {usd(summary.baseline_cost_usd)} "
        f"(each task's steps on its most expensive model); saving {summary.savings_pct:.1f}%"
    )
    if summary.invalid_lines:
        lines.append("invalid lines: " + ", ".join(map(str, summary.invalid_lines)))
    if summary.failed_lines:
        lines.append("failed lines: " + ", ".join(map(str, summary.failed_lines)))
    return "\n".join(lines)


def write_summary(summary: BatchSummary, path: Path) -> None:
    """The summary as JSON (written to a temporary file, then renamed)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(summary.to_wire(), indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot write the summary: {exc}") from None
