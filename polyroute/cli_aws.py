"""``polyroute submit``: send a task file to the deployed API, signed with SigV4.

Credentials come from botocore's default chain (environment, profile, SSO, instance role);
the region from ``--region``, else the API's host name (``….execute-api.REGION.…``), else
``AWS_REGION``. Attachments given by path are sent inline, as the API requires. With
``--async`` the answer is the task's id; ``--wait`` then polls ``GET /v1/tasks/{id}`` until
the run ends. Exit codes are ``run``'s: 0 done, 2 a refused request or a setup problem (no
URL, no region, no credentials, or botocore missing: it comes with the ``aws`` extra), 3
stopped by a budget or the deadline, 1 anything else.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from polyroute.errors import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_STOPPED,
    ConfigError,
    InputError,
    PolyrouteError,
)

API_ENV = "POLYROUTE_API_URL"
AWS_EXTRA = "aws"
"""The optional-dependencies extra that brings botocore (through boto3)."""
_REGION_IN_HOST = re.compile(r"\.execute-api\.([a-z0-9-]+)\.amazonaws\.com")


def register(subparsers: Any) -> None:
    """Add ``submit`` to the CLI's subcommands."""
    p = subparsers.add_parser("submit", help="run a task on the deployed API (SigV4-signed)")
    p.add_argument("task", metavar="TASK.json")
    p.add_argument("--api", metavar="URL", help=f"the API's base URL (or ${API_ENV})")
    p.add_argument("--region", help="AWS region for signing (default: from the URL)")
    p.add_argument("--async", dest="run_async", action="store_true", help="start and return")
    p.add_argument("--wait", action="store_true", help="with --async: poll until it ends")
    p.add_argument("--poll-seconds", type=float, default=2.0, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print the TaskStatus as JSON")
    p.set_defaults(func=cmd_submit)


def task_body(path: str) -> dict[str, Any]:
    """The task file as a request body, with attachment paths replaced by inline data."""
    from polyroute.taskfile import load_task

    task = load_task(path)
    for att in task.attachments:
        if att.path is None:
            continue
        raw = Path(att.path).read_bytes()
        att.name = att.name or Path(att.path).name
        if att.kind == "image":
            att.data = base64.b64encode(raw).decode("ascii")
        else:
            att.data = raw.decode("utf-8", errors="replace")
        att.path = None
    body: dict[str, Any] = task.to_wire()
    return body


def region_for(url: str, given: str | None) -> str:
    """The region to sign for."""
    if given:
        return given
    match = _REGION_IN_HOST.search(url)
    if match:
        return match.group(1)
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region:
        raise ConfigError("submit: cannot tell the region from the URL; pass --region")
    return region


def require_botocore() -> None:
    """Refuse, in one line, to sign without botocore: a core install leaves it out."""
    try:
        import botocore.auth  # noqa: F401
    except ImportError:
        raise ConfigError(
            "submit: signing requests needs botocore, which a core install does not include;"
            f" install it with: pip install 'polyroute[{AWS_EXTRA}]'"
        ) from None


class SignedClient:
    """HTTP calls to the API, each signed with SigV4 for ``execute-api``."""

    def __init__(self, base_url: str, region: str, credentials: Any = None) -> None:
        self.base = base_url.rstrip("/")
        self.region = region
        require_botocore()
        if credentials is None:
            import botocore.session

            credentials = botocore.session.Session().get_credentials()
        if credentials is None:
            raise ConfigError(
                "submit: no AWS credentials found (environment, profile or role); "
                "the API needs SigV4-signed requests"
            )
        self.credentials = credentials

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        """Send one signed request; the status and the JSON body."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        request = AWSRequest(method=method, url=self.base + path, data=data, headers=headers)
        SigV4Auth(self.credentials.get_frozen_credentials(), "execute-api", self.region).add_auth(
            request
        )
        prepared = request.prepare()
        http = urllib.request.Request(
            prepared.url, data=data, method=method, headers=dict(prepared.headers.items())
        )
        try:
            with urllib.request.urlopen(http, timeout=60) as resp:
                return resp.status, _json(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, _json(exc.read())
        except urllib.error.URLError as exc:
            raise PolyrouteError(f"submit: cannot reach {self.base}: {exc.reason}") from None


def _json(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw or b"{}")
    except json.JSONDecodeError:
        return {"error": raw.decode("utf-8", "replace")[:200]}
    return data if isinstance(data, dict) else {"value": data}


def _refused(status: int, body: dict[str, Any]) -> PolyrouteError:
    message = body.get("error") or body.get("message") or body.get("Message") or "refused"
    text = f"submit: HTTP {status}: {message}"
    return InputError(text) if 400 <= status < 500 else PolyrouteError(text)


def submit(
    client: SignedClient,
    body: dict[str, Any],
    *,
    run_async: bool,
    wait: bool,
    poll_seconds: float = 2.0,
    timeout_s: float = 3600.0,
) -> dict[str, Any]:
    """POST the task; with ``wait``, poll until it is no longer running. The last answer."""
    status, answer = client.call("POST", "/v1/tasks" + ("?async=true" if run_async else ""), body)
    if status >= 400:
        raise _refused(status, answer)
    if status == 202 and (wait or not run_async):
        # Async and asked to wait, or a sync run that outlasted the API's wait.
        task_id = answer["taskId"]
        end = time.monotonic() + timeout_s
        while answer.get("status") == "running" and time.monotonic() < end:
            time.sleep(poll_seconds)
            status, answer = client.call("GET", f"/v1/tasks/{task_id}")
            if status >= 400:
                raise _refused(status, answer)
    return answer


def cmd_submit(args: argparse.Namespace) -> int:
    """``polyroute submit TASK.json``."""
    from polyroute.api import TaskAccepted, TaskStatus

    url = args.api or os.environ.get(API_ENV)
    if not url:
        raise ConfigError(f"submit: give the API's URL with --api or ${API_ENV}")
    client = SignedClient(url, region_for(url, args.region))
    answer = submit(
        client,
        task_body(args.task),
        run_async=args.run_async,
        wait=args.wait,
        poll_seconds=args.poll_seconds,
    )
    if args.json or "result" not in answer:
        print(json.dumps(answer, indent=2))
    if "location" in answer and answer.get("status") == "running" and not args.wait:
        TaskAccepted.model_validate(answer)
        return EXIT_OK
    status = TaskStatus.model_validate(answer)
    if status.result is not None and not args.json:
        from polyroute.render import render_run

        print(render_run(status.result))
    if status.status == "running":
        return EXIT_OK
    if status.result is not None and status.result.stop_reason in ("budget", "deadline"):
        return EXIT_STOPPED
    return EXIT_OK if status.status == "succeeded" else EXIT_FAILURE
