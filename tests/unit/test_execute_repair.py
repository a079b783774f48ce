"""``execute``: the repair of cut-off or invalid-JSON answers, the circuit breaker's view of
retries, and the deadline, with a scripted in-memory provider."""

from __future__ import annotations

import asyncio
import json
import random

import pytest

from polyroute.circuit import CircuitBreaker
from polyroute.errors import (
    BudgetExceededError,
    DeadlineExceededError,
    InvalidRequestError,
    OutputTruncatedError,
    OverloadedError,
    ProviderError,
    RateLimitedError,
)
from polyroute.execute import (
    CallResult,
    RepairNotAffordedError,
    RetriesExhaustedError,
    RetryPolicy,
    call_with_retries,
    extract_json,
)
from polyroute.providers.base import ModelRequest, ModelResponse
from polyroute.registry import load_registry
from polyroute.schema import Usage

SPEC = load_registry().get("gpt-4o")


class Scripted:
    """Answers from a script: a text (with a stop reason) or an error, one per call."""

    name = "scripted"

    def __init__(self, *script: str | tuple[str, str] | ProviderError) -> None:
        self.script = list(script)
        self.requests: list[ModelRequest] = []

    async def request(self, req: ModelRequest) -> ModelResponse:
        self.requests.append(req)
        item = self.script.pop(0) if self.script else "ok"
        if isinstance(item, ProviderError):
            raise item
        text, stop = item if isinstance(item, tuple) else (item, "end_turn")
        return ModelResponse(
            text=text,
            usage=Usage(input_tokens=10, output_tokens=5),
            latency_ms=3.0,
            model=req.model.id,
            provider=self.name,
            stop_reason=stop,
        )


class FakeTime:
    """A clock that the injected sleep advances."""

    def __init__(self, budget_s: float | None) -> None:
        self.now = 0.0
        self.budget = budget_s
        self.sleeps: list[float] = []

    def left(self) -> float | None:
        return None if self.budget is None else self.budget - self.now

    async def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def call(
    provider: Scripted,
    req: ModelRequest | None = None,
    time: FakeTime | None = None,
    policy: RetryPolicy | None = None,
    **kw: object,
) -> CallResult:
    time = time or FakeTime(None)
    return asyncio.run(
        call_with_retries(
            provider,
            req or ModelRequest(model=SPEC, prompt="Step.", json_mode=True, step_id="s1"),
            policy or RetryPolicy(),
            random.Random(0),
            time.left,
            time.sleep,
            **kw,  # type: ignore[arg-type]
        )
    )


def test_valid_json_needs_no_repair() -> None:
    p = Scripted('{"a": 1}')
    result = call(p)
    assert (result.attempts, len(p.requests), result.response.text) == (1, 1, '{"a": 1}')


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        ('```json\n{"a": 1}\n```', '{"a": 1}'),
        ('Here you go: {"a": [1, 2]} Hope it helps.', '{"a": [1, 2]}'),
        ("```\n[1, 2]\n```", "[1, 2]"),
    ],
)
def test_json_in_a_fence_or_prose_is_cleaned_without_a_call(text: str, clean: str) -> None:
    p = Scripted(text)
    result = call(p)
    assert len(p.requests) == 1
    assert result.response.text == clean
    assert json.loads(result.response.text)


def test_invalid_json_is_repaired_once_with_the_error_and_the_answer() -> None:
    p = Scripted("{'a': 1,", '{"a": 1}')
    result = call(p)
    assert result.attempts == 2 and result.response.text == '{"a": 1}'
    repair = p.requests[1].prompt
    assert repair.startswith("Step.") and "not valid JSON" in repair and "{'a': 1," in repair
    assert p.requests[1].prefix == p.requests[0].prefix  # the cached prefix is kept
    assert result.response.usage == Usage(input_tokens=20, output_tokens=10)
    assert result.response.extra["repaired"].startswith("the answer is not valid JSON")


def test_invalid_json_twice_is_a_clear_failure() -> None:
    p = Scripted("nope", "still nope")
    with pytest.raises(OutputTruncatedError, match=r"gpt-4o on s1: the answer is not valid JSON"):
        call(p)
    assert len(p.requests) == 2


def test_text_steps_are_not_checked_for_json() -> None:
    p = Scripted("plain words")
    req = ModelRequest(model=SPEC, prompt="Step.")
    assert call(p, req).response.text == "plain words"


