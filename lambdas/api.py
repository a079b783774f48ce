"""The Api function: API Gateway (REST, Lambda proxy) in front of Step Functions, speaking
exactly ``polyroute.api``'s contract, as ``polyroute serve`` does locally.

- ``POST /v1/tasks``: validated (400 naming the field, 413 over the size limit, 409 for a
  ``taskId`` that exists, or that Step Functions still holds as an execution name), then
  run on the Express orchestrator with StartSyncExecution: 200 with a ``TaskStatus``. A run
  still going after ``POLYROUTE_SYNC_TIMEOUT_S`` (API Gateway stops waiting at 29 s) is
  answered 202 with its id; it finishes and is recorded.
- ``POST /v1/tasks?async=true``: started, 202 with ``TaskAccepted`` and a ``Location``. A task
  whose deadline fits Express's 5 minutes runs there; any other runs on the Standard one.
- Every run on Express gets a deadline ``EXPRESS_LIMIT_S`` after it is accepted (or its own,
  if earlier), so it ends ``partial`` (stop reason ``deadline``) and is recorded, instead of
  being stopped by Step Functions at 5 minutes with nothing recorded.
- ``GET /v1/tasks/{taskId}``: 200 with the recorded ``TaskStatus``, 404 if unknown. A run
  recorded as running on Express well past Express's limit was stopped by Step Functions: it
  is answered, and recorded, as failed (``ExecutionTimedOut``).
- ``Idempotency-Key`` on a POST, as ``polyroute serve`` has it: the same key and body answer
  the first task (202 with its id, or 200 with its recorded status, not a second run); the
  same key with another body is 422. Keys live in the bucket (``idempotency/``), claimed
  with a conditional put so two racing retries start one execution.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from polyroute_runtime import clients, logger, results, tracer, workflow

from polyroute.api import (
    IDEMPOTENCY_HEADER,
    MAX_BODY_BYTES,
    MAX_RESPONSE_BYTES,
    Refused,
    TaskAccepted,
    TaskStatus,
    accept_task,
    check_idempotency_key,
    check_task_id,
    fits_express,
    for_express,
    idempotency_conflict,
    is_task_id,
    request_fingerprint,
    timed_out_on_express,
)
from polyroute.awsclient import error_code
from polyroute.schema import RunResult, Task
from polyroute.spill import Spiller
from polyroute.workflow import IdempotencyRecord, IdempotencyStore, ResultStore

REPLAY_POLL_S = 0.5  # a retried sync request waits for the first run at this interval
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no", ""}
PRESIGN_EXPIRES_S = 3600  # a left-out output's link (at most as long as the role's session)
# On a running record (S3 object metadata, as TaskStatus has no place for it): which workflow
# runs the task, so a GET can tell an Express run Step Functions stopped at 5 minutes.
WORKFLOW_METADATA = "polyroute-workflow"


def respond(status: int, body: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """An API Gateway proxy response."""
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json", **(headers or {})},
        "body": json.dumps(body.to_wire() if hasattr(body, "to_wire") else body),
    }


def _escaped_bytes(value: Any) -> int:
    """What ``value`` adds to the Lambda response: its JSON, escaped again inside the proxy
    response's ``body`` string."""
    return len(json.dumps(json.dumps(value)).encode()) - 2


