"""The CDK app: ``python app.py`` synthesizes the polyroute stack into cdk.out (offline).

Context: ``polyroute:bundle`` = ``pip`` (default: the deployable asset, built with pip, no
Docker) or ``source`` (no install; for tests and quick synths); ``polyroute:batchSchedule``
(an EventBridge schedule expression) and ``polyroute:scheduledBatchKey``.
"""

from __future__ import annotations

import os

os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")

from aws_cdk import App, Aspects
from cdk_nag import AwsSolutionsChecks

from infra.stack import PolyrouteStack


def build(outdir: str = "cdk.out", context: dict[str, str] | None = None) -> App:
    """The app with the stack and the AwsSolutions checks."""
    app = App(outdir=outdir, context=context or {})
    PolyrouteStack(
        app,
        "Polyroute",
        bundle=str(app.node.try_get_context("polyroute:bundle") or "pip"),
        description="polyroute: routes AI tasks across models (Step Functions, Lambda, API)",
    )
    Aspects.of(app).add(AwsSolutionsChecks(verbose=True))
    return app


if __name__ == "__main__":
    build().synth()
