"""The Finalizer function: ``Workflow.finalize`` (the ``Finalize`` state) builds and records
the run's result; for an event that carries a caught ``error``, ``Workflow.record_failure``
(the ``RecordFailure`` state) records the failure and returns the clean error and cause."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from polyroute_runtime import log_metrics, logger, tracer, workflow


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)
@log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> Any:
    if "error" in event:
        return workflow().record_failure(event)
    return workflow().finalize(event)
