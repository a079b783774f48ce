"""Anthropic's Messages API through the ``anthropic`` SDK (``AsyncAnthropic``).

Text, base64 images, JSON output (by instruction, checked and repaired by ``execute``), system
prompts, and prompt caching: the step's shared prefix gets ``cache_control`` when it is long
enough for the model to cache, and cache reads and writes come back as their own usage kinds.
The SDK's own retries are off (``max_retries=0``): ``execute`` retries, and counts, each one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from polyroute.errors import AuthenticationError, ProviderError
from polyroute.providers import live
from polyroute.providers.base import ModelRequest, ModelResponse, register_provider
from polyroute.schema import Usage
from polyroute.secrets import api_key as lookup_api_key
from polyroute.secrets import key_env, remember, secret_env

PROVIDER = "anthropic"


class AnthropicProvider:
    """Claude through the Anthropic API."""

    name = PROVIDER

    def __init__(
        self,
        client: Any | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_s: float = live.DEFAULT_TIMEOUT_S,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        # The client is typed ``Any``: the SDK's request and response types change between
        # its releases faster than this module needs to, and responses are read defensively.
        self._client = client
        self._api_key = api_key
        self._base_url = base_url
        self._timeout_s = timeout_s
        self._clock = clock
        if client is None:
            # Import the SDK now, not inside the first call, where it would stall the loop.
            import anthropic  # noqa: F401
        self._loop_client: tuple[asyncio.AbstractEventLoop, Any] | None = None

    def _get_client(self) -> Any:
        if self._client is not None:
            return self._client
        # One client per event loop: an async HTTP pool cannot move between loops.
        loop = asyncio.get_running_loop()
        if self._loop_client is None or self._loop_client[0] is not loop:
            import anthropic

            key = self._api_key or lookup_api_key(PROVIDER)
            if not key:
                raise AuthenticationError(
                    f"anthropic: no API key (set {key_env(PROVIDER)} or {secret_env(PROVIDER)})"
                )
            remember(key)
            client = anthropic.AsyncAnthropic(
                api_key=key, base_url=self._base_url, max_retries=0, timeout=self._timeout_s
            )
            self._loop_client = (loop, client)
        return self._loop_client[1]

    async def request(self, req: ModelRequest) -> ModelResponse:
        """One Messages API call."""
        client = self._get_client()
        spec = req.model
        timeout = req.timeout_s or self._timeout_s
        start = self._clock()
        try:
            msg = await client.messages.create(
                model=spec.api_id,
                max_tokens=req.max_tokens,
                messages=[{"role": "user", "content": content_blocks(req)}],
                timeout=timeout,
                **system_param(req),
            )
        except Exception as exc:
            err = map_error(exc, spec.id, timeout)
            if err is None:
                raise
            raise err from None
        latency_ms = (self._clock() - start) * 1000.0
        return parse_message(msg, req, latency_ms)

    async def count_tokens(self, req: ModelRequest) -> int:
        """The exact input tokens of ``req`` from the count-tokens endpoint (free of charge)."""
        client = self._get_client()
        timeout = req.timeout_s or self._timeout_s
        try:
            result = await client.messages.count_tokens(
                model=req.model.api_id,
                messages=[{"role": "user", "content": content_blocks(req)}],
                timeout=timeout,
                **system_param(req),
            )
        except Exception as exc:
            err = map_error(exc, req.model.id, timeout)
            if err is None:
                raise
            raise err from None
        return int(result.input_tokens)


def system_param(req: ModelRequest) -> dict[str, Any]:
    """``system=...`` when there is a system prompt (with the JSON instruction if asked)."""
    system = live.with_json_instruction(req.system, req.json_mode)
    return {"system": system} if system else {}


def content_blocks(req: ModelRequest) -> list[dict[str, Any]]:
    """The user turn: the shared prefix (cacheable when long enough), images, then the rest."""
    blocks: list[dict[str, Any]] = []
    if req.prefix:
        block: dict[str, Any] = {"type": "text", "text": req.prefix}
        if live.prefix_cacheable(req.model, req.prefix):
            block["cache_control"] = {"type": "ephemeral"}
        blocks.append(block)
    for image in req.images:
        blocks.append(
            {
                "type": "image",
                "source": {
                    "type": "base64",
                    "media_type": image.media_type,
                    "data": image.data_b64,
                },
            }
        )
    # The API refuses empty text blocks.
    if req.prompt or not blocks:
        blocks.append({"type": "text", "text": req.prompt or "."})
    return blocks


def parse_message(msg: Any, req: ModelRequest, latency_ms: float) -> ModelResponse:
    """A Messages API response as a ``ModelResponse``; a refusal raises."""
    spec = req.model
    text = "".join(
        getattr(block, "text", "") or ""
        for block in (getattr(msg, "content", None) or [])
        if getattr(block, "type", None) == "text"
    )
    stop = str(getattr(msg, "stop_reason", None) or "end_turn")
    u = getattr(msg, "usage", None)
    usage = Usage(
        input_tokens=int(getattr(u, "input_tokens", 0) or 0),
        output_tokens=int(getattr(u, "output_tokens", 0) or 0),
        cache_read_tokens=int(getattr(u, "cache_read_input_tokens", 0) or 0),
        cache_write_tokens=int(getattr(u, "cache_creation_input_tokens", 0) or 0),
    )
    if stop == "refusal":
        raise live.refused(PROVIDER, spec.id, "stop_reason refusal").billed(usage)
    if stop == "model_context_window_exceeded":
        stop = "max_tokens"
    extra = {"api_model": str(getattr(msg, "model", spec.api_id))}
    msg_id = getattr(msg, "id", None)
    if msg_id:
        extra["message_id"] = str(msg_id)
    return ModelResponse(
        text=text,
        usage=usage,
        latency_ms=latency_ms,
        model=spec.id,
        provider=PROVIDER,
        stop_reason=stop,
        extra=extra,
    )


def map_error(exc: Exception, model: str, timeout_s: float | None) -> ProviderError | None:
    """An SDK exception as a polyroute error; None for anything else (a bug to surface)."""
    import anthropic

    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, anthropic.APITimeoutError):
        return live.timeout_error(PROVIDER, model, timeout_s)
    if isinstance(exc, anthropic.APIStatusError):
        body: dict[str, Any] = exc.body if isinstance(exc.body, dict) else {}
        inner = body.get("error")
        error: dict[str, Any] = inner if isinstance(inner, dict) else {}
        message = str(error.get("message") or getattr(exc, "message", "") or exc)
        etype = error.get("type")
        return live.error_for_status(
            PROVIDER,
            model,
            exc.status_code,
            message,
            str(etype) if etype else None,
            dict(exc.response.headers),
        )
    if isinstance(exc, anthropic.APIConnectionError):
        return live.connection_error(PROVIDER, model, exc)
    return None


def _factory() -> AnthropicProvider:
    return AnthropicProvider()


register_provider(PROVIDER, _factory)
