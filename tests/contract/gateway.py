"""API Gateway's request validation for ``POST /v1/tasks``, which moto does not simulate: the
stack's own request model (``infra.stack.task_request_model``) under a JSON Schema draft-4
validator, as API Gateway applies it before the function runs.

The validator is ``jsonschema`` when it is installed, else ``jsonschema_rs`` (which
schemathesis, in the ``dev`` extra, brings); without either, the tests that need it skip.
"""

from __future__ import annotations

import json
from typing import Any

import pytest


def draft4(schema: dict[str, Any]) -> Any:
    """A draft-4 validator of ``schema`` with ``iter_errors(instance)``."""
    try:
        import jsonschema

        return jsonschema.Draft4Validator(schema)
    except ImportError:
        pass
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    return jsonschema_rs.Draft4Validator(schema)


class GatewayModel:
    """The deployed API's body check: why API Gateway would refuse a body, or None."""

    def __init__(self) -> None:
        pytest.importorskip("aws_cdk")
        from infra.stack import task_request_model

        self.schema = task_request_model()
        self.validator = draft4(self.schema)

    def refusal(self, body: bytes | None) -> str | None:
        """Why API Gateway answers 400 before the function runs, or None if it passes."""
        try:
            instance = json.loads(body or b"")
        except ValueError as exc:
            return f"not JSON: {exc}"
        errors = [e.message for e in self.validator.iter_errors(instance)]
        return "; ".join(errors) or None
