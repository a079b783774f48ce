"""One model call with retries: jittered exponential backoff within the deadline, honouring a
provider's ``retry-after``; then one repair attempt when the answer was cut off by
``max_tokens`` or is not the JSON that was asked for. Fallback to the next model is the
caller's (it re-routes).

A circuit breaker, when given, counts every retryable failure of the model and is told of
every success; once the model's circuit opens, the call stops retrying it so the caller
falls back at once.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from polyroute.circuit import Breaker
from polyroute.errors import (
    CircuitOpenError,
    DeadlineExceededError,
    LimitError,
    OutputTruncatedError,
    ProviderError,
    RateLimitedError,
)
from polyroute.providers.base import ModelRequest, ModelResponse, Provider
from polyroute.schema import Usage

TRUNCATED_STOP_REASONS = frozenset({"max_tokens", "length"})
REPAIR_ANSWER_CHARS = 4000
_FENCE = re.compile(r"^```[A-Za-z0-9_-]*\s*\n(.*?)\n?```\s*$", re.DOTALL)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a retryable failure is retried on the same model."""

    max_attempts: int = 3
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0
    max_retry_after_s: float = 60.0
    """A provider's ``retry-after`` is honoured up to this (and never past the deadline);
    asked to wait longer, the call gives up on the model and the step falls back."""

    def delay(self, attempt: int, rng: random.Random, retry_after_s: float | None) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (full jitter, or retry-after)."""
        if retry_after_s is not None:
            return retry_after_s
        cap = min(self.max_delay_s, self.base_delay_s * (2 ** (attempt - 1)))
        return rng.uniform(cap / 2, cap)


@dataclass
class CallResult:
    """A successful call and how many attempts it took (a repair counts as one)."""

    response: ModelResponse
    attempts: int


ReserveRepair = Callable[[ModelRequest], None]
"""Reserves a repair call's worst case from the run's budget before it is made; raises a
``LimitError`` (``BudgetExceededError``, ``DeadlineExceededError``) when it does not fit."""


class RepairNotAffordedError(Exception):
    """Internal: an answer needed a repair whose worst case the budget could not hold, so the
    repair was not made. ``limit`` is the error to raise; ``usage`` what the answer that
    needed the repair was billed (for the caller to charge)."""

    def __init__(self, limit: LimitError, usage: Usage, attempts: int) -> None:
        super().__init__(str(limit))
        self.limit = limit
        self.usage = usage
        self.attempts = attempts


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
    *,
    breaker: Breaker | None = None,
    repair: bool = True,
    reserve_repair: ReserveRepair | None = None,
    repair_policy: RetryPolicy | None = None,
) -> CallResult:
    """Call ``provider``; retry retryable errors; raise the non-retryable ones at once; then
    check the answer and repair it once if it was cut off or is not valid JSON.

    Raises ``RetriesExhaustedError`` when attempts run out (or the model's circuit opens),
    ``DeadlineExceededError`` when the deadline leaves no time for the next attempt, and
    ``OutputTruncatedError`` when the answer is still cut off or invalid after the repair,
    and ``RepairNotAffordedError`` when ``reserve_repair`` (the caller's budget) cannot hold
    the repair call's worst case. An error raised after the provider answered carries what
    those answers were billed (``ProviderError.usage``), so the caller can charge it.
    ``repair_policy`` retries the repair call (default: ``policy``); a caller whose retries
    of the first call happen elsewhere (the state machine's ``Retry``) gives the repair
    as many attempts in here, since an error after a billed answer cannot go back there."""
    first = await _call_retrying(provider, req, policy, rng, time_left_s, sleep, breaker)
    if not repair:
        return first
    problem, text = output_problem(req, first.response)
    if problem is None:
        return _with_text(first, text)
    # The first answer was billed, whatever happens next: every error from here carries it.
    r1 = first.response
    left = time_left_s()
    if left is not None and left <= 0:
        error = OutputTruncatedError(_repair_failed(req, problem, repaired=False))
        error.attempts = first.attempts
        raise error.billed(r1.usage)
    fix = repair_request(req, r1, problem)
    if reserve_repair is not None:
        try:
            reserve_repair(fix)
        except LimitError as exc:
            where = f"{req.model.id} on {req.step_id or 'the call'}"
            limit = type(exc)(f"{where}: {problem}; its repair does not fit: {exc}")
            raise RepairNotAffordedError(limit, r1.usage, first.attempts) from exc
    try:
        second = await _call_retrying(
            provider, fix, repair_policy or policy, rng, time_left_s, sleep, breaker
        )
    except RetriesExhaustedError as exc:
        exc.last.billed(r1.usage)
        raise RetriesExhaustedError(exc.last, first.attempts + exc.attempts) from exc
    except ProviderError as exc:
        exc.billed(r1.usage).attempts = first.attempts + 1
        raise
    r2 = second.response
    problem2, text2 = output_problem(fix, r2)
    if problem2 is not None:
        error = OutputTruncatedError(_repair_failed(req, problem2, repaired=True))
        error.attempts = first.attempts + second.attempts
        raise error.billed(r1.usage + r2.usage)
    response = replace(
        r2,
        text=text2 if text2 is not None else r2.text,
        usage=r1.usage + r2.usage,
        latency_ms=r1.latency_ms + r2.latency_ms,
        extra={**r2.extra, "repaired": problem},
    )
    return CallResult(response=response, attempts=first.attempts + second.attempts)


async def _call_retrying(
    provider: Provider,
    req: ModelRequest,
    policy: RetryPolicy,
    rng: random.Random,
    time_left_s: Callable[[], float | None],
    sleep: Callable[[float], Awaitable[None]],
    breaker: Breaker | None,
) -> CallResult:
    model = req.model.id
    if breaker is not None and breaker.is_open(model):
        raise RetriesExhaustedError(CircuitOpenError(f"{model}: {breaker.reason()}"), 0)
    attempt = 0
    while True:
        attempt += 1
        left = time_left_s()
        if left is not None and left <= 0:
            raise DeadlineExceededError(f"deadline passed during {req.step_id or 'the call'}")
        # No single attempt may outlive the deadline.
        call_req = req
        if left is not None and (req.timeout_s is None or req.timeout_s > left):
            call_req = replace(req, timeout_s=left)
        try:
            response = await provider.request(call_req)
        except ProviderError as exc:
            if not exc.retryable:
                raise
            opened = breaker is not None and breaker.record_failure(model)
            if opened or attempt >= policy.max_attempts:
                raise RetriesExhaustedError(exc, attempt) from exc
            retry_after = exc.retry_after_s if isinstance(exc, RateLimitedError) else None
            wait = policy.delay(attempt, rng, retry_after)
            left = time_left_s()
            if (left is not None and wait >= left) or wait > policy.max_retry_after_s:
                raise RetriesExhaustedError(exc, attempt) from exc
            await sleep(wait)
            continue
        if breaker is not None:
            breaker.record_success(model)
        return CallResult(response=response, attempts=attempt)


def output_problem(req: ModelRequest, response: ModelResponse) -> tuple[str | None, str | None]:
    """What is wrong with an answer (None if nothing), and its text cleaned up when it is JSON
    wrapped in a code fence or prose (None when the text stands as it is)."""
    if response.stop_reason in TRUNCATED_STOP_REASONS:
        return f"the answer was cut off at max_tokens={req.max_tokens}", None
    if not req.json_mode:
        return None, None
    try:
        json.loads(response.text)
        return None, None
    except json.JSONDecodeError as exc:
        error = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    extracted = extract_json(response.text)
    if extracted is not None:
        return None, extracted
    return f"the answer is not valid JSON ({error})", None


def extract_json(text: str) -> str | None:
    """The JSON document inside ``text`` (a fenced block, or the outermost object or array),
    or None when there is none."""
    stripped = text.strip()
    candidates: list[str] = []
    fenced = _FENCE.match(stripped)
    if fenced:
        candidates.append(fenced.group(1).strip())
    for open_, close in (("{", "}"), ("[", "]")):
        start, end = stripped.find(open_), stripped.rfind(close)
        if 0 <= start < end:
            candidates.append(stripped[start : end + 1])
    for candidate in candidates:
        try:
            json.loads(candidate)
        except ValueError:
            continue
        return candidate
    return None


def repair_request(req: ModelRequest, response: ModelResponse, problem: str) -> ModelRequest:
    """The one repair attempt: the same request (the cached prefix stays), with what was wrong
    and what to do instead."""
    if response.stop_reason in TRUNCATED_STOP_REASONS:
        note = (
            f"Your previous answer was cut off at the length limit of {req.max_tokens} tokens. "
            "Answer again, complete and more concise, well within that limit."
        )
    else:
        previous = response.text[:REPAIR_ANSWER_CHARS]
        note = (
            f"Your previous answer was not valid JSON ({problem}):\n{previous}\n\n"
            "Answer again with only the corrected JSON object: no prose, no code fence."
        )
    return replace(req, prompt=f"{req.prompt}\n\n{note}")


def _with_text(result: CallResult, text: str | None) -> CallResult:
    if text is None:
        return result
    return CallResult(response=replace(result.response, text=text), attempts=result.attempts)


def _repair_failed(req: ModelRequest, problem: str, repaired: bool) -> str:
    where = f"{req.model.id} on {req.step_id or 'the call'}"
    after = "after one repair attempt" if repaired else "and no time was left to repair it"
    return f"{where}: {problem} {after}"
