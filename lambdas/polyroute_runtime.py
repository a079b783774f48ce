"""What every polyroute Lambda function shares, made once per container: Powertools'
logger, tracer and metrics, and the workflow configured from the environment.

Handlers stay thin: parse the event, call ``polyroute.workflow``, return JSON. Tests and the
local Step Functions run install their own workflow with ``use_workflow``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

from polyroute.schema import StepResult
from polyroute.workflow import ResultStore, Workflow, workflow_from_env

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "polyroute")
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "Polyroute")

logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)

_state: dict[str, Any] = {}


def step_metrics(result: StepResult) -> None:
    """Per-step tokens and cost as CloudWatch metrics (EMF), by model."""
    if result.model is None:
        return
    metrics.add_dimension(name="model", value=result.model)
    metrics.add_metric(
        name="StepInputTokens", unit=MetricUnit.Count, value=result.usage.input_tokens
    )
    metrics.add_metric(
        name="StepOutputTokens", unit=MetricUnit.Count, value=result.usage.output_tokens
    )
    metrics.add_metric(name="StepCostUsd", unit=MetricUnit.NoUnit, value=result.cost_usd)
    metrics.add_metric(name="StepAttempts", unit=MetricUnit.Count, value=result.attempts)
    metrics.add_metric(
        name="StepFailed", unit=MetricUnit.Count, value=0 if result.status == "succeeded" else 1
    )


def log_metrics(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Flush the metrics a call added (a call that ran no step has none, and says nothing)."""

    @functools.wraps(fn)
    def wrapper(event: Any, context: Any) -> Any:
        try:
            return fn(event, context)
        finally:
            if metrics.metric_set:
                metrics.flush_metrics()
            metrics.clear_metrics()

    return wrapper


def workflow() -> Workflow:
    """The container's workflow (built from the environment on first use)."""
    wf = _state.get("workflow")
    if wf is None:
        wf, results = workflow_from_env()
        wf.cfg.on_step = step_metrics
        _state["workflow"], _state["results"] = wf, results
    return wf  # type: ignore[no-any-return]


def results() -> ResultStore | None:
    """Where finished runs are recorded (None without a bucket)."""
    workflow()
    return _state.get("results")  # type: ignore[no-any-return]


SFN_CONNECT_TIMEOUT_S = 2.0
"""How long the API waits to connect to Step Functions. With the sync wait
(``POLYROUTE_SYNC_TIMEOUT_S``, 25 s) it stays under the API function's 29 s and API Gateway's
29 s integration limit."""


def sfn_config(read_timeout_s: float, connect_timeout_s: float = SFN_CONNECT_TIMEOUT_S) -> Any:
    """The Step Functions client's botocore Config: one attempt, no retries.

    ``retries={"max_attempts": 1}`` would count retries, not attempts: a read timeout on
    ``start_sync_execution`` would be retried once, waiting twice past API Gateway's limit and
    starting a second (paid) execution. ``total_max_attempts`` counts the first call too.
    """
    from botocore.config import Config

    return Config(
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
        retries={"total_max_attempts": 1},
    )


def clients() -> dict[str, Any]:
    """AWS clients for the API and batch functions, made once per container."""
    made = _state.get("clients")
    if made is None:
        import boto3

        # A synchronous run is waited for at most this long (API Gateway gives up at 29 s),
        # then answered 202.
        wait_s = float(os.environ.get("POLYROUTE_SYNC_TIMEOUT_S", "25"))
        made = {
            "s3": boto3.client("s3"),
            "stepfunctions": boto3.client("stepfunctions", config=sfn_config(wait_s)),
        }
        _state["clients"] = made
    return made  # type: ignore[no-any-return]


def use_workflow(wf: Workflow | None, clients_: dict[str, Any] | None = None) -> None:
    """Install a workflow (and clients) for this process: tests and the local run."""
    _state.clear()
    if wf is not None:
        _state["workflow"], _state["results"] = wf, wf.results
    if clients_ is not None:
        _state["clients"] = clients_
