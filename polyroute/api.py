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

from polyroute.errors import InputError
from polyroute.registry import first_error
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