def answer_status(
    status: TaskStatus, store: ResultStore, limit: int = MAX_RESPONSE_BYTES
) -> dict[str, Any]:
    """``respond(200, status)``, kept under Lambda's 6 MB response limit (past it API Gateway
    answers 502): when the answer would pass ``limit`` bytes, the largest step outputs
    (``handoff.completedSteps[].result``), largest first, and if need be the task's text
    (``handoff.originalTask``), are replaced by a note naming their size and linking the
    whole recorded result (``results/<taskId>.json``, a presigned URL). Shapes are kept."""
    answer = respond(200, status)
    size = len(json.dumps(answer).encode())
    if status.result is None or size <= limit:
        return answer
    key = store.key(status.task_id)
    url = store.client.generate_presigned_url(
        "get_object", Params={"Bucket": store.bucket, "Key": key}, ExpiresIn=PRESIGN_EXPIRES_S
    )

    def note(value: Any) -> str:
        text = value if isinstance(value, str) else json.dumps(value)
        return (
            f"[left out: {len(text.encode())} bytes, more than the API can answer;"
            f" the whole result is s3://{store.bucket}/{key}, for an hour at {url}]"
        )

    handoff = status.result.handoff
    steps = list(handoff.completed_steps)
    wire = [step.to_wire()["result"] for step in steps]
    order = sorted(range(len(steps)), key=lambda i: _escaped_bytes(wire[i]), reverse=True)
    original_task = handoff.original_task
    for i in [*order, None]:
        if i is None:
            size -= _escaped_bytes(original_task)
            original_task = note(original_task)
            size += _escaped_bytes(original_task)
        else:
            steps[i] = steps[i].model_copy(update={"result": note(wire[i])})
            size += _escaped_bytes(steps[i].result) - _escaped_bytes(wire[i])
        if size > limit and i is not None:
            continue
        handoff = handoff.model_copy(
            update={"completed_steps": steps, "original_task": original_task}
        )
        result = status.result.model_copy(update={"handoff": handoff})
        answer = respond(200, status.model_copy(update={"result": result}))
        size = len(json.dumps(answer).encode())
        if size <= limit:
            break
    logger.info(
        "result too large to answer whole; large outputs left out",
        extra={"id": status.task_id, "bytes": size},
    )
    return answer


def _async_flag(params: dict[str, str] | None) -> bool:
    value = (params or {}).get("async")
    if value is None or value.lower() in _FALSE:
        return False
    if value.lower() in _TRUE:
        return True
    raise Refused(400, f"async: expected true or false, got {value!r}", field="async")


def _header(event: dict[str, Any], name: str) -> str | None:
    """A request header, whatever the case API Gateway passed its name in."""
    for key, value in (event.get("headers") or {}).items():
        if key.lower() == name.lower():
            return str(value)
    return None


def idempotency_key(event: dict[str, Any]) -> str | None:
    """The Idempotency-Key, if any; 400 if it is empty or too long."""
    return check_idempotency_key(_header(event, IDEMPOTENCY_HEADER))


def validate(event: dict[str, Any], models: Any) -> tuple[Task, str]:
    """The request body as a Task, checked as ``polyroute serve`` checks it, and the body's
    fingerprint (for Idempotency-Key)."""
    raw = event.get("body") or ""
    data = base64.b64decode(raw) if event.get("isBase64Encoded") else raw.encode()
    if len(data) > MAX_BODY_BYTES:
        raise Refused(413, f"body is {len(data)} bytes; the limit is {MAX_BODY_BYTES}")
    try:
        body = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise Refused(400, f"body is not valid JSON ({exc})") from None
    try:
        fingerprint = request_fingerprint(body)
    except UnicodeEncodeError:
        raise Refused(400, "body holds an unpaired surrogate escape, not Unicode") from None
    task = accept_task(body, models)
    return task, fingerprint


def task_exists(task_id: str) -> Refused:
    """The 409 for a ``taskId`` that has a recorded status."""
    return Refused(
        409,
        f"taskId {task_id!r} already exists: GET /v1/tasks/{task_id} for it, or leave"
        " taskId out to have a new one made",
        field="taskId",
    )


def task_id_used_before(task_id: str) -> Refused:
    """The 409 for a ``taskId`` Step Functions still holds as an execution name: results are
    kept 30 days, a Standard workflow's execution names 90."""
    return Refused(
        409,
        f"taskId {task_id!r} was used before (Step Functions keeps a workflow's execution"
        " names for 90 days, longer than results are kept): leave taskId out to have a new"
        " one made, or choose another",
        field="taskId",
    )


