"""OpenAI chat completions through the ``openai`` SDK (``AsyncOpenAI``).

Text, images (data URLs), JSON mode (``response_format={"type": "json_object"}``) and system
prompts. OpenAI caches long prompt prefixes by itself: the shared prefix goes first so that
consecutive steps share it, and ``usage.prompt_tokens_details.cached_tokens`` is priced as
OpenAI prices it (cached tokens at the cache-read price, the rest of the prompt at the input
price). The SDK's own retries are off (``max_retries=0``): ``execute`` retries.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from polyroute.errors import AuthenticationError, ProviderError
from polyroute.providers import live
from polyroute.providers.base import ModelRequest, ModelResponse, register_provider
from polyroute.registry import ModelSpec
from polyroute.schema import Usage
from polyroute.secrets import api_key as lookup_api_key
from polyroute.secrets import key_env, remember, secret_env


class OpenAIProvider:
    """GPT models through the OpenAI API."""

    name = "openai"
    # OpenAI's newer models take only ``max_completion_tokens``; compatible servers know
    # ``max_tokens``.
    max_tokens_param = "max_completion_tokens"
    require_key = True

    def __init__(
        self,
        client: Any | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_s: float = live.DEFAULT_TIMEOUT_S,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        # ``Any``: see the Anthropic provider; responses are read defensively.
        self._client = client
        self._api_key = api_key
        self._base_url = base_url
        self._timeout_s = timeout_s
        self._clock = clock
        if client is None:
            # Import the SDK now, not inside the first call, where it would stall the loop.
            import openai  # noqa: F401
        self._clients: dict[str | None, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def base_url_for(self, spec: ModelSpec) -> str | None:
        """Where ``spec`` is served (None: the SDK's default or ``OPENAI_BASE_URL``)."""
        return self._base_url

    def _key(self) -> str | None:
        key = self._api_key or lookup_api_key(self.name)
        if not key and self.require_key:
            raise AuthenticationError(
                f"{self.name}: no API key (set {key_env(self.name)} or {secret_env(self.name)})"
            )
        if key:
            remember(key)
        return key

    def _get_client(self, spec: ModelSpec) -> Any:
        if self._client is not None:
            return self._client
        # One client per base URL and event loop: an async HTTP pool cannot move between loops.
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._clients, self._loop = {}, loop
        base_url = self.base_url_for(spec)
        client = self._clients.get(base_url)
        if client is None:
            import openai

            client = openai.AsyncOpenAI(
                api_key=self._key() or "unused",
                base_url=base_url,
                max_retries=0,
                timeout=self._timeout_s,
            )
            self._clients[base_url] = client
        return client

    async def request(self, req: ModelRequest) -> ModelResponse:
        """One chat completion."""
        spec = req.model
        client = self._get_client(spec)
        timeout = req.timeout_s or self._timeout_s
        params: dict[str, Any] = {
            "model": spec.api_id,
            "messages": chat_messages(req),
            self.max_tokens_param: req.max_tokens,
            "timeout": timeout,
        }
        if req.json_mode:
            params["response_format"] = {"type": "json_object"}
        start = self._clock()
        try:
            completion = await client.chat.completions.create(**params)
        except Exception as exc:
            err = map_error(exc, self.name, spec.id, timeout)
            if err is None:
                raise
            raise err from None
        latency_ms = (self._clock() - start) * 1000.0
        return parse_completion(completion, req, latency_ms, self.name)


def chat_messages(req: ModelRequest) -> list[dict[str, Any]]:
    """System message, then one user message: the shared prefix first (so it caches)."""
    messages: list[dict[str, Any]] = []
    system = live.with_json_instruction(req.system, req.json_mode)
    if system:
        messages.append({"role": "system", "content": system})
    text = "\n\n".join(part for part in (req.prefix, req.prompt) if part) or "."
    if not req.images:
        # Plain string content: every compatible server understands it.
        messages.append({"role": "user", "content": text})
        return messages
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    for image in req.images:
        url = f"data:{image.media_type};base64,{image.data_b64}"
        parts.append({"type": "image_url", "image_url": {"url": url}})
    messages.append({"role": "user", "content": parts})
    return messages


def parse_completion(
    completion: Any, req: ModelRequest, latency_ms: float, provider: str
) -> ModelResponse:
    """A chat completion as a ``ModelResponse``; a refusal or content filter raises."""
    spec = req.model
    choices = getattr(completion, "choices", None) or []
    if not choices:
        raise live.error_for_status(provider, spec.id, 502, "the response has no choices")
    choice = choices[0]
    message = getattr(choice, "message", None)
    u = getattr(completion, "usage", None)
    prompt = int(getattr(u, "prompt_tokens", 0) or 0)
    details = getattr(u, "prompt_tokens_details", None)
    cached = min(prompt, int(getattr(details, "cached_tokens", 0) or 0))
    usage = Usage(
        input_tokens=prompt - cached,
        output_tokens=int(getattr(u, "completion_tokens", 0) or 0),
        cache_read_tokens=cached,
    )
    refusal = getattr(message, "refusal", None)
    if refusal:
        raise live.refused(provider, spec.id, str(refusal)).billed(usage)
    finish = str(getattr(choice, "finish_reason", None) or "stop")
    if finish == "content_filter":
        raise live.refused(provider, spec.id, "finish_reason content_filter").billed(usage)
    stop = {"stop": "end_turn", "length": "max_tokens"}.get(finish, finish)
    extra = {"api_model": str(getattr(completion, "model", spec.api_id))}
    return ModelResponse(
        text=str(getattr(message, "content", None) or ""),
        usage=usage,
        latency_ms=latency_ms,
        model=spec.id,
        provider=provider,
        stop_reason=stop,
        extra=extra,
    )


def map_error(
    exc: Exception, provider: str, model: str, timeout_s: float | None
) -> ProviderError | None:
    """An SDK exception as a polyroute error; None for anything else (a bug to surface)."""
    import openai

    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, openai.APITimeoutError):
        return live.timeout_error(provider, model, timeout_s)
    if isinstance(exc, openai.APIStatusError):
        # The SDK hands over the body's ``error`` object; other servers may not nest it.
        body: dict[str, Any] = exc.body if isinstance(exc.body, dict) else {}
        inner = body.get("error")
        error: dict[str, Any] = inner if isinstance(inner, dict) else body
        message = str(error.get("message") or getattr(exc, "message", "") or exc)
        etype = error.get("code") or error.get("type")
        return live.error_for_status(
            provider,
            model,
            exc.status_code,
            message,
            str(etype) if etype else None,
            dict(exc.response.headers),
        )
    if isinstance(exc, openai.APIConnectionError):
        return live.connection_error(provider, model, exc)
    return None


def _factory() -> OpenAIProvider:
    return OpenAIProvider()


register_provider(OpenAIProvider.name, _factory)
