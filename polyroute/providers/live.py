"""Live providers: which provider serves a model, which are installed and have credentials,
and what they share (mapping an HTTP failure to polyroute's errors, the JSON instruction).

Provider modules, and so the SDKs, are imported only when a run needs them (``load``).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any, NoReturn

from polyroute.errors import (
    AuthenticationError,
    ContentRefusedError,
    InvalidRequestError,
    OverloadedError,
    ProviderError,
    ProviderServerError,
    ProviderTimeoutError,
    RateLimitedError,
)
from polyroute.providers.base import ModelResponse, ProviderFactory, provider_factory
from polyroute.registry import ModelSpec
from polyroute.schema import Usage
from polyroute.secrets import api_key as lookup_api_key
from polyroute.secrets import has_api_key, key_env, redact, remember, secret_env

ANTHROPIC_VIA_ENV = "POLYROUTE_ANTHROPIC_VIA"
DEFAULT_TIMEOUT_S = 120.0
JSON_INSTRUCTION = "Answer with one JSON object and nothing else: no prose, no Markdown code fence."

_MODULES: dict[str, str] = {
    "anthropic": "polyroute.providers.anthropic",
    "openai": "polyroute.providers.openai",
    "openai-compatible": "polyroute.providers.openai_compatible",
    "bedrock": "polyroute.providers.bedrock",
}
_SDKS: dict[str, str] = {
    "anthropic": "anthropic",
    "openai": "openai",
    "openai-compatible": "openai",
    "bedrock": "boto3",
}


def live_providers() -> list[str]:
    """Names of the live providers polyroute ships."""
    return sorted(_MODULES)


def serving_provider(spec: ModelSpec) -> str:
    """The provider that serves ``spec`` here: the registry's, except that a Claude model with
    a ``bedrock_id`` goes to Bedrock when ``POLYROUTE_ANTHROPIC_VIA`` says so.

    ``POLYROUTE_ANTHROPIC_VIA=bedrock`` moves every such model; ``bedrock:ID,ID`` only those
    registry ids."""
    if spec.provider != "anthropic" or spec.bedrock_id is None:
        return spec.provider
    via = os.environ.get(ANTHROPIC_VIA_ENV, "").strip()
    target, _, only = via.partition(":")
    if target.strip().lower() != "bedrock":
        return spec.provider
    ids = {m.strip() for m in only.split(",") if m.strip()}
    return "bedrock" if not ids or spec.id in ids else spec.provider


def sdk_installed(provider: str) -> bool:
    """True when the SDK ``provider`` needs can be imported."""
    sdk = _SDKS.get(provider)
    return sdk is not None and importlib.util.find_spec(sdk) is not None


def aws_credentials_present() -> bool:
    """True when botocore's credential chain finds credentials (env, profile, role...)."""
    try:
        import botocore.session
    except ImportError:
        return False
    try:
        return botocore.session.get_session().get_credentials() is not None
    except Exception:
        return False


def available(provider: str, spec: ModelSpec | None = None) -> bool:
    """True when ``provider`` can make real calls here: its SDK is installed and its
    credentials are present (for ``openai-compatible``: the model has a ``base_url``)."""
    if provider not in _MODULES or not sdk_installed(provider):
        return False
    if provider in ("anthropic", "openai"):
        return has_api_key(provider)
    if provider == "openai-compatible":
        return spec is None or spec.base_url is not None
    if provider == "bedrock":
        return (spec is None or spec.bedrock_id is not None) and aws_credentials_present()
    return False


def load(provider: str) -> ProviderFactory | None:
    """Import ``provider``'s module (which registers it) and return its factory."""
    module = _MODULES.get(provider)
    if module is not None:
        importlib.import_module(module)
    return provider_factory(provider)


# --- failures ------------------------------------------------------------------------------