def test_repair_can_be_turned_off() -> None:
    p = Scripted(("cut", "max_tokens"))
    result = call(p, ModelRequest(model=SPEC, prompt="x"), repair=False)
    assert result.response.stop_reason == "max_tokens" and len(p.requests) == 1


def test_repair_call_is_retried_like_any_call() -> None:
    p = Scripted(("cut", "max_tokens"), OverloadedError("busy"), "whole answer")
    t = FakeTime(None)
    result = call(p, ModelRequest(model=SPEC, prompt="x"), time=t)
    assert result.attempts == 3 and result.response.text == "whole answer"
    assert len(t.sleeps) == 1


def test_no_repair_when_the_deadline_has_passed() -> None:
    t = FakeTime(10.0)

    class Slow(Scripted):
        async def request(self, req: ModelRequest) -> ModelResponse:
            t.now += 20.0  # the call outlives the deadline
            return await super().request(req)

    p = Slow(("cut", "max_tokens"))
    with pytest.raises(OutputTruncatedError, match="no time was left"):
        call(p, ModelRequest(model=SPEC, prompt="x"), time=t)
    assert len(p.requests) == 1


def test_deadline_cuts_retries_short() -> None:
    p = Scripted(*[OverloadedError("busy")] * 10)
    t = FakeTime(2.0)
    policy = RetryPolicy(max_attempts=10, base_delay_s=0.5, max_delay_s=8.0)
    with pytest.raises(RetriesExhaustedError) as info:
        call(p, time=t, policy=policy)
    assert info.value.attempts < 10
    assert sum(t.sleeps) < 2.0
    assert len(p.requests) == info.value.attempts


def test_retry_after_longer_than_the_time_left_stops_at_once() -> None:
    p = Scripted(RateLimitedError("429", retry_after_s=5.0))
    t = FakeTime(1.0)
    with pytest.raises(RetriesExhaustedError) as info:
        call(p, time=t)
    assert info.value.attempts == 1 and t.sleeps == []


def test_retry_after_is_honoured_in_full_beyond_the_backoff_cap() -> None:
    p = Scripted(RateLimitedError("429", retry_after_s=30.0), "{}")
    t = FakeTime(None)
    result = call(p, time=t)
    assert t.sleeps == [30.0]  # not cut to the 8 s backoff cap
    assert result.attempts == 2


def test_a_retry_after_too_long_to_wait_gives_up_on_the_model_at_once() -> None:
    p = Scripted(RateLimitedError("429", retry_after_s=3600.0))
    t = FakeTime(None)
    with pytest.raises(RetriesExhaustedError) as info:
        call(p, time=t, policy=RetryPolicy(max_retry_after_s=60.0))
    assert info.value.attempts == 1 and t.sleeps == []  # the step falls back instead


def test_each_attempt_is_bounded_by_the_time_left() -> None:
    p = Scripted("{}")
    call(p, ModelRequest(model=SPEC, prompt="x", timeout_s=60.0), time=FakeTime(2.5))
    assert p.requests[0].timeout_s == 2.5


def test_no_attempt_after_the_deadline() -> None:
    p = Scripted()
    with pytest.raises(DeadlineExceededError):
        call(p, time=FakeTime(0.0))
    assert p.requests == []


def test_non_retryable_errors_are_raised_at_once_and_not_counted_by_the_breaker() -> None:
    cb = CircuitBreaker(threshold=1)
    p = Scripted(InvalidRequestError("400 bad"))
    with pytest.raises(InvalidRequestError):
        call(p, breaker=cb)
    assert len(p.requests) == 1 and not cb.is_open("gpt-4o")


def test_breaker_opening_stops_the_retries_and_then_skips_the_model() -> None:
    clock = [0.0]
    cb = CircuitBreaker(threshold=2, window_s=30, cooldown_s=60, clock=lambda: clock[0])
    p = Scripted(OverloadedError("busy"), OverloadedError("busy"), OverloadedError("busy"))
    with pytest.raises(RetriesExhaustedError) as info:
        call(p, policy=RetryPolicy(max_attempts=5), breaker=cb)
    assert info.value.attempts == 2 and cb.is_open("gpt-4o")
    with pytest.raises(RetriesExhaustedError) as again:
        call(p, breaker=cb)
    assert again.value.attempts == 0 and "circuit open" in str(again.value)
    assert len(p.requests) == 2
    clock[0] = 61.0
    p.script = ["{}"]
    assert call(p, breaker=cb).attempts == 1  # the half-open trial succeeds
    assert not cb.is_open("gpt-4o")


