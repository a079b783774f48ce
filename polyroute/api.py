"""The HTTP API contract, shared by ``polyroute serve`` and the deployed API Gateway.

Routes (the same on both, so a client written against one works against the other):

- ``POST /v1/tasks``: run a task synchronously; 200 with a ``TaskStatus`` holding the result.
- ``POST /v1/tasks?async=true``: start it; 202 with ``TaskAccepted`` (its id).
- ``GET /v1/tasks/{id}``: 200 with ``TaskStatus``; 404 with ``ApiError`` for an unknown id.
- ``GET /healthz``: 200 ``{"status": "ok"}`` (local server only).

The request body is a ``Task``. Over HTTP, attachments carry inline ``data``: a server does not
read paths on its own disk. Client mistakes get 400 (the field named), 404, 409 or 413, never
500.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import date, datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError

from polyroute.errors import InputError, PolyrouteError
from polyroute.registry import Registry, first_error
from polyroute.schema import RunResult, Task, WireModel

MAX_BODY_BYTES = 3_000_000
"""The largest request body either API accepts (413 above it). Lambda takes at most
6,291,456 bytes for the whole invocation event, and API Gateway's proxy event carries the
body as a JSON string, where quotes, backslashes and newlines take two bytes each: a JSON
body of up to 3,000,000 bytes stays under 6,000,000 once escaped, and the remaining 291,456
bytes hold the headers and request context. A larger body could fail in Lambda before the
handler runs (a 5xx instead of this 413). ``polyroute serve`` keeps the same limit, so a
client written against one works against the other."""
MAX_RESPONSE_BYTES = 5_500_000
"""The largest API Gateway proxy response the deployed API returns (Lambda's response limit
is 6 MB; above it API Gateway answers 502). A larger result has its biggest step outputs
replaced by a note with a link to the whole recorded result."""
IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 255
TaskState = Literal["running", "succeeded", "partial", "failed"]
TASK_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,80}$")
"""A task id both APIs accept: it names a Step Functions execution (1-80 of these
characters) and is the last segment of the task's URL, so it needs no escaping there."""
TASK_ID_ERROR = "taskId: 1-80 ASCII letters, digits, '_', '.' or '-'"
EXPRESS_MAX_S = 300  # Step Functions stops an Express execution at 5 minutes, uncatchably
EXPRESS_LIMIT_S = 280  # a run on Express ends by then, leaving time to finish and record
EXPRESS_GRACE_S = 60  # past its limit plus this, nothing can still record an Express run
EXPRESS_TIMED_OUT_ERROR = (
    "ExecutionTimedOut: Express workflows stop after 5 minutes, and this run was stopped"
    " before it could record a result; send it with ?async=true to run it on the Standard"
    " workflow"
)


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


def is_task_id(task_id: str) -> bool:
    """True when ``task_id`` is one both APIs accept (``TASK_ID``)."""
    return TASK_ID.match(task_id) is not None


def check_task_id(task_id: str | None) -> None:
    """400 (field taskId) unless the id is absent or one both APIs accept: an id with '/',
    '?' or '#' would be accepted but could never be fetched at ``/v1/tasks/{id}``."""
    if task_id is not None and not is_task_id(task_id):
        raise Refused(400, TASK_ID_ERROR, field="taskId")


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


def accept_task(body: Any, registry: Registry, today: date | None = None) -> Task:
    """A request body as a Task, checked before it is accepted: the schema, the task id, the
    plan (ids, dependencies, cycle, maxSteps), inline attachments, and pinned models (known,
    and able to take their step on ``today``, by default the current date: the engines' own
    check); 400 naming the field."""
    from polyroute.graph import validate_plan
    from polyroute.planner import check_pins
    from polyroute.taskfile import materialize

    try:
        task = parse_task_body(body)
        check_task_id(task.task_id)
        if task.plan is not None:
            try:
                validate_plan(task.plan, task.constraints.max_steps)
            except PolyrouteError as exc:
                raise Refused(400, f"plan.steps: {exc}", field="plan.steps") from None
        mat = materialize(task.attachments)
        if task.plan is not None:
            check_pins(task.plan, registry, today or date.today(), len(mat.images))
    except InputError as exc:
        raise Refused(400, str(exc), field=field_of(str(exc))) from None
    return task


def fits_express(task: Task, now: datetime) -> bool:
    """True when the task's own deadline ends within an Express run's limit
    (``EXPRESS_LIMIT_S``), so an asynchronous task can run on the Express workflow."""
    limits: list[float] = []
    if task.constraints.timeout_seconds is not None:
        limits.append(task.constraints.timeout_seconds)
    if task.constraints.deadline is not None:
        limits.append((task.constraints.deadline - now).total_seconds())
    return bool(limits) and min(limits) <= EXPRESS_LIMIT_S


def for_express(task: Task, now: datetime) -> Task:
    """The task as it is sent to the Express workflow: its deadline is the earlier of its
    own and ``now + EXPRESS_LIMIT_S``, so the run stops starting steps and cuts calls in
    time to finish ``partial`` (stop reason ``deadline``) instead of being killed at 5
    minutes, when nothing records it. ``timeoutSeconds`` still applies on top."""
    limit = now + timedelta(seconds=EXPRESS_LIMIT_S)
    own = task.constraints.deadline
    if own is not None and own <= limit:
        return task
    constraints = task.constraints.model_copy(update={"deadline": limit})
    return task.model_copy(update={"constraints": constraints})


def for_express_later(task: Task) -> Task:
    """The task as a batch sends it to an Express child execution that starts later, at a
    time not known now: ``timeoutSeconds`` (counted from the run's own start) is cut to
    ``EXPRESS_LIMIT_S``, with the same effect as ``for_express``."""
    own = task.constraints.timeout_seconds
    if own is not None and own <= EXPRESS_LIMIT_S:
        return task
    constraints = task.constraints.model_copy(update={"timeout_seconds": float(EXPRESS_LIMIT_S)})
    return task.model_copy(update={"constraints": constraints})


def timed_out_on_express(status: TaskStatus, now: datetime) -> TaskStatus | None:
    """The failed status of an Express run still recorded ``running`` well past Express's
    limit (Step Functions stopped it, so neither Finalize nor RecordFailure ran), or None
    when the record may still be right."""
    if status.status != "running" or status.created_at is None:
        return None
    if now < status.created_at + timedelta(seconds=EXPRESS_MAX_S + EXPRESS_GRACE_S):
        return None
    return status.model_copy(
        update={"status": "failed", "error": EXPRESS_TIMED_OUT_ERROR, "updated_at": now}
    )
