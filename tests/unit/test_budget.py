from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polyroute.budget import Budget
from polyroute.errors import BudgetExceededError, DeadlineExceededError
from polyroute.schema import Constraints

NOW = datetime(2026, 11, 27, 12, tzinfo=UTC)


def test_reserve_settle_release() -> None:
    b = Budget(Constraints(max_steps=2, max_token_budget=1000, max_cost_usd=1.0))
    r = b.reserve("a", 600, 0.6, NOW)
    assert b.tokens_left() == 400 and b.cost_left_usd() == pytest.approx(0.4)
    with pytest.raises(BudgetExceededError, match="400 of maxTokenBudget=1,000 left"):
        b.reserve("b", 500, 0.1, NOW)
    b.settle(r, 300, 0.25)
    assert b.tokens_used == 300 and b.steps_used == 1
    r2 = b.reserve("b", 700, 0.75, NOW)
    b.release(r2)
    assert b.steps_left() == 1 and b.tokens_left() == 700
    b.reserve("c", 1, 0.0, NOW)
    with pytest.raises(BudgetExceededError, match="maxSteps=2"):
        b.reserve("d", 1, 0.0, NOW)


def test_deadline_refuses_new_work() -> None:
    b = Budget(Constraints(), deadline=NOW)
    with pytest.raises(DeadlineExceededError):
        b.reserve("a", 1, 0.0, NOW + timedelta(seconds=1))


@settings(max_examples=100, deadline=None)
@given(
    limit_tokens=st.integers(100, 10_000),
    limit_cost=st.floats(0.01, 10.0),
    calls=st.lists(
        st.tuples(st.integers(1, 3000), st.floats(0.0, 2.0), st.floats(0.0, 1.0)),
        min_size=1,
        max_size=40,
    ),
)
def test_parallel_steps_never_overspend_together(
    limit_tokens: int, limit_cost: float, calls: list[tuple[int, float, float]]
) -> None:
    """Concurrent tasks reserve their worst case, then settle at most that: the spend and
    the outstanding reservations never exceed any limit, whatever the interleaving."""
    b = Budget(Constraints(max_steps=1000, max_token_budget=limit_tokens, max_cost_usd=limit_cost))

    async def call(tokens: int, cost: float, used_share: float) -> None:
        try:
            res = b.reserve("s", tokens, cost, NOW)
        except BudgetExceededError:
            return
        await asyncio.sleep(0)
        # While calls are in flight, what is spent plus what is held never passes a limit.
        assert b.tokens_used + b.tokens_reserved <= limit_tokens
        assert b.cost_used_usd + b.cost_reserved_usd <= limit_cost + 1e-9
        assert b.tokens_reserved >= tokens and b.cost_reserved_usd >= cost - 1e-12
        await asyncio.sleep(0)
        b.settle(res, int(tokens * used_share), cost * used_share)

    async def main() -> None:
        await asyncio.gather(*(call(t, c, u) for t, c, u in calls))

    asyncio.run(main())
    assert b.tokens_used <= limit_tokens
    assert b.cost_used_usd <= limit_cost + 1e-9
    assert b.tokens_reserved == 0 and b.cost_reserved_usd == pytest.approx(0.0, abs=1e-9)
