"""The Api function against polyroute.api's contract: moto S3 for the recorded statuses, a
fake Step Functions client for the executions."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from polyroute.api import MAX_BODY_BYTES, TASK_ID_ERROR
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

        def call(
            event: dict[str, Any], sfn: FakeSfn | None = None, now: datetime = NOW
        ) -> dict[str, Any]:
            answer: dict[str, Any] = module.route(
                event,
                sfn=sfn or FakeSfn(),
                store=store,
                spiller=spiller,
                models=load_registry(),
                env=ENV,
                now=now,
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


LAMBDA_REQUEST_LIMIT = 6_291_456  # bytes of invocation event Lambda accepts


def test_a_body_at_the_limit_still_fits_lambdas_request_once_escaped_in_the_event() -> None:
    """The worst a valid JSON body escapes to: every byte a quote, backslash or newline
    (two bytes each in the proxy event's ``body`` string)."""
    text = '"\\\n' * ((MAX_BODY_BYTES - 100) // 6)  # a quote, a backslash, a newline
    body = json.dumps({"description": text})  # each of them two bytes here
    body += "\n" * (MAX_BODY_BYTES - len(body.encode()))  # whitespace, two bytes escaped
    assert len(body.encode()) == MAX_BODY_BYTES
    event = post(None, raw=body)
    event["headers"] = {f"X-Header-{i}": "v" * 100 for i in range(80)}  # ~10 KB of headers
    event["multiValueHeaders"] = {k: [v] for k, v in event["headers"].items()}
    event["requestContext"] = {"padding": "r" * 4096}
    assert len(json.dumps(event, ensure_ascii=False).encode()) < LAMBDA_REQUEST_LIMIT


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


# --- Idempotency-Key ---------------------------------------------------------------------------


def keyed(event: dict[str, Any], key: str) -> dict[str, Any]:
    return {**event, "headers": {"Idempotency-Key": key}}


def test_a_retried_async_post_with_its_key_answers_the_first_task_without_a_new_run(
    api: Any,
) -> None:
    sfn = FakeSfn()
    body = {"description": "Summarise this."}
    first = api(keyed(post(body, {"async": "true"}), "k-async"), sfn)
    again = api(keyed(post(body, {"async": "true"}), "k-async"), sfn)
    assert first["statusCode"] == again["statusCode"] == 202
    assert again["json"]["taskId"] == first["json"]["taskId"]
    assert again["headers"]["Location"] == f"/v1/tasks/{first['json']['taskId']}"
    assert len(sfn.started) == 1


def test_a_retried_sync_post_answers_the_recorded_result_without_a_new_run(api: Any) -> None:
    from polyroute.schema import RunResult

    class Finalizing(FakeSfn):
        """Records the result as the execution's Finalize state does."""

        def start_sync_execution(self, **kwargs: Any) -> dict[str, Any]:
            out = super().start_sync_execution(**kwargs)
            api.store.finished(kwargs["name"], RunResult.model_validate(run_result(kwargs["name"])))
            return out

    sfn = Finalizing()
    first = api(keyed(post({"description": "What is 2+2?"}), "k-sync"), sfn)
    # The header's name may arrive in any case.
    event = {**post({"description": "What is 2+2?"}), "headers": {"idempotency-key": "k-sync"}}
    again = api(event, sfn)
    assert first["statusCode"] == again["statusCode"] == 200
    assert again["json"]["taskId"] == first["json"]["taskId"]
    assert again["json"]["status"] == "succeeded"
    assert len(sfn.started) == 1


def test_key_order_does_not_make_a_different_body(api: Any) -> None:
    sfn = FakeSfn()
    api(keyed(post(None, {"async": "1"}, raw='{"description": "x", "taskId": "o1"}'), "k-o"), sfn)
    again = api(
        keyed(post(None, {"async": "1"}, raw='{"taskId": "o1", "description": "x"}'), "k-o"), sfn
    )
    assert again["statusCode"] == 202 and again["json"]["taskId"] == "o1"
    assert len(sfn.started) == 1


def test_the_same_key_with_another_body_is_422_and_starts_nothing(api: Any) -> None:
    sfn = FakeSfn()
    first = api(keyed(post({"description": "one"}, {"async": "true"}), "k-422"), sfn)
    answer = api(keyed(post({"description": "two"}, {"async": "true"}), "k-422"), sfn)
    assert answer["statusCode"] == 422
    assert answer["json"]["field"] == "Idempotency-Key"
    assert "different request body" in answer["json"]["error"]
    assert first["json"]["taskId"] in answer["json"]["error"]
    assert len(sfn.started) == 1


@pytest.mark.parametrize("key", ["", "   ", "k" * 256])
def test_an_empty_or_overlong_key_is_400(api: Any, key: str) -> None:
    sfn = FakeSfn()
    answer = api(keyed(post({"description": "x"}), key), sfn)
    assert answer["statusCode"] == 400 and answer["json"]["field"] == "Idempotency-Key"
    assert sfn.started == []


def test_the_key_is_stored_hashed_beside_the_results(api: Any) -> None:
    import hashlib

    api(keyed(post({"description": "x", "taskId": "stored"}, {"async": "1"}), "secret-key"))
    name = hashlib.sha256(b"secret-key").hexdigest()
    obj = api.store.client.get_object(Bucket="polyroute-test", Key=f"idempotency/{name}.json")
    record = json.loads(obj["Body"].read())
    assert record["taskId"] == "stored"
    assert record["schemaVersion"] == "1"
    assert len(record["requestSha256"]) == 64


def test_of_two_racing_requests_with_one_key_only_one_starts_a_run(api: Any) -> None:
    from polyroute.workflow import IdempotencyStore

    class Racing(IdempotencyStore):
        """Misses the first lookup, as a request does while another is claiming the key."""

        misses = 1

        def get(self, idempotency_key: str) -> Any:
            if self.misses:
                self.misses -= 1
                return None
            return super().get(idempotency_key)

    sfn = FakeSfn()
    body = {"description": "racing"}
    first = api(keyed(post(body, {"async": "true"}), "k-race"), sfn)
    late = api.module.route(
        keyed(post(body, {"async": "true"}), "k-race"),
        sfn=sfn,
        store=api.store,
        spiller=Spiller(S3Store("polyroute-test", client=api.store.client), 1024),
        models=load_registry(),
        env=ENV,
        now=NOW,
        keys=Racing("polyroute-test", api.store.client),
    )
    # The conditional put (IfNoneMatch) refuses the second claim; it answers the first task.
    assert late["statusCode"] == 202
    assert json.loads(late["body"])["taskId"] == first["json"]["taskId"]
    assert len(sfn.started) == 1


def test_a_sync_retry_waits_for_the_first_run_then_answers_202_if_it_is_still_going(
    api: Any,
) -> None:
    from polyroute.api import TaskStatus

    class ReadTimeoutError(Exception):
        pass

    api(
        keyed(post({"description": "slow", "taskId": "slow-k"}), "k-slow"),
        FakeSfn(ReadTimeoutError()),
    )
    slept: list[float] = []

    def call(sleep: Any) -> dict[str, Any]:
        return api.module.route(  # type: ignore[no-any-return]
            keyed(post({"description": "slow", "taskId": "slow-k"}), "k-slow"),
            sfn=FakeSfn(),
            store=api.store,
            spiller=Spiller(S3Store("polyroute-test", client=api.store.client), 1024),
            models=load_registry(),
            env={**ENV, "POLYROUTE_SYNC_TIMEOUT_S": "2"},
            now=NOW,
            sleep=sleep,
        )

    still = call(slept.append)
    assert still["statusCode"] == 202 and json.loads(still["body"])["taskId"] == "slow-k"
    assert slept and sum(slept) <= 2

    def finish(_: float) -> None:
        api.store.put(TaskStatus(task_id="slow-k", status="succeeded", created_at=NOW))

    done = call(finish)
    assert done["statusCode"] == 200 and json.loads(done["body"])["status"] == "succeeded"


def test_a_run_that_could_not_start_frees_its_key(api: Any) -> None:
    class ThrottlingError(Exception):
        pass

    class Throttled(FakeSfn):
        def start_execution(self, **kwargs: Any) -> dict[str, Any]:
            raise ThrottlingError("rate exceeded")

    event = keyed(post({"description": "x"}, {"async": "true"}), "k-free")
    with pytest.raises(ThrottlingError):
        api(event, Throttled())
    sfn = FakeSfn()
    again = api(event, sfn)
    assert again["statusCode"] == 202 and len(sfn.started) == 1


# --- Express's 5-minute limit ------------------------------------------------------------------


def sent_constraints(sfn: FakeSfn) -> dict[str, Any]:
    constraints: dict[str, Any] = json.loads(sfn.started[-1]["input"])["task"]["constraints"]
    return constraints


def test_a_sync_run_is_sent_with_a_deadline_inside_express_s_limit(api: Any) -> None:
    from polyroute.api import EXPRESS_LIMIT_S, EXPRESS_MAX_S

    sfn = FakeSfn()
    api(post({"description": "What is 2+2?"}), sfn)
    assert sfn.started[0]["stateMachineArn"] == "arn:express"
    deadline = datetime.fromisoformat(sent_constraints(sfn)["deadline"])
    assert deadline == NOW + timedelta(seconds=EXPRESS_LIMIT_S)
    assert EXPRESS_LIMIT_S < EXPRESS_MAX_S == 300


@pytest.mark.parametrize(
    ("own", "expected"),
    [
        (NOW + timedelta(seconds=90), NOW + timedelta(seconds=90)),  # earlier: kept
        (NOW + timedelta(hours=2), NOW + timedelta(seconds=280)),  # later: Express's
    ],
)
def test_a_sync_run_keeps_the_earlier_of_its_own_deadline_and_express_s(
    api: Any, own: datetime, expected: datetime
) -> None:
    sfn = FakeSfn()
    body = {"description": "x", "constraints": {"deadline": own.isoformat(), "timeoutSeconds": 600}}
    assert api(post(body), sfn)["statusCode"] == 200
    constraints = sent_constraints(sfn)
    assert datetime.fromisoformat(constraints["deadline"]) == expected
    assert constraints["timeoutSeconds"] == 600  # still applies, from the run's start


def test_an_async_run_on_express_gets_the_deadline_and_one_on_standard_does_not(
    api: Any,
) -> None:
    sfn = FakeSfn()
    api(post({"description": "x", "constraints": {"timeoutSeconds": 250}}, {"async": "1"}), sfn)
    assert sfn.started[-1]["stateMachineArn"] == "arn:express"
    assert sent_constraints(sfn)["deadline"] is not None
    api(post({"description": "x"}, {"async": "1"}), sfn)
    assert sfn.started[-1]["stateMachineArn"] == "arn:standard"
    assert sent_constraints(sfn)["deadline"] is None


class ReadTimeoutError(Exception):
    """What botocore raises when StartSyncExecution outlasts the client's read timeout."""


def test_a_run_still_recorded_running_past_express_s_limit_is_reported_failed(api: Any) -> None:
    from polyroute.api import EXPRESS_GRACE_S, EXPRESS_MAX_S

    # Answered 202 after the API's wait; then Express stopped it at 5 minutes, so neither
    # Finalize nor RecordFailure recorded anything.
    sfn = FakeSfn(ReadTimeoutError("Read timeout on endpoint URL"))
    assert api(post({"description": "slow", "taskId": "killed"}), sfn)["statusCode"] == 202
    limit = NOW + timedelta(seconds=EXPRESS_MAX_S + EXPRESS_GRACE_S)
    within = api(get("killed"), now=limit - timedelta(seconds=1))
    assert within["json"]["status"] == "running"  # Express may still be finishing it
    assert api.store.get("killed").status == "running"

    late = api(get("killed"), now=limit + timedelta(seconds=1))
    assert late["statusCode"] == 200
    assert set(late["json"]) == {"taskId", "status", "result", "error", "createdAt", "updatedAt"}
    assert late["json"]["status"] == "failed"
    assert late["json"]["error"].startswith("ExecutionTimedOut: Express workflows stop after")
    assert "\n" not in late["json"]["error"]
    assert late["json"]["createdAt"] == NOW.isoformat().replace("+00:00", "Z")
    # Recorded: the next reader sees it without correcting it again.
    stored = api.store.get("killed")
    assert stored.status == "failed" and stored.error == late["json"]["error"]
    assert stored.updated_at == limit + timedelta(seconds=1)
    again = api(get("killed"), now=limit + timedelta(hours=1))
    assert again["json"] == late["json"]


def test_a_standard_run_or_a_record_without_its_workflow_stays_running(api: Any) -> None:
    from polyroute.api import TaskStatus

    api(post({"description": "long", "taskId": "std"}, {"async": "true"}), FakeSfn())
    api.store.put(TaskStatus(task_id="old", status="running", created_at=NOW, updated_at=NOW))
    later = NOW + timedelta(hours=3)
    assert api(get("std"), now=later)["json"]["status"] == "running"
    assert api(get("old"), now=later)["json"]["status"] == "running"


def test_a_finished_express_run_is_never_rewritten(api: Any) -> None:
    from polyroute.schema import RunResult

    api(post({"description": "q", "taskId": "done"}), FakeSfn(ReadTimeoutError("timed out")))
    api.store.finished("done", RunResult.model_validate(run_result("done")))
    answer = api(get("done"), now=NOW + timedelta(days=1))
    assert answer["json"]["status"] == "succeeded" and answer["json"]["error"] is None


def test_a_sync_retry_of_a_run_express_stopped_answers_failed_without_waiting(api: Any) -> None:
    from polyroute.api import EXPRESS_GRACE_S, EXPRESS_MAX_S

    event = keyed(post({"description": "slow", "taskId": "killed-k"}), "k-killed")
    api(event, FakeSfn(ReadTimeoutError("timed out")))
    slept: list[float] = []
    later = NOW + timedelta(seconds=EXPRESS_MAX_S + EXPRESS_GRACE_S + 10)
    answer = api.module.route(
        event,
        sfn=FakeSfn(),
        store=api.store,
        spiller=Spiller(S3Store("polyroute-test", client=api.store.client), 1024),
        models=load_registry(),
        env=ENV,
        now=later,
        sleep=slept.append,
    )
    assert answer["statusCode"] == 200
    assert json.loads(answer["body"])["status"] == "failed"
    assert slept == []


@pytest.mark.parametrize("task_id", ["x/y?z", "has space", "é", "a" * 81])
def test_a_task_id_serve_would_refuse_is_refused_here_with_the_same_message(
    api: Any, task_id: str
) -> None:
    answer = api(post({"description": "x", "taskId": task_id}, {"async": "true"}))
    assert answer["statusCode"] == 400
    assert answer["json"] == {"error": TASK_ID_ERROR, "field": "taskId"}


def stubbed_sfn(operation: str, code: str) -> Any:
    """A real Step Functions client whose ``operation`` fails with ``code`` (botocore's
    Stubber: nothing is sent)."""
    import boto3
    from botocore.stub import Stubber

    client = boto3.client("stepfunctions", region_name="us-east-1")
    stubber = Stubber(client)
    stubber.add_client_error(operation, service_error_code=code, http_status_code=400)
    stubber.activate()
    return client


def test_a_task_id_whose_standard_execution_name_is_still_held_is_409_and_not_recorded(
    api: Any,
) -> None:
    """Results expire after 30 days, Standard execution names after 90: the id looks free,
    and StartExecution refuses it."""
    event = keyed(post({"description": "long", "taskId": "reused"}, {"async": "true"}), "k-re")
    answer = api(event, stubbed_sfn("start_execution", "ExecutionAlreadyExists"))
    assert answer["statusCode"] == 409
    assert answer["json"]["field"] == "taskId"
    assert answer["json"]["error"].startswith("taskId 'reused' was used before")
    assert "\n" not in answer["json"]["error"]
    # Not recorded as failed (nor left running), and the key is free for a new body.
    assert api.store.get("reused") is None
    assert api(get("reused"))["statusCode"] == 404
    from polyroute.workflow import IdempotencyStore

    assert IdempotencyStore("polyroute-test", api.store.client).get("k-re") is None


def test_another_start_error_is_still_recorded_as_could_not_start(api: Any) -> None:
    event = post({"description": "long", "taskId": "broken"}, {"async": "true"})
    with pytest.raises(Exception, match="ExecutionLimitExceeded"):
        api(event, stubbed_sfn("start_execution", "ExecutionLimitExceeded"))
    stored = api.store.get("broken")
    assert stored.status == "failed" and stored.error == "could not start: ExecutionLimitExceeded"


def test_a_task_id_recorded_between_the_check_and_the_start_is_409(api: Any) -> None:
    """Two requests racing with one new taskId: the running record is a conditional put, so
    the second neither starts a run nor overwrites the first's record."""
    api.module.record_running(api.store, "raced", NOW, "express")
    with pytest.raises(api.module.Refused) as refused:
        api.module.record_running(api.store, "raced", NOW, "standard")
    assert refused.value.status == 409 and refused.value.body.field == "taskId"
    assert api.module.recorded_workflow(api.store, "raced") == "express"


def big_result(task_id: str) -> dict[str, Any]:
    """A RunResult whose answer is over the response limit only once escaped: step a's
    output is 1.6 MB of text with quotes (each 4 bytes in the proxy response), step b's
    2.5 MB of plain text, step c's small."""
    result = run_result(task_id)
    done = {"model": "m", "action": "answered", "confidence": 1.0}
    done |= {"durationMs": 1, "tokensUsed": 1, "costUsd": 0.0}
    result["handoff"]["completedSteps"] = [
        {"agentId": "a", **done, "result": 'a"' * 800_000},
        {"agentId": "b", **done, "result": "b" * 2_500_000},
        {"agentId": "c", **done, "result": {"answer": 42}},
    ]
    return result


def check_fitted(answer: dict[str, Any], store: ResultStore, task_id: str) -> None:
    from polyroute.api import MAX_RESPONSE_BYTES, TaskStatus

    proxy = {k: v for k, v in answer.items() if k != "json"}
    assert answer["statusCode"] == 200
    assert len(json.dumps(proxy).encode()) <= MAX_RESPONSE_BYTES
    TaskStatus.model_validate(answer["json"])  # the contract's shape
    a, b, c = answer["json"]["result"]["handoff"]["completedSteps"]
    # The largest once escaped is left out, not the longest: one is enough.
    assert a["result"].startswith("[left out: 1600000 bytes,")
    assert f"s3://polyroute-test/results/{task_id}.json" in a["result"]
    assert f"/results/{task_id}.json?" in a["result"] and "Signature" in a["result"]
    assert b["result"] == "b" * 2_500_000 and c["result"] == {"answer": 42}
    # The link's object holds the whole result.
    whole = store.get(task_id)
    assert whole.result.handoff.completed_steps[0].result == 'a"' * 800_000


def test_a_get_whose_answer_would_pass_lambdas_response_limit_links_the_largest_output(
    api: Any,
) -> None:
    from polyroute.schema import RunResult

    api.store.finished("big", RunResult.model_validate(big_result("big")))
    check_fitted(api(get("big")), api.store, "big")


def test_a_sync_answer_over_the_response_limit_links_the_largest_output(api: Any) -> None:
    from polyroute.schema import RunResult

    class Finalized(FakeSfn):  # the finalizer records the result before the run returns
        def start_sync_execution(self, **kwargs: Any) -> dict[str, Any]:
            result = big_result(kwargs["name"])
            api.store.finished(kwargs["name"], RunResult.model_validate(result))
            return {"status": "SUCCEEDED", "output": json.dumps(result)}

    check_fitted(
        api(post({"description": "q", "taskId": "big-sync"}), Finalized()), api.store, "big-sync"
    )


def test_an_answer_under_the_response_limit_is_whole(api: Any) -> None:
    from polyroute.schema import RunResult

    result = big_result("whole")
    result["handoff"]["completedSteps"][0]["result"] = "a" * 1_000_000
    api.store.finished("whole", RunResult.model_validate(result))
    answer = api(get("whole"))
    assert [s["result"] for s in answer["json"]["result"]["handoff"]["completedSteps"]] == [
        "a" * 1_000_000,
        "b" * 2_500_000,
        {"answer": 42},
    ]
