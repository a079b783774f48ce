"""Assertions on the synthesized CloudFormation template."""

from __future__ import annotations

import json
from typing import Any, get_args

import pytest
from aws_cdk.assertions import Match
from pydantic import BaseModel

from infra.asl import load, placeholders
from infra.stack import ROLES, apigw_schema, task_request_model
from polyroute.schema import Task
from polyroute.secrets import is_placeholder

ROLE_HANDLERS = {f"{module}.handler" for module, _, _ in ROLES.values()}


def resources(template: Any, kind: str) -> dict[str, Any]:
    found: dict[str, Any] = template.find_resources(kind)
    return found


def test_seven_role_functions_plus_api_and_batch_on_arm64_python_with_tracing(
    synthesized: Any,
) -> None:
    _, _, template = synthesized
    functions = {
        k: f
        for k, f in resources(template, "AWS::Lambda::Function").items()
        if f["Properties"]["Handler"] != "index.handler"  # CDK's bucket-notification helper
    }
    handlers = {f["Properties"]["Handler"] for f in functions.values()}
    assert handlers >= ROLE_HANDLERS
    assert len(ROLE_HANDLERS) == 7
    assert handlers - ROLE_HANDLERS == {"api.handler", "batch.handler"}
    for fn in functions.values():
        props = fn["Properties"]
        assert props["Architectures"] == ["arm64"]
        assert props["Runtime"].startswith("python3.")
        assert int(props["Runtime"].split(".")[1]) >= 12
        assert props["TracingConfig"] == {"Mode": "Active"}
        env = props["Environment"]["Variables"]
        assert "POLYROUTE_BUCKET" in env and env["POWERTOOLS_SERVICE_NAME"] == "polyroute"


def test_the_orchestrator_is_an_express_workflow_with_logging_and_tracing(
    synthesized: Any,
) -> None:
    _, _, template = synthesized
    machines = resources(template, "AWS::StepFunctions::StateMachine")
    kinds = sorted(m["Properties"].get("StateMachineType", "STANDARD") for m in machines.values())
    assert kinds == ["EXPRESS", "STANDARD", "STANDARD"]
    for machine in machines.values():
        props = machine["Properties"]
        assert props["TracingConfiguration"] == {"Enabled": True}
        logging = props["LoggingConfiguration"]
        assert logging["Level"] == "ALL" and logging["IncludeExecutionData"] is True
        needed = placeholders(json.dumps(props["DefinitionString"]))
        assert needed <= set(props["DefinitionSubstitutions"]), needed
    express = next(
        m for m in machines.values() if m["Properties"].get("StateMachineType") == "EXPRESS"
    )
    definition = express["Properties"]["DefinitionString"]
    text = definition if isinstance(definition, str) else json.dumps(definition)
    assert "${ModelExecutorFunctionArn}" in text


def test_the_asl_files_placeholders_are_all_substituted(synthesized: Any) -> None:
    _, _, template = synthesized
    machines = resources(template, "AWS::StepFunctions::StateMachine").values()
    given = set().union(*(m["Properties"]["DefinitionSubstitutions"] for m in machines))
    assert placeholders(load("orchestrator")) <= given
    assert placeholders(load("batch")) <= given


