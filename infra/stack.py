"""The polyroute stack: the spill bucket, the Lambda roles, the orchestrator (Express for
synchronous calls, Standard for long asynchronous ones), the batch workflow, the REST API and
the EventBridge rules. Only composition of AWS resources lives here."""

from __future__ import annotations

from typing import Any

from aws_cdk import ArnFormat, Duration, RemovalPolicy, SecretValue, Stack
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from infra import nag_suppressions
from infra.asl import ASL_DIR, batch_definition, definition_text
from infra.bundling import CORE_EXTRAS, RUNTIME, lambda_code
from polyroute.circuit import PARTITION_KEY, SORT_KEY, TTL_ATTRIBUTE
from polyroute.schema import Task
from polyroute.secrets import placeholder

# Role -> (handler module, memory MB, timeout s). The names match the ASL's placeholders:
# the ``Classifier`` role is ``ClassifierFunction`` and ``${ClassifierFunctionArn}``.
# The classifier and the planner retry and fall back in-process (the executor leaves that
# to the state machine), so their timeouts leave room for a few model calls.
ROLES: dict[str, tuple[str, int, int]] = {
    "Classifier": ("classifier", 512, 120),
    "Planner": ("planner", 512, 300),
    "Scheduler": ("scheduler", 1024, 60),
    "Router": ("router", 512, 60),
    "Compressor": ("compressor", 1024, 60),
    "ModelExecutor": ("model_executor", 1024, 300),
    "Finalizer": ("finalizer", 1024, 60),
}
DEFINITION_SUBSTITUTIONS = (
    *(f"{role}FunctionArn" for role in ROLES),
    "BatchFunctionArn",
    "BucketName",
)
MODEL_PROVIDERS = ("anthropic", "openai")
# Roles that read the shared circuit breaker (routing around open models), and the ones
# that call models and so also record their failures and successes.
BREAKER_READERS = ("Scheduler", "Router")
BREAKER_WRITERS = ("Classifier", "Planner", "ModelExecutor")
SYNC_TIMEOUT_S = 25


def apigw_schema(schema: dict[str, Any], names: dict[str, Any] | None = None) -> dict[str, Any]:
    """A pydantic JSON Schema as API Gateway models take it (draft 4): ``$ref``s inlined,
    numeric ``exclusiveMinimum`` as ``minimum`` with the draft-4 flag, ``const`` as enum.

    ``names`` is the same model's schema by field name (``by_alias=False``). With it, every
    property is accepted under both spellings, at every level (``taskId`` and ``task_id``),
    as the models' ``populate_by_name`` accepts them, while any other name is still refused;
    a required property may come under either. The two schemas differ only in property names,
    so they are walked side by side and a property's two names are paired by position."""
    defs = schema.get("$defs", {})
    name_defs = (names or {}).get("$defs", {})

    def spellings(props: dict[str, Any], twin: dict[str, Any] | None) -> dict[str, str]:
        """Each property's wire name -> its field name (the same when there is no twin)."""
        if twin is None:
            return {k: k for k in props}
        twin_props = twin.get("properties", {})
        if len(twin_props) != len(props):
            raise ValueError(f"schemas differ: {sorted(props)} vs {sorted(twin_props)}")
        return dict(zip(props, twin_props, strict=True))

    def walk(node: Any, twin: Any) -> Any:
        if isinstance(node, list):
            twins = (
                twin if isinstance(twin, list) and len(twin) == len(node) else [None] * len(node)
            )
            return [walk(n, t) for n, t in zip(node, twins, strict=True)]
        if not isinstance(node, dict):
            return node
        twin = twin if isinstance(twin, dict) else None
        if "$ref" in node:
            name = node["$ref"].split("/")[-1]
            return walk(defs[name], name_defs.get(name) if twin is not None else None)
        out: dict[str, Any] = {}
        renamed = spellings(node.get("properties", {}), twin)
        for key, value in node.items():
            if key in ("$defs", "examples", "discriminator"):
                continue
            if key == "exclusiveMinimum" and not isinstance(value, bool):
                out["minimum"], out["exclusiveMinimum"] = value, True
            elif key == "exclusiveMaximum" and not isinstance(value, bool):
                out["maximum"], out["exclusiveMaximum"] = value, True
            elif key == "const":
                out["enum"] = [value]
            elif key == "properties":
                twin_props = twin.get("properties", {}) if twin is not None else {}
                props: dict[str, Any] = {}
                for wire, sub in value.items():
                    field = renamed[wire]
                    props[wire] = walk(sub, twin_props.get(field))
                    if field != wire:
                        props[field] = walk(sub, twin_props.get(field))
                out[key] = props
            elif key == "required":
                out[key] = [k for k in value if renamed.get(k, k) == k]
                either = [
                    {"anyOf": [{"required": [k]}, {"required": [renamed[k]]}]}
                    for k in value
                    if renamed.get(k, k) != k
                ]
                if either:
                    out["allOf"] = [*out.get("allOf", []), *either]
                if not out[key]:
                    del out[key]
            elif key == "allOf":
                out[key] = [
                    *walk(value, twin.get(key) if twin is not None else None),
                    *out.get(key, []),
                ]
            else:
                out[key] = walk(value, twin.get(key) if twin is not None else None)
        return out

    result: dict[str, Any] = walk(schema, names)
    result["$schema"] = "http://json-schema.org/draft-04/schema#"
    return result


