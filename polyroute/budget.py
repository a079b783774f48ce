"""Budgets of a run: steps, tokens, dollars and the deadline.

A call reserves its worst case (its input estimate plus its full ``max_tokens`` of output)
before it starts and settles the actual figures after, in one synchronous method each, so
steps running in parallel can never overspend a budget together.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime

from pydantic import Field

from polyroute.errors import BudgetExceededError, DeadlineExceededError
from polyroute.schema import SCHEMA_VERSION, BudgetReport, Constraints, WireModel


@dataclass(frozen=True)
class Reservation:
    """What one call holds of the budget until it settles."""

    step_id: str
    tokens: int
    cost_usd: float
    counts_step: bool


class ReservationState(WireModel):
    """A reservation as it travels in a serialised budget."""

    step_id: str
    tokens: int = Field(ge=0)
    cost_usd: float = Field(ge=0.0)
    counts_step: bool = True

    def reservation(self) -> Reservation:
        return Reservation(self.step_id, self.tokens, self.cost_usd, self.counts_step)


class BudgetState(WireModel):
    """A budget serialised between functions (Step Functions): limits, use and the
    reservations still held, so a later function settles what an earlier one reserved."""

    schema_version: str = SCHEMA_VERSION
    max_steps: int
    max_tokens: int | None = None
    max_cost_usd: float | None = None
    deadline: datetime | None = None
    steps_used: int = 0
    tokens_used: int = 0
    cost_used_usd: float = 0.0
    reservations: list[ReservationState] = Field(default_factory=list)


class Budget:
    """Reserve-then-settle accounting of one run's limits."""

    def __init__(self, constraints: Constraints, deadline: datetime | None = None) -> None:
        self.max_steps = constraints.max_steps
        self.max_tokens = constraints.max_token_budget
        self.max_cost_usd = constraints.max_cost_usd
        self.deadline = deadline if deadline is not None else constraints.deadline
        self.steps_used = 0
        self.tokens_used = 0
        self.cost_used_usd = 0.0
        self._reserved_steps = 0
        self._reserved_tokens = 0
        self._reserved_cost = 0.0
        self._lock = threading.Lock()

    @property
    def tokens_reserved(self) -> int:
        """Tokens held by reservations not yet settled or released."""
        return self._reserved_tokens

    @property
    def cost_reserved_usd(self) -> float:
        """Dollars held by reservations not yet settled or released."""
        return self._reserved_cost

    def tokens_left(self) -> int | None:
        """Tokens neither spent nor reserved (None when unlimited)."""
        if self.max_tokens is None:
            return None
        return max(0, self.max_tokens - self.tokens_used - self._reserved_tokens)

    def cost_left_usd(self) -> float | None:
        """Dollars neither spent nor reserved (None when unlimited)."""
        if self.max_cost_usd is None:
            return None
        return max(0.0, self.max_cost_usd - self.cost_used_usd - self._reserved_cost)

    def steps_left(self) -> int:
        """Steps that may still start."""
        return self.max_steps - self.steps_used - self._reserved_steps

    def time_left_ms(self, now: datetime) -> float | None:
        """Milliseconds to the deadline (None when there is none)."""
        if self.deadline is None:
            return None
        return (self.deadline - now).total_seconds() * 1000.0

    def reserve(
        self,
        step_id: str,
        tokens: int,
        cost_usd: float,
        now: datetime,
        counts_step: bool = True,
    ) -> Reservation:
        """Hold a call's worst case, or raise if it does not fit what is left."""
        with self._lock:
            left_ms = self.time_left_ms(now)
            if left_ms is not None and left_ms <= 0:
                raise DeadlineExceededError(f"deadline {self.deadline} passed before {step_id}")
            if counts_step and self.steps_left() < 1:
                raise BudgetExceededError(f"maxSteps={self.max_steps} reached before {step_id}")
            tokens_left = self.tokens_left()
            if tokens_left is not None and tokens > tokens_left:
                raise BudgetExceededError(
                    f"{step_id} needs up to {tokens:,} tokens; {tokens_left:,} of "
                    f"maxTokenBudget={self.max_tokens:,} left"
                )
            cost_left = self.cost_left_usd()
            if cost_left is not None and cost_usd > cost_left + 1e-12:
                raise BudgetExceededError(
                    f"{step_id} may cost ${cost_usd:.4f}; ${cost_left:.4f} of "
                    f"maxCostUsd={self.max_cost_usd} left"
                )
            self._reserved_tokens += tokens
            self._reserved_cost += cost_usd
            if counts_step:
                self._reserved_steps += 1
            return Reservation(step_id, tokens, cost_usd, counts_step)

    def settle(self, res: Reservation, tokens: int, cost_usd: float) -> None:
        """Replace a reservation by what the call actually used."""
        with self._lock:
            self._release(res)
            self.tokens_used += tokens
            self.cost_used_usd += cost_usd
            if res.counts_step:
                self.steps_used += 1

    def release(self, res: Reservation) -> None:
        """Give a reservation back unused (the call never ran)."""
        with self._lock:
            self._release(res)

    def _release(self, res: Reservation) -> None:
        self._reserved_tokens -= res.tokens
        self._reserved_cost -= res.cost_usd
        if res.counts_step:
            self._reserved_steps -= 1

    def charge(self, tokens: int, cost_usd: float) -> None:
        """Record spending outside a step (classification, planning)."""
        with self._lock:
            self.tokens_used += tokens
            self.cost_used_usd += cost_usd

    def to_state(self, held: list[Reservation] | None = None) -> BudgetState:
        """The budget as a serialisable model; ``held`` are the reservations still open."""
        with self._lock:
            return BudgetState(
                max_steps=self.max_steps,
                max_tokens=self.max_tokens,
                max_cost_usd=self.max_cost_usd,
                deadline=self.deadline,
                steps_used=self.steps_used,
                tokens_used=self.tokens_used,
                cost_used_usd=self.cost_used_usd,
                reservations=[
                    ReservationState(
                        step_id=r.step_id,
                        tokens=r.tokens,
                        cost_usd=r.cost_usd,
                        counts_step=r.counts_step,
                    )
                    for r in held or []
                ],
            )

    @classmethod
    def from_state(cls, state: BudgetState) -> tuple[Budget, list[Reservation]]:
        """The budget a ``BudgetState`` describes, and its open reservations (still held)."""
        budget = cls(
            Constraints(
                max_steps=state.max_steps,
                max_token_budget=state.max_tokens,
                max_cost_usd=state.max_cost_usd,
            ),
            deadline=state.deadline,
        )
        budget.steps_used = state.steps_used
        budget.tokens_used = state.tokens_used
        budget.cost_used_usd = state.cost_used_usd
        held = [r.reservation() for r in state.reservations]
        for r in held:
            budget._reserved_tokens += r.tokens
            budget._reserved_cost += r.cost_usd
            if r.counts_step:
                budget._reserved_steps += 1
        return budget, held

    def report(self) -> BudgetReport:
        """Limits and use, for the run result."""
        return BudgetReport(
            max_steps=self.max_steps,
            steps_used=self.steps_used,
            max_token_budget=self.max_tokens,
            tokens_used=self.tokens_used,
            max_cost_usd=self.max_cost_usd,
            cost_used_usd=round(self.cost_used_usd, 8),
            deadline=self.deadline,
        )
