"""``polyroute batch``: many tasks from a JSONL file, the local twin of the EventBridge batch.

One task per line (attachment paths relative to the JSONL file; blank lines and lines
starting with ``#`` are skipped). Each finished task appends one result line to the results
file and flushes it to disk, so an interrupted batch resumes where it stopped: on start the
results file is read, the line numbers already there are skipped, and a last line cut off
mid-write (no newline, or not JSON) is dropped and its task run again.

A line that is not a valid task becomes a result with status ``invalid`` and the error; the
other lines still run. Exit code: 1 if any task failed or was invalid, else 3 if any was
stopped by a budget or its deadline, else 0.
"""

from __future__ import annotations

import asyncio
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
    task_id: str | None = None
    status: RecordStatus
    stop_reason: str | None = None
    cost_usd: float = 0.0
    baseline_cost_usd: float = 0.0
    error: str | None = None
    result: RunResult | None = None

    @property
    def stopped(self) -> bool:
        """Stopped by a budget or the deadline (and not otherwise failed)."""
        return self.stop_reason in STOP_REASONS and self.status != "succeeded"


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
    invalid_lines: list[int] = Field(default_factory=list)
    failed_lines: list[int] = Field(default_factory=list)
    exit_code: int


@dataclass
class TaskLine:
    """One input line: its task, or why it is not one."""

    line: int
    task: Task | None = None
    error: str | None = None


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
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as exc:
            lines.append(TaskLine(n, error=f"invalid JSON at column {exc.colno}: {exc.msg}"))
            continue
        except RecursionError:
            lines.append(TaskLine(n, error="invalid JSON: nested too deeply"))
            continue
        try:
            task = parse_task(data, f"line {n}", base)
        except InputError as exc:
            lines.append(TaskLine(n, error=str(exc).removeprefix(f"line {n}: ")))
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
            lines.append(TaskLine(n, error=f"attachments.{i}.path: no such file {p}"))
            continue
        lines.append(TaskLine(n, task=task))
    return lines


def read_results(path: Path, warn: IO[str] | None = None) -> list[BatchRecord]:
    """The records already in the results file. A last line cut off mid-write is removed from
    the file; other unreadable lines are ignored (their tasks run again)."""
    if not path.exists():
        return []
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc}") from None
    records: list[BatchRecord] = []
    complete_end = data.rfind(b"\n") + 1
    if complete_end < len(data):
        with path.open("r+b") as fh:
            fh.truncate(complete_end)
            fh.flush()
            os.fsync(fh.fileno())
        if warn is not None:
            warn.write(f"batch: {path}: dropped an incomplete last line (its task runs again)\n")
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


def _record_for(line: int, task_id: str, result: RunResult) -> BatchRecord:
    return BatchRecord(
        line=line,
        task_id=task_id,
        status=result.status,
        stop_reason=result.stop_reason,
        cost_usd=result.totals.cost_usd,
        baseline_cost_usd=result.baseline.cost_usd,
        error=next((s.error for s in result.steps if s.error), None),
        result=result,
    )


async def _run_one(engine: Engine, item: TaskLine, task_id: str) -> BatchRecord:
    assert item.task is not None
    try:
        result = await engine.run(item.task, task_id=task_id)
    except InputError as exc:
        return BatchRecord(line=item.line, task_id=task_id, status="invalid", error=str(exc))
    except PolyrouteError as exc:
        return BatchRecord(line=item.line, task_id=task_id, status="failed", error=str(exc))
    except Exception as exc:  # one broken task must not stop the batch
        return BatchRecord(
            line=item.line,
            task_id=task_id,
            status="failed",
            error=f"internal error: {type(exc).__name__}: {exc}",
        )
    return _record_for(item.line, task_id, result)


def task_id_for(item: TaskLine, stem: str) -> str:
    """The task's own id, or one made from the file name and line number."""
    if item.task is not None and item.task.task_id:
        return item.task.task_id
    return f"{stem}-{item.line}"


async def run_batch(
    engine: Engine,
    tasks_path: Path,
    out_path: Path,
    *,
    concurrency: int = 4,
    progress: Progress | None = None,
) -> BatchSummary:
    """Run every line not yet in ``out_path``; the summary covers the whole results file."""
    items = read_task_lines(tasks_path)
    warn = progress.stream if progress is not None and progress.enabled else None
    previous = read_results(out_path, warn)
    done_lines = {r.line for r in previous}
    todo = [it for it in items if it.line not in done_lines]
    prog = progress or Progress(total=len(items), enabled=False)
    prog.total = len(items)
    wanted = {it.line for it in items}
    prog.seed([r for r in previous if r.line in wanted])
    skipped = len(items) - len(todo)
    if skipped:
        prog.note(f"batch: resuming: {skipped} of {len(items)} tasks already in {out_path}")
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
                rec = BatchRecord(line=it.line, status="invalid", error=it.error)
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
    final = {r.line: r for r in previous if r.line in wanted}
    final.update({r.line: r for r in records})
    return summarize(list(final.values()), skipped_already_done=skipped)


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
