"""Retries, fallbacks and failures through the engine, with the real SDK providers against a
loopback server: what the step result records, and what is never retried or fallen back on."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from datetime import date
from typing import Any

import pytest

from polyroute.cost import call_cost
from polyroute.engine import Engine, EngineConfig
from polyroute.errors import ProviderTimeoutError
from polyroute.execute import RetriesExhaustedError, RetryPolicy, call_with_retries
from polyroute.providers.anthropic import AnthropicProvider
from polyroute.providers.base import ModelRequest, Provider
from polyroute.providers.openai import OpenAIProvider
from polyroute.providers.openai_compatible import OpenAICompatibleProvider
from polyroute.registry import ModelSpec, Registry, load_registry
from polyroute.routing import load_policy
from polyroute.schema import RunResult, Task

from ..provider_fakes import PNG, FakeProviders, Reply, anthropic_error, openai_error

DAY = date(2026, 11, 27)
ANTHROPIC_KEY = "sk-ant-api03-failover-0123456789"
OPUS, SONNET, HAIKU = (
    "claude-opus-4-5-20251101",
    "claude-sonnet-4-5-20250929",
    "claude-haiku-4-5-20251001",
)

pytestmark = pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning")


@pytest.fixture
def fake() -> Iterator[FakeProviders]:
    server = FakeProviders().start()
    yield server
    server.stop()


def registry(*ids: str, extra: list[ModelSpec] | None = None) -> Registry:
    """A registry of only these built-in models (successors outside it dropped)."""
    base = load_registry()
    models = {}
    for m in ids:
        spec = base.models[m]
        if spec.lifecycle.successor not in ids:
            life = spec.lifecycle.model_copy(update={"successor": None})
            spec = spec.model_copy(update={"lifecycle": life})
        models[m] = spec
    for spec in extra or []:
        models[spec.id] = spec
    first = ids[0]
    tiers = {t: (m if m in models else first) for t, m in base.tiers.items()}
    return Registry(tiers=tiers, models=models)


def text_model(fake: FakeProviders) -> ModelSpec:
    """A cheap local model without vision, on an OpenAI-compatible server."""
    return ModelSpec.model_validate(
        {
            "id": "local-text",
            "api_id": "local-text",
            "provider": "openai-compatible",
            "base_url": f"{fake.url}/v1",
            "capabilities": ["json_mode"],
            "context_window": 131072,
            "max_output_tokens": 8192,
            "price": {"input": 0.01, "output": 0.02, "cache_read": 0.0, "cache_write": 0.01},
            "latency": {"ttft_ms": 100, "output_tokens_per_s": 100},
            "price_source": "self-hosted",
            "price_as_of": "2026-11-27",
        }
    )


def engine(fake: FakeProviders, reg: Registry) -> Engine:
    providers: dict[str, Provider] = {
        "anthropic": AnthropicProvider(api_key=ANTHROPIC_KEY, base_url=fake.url),
        "openai": OpenAIProvider(api_key="sk-proj-failover-0123456789", base_url=f"{fake.url}/v1"),
        "openai-compatible": OpenAICompatibleProvider(),
    }

    async def no_sleep(_s: float) -> None:
        return None

    return Engine(
        EngineConfig(
            registry=reg,
            policy=load_policy(),
            provider_for=lambda spec: providers[spec.provider],
            today=DAY,
            retry=RetryPolicy(max_attempts=3, base_delay_s=0.5),
            sleep=no_sleep,
        )
    )


def one_step(**step: Any) -> Task:
    attachments = step.pop("attachments", [])
    return Task.model_validate(
        {
            "description": "Review the change and answer.",
            "attachments": attachments,
            "plan": {"steps": [{"id": "s", "description": "Do the step.", **step}]},
        }
    )


def run(fake: FakeProviders, reg: Registry, task: Task) -> RunResult:
    return asyncio.run(engine(fake, reg).run(task))


def overloaded() -> Reply:
    return anthropic_error(529, "overloaded_error", "Overloaded")


def test_fallback_chain_of_three_models_is_recorded(fake: FakeProviders) -> None:
    reg = registry("claude-opus-4-5", "claude-sonnet-4-5", "claude-haiku-4-5")
    fake.queue(OPUS, *[overloaded() for _ in range(3)])
    fake.queue(SONNET, *[overloaded() for _ in range(3)])
    fake.set_usage(HAIKU, input=1500, output=400)
    result = run(fake, reg, one_step(model="claude-opus-4-5"))
    step = result.steps[0]
    assert step.status == "succeeded"
    assert (step.model, step.provider, step.fallback_from) == (
        "claude-haiku-4-5",
        "anthropic",
        "claude-opus-4-5",
    )
    assert step.attempts == 7  # 3 on opus, 3 on sonnet, 1 on haiku
    assert "fell back from claude-opus-4-5 after OverloadedError" in step.reason
    assert [len(fake.calls(m)) for m in (OPUS, SONNET, HAIKU)] == [3, 3, 1]
    # only the call that answered is paid: 1,500 x $1 + 400 x $5, per million
    assert step.cost_usd == pytest.approx(0.0035, abs=1e-12)
    assert result.totals.cost_usd == pytest.approx(0.0035, abs=1e-12)
    assert call_cost(reg.get("claude-haiku-4-5"), step.usage) == pytest.approx(0.0035)
    assert result.providers == {
        "claude-opus-4-5": "anthropic",
        "claude-sonnet-4-5": "anthropic",
        "claude-haiku-4-5": "anthropic",
    }
    assert result.simulated is False


def test_no_fallback_across_a_needed_capability(fake: FakeProviders) -> None:
    reg = registry("gpt-4o-mini", extra=[text_model(fake)])
    fake.queue("gpt-4o-mini", *[openai_error(500, "server_error", "boom") for _ in range(3)])
    task = one_step(
        type="vision",
        useAttachments=True,
        attachments=[{"kind": "image", "data": PNG, "mediaType": "image/png"}],
    )
    result = run(fake, reg, task)
    step = result.steps[0]
    assert step.status == "failed"
    assert step.model == "gpt-4o-mini" and step.fallback_from is None
    assert "HTTP 500" in (step.error or "")
    assert len(fake.calls("gpt-4o-mini")) == 3
    assert fake.calls("local-text") == []  # cheaper, but blind: never tried
    lacks = next(c for c in step.candidates if c.model == "local-text")
    assert lacks.why_not is not None and "vision" in lacks.why_not


def test_fallback_does_reach_a_capable_cheaper_model(fake: FakeProviders) -> None:
    reg = registry("gpt-4o-mini", extra=[text_model(fake)])
    fake.queue("gpt-4o-mini", *[openai_error(503, "server_error", "busy") for _ in range(3)])
    result = run(fake, reg, one_step(model="gpt-4o-mini"))
    step = result.steps[0]
    assert step.status == "succeeded"
    assert (step.model, step.provider, step.fallback_from) == (
        "local-text",
        "openai-compatible",
        "gpt-4o-mini",
    )
    assert step.attempts == 4


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (anthropic_error(400, "invalid_request_error", "messages: bad role"), "bad role"),
        (
            anthropic_error(401, "authentication_error", f"invalid key {ANTHROPIC_KEY}"),
            "invalid key [redacted]",
        ),
        (anthropic_error(403, "permission_error", "model not allowed"), "model not allowed"),
        (Reply(stop="refusal", text=""), "refused"),
    ],
)
def test_non_retryable_failures_fail_the_step_without_retry_or_fallback(
    fake: FakeProviders, reply: Reply, reason: str
) -> None:
    reg = registry("claude-opus-4-5", "claude-sonnet-4-5", "claude-haiku-4-5")
    fake.queue(OPUS, reply)
    result = run(fake, reg, one_step(model="claude-opus-4-5"))
    step = result.steps[0]
    assert step.status == "failed" and result.status == "failed"
    assert step.fallback_from is None and step.attempts == 1
    assert reason in (step.error or "")
    assert ANTHROPIC_KEY not in result.model_dump_json()
    assert len(fake.calls(OPUS)) == 1
    assert fake.calls(SONNET) == [] and fake.calls(HAIKU) == []


def test_a_deadline_cuts_a_hanging_call_and_its_retries_short(fake: FakeProviders) -> None:
    """A call that hangs is cut at the deadline (not at the SDK's timeout), and no retry
    starts after it."""
    fake.queue(SONNET, *[Reply(delay_s=5.0) for _ in range(3)])
    provider = AnthropicProvider(api_key=ANTHROPIC_KEY, base_url=fake.url)
    # warm up: the SDK's import and first connection are not what is measured
    asyncio.run(
        provider.request(ModelRequest(model=load_registry().get("claude-haiku-4-5"), prompt="x"))
    )
    deadline = time.monotonic() + 0.5
    req = ModelRequest(model=load_registry().get("claude-sonnet-4-5"), prompt="x")
    start = time.monotonic()
    with pytest.raises((RetriesExhaustedError, ProviderTimeoutError)) as info:
        asyncio.run(
            call_with_retries(
                provider,
                req,
                RetryPolicy(max_attempts=3, base_delay_s=0.5),
                random.Random(0),
                lambda: deadline - time.monotonic(),
            )
        )
    elapsed = time.monotonic() - start
    assert elapsed < 2.0
    assert isinstance(info.value, RetriesExhaustedError) and info.value.attempts == 1
    assert isinstance(info.value.last, ProviderTimeoutError)
    assert len(fake.calls(SONNET)) == 1
