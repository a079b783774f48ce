"""The Anthropic provider through the real ``anthropic`` SDK against a loopback server."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator

import pytest

from polyroute.cost import call_cost
from polyroute.errors import (
    AuthenticationError,
    ContentRefusedError,
    InvalidRequestError,
    OutputTruncatedError,
    OverloadedError,
    ProviderServerError,
    ProviderTimeoutError,
    RateLimitedError,
)
from polyroute.execute import RetryPolicy, call_with_retries
from polyroute.providers.anthropic import AnthropicProvider
from polyroute.providers.base import ImageInput, ModelRequest
from polyroute.registry import load_registry
from polyroute.schema import Usage

from ..provider_fakes import PNG, FakeProviders, Reply, anthropic_error

KEY = "sk-ant-api03-test-0123456789abcdef"
SONNET = "claude-sonnet-4-5-20250929"
HAIKU = "claude-haiku-4-5-20251001"
REG = load_registry()

# The SDK warns that the 4.5 models retire soon; that is the registry's business, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning")


@pytest.fixture
def fake() -> Iterator[FakeProviders]:
    server = FakeProviders().start()
    yield server
    server.stop()


def provider(fake: FakeProviders) -> AnthropicProvider:
    return AnthropicProvider(api_key=KEY, base_url=fake.url)


def req(model: str = "claude-sonnet-4-5", **kw: object) -> ModelRequest:
    return ModelRequest(model=REG.get(model), prompt=str(kw.pop("prompt", "Do the step.")), **kw)  # type: ignore[arg-type]


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def words(n: int) -> str:
    return " ".join(f"word{i % 50}" for i in range(n))


def test_text_call_sends_model_system_and_max_tokens_and_prices_usage(
    fake: FakeProviders,
) -> None:
    fake.set_usage(SONNET, input=1200, output=300)
    resp = asyncio.run(provider(fake).request(req(system="Be brief.", max_tokens=321)))
    call = fake.calls(api="anthropic")[0]
    assert call.body["model"] == SONNET
    assert call.body["max_tokens"] == 321
    assert call.body["system"] == "Be brief."
    # SDK releases differ in how they send the key (x-api-key, or a bearer token)
    sent = call.headers.get("x-api-key") or call.headers.get("authorization", "")
    assert sent.removeprefix("Bearer ") == KEY
    assert resp.text == f"fake answer from {SONNET}"
    assert (resp.provider, resp.model, resp.simulated) == ("anthropic", "claude-sonnet-4-5", False)
    assert (resp.usage.input_tokens, resp.usage.output_tokens) == (1200, 300)
    # 1,200 x $3 + 300 x $15 per million
    assert call_cost(REG.get("claude-sonnet-4-5"), resp.usage) == pytest.approx(0.0081, abs=1e-12)


def test_images_are_base64_blocks_between_prefix_and_prompt(fake: FakeProviders) -> None:
    asyncio.run(
        provider(fake).request(
            req(prefix="The task.", images=(ImageInput("image/png", PNG),), prompt="Describe.")
        )
    )
    content = fake.calls(api="anthropic")[0].body["messages"][0]["content"]
    assert [b["type"] for b in content] == ["text", "image", "text"]
    assert content[1]["source"] == {"type": "base64", "media_type": "image/png", "data": PNG}
    assert content[0]["text"] == "The task." and content[2]["text"] == "Describe."


def test_json_mode_asks_for_json_in_the_system_prompt(fake: FakeProviders) -> None:
    resp = asyncio.run(provider(fake).request(req(system="Judge.", json_mode=True)))
    system = fake.calls(api="anthropic")[0].body["system"]
    assert system.startswith("Judge.") and "JSON object" in system
    assert json.loads(resp.text)["verdict"] == "request-changes"


@pytest.mark.parametrize(
    ("model", "prefix_words", "cached"),
    [
        ("claude-sonnet-4-5", 1500, True),  # floor 1,024
        ("claude-sonnet-4-5", 300, False),
        ("claude-haiku-4-5", 1500, False),  # floor 4,096
        ("claude-haiku-4-5", 5000, True),
    ],
)
def test_cache_control_marks_the_prefix_only_when_long_enough(
    fake: FakeProviders, model: str, prefix_words: int, cached: bool
) -> None:
    asyncio.run(provider(fake).request(req(model, prefix=words(prefix_words))))
    first = fake.calls(api="anthropic")[0].body["messages"][0]["content"][0]
    assert ("cache_control" in first) is cached
    if cached:
        assert first["cache_control"] == {"type": "ephemeral"}


def test_cache_read_and_write_tokens_are_priced_from_the_registry(fake: FakeProviders) -> None:
    spec = REG.get("claude-sonnet-4-5")
    fake.set_usage(SONNET, input=200, output=100, cache_write=3000)
    write = asyncio.run(provider(fake).request(req(prefix=words(1500))))
    fake.set_usage(SONNET, input=200, output=100, cache_read=3000)
    read = asyncio.run(provider(fake).request(req(prefix=words(1500))))
    assert (write.usage.cache_write_tokens, read.usage.cache_read_tokens) == (3000, 3000)
    # 200 x $3 + 100 x $15 + 3,000 x $3.75 (write) or x $0.30 (read), per million
    assert call_cost(spec, write.usage) == pytest.approx(0.01335, abs=1e-12)
    assert call_cost(spec, read.usage) == pytest.approx(0.003, abs=1e-12)


def test_count_tokens_uses_the_count_endpoint(fake: FakeProviders) -> None:
    fake.count_tokens[SONNET] = 1234
    n = asyncio.run(provider(fake).count_tokens(req(system="S", prefix="P", prompt="Q")))
    call = fake.calls(api="anthropic-count")[0]
    assert n == 1234
    assert call.body["system"] == "S"
    assert [b["text"] for b in call.body["messages"][0]["content"]] == ["P", "Q"]
    assert fake.calls(api="anthropic") == []


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (anthropic_error(529, "overloaded_error", "Overloaded"), OverloadedError),
        (anthropic_error(500, "api_error", "Internal server error"), ProviderServerError),
        (anthropic_error(502, "api_error", "Bad gateway"), ProviderServerError),
        (anthropic_error(503, "api_error", "Unavailable"), ProviderServerError),
        (Reply(reset=True), ProviderServerError),
        (
            anthropic_error(400, "invalid_request_error", "max_tokens: too large"),
            InvalidRequestError,
        ),
        (anthropic_error(401, "authentication_error", "invalid x-api-key"), AuthenticationError),
        (anthropic_error(403, "permission_error", "not allowed"), AuthenticationError),
        (Reply(stop="refusal", text=""), ContentRefusedError),
    ],
)
def test_failures_map_to_polyroute_errors_without_sdk_retries(
    fake: FakeProviders, reply: Reply, error: type[Exception]
) -> None:
    fake.queue(SONNET, reply)
    with pytest.raises(error) as info:
        asyncio.run(provider(fake).request(req()))
    assert len(fake.calls(api="anthropic")) == 1  # the SDK did not retry on its own
    assert "claude-sonnet-4-5" in str(info.value)


def test_a_refusal_carries_the_tokens_it_was_billed(fake: FakeProviders) -> None:
    fake.queue(SONNET, Reply(stop="refusal", text=""))
    with pytest.raises(ContentRefusedError) as info:
        asyncio.run(provider(fake).request(req()))
    assert info.value.usage == Usage(input_tokens=100, output_tokens=20)


def test_rate_limit_carries_retry_after(fake: FakeProviders) -> None:
    fake.queue(
        SONNET, anthropic_error(429, "rate_limit_error", "slow down", **{"retry-after": "7"})
    )
    with pytest.raises(RateLimitedError) as info:
        asyncio.run(provider(fake).request(req()))
    assert info.value.retry_after_s == 7.0


def test_read_timeout_is_a_timeout_error(fake: FakeProviders) -> None:
    fake.queue(SONNET, Reply(delay_s=2.0))
    with pytest.raises(ProviderTimeoutError, match="read timeout"):
        asyncio.run(provider(fake).request(req(timeout_s=0.2)))


def test_keys_are_redacted_from_error_messages(fake: FakeProviders) -> None:
    fake.queue(SONNET, anthropic_error(401, "authentication_error", f"bad key {KEY}"))
    with pytest.raises(AuthenticationError) as info:
        asyncio.run(provider(fake).request(req()))
    assert KEY not in str(info.value) and "sk-ant" not in str(info.value)
    assert "[redacted]" in str(info.value)


def test_max_tokens_stop_is_reported_and_repaired_once(fake: FakeProviders) -> None:
    fake.set_usage(SONNET, input=100, output=50)
    fake.queue(SONNET, Reply(stop="max_tokens", text="half an ans"))
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    result = asyncio.run(
        call_with_retries(
            provider(fake), req(max_tokens=50), RetryPolicy(), random.Random(0), lambda: None, sleep
        )
    )
    calls = fake.calls(api="anthropic")
    assert len(calls) == 2 and result.attempts == 2
    assert "cut off" in calls[1].body["messages"][0]["content"][-1]["text"]
    assert result.response.text == f"fake answer from {SONNET}"
    # both calls are paid for
    assert (result.response.usage.input_tokens, result.response.usage.output_tokens) == (200, 100)


def test_truncated_twice_fails_clearly(fake: FakeProviders) -> None:
    fake.queue(SONNET, Reply(stop="max_tokens", text="a"), Reply(stop="max_tokens", text="b"))
    with pytest.raises(OutputTruncatedError, match="after one repair attempt"):
        asyncio.run(
            call_with_retries(provider(fake), req(), RetryPolicy(), random.Random(0), lambda: None)
        )
    assert len(fake.calls(api="anthropic")) == 2


def test_retries_overloaded_then_succeeds_with_jittered_backoff(fake: FakeProviders) -> None:
    fake.queue(
        SONNET,
        anthropic_error(529, "overloaded_error", "Overloaded"),
        anthropic_error(529, "overloaded_error", "Overloaded"),
    )
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    result = asyncio.run(
        call_with_retries(
            provider(fake),
            req(),
            RetryPolicy(max_attempts=3, base_delay_s=0.5),
            random.Random(1),
            lambda: None,
            sleep,
        )
    )
    assert result.attempts == 3
    assert len(sleeps) == 2
    assert 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0


def test_retry_after_is_honoured_by_the_retry_loop(fake: FakeProviders) -> None:
    fake.queue(SONNET, anthropic_error(429, "rate_limit_error", "slow", **{"retry-after": "1.5"}))
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    result = asyncio.run(
        call_with_retries(
            provider(fake), req(), RetryPolicy(), random.Random(0), lambda: None, sleep
        )
    )
    assert result.attempts == 2 and sleeps == [1.5]
