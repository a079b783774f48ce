"""Provider keys from the environment or Secrets Manager (stubbed), and redaction."""

from __future__ import annotations

import json
from collections.abc import Iterator

import boto3
import moto
import pytest
from botocore.stub import Stubber

from polyroute import secrets
from polyroute.errors import AuthenticationError
from polyroute.providers import live
from polyroute.providers.select import provider_selector
from polyroute.registry import load_registry


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in ("POLYROUTE_SECRET_ANTHROPIC", "POLYROUTE_SECRET_OPENAI"):
        monkeypatch.delenv(var, raising=False)
    secrets.clear_cache()
    yield
    secrets.clear_cache()


@pytest.fixture
def sm() -> Iterator[tuple[object, Stubber]]:
    client = boto3.client(
        "secretsmanager",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    with Stubber(client) as stub:
        yield client, stub
        stub.assert_no_pending_responses()


def secret_response(name: str, value: str) -> dict[str, object]:
    return {
        "ARN": f"arn:aws:secretsmanager:us-east-1:123456789012:secret:{name}",
        "Name": name,
        "SecretString": value,
    }


def test_environment_key_comes_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-from-env-123456")
    monkeypatch.setenv("POLYROUTE_SECRET_ANTHROPIC", "prod/anthropic")
    assert secrets.api_key("anthropic", client=object()) == "sk-ant-from-env-123456"
    assert secrets.has_api_key("anthropic")


def test_no_key_anywhere() -> None:
    assert secrets.api_key("openai") is None
    assert not secrets.has_api_key("openai")


def test_secret_is_read_once_per_process(
    monkeypatch: pytest.MonkeyPatch, sm: tuple[object, Stubber]
) -> None:
    client, stub = sm
    monkeypatch.setenv("POLYROUTE_SECRET_OPENAI", "prod/openai")
    stub.add_response(
        "get_secret_value",
        secret_response("prod/openai", "sk-proj-secret-0123456789"),
        {"SecretId": "prod/openai"},
    )
    assert secrets.has_api_key("openai", client)
    assert secrets.api_key("openai", client) == "sk-proj-secret-0123456789"
    # a second read is served from the cache: the stub has no second response to give
    assert secrets.api_key("openai", client) == "sk-proj-secret-0123456789"


@pytest.mark.parametrize(
    "value",
    [
        json.dumps({"api_key": "sk-ant-json-0123456789"}),
        json.dumps({"ANTHROPIC_API_KEY": "sk-ant-json-0123456789"}),
    ],
)
def test_secret_may_be_json(
    monkeypatch: pytest.MonkeyPatch, sm: tuple[object, Stubber], value: str
) -> None:
    client, stub = sm
    monkeypatch.setenv("POLYROUTE_SECRET_ANTHROPIC", "prod/anthropic")
    stub.add_response("get_secret_value", secret_response("prod/anthropic", value))
    assert secrets.api_key("anthropic", client) == "sk-ant-json-0123456789"


def test_unreadable_secret_names_the_secret_not_a_value(
    monkeypatch: pytest.MonkeyPatch, sm: tuple[object, Stubber]
) -> None:
    client, stub = sm
    monkeypatch.setenv("POLYROUTE_SECRET_ANTHROPIC", "prod/anthropic")
    stub.add_client_error(
        "get_secret_value", service_error_code="AccessDeniedException", http_status_code=400
    )
    with pytest.raises(AuthenticationError, match=r"'prod/anthropic'.*AccessDeniedException"):
        secrets.api_key("anthropic", client)


def test_a_read_secret_is_redacted_everywhere(
    monkeypatch: pytest.MonkeyPatch, sm: tuple[object, Stubber]
) -> None:
    client, stub = sm
    monkeypatch.setenv("POLYROUTE_SECRET_OPENAI", "prod/openai")
    stub.add_response("get_secret_value", secret_response("prod/openai", "plain-token-abcdef12"))
    token = secrets.api_key("openai", client)
    assert token is not None
    assert secrets.redact(f"server said: token {token} rejected") == (
        "server said: token [redacted] rejected"
    )


@pytest.mark.parametrize(
    "value",
    [
        "REPLACE_WITH_OPENAI_API_KEY",
        json.dumps({"api_key": "REPLACE_WITH_OPENAI_API_KEY"}),
        "  ",
    ],
)
def test_a_placeholder_or_empty_secret_is_no_key(
    monkeypatch: pytest.MonkeyPatch, sm: tuple[object, Stubber], value: str
) -> None:
    client, stub = sm
    monkeypatch.setenv("POLYROUTE_SECRET_OPENAI", "prod/openai")
    stub.add_response("get_secret_value", secret_response("prod/openai", value))
    assert not secrets.has_api_key("openai", client)
    # decided once per process: the stub has no second response to give
    assert secrets.api_key("openai", client) is None
    assert not secrets.has_api_key("openai", client)


def test_the_placeholder_names_the_provider() -> None:
    assert secrets.placeholder("anthropic") == "REPLACE_WITH_ANTHROPIC_API_KEY"
    assert secrets.is_placeholder(secrets.placeholder("openai"))
    assert not secrets.is_placeholder("sk-proj-REPLACE_WITH_nothing-0123")


def test_an_unreadable_secret_counts_as_configured_so_the_call_says_why(
    monkeypatch: pytest.MonkeyPatch, sm: tuple[object, Stubber]
) -> None:
    client, stub = sm
    monkeypatch.setenv("POLYROUTE_SECRET_OPENAI", "prod/openai")
    stub.add_client_error(
        "get_secret_value", service_error_code="AccessDeniedException", http_status_code=400
    )
    assert secrets.has_api_key("openai", client)


def test_the_deployed_placeholder_makes_the_provider_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a fresh deploy holds (moto Secrets Manager): the model answers simulated."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setattr(live, "sdk_installed", lambda _provider: True)
    with moto.mock_aws():
        sm_client = boto3.client("secretsmanager")
        arn = sm_client.create_secret(
            Name="AnthropicApiKey", SecretString=secrets.placeholder("anthropic")
        )["ARN"]
        monkeypatch.setenv("POLYROUTE_SECRET_ANTHROPIC", arn)
        assert not live.available("anthropic")
        spec = load_registry().get("claude-haiku-4-5")
        assert provider_selector("auto")(spec).name == "simulated"
        secrets.clear_cache()
        sm_client.put_secret_value(SecretId=arn, SecretString="sk-ant-real-0123456789")
        assert live.available("anthropic")


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        ("invalid x-api-key sk-ant-api03-AbC_dEf-123456789", "sk-ant-api03"),
        ("Incorrect API key provided: sk-proj-AbCdEf0123456789", "sk-proj-AbCdEf"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig", "eyJhbGciOi"),
        ("credential AKIAIOSFODNN7EXAMPLE/20261127", "AKIAIOSFODNN7EXAMPLE"),
        ("x-api-key: 0123456789abcdefABCDEF", "0123456789abcdef"),
    ],
)
def test_redact_removes_key_shapes(text: str, leak: str) -> None:
    out = secrets.redact(text)
    assert leak not in out and "[redacted]" in out


def test_redact_keeps_ordinary_words() -> None:
    text = "openai gpt-4o: HTTP 401 invalid_api_key: Incorrect API key provided"
    assert secrets.redact(text) == text
