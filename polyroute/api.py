"""The HTTP API contract, shared by ``polyroute serve`` and the deployed API Gateway.

Routes (the same on both, so a client written against one works against the other):

- ``POST /v1/tasks``: run a task synchronously; 200 with a ``TaskStatus`` holding the result.
- ``POST /v1/tasks?async=true``: start it; 202 with ``TaskAccepted`` (its id).
- ``GET /v1/tasks/{id}``: 200 with ``TaskStatus``; 404 with ``ApiError`` for an unknown id.
- ``GET /healthz``: 200 ``{"status": "ok"}`` (local server only).

The request body is a ``Task``. Over HTTP, attachments carry inline ``data``: a server does not
read paths on its own disk. Client mistakes get 400 (the field named), 404 or 413, never 500.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from polyroute.errors import InputError, PolyrouteError, UnknownModelError
from polyroute.registry import Registry, first_error
from polyroute.schema import RunResult, Task, WireModel

MAX_BODY_BYTES = 6 * 1024 * 1024  # Lambda's synchronous payload limit
IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 255
TaskState = Literal["running", "succeeded", "partial", "failed"]


class TaskAccepted(WireModel):
    """The answer to an async POST: the id to poll."""

    task_id: str
    status: Literal["running"] = "running"
    location: str


class TaskStatus(WireModel):
    """A task's state and, once finished, its result."""

    task_id: str
    status: TaskState
    result: RunResult | None = None
    error: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class ApiError(WireModel):
    """Every error body: a one-line message and, for a bad field, its dotted path."""

    error: str
    field: str | None = None


def parse_task_body(body: Any) -> Task:
    """Validate a request body as a Task; paths are refused (send inline data)."""
    try:
        task = Task.model_validate(body)
    except ValidationError as exc:
        raise InputError(first_error(exc)) from None
    for i, att in enumerate(task.attachments):
        if att.path is not None:
            raise InputError(
                f"attachments.{i}.path: not accepted over HTTP; send the content as 'data'"
            )
    return task


def request_fingerprint(body: Any) -> str:
    """The sha256 of a body's canonical JSON: equal for equal bodies, whatever the key order."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def idempotency_conflict(key: str, first_task_id: str) -> str:
    """The 422 message for an Idempotency-Key reused with another body."""
    return (
        f"{IDEMPOTENCY_HEADER} {key!r} was already used with a different request body"
        f" (task {first_task_id}); use a new key for a new request"
    )


class Refused(Exception):
    """A request answered with an ``ApiError`` body and this status (a client mistake)."""

    def __init__(
        self,
        status: int,
        error: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(error)
        self.status = status
        self.body = ApiError(error=error, field=field)
        self.headers = headers or {}


def field_of(message: str) -> str | None:
    """The dotted field a one-line validation message starts with, if any."""
    head = message.split(":", 1)[0]
    return head if head and " " not in head else None


def check_idempotency_key(key: str | None) -> str | None:
    """The Idempotency-Key, trimmed, if any; 400 if it is empty or too long."""
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > MAX_IDEMPOTENCY_KEY:
        raise Refused(
            400,
            f"{IDEMPOTENCY_HEADER} must be 1-{MAX_IDEMPOTENCY_KEY} characters",
            field=IDEMPOTENCY_HEADER,
        )
    return key


def accept_task(body: Any, registry: Registry) -> Task:
    """A request body as a Task, checked before it is accepted: the schema, the plan (ids,
    dependencies, cycle, maxSteps), pinned models, inline attachments; 400 naming the field."""
    from polyroute.graph import validate_plan
    from polyroute.taskfile import materialize

    try:
        task = parse_task_body(body)
        if task.plan is not None:
            try:
                validate_plan(task.plan, task.constraints.max_steps)
            except PolyrouteError as exc:
                raise Refused(400, f"plan.steps: {exc}", field="plan.steps") from None
            for i, step in enumerate(task.plan.steps):
                if step.model is not None:
                    try:
                        registry.get(step.model)
                    except UnknownModelError as exc:
                        where = f"plan.steps.{i}.model"
                        raise Refused(400, f"{where}: {exc}", field=where) from None
        materialize(task.attachments)
    except InputError as exc:
        raise Refused(400, str(exc), field=field_of(str(exc))) from None
    return task
