"""Engine benchmarks, printed as a table (figures for the README, not timed tests).

1. Engine overhead per step (everything but the provider call) on random DAGs of 10, 100 and
   1,000 steps, with a provider that answers at once: median over repeats, per step.
2. Makespan against the critical path on random DAGs with simulated latencies and unbounded
   concurrency: how close the engine gets to the theoretical minimum.
3. The local classifier: median time per task.

Run: ``make bench`` (or ``.venv/bin/python benchmarks/engine_bench.py``).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time
from datetime import date

from polyroute.classify import ClassifyInput, LocalClassifier
from polyroute.engine import Engine, EngineConfig
from polyroute.graph import critical_path
from polyroute.providers.base import ModelRequest, ModelResponse
from polyroute.registry import load_registry
from polyroute.routing import load_policy
from polyroute.schema import Plan, Step, Task, Usage

TYPES = ["analysis", "implementation", "classification", "summarization", "review", "general"]


def random_plan(n: int, rng: random.Random, max_deps: int = 3) -> Plan:
    steps = []
    for i in range(n):
        deps = (
            sorted({f"s{rng.randrange(i)}" for _ in range(rng.randint(0, max_deps))}) if i else []
        )
        steps.append(
            Step(
                id=f"s{i}",
                description=f"{rng.choice(TYPES)} part {i} of the job",
                type=rng.choice(TYPES),
                depends_on=deps,
            )
        )
    return Plan(steps=steps)


class InstantProvider:
    name = "instant"

    async def request(self, req: ModelRequest) -> ModelResponse:
        return ModelResponse(
            text=f"done {req.step_id}",
            usage=Usage(input_tokens=50, output_tokens=5),
            latency_ms=0.0,
            model=req.model.id,
            provider=self.name,
        )


class SleepProvider:
    """Sleeps a fixed, seeded latency per step (so the critical path is known)."""

    name = "sleep"

    def __init__(self, latency: dict[str, float]) -> None:
        self.latency = latency

    async def request(self, req: ModelRequest) -> ModelResponse:
        await asyncio.sleep(self.latency[req.step_id])
        return ModelResponse(
            text="ok",
            usage=Usage(input_tokens=10, output_tokens=5),
            latency_ms=self.latency[req.step_id] * 1000,
            model=req.model.id,
            provider=self.name,
        )


def engine(provider: object, concurrency: int) -> Engine:
    return Engine(
        EngineConfig(
            registry=load_registry(),
            policy=load_policy(),
            provider_for=lambda _s: provider,  # type: ignore[arg-type,return-value]
            concurrency=concurrency,
            today=date(2026, 11, 27),
        )
    )


def overhead(n: int, repeats: int) -> float:
    per_step = []
    for r in range(repeats):
        plan = random_plan(n, random.Random(r))
        task = Task(description="benchmark", plan=plan, constraints={"maxSteps": n})  # type: ignore[arg-type]
        e = engine(InstantProvider(), concurrency=n)
        t0 = time.perf_counter()
        result = asyncio.run(e.run(task))
        elapsed = time.perf_counter() - t0
        assert result.status == "succeeded", result.status
        per_step.append(elapsed / n * 1000)
    return statistics.median(per_step)


def makespan(n: int, seed: int) -> tuple[float, float]:
    rng = random.Random(seed)
    plan = random_plan(n, rng)
    latency = {s.id: rng.uniform(0.05, 0.25) for s in plan.steps}
    _, cp = critical_path(plan, lambda s: latency[s.id])
    task = Task(description="benchmark", plan=plan, constraints={"maxSteps": n})  # type: ignore[arg-type]
    t0 = time.perf_counter()
    result = asyncio.run(engine(SleepProvider(latency), concurrency=n).run(task))
    assert result.status == "succeeded"
    return time.perf_counter() - t0, cp


def classifier_median(samples: int) -> float:
    clf = LocalClassifier()
    texts = [
        "What is the capital of Australia?",
        "Implement a rate limiter in Python with a token bucket and tests.",
        "Plan the migration of the billing monolith to event-driven services on AWS.",
        "Classify this support ticket: my invoice shows the wrong VAT number.",
    ]
    clf.classify_sync(ClassifyInput(text=texts[0]))  # load once
    times = []
    for i in range(samples):
        t0 = time.perf_counter()
        clf.classify_sync(ClassifyInput(text=texts[i % len(texts)] + f" #{i}"))
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> int:
    quick = "--quick" in sys.argv
    print("| benchmark | size | figure | target |")
    print("|---|---|---|---|")
    ok = True
    for n, repeats in ((10, 20), (100, 5), (1000, 1 if quick else 3)):
        ms = overhead(n, repeats)
        ok &= ms < 1.0
        print(f"| engine overhead per step (median) | {n:,} steps | {ms:.3f} ms | < 1 ms |")
    for n, seed in ((20, 1), (50, 2), (100, 3)):
        wall, cp = makespan(n, seed)
        excess = 100 * (wall - cp) / cp
        ok &= excess < 5.0
        print(
            f"| makespan vs critical path | {n} steps | {wall:.3f}s vs {cp:.3f}s "
            f"(+{excess:.1f}%) | within 5% |"
        )
    ms = classifier_median(2000)
    ok &= ms < 1.0
    print(f"| local classifier (median per task) | 2,000 tasks | {ms:.3f} ms | < 1 ms |")
    print("\nall targets met" if ok else "\nSOME TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
