"""The simulated provider: offline, deterministic, and always says it is simulated.

Token counts come from the real input; latency from the registry's typical figures scaled by
``time_scale`` (so parallel steps overlap in wall time); JSON is valid when JSON is asked
for, and classification and plans come from the local classifier and the local planner.
Failures can be injected per model to exercise retries and fallbacks (429, 529, 500, timeout:
nothing billed) and the failures that come after the model answered, which are billed
(refusal: the answer is a refusal; truncated: the answer is cut off at ``max_tokens``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from polyroute.errors import (
    ConfigError,
    ContentRefusedError,
    OverloadedError,
    ProviderError,
    ProviderServerError,
    ProviderTimeoutError,
    RateLimitedError,
)
from polyroute.providers.base import ModelRequest, ModelResponse, register_provider
from polyroute.schema import Usage
from polyroute.tokens import IMAGE_TOKENS_DEFAULT, estimate_tokens

FailureKind = Literal["429", "529", "500", "timeout", "refusal", "truncated"]
BILLED_FAILURE_KINDS: tuple[str, ...] = ("refusal", "truncated")
"""Failures that come after the model answered: the call's tokens are billed all the same."""
FAILURE_KINDS: tuple[str, ...] = ("429", "529", "500", "timeout", *BILLED_FAILURE_KINDS)
MAX_FAILURE_COUNT = 1000
"""The most calls one ``--fail MODEL=KINDxN`` may fail: more is a typo, not a test."""
SIMULATED_TAG = "[simulated]"
CACHE_MIN_TOKENS = 1024

# Typical answer lengths (output tokens) by step type: (low, high).
_OUTPUT_RANGE: dict[str, tuple[int, int]] = {
    "classification": (20, 80),
    "extraction": (80, 250),
    "qa": (60, 220),
    "summarization": (150, 400),
    "review": (250, 650),
    "analysis": (250, 600),
    "implementation": (350, 900),
    "planning": (300, 700),
    "vision": (120, 350),
    "general": (150, 450),
}

_WORDS = (
    "the step considers inputs constraints results evidence risk design module interface "
    "test edge case latency budget cost model route handoff dependency summary finding "
    "recommendation change function data schema error retry fallback window context"
).split()


def make_failure(kind: str, model: str) -> ProviderError | None:
    """The error a provider raises for an injected failure kind (None for ``truncated``,
    which is an answer, not an error)."""
    if kind == "429":
        return RateLimitedError(f"{model}: 429 rate limited (simulated)", retry_after_s=0.01)
    if kind == "529":
        return OverloadedError(f"{model}: 529 overloaded_error (simulated)")
    if kind == "500":
        return ProviderServerError(f"{model}: 500 internal server error (simulated)")
    if kind == "timeout":
        return ProviderTimeoutError(f"{model}: read timeout (simulated)")
    if kind == "refusal":
        return ContentRefusedError(f"{model}: the model refused: stop_reason refusal (simulated)")
    if kind == "truncated":
        return None
    raise ConfigError(f"unknown failure kind {kind!r} (choose from {', '.join(FAILURE_KINDS)})")


@dataclass
class FailurePlan:
    """Injected failures: per model, a queue of kinds for its next calls, or a rate."""

    queued: dict[str, list[str]] = field(default_factory=dict)
    rate: dict[str, tuple[str, float]] = field(default_factory=dict)

    @classmethod
    def parse(cls, specs: list[str]) -> FailurePlan:
        """From ``MODEL=KIND[xN]`` (next N calls fail, N in 1..``MAX_FAILURE_COUNT``) or
        ``MODEL=KIND@P`` (each call fails with probability P, in [0, 1])."""
        plan = cls()
        for spec in specs:
            model, sep, rest = spec.partition("=")
            if not sep or not model or not rest:
                raise ConfigError(f"--fail {spec!r}: expected MODEL=KIND[xN] or MODEL=KIND@P")
            if "@" in rest:
                kind, _, p = rest.partition("@")
                try:
                    prob = float(p)
                except ValueError:
                    raise ConfigError(f"--fail {spec!r}: {p!r} is not a probability") from None
                if not 0.0 <= prob <= 1.0:  # also refuses nan
                    raise ConfigError(f"--fail {spec!r}: probability {p!r} must be between 0 and 1")
                make_failure(kind, model)
                plan.rate[model] = (kind, prob)
                continue
            kind, _, n = rest.partition("x")
            make_failure(kind, model)
            try:
                count = int(n) if n else 1
            except ValueError:
                raise ConfigError(f"--fail {spec!r}: {n!r} is not a count") from None
            if not 1 <= count <= MAX_FAILURE_COUNT:
                raise ConfigError(f"--fail {spec!r}: count {n!r} must be 1-{MAX_FAILURE_COUNT}")
            plan.queued.setdefault(model, []).extend([kind] * count)
        return plan

    def next_failure(self, model: str, rng: random.Random) -> str | None:
        queue = self.queued.get(model)
        if queue:
            return queue.pop(0)
        if model in self.rate:
            kind, prob = self.rate[model]
            if rng.random() < prob:
                return kind
        return None


PurposeHandler = Callable[[ModelRequest], str]


