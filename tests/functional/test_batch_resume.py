"""``polyroute batch`` killed with SIGKILL mid-batch, then resumed: every line ends up in
the results file exactly once, and no task that had finished is run again. And resumed after
its lines were fixed: the changed lines run again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from polyroute.cli import main
from polyroute.errors import EXIT_FAILURE, EXIT_OK

from ..conftest import REPO

# Runs the real CLI, with Engine.run wrapped to log each task's start and finish, so the test
# can count runs across the two processes.
CHILD = """
import sys
from polyroute import engine as _engine

_log = sys.argv[1]
_run = _engine.Engine.run

async def counted(self, task, task_id=None):
    with open(_log, "a") as fh:
        fh.write(f"start {task_id}\\n")
    result = await _run(self, task, task_id=task_id)
    with open(_log, "a") as fh:
        fh.write(f"end {task_id}\\n")
    return result

_engine.Engine.run = counted
from polyroute.cli import main
raise SystemExit(main(sys.argv[2:]))
"""

TASKS = 10


def complete_lines(path: Path) -> list[int]:
    if not path.exists():
        return []
    data = path.read_bytes()
    return [json.loads(ln)["line"] for ln in data[: data.rfind(b"\n") + 1].splitlines()]


def test_killed_batch_resumes_without_running_a_finished_task_twice(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(
        "".join(
            json.dumps({"description": f"Question {n}: what is the capital of country {n}?"}) + "\n"
            for n in range(1, TASKS + 1)
        ),
        encoding="utf-8",
    )
    out, log, child = tmp_path / "results.jsonl", tmp_path / "runs.log", tmp_path / "child.py"
    child.write_text(CHILD, encoding="utf-8")
    cmd = [
        sys.executable,
        str(child),
        str(log),
        "batch",
        str(tasks),
        "--out",
        str(out),
        "--concurrency",
        "2",
        "--time-scale",
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }

    proc = subprocess.Popen(
        [*cmd, "0.05"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while len(complete_lines(out)) < 3:
        assert proc.poll() is None, f"batch ended before it could be killed: {proc.stderr}"
        assert time.monotonic() < deadline, "no results appeared"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    done_before = set(complete_lines(out))
    assert 3 <= len(done_before) < TASKS, "the kill must land mid-batch"
    # As if the kill had hit mid-write: half a line at the end of the file.
    not_done = min(set(range(1, TASKS + 1)) - done_before)
    with out.open("ab") as fh:
        fh.write(json.dumps({"line": not_done, "taskId": "x"}).encode()[:15])

    resumed = subprocess.run(
        [*cmd, "0.001"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming: {len(done_before)} of {TASKS} tasks" in resumed.stderr
    assert "dropped an incomplete last line" in resumed.stderr
    assert "changed since" not in resumed.stderr

    records = [json.loads(ln) for ln in out.read_text(encoding="utf-8").splitlines()]
    assert sorted(r["line"] for r in records) == list(range(1, TASKS + 1))
    assert all(r["status"] == "succeeded" for r in records)
    assert all(len(r["lineSha256"]) == 64 for r in records)

    events = Counter(tuple(ln.split()) for ln in log.read_text().splitlines())
    for n in range(1, TASKS + 1):
        task_id = f"tasks-{n}"
        assert events[("end", task_id)] >= 1, f"{task_id} never finished"
        if n in done_before:
            # Recorded before the kill: started once, finished once, never run again.
            assert events[("start", task_id)] == 1, f"{task_id} was run again after resume"
            assert events[("end", task_id)] == 1


def test_fixing_every_bad_line_runs_them_all_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The audit's case: a batch of three bad lines, all fixed, then the same command again.
    It used to say 'resuming: 3 of 3 tasks already in r3.jsonl' and keep them invalid."""
    tasks, out = tmp_path / "t3.jsonl", tmp_path / "r3.jsonl"
    cmd = ["batch", str(tasks), "--out", str(out), "--time-scale", "0.001"]
    tasks.write_text('{"description": "q", "colour": 1}\nnot json\n{"description": ""}\n')
    assert main(cmd) == EXIT_FAILURE
    capsys.readouterr()
    tasks.write_text(
        "".join(json.dumps({"description": f"What is {n} + {n}?"}) + "\n" for n in (1, 2, 3))
    )
    assert main(cmd) == EXIT_OK
    captured = capsys.readouterr()
    assert "resuming:" not in captured.err
    assert f"3 of 3 lines changed since their results in {out} were written" in captured.err
    assert "3 task(s)" in captured.out and "done in an earlier run" not in captured.out
    latest = {r["line"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert [latest[n]["status"] for n in (1, 2, 3)] == ["succeeded"] * 3
    assert main(cmd) == EXIT_OK
    assert "resuming: 3 of 3 tasks" in capsys.readouterr().err
