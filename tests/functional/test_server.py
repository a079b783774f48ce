"""``polyroute serve`` beyond the shared contract: auth, binding, idempotency under
concurrency, durability across restarts, body limits and errors that are not the client's."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from polyroute.api import TASK_ID_ERROR
from polyroute.cli import main
from polyroute.errors import EXIT_BAD_INPUT, InputError
from polyroute.server import SERVER_STOPPED_ERROR, TaskService, is_loopback, serve
from polyroute.store import INTERRUPTED_ERROR, ORPHANED_ERROR, TaskStore

from ..contract.local_server import LocalServer, http_send

QUESTION = {"description": "What is the capital of Australia?"}


def post(url: str, body: Any, headers: dict[str, str] | None = None, query: str = "") -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http_send(url)("POST", "/v1/tasks" + query, headers or {}, data)


def get(url: str, path: str, headers: dict[str, str] | None = None) -> Any:
    return http_send(url)("GET", path, headers or {}, None)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalServer]:
    with LocalServer(tmp_path / "store") as srv:
        yield srv


class CountingRuns:
    """Wraps the server's engine.run to count the runs (and optionally hold them)."""

    def __init__(self, srv: LocalServer, hold: threading.Event | None = None) -> None:
        self.count = 0
        self.hold = hold
        self._run = srv.engine.run
        srv.engine.run = self  # type: ignore[method-assign]

    async def __call__(self, task: Any, task_id: str | None = None) -> Any:
        self.count += 1
        while self.hold is not None and not self.hold.is_set():
            await asyncio.sleep(0.01)
        return await self._run(task, task_id=task_id)


# --- auth and binding ----------------------------------------------------------------------------


def test_bearer_token_guards_the_task_routes_only(tmp_path: Path) -> None:
    with LocalServer(tmp_path / "s", token="s3cret") as srv:
        status, headers, body = post(srv.url, QUESTION)
        assert status == 401 and body["error"].startswith("missing or wrong bearer token")
        assert headers.get("www-authenticate") == "Bearer"
        assert post(srv.url, QUESTION, {"Authorization": "Bearer nope"})[0] == 401
        assert get(srv.url, "/v1/tasks/x", {"Authorization": "Basic s3cret"})[0] == 401
        status, _, body = post(srv.url, QUESTION, {"Authorization": "Bearer s3cret"})
        assert status == 200 and body["status"] == "succeeded"
        assert get(srv.url, "/healthz")[0] == 200
        assert get(srv.url, "/openapi.json")[0] == 200


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.9.1", True), ("localhost", True), ("::1", True),
     ("[::1]", True), ("0.0.0.0", False), ("192.168.1.4", False), ("example.org", False)],
)  # fmt: skip
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_refuses_a_wide_bind_without_a_token(tmp_path: Path) -> None:
    store = TaskStore.in_dir(tmp_path)
    with pytest.raises(InputError, match=r"refusing to listen on 0\.0\.0\.0 without"):
        serve(object(), store, host="0.0.0.0", port=0, token=None)  # type: ignore[arg-type]
    store.close()