class SimulatedProvider:
    """A provider that answers offline, deterministically, and labels every answer."""

    name = "simulated"

    def __init__(
        self,
        seed: int = 0,
        time_scale: float = 1.0,
        failures: FailurePlan | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.seed = seed
        self.time_scale = time_scale
        self.failures = failures or FailurePlan()
        self._sleep = sleep
        self._cached_prefixes: set[str] = set()
        self._rng = random.Random(seed)
        self.calls: list[ModelRequest] = []

    def _rng_for(self, req: ModelRequest) -> random.Random:
        key = f"{self.seed}|{req.seed}|{req.model.id}|{req.step_id}|{req.prompt}"
        return random.Random(hashlib.sha256(key.encode()).digest())

    async def request(self, req: ModelRequest) -> ModelResponse:
        self.calls.append(req)
        spec = req.model
        failure = self.failures.next_failure(spec.id, self._rng)
        if failure is not None and failure not in BILLED_FAILURE_KINDS:
            await self._sleep(spec.latency.ttft_ms / 1000.0 * self.time_scale)
            error = make_failure(failure, spec.id)
            assert error is not None
            raise error

        rng = self._rng_for(req)
        prefix_tokens = round(estimate_tokens(req.prefix) * spec.token_factor)
        rest_tokens = round(
            estimate_tokens((req.system or "") + "\n" + req.prompt) * spec.token_factor
        )
        image_tokens = IMAGE_TOKENS_DEFAULT * len(req.images)
        usage_in, cache_read, cache_write = rest_tokens + image_tokens, 0, 0
        if prefix_tokens >= CACHE_MIN_TOKENS:
            key = f"{spec.id}|{hashlib.sha256(req.prefix.encode()).hexdigest()}"
            if key in self._cached_prefixes:
                cache_read = prefix_tokens
            else:
                cache_write = prefix_tokens
                self._cached_prefixes.add(key)
        else:
            usage_in += prefix_tokens

        if req.purpose == "classify":
            text = _classify_answer(req)
        elif req.purpose == "plan":
            text = _plan_answer(req)
        else:
            low, high = _OUTPUT_RANGE.get(req.step_type, _OUTPUT_RANGE["general"])
            target = min(req.max_tokens, rng.randint(low, high))
            text = _answer(req, target, rng)
        out_tokens = min(req.max_tokens, max(1, round(estimate_tokens(text) * spec.token_factor)))
        latency_ms = spec.latency.ttft_ms + 1000.0 * out_tokens / spec.latency.output_tokens_per_s
        latency_ms *= rng.uniform(0.9, 1.1)
        await self._sleep(latency_ms / 1000.0 * self.time_scale)
        usage = Usage(
            input_tokens=usage_in,
            output_tokens=out_tokens,
            cache_read_tokens=cache_read,
            cache_write_tokens=cache_write,
        )
        stop_reason = "end_turn"
        if failure == "truncated":
            # Cut off mid-answer, as a provider does at max_tokens: all of it billed.
            text, stop_reason = text[: max(1, len(text) // 2)], "max_tokens"
            usage = usage.model_copy(update={"output_tokens": req.max_tokens})
        elif failure is not None:
            error = make_failure(failure, spec.id)
            assert error is not None
            raise error.billed(usage)
        return ModelResponse(
            text=text,
            usage=usage,
            latency_ms=latency_ms * self.time_scale,
            model=spec.id,
            provider=self.name,
            stop_reason=stop_reason,
            simulated=True,
        )


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(8, 16))]
    return " ".join(words).capitalize() + "."


def _answer(req: ModelRequest, target_tokens: int, rng: random.Random) -> str:
    head = f"{SIMULATED_TAG} {req.model.id} on step {req.step_id or 'task'} ({req.step_type})."
    if req.json_mode:
        items: list[str] = []
        doc = {"simulated": True, "model": req.model.id, "step": req.step_id, "findings": items}
        while estimate_tokens(json.dumps(doc)) < target_tokens and len(items) < 200:
            items.append(_sentence(rng))
        return json.dumps(doc)
    parts = [head]
    while estimate_tokens(" ".join(parts)) < target_tokens:
        parts.append(_sentence(rng))
    return " ".join(parts)


def _classify_answer(req: ModelRequest) -> str:
    from polyroute.classify import ClassifyInput, LocalClassifier

    task = req.prompt.split("\n\nImages attached:")[0].removeprefix("Task:\n")
    images = 0
    if "Images attached:" in req.prompt:
        tail = req.prompt.split("Images attached:")[1].split()[0]
        images = int(tail) if tail.isdigit() else 0
    c = LocalClassifier().classify_sync(ClassifyInput(text=task, image_count=images))
    return json.dumps({"type": c.type, "complexity": c.complexity, "needs_vision": c.needs_vision})


_AT_MOST = re.compile(r"## Limits\nAt most (\d+) steps\.")


def _plan_answer(req: ModelRequest) -> str:
    from polyroute.planner import local_plan

    task = req.prompt.split("\n\n## Task\n", 1)[-1].split("\n\n## ", 1)[0]
    # Keep to the step limit the prompt gives, as a planning model is asked to.
    limit = _AT_MOST.search(req.prompt)
    plan = local_plan(task, int(limit.group(1))) if limit else local_plan(task)
    return json.dumps({"steps": [s.to_wire() for s in plan.steps]})


register_provider("simulated", SimulatedProvider)
