"""One model call with retries: jittered exponential backoff within the deadline, honouring a
provider's ``retry-after``. Fallback to the next model is the caller's (it re-routes)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from polyroute.errors import DeadlineExceededError, ProviderError, RateLimitedError
from polyroute.providers.base import ModelRequest, ModelResponse, Provider


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a retryable failure is retried on the same model."""

    max_attempts: int = 3
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0

    def delay(self, attempt: int, rng: random.Random, retry_after_s: float | None) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (full jitter, or retry-after)."""
        if retry_after_s is not None:
            return min(retry_after_s, self.max_delay_s)
        cap = min(self.max_delay_s, self.base_delay_s * (2 ** (attempt - 1)))
        return rng.uniform(cap / 2, cap)


@dataclass
class CallResult:
    """A successful call and how many attempts it took."""

    response: ModelResponse
    attempts: int


class RetriesExhaustedError(Exception):
    """Internal: every attempt on one model failed with a retryable error."""

    def __init__(self, last: ProviderError, attempts: int) -> None:
        super().__init__(str(last))
        self.last = last
        self.attempts = attempts


async def call_with_retries(
    provider: Provider,
    req: ModelRequest,
    policy: RetryPolicy,
    rng: random.Random,
    time_left_s: Callable[[], float | None],
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> CallResult:
    """Call ``provider``; retry retryable errors; raise the non-retryable ones at once.

    Raises ``RetriesExhaustedError`` when attempts run out, and ``DeadlineExceededError``
    when the deadline leaves no time for the next attempt."""
    attempt = 0
    while True:
        attempt += 1
        left = time_left_s()
        if left is not None and left <= 0:
            raise DeadlineExceededError(f"deadline passed during {req.step_id or 'the call'}")
        try:
            response = await provider.request(req)
            return CallResult(response=response, attempts=attempt)
        except ProviderError as exc:
            if not exc.retryable:
                raise
            if attempt >= policy.max_attempts:
                raise RetriesExhaustedError(exc, attempt) from exc
            retry_after = exc.retry_after_s if isinstance(exc, RateLimitedError) else None
            wait = policy.delay(attempt, rng, retry_after)
            left = time_left_s()
            if left is not None and wait >= left:
                raise RetriesExhaustedError(exc, attempt) from exc
            await sleep(wait)
