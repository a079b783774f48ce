"""A circuit breaker per model: after repeated failures in a short window, route around it.

``threshold`` retryable failures of one model within ``window_s`` seconds open its circuit:
for ``cooldown_s`` seconds the router treats the model as unavailable (``open_models``) and
its decisions say why. After the cool-down the circuit is half-open: the next call is a
trial; a success closes the circuit, a failure opens it again at once.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class _ModelState:
    failures: deque[float] = field(default_factory=deque)
    opened_at: float | None = None
    half_open: bool = False
    trips: int = 0


class CircuitBreaker:
    """Failure counts per model, and which models are routed around right now."""

    def __init__(
        self,
        threshold: int = 5,
        window_s: float = 30.0,
        cooldown_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        self.threshold = threshold
        self.window_s = window_s
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._models: dict[str, _ModelState] = {}

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    def _refresh(self, state: _ModelState, now: float) -> None:
        if state.opened_at is not None and now - state.opened_at >= self.cooldown_s:
            state.opened_at = None
            state.half_open = True
        while state.failures and now - state.failures[0] > self.window_s:
            state.failures.popleft()

    def record_failure(self, model: str, now: float | None = None) -> bool:
        """Count one failure of ``model``; True when this failure opened its circuit."""
        t = self._now(now)
        with self._lock:
            state = self._models.setdefault(model, _ModelState())
            self._refresh(state, t)
            if state.opened_at is not None:
                return False
            state.failures.append(t)
            if state.half_open or len(state.failures) >= self.threshold:
                state.opened_at = t
                state.half_open = False
                state.failures.clear()
                state.trips += 1
                return True
            return False

    def record_success(self, model: str) -> None:
        """A call to ``model`` succeeded: close its circuit and forget its failures."""
        with self._lock:
            state = self._models.get(model)
            if state is not None:
                state.failures.clear()
                state.opened_at = None
                state.half_open = False

    def is_open(self, model: str, now: float | None = None) -> bool:
        """True while ``model`` is being routed around."""
        return model in self.open_models(now)

    def open_models(self, now: float | None = None) -> frozenset[str]:
        """The models whose circuit is open at ``now`` (default: the clock's now)."""
        t = self._now(now)
        with self._lock:
            for state in self._models.values():
                self._refresh(state, t)
            return frozenset(m for m, s in self._models.items() if s.opened_at is not None)

    def reason(self) -> str:
        """Why an open model is unavailable, as a routing decision shows it."""
        return (
            f"circuit open: {self.threshold} failures within {self.window_s:g}s, "
            f"routed around for {self.cooldown_s:g}s"
        )
