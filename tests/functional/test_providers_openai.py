"""The OpenAI and OpenAI-compatible providers through the real ``openai`` SDK against a
loopback server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from polyroute.cost import call_cost
from polyroute.errors import (
    AuthenticationError,
    ConfigError,
    ContentRefusedError,
    InvalidRequestError,
    ProviderServerError,
    ProviderTimeoutError,
    RateLimitedError,
)
from polyroute.providers.base import ImageInput, ModelRequest
from polyroute.providers.openai import OpenAIProvider
from polyroute.providers.openai_compatible import OpenAICompatibleProvider
from polyroute.registry import ModelSpec, load_registry
from polyroute.schema import Usage

from ..provider_fakes import PNG, FakeProviders, Reply, openai_error

KEY = "sk-proj-test0123456789abcdefXYZ"
REG = load_registry()


@pytest.fixture
def fake() -> Iterator[FakeProviders]:
    server = FakeProviders().start()
    yield server
    server.stop()


def provider(fake: FakeProviders) -> OpenAIProvider:
    return OpenAIProvider(api_key=KEY, base_url=f"{fake.url}/v1")


def req(model: str | ModelSpec = "gpt-4o", **kw: object) -> ModelRequest:
    spec = REG.get(model) if isinstance(model, str) else model
    return ModelRequest(model=spec, prompt=str(kw.pop("prompt", "Do the step.")), **kw)  # type: ignore[arg-type]


def local_model(fake: FakeProviders, base_url: str | None = None) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "id": "local-llama",
            "api_id": "meta-llama/Llama-3.1-8B-Instruct",
            "provider": "openai-compatible",
            "base_url": base_url if base_url is not None else f"{fake.url}/v1",
            "capabilities": ["json_mode"],
            "context_window": 131072,
            "max_output_tokens": 8192,
            "price": {"input": 0.2, "output": 0.4, "cache_read": 0.05, "cache_write": 0.2},
            "latency": {"ttft_ms": 300, "output_tokens_per_s": 60},
            "price_source": "self-hosted",
            "price_as_of": "2026-11-27",
        }
    )


def test_chat_completion_sends_system_prefix_first_and_max_completion_tokens(
    fake: FakeProviders,
) -> None:
    resp = asyncio.run(
        provider(fake).request(
            req(system="Be brief.", prefix="Task.", prompt="Step.", max_tokens=77)
        )
    )
    call = fake.calls(api="openai")[0]
    assert call.body["model"] == "gpt-4o"
    assert call.body["max_completion_tokens"] == 77
    assert call.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Task.\n\nStep."},
    ]
    assert call.headers["authorization"] == f"Bearer {KEY}"
    assert "response_format" not in call.body
    assert (resp.provider, resp.model, resp.text) == ("openai", "gpt-4o", "fake answer from gpt-4o")


def test_images_are_data_urls(fake: FakeProviders) -> None:
    asyncio.run(provider(fake).request(req("gpt-4o-mini", images=(ImageInput("image/png", PNG),))))
    parts = fake.calls(api="openai")[0].body["messages"][-1]["content"]
    assert parts[0] == {"type": "text", "text": "Do the step."}
    assert parts[1] == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}


def test_json_mode_sets_response_format_and_mentions_json(fake: FakeProviders) -> None:
    resp = asyncio.run(provider(fake).request(req(system="Judge.", json_mode=True)))
    body = fake.calls(api="openai")[0].body
    assert body["response_format"] == {"type": "json_object"}
    # OpenAI refuses json_object mode unless the messages mention JSON
    assert "JSON" in body["messages"][0]["content"]
    assert json.loads(resp.text)["model"] == "gpt-4o"


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        # 1,000 x $2.50 + 4,000 cached x $1.25 + 500 x $10, per million
        ("gpt-4o", 0.0125),
        # 1,000 x $0.15 + 4,000 cached x $0.075 + 500 x $0.60, per million
        ("gpt-4o-mini", 0.00075),
    ],
)
def test_cached_prompt_tokens_are_priced_at_the_cache_read_price(
    fake: FakeProviders, model: str, expected: float
) -> None:
    fake.set_usage(model, input=1000, cache_read=4000, output=500)
    resp = asyncio.run(provider(fake).request(req(model)))
    assert fake.calls(api="openai")[0].body["model"] == model
    assert (resp.usage.input_tokens, resp.usage.cache_read_tokens) == (1000, 4000)
    assert resp.usage.output_tokens == 500 and resp.usage.cache_write_tokens == 0
    assert call_cost(REG.get(model), resp.usage) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (openai_error(500, "server_error", "oops"), ProviderServerError),
        (openai_error(502, "server_error", "bad gateway"), ProviderServerError),
        (openai_error(503, "server_error", "unavailable"), ProviderServerError),
        (Reply(reset=True), ProviderServerError),
        (openai_error(400, "invalid_request_error", "bad param"), InvalidRequestError),
        (
            openai_error(401, "invalid_request_error", "bad key", "invalid_api_key"),
            AuthenticationError,
        ),
        (openai_error(403, "invalid_request_error", "region"), AuthenticationError),
        (
            openai_error(400, "invalid_request_error", "flagged", "content_policy_violation"),
            ContentRefusedError,
        ),
        (
            openai_error(429, "insufficient_quota", "no credit", "insufficient_quota"),
            AuthenticationError,
        ),
        (Reply(stop="content_filter"), ContentRefusedError),
    ],
)
def test_failures_map_to_polyroute_errors_without_sdk_retries(
    fake: FakeProviders, reply: Reply, error: type[Exception]
) -> None:
    fake.queue("gpt-4o", reply)
    with pytest.raises(error, match="gpt-4o"):
        asyncio.run(provider(fake).request(req()))
    assert len(fake.calls(api="openai")) == 1


def test_refusal_field_is_a_content_refusal(fake: FakeProviders) -> None:
    body = {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "gpt-4o",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "refusal": "I can't help."},
                "finish_reason": "stop",
            }
        ],
    }
    fake.queue("gpt-4o", Reply(body=body))
    with pytest.raises(ContentRefusedError, match="can't help") as info:
        asyncio.run(provider(fake).request(req()))
    assert info.value.usage is None  # this reply reported no usage: nothing to bill
    body["usage"] = {"prompt_tokens": 50, "completion_tokens": 7, "total_tokens": 57}
    fake.queue("gpt-4o", Reply(body=body))
    with pytest.raises(ContentRefusedError) as info:
        asyncio.run(provider(fake).request(req()))
    assert info.value.usage == Usage(input_tokens=50, output_tokens=7)


def test_rate_limit_reads_retry_after_ms(fake: FakeProviders) -> None:
    reply = openai_error(429, "requests", "Rate limit reached", "rate_limit_exceeded")
    reply.headers["retry-after-ms"] = "250"
    fake.queue("gpt-4o", reply)
    with pytest.raises(RateLimitedError) as info:
        asyncio.run(provider(fake).request(req()))
    assert info.value.retry_after_s == pytest.approx(0.25)


def test_length_finish_is_a_max_tokens_stop(fake: FakeProviders) -> None:
    fake.queue("gpt-4o", Reply(stop="length", text="cut"))
    resp = asyncio.run(provider(fake).request(req()))
    assert resp.stop_reason == "max_tokens"


def test_read_timeout_is_a_timeout_error(fake: FakeProviders) -> None:
    fake.queue("gpt-4o", Reply(delay_s=2.0))
    with pytest.raises(ProviderTimeoutError):
        asyncio.run(provider(fake).request(req(timeout_s=0.2)))


def test_key_in_an_error_message_is_redacted(fake: FakeProviders) -> None:
    fake.queue(
        "gpt-4o",
        openai_error(
            401, "invalid_request_error", f"Incorrect API key provided: {KEY}", "invalid_api_key"
        ),
    )
    with pytest.raises(AuthenticationError) as info:
        asyncio.run(provider(fake).request(req()))
    assert KEY not in str(info.value) and "Incorrect API key provided" in str(info.value)


def test_openai_compatible_server_by_base_url_without_a_key(fake: FakeProviders) -> None:
    spec = local_model(fake)
    fake.set_usage(spec.api_id, input=800, output=200, cache_read=0)
    resp = asyncio.run(OpenAICompatibleProvider().request(req(spec, max_tokens=64)))
    call = fake.calls(api="openai")[0]
    assert call.body["model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert call.body["max_tokens"] == 64 and "max_completion_tokens" not in call.body
    assert resp.provider == "openai-compatible"
    # 800 x $0.20 + 200 x $0.40, per million
    assert call_cost(spec, resp.usage) == pytest.approx(0.00024, abs=1e-12)


def test_openai_compatible_key_comes_from_its_env(
    fake: FakeProviders, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_COMPATIBLE_API_KEY", "local-token-123456")
    asyncio.run(OpenAICompatibleProvider().request(req(local_model(fake))))
    assert fake.calls(api="openai")[0].headers["authorization"] == "Bearer local-token-123456"


def test_openai_compatible_without_base_url_is_a_config_error(fake: FakeProviders) -> None:
    spec = local_model(fake, base_url="").model_copy(update={"base_url": None})
    with pytest.raises(ConfigError, match="base_url"):
        asyncio.run(OpenAICompatibleProvider().request(req(spec)))


def test_openai_without_a_key_is_an_authentication_error() -> None:
    with pytest.raises(AuthenticationError, match="OPENAI_API_KEY"):
        asyncio.run(OpenAIProvider().request(req()))
