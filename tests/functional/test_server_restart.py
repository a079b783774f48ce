"""``polyroute serve`` as a process, killed with SIGKILL and started again on the same store:
finished results are still there, and the task it was running is reported failed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from polyroute.store import INTERRUPTED_ERROR

from ..conftest import EXAMPLES, REPO
from ..contract.local_server import http_send

BANNER = re.compile(r"polyroute serve: (http://127\.0\.0\.1:\d+)")


@contextmanager
def serve_process(store: Path, *options: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "polyroute", "serve", "--port", "0", "--store", str(store),
         *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = BANNER.search(line)
        assert match, f"no banner: {line!r}"
        url = match.group(1)
        deadline = time.monotonic() + 30
        while True:
            try:
                if http_send(url, timeout=2)("GET", "/healthz", {}, None)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.05)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def test_sigkill_keeps_finished_results_and_fails_the_running_task(tmp_path: Path) -> None:
    store = tmp_path / "store"
    question = json.dumps({"taskId": "done", "description": "What is 2 + 2?"}).encode()
    planning = json.loads((EXAMPLES / "planning.json").read_text())
    slow = json.dumps({**planning, "taskId": "slow"}).encode()

    with serve_process(store, "--time-scale", "0.5") as (proc, url):
        send = http_send(url)
        status, _, finished = send("POST", "/v1/tasks", {}, question)
        assert status == 200 and finished["status"] == "succeeded"
        assert send("POST", "/v1/tasks?async=true", {}, slow)[0] == 202
        time.sleep(0.3)
        assert send("GET", "/v1/tasks/slow", {}, None)[2]["status"] == "running"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    with serve_process(store, "--time-scale", "0.001") as (_, url):
        send = http_send(url)
        status, _, again = send("GET", "/v1/tasks/done", {}, None)
        assert status == 200 and again["result"] == finished["result"]
        status, _, lost = send("GET", "/v1/tasks/slow", {}, None)
        assert status == 200 and lost["status"] == "failed"
        assert lost["error"] == INTERRUPTED_ERROR and lost["result"] is None