def test_cli_serve_wide_bind_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("POLYROUTE_API_TOKEN", raising=False)
    code = main(["serve", "--host", "0.0.0.0", "--store", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT and err.count("\n") == 1 and "POLYROUTE_API_TOKEN" in err


# --- idempotency ---------------------------------------------------------------------------------


def test_concurrent_retries_with_one_key_run_the_task_once(server: LocalServer) -> None:
    hold = threading.Event()
    runs = CountingRuns(server, hold)
    answers: list[Any] = []

    def call() -> None:
        answers.append(post(server.url, QUESTION, {"Idempotency-Key": "same"}))

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    while runs.count == 0:
        threading.Event().wait(0.01)
    hold.set()
    for t in threads:
        t.join(timeout=60)
    assert runs.count == 1
    assert [a[0] for a in answers] == [200] * 4
    assert len({a[2]["taskId"] for a in answers}) == 1
    assert len({a[2]["result"]["startedAt"] for a in answers}) == 1


def test_async_then_sync_retry_with_the_same_key_waits_for_the_first_run(
    server: LocalServer,
) -> None:
    runs = CountingRuns(server)
    status, _, accepted = post(server.url, QUESTION, {"Idempotency-Key": "k"}, "?async=true")
    assert status == 202
    status, _, body = post(server.url, QUESTION, {"Idempotency-Key": "k"})
    assert status == 200 and body["taskId"] == accepted["taskId"]
    assert body["status"] == "succeeded" and runs.count == 1


def test_key_order_does_not_change_the_fingerprint(server: LocalServer) -> None:
    a = {"description": "Name three rivers.", "type": "qa"}
    b = {"type": "qa", "description": "Name three rivers."}
    first = post(server.url, a, {"Idempotency-Key": "order"}, "?async=true")
    second = post(server.url, b, {"Idempotency-Key": "order"}, "?async=true")
    assert (first[0], second[0]) == (202, 202) and first[2]["taskId"] == second[2]["taskId"]


def test_an_overlong_idempotency_key_is_400(server: LocalServer) -> None:
    status, _, body = post(server.url, QUESTION, {"Idempotency-Key": "k" * 256})
    assert status == 400 and body["field"] == "Idempotency-Key"


# --- durability ----------------------------------------------------------------------------------


def test_results_survive_a_restart(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with LocalServer(store) as first:
        _, _, accepted = post(first.url, QUESTION, {"Idempotency-Key": "keep"}, "?async=true")
        task_id = accepted["taskId"]
        while get(first.url, f"/v1/tasks/{task_id}")[2]["status"] == "running":
            threading.Event().wait(0.02)
        before = get(first.url, f"/v1/tasks/{task_id}")[2]
    with LocalServer(store) as second:
        runs = CountingRuns(second)
        status, _, after = get(second.url, f"/v1/tasks/{task_id}")
        assert status == 200 and after == before and after["status"] == "succeeded"
        # The idempotency key survives too: a retry after the restart does not run again.
        status, _, again = post(second.url, QUESTION, {"Idempotency-Key": "keep"})
        assert status == 200 and again["result"] == before["result"] and runs.count == 0


def test_a_task_running_at_shutdown_is_reported_failed_after_restart(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with LocalServer(store) as first:
        CountingRuns(first, hold=threading.Event())  # never released: still running at stop
        _, _, accepted = post(first.url, QUESTION, query="?async=true")
    with LocalServer(store) as second:
        status, _, body = get(second.url, f"/v1/tasks/{accepted['taskId']}")
    assert status == 200 and body["status"] == "failed"
    assert body["error"] == SERVER_STOPPED_ERROR and body["result"] is None


def test_a_task_left_running_by_a_crash_is_failed_when_the_store_reopens(
    tmp_path: Path,
) -> None:
    store = TaskStore.in_dir(tmp_path)
    assert store.create("crashed", "sha", None)
    store.close()  # the process died: nothing marked it
    reopened = TaskStore.in_dir(tmp_path)
    TaskService(engine=object(), store=reopened)  # type: ignore[arg-type]
    row = reopened.get("crashed")
    assert row is not None and row.status == "failed" and row.error == INTERRUPTED_ERROR
    reopened.close()


def test_a_task_recorded_running_that_nothing_runs_is_reported_failed(
    server: LocalServer,
) -> None:
    # As the deployed API fails a run Express stopped: GET never says "running" for a task
    # no run will finish. Here the row exists, but no run of it is in this server.
    assert server.store.create("ghost", "sha", None)
    hold = threading.Event()
    CountingRuns(server, hold=hold)
    _, _, accepted = post(server.url, QUESTION, query="?async=true")
    live = accepted["taskId"]

    status, _, body = get(server.url, "/v1/tasks/ghost")
    assert status == 200 and body["status"] == "failed" and body["result"] is None
    assert body["error"] == ORPHANED_ERROR
    row = server.store.get("ghost")
    assert row is not None and row.status == "failed" and row.error == ORPHANED_ERROR
    # A task this server is running is left alone, and finishes.
    assert get(server.url, f"/v1/tasks/{live}")[2]["status"] == "running"
    hold.set()
    while get(server.url, f"/v1/tasks/{live}")[2]["status"] == "running":
        threading.Event().wait(0.02)
    assert get(server.url, f"/v1/tasks/{live}")[2]["status"] == "succeeded"


def test_fail_if_running_leaves_a_finished_task_alone(tmp_path: Path) -> None:
    store = TaskStore.in_dir(tmp_path)
    assert store.create("done", "sha", None) and store.create("stuck", "sha", None)
    store.finish("done", "failed", None, "its own reason")
    assert store.fail_if_running("done", ORPHANED_ERROR) is False
    assert store.fail_if_running("stuck", ORPHANED_ERROR) is True
    done, stuck = store.get("done"), store.get("stuck")
    assert done is not None and done.error == "its own reason"
    assert stuck is not None and stuck.status == "failed" and stuck.error == ORPHANED_ERROR
    store.close()


def test_default_store_is_under_the_users_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    store = TaskStore.in_dir(None)
    assert store.path == tmp_path / "polyroute" / "tasks.sqlite3" and store.path.exists()
    store.close()


# --- bodies and errors ---------------------------------------------------------------------------


def test_chunked_body_over_the_limit_is_413(tmp_path: Path) -> None:
    with LocalServer(tmp_path / "s", max_body_bytes=1000) as srv:
        host, port = srv.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        chunks = (json.dumps({"description": "x" * 5000}).encode()[i : i + 700] for i in
                  range(0, 5100, 700))  # fmt: skip
        conn.request("POST", "/v1/tasks", body=chunks, encode_chunked=True)
        resp = conn.getresponse()
        body = json.loads(resp.read())
        conn.close()
    assert resp.status == 413 and "limit is 1000 bytes" in body["error"]


PINNED_UNKNOWN = {
    "description": "x",
    "plan": {"steps": [{"id": "a", "description": "a", "model": "no-such-model"}]},
}
UNKNOWN_DEP = {
    "description": "x",
    "plan": {"steps": [{"id": "a", "description": "a", "dependsOn": ["zz"]}]},
}


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"description": "x", "constraints": {"maxCostUsd": NaN}}', None),
        (b"\xff\xfe", None),
        (b"[" * 100_000, None),
        (b'{"description": "x", "context": {"k": "\\udc00"}}', None),
        (json.dumps(PINNED_UNKNOWN).encode(), "plan.steps.0.model"),
        (json.dumps(UNKNOWN_DEP).encode(), "plan.steps"),
        (b'{"description": "x", "constraints": {"maxCostUsd": 1e999}}', "constraints.maxCostUsd"),
        (b'{"description": "x", "constraints": {"timeoutSeconds": 1e12}}',
         "constraints.timeoutSeconds"),
        (b'{"description": "x", "constraints": {"timeoutSeconds": 1e300}}',
         "constraints.timeoutSeconds"),
        (b'{"description": "x", "context": {"big": 1e999}}', "context"),
    ],
)  # fmt: skip
def test_malformed_bodies_are_400_not_500(server: LocalServer, raw: bytes, field: str) -> None:
    status, _, body = post(server.url, raw)
    assert status == 400, body
    assert body["field"] == field


def test_an_engine_bug_is_a_failed_task_not_a_500(server: LocalServer) -> None:
    async def broken(task: Any, task_id: str | None = None) -> Any:
        raise RuntimeError("boom")

    server.engine.run = broken  # type: ignore[method-assign]
    status, _, body = post(server.url, QUESTION)
    assert status == 200 and body["status"] == "failed"
    assert body["error"] == "internal error: RuntimeError"


def test_method_not_allowed_is_json_with_allow(server: LocalServer) -> None:
    status, headers, body = http_send(server.url)("DELETE", "/v1/tasks/x", {}, None)
    assert status == 405 and body == {"error": "method not allowed", "field": None}
    assert "GET" in headers.get("allow", "")


def test_serve_on_a_date_checks_pins_against_that_date(tmp_path: Path) -> None:
    """``serve --on`` routes as on a date; a pin is checked on that date too, so a model
    retired by then is a 400 naming the field, not a failed run."""
    body = {
        "description": "review it",
        "plan": {"steps": [{"id": "s", "description": "review", "model": "claude-sonnet-4-5"}]},
    }
    options = ("--time-scale", "0.001", "--on", "2026-12-01")
    with LocalServer(tmp_path / "later", options=options) as later:
        status, _, answer = post(later.url, body)
    assert status == 400
    assert answer["field"] == "plan.steps.0.model" and "retired" in answer["error"]
    with LocalServer(
        tmp_path / "before", options=("--time-scale", "0.001", "--on", "2026-11-27")
    ) as before:
        status, _, answer = post(before.url, body)
    assert status == 200, answer


@pytest.mark.parametrize("task_id", ["x/y?z", "has space", "é", "a" * 81, ""])
def test_a_task_id_the_deployed_api_refuses_is_400_here_too(
    server: LocalServer, task_id: str
) -> None:
    status, _, body = post(server.url, {"description": "x", "taskId": task_id}, query="?async=true")
    assert status == 400
    assert body == {"error": TASK_ID_ERROR, "field": "taskId"}


def test_a_task_id_of_80_allowed_characters_is_accepted(server: LocalServer) -> None:
    task_id = "A-z_0.9" + "a" * 73
    status, _, body = post(server.url, {"description": "x", "taskId": task_id}, query="?async=true")
    assert status == 202 and body["location"] == f"/v1/tasks/{task_id}"


@pytest.mark.parametrize(
    ("attachment", "field"),
    [
        ({"kind": "image", "data": "aGVsbG8gd29ybGQ=", "mediaType": "image/png"},
         "attachments.0.data"),
        ({"kind": "image", "data": ""}, "attachments.0.data"),
        ({"kind": "image", "data": "iVBORw0KGgo=", "mediaType": "text/html"},
         "attachments.0.mediaType"),
    ],
)  # fmt: skip
def test_an_image_that_is_not_one_is_400_before_anything_runs(
    server: LocalServer, attachment: dict[str, Any], field: str
) -> None:
    runs = CountingRuns(server)
    status, _, body = post(
        server.url, {"description": "x", "attachments": [attachment]}, query="?async=true"
    )
    assert status == 400 and body["field"] == field
    assert runs.count == 0