def test_the_api_has_the_contracts_routes_with_iam_auth_and_body_validation(
    synthesized: Any,
) -> None:
    _, _, template = synthesized
    paths = {
        r["Properties"]["PathPart"]
        for r in resources(template, "AWS::ApiGateway::Resource").values()
    }
    assert paths == {"v1", "tasks", "{taskId}"}
    methods = resources(template, "AWS::ApiGateway::Method").values()
    verbs = sorted(m["Properties"]["HttpMethod"] for m in methods)
    assert verbs == ["GET", "POST"]
    for method in methods:
        assert method["Properties"]["AuthorizationType"] == "AWS_IAM"
        assert method["Properties"]["Integration"]["Type"] == "AWS_PROXY"
    post = next(m for m in methods if m["Properties"]["HttpMethod"] == "POST")
    assert "application/json" in post["Properties"]["RequestModels"]
    assert "RequestValidatorId" in post["Properties"]
    model = next(iter(resources(template, "AWS::ApiGateway::Model").values()))
    schema = model["Properties"]["Schema"]
    assert schema["$schema"].startswith("http://json-schema.org/draft-04")
    assert schema["required"] == ["description"]
    assert schema["additionalProperties"] is False
    assert "$ref" not in json.dumps(schema) and "$defs" not in schema
    template.has_resource_properties(
        "AWS::ApiGateway::RequestValidator", {"ValidateRequestBody": True}
    )
    responses = {
        r["Properties"]["ResponseType"]: r["Properties"]
        for r in resources(template, "AWS::ApiGateway::GatewayResponse").values()
    }
    assert {"BAD_REQUEST_BODY", "REQUEST_TOO_LARGE", "DEFAULT_4XX"} <= set(responses)
    bad_body = responses["BAD_REQUEST_BODY"]
    assert bad_body["StatusCode"] == "400"
    body = bad_body["ResponseTemplates"]["application/json"]
    assert '"error"' in body and '"field"' in body
    template.has_resource_properties(
        "AWS::ApiGateway::Stage", {"TracingEnabled": True, "AccessLogSetting": Match.any_value()}
    )


def test_an_upload_to_batches_and_a_schedule_start_the_batch_workflow(synthesized: Any) -> None:
    _, _, template = synthesized
    rules = list(resources(template, "AWS::Events::Rule").values())
    upload = next(r for r in rules if "EventPattern" in r["Properties"])
    pattern = upload["Properties"]["EventPattern"]
    assert pattern["source"] == ["aws.s3"] and pattern["detail-type"] == ["Object Created"]
    assert pattern["detail"]["object"]["key"] == [{"wildcard": "batches/*.jsonl"}]
    schedule = next(r for r in rules if "ScheduleExpression" in r["Properties"])
    assert schedule["Properties"]["ScheduleExpression"] == "rate(1 day)"
    for rule in (upload, schedule):
        target = rule["Properties"]["Targets"][0]
        assert "BatchWorkflow" in json.dumps(target["Arn"])
    template.has_resource_properties(
        "Custom::S3BucketNotifications",
        {"NotificationConfiguration": {"EventBridgeConfiguration": {}}},
    )


def test_the_spill_bucket_is_encrypted_private_tls_only_logged_and_expires(
    synthesized: Any,
) -> None:
    _, _, template = synthesized
    buckets = resources(template, "AWS::S3::Bucket")
    spill = next(b for k, b in buckets.items() if k.startswith("SpillBucket"))
    props = spill["Properties"]
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert "LoggingConfiguration" in props
    prefixes = {r.get("Prefix") for r in props["LifecycleConfiguration"]["Rules"]}
    assert {
        "spill/",
        "batch-work/",
        "results/",
        "idempotency/",
        "batch-results/map-runs/",
    } <= prefixes
    policies = resources(template, "AWS::S3::BucketPolicy").values()
    assert len(policies) == 2
    for policy in policies:
        denies = [
            s for s in policy["Properties"]["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"
        ]
        assert any(s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} for s in denies)


def test_model_api_keys_are_secrets_only_the_model_calling_functions_read(
    synthesized: Any,
) -> None:
    _, _, template = synthesized
    assert len(resources(template, "AWS::SecretsManager::Secret")) == 2
    policies = resources(template, "AWS::IAM::Policy")
    readers = {
        name.split("ServiceRole")[0]
        for name, p in policies.items()
        if "secretsmanager:GetSecretValue" in json.dumps(p["Properties"]["PolicyDocument"])
    }
    assert readers == {"ClassifierFunction", "PlannerFunction", "ModelExecutorFunction"}
    # and only they are told where the keys are
    for name, fn in resources(template, "AWS::Lambda::Function").items():
        names = fn["Properties"].get("Environment", {}).get("Variables", {})
        told = any(v.startswith("POLYROUTE_SECRET_") for v in names)
        assert told == (name.split("Function")[0] in ("Classifier", "Planner", "ModelExecutor"))


