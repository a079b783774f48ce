"""Which provider serves a model, when a live provider is available, and ``auto`` selection."""

from __future__ import annotations

import subprocess
import sys

import pytest

from polyroute import secrets
from polyroute.providers import live
from polyroute.providers.select import provider_selector
from polyroute.providers.simulated import SimulatedProvider
from polyroute.registry import ModelSpec, load_registry

REG = load_registry()


@pytest.fixture(autouse=True)
def no_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    for var in (
        "POLYROUTE_ANTHROPIC_VIA",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", f"{tmp_path}/none")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", f"{tmp_path}/none")
    for var in (
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(var, raising=False)


def local() -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "id": "local",
            "api_id": "m",
            "provider": "openai-compatible",
            "base_url": "http://127.0.0.1:9/v1",
            "context_window": 8192,
            "max_output_tokens": 1024,
            "price": {"input": 0, "output": 0, "cache_read": 0, "cache_write": 0},
            "latency": {"ttft_ms": 100, "output_tokens_per_s": 50},
            "price_source": "self-hosted",
            "price_as_of": "2026-11-27",
        }
    )


def test_registry_provider_serves_by_default() -> None:
    assert live.serving_provider(REG.get("claude-haiku-4-5")) == "anthropic"
    assert live.serving_provider(REG.get("gpt-4o")) == "openai"


@pytest.mark.parametrize(
    ("via", "model", "expected"),
    [
        ("bedrock", "claude-haiku-4-5", "bedrock"),
        ("bedrock", "claude-sonnet-5-5", "anthropic"),  # no bedrock_id: stays on Anthropic
        ("bedrock", "gpt-4o", "openai"),
        ("bedrock:claude-haiku-4-5", "claude-haiku-4-5", "bedrock"),
        ("bedrock:claude-haiku-4-5", "claude-opus-4-5", "anthropic"),
        ("anthropic", "claude-haiku-4-5", "anthropic"),
    ],
)
def test_anthropic_via_bedrock_by_environment(
    monkeypatch: pytest.MonkeyPatch, via: str, model: str, expected: str
) -> None:
    monkeypatch.setenv("POLYROUTE_ANTHROPIC_VIA", via)
    assert live.serving_provider(REG.get(model)) == expected


def test_availability_follows_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not live.available("anthropic")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-x-123456789")
    assert live.available("anthropic")
    moto = pytest.importorskip("moto")
    boto3 = pytest.importorskip("boto3")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with moto.mock_aws():
        sm = boto3.client("secretsmanager", region_name="us-east-1")
        sm.create_secret(Name="prod/openai", SecretString=secrets.placeholder("openai"))
        monkeypatch.setenv("POLYROUTE_SECRET_OPENAI", "prod/openai")
        assert not live.available("openai")  # the stack's placeholder is no key
        secrets.clear_cache()
        sm.put_secret_value(SecretId="prod/openai", SecretString="sk-proj-123456789")
        assert live.available("openai")
    assert not live.available("bedrock")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    assert live.available("bedrock", REG.get("claude-haiku-4-5"))
    assert not live.available("bedrock", REG.get("gpt-4o"))  # no bedrock_id
    assert live.available("openai-compatible", local())
    assert not live.available("openai-compatible", local().model_copy(update={"base_url": None}))
    assert not live.available("no-such-provider")


def test_auto_without_credentials_is_simulated() -> None:
    pick = provider_selector("auto")
    assert isinstance(pick(REG.get("claude-haiku-4-5")), SimulatedProvider)
    assert isinstance(pick(REG.get("gpt-4o")), SimulatedProvider)


def test_auto_picks_live_providers_where_credentials_are(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-x-123456789")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("POLYROUTE_ANTHROPIC_VIA", "bedrock:claude-haiku-4-5")
    pick = provider_selector("auto")
    assert pick(REG.get("claude-sonnet-4-5")).name == "anthropic"
    assert pick(REG.get("claude-opus-4-5")) is pick(REG.get("claude-sonnet-4-5"))
    assert pick(REG.get("claude-haiku-4-5")).name == "bedrock"
    assert isinstance(pick(REG.get("gpt-4o")), SimulatedProvider)  # no OpenAI key
    assert pick(local()).name == "openai-compatible"


def test_cache_minimums_by_model() -> None:
    assert live.cache_min_tokens(REG.get("claude-sonnet-4-5")) == 1024
    assert live.cache_min_tokens(REG.get("claude-haiku-4-5")) == 4096
    assert live.cache_min_tokens(REG.get("claude-opus-4-5")) == 4096
    assert live.cache_min_tokens(REG.get("claude-sonnet-5-5")) == live.DEFAULT_CACHE_MIN_TOKENS


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "3"}, 3.0),
        ({"Retry-After": "0.5"}, 0.5),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after": "Fri, 27 Nov 2026 18:00:10 GMT"}, 10.0),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_parsing(headers: dict[str, str], expected: float | None) -> None:
    now = 1795802400.0  # 2026-11-27 18:00:00 UTC
    assert live.retry_after_s(headers, now=now) == expected


def test_importing_polyroute_and_the_selector_loads_no_sdk() -> None:
    code = (
        "import sys, polyroute, polyroute.cli, polyroute.providers.select;"
        "print(sorted(m for m in ('anthropic', 'openai', 'boto3') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
