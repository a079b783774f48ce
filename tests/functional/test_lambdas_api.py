"""The Api function against polyroute.api's contract: moto S3 for the recorded statuses, a
fake Step Functions client for the executions."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from polyroute.api import MAX_BODY_BYTES
from polyroute.registry import load_registry
from polyroute.spill import S3Store, Spiller
from polyroute.workflow import ResultStore

moto = pytest.importorskip("moto")

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
ENV = {"POLYROUTE_EXPRESS_ARN": "arn:express", "POLYROUTE_STANDARD_ARN": "arn:standard"}


def run_result(task_id: str) -> dict[str, Any]:
    """A minimal RunResult, as the finalizer returns it."""
    return {
        "taskId": task_id,
        "status": "succeeded",
        "steps": [],
        "totals": {},
        "baseline": {"model": "claude-opus-4-5", "costUsd": 0.0},
        "savingsPct": 0.0,
        "budgets": {"maxSteps": 20, "stepsUsed": 1},
        "handoff": {"taskId": task_id, "originalTask": "q"},
        "startedAt": NOW.isoformat(),
        "finishedAt": NOW.isoformat(),
    }


class FakeSfn:
    """Records executions; answers sync runs with a canned outcome."""

    def __init__(self, outcome: dict[str, Any] | Exception | None = None) -> None:
        self.outcome = outcome
        self.started: list[dict[str, Any]] = []

    def start_execution(self, **kwargs: Any) -> dict[str, Any]:
        self.started.append({"sync": False, **kwargs})
        return {"executionArn": f"arn:execution:{kwargs['name']}"}

    def start_sync_execution(self, **kwargs: Any) -> dict[str, Any]:
        self.started.append({"sync": True, **kwargs})
        if isinstance(self.outcome, Exception):
            raise self.outcome
        if self.outcome is not None:
            return self.outcome
        return {"status": "SUCCEEDED", "output": json.dumps(run_result(kwargs["name"]))}


@pytest.fixture
def api() -> Iterator[Any]:
    from polyroute.sfn_local import load_handlers

    load_handlers()
    import sys

    module = sys.modules["_polyroute_lambda_api"]
    with moto.mock_aws():
        import boto3

        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="polyroute-test")
        store = ResultStore("polyroute-test", s3)
        spiller = Spiller(S3Store("polyroute-test", client=s3), 1024)

        def call(event: dict[str, Any], sfn: FakeSfn | None = None) -> dict[str, Any]:
            answer: dict[str, Any] = module.route(
                event,
                sfn=sfn or FakeSfn(),
                store=store,
                spiller=spiller,
                models=load_registry(),
                env=ENV,
                now=NOW,
            )
            answer["json"] = json.loads(answer["body"])
            return answer

        call.store = store  # type: ignore[attr-defined]
        call.module = module  # type: ignore[attr-defined]
        yield call


def post(body: Any, query: dict[str, str] | None = None, raw: str | None = None) -> dict[str, Any]:
    return {
        "httpMethod": "POST",
        "resource": "/v1/tasks",
        "path": "/v1/tasks",
        "queryStringParameters": query,
        "isBase64Encoded": False,
        "body": raw if raw is not None else json.dumps(body),
    }


def get(task_id: str) -> dict[str, Any]:
    return {
        "httpMethod": "GET",
        "resource": "/v1/tasks/{taskId}",
        "pathParameters": {"taskId": task_id},
    }


def test_sync_post_runs_on_express_and_answers_200_with_the_result(api: Any) -> None:
    sfn = FakeSfn()
    answer = api(post({"description": "What is 2+2?", "taskId": "t1"}), sfn)
    assert answer["statusCode"] == 200
    assert answer["json"]["status"] == "succeeded"
    assert answer["json"]["result"]["taskId"] == "t1"
    assert [(c["sync"], c["stateMachineArn"], c["name"]) for c in sfn.started] == [
        (True, "arn:express", "t1")
    ]
    sent = json.loads(sfn.started[0]["input"])
    assert sent["taskId"] == "t1"
    assert sent["task"]["description"] == "What is 2+2?"


def test_async_post_answers_202_with_location_and_get_reads_the_status(api: Any) -> None:
    sfn = FakeSfn()
    body = {"description": "Summarise this.", "constraints": {"timeoutSeconds": 60}}
    answer = api(post(body, {"async": "true"}), sfn)
    assert answer["statusCode"] == 202
    task_id = answer["json"]["taskId"]
    assert answer["headers"]["Location"] == f"/v1/tasks/{task_id}" == answer["json"]["location"]
    assert answer["json"]["status"] == "running"
    assert sfn.started[0]["stateMachineArn"] == "arn:express"  # fits in 5 minutes
    status = api(get(task_id))
    assert status["statusCode"] == 200 and status["json"]["status"] == "running"


def test_an_async_task_without_a_short_deadline_runs_on_the_standard_workflow(api: Any) -> None:
    sfn = FakeSfn()
    answer = api(post({"description": "A long analysis."}, {"async": "1"}), sfn)
    assert answer["statusCode"] == 202
    assert sfn.started[0]["stateMachineArn"] == "arn:standard"
    assert sfn.started[0]["sync"] is False


def test_a_sync_run_that_outlasts_the_wait_is_answered_202(api: Any) -> None:
    class ReadTimeoutError(Exception):
        pass

    answer = api(post({"description": "slow", "taskId": "slow"}), FakeSfn(ReadTimeoutError("x")))
    assert answer["statusCode"] == 202
    assert answer["json"]["taskId"] == "slow"


@pytest.mark.parametrize(
    ("event", "status", "field"),
    [
        (post(None, raw="{not json"), 400, None),
        (post({"description": ""}), 400, "description"),
        (post({"description": "x", "colour": "red"}), 400, "colour"),
        (
            post({"description": "x", "attachments": [{"kind": "document", "path": "a.txt"}]}),
            400,
            "attachments.0.path",
        ),
        (
            post(
                {
                    "description": "x",
                    "plan": {
                        "steps": [
                            {"id": "a", "description": "a", "dependsOn": ["b"]},
                            {"id": "b", "description": "b", "dependsOn": ["a"]},
                        ]
                    },
                }
            ),
            400,
            "plan.steps",
        ),
        (
            post(
                {
                    "description": "x",
                    "plan": {"steps": [{"id": "a", "description": "a", "model": "no-such-model"}]},
                }
            ),
            400,
            "plan.steps.0.model",
        ),
        (post({"description": "x"}, {"async": "maybe"}), 400, "async"),
        (post({"description": "x", "taskId": "has space"}), 400, "taskId"),
        (get("unknown"), 404, "taskId"),
        (
            {"httpMethod": "DELETE", "resource": "/v1/tasks/{taskId}", "path": "/v1/tasks/x"},
            404,
            None,
        ),
    ],
)
def test_client_mistakes_get_their_status_and_one_line(
    api: Any, event: dict[str, Any], status: int, field: str | None
) -> None:
    answer = api(event)
    assert answer["statusCode"] == status
    assert answer["json"]["field"] == field
    assert "\n" not in answer["json"]["error"]


def test_the_cycle_is_named_in_the_400(api: Any) -> None:
    answer = api(
        post(
            {
                "description": "x",
                "plan": {
                    "steps": [
                        {"id": "a", "description": "a", "dependsOn": ["b"]},
                        {"id": "b", "description": "b", "dependsOn": ["a"]},
                    ]
                },
            }
        )
    )
    assert "cycle: a -> b -> a" in answer["json"]["error"]


def test_a_body_over_the_limit_is_413(api: Any) -> None:
    big = base64.b64encode(b"x" * (MAX_BODY_BYTES + 1)).decode()
    event = post(None, raw=big)
    event["isBase64Encoded"] = True
    assert api(event)["statusCode"] == 413


def test_an_existing_task_id_is_409(api: Any) -> None:
    assert api(post({"description": "x", "taskId": "dup"}))["statusCode"] == 200
    answer = api(post({"description": "x", "taskId": "dup"}))
    assert answer["statusCode"] == 409 and answer["json"]["field"] == "taskId"


def test_a_large_task_travels_to_step_functions_as_a_spill_reference(api: Any) -> None:
    sfn = FakeSfn()
    doc = {"kind": "document", "data": "word " * 5000, "name": "big.txt"}
    api(post({"description": "Summarise.", "attachments": [doc]}, {"async": "true"}), sfn)
    sent = json.loads(sfn.started[0]["input"])
    assert set(sent["task"]) == {"$ref", "sha256", "bytes"}
    assert len(sfn.started[0]["input"]) < 1024