def task_request_model() -> dict[str, Any]:
    """The API's request model for ``POST /v1/tasks``: ``Task`` in both spellings, as
    ``polyroute serve`` accepts it (a client written against one works against the other)."""
    return apigw_schema(
        Task.model_json_schema(by_alias=True), Task.model_json_schema(by_alias=False)
    )


class PolyrouteStack(Stack):
    """Everything polyroute needs on AWS."""

    def __init__(
        self, scope: Construct, construct_id: str, *, bundle: str = "pip", **kwargs: Any
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.node.set_context("polyroute:bundle", bundle)

        # --- storage and secrets ---------------------------------------------------------
        access_logs = s3.Bucket(
            self,
            "AccessLogsBucket",
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_PREFERRED,
            lifecycle_rules=[s3.LifecycleRule(expiration=Duration.days(90))],
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.bucket = s3.Bucket(
            self,
            "SpillBucket",
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            server_access_logs_bucket=access_logs,
            server_access_logs_prefix="spill-bucket/",
            event_bridge_enabled=True,
            lifecycle_rules=[
                s3.LifecycleRule(id="spill", prefix="spill/", expiration=Duration.days(7)),
                s3.LifecycleRule(id="work", prefix="batch-work/", expiration=Duration.days(7)),
                s3.LifecycleRule(id="results", prefix="results/", expiration=Duration.days(30)),
                # The batch Map's ResultWriter output (manifest and per-child results): the
                # summary under batch-results/<name>/ is what is kept.
                s3.LifecycleRule(
                    id="map-runs", prefix="batch-results/map-runs/", expiration=Duration.days(7)
                ),
                # A key lives as long as the result it answers with.
                s3.LifecycleRule(
                    id="idempotency", prefix="idempotency/", expiration=Duration.days(30)
                ),
                s3.LifecycleRule(
                    id="multipart", abort_incomplete_multipart_upload_after=Duration.days(1)
                ),
            ],
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.secrets = {
            provider: secretsmanager.Secret(
                self,
                f"{provider.capitalize()}ApiKey",
                description=f"{provider} API key for polyroute's model executor "
                '(the key itself, or {"api_key": "..."})',
                # An explicit placeholder, not a generated random string: polyroute reads the
                # placeholder as "no key" and answers from the simulated provider until a real
                # key is put in the secret (a random value would be sent to the vendor: 401).
                secret_string_value=SecretValue.unsafe_plain_text(placeholder(provider)),
            )
            for provider in MODEL_PROVIDERS
        }

        # The circuit breaker's state, shared by every container (polyroute.circuit).
        self.breaker_table = dynamodb.Table(
            self,
            "BreakerTable",
            partition_key=dynamodb.Attribute(
                name=PARTITION_KEY, type=dynamodb.AttributeType.STRING
            ),
            sort_key=dynamodb.Attribute(name=SORT_KEY, type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            time_to_live_attribute=TTL_ATTRIBUTE,
            removal_policy=RemovalPolicy.DESTROY,
        )

        # --- the functions ----------------------------------------------------------------
        # Functions that call models get the SDKs; the others a much smaller asset.
        code = lambda_code(bundle)
        core_code = lambda_code(bundle, CORE_EXTRAS)
        model_roles = ("Classifier", "Planner", "ModelExecutor")
        env = {
            "POLYROUTE_BUCKET": self.bucket.bucket_name,
            "POLYROUTE_PROVIDER": "auto",
            "POWERTOOLS_SERVICE_NAME": "polyroute",
            "POWERTOOLS_METRICS_NAMESPACE": "Polyroute",
        }
        secret_env = {
            f"POLYROUTE_SECRET_{p.upper()}": secret.secret_arn for p, secret in self.secrets.items()
        }
        self.functions: dict[str, lambda_.Function] = {}
        for role, (module, memory, timeout) in ROLES.items():
            role_code = code if role in model_roles else core_code
            role_env = dict(env)
            if role in model_roles:
                role_env.update(secret_env)
            if role in BREAKER_READERS + BREAKER_WRITERS:
                role_env["POLYROUTE_BREAKER_TABLE"] = self.breaker_table.table_name
            fn = self._function(role, f"{module}.handler", role_code, role_env, memory, timeout)
            if role in BREAKER_WRITERS:
                self.breaker_table.grant_read_write_data(fn)
            elif role in BREAKER_READERS:
                self.breaker_table.grant_read_data(fn)
            self.bucket.grant_read_write(fn)
            # Only the functions with the vendors' SDKs make live calls, so only they read the
            # keys (the Router's Fallback takes the provider from the Execute invocation).
            if role in model_roles:
                for secret in self.secrets.values():
                    secret.grant_read(fn)
            self.functions[role] = fn
        batch_fn = self._function("Batch", "batch.handler", core_code, env, 1024, 300)
        self.bucket.grant_read_write(batch_fn)
        self.functions["Batch"] = batch_fn

        # --- the state machines -----------------------------------------------------------
        subs = {f"{role}FunctionArn": fn.function_arn for role, fn in self.functions.items()}
        subs["BucketName"] = self.bucket.bucket_name
        orchestrator = sfn.DefinitionBody.from_string(
            (ASL_DIR / "orchestrator.asl.json").read_text("utf-8")
        )
        self.express = self._machine(
            "Orchestrator", orchestrator, subs, sfn.StateMachineType.EXPRESS
        )
        self.standard = self._machine(
            "OrchestratorStandard", orchestrator, subs, sfn.StateMachineType.STANDARD
        )
        self.batch = self._machine(
            "BatchWorkflow",
            sfn.DefinitionBody.from_string(definition_text(batch_definition())),
            subs,
            sfn.StateMachineType.STANDARD,
        )
        for machine in (self.express, self.standard, self.batch):
            for role in ROLES:
                self.functions[role].grant_invoke(machine)
        batch_fn.grant_invoke(self.batch)
        self.bucket.grant_read_write(self.batch)
        # A Distributed Map starts and watches its own child executions.
        self.batch.add_to_role_policy(
            iam.PolicyStatement(
                actions=[
                    "states:StartExecution",
                    "states:DescribeExecution",
                    "states:StopExecution",
                ],
                resources=[
                    self.format_arn(
                        service="states",
                        resource="stateMachine",
                        resource_name="polyroute-batch-*",
                        arn_format=ArnFormat.COLON_RESOURCE_NAME,
                    ),
                    self.format_arn(
                        service="states",
                        resource="execution",
                        resource_name="polyroute-batch-*",
                        arn_format=ArnFormat.COLON_RESOURCE_NAME,
                    ),
                ],
            )
        )

        # --- the API --------------------------------------------------------------------------
        api_fn = self._function(
            "Api",
            "api.handler",
            core_code,
            {
                **env,
                "POLYROUTE_EXPRESS_ARN": self.express.state_machine_arn,
                "POLYROUTE_STANDARD_ARN": self.standard.state_machine_arn,
                "POLYROUTE_SYNC_TIMEOUT_S": str(SYNC_TIMEOUT_S),
            },
            1024,
            SYNC_TIMEOUT_S + 4,
        )
        self.functions["Api"] = api_fn
        self.bucket.grant_read_write(api_fn)
        self.express.grant_start_sync_execution(api_fn)
        self.express.grant_start_execution(api_fn)
        self.standard.grant_start_execution(api_fn)
        self.api = self._api(api_fn)

        # --- batches: an upload to batches/, and an optional schedule ---------------------
        start_batch = targets.SfnStateMachine(
            self.batch,
            input=events.RuleTargetInput.from_object(
                {
                    "bucket": events.EventField.from_path("$.detail.bucket.name"),
                    "key": events.EventField.from_path("$.detail.object.key"),
                }
            ),
        )
        events.Rule(
            self,
            "BatchUploaded",
            description="A JSONL file under batches/ starts the batch workflow",
            event_pattern=events.EventPattern(
                source=["aws.s3"],
                detail_type=["Object Created"],
                detail={
                    "bucket": {"name": [self.bucket.bucket_name]},
                    "object": {"key": [{"wildcard": "batches/*.jsonl"}]},
                },
            ),
            targets=[start_batch],
        )
        schedule = self.node.try_get_context("polyroute:batchSchedule")
        if schedule:
            key = self.node.try_get_context("polyroute:scheduledBatchKey") or (
                "batches/scheduled.jsonl"
            )
            events.Rule(
                self,
                "BatchSchedule",
                description=f"Runs {key} on a schedule",
                schedule=events.Schedule.expression(schedule),
                targets=[
                    targets.SfnStateMachine(
                        self.batch,
                        input=events.RuleTargetInput.from_object(
                            {"bucket": self.bucket.bucket_name, "key": key}
                        ),
                    )
                ],
            )

        nag_suppressions.apply(self)

    # --- builders ----------------------------------------------------------------------------

    def _function(
        self,
        role: str,
        handler: str,
        code: lambda_.Code,
        env: dict[str, str],
        memory: int,
        timeout: int,
    ) -> lambda_.Function:
        log_group = logs.LogGroup(
            self,
            f"{role}FunctionLogs",
            retention=logs.RetentionDays.ONE_MONTH,
            removal_policy=RemovalPolicy.DESTROY,
        )
        return lambda_.Function(
            self,
            f"{role}Function",
            runtime=RUNTIME,
            architecture=lambda_.Architecture.ARM_64,
            handler=handler,
            code=code,
            memory_size=memory,
            timeout=Duration.seconds(timeout),
            tracing=lambda_.Tracing.ACTIVE,
            environment=env,
            log_group=log_group,
            description=f"polyroute {role.lower()}",
        )

    def _machine(
        self,
        name: str,
        body: sfn.DefinitionBody,
        subs: dict[str, str],
        kind: sfn.StateMachineType,
    ) -> sfn.StateMachine:
        log_group = logs.LogGroup(
            self,
            f"{name}Logs",
            log_group_name=f"/aws/vendedlogs/states/{self.stack_name}-{name}",
            retention=logs.RetentionDays.ONE_MONTH,
            removal_policy=RemovalPolicy.DESTROY,
        )
        machine_name = (
            f"polyroute-batch-{self.stack_name}"[:80] if name == "BatchWorkflow" else None
        )
        return sfn.StateMachine(
            self,
            name,
            state_machine_name=machine_name,
            definition_body=body,
            definition_substitutions=subs,
            state_machine_type=kind,
            tracing_enabled=True,
            logs=sfn.LogOptions(
                destination=log_group, level=sfn.LogLevel.ALL, include_execution_data=True
            ),
        )

    def _api(self, api_fn: lambda_.Function) -> apigw.RestApi:
        access = logs.LogGroup(
            self,
            "ApiAccessLogs",
            retention=logs.RetentionDays.ONE_MONTH,
            removal_policy=RemovalPolicy.DESTROY,
        )
        api = apigw.RestApi(
            self,
            "Api",
            description="polyroute: POST /v1/tasks (sync, or ?async=true), GET /v1/tasks/{id}",
            cloud_watch_role=True,
            cloud_watch_role_removal_policy=RemovalPolicy.DESTROY,
            deploy_options=apigw.StageOptions(
                stage_name="v1api",
                tracing_enabled=True,
                metrics_enabled=True,
                logging_level=apigw.MethodLoggingLevel.INFO,
                access_log_destination=apigw.LogGroupLogDestination(access),
                access_log_format=apigw.AccessLogFormat.json_with_standard_fields(
                    caller=True,
                    http_method=True,
                    ip=True,
                    protocol=True,
                    request_time=True,
                    resource_path=True,
                    response_length=True,
                    status=True,
                    user=True,
                ),
            ),
            default_method_options=apigw.MethodOptions(
                authorization_type=apigw.AuthorizationType.IAM
            ),
        )
        model = apigw.Model(
            self,
            "TaskModel",
            rest_api=api,
            content_type="application/json",
            model_name="Task",
            description="polyroute.schema.Task",
            schema=apigw.JsonSchema(type=apigw.JsonSchemaType.OBJECT),
        )
        schema = task_request_model()
        model.node.default_child.add_property_override("Schema", schema)  # type: ignore[union-attr]
        validate_body = api.add_request_validator(
            "ValidateTask", validate_request_body=True, validate_request_parameters=True
        )
        # API Gateway's own refusals answer in the contract's shape ({"error", "field"}), so a
        # client written against `polyroute serve` reads them unchanged.
        for response_type, status, message in (
            (apigw.ResponseType.BAD_REQUEST_BODY, "400", "$context.error.validationErrorString"),
            (apigw.ResponseType.REQUEST_TOO_LARGE, "413", "request body too large"),
            (apigw.ResponseType.DEFAULT_4_XX, None, "$context.error.message"),
            (apigw.ResponseType.DEFAULT_5_XX, None, "$context.error.message"),
        ):
            api.add_gateway_response(
                f"{response_type.response_type}Response",
                type=response_type,
                status_code=status,
                templates={"application/json": '{"error": "' + message + '", "field": null}'},
            )
        integration = apigw.LambdaIntegration(api_fn, proxy=True)
        tasks = api.root.add_resource("v1").add_resource("tasks")
        tasks.add_method(
            "POST",
            integration,
            request_models={"application/json": model},
            request_validator=validate_body,
            request_parameters={"method.request.querystring.async": False},
        )
        tasks.add_resource("{taskId}").add_method("GET", integration)
        return api
