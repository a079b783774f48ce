"""OpenAI chat completions through the ``openai`` SDK (``AsyncOpenAI``).

Text, images (data URLs), JSON mode (``response_format={"type": "json_object"}``) and system
prompts. OpenAI caches long prompt prefixes by itself: the shared prefix goes first so that
consecutive steps share it, and ``usage.prompt_tokens_details.cached_tokens`` is priced as
OpenAI prices it (cached tokens at the cache-read price, the rest of the prompt at the input
price). The SDK's own retries are off (``max_retries=0``): ``execute`` retries.
"""

from __future__ import annotations

from typing import Any

from polyroute.errors import ProviderError
from polyroute.providers import live
from polyroute.providers.base import ModelRequest, ModelResponse, register_provider
from polyroute.registry import ModelSpec
from polyroute.schema import Usage


class OpenAIProvider(live.SdkProvider):
    """GPT models through the OpenAI API."""

    name = "openai"
    sdk = "openai"
    # OpenAI's newer models take only ``max_completion_tokens``; compatible servers know
    # ``max_tokens``.
    max_tokens_param = "max_completion_tokens"

    def base_url_for(self, spec: ModelSpec) -> str | None:
        """Where ``spec`` is served (None: the SDK's default or ``OPENAI_BASE_URL``)."""
        return self._base_url

    def _get_client(self, spec: ModelSpec) -> Any:
        def make(base_url: str | None) -> Any:
            import openai

            return openai.AsyncOpenAI(
                api_key=self._key() or "unused",
                base_url=base_url,
                max_retries=0,
                timeout=self._timeout_s,
            )

        return self._sdk_client(self.base_url_for(spec), make)

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
            live.raise_mapped(exc, map_error(exc, self.name, spec.id, timeout))
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
    finish = str(getattr(choice, "finish_reason", None) or "stop")
    refusal = getattr(message, "refusal", None)
    why = str(refusal) if refusal else None
    if why is None and finish == "content_filter":
        why = "finish_reason content_filter"
    stop = {"stop": "end_turn", "length": "max_tokens"}.get(finish, finish)
    extra = {"api_model": str(getattr(completion, "model", spec.api_id))}
    text = str(getattr(message, "content", None) or "")
    return live.answer(spec, provider, text, usage, stop, latency_ms, extra, why)


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
        etype = error.get("code") or error.get("type")
        return live.sdk_status_error(provider, model, exc, error, etype)
    if isinstance(exc, openai.APIConnectionError):
        return live.connection_error(provider, model, exc)
    return None


def _factory() -> OpenAIProvider:
    return OpenAIProvider()


register_provider(OpenAIProvider.name, _factory)
