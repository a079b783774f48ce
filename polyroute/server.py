"""``polyroute serve``: the HTTP API of :mod:`polyroute.api` on the local engine.

The routes, bodies and status codes are the deployed API Gateway's, so a client written
against one works against the other. What this module adds on top of the contract:

- **Validation before anything runs.** The body must be a ``Task`` (400 naming the field),
  at most ``MAX_BODY_BYTES`` (413); a given plan is checked (ids, dependencies, cycles,
  pinned models) and inline attachments are decoded before a task is accepted, so an async
  client hears about its mistake at once instead of polling a failure.
- **Idempotency-Key.** A POST carrying a key the store has seen with the same body does not
  run again: the first task is answered (202 with its id for an async request, 200 with its
  result for a sync one, after waiting for it if it is still running). The same key with a
  different body is refused with 422.
- **Task ids.** A ``taskId`` in the body names the task; one that already exists gets 409
  (GET it instead, or leave ``taskId`` out to have one made).
- **Durability.** Tasks live in a SQLite file (:mod:`polyroute.store`), so async results
  survive a restart; a task that was running when the server stopped is reported ``failed``
  with the reason, not re-run. As on the deployed API, a task is never reported ``running``
  when nothing can finish it: one recorded as running that this server is not running is
  answered, and recorded, as failed.
- **Auth.** With ``POLYROUTE_API_TOKEN`` set, ``/v1/*`` needs ``Authorization: Bearer
  <token>`` (401 otherwise). ``/healthz`` and ``/openapi.json`` stay open.

Starlette and uvicorn are imported here only (the ``serve`` extra), so the rest of the CLI
stays light.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import re
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from polyroute.api import (
    IDEMPOTENCY_HEADER,
    MAX_BODY_BYTES,
    MAX_IDEMPOTENCY_KEY,
    ApiError,
    Refused,
    TaskAccepted,
    TaskStatus,
    accept_task,
    check_idempotency_key,
    idempotency_conflict,
    request_fingerprint,
)
from polyroute.errors import InputError, PolyrouteError
from polyroute.schema import Task
from polyroute.store import ORPHANED_ERROR, StoredTask, TaskStore

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from polyroute.engine import Engine

log = logging.getLogger("polyroute.server")

TOKEN_ENV = "POLYROUTE_API_TOKEN"
DRAIN_BYTES = 32 * 1024 * 1024
SERVER_STOPPED_ERROR = "the server stopped while this task was running; submit it again"
_FIELD = re.compile(r"^([A-Za-z0-9_.\-]+): ")
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no", ""}


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class TaskService:
    """The API's behaviour, independent of the web framework: validate, run, store, answer."""

    def __init__(self, engine: Engine, store: TaskStore, token: str | None = None) -> None:
        self.engine = engine
        self.store = store
        self.token = token
        self.jobs: dict[str, asyncio.Task[None]] = {}
        interrupted = store.fail_interrupted()
        if interrupted:
            log.warning(
                "%d task(s) were running when the server stopped: marked failed", interrupted
            )

    # --- checks -----------------------------------------------------------------------------

    def check_auth(self, authorization: str | None) -> None:
        """401 unless the bearer token matches (when one is configured)."""
        if self.token is None:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self.token.encode()
        ):
            raise Refused(
                401,
                "missing or wrong bearer token (send 'Authorization: Bearer <token>')",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def validate(self, raw: bytes) -> tuple[Task, str]:
        """The body as a Task, and its fingerprint; 400 naming the field when it is not one."""
        try:
            data = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
        except UnicodeDecodeError:
            raise Refused(400, "body is not UTF-8 text") from None
        except json.JSONDecodeError as exc:
            raise Refused(
                400, f"body is not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})"
            ) from None
        except (ValueError, RecursionError) as exc:
            raise Refused(400, f"body is not valid JSON ({exc})") from None
        try:
            fingerprint = request_fingerprint(data)
        except UnicodeEncodeError:
            raise Refused(400, "body holds an unpaired surrogate escape, not Unicode") from None
        task = accept_task(data, self.engine.cfg.registry, self.engine.cfg.today)
        return task, fingerprint

    @staticmethod
    def check_key(key: str | None) -> str | None:
        """The Idempotency-Key, if any; 400 if it is empty or too long."""
        return check_idempotency_key(key)

    # --- the work ---------------------------------------------------------------------------

    async def submit(
        self, task: Task, fingerprint: str, key: str | None, wait: bool
    ) -> tuple[int, TaskAccepted | TaskStatus]:
        """Start (or find, by idempotency key) the task; answer 202 or, when ``wait``, 200."""
        if key is not None:
            first = self.store.by_idempotency_key(key)
            if first is not None:
                return await self._replay(first, key, fingerprint, wait)
        task_id = task.task_id or uuid.uuid4().hex[:16]
        if not self.store.create(task_id, fingerprint, key):
            first = self.store.by_idempotency_key(key) if key is not None else None
            if first is not None:
                return await self._replay(first, key or "", fingerprint, wait)
            raise Refused(
                409,
                f"taskId {task_id!r} already exists: GET /v1/tasks/{task_id} for it, or leave"
                " taskId out to have a new one made",
                field="taskId",
            )
        job = asyncio.ensure_future(self._run(task_id, task))
        self.jobs[task_id] = job
        job.add_done_callback(lambda _: self.jobs.pop(task_id, None))
        return await self._answer(task_id, wait)

    async def _replay(
        self, first: StoredTask, key: str, fingerprint: str, wait: bool
    ) -> tuple[int, TaskAccepted | TaskStatus]:
        if first.request_sha256 != fingerprint:
            raise Refused(422, idempotency_conflict(key, first.task_id), field=IDEMPOTENCY_HEADER)
        return await self._answer(first.task_id, wait)

    async def _answer(self, task_id: str, wait: bool) -> tuple[int, TaskAccepted | TaskStatus]:
        if not wait:
            where = f"/v1/tasks/{task_id}"
            return 202, TaskAccepted(task_id=task_id, location=where)
        job = self.jobs.get(task_id)
        if job is not None:
            # Shielded: a client that hangs up does not cancel the run it already paid for.
            await asyncio.shield(job)
        stored = self._current(task_id)
        if stored is None:  # pragma: no cover - rows are never deleted
            raise Refused(404, f"no task {task_id!r}", field="taskId")
        return 200, stored.to_status()

    def _current(self, task_id: str) -> StoredTask | None:
        """The stored task; one still ``running`` with no run of it in this server (its
        run is recorded before the job is dropped, so none can still finish it) is
        recorded failed first."""
        stored = self.store.get(task_id)
        if stored is not None and stored.status == "running" and task_id not in self.jobs:
            log.warning("task %s is recorded as running but nothing runs it: failed", task_id)
            self.store.fail_if_running(task_id, ORPHANED_ERROR)
            stored = self.store.get(task_id)
        return stored

    async def _run(self, task_id: str, task: Task) -> None:
        try:
            result = await self.engine.run(task, task_id=task_id)
        except asyncio.CancelledError:
            self.store.finish(task_id, "failed", None, SERVER_STOPPED_ERROR)
            raise
        except PolyrouteError as exc:
            self.store.finish(task_id, "failed", None, str(exc))
        except Exception as exc:
            log.exception("task %s failed unexpectedly", task_id)
            self.store.finish(task_id, "failed", None, f"internal error: {type(exc).__name__}")
        else:
            self.store.finish(task_id, result.status, result, None)

    def status(self, task_id: str) -> TaskStatus:
        """A task's status; 404 if the id is unknown."""
        stored = self._current(task_id)
        if stored is None:
            raise Refused(404, f"no task with id {task_id!r}", field="taskId")
        return stored.to_status()

    async def shutdown(self) -> None:
        """Cancel running tasks (each is recorded as failed, with the reason)."""
        jobs = list(self.jobs.values())
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API, generated from the pydantic models."""
    from pydantic.json_schema import models_json_schema

    _, defs = models_json_schema(
        [
            (Task, "validation"),
            (TaskStatus, "serialization"),
            (TaskAccepted, "serialization"),
            (ApiError, "serialization"),
        ],
        by_alias=True,
        ref_template="#/components/schemas/{model}",
    )
    schemas: dict[str, Any] = defs.get("$defs", {})

    def ref(name: str) -> dict[str, Any]:
        return {"$ref": f"#/components/schemas/{name}"}

    def error(description: str) -> dict[str, Any]:
        return {
            "description": description,
            "content": {"application/json": {"schema": ref("ApiError")}},
        }

    auth = {"401": error("Missing or wrong bearer token (when the server has one).")}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "polyroute",
            "version": "1",
            "description": "Run AI tasks across several models. The same routes as the "
            "deployed API Gateway.",
        },
        "paths": {
            "/v1/tasks": {
                "post": {
                    "operationId": "submitTask",
                    "summary": "Run a task (sync), or start it (async=true) and poll its id.",
                    "parameters": [
                        {
                            "name": "async",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "boolean", "default": False},
                        },
                        {
                            "name": IDEMPOTENCY_HEADER,
                            "in": "header",
                            "required": False,
                            "description": "Retry safely: the same key and body answer the "
                            "first task instead of running it again.",
                            "schema": {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": MAX_IDEMPOTENCY_KEY,
                                "pattern": "^[\\x21-\\x7e]+$",
                            },
                        },
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": ref("Task")}},
                    },
                    "responses": {
                        "200": {
                            "description": "The finished task (sync).",
                            "content": {"application/json": {"schema": ref("TaskStatus")}},
                        },
                        "202": {
                            "description": "Accepted (async); poll the location.",
                            "headers": {"Location": {"schema": {"type": "string"}}},
                            "content": {"application/json": {"schema": ref("TaskAccepted")}},
                        },
                        "400": error("The body is not a valid task; the field is named."),
                        **auth,
                        "409": error("A task with this taskId already exists."),
                        "413": error(f"The body is larger than {MAX_BODY_BYTES} bytes."),
                        "422": error("The Idempotency-Key was used with a different body."),
                    },
                }
            },
            "/v1/tasks/{taskId}": {
                "get": {
                    "operationId": "getTask",
                    "summary": "A task's status and, once finished, its result.",
                    "parameters": [
                        {
                            "name": "taskId",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "minLength": 1},
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "The task.",
                            "content": {"application/json": {"schema": ref("TaskStatus")}},
                        },
                        **auth,
                        "404": error("No task with this id."),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "Liveness (local server only).",
                    "responses": {
                        "200": {
                            "description": "Up.",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {"status": {"const": "ok"}},
                                        "required": ["status"],
                                    }
                                }
                            },
                        }
                    },
                }
            },
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearerAuth": []}],
    }


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, at most ``limit`` bytes; 413 past that. An oversized body is still read (and
    dropped) up to ``DRAIN_BYTES``, so a client that sends it whole before reading the answer
    gets the 413 instead of a connection reset."""
    declared = request.headers.get("content-length")
    too_big = declared is not None and declared.isdigit() and int(declared) > limit
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        too_big = too_big or size > limit
        if not too_big:
            chunks.append(chunk)
        elif size > DRAIN_BYTES:
            break
    if not too_big:
        return b"".join(chunks)
    shown = f"{declared} bytes" if declared and declared.isdigit() else "larger than that"
    raise Refused(413, f"body is {shown}; the limit is {limit} bytes")


def _async_flag(value: str | None) -> bool:
    if value is None or value.lower() in _FALSE:
        return False
    if value.lower() in _TRUE:
        return True
    raise Refused(400, f"async: expected true or false, got {value!r}", field="async")


def create_app(
    engine: Engine,
    store: TaskStore,
    *,
    token: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> Starlette:
    """The ASGI app: the contract's routes, ``/openapi.json`` and ``/healthz``."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    service = TaskService(engine, store, token)
    document = openapi_document()

    def refused(exc: Refused) -> Response:
        return JSONResponse(exc.body.to_wire(), status_code=exc.status, headers=exc.headers)

    def guarded(
        handler: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def wrapper(request: Request) -> Response:
            try:
                return await handler(request)
            except Refused as exc:
                return refused(exc)

        return wrapper

    @guarded
    async def post_task(request: Request) -> Response:
        service.check_auth(request.headers.get("authorization"))
        wait = not _async_flag(request.query_params.get("async"))
        key = service.check_key(request.headers.get(IDEMPOTENCY_HEADER))
        task, fingerprint = service.validate(await _read_body(request, max_body_bytes))
        status, body = await service.submit(task, fingerprint, key, wait)
        headers = {"Location": body.location} if isinstance(body, TaskAccepted) else {}
        return JSONResponse(body.to_wire(), status_code=status, headers=headers)

    @guarded
    async def get_task(request: Request) -> Response:
        service.check_auth(request.headers.get("authorization"))
        return JSONResponse(service.status(request.path_params["task_id"]).to_wire())

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def openapi(request: Request) -> Response:
        return JSONResponse(document)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = {404: f"no route {request.url.path}", 405: "method not allowed"}.get(
            exc.status_code, str(exc.detail)
        )
        return JSONResponse(
            ApiError(error=message).to_wire(),
            status_code=exc.status_code,
            headers=dict(exc.headers or {}),
        )

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(ApiError(error="internal server error").to_wire(), status_code=500)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await service.shutdown()

    app = Starlette(
        routes=[
            Route("/v1/tasks", post_task, methods=["POST"]),
            Route("/v1/tasks/{task_id:str}", get_task, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )
    app.state.service = service
    return app


def serve(
    engine: Engine,
    store: TaskStore,
    *,
    host: str,
    port: int,
    token: str | None,
    insecure: bool = False,
) -> None:
    """Run the server until interrupted. Refuses a non-loopback host without a token."""
    if not is_loopback(host) and token is None and not insecure:
        raise InputError(
            f"serve: refusing to listen on {host} without {TOKEN_ENV} set "
            "(anyone who can reach it could spend your budget); set a token or pass --insecure"
        )
    try:
        import uvicorn
    except ImportError:
        raise InputError("serve: needs the 'serve' extra: pip install 'polyroute[serve]'") from None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host.strip("[]"), port), family=family)
    except OSError as exc:
        raise InputError(f"serve: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    bound = sock.getsockname()[1]
    app = create_app(engine, store, token=token)
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    print(
        f"polyroute serve: http://{shown}:{bound}  (POST /v1/tasks, GET /v1/tasks/ID, "
        f"/openapi.json; store {store.path}{'; bearer token required' if token else ''})",
        flush=True,
    )
    server = uvicorn.Server(uvicorn.Config(app, log_level="info"))
    server.run(sockets=[sock])
