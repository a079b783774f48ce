"""Routers: score a prompt, then send it to the strong model when the score reaches a threshold.

The contract (RouteLLM's shape): a router has a ``name`` and ``score(prompt) -> float`` in
[0, 1], where higher means the weak (cheap) model is more likely to fail where the strong one
would not, so the prompt should go to the strong model. Only the order of scores matters to
routing; thresholds come from calibration, not from reading a score as a probability. A
caller decides with ``decide(score, threshold)``; ``calibrate`` turns a wanted share of strong
calls into a threshold. Routers register by name; ``get_router("local")`` builds the learned
local one.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from polyroute.errors import InputError

__all__ = [
    "LengthRouter",
    "RandomRouter",
    "Router",
    "UnknownRouterError",
    "calibrate",
    "decide",
    "get_router",
    "register_router",
    "router_names",
]


@runtime_checkable
class Router(Protocol):
    """Scores a prompt in [0, 1]; higher means send it to the strong model."""

    name: str

    def score(self, prompt: str) -> float:
        """How much ``prompt`` needs the strong model, in [0, 1] (higher: go strong)."""
        ...


class UnknownRouterError(InputError):
    """No router is registered under the name asked for."""


RouterFactory = Callable[[], Router]

_FACTORIES: dict[str, RouterFactory] = {}


def register_router(name: str, factory: RouterFactory, *, replace: bool = False) -> None:
    """Make ``get_router(name)`` build a router with ``factory``."""
    if not name or "," in name:
        raise ValueError(f"router name {name!r} must be non-empty and hold no comma")
    if name in _FACTORIES and not replace:
        raise ValueError(f"a router named {name!r} is already registered")
    _FACTORIES[name] = factory


def get_router(name: str) -> Router:
    """A new router of the kind registered as ``name``."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        known = ", ".join(router_names())
        raise UnknownRouterError(f"unknown router {name!r} (known: {known})") from None
    return factory()


def router_names() -> list[str]:
    """Names of the registered routers, sorted."""
    return sorted(_FACTORIES)


def decide(score: float, threshold: float) -> bool:
    """True when a prompt with this score goes to the strong model."""
    return score >= threshold


def calibrate(scores: Sequence[float], strong_share: float) -> float:
    """The threshold that sends ``strong_share`` of these prompts to the strong model.

    As RouteLLM's threshold calibration: the score at the (1 - share) quantile of a sample of
    prompts like the ones to route. The k = round(share * n) highest scores reach it; prompts
    tied with the k-th also do, so ties can push the share above the target. A share of 0
    gives a threshold above every score, and 1 the lowest score.
    """
    if not 0.0 <= strong_share <= 1.0:
        raise ValueError(f"strong share must be within [0, 1], got {strong_share}")
    if not scores:
        raise ValueError("calibration needs at least one score")
    ordered = sorted(scores, reverse=True)
    k = round(strong_share * len(ordered))
    if k == 0:
        return math.nextafter(ordered[0], math.inf)
    return ordered[k - 1]


class RandomRouter:
    """Scores uniformly at random, but the same prompt always gets the same score."""

    def __init__(self, seed: int = 0, name: str = "random") -> None:
        self.name = name
        self._salt = f"{seed}:".encode()

    def score(self, prompt: str) -> float:
        digest = hashlib.blake2b(self._salt + prompt.encode("utf-8"), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64


class LengthRouter:
    """Longer prompts score higher: ``chars / (chars + scale)``."""

    def __init__(self, scale: float = 1000.0, name: str = "length") -> None:
        if scale <= 0:
            raise ValueError("scale must be positive")
        self.name = name
        self._scale = scale

    def score(self, prompt: str) -> float:
        chars = len(prompt)
        return chars / (chars + self._scale)


def _local() -> Router:
    # Imported here so that listing routers does not read the shipped model file.
    from polyroute.routers.local import LocalRouter

    return LocalRouter.default()


register_router("random", RandomRouter)
register_router("length", LengthRouter)
register_router("local", _local)
