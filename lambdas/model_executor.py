"""The ModelExecutor function: ``Workflow.execute`` (the ``Execute`` state): one model call.

A provider error is raised under its own class name (``OverloadedError``...), which the
state machine's ``Retry`` and ``Catch`` match. Tokens and cost go out as metrics per step."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from polyroute_runtime import log_metrics, logger, tracer, workflow


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)
@log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> Any:
    # Calls and retries stop in time for the function to answer (see Workflow.execute).
    return workflow().execute(event, context.get_remaining_time_in_millis() / 1000.0)
