"""The Bedrock provider: boto3's Converse API through botocore's Stubber, and over the wire
against a loopback server the client reaches through ``AWS_ENDPOINT_URL_BEDROCK_RUNTIME``."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.stub import Stubber

from polyroute.cost import call_cost
from polyroute.errors import (
    AuthenticationError,
    ConfigError,
    ContentRefusedError,
    InvalidRequestError,
    OverloadedError,
    ProviderServerError,
    ProviderTimeoutError,
    RateLimitedError,
)
from polyroute.providers.base import ImageInput, ModelRequest
from polyroute.providers.bedrock import BedrockProvider, make_client
from polyroute.providers.live import JSON_INSTRUCTION
from polyroute.registry import load_registry
from polyroute.schema import Usage

from ..provider_fakes import PNG, FakeProviders, Reply, bedrock_error

REG = load_registry()
SONNET_ID = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
HAIKU_ID = "us.anthropic.claude-haiku-4-5-20251001-v1:0"


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Credentials that sign requests but reach nothing; no profile or metadata lookups."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_BEDROCK_RUNTIME"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def stubbed() -> Iterator[tuple[BedrockProvider, Stubber]]:
    client = boto3.client(
        "bedrock-runtime", region_name="us-east-1", config=Config(retries={"total_max_attempts": 1})
    )
    with Stubber(client) as stub:
        yield BedrockProvider(client=client), stub
        stub.assert_no_pending_responses()


def converse_response(text: str = "ok", stop: str = "end_turn", **usage: int) -> dict[str, Any]:
    u = {"inputTokens": 100, "outputTokens": 20, "totalTokens": 120, **usage}
    return {
        "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
        "stopReason": stop,
        "usage": u,
        "metrics": {"latencyMs": 10},
    }


def req(model: str = "claude-sonnet-4-5", **kw: object) -> ModelRequest:
    return ModelRequest(model=REG.get(model), prompt=str(kw.pop("prompt", "Do the step.")), **kw)  # type: ignore[arg-type]


def words(n: int) -> str:
    return " ".join(f"word{i % 50}" for i in range(n))


def test_converse_call_with_cache_point_and_cache_usage_priced_to_the_cent(
    stubbed: tuple[BedrockProvider, Stubber],
) -> None:
    provider, stub = stubbed
    prefix = words(1500)
    stub.add_response(
        "converse",
        converse_response(
            "answer",
            inputTokens=500,
            outputTokens=200,
            totalTokens=4200,
            cacheReadInputTokens=2000,
            cacheWriteInputTokens=1500,
        ),
        expected_params={
            "modelId": SONNET_ID,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"text": prefix},
                        {"cachePoint": {"type": "default"}},
                        {"text": "Do the step."},
                    ],
                }
            ],
            "system": [{"text": "Be brief."}],
            "inferenceConfig": {"maxTokens": 300},
        },
    )
    resp = asyncio.run(provider.request(req(prefix=prefix, system="Be brief.", max_tokens=300)))
    assert (resp.provider, resp.model, resp.text) == ("bedrock", "claude-sonnet-4-5", "answer")
    u = resp.usage
    assert (u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens) == (
        500,
        200,
        2000,
        1500,
    )
    # 500 x $3 + 200 x $15 + 2,000 x $0.30 + 1,500 x $3.75, per million
    assert call_cost(REG.get("claude-sonnet-4-5"), u) == pytest.approx(0.010725, abs=1e-12)


def test_short_prefix_gets_no_cache_point_and_images_are_bytes(
    stubbed: tuple[BedrockProvider, Stubber],
) -> None:
    provider, stub = stubbed
    stub.add_response(
        "converse",
        converse_response(),
        expected_params={
            "modelId": HAIKU_ID,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"text": "Short task."},
                        {"image": {"format": "png", "source": {"bytes": base64.b64decode(PNG)}}},
                        {"text": "Describe."},
                    ],
                }
            ],
            "inferenceConfig": {"maxTokens": 1024},
        },
    )
    asyncio.run(
        provider.request(
            req(
                "claude-haiku-4-5",
                prefix="Short task.",
                images=(ImageInput("image/png", PNG),),
                prompt="Describe.",
            )
        )
    )


def test_json_mode_is_asked_in_the_system_prompt(stubbed: tuple[BedrockProvider, Stubber]) -> None:
    provider, stub = stubbed
    stub.add_response(
        "converse",
        converse_response(json.dumps({"verdict": "approve"})),
        expected_params={
            "modelId": SONNET_ID,
            "messages": [{"role": "user", "content": [{"text": "Do the step."}]}],
            "system": [{"text": f"Judge.\n\n{JSON_INSTRUCTION}"}],
            "inferenceConfig": {"maxTokens": 1024},
        },
    )
    resp = asyncio.run(provider.request(req(system="Judge.", json_mode=True)))
    assert json.loads(resp.text) == {"verdict": "approve"}


@pytest.mark.parametrize(
    ("code", "status", "message", "error"),
    [
        ("ThrottlingException", 429, "Too many requests", RateLimitedError),
        ("ServiceUnavailableException", 503, "Service unavailable", ProviderServerError),
        ("InternalServerException", 500, "Internal error", ProviderServerError),
        ("ModelErrorException", 424, "Model is overloaded", OverloadedError),
        ("ModelTimeoutException", 408, "Model timed out", ProviderTimeoutError),
        ("ValidationException", 400, "Malformed input", InvalidRequestError),
        ("AccessDeniedException", 403, "No access to model", AuthenticationError),
        ("ResourceNotFoundException", 404, "No such model", InvalidRequestError),
    ],
)
def test_client_errors_map_to_polyroute_errors(
    stubbed: tuple[BedrockProvider, Stubber],
    code: str,
    status: int,
    message: str,
    error: type[Exception],
) -> None:
    provider, stub = stubbed
    stub.add_client_error(
        "converse", service_error_code=code, service_message=message, http_status_code=status
    )
    with pytest.raises(error) as info:
        asyncio.run(provider.request(req()))
    assert code in str(info.value) and message in str(info.value)
    assert type(info.value) is error


@pytest.mark.parametrize("stop", ["guardrail_intervened", "content_filtered"])
def test_filtered_answers_are_refusals(stubbed: tuple[BedrockProvider, Stubber], stop: str) -> None:
    provider, stub = stubbed
    stub.add_response("converse", converse_response("", stop=stop))
    with pytest.raises(ContentRefusedError, match=stop) as info:
        asyncio.run(provider.request(req()))
    assert info.value.usage == Usage(input_tokens=100, output_tokens=20)


def test_max_tokens_stop_is_reported(stubbed: tuple[BedrockProvider, Stubber]) -> None:
    provider, stub = stubbed
    stub.add_response("converse", converse_response("cut", stop="max_tokens"))
    assert asyncio.run(provider.request(req())).stop_reason == "max_tokens"


def test_a_model_without_bedrock_id_cannot_be_served() -> None:
    provider = BedrockProvider(client=object())
    with pytest.raises(ConfigError, match="bedrock_id"):
        asyncio.run(provider.request(req("gpt-4o")))


# --- over the wire -------------------------------------------------------------------------


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeProviders]:
    server = FakeProviders().start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", server.url)
    yield server
    server.stop()


def test_wire_call_reaches_the_endpoint_from_the_environment_signed(fake: FakeProviders) -> None:
    fake.set_usage(HAIKU_ID, input=1800, output=300, cache_read=4100)
    resp = asyncio.run(BedrockProvider().request(req("claude-haiku-4-5")))
    call = fake.calls(api="bedrock")[0]
    assert call.model == HAIKU_ID
    assert call.headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=testing/")
    assert "/us-east-1/bedrock/" in call.headers["authorization"]
    # 1,800 x $1 + 300 x $5 + 4,100 x $0.10, per million
    assert call_cost(REG.get("claude-haiku-4-5"), resp.usage) == pytest.approx(0.00371, abs=1e-12)


def test_wire_throttling_and_no_botocore_retries(fake: FakeProviders) -> None:
    fake.queue(SONNET_ID, bedrock_error(429, "ThrottlingException", "Too many requests"))
    with pytest.raises(RateLimitedError):
        asyncio.run(BedrockProvider().request(req()))
    assert len(fake.calls(api="bedrock")) == 1


def test_wire_connection_reset_is_a_server_error(fake: FakeProviders) -> None:
    fake.queue(SONNET_ID, Reply(reset=True))
    with pytest.raises(ProviderServerError, match="connection failed"):
        asyncio.run(BedrockProvider().request(req()))
    assert len(fake.calls(api="bedrock")) == 1


def test_wire_slow_answer_is_a_timeout(fake: FakeProviders) -> None:
    fake.queue(SONNET_ID, Reply(delay_s=2.0))
    with pytest.raises(ProviderTimeoutError):
        asyncio.run(BedrockProvider().request(req(timeout_s=0.2)))


def test_made_client_has_its_region_and_no_botocore_retries() -> None:
    made = make_client()
    assert made.meta.region_name == "us-east-1"
    assert made.meta.config.retries["total_max_attempts"] == 1