def test_provider_secrets_start_as_the_placeholder_polyroute_reads_as_no_key(
    synthesized: Any,
) -> None:
    """A generated random value would be sent to the vendor as a key (401 on every call)."""
    _, _, template = synthesized
    values = sorted(
        s["Properties"].get("SecretString")
        for s in resources(template, "AWS::SecretsManager::Secret").values()
    )
    assert values == ["REPLACE_WITH_ANTHROPIC_API_KEY", "REPLACE_WITH_OPENAI_API_KEY"]
    for secret in resources(template, "AWS::SecretsManager::Secret").values():
        assert "GenerateSecretString" not in secret["Properties"]
    assert all(is_placeholder(v) for v in values)


def test_the_shared_breaker_table_is_read_by_routing_and_written_only_by_the_executor(
    synthesized: Any,
) -> None:
    _, _, template = synthesized
    template.has_resource_properties(
        "AWS::DynamoDB::Table",
        {
            "BillingMode": "PAY_PER_REQUEST",
            "KeySchema": [
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
            "TimeToLiveSpecification": {"AttributeName": "expiresAt", "Enabled": True},
            "SSESpecification": {"SSEEnabled": True},
        },
    )
    policies = resources(template, "AWS::IAM::Policy")

    def roles_with(action: str) -> set[str]:
        return {
            name.split("ServiceRole")[0]
            for name, p in policies.items()
            if action in json.dumps(p["Properties"]["PolicyDocument"])
        }

    callers = {"ClassifierFunction", "PlannerFunction", "ModelExecutorFunction"}
    assert roles_with("dynamodb:Query") == {"SchedulerFunction", "RouterFunction", *callers}
    assert roles_with("dynamodb:UpdateItem") == callers
    functions = resources(template, "AWS::Lambda::Function")
    with_table = {
        name
        for name, f in functions.items()
        if "POLYROUTE_BREAKER_TABLE" in f["Properties"].get("Environment", {}).get("Variables", {})
    }
    assert {name.rstrip("0123456789ABCDEF") for name in with_table} == {
        "SchedulerFunction",
        "RouterFunction",
        *callers,
    }


# --- the API's request model: both spellings, as `polyroute serve` accepts them ----------------


def task_model_schema(template: Any) -> dict[str, Any]:
    models = resources(template, "AWS::ApiGateway::Model")
    task = next(m for m in models.values() if m["Properties"].get("Name") == "Task")
    schema: dict[str, Any] = task["Properties"]["Schema"]
    return schema


def nested_models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models inside a field's type (``list[Step]``, ``Plan | None``, …)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in nested_models(arg)]


def object_schemas(node: Any) -> list[dict[str, Any]]:
    """The object schemas a property's schema allows (through ``anyOf`` and ``items``)."""
    if not isinstance(node, dict):
        return []
    if "properties" in node:
        return [node]
    found = [s for branch in node.get("anyOf", []) for s in object_schemas(branch)]
    return found + object_schemas(node.get("items"))


def test_the_api_model_lists_both_spellings_of_every_property_at_every_level(
    synthesized: Any,
) -> None:
    _, _, template = synthesized
    schema = task_model_schema(template)
    # CloudFormation drops null values (the schema's ``"default": null``), nothing else.
    assert schema == without_nulls(task_request_model())
    checked: list[str] = []

    def check(model: type[BaseModel], node: dict[str, Any], where: str) -> None:
        assert node["additionalProperties"] is False, where  # unknown fields still refused
        props = node["properties"]
        expected = set()
        for name, info in model.model_fields.items():
            alias = info.alias or name
            expected |= {name, alias}
            assert name in props and alias in props, f"{where}: {alias} / {name}"
            assert props[name] == props[alias], f"{where}.{name}: the two spellings differ"
            for inner in nested_models(info.annotation):
                (sub,) = object_schemas(props[alias])
                check(inner, sub, f"{where}.{alias}")
        assert set(props) == expected, f"{where}: {sorted(set(props) - expected)}"
        checked.append(model.__name__)

    check(Task, schema, "Task")
    assert sorted(set(checked)) == ["Attachment", "Constraints", "Plan", "Step", "Task"]
    assert {"task_id", "max_steps", "depends_on", "use_attachments", "media_type"} <= {
        k for node in _all_objects(schema) for k in node["properties"]
    }


def without_nulls(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: without_nulls(v) for k, v in node.items() if v is not None}
    if isinstance(node, list):
        return [without_nulls(v) for v in node]
    return node


def _all_objects(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, list):
        return [o for n in node for o in _all_objects(n)]
    if not isinstance(node, dict):
        return []
    own = [node] if "properties" in node else []
    return own + [o for v in node.values() for o in _all_objects(v)]


SNAKE_STEPS = [
    {"id": "a", "description": "first", "use_attachments": True, "max_output_tokens": 50},
    {"id": "b", "description": "second", "depends_on": ["a"]},
]


@pytest.mark.parametrize(
    ("body", "accepted"),
    [
        ({"description": "hi there", "task_id": "snake1", "constraints": {"max_steps": 3}}, True),
        ({"description": "hello", "taskId": "camel1", "constraints": {"maxSteps": 3}}, True),
        ({"description": "mixed", "taskId": "m", "constraints": {"max_cost_usd": 1.0}}, True),
        (
            {
                "description": "every level",
                "attachments": [{"kind": "document", "data": "text", "media_type": "text/plain"}],
                "constraints": {"max_token_budget": 900, "timeout_seconds": 60},
                "plan": {"steps": SNAKE_STEPS},
            },
            True,
        ),
        ({"description": "x", "colour": "blue"}, False),
        ({"description": "x", "task_idd": "t"}, False),
        ({"description": "x", "constraints": {"max_stepz": 3}}, False),
        ({"description": "x", "constraints": {"max_steps": 0}}, False),
        ({"description": "x", "constraints": {"max_cost_usd": 0}}, False),
        ({"description": "x", "plan": {"steps": [{"id": "a", "description": "a", "depends": []}]}},
         False),
        ({"description": "x", "attachments": [{"kind": "image", "data": "e", "mime": "x"}]}, False),
        ({"task_id": "no description"}, False),
    ],
)  # fmt: skip
def test_the_api_model_admits_what_serve_accepts_and_refuses_unknown_fields(
    synthesized: Any, body: dict[str, Any], accepted: bool
) -> None:
    from polyroute.api import Refused, accept_task
    from polyroute.registry import load_registry

    from ..contract.gateway import draft4

    _, _, template = synthesized
    errors = [e.message for e in draft4(task_model_schema(template)).iter_errors(body)]
    assert (not errors) is accepted, errors
    try:
        accept_task(body, load_registry())
        serve_accepts = True
    except Refused:
        serve_accepts = False
    assert serve_accepts is accepted  # the deployed API and `polyroute serve` agree


def test_a_required_property_may_come_in_either_spelling() -> None:
    from polyroute.schema import WireModel

    from ..contract.gateway import draft4

    class Inner(WireModel):
        step_count: int

    class Outer(WireModel):
        inner_part: Inner
        note: str | None = None

    schema = apigw_schema(
        Outer.model_json_schema(by_alias=True), Outer.model_json_schema(by_alias=False)
    )
    validator = draft4(schema)

    def ok(body: dict[str, Any]) -> bool:
        return not list(validator.iter_errors(body))

    assert ok({"innerPart": {"stepCount": 1}}) and ok({"inner_part": {"step_count": 1}})
    assert ok({"inner_part": {"stepCount": 1}, "note": "n"})
    assert not ok({}) and not ok({"innerPart": {}}) and not ok({"innerPart": {"steps": 1}})
    assert not ok({"innerPart": {"stepCount": 1}, "notes": "n"})
