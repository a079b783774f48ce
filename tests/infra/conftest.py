"""The CDK app, synthesized once per test session (synthesis takes a while)."""

from __future__ import annotations

import os
from typing import Any

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")


@pytest.fixture(scope="session")
def synthesized(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """(app, stack, template); the asset is the source folder, so nothing is installed."""
    pytest.importorskip("aws_cdk")
    from aws_cdk.assertions import Template

    import app as cdk_app

    outdir = tmp_path_factory.mktemp("cdk.out")
    app = cdk_app.build(
        str(outdir), {"polyroute:bundle": "source", "polyroute:batchSchedule": "rate(1 day)"}
    )
    stack = app.node.find_child("Polyroute")
    template = Template.from_stack(stack)
    return app, stack, template
