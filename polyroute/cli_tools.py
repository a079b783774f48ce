"""The ``serve``, ``batch`` and ``report`` subcommands of the ``polyroute`` CLI.

Each module they use (the web server, the batch runner, the report) is imported when its
command runs, so ``polyroute run`` does not pay for Starlette or matplotlib.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from polyroute.errors import EXIT_OK, InputError


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0-65535")
    return value


def register(subparsers: Any) -> None:
    """Add ``serve``, ``batch`` and ``report`` to the CLI's subcommands."""
    from polyroute.cli import _engine_options

    p = subparsers.add_parser(
        "serve",
        help="serve the HTTP API (the deployed API's routes) on the local engine",
        description="Serve POST /v1/tasks, GET /v1/tasks/{id}, /healthz and /openapi.json. "
        "Set POLYROUTE_API_TOKEN to require 'Authorization: Bearer <token>'.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8080, help="port (default 8080)")
    p.add_argument(
        "--store",
        metavar="DIR",
        help="folder for tasks.sqlite3 (default: ~/.local/share/polyroute)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --host without POLYROUTE_API_TOKEN",
    )
    _engine_options(p)
    p.set_defaults(func=cmd_serve)

    p = subparsers.add_parser(
        "batch",
        help="run a JSONL file of tasks, resumable, with progress and a summary",
        description="One task per line (paths relative to the file). Results are appended "
        "to --out as each task finishes; run the same command again to resume: lines whose "
        "result is there for the same text are skipped, lines whose text changed run again. "
        "An --out holding another tasks file's results is refused (exit 2) unless --restart.",
    )
    p.add_argument("tasks", metavar="TASKS.jsonl")
    p.add_argument("--out", required=True, metavar="RESULTS.jsonl", help="results file")
    p.add_argument("--summary", metavar="FILE.json", help="also write the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument(
        "--restart",
        action="store_true",
        help="start over: move an existing --out aside to RESULTS.jsonl.bak (replacing an "
        "earlier one) and run every line",
    )
    _engine_options(p)
    for action in p._actions:
        if "--concurrency" in action.option_strings:
            action.help = "tasks run at once, each with up to this many steps in parallel"
    p.set_defaults(func=cmd_batch, concurrency=4)

    p = subparsers.add_parser(
        "report",
        help="turn a RunResult (polyroute run --json) into a self-contained HTML report",
    )
    p.add_argument("run", metavar="RUN.json")
    p.add_argument("--out", default="report.html", metavar="FILE.html", help="default report.html")
    p.add_argument("--png", metavar="FILE.png", help="also write the timeline as a PNG")
    p.set_defaults(func=cmd_report)


def cmd_serve(args: argparse.Namespace) -> int:
    """``polyroute serve``."""
    from polyroute.cli import _make_engine
    from polyroute.server import TOKEN_ENV, serve
    from polyroute.store import TaskStore

    token = os.environ.get(TOKEN_ENV) or None
    engine = _make_engine(args)
    store = TaskStore.in_dir(args.store)
    try:
        serve(
            engine,
            store,
            host=args.host,
            port=args.port,
            token=token,
            insecure=args.insecure,
        )
    finally:
        store.close()
    return EXIT_OK


def cmd_batch(args: argparse.Namespace) -> int:
    """``polyroute batch``: exit 0 all succeeded, 1 any failed or invalid, 3 any stopped."""
    from polyroute.batch import Progress, render_summary, run_batch, write_summary
    from polyroute.cli import _make_engine

    tasks = Path(args.tasks)
    out = Path(args.out)
    if tasks.resolve() == out.resolve():
        raise InputError("batch: --out must not be the tasks file")
    engine = _make_engine(args)
    progress = Progress(total=0, stream=sys.stderr, enabled=not args.quiet)
    summary = asyncio.run(
        run_batch(
            engine,
            tasks,
            out,
            concurrency=args.concurrency,
            progress=progress,
            restart=args.restart,
        )
    )
    print(render_summary(summary, str(tasks), str(out)))
    if args.summary:
        write_summary(summary, Path(args.summary))
    return summary.exit_code


def _check_not_a_status_without_result(path: str) -> None:
    """Refuse, with what it is, a TaskStatus (GET /v1/tasks/{id}) that holds no result: one
    of a task that failed before running, or one still running. ``load_run`` reports the
    result of a status that has one, and says what else is wrong with any other file."""
    import json

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return  # load_run says what is wrong with the file
    if not isinstance(data, dict) or "steps" in data or data.get("result") is not None:
        return
    task_id = data.get("taskId", data.get("task_id"))
    status = data.get("status")
    if not isinstance(task_id, str) or status not in ("running", "succeeded", "partial", "failed"):
        return
    if status == "running":
        raise InputError(
            f"{path}: a task status (GET /v1/tasks/{task_id}) of a task still running: it has"
            " no result yet; fetch it again when it has finished"
        )
    if status == "failed":
        error = data.get("error") or "no error recorded"
        raise InputError(
            f"{path}: a task status (GET /v1/tasks/{task_id}) of a task that failed before"
            f" producing a result, so there is nothing to report: {error}"
        )
    raise InputError(f"{path}: a task status (GET /v1/tasks/{task_id}) with no result")


def cmd_report(args: argparse.Namespace) -> int:
    """``polyroute report``."""
    from polyroute.report import load_run, write_html, write_timeline_png

    _check_not_a_status_without_result(args.run)
    result = load_run(args.run)
    out = write_html(result, args.out)
    print(f"report: {out}")
    if args.png:
        png = write_timeline_png(result, args.png)
        print(f"timeline: {png}")
    return EXIT_OK