def retry_after_s(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    ms = lowered.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def error_for_status(
    provider: str,
    model: str,
    status: int,
    message: str,
    error_type: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> ProviderError:
    """The polyroute error for an HTTP failure, with the provider's reason, keys redacted."""
    kind = f" {error_type}" if error_type else ""
    text = redact(f"{provider} {model}: HTTP {status}{kind}: {message}".strip())
    etype = (error_type or "").lower()
    if status == 529 or etype in ("overloaded_error", "overloaded"):
        return OverloadedError(text)
    if status == 402 or etype in ("billing_error", "insufficient_quota"):
        # Out of credit: waiting will not help.
        return AuthenticationError(text)
    if status == 429:
        return RateLimitedError(text, retry_after_s=retry_after_s(headers))
    if status in (408, 504):
        return ProviderTimeoutError(text)
    if status in (401, 403) or etype in ("authentication_error", "permission_error"):
        return AuthenticationError(text)
    if etype in ("content_policy_violation", "content_filter"):
        return ContentRefusedError(text)
    if status >= 500 or status == 409:
        return ProviderServerError(text)
    return InvalidRequestError(text)


def connection_error(provider: str, model: str, exc: BaseException) -> ProviderError:
    """A connection reset or refusal (retryable): the reason without the request."""
    return ProviderServerError(redact(f"{provider} {model}: connection failed: {exc}"))


def timeout_error(provider: str, model: str, timeout_s: float | None) -> ProviderError:
    """A read timeout (retryable)."""
    after = f" after {timeout_s:g}s" if timeout_s else ""
    return ProviderTimeoutError(f"{provider} {model}: read timeout{after}")


def raise_mapped(exc: Exception, mapped: ProviderError | None) -> NoReturn:
    """Raise an SDK's exception as the polyroute error it maps to (``mapped``), or as it is
    when it maps to none (a bug to surface)."""
    if mapped is None:
        raise exc
    raise mapped from None


def sdk_status_error(
    provider: str, model: str, exc: Any, error: Mapping[str, Any], etype: object
) -> ProviderError:
    """An SDK's HTTP status exception as a polyroute error, given the body's error object
    and its type or code."""
    message = str(error.get("message") or getattr(exc, "message", "") or exc)
    return error_for_status(
        provider,
        model,
        exc.status_code,
        message,
        str(etype) if etype else None,
        dict(exc.response.headers),
    )


def refused(provider: str, model: str, why: str) -> ContentRefusedError:
    """The model declined to answer: not retried, no silent fallback."""
    return ContentRefusedError(redact(f"{provider} {model}: the model refused: {why}"))


def answer(
    spec: ModelSpec,
    provider: str,
    text: str,
    usage: Usage,
    stop: str,
    latency_ms: float,
    extra: dict[str, str],
    refusal: str | None = None,
) -> ModelResponse:
    """A vendor's answer as a ``ModelResponse``, after the checks every vendor shares: a
    refusal (``refusal``: why) raises with the tokens it was billed, and a stop at the
    model's context window counts as cut off."""
    if refusal is not None:
        raise refused(provider, spec.id, refusal).billed(usage)
    if stop == "model_context_window_exceeded":
        stop = "max_tokens"
    return ModelResponse(
        text=text,
        usage=usage,
        latency_ms=latency_ms,
        model=spec.id,
        provider=provider,
        stop_reason=stop,
        extra=extra,
    )


class SdkProvider:
    """What the providers built on a vendor's async SDK share: an injected client, or one
    made per base URL and event loop (an async HTTP pool cannot move between loops), the API
    key from the environment or Secrets Manager, a default timeout and a clock.

    Clients are typed ``Any``: the SDKs' request and response types change between their
    releases faster than these modules need to, and responses are read defensively."""

    name = ""
    sdk = ""
    """The SDK's module: imported when the provider is made, not inside the first call,
    where it would stall the event loop."""
    require_key = True

    def __init__(
        self,
        client: Any | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._client = client
        self._api_key = api_key
        self._base_url = base_url
        self._timeout_s = timeout_s
        self._clock = clock
        if client is None:
            importlib.import_module(self.sdk)
        self._clients: dict[str | None, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def _key(self) -> str | None:
        key = self._api_key or lookup_api_key(self.name)
        if not key and self.require_key:
            raise AuthenticationError(
                f"{self.name}: no API key (set {key_env(self.name)} or {secret_env(self.name)})"
            )
        if key:
            remember(key)
        return key

    def _sdk_client(self, base_url: str | None, make: Callable[[str | None], Any]) -> Any:
        """The injected client, else this loop's client for ``base_url`` (``make`` builds
        one)."""
        if self._client is not None:
            return self._client
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._clients, self._loop = {}, loop
        client = self._clients.get(base_url)
        if client is None:
            client = self._clients[base_url] = make(base_url)
        return client


def with_json_instruction(system: str | None, json_mode: bool) -> str | None:
    """The system prompt, with the JSON instruction appended when JSON is asked for."""
    if not json_mode:
        return system
    return f"{system}\n\n{JSON_INSTRUCTION}" if system else JSON_INSTRUCTION


# --- prompt caching ------------------------------------------------------------------------

# The shortest prefix each Claude model caches (Anthropic's prompt-caching docs): below it a
# cache marker is ignored without an error. Models not listed use the lowest documented floor,
# since marking a prefix too short to cache costs nothing while missing a cacheable one does.
_CACHE_MIN_TOKENS: tuple[tuple[str, int], ...] = (
    ("claude-opus-4-5", 4096),
    ("claude-opus-4-6", 4096),
    ("claude-opus-4-7", 4096),
    ("claude-haiku-4-5", 4096),
    ("claude-sonnet-4-5", 1024),
    ("claude-sonnet-4-6", 1024),
    ("claude-3-5-haiku", 2048),
    ("claude-3-haiku", 2048),
)
DEFAULT_CACHE_MIN_TOKENS = 1024


def cache_min_tokens(spec: ModelSpec) -> int:
    """The minimum cacheable prefix of a Claude model, in tokens."""
    for name in (spec.api_id, spec.id, spec.bedrock_id or ""):
        bare = name.split(".", 2)[-1] if "anthropic." in name else name
        for prefix, floor in _CACHE_MIN_TOKENS:
            if bare.startswith(prefix):
                return floor
    return DEFAULT_CACHE_MIN_TOKENS


def prefix_cacheable(spec: ModelSpec, prefix: str) -> bool:
    """True when the shared prefix is long enough for ``spec`` to cache it."""
    if not prefix:
        return False
    from polyroute.tokens import estimate_tokens

    return round(estimate_tokens(prefix) * spec.token_factor) >= cache_min_tokens(spec)