def record_running(store: ResultStore, task_id: str, now: datetime, workflow: str) -> None:
    """Record a task as running on ``workflow`` (``express`` or ``standard``). The put is
    conditional: of two requests racing with one new ``taskId``, the second gets 409, so
    the record is this request's own."""
    status = TaskStatus(task_id=task_id, status="running", created_at=now, updated_at=now)
    body = json.dumps(status.to_wire(), separators=(",", ":")).encode()
    if not store.put_new(store.key(task_id), body, Metadata={WORKFLOW_METADATA: workflow}):
        raise task_exists(task_id)


def recorded_workflow(store: ResultStore, task_id: str) -> str | None:
    """The workflow a running record says runs its task (None for a record without it)."""
    head = store.head(store.key(task_id))
    if head is None:
        return None
    value = (head.get("Metadata") or {}).get(WORKFLOW_METADATA)
    return str(value) if value is not None else None


def current_status(store: ResultStore, task_id: str, now: datetime) -> TaskStatus | None:
    """The recorded status of a task, or None. A run recorded as running on Express well
    past Express's limit was stopped by Step Functions (an uncatchable timeout, so
    RecordFailure never ran): it is answered as failed, and that is recorded."""
    status = store.get(task_id)
    if status is None:
        return None
    failed = timed_out_on_express(status, now)
    if failed is None or recorded_workflow(store, task_id) != "express":
        return status
    logger.warning(
        "Express run stopped at its time limit; recording it failed", extra={"id": task_id}
    )
    store.put(failed)
    return failed


def _accepted(task_id: str) -> dict[str, Any]:
    location = f"/v1/tasks/{task_id}"
    return respond(202, TaskAccepted(task_id=task_id, location=location), {"Location": location})


def replay(
    first: IdempotencyRecord,
    key: str,
    fingerprint: str,
    wait: bool,
    *,
    store: ResultStore,
    env: dict[str, str],
    now: datetime,
    sleep: Callable[[float], None],
) -> dict[str, Any]:
    """Answer a retried request with its first task: 202 with the id, or (sync) 200 with
    the recorded status once it has finished; 422 if the body is not the first one."""
    if first.request_sha256 != fingerprint:
        raise Refused(422, idempotency_conflict(key, first.task_id), field=IDEMPOTENCY_HEADER)
    if not wait:
        return _accepted(first.task_id)
    # As the first request would: wait for the run up to the API's limit, then answer 202.
    polls = int(float(env.get("POLYROUTE_SYNC_TIMEOUT_S", "25")) / REPLAY_POLL_S)
    for attempt in range(polls + 1):
        status = current_status(store, first.task_id, now)
        if status is None:  # the first request failed before recording its task
            raise Refused(404, f"no task with id {first.task_id!r}", field="taskId")
        if status.status != "running":
            return answer_status(status, store)
        if attempt < polls:
            sleep(REPLAY_POLL_S)
    return _accepted(first.task_id)