def test_extract_json_returns_none_without_json() -> None:
    assert extract_json("no braces here") is None
    assert extract_json("{ not: json }") is None


def test_an_unrepairable_answer_carries_both_calls_billing() -> None:
    p = Scripted("nope", "still nope")
    with pytest.raises(OutputTruncatedError) as info:
        call(p)
    assert info.value.usage == Usage(input_tokens=20, output_tokens=10)
    assert info.value.attempts == 2


def test_an_answer_left_unrepaired_by_the_deadline_carries_its_billing() -> None:
    t = FakeTime(10.0)

    class Slow(Scripted):
        async def request(self, req: ModelRequest) -> ModelResponse:
            t.now += 20.0
            return await super().request(req)

    with pytest.raises(OutputTruncatedError) as info:
        call(Slow(("cut", "max_tokens")), ModelRequest(model=SPEC, prompt="x"), time=t)
    assert info.value.usage == Usage(input_tokens=10, output_tokens=5)


def test_a_failed_repair_call_carries_the_first_answers_billing() -> None:
    refused = Scripted(("cut", "max_tokens"), InvalidRequestError("400: bad"))
    with pytest.raises(InvalidRequestError) as info:
        call(refused, ModelRequest(model=SPEC, prompt="x"))
    assert info.value.usage == Usage(input_tokens=10, output_tokens=5)
    busy = Scripted(("cut", "max_tokens"), *[OverloadedError("busy")] * 3)
    with pytest.raises(RetriesExhaustedError) as exhausted:
        call(busy, ModelRequest(model=SPEC, prompt="x"), policy=RetryPolicy(base_delay_s=0.0))
    assert exhausted.value.last.usage == Usage(input_tokens=10, output_tokens=5)
    assert exhausted.value.attempts == 4


def test_an_http_error_bills_nothing() -> None:
    with pytest.raises(InvalidRequestError) as info:
        call(Scripted(InvalidRequestError("400: bad")))
    assert info.value.usage is None


def test_a_repair_is_reserved_before_it_is_made() -> None:
    p = Scripted(("cut", "max_tokens"), '{"a": 1}')
    reserved: list[ModelRequest] = []
    result = call(p, reserve_repair=reserved.append)
    assert result.attempts == 2
    assert reserved == [p.requests[1]]  # the hook saw the very request the repair made


def test_a_repair_the_budget_cannot_hold_is_not_made_and_the_answer_stays_billed() -> None:
    p = Scripted(("cut", "max_tokens"), '{"a": 1}')

    def refuse(_req: ModelRequest) -> None:
        raise BudgetExceededError("repair of s1 may cost $0.0100; $0.0010 left")

    with pytest.raises(RepairNotAffordedError) as info:
        call(p, reserve_repair=refuse)
    assert len(p.requests) == 1
    assert isinstance(info.value.limit, BudgetExceededError)
    assert "cut off" in str(info.value.limit) and "$0.0010 left" in str(info.value.limit)
    assert info.value.usage == Usage(input_tokens=10, output_tokens=5)
    assert info.value.attempts == 1


def test_no_reservation_when_no_repair_is_needed() -> None:
    reserved: list[ModelRequest] = []
    call(Scripted('{"a": 1}'), reserve_repair=reserved.append)
    assert reserved == []


def test_the_repair_call_may_have_its_own_retry_policy() -> None:
    """A caller that retries the first call elsewhere (the state machine) still has the
    repair retried in here, where its failure would otherwise lose the billed answer."""
    p = Scripted(("cut", "max_tokens"), RateLimitedError("429"), RateLimitedError("429"), "{}")
    result = call(
        Scripted(*p.script),
        policy=RetryPolicy(max_attempts=1, base_delay_s=0.0),
        repair_policy=RetryPolicy(max_attempts=3, base_delay_s=0.0),
    )
    assert result.attempts == 4 and result.response.text == "{}"
    with pytest.raises(RetriesExhaustedError) as info:
        call(p, policy=RetryPolicy(max_attempts=1, base_delay_s=0.0))
    assert info.value.attempts == 2
