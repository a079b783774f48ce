"""The Planner function: ``Workflow.plan`` (the ``Plan`` state)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from polyroute_runtime import log_metrics, logger, tracer, workflow


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> Any:
    # Calls and retries stop in time for the function to answer (see Workflow.plan).
    return workflow().plan(event, context.get_remaining_time_in_millis() / 1000.0)
