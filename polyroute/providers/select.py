"""Which provider serves which model: ``simulated`` for all, or ``auto`` (live where the
provider's credentials are present, simulated otherwise)."""

from __future__ import annotations

from collections.abc import Callable

from polyroute.errors import ConfigError
from polyroute.providers.base import Provider, provider_factory
from polyroute.providers.simulated import FailurePlan, SimulatedProvider
from polyroute.registry import ModelSpec


def live_provider_available(provider: str, spec: ModelSpec | None = None) -> bool:
    """True when a live provider is installed and its credentials are present."""
    from polyroute.providers import live

    return live.available(provider, spec)


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
    from polyroute.providers import live

    cache: dict[str, Provider] = {}
    usable: dict[str, bool] = {}

    def pick(spec: ModelSpec) -> Provider:
        # The provider module (and its SDK) is imported only once a model needs it.
        name = live.serving_provider(spec)
        if spec.id not in usable:
            usable[spec.id] = live_provider_available(name, spec)
        if not usable[spec.id]:
            return simulated
        if name not in cache:
            factory = live.load(name) or provider_factory(name)
            cache[name] = factory() if factory is not None else simulated
        return cache[name]

    return pick
