"""Which provider serves which model: ``simulated`` for all, or ``auto`` (live where the
provider's credentials are present, simulated otherwise)."""

from __future__ import annotations

from collections.abc import Callable

from polyroute.errors import ConfigError
from polyroute.providers.base import Provider, provider_factory
from polyroute.providers.simulated import FailurePlan, SimulatedProvider
from polyroute.registry import ModelSpec


def live_provider_available(provider: str) -> bool:
    """True when a live provider is registered and its credentials are present."""
    from polyroute.providers import live

    return live.available(provider)


def provider_selector(
    mode: str,
    seed: int = 0,
    time_scale: float = 1.0,
    failures: list[str] | None = None,
) -> Callable[[ModelSpec], Provider]:
    """A function from a model to the provider that serves it, for one run."""
    simulated = SimulatedProvider(
        seed=seed, time_scale=time_scale, failures=FailurePlan.parse(failures or [])
    )
    if mode == "simulated":
        return lambda _spec: simulated
    if mode != "auto":
        raise ConfigError(f"unknown provider mode {mode!r} (simulated or auto)")
    cache: dict[str, Provider] = {}

    def pick(spec: ModelSpec) -> Provider:
        if spec.provider not in cache:
            factory = provider_factory(spec.provider)
            if factory is not None and live_provider_available(spec.provider):
                cache[spec.provider] = factory()
            else:
                cache[spec.provider] = simulated
        return cache[spec.provider]

    return pick
