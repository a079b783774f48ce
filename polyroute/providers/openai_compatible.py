"""Any OpenAI-compatible server (vLLM, Ollama, llama.cpp server, a fine-tuned model behind
one): the OpenAI provider pointed at the registry entry's ``base_url``.

A key is optional (``OPENAI_COMPATIBLE_API_KEY`` or ``POLYROUTE_SECRET_OPENAI_COMPATIBLE``);
most local servers accept any. Cache reads are priced when the server reports
``prompt_tokens_details.cached_tokens`` (vLLM with prefix caching does).
"""

from __future__ import annotations

from polyroute.errors import ConfigError
from polyroute.providers.base import register_provider
from polyroute.providers.openai import OpenAIProvider
from polyroute.registry import ModelSpec


class OpenAICompatibleProvider(OpenAIProvider):
    """A model served by an OpenAI-compatible chat-completions endpoint."""

    name = "openai-compatible"
    max_tokens_param = "max_tokens"
    require_key = False

    def base_url_for(self, spec: ModelSpec) -> str | None:
        """The registry entry's ``base_url`` (the server's ``.../v1``)."""
        url = spec.base_url or self._base_url
        if not url:
            raise ConfigError(
                f"{spec.id}: provider openai-compatible needs a base_url in the registry"
            )
        return url


def _factory() -> OpenAICompatibleProvider:
    return OpenAICompatibleProvider()


register_provider(OpenAICompatibleProvider.name, _factory)
