"""schemathesis fuzzes ``polyroute serve`` from its own OpenAPI document: whatever a client
sends, valid or not, the server answers with a documented status and body, never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from polyroute.server import openapi_document

from .local_server import LocalServer

schema = schemathesis.openapi.from_dict(openapi_document())

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    store: Path = tmp_path_factory.mktemp("fuzz-store")
    with LocalServer(store, options=("--time-scale", "0.0005", "--concurrency", "4")) as srv:
        yield srv


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors_and_documented_answers(
    case: schemathesis.Case, server: LocalServer
) -> None:
    response = case.call(base_url=server.url, timeout=60)
    case.validate_response(response, checks=CHECKS)


def test_the_served_document_is_the_generated_one(server: LocalServer) -> None:
    import json
    import urllib.request

    with urllib.request.urlopen(server.url + "/openapi.json", timeout=10) as resp:
        served = json.loads(resp.read())
    assert served == json.loads(json.dumps(openapi_document()))
    task = served["components"]["schemas"]["Task"]
    assert task["additionalProperties"] is False
    assert "description" in task["required"]
