"""The provider contract: one async call from a request to text, usage and latency."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from polyroute.registry import ModelSpec
from polyroute.schema import Usage

Purpose = Literal["execute", "classify", "plan"]


@dataclass(frozen=True)
class ImageInput:
    """An image for a vision call, base64-encoded."""

    media_type: str
    data_b64: str


@dataclass(frozen=True)
class ModelRequest:
    """One call to one model.

    ``prefix`` is the part of the input shared by the steps of a run (the original task and
    the facts gathered so far): providers that cache prompts mark it cacheable. ``prompt`` is
    the rest (the step and its dependencies' results)."""

    model: ModelSpec
    prompt: str
    prefix: str = ""
    system: str | None = None
    images: tuple[ImageInput, ...] = ()
    json_mode: bool = False
    max_tokens: int = 1024
    timeout_s: float | None = None
    purpose: Purpose = "execute"
    step_id: str = ""
    step_type: str = "general"
    seed: int = 0


@dataclass(frozen=True)
class ModelResponse:
    """What a provider returns: the text and what the call used."""

    text: str
    usage: Usage
    latency_ms: float
    model: str
    provider: str
    simulated: bool = False
    stop_reason: str = "end_turn"
    extra: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class Provider(Protocol):
    """A model provider: one required async method."""

    name: str

    async def request(self, req: ModelRequest) -> ModelResponse:
        """Send one request; raise a ``ProviderError`` subclass on failure."""
        ...


ProviderFactory = Callable[[], Provider]
_FACTORIES: dict[str, ProviderFactory] = {}


def register_provider(name: str, factory: ProviderFactory) -> None:
    """Make a provider available by name (``anthropic``, ``openai``, ``simulated``...)."""
    _FACTORIES[name] = factory


def provider_factory(name: str) -> ProviderFactory | None:
    """The factory registered under ``name``, if any."""
    return _FACTORIES.get(name)


def registered_providers() -> list[str]:
    """Names of every registered provider."""
    return sorted(_FACTORIES)
