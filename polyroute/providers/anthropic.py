"""Anthropic's Messages API through the ``anthropic`` SDK (``AsyncAnthropic``).

Text, base64 images, JSON output (by instruction, checked and repaired by ``execute``), system
prompts, and prompt caching: the step's shared prefix gets ``cache_control`` when it is long
enough for the model to cache, and cache reads and writes come back as their own usage kinds.
The SDK's own retries are off (``max_retries=0``): ``execute`` retries, and counts, each one.
"""

from __future__ import annotations

from typing import Any

from polyroute.errors import ProviderError
from polyroute.providers import live
from polyroute.providers.base import ModelRequest, ModelResponse, register_provider
from polyroute.schema import Usage

PROVIDER = "anthropic"


class AnthropicProvider(live.SdkProvider):
    """Claude through the Anthropic API."""

    name = PROVIDER
    sdk = "anthropic"

    def _get_client(self) -> Any:
        def make(base_url: str | None) -> Any:
            import anthropic

            return anthropic.AsyncAnthropic(
                api_key=self._key(), base_url=base_url, max_retries=0, timeout=self._timeout_s
            )

        return self._sdk_client(self._base_url, make)

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
            live.raise_mapped(exc, map_error(exc, spec.id, timeout))
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
            live.raise_mapped(exc, map_error(exc, req.model.id, timeout))
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
    extra = {"api_model": str(getattr(msg, "model", spec.api_id))}
    msg_id = getattr(msg, "id", None)
    if msg_id:
        extra["message_id"] = str(msg_id)
    refusal = "stop_reason refusal" if stop == "refusal" else None
    return live.answer(spec, PROVIDER, text, usage, stop, latency_ms, extra, refusal)


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
        return live.sdk_status_error(PROVIDER, model, exc, error, error.get("type"))
    if isinstance(exc, anthropic.APIConnectionError):
        return live.connection_error(PROVIDER, model, exc)
    return None


def _factory() -> AnthropicProvider:
    return AnthropicProvider()


register_provider(PROVIDER, _factory)
