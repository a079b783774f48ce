"""The HTTP API contract as a list of requests, expected statuses and checks.

Shared by every implementation of :mod:`polyroute.api`: ``polyroute serve`` runs it in
``test_contract_local.py``; the deployed path (API Gateway + Lambda + Step Functions, under
moto) runs the same list with its own ``send``::

    from tests.contract.request_set import run_request_set

    def send(method, path, headers, body):   # -> (status, headers, parsed JSON or None)
        ...

    run_request_set(send, local_only=False)

``body`` handed to ``send`` is already bytes (or None): JSON-encoded for the usual cases, raw
for the cases that test a malformed body, so ``send`` never re-encodes it. Header names in
the returned headers may be any case. The cases run in order (later ones use ids saved by
earlier ones); every id and Idempotency-Key carries a per-run prefix, so the set can run
again against a store that keeps state.

Semantics pinned here, beyond the status codes in polyroute/api.py:

- a ``taskId`` in the body names the task; one that already exists gets 409 (field taskId);
- ``Idempotency-Key``: the same key and body answer the first task (202 with the same id
  for async; 200 with the first result, not a new run, for sync); the same key with another
  body gets 422 (field Idempotency-Key);
- every error body is an ``ApiError`` ``{"error": str, "field": str | null}``;
- a body may spell its fields in camelCase or snake_case, at every level (``taskId`` or
  ``task_id``, ``dependsOn`` or ``depends_on``), and a client may mix them; unknown fields in
  either spelling are refused.
"""

from __future__ import annotations

import base64
import json
import struct
import time
import uuid
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from polyroute.api import MAX_BODY_BYTES

Headers = Mapping[str, str]
Send = Callable[[str, str, Headers, bytes | None], tuple[int, Headers, Any]]
Check = Callable[[Any, Headers, dict[str, Any]], None]


