"""The Batch function of the batch workflow: ``prepare`` (the ``PrepareBatch`` state) reads a
JSONL file from ``batches/`` and writes the Distributed Map's items; ``summarize`` (the
``SummarizeBatch`` state) writes ``results.jsonl`` and ``summary.json``."""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from polyroute_runtime import clients, logger, results, tracer, workflow

from polyroute.workflow import PreparedBatch, prepare_batch, summarize_batch


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)
def handler(event: dict[str, Any], context: LambdaContext) -> Any:
    s3 = clients()["s3"]
    if event.get("action") == "summarize":
        store = results()
        if store is None:
            raise RuntimeError("POLYROUTE_BUCKET is not set")
        fields = {k: v for k, v in event["prepared"].items() if k != "map"}
        return summarize_batch(s3, store, PreparedBatch.model_validate(fields))
    prepared = prepare_batch(
        s3,
        workflow().spiller,
        event["bucket"],
        event["key"],
        int(os.environ.get("POLYROUTE_BATCH_CONCURRENCY", "10")),
    )
    logger.info(
        "batch prepared", extra={"tasks": prepared.count, "invalid": prepared.invalid_count}
    )
    return prepared.to_wire()
