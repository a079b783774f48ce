"""The Router function: ``Workflow.route`` (the ``Route`` state) and, for an event that
carries a caught ``error``, ``Workflow.fallback`` (the ``Fallback`` state that re-routes to
the next eligible model)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from polyroute_runtime import log_metrics, logger, tracer, workflow


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> Any:
    if "error" in event:
        logger.info("re-routing after an error", extra={"error": event["error"].get("Error")})
        return workflow().fallback(event)
    return workflow().route(event)