def _png(width: int, height: int) -> bytes:
    """A valid grey PNG of this size, so an image attachment needs no file."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


TINY_PNG = base64.b64encode(_png(64, 48)).decode("ascii")


@dataclass
class Case:
    """One request of the contract and what its answer must be."""

    name: str
    method: str
    path: str  # may hold {placeholders} filled from the run's context
    status: int
    body: Any = None  # JSON-encoded unless ``raw``
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    poll_until_done: bool = False  # GET again while the task is still running
    local_only: bool = False  # routes the deployed API does not have (healthz, 404 routes)


# --- checks ------------------------------------------------------------------------------------


def header(headers: Headers, name: str) -> str | None:
    """A response header, whatever the case of its name."""
    for k, v in headers.items():
        if k.lower() == name.lower():
            return v
    return None


def is_api_error(field_name: str | None = None, contains: str | None = None) -> Check:
    """The body is an ApiError; optionally naming this field and saying this."""

    def check(body: Any, headers: Headers, ctx: dict[str, Any]) -> None:
        assert isinstance(body, dict), f"error body is not an object: {body!r}"
        assert set(body) <= {"error", "field"}, f"unexpected keys in ApiError: {sorted(body)}"
        assert isinstance(body.get("error"), str) and body["error"], "empty error message"
        assert "\n" not in body["error"], "an error is one line"
        assert "Traceback" not in body["error"]
        if field_name is not None:
            assert body.get("field") == field_name, f"field {body.get('field')!r} != {field_name!r}"
        if contains is not None:
            assert contains.lower() in body["error"].lower(), (
                f"{contains!r} not in {body['error']!r}"
            )

    return check


def finished_task(task_id_key: str | None = None, steps: int | None = None) -> Check:
    """A TaskStatus of a finished task with a RunResult in camelCase."""

    def check(body: Any, headers: Headers, ctx: dict[str, Any]) -> None:
        assert isinstance(body, dict)
        assert body["status"] == "succeeded", f"status {body['status']}: {body.get('error')}"
        result = body["result"]
        assert isinstance(result, dict)
        assert result["taskId"] == body["taskId"]
        if task_id_key is not None:
            assert body["taskId"] == ctx[task_id_key]
        for key in ("steps", "totals", "baseline", "savingsPct", "budgets", "criticalPath"):
            assert key in result, f"result has no {key}"
        assert "task_id" not in result and "savings_pct" not in result, "snake_case on the wire"
        assert result["totals"]["costUsd"] > 0
        assert all(s["status"] == "succeeded" for s in result["steps"])
        if steps is not None:
            assert len(result["steps"]) == steps, f"{len(result['steps'])} steps"

    return check


def accepted(save_as: str, task_id: str | None = None) -> Check:
    """A TaskAccepted: running, its id saved in the context, location pointing at it."""

    def check(body: Any, headers: Headers, ctx: dict[str, Any]) -> None:
        assert isinstance(body, dict)
        assert set(body) == {"taskId", "status", "location"}, sorted(body)
        assert body["status"] == "running"
        if task_id is not None:
            assert body["taskId"] == task_id.format(**ctx)
        assert body["location"].endswith(f"/v1/tasks/{body['taskId']}")
        loc = header(headers, "location")
        if loc is not None:
            assert loc.endswith(f"/v1/tasks/{body['taskId']}")
        ctx[save_as] = body["taskId"]

    return check


def save(key: str, pick: Callable[[Any], Any]) -> Check:
    """Save part of the body in the context for a later case."""

    def check(body: Any, headers: Headers, ctx: dict[str, Any]) -> None:
        ctx[key] = pick(body)

    return check


def same_as(key: str, pick: Callable[[Any], Any], what: str) -> Check:
    """Part of the body equals what an earlier case saved."""

    def check(body: Any, headers: Headers, ctx: dict[str, Any]) -> None:
        assert pick(body) == ctx[key], f"{what}: {pick(body)!r} != {ctx[key]!r}"

    return check


def has(pairs: Mapping[str, Any]) -> Check:
    """The body has these top-level values."""

    def check(body: Any, headers: Headers, ctx: dict[str, Any]) -> None:
        for k, v in pairs.items():
            want = v.format(**ctx) if isinstance(v, str) else v
            assert body.get(k) == want, f"{k}: {body.get(k)!r} != {want!r}"

    return check


# --- bodies ------------------------------------------------------------------------------------

QUESTION = {"description": "What is the capital of Australia, and why was it chosen?"}

REPORT_TEXT = (
    "Revenue grew 12% to $4.1bn. Risks: supplier concentration, FX exposure, a pending "
    "lawsuit. The board approved the data-centre expansion in two phases."
)


def planned(task_id: str) -> dict[str, Any]:
    """A three-step plan (one step, then two in parallel) over an inline document."""
    return {
        "taskId": task_id,
        "description": "Summarise the attached report, then list its risks and its revenue trend.",
        "attachments": [{"kind": "document", "data": REPORT_TEXT, "name": "report.txt"}],
        "constraints": {"maxSteps": 5, "maxCostUsd": 1.0},
        "plan": {
            "steps": [
                {
                    "id": "summary",
                    "type": "summarization",
                    "useAttachments": True,
                    "description": "Summarise the report.",
                },
                {
                    "id": "risks",
                    "type": "extraction",
                    "dependsOn": ["summary"],
                    "description": "List the risks named in the summary.",
                },
                {
                    "id": "trend",
                    "type": "analysis",
                    "dependsOn": ["summary"],
                    "description": "Describe the revenue trend.",
                },
            ]
        },
    }


def _cyclic() -> dict[str, Any]:
    return {
        "description": "a plan that waits for itself",
        "plan": {
            "steps": [
                {"id": "a", "description": "first", "dependsOn": ["b"]},
                {"id": "b", "description": "second", "dependsOn": ["a"]},
            ]
        },
    }


def snake_planned(task_id: str) -> dict[str, Any]:
    """A two-step plan over an inline document, every field in snake_case, at every level."""
    return {
        "task_id": task_id,
        "description": "Summarise the attached report, then list its risks.",
        "attachments": [
            {
                "kind": "document",
                "data": REPORT_TEXT,
                "name": "report.txt",
                "media_type": "text/plain",
            }
        ],
        "constraints": {"max_steps": 4, "max_cost_usd": 1.0, "timeout_seconds": 120},
        "plan": {
            "steps": [
                {
                    "id": "summary",
                    "type": "summarization",
                    "use_attachments": True,
                    "max_output_tokens": 400,
                    "description": "Summarise the report.",
                },
                {
                    "id": "risks",
                    "type": "extraction",
                    "depends_on": ["summary"],
                    "description": "List the risks named in the summary.",
                },
            ]
        },
    }


def _result_started(body: Any) -> Any:
    return body["result"]["startedAt"]


def cases() -> list[Case]:
    """The contract, in the order it runs."""
    task = "{run}"
    return [
        Case(
            "health",
            "GET",
            "/healthz",
            200,
            checks=[has({"status": "ok"})],
            local_only=True,
        ),
        Case(
            "sync task without id",
            "POST",
            "/v1/tasks",
            200,
            body=QUESTION,
            checks=[finished_task(steps=1)],
        ),
        Case(
            "sync task with a plan and an inline document",
            "POST",
            "/v1/tasks",
            200,
            body=planned(f"{task}-sync"),
            checks=[
                finished_task(steps=3),
                has({"taskId": f"{task}-sync"}),
                lambda b, h, c: _check_waves(b),
            ],
        ),
        Case(
            "get the sync task",
            "GET",
            f"/v1/tasks/{task}-sync",
            200,
            checks=[finished_task(steps=3)],
        ),
        Case(
            "same taskId again",
            "POST",
            "/v1/tasks",
            409,
            body=planned(f"{task}-sync"),
            checks=[is_api_error("taskId", "already exists")],
        ),
        Case(
            "async task with an image",
            "POST",
            "/v1/tasks?async=true",
            202,
            body={
                "taskId": f"{task}-async",
                "description": "Read the attached receipt and extract the total as JSON.",
                "attachments": [{"kind": "image", "data": TINY_PNG, "mediaType": "image/png"}],
            },
            checks=[accepted("async_id", f"{task}-async")],
        ),
        Case(
            "poll the async task",
            "GET",
            "/v1/tasks/{async_id}",
            200,
            poll_until_done=True,
            checks=[finished_task("async_id", steps=1)],
        ),
        Case(
            "idempotent async: first",
            "POST",
            "/v1/tasks?async=true",
            202,
            body=QUESTION,
            headers={"Idempotency-Key": f"{task}-k1"},
            checks=[accepted("idem_async")],
        ),
        Case(
            "idempotent async: retried, same id",
            "POST",
            "/v1/tasks?async=true",
            202,
            body=QUESTION,
            headers={"Idempotency-Key": f"{task}-k1"},
            checks=[same_as("idem_async", lambda b: b["taskId"], "taskId")],
        ),
        Case(
            "idempotent: same key, different body",
            "POST",
            "/v1/tasks?async=true",
            422,
            body={"description": "Something else entirely."},
            headers={"Idempotency-Key": f"{task}-k1"},
            checks=[is_api_error("Idempotency-Key", "different")],
        ),
        Case(
            "idempotent sync: first",
            "POST",
            "/v1/tasks",
            200,
            body=QUESTION,
            headers={"Idempotency-Key": f"{task}-k2"},
            checks=[
                finished_task(),
                save("idem_sync", lambda b: b["taskId"]),
                save("idem_sync_started", _result_started),
            ],
        ),
        Case(
            "idempotent sync: retried, the first result",
            "POST",
            "/v1/tasks",
            200,
            body=QUESTION,
            headers={"Idempotency-Key": f"{task}-k2"},
            checks=[
                finished_task(),
                same_as("idem_sync", lambda b: b["taskId"], "taskId"),
                same_as("idem_sync_started", _result_started, "result.startedAt (not re-run)"),
            ],
        ),
        Case(
            "sync task in snake_case",
            "POST",
            "/v1/tasks",
            200,
            body={
                "description": "hello there",
                "task_id": f"{task}-snake1",
                "constraints": {"max_steps": 3},
            },
            checks=[finished_task(steps=1), has({"taskId": f"{task}-snake1"})],
        ),
        Case(
            "async task in snake_case at every level",
            "POST",
            "/v1/tasks?async=true",
            202,
            body=snake_planned(f"{task}-snake2"),
            checks=[accepted("snake_id", f"{task}-snake2")],
        ),
        Case(
            "poll the snake_case task",
            "GET",
            "/v1/tasks/{snake_id}",
            200,
            poll_until_done=True,
            checks=[
                finished_task("snake_id", steps=2),
                lambda b, h, c: _check_budgets(b, max_steps=4, max_cost_usd=1.0),
            ],
        ),
        Case(
            "both spellings mixed",
            "POST",
            "/v1/tasks",
            200,
            body={
                "description": "hello again",
                "taskId": f"{task}-mixed",
                "constraints": {"max_steps": 3, "maxCostUsd": 1.0},
            },
            checks=[
                finished_task(steps=1),
                has({"taskId": f"{task}-mixed"}),
                lambda b, h, c: _check_budgets(b, max_steps=3, max_cost_usd=1.0),
            ],
        ),
        Case(
            "unknown snake_case field, nested",
            "POST",
            "/v1/tasks",
            400,
            body={"description": "x", "constraints": {"max_stepz": 3}},
            checks=[is_api_error("constraints.max_stepz")],
        ),
        Case(
            "unknown snake_case field in a plan step",
            "POST",
            "/v1/tasks",
            400,
            body={
                "description": "x",
                "plan": {"steps": [{"id": "a", "description": "a", "depends_onn": []}]},
            },
            checks=[is_api_error("plan.steps.0.depends_onn")],
        ),
        Case(
            "one field in both spellings",
            "POST",
            "/v1/tasks",
            400,
            body={"description": "x", "taskId": f"{task}-twice", "task_id": f"{task}-twice"},
            checks=[is_api_error("task_id")],
        ),
        Case(
            "unknown id",
            "GET",
            f"/v1/tasks/{task}-nope",
            404,
            checks=[is_api_error()],
        ),
        Case(
            "missing description",
            "POST",
            "/v1/tasks",
            400,
            body={"type": "qa"},
            checks=[is_api_error("description")],
        ),
        Case(
            "unknown field",
            "POST",
            "/v1/tasks",
            400,
            body={"description": "x", "colour": "blue"},
            checks=[is_api_error("colour")],
        ),
        Case(
            "wrong type",
            "POST",
            "/v1/tasks",
            400,
            body={"description": "x", "constraints": {"maxSteps": "many"}},
            checks=[is_api_error("constraints.maxSteps")],
        ),
        Case(
            "attachment by path",
            "POST",
            "/v1/tasks",
            400,
            body={"description": "x", "attachments": [{"kind": "document", "path": "a.txt"}]},
            checks=[is_api_error("attachments.0.path", "data")],
        ),
        Case(
            "image that is not base64",
            "POST",
            "/v1/tasks?async=true",
            400,
            body={"description": "x", "attachments": [{"kind": "image", "data": "%%%"}]},
            checks=[is_api_error("attachments.0.data", "base64")],
        ),
        Case(
            "cyclic plan",
            "POST",
            "/v1/tasks?async=true",
            400,
            body=_cyclic(),
            checks=[is_api_error(contains="cycle: a -> b -> a")],
        ),
        Case(
            "body not JSON",
            "POST",
            "/v1/tasks",
            400,
            raw=b"description: not json",
            checks=[is_api_error(contains="JSON")],
        ),
        Case("body a JSON list", "POST", "/v1/tasks", 400, raw=b"[1, 2]", checks=[is_api_error()]),
        Case("empty body", "POST", "/v1/tasks", 400, raw=b"", checks=[is_api_error()]),
        Case(
            "async flag not a boolean",
            "POST",
            "/v1/tasks?async=perhaps",
            400,
            body=QUESTION,
            checks=[is_api_error("async")],
        ),
        Case(
            "body too large",
            "POST",
            "/v1/tasks",
            413,
            raw=json.dumps({"description": "x" * (MAX_BODY_BYTES + 1)}).encode(),
            checks=[is_api_error()],
        ),
        Case(
            "unknown route",
            "GET",
            "/v1/nothing-here",
            404,
            checks=[is_api_error()],
            local_only=True,
        ),
    ]


def _check_budgets(body: Any, *, max_steps: int, max_cost_usd: float) -> None:
    budgets = body["result"]["budgets"]
    assert budgets["maxSteps"] == max_steps, budgets
    assert budgets["maxCostUsd"] == max_cost_usd, budgets


def _check_waves(body: Any) -> None:
    result = body["result"]
    assert result["waves"] == [["summary"], ["risks", "trend"]], result["waves"]
    assert result["criticalPath"][0] == "summary"


# --- running it --------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one case got."""

    case: Case
    status: int
    body: Any