def post_task(
    event: dict[str, Any],
    *,
    sfn: Any,
    store: ResultStore,
    spiller: Spiller,
    models: Any,
    env: dict[str, str],
    now: datetime,
    keys: IdempotencyStore | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """``POST /v1/tasks``: validate, record, start; answer 200, 202 or an error."""
    wait = not _async_flag(event.get("queryStringParameters"))
    key = idempotency_key(event)
    task, fingerprint = validate(event, models)
    keys = keys or IdempotencyStore(store.bucket, store.client)
    if key is not None:
        first = keys.get(key)
        if first is not None:
            return replay(first, key, fingerprint, wait, store=store, env=env, now=now, sleep=sleep)
    task_id = task.task_id or uuid.uuid4().hex[:16]
    check_task_id(task_id)
    if store.get(task_id) is not None:
        raise task_exists(task_id)
    if key is not None:
        record = IdempotencyRecord(request_sha256=fingerprint, task_id=task_id)
        winner = keys.claim(key, record)
        if winner is not None:  # a concurrent retry claimed the key first: it runs the task
            return replay(
                winner, key, fingerprint, wait, store=store, env=env, now=now, sleep=sleep
            )
    # A sync call always runs on Express (StartSyncExecution); an async one when it fits.
    express = wait or fits_express(task, now)
    record_running(store, task_id, now, "express" if express else "standard")
    sent = for_express(task, now) if express else task
    payload = json.dumps({"task": spiller.maybe_spill(sent.to_wire(), "task"), "taskId": task_id})
    machine = env["POLYROUTE_EXPRESS_ARN" if express else "POLYROUTE_STANDARD_ARN"]
    accepted = _accepted(task_id)
    try:
        if not wait:
            sfn.start_execution(stateMachineArn=machine, name=task_id, input=payload)
            return accepted
        out = sfn.start_sync_execution(stateMachineArn=machine, name=task_id, input=payload)
    except Exception as exc:
        # Only a read timeout means the run started: a connect timeout (or any other error)
        # started nothing, and must not be answered 202 with an id that never runs.
        if wait and type(exc).__name__ == "ReadTimeoutError":
            logger.info("sync run outlasted the API's wait; answering 202", extra={"id": task_id})
            return accepted
        # Nothing started: free the key, so a retry with it starts the task instead of
        # answering a run that never was.
        if key is not None:
            keys.release(key)
        if error_code(exc) == "ExecutionAlreadyExists":
            # The id named an execution whose result has expired: a client mistake, not a
            # failed run. The running record is this request's own (a conditional put).
            store.client.delete_object(Bucket=store.bucket, Key=store.key(task_id))
            raise task_id_used_before(task_id) from None
        store.put(
            TaskStatus(
                task_id=task_id,
                status="failed",
                error=f"could not start: {type(exc).__name__}",
                created_at=now,
                updated_at=now,
            )
        )
        raise
    if out.get("status") == "SUCCEEDED":
        result = RunResult.model_validate(spiller.resolve(json.loads(out["output"])))
        status = TaskStatus(
            task_id=task_id,
            status=result.status,
            result=result,
            created_at=now,
            updated_at=result.finished_at,
        )
    else:
        error = f"{out.get('error') or out.get('status')}: {out.get('cause') or ''}".strip(": ")
        status = store.get(task_id) or TaskStatus(task_id=task_id, status="failed")
        if status.status == "running":
            status = TaskStatus(
                task_id=task_id, status="failed", error=error, created_at=now, updated_at=now
            )
            store.put(status)
    return answer_status(status, store)


def get_task(event: dict[str, Any], store: ResultStore, now: datetime) -> dict[str, Any]:
    """``GET /v1/tasks/{taskId}``."""
    task_id = (event.get("pathParameters") or {}).get("taskId") or ""
    status = current_status(store, task_id, now) if is_task_id(task_id) else None
    if status is None:
        raise Refused(404, f"no task with id {task_id!r}", field="taskId")
    return answer_status(status, store)


def route(
    event: dict[str, Any],
    *,
    sfn: Any,
    store: ResultStore,
    spiller: Spiller,
    models: Any,
    env: dict[str, str],
    now: datetime,
    keys: IdempotencyStore | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Dispatch one API Gateway proxy event; client mistakes become their error answers."""
    method, resource = event.get("httpMethod"), event.get("resource")
    try:
        if resource == "/v1/tasks" and method == "POST":
            return post_task(
                event,
                sfn=sfn,
                store=store,
                spiller=spiller,
                models=models,
                env=env,
                now=now,
                keys=keys,
                sleep=sleep,
            )
        if resource == "/v1/tasks/{taskId}" and method == "GET":
            return get_task(event, store, now)
        raise Refused(404, f"no route {method} {event.get('path') or resource}")
    except Refused as exc:
        return respond(exc.status, exc.body)


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    store = results()
    if store is None:
        raise RuntimeError("POLYROUTE_BUCKET is not set")
    wf = workflow()
    return route(
        event,
        sfn=clients()["stepfunctions"],
        store=store,
        spiller=wf.spiller,
        models=wf.cfg.registry,
        env=dict(os.environ),
        now=datetime.now(UTC),
    )
