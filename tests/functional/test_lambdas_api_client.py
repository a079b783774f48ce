"""``polyroute submit`` (polyroute.cli_aws) against a loopback server standing in for the
deployed API: SigV4 headers, inline attachments, sync, async and --wait, exit codes."""

from __future__ import annotations

import argparse
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from polyroute import cli_aws
from polyroute.errors import EXIT_OK, EXIT_STOPPED, InputError

from ..conftest import EXAMPLES

SIG = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=AKIDTEST/\d{8}/eu-west-1/execute-api/aws4_request, "
    r"SignedHeaders=[a-z0-9;-]*host[a-z0-9;-]*x-amz-date[a-z0-9;-]*, Signature=[0-9a-f]{64}$"
)


def result(task_id: str, stop: str | None = None) -> dict[str, Any]:
    return {
        "taskId": task_id,
        "status": "partial" if stop else "succeeded",
        "stopReason": stop,
        "steps": [],
        "totals": {},
        "baseline": {"model": "m", "costUsd": 0.0},
        "savingsPct": 0.0,
        "budgets": {"maxSteps": 20, "stepsUsed": 1},
        "handoff": {"taskId": task_id, "originalTask": "q"},
        "startedAt": "2026-11-27T12:00:00Z",
        "finishedAt": "2026-11-27T12:00:01Z",
    }


class FakeApi(BaseHTTPRequestHandler):
    requests: ClassVar[list[dict[str, Any]]] = []
    polls_before_done = 2
    stop: str | None = None

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        entry = {
            "method": self.command,
            "path": self.path,
            "body": body,
            "auth": self.headers.get("Authorization", ""),
            "date": self.headers.get("X-Amz-Date"),
        }
        FakeApi.requests.append(entry)
        return entry

    def do_POST(self) -> None:
        req = self._record()
        if not SIG.match(req["auth"]):
            self._answer(403, {"message": "Missing Authentication Token"})
        elif req["body"].get("description") == "bad":
            self._answer(400, {"error": "description: too vague", "field": "description"})
        elif req["path"].endswith("?async=true"):
            self._answer(202, {"taskId": "t9", "status": "running", "location": "/v1/tasks/t9"})
        else:
            tid = req["body"].get("taskId") or "t1"
            self._answer(200, {"taskId": tid, "status": "succeeded", "result": result(tid)})

    def do_GET(self) -> None:
        req = self._record()
        if not SIG.match(req["auth"]):
            self._answer(403, {"message": "Missing Authentication Token"})
            return
        gets = sum(r["method"] == "GET" for r in FakeApi.requests)
        if gets < FakeApi.polls_before_done:
            self._answer(200, {"taskId": "t9", "status": "running"})
        else:
            status = "partial" if FakeApi.stop else "succeeded"
            self._answer(
                200, {"taskId": "t9", "status": status, "result": result("t9", FakeApi.stop)}
            )


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    FakeApi.requests = []
    FakeApi.stop = None
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1api"
    server.shutdown()
    server.server_close()


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    cli_aws.register(parser.add_subparsers())
    args = parser.parse_args(["submit", *argv])
    code: int = args.func(args)
    return code


def test_a_sync_submit_is_signed_sends_attachments_inline_and_prints_the_run(
    api: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run(str(EXAMPLES / "code_review.json"), "--api", api, "--region", "eu-west-1")
    assert code == EXIT_OK
    (req,) = FakeApi.requests
    assert req["path"] == "/v1api/v1/tasks"
    assert SIG.match(req["auth"]) and req["date"]
    att = req["body"]["attachments"][0]
    assert att.get("path") is None and "refund" in att["data"] and att["name"]
    assert "code-review-demo" in capsys.readouterr().out


def test_async_then_wait_polls_until_the_run_ends(api: str) -> None:
    body = cli_aws.task_body(str(EXAMPLES / "question.json"))
    client = cli_aws.SignedClient(api, "eu-west-1")
    answer = cli_aws.submit(client, body, run_async=True, wait=True, poll_seconds=0.01)
    assert answer["status"] == "succeeded"
    methods = [(r["method"], r["path"]) for r in FakeApi.requests]
    assert methods[0] == ("POST", "/v1api/v1/tasks?async=true")
    assert methods[1:] == [("GET", "/v1api/v1/tasks/t9")] * 2


def test_async_without_wait_prints_the_id_and_exits_0(
    api: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run(str(EXAMPLES / "question.json"), "--api", api, "--region", "eu-west-1", "--async")
    assert code == EXIT_OK
    assert json.loads(capsys.readouterr().out)["taskId"] == "t9"
    assert len(FakeApi.requests) == 1


def test_a_budget_stop_exits_3(api: str) -> None:
    FakeApi.stop = "budget"
    argv = [str(EXAMPLES / "question.json"), "--api", api, "--region", "eu-west-1"]
    assert run(*argv, "--async", "--wait", "--poll-seconds", "0.01") == EXIT_STOPPED


def test_a_refused_request_is_one_clear_input_error(api: str, tmp_path: Any) -> None:
    task = tmp_path / "bad.json"
    task.write_text(json.dumps({"description": "bad"}))
    with pytest.raises(InputError, match=r"HTTP 400: description: too vague"):
        run(str(task), "--api", api, "--region", "eu-west-1")


def test_the_region_comes_from_the_api_host() -> None:
    url = "https://abc123.execute-api.eu-central-1.amazonaws.com/v1api"
    assert cli_aws.region_for(url, None) == "eu-central-1"
    assert cli_aws.region_for(url, "us-east-1") == "us-east-1"