def run_request_set(
    send: Send,
    *,
    local_only: bool = True,
    run_id: str | None = None,
    poll_interval_s: float = 0.05,
    poll_timeout_s: float = 60.0,
    extra_headers: Mapping[str, str] | None = None,
) -> list[Outcome]:
    """Run every case through ``send`` in order; AssertionError names the first case that
    fails. ``local_only=False`` leaves out the routes only ``polyroute serve`` has."""
    ctx: dict[str, Any] = {"run": run_id or f"contract-{uuid.uuid4().hex[:10]}"}
    outcomes: list[Outcome] = []
    for case in cases():
        if case.local_only and not local_only:
            continue
        path = case.path.format(**ctx)
        headers = {**(extra_headers or {}), **{k: v.format(**ctx) for k, v in case.headers.items()}}
        if case.raw is not None:
            data: bytes | None = case.raw
        elif case.body is not None:
            data = json.dumps(_fill(case.body, ctx)).encode("utf-8")
        else:
            data = None
        if data is not None:
            headers.setdefault("Content-Type", "application/json")
        deadline = time.monotonic() + poll_timeout_s
        while True:
            status, resp_headers, body = send(case.method, path, headers, data)
            running = isinstance(body, dict) and body.get("status") == "running"
            if not (case.poll_until_done and status == 200 and running):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"{case.name}: still running after {poll_timeout_s}s")
            time.sleep(poll_interval_s)
        try:
            assert status == case.status, f"status {status}, expected {case.status}: {body!r}"
            for check in case.checks:
                check(body, resp_headers, ctx)
        except AssertionError as exc:
            shown = json.dumps(body)[:600] if body is not None else None
            raise AssertionError(
                f"[{case.name}] {case.method} {path}: {exc}; body {shown}"
            ) from exc
        outcomes.append(Outcome(case, status, body))
    return outcomes


def _fill(value: Any, ctx: Mapping[str, Any]) -> Any:
    if isinstance(value, str):
        return value.replace("{run}", str(ctx["run"]))
    if isinstance(value, list):
        return [_fill(v, ctx) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, ctx) for k, v in value.items()}
    return value
