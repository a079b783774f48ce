"""Plain-text tables for the terminal."""

from __future__ import annotations

from collections.abc import Sequence

from polyroute.schema import RouteDecision, RunResult, Usage


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int] | None = None
) -> str:
    """A fixed-width table; columns in ``right`` are right-aligned."""
    right = right or set()
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        out = [
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ]
        return "  ".join(out).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def usd(value: float) -> str:
    """Dollars with enough digits for cheap calls."""
    if value == 0:
        return "$0"
    if abs(value) < 0.01:
        return f"${value:.6f}"
    if abs(value) < 100:
        return f"${value:.4f}"
    return f"${value:,.2f}"


def _prompt_tokens(u: Usage) -> int:
    return u.input_tokens + u.cache_read_tokens + u.cache_write_tokens


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def render_run(result: RunResult, reason_width: int = 200) -> str:
    """The run as a new user reads it: a banner, a table of steps, totals and the saving."""
    lines: list[str] = []
    if result.simulated:
        lines.append(
            "SIMULATED: answers come from the offline simulated provider, not real models."
        )
    providers = ", ".join(f"{m}={p}" for m, p in sorted(result.providers.items()))
    c = result.classification
    lines.append(
        f"task {result.task_id}: {len(result.steps)} step(s), plan {result.plan_source}, "
        f"waves {len(result.waves)}"
        + (f"; classified {c.type}/{c.complexity} by {c.classifier}" if c else "")
    )
    if providers:
        lines.append(f"providers: {providers}")
    lines.append("")
    rows = []
    notes: list[str] = []
    for s in result.steps:
        rows.append(
            [
                s.step_id,
                s.status,
                s.model or "-",
                s.rule or "-",
                f"{_prompt_tokens(s.usage):,}",
                f"{s.usage.output_tokens:,}",
                usd(s.cost_usd),
                f"{s.duration_ms / 1000:.2f}s",
                str(s.attempts),
            ]
        )
        why = s.reason or ""
        if s.error and s.status != "succeeded":
            why = f"{s.status}: {s.error}" + (f" (routed: {s.reason})" if s.reason else "")
        notes.append(_clip(f"  {s.step_id}: {why}", reason_width))
    lines.append(
        table(
            ["step", "status", "model", "rule", "in", "out", "cost", "time", "tries"],
            rows,
            right={4, 5, 6, 7, 8},
        )
    )
    lines.append("")
    lines.append("why:")
    lines.extend(notes)
    t = result.totals
    lines.append("")
    lines.append(
        f"status {result.status}"
        + (f" (stopped by {result.stop_reason})" if result.stop_reason else "")
        + f"; cost {usd(t.cost_usd)}"
        + (
            f" (incl. classifier/planner {usd(t.classifier_cost_usd)})"
            if t.classifier_cost_usd
            else ""
        )
        + f"; tokens {t.input_tokens + t.cache_read_tokens + t.cache_write_tokens:,} in"
        f" / {t.output_tokens:,} out; wall {t.duration_ms / 1000:.2f}s,"
        f" critical path {t.critical_path_ms / 1000:.2f}s ({' -> '.join(result.critical_path)})"
    )
    if result.baseline.model:
        lines.append(
            f"baseline: every step on {result.baseline.model} would cost "
            f"{usd(result.baseline.cost_usd)}; saving {result.savings_pct:.1f}%"
        )
    else:
        lines.append("baseline: none (no step was billed)")
    b = result.budgets
    limits = [f"steps {b.steps_used}/{b.max_steps}"]
    if b.max_token_budget is not None:
        limits.append(f"tokens {b.tokens_used:,}/{b.max_token_budget:,}")
    if b.max_cost_usd is not None:
        limits.append(f"dollars {usd(b.cost_used_usd)}/{usd(b.max_cost_usd)}")
    if b.deadline is not None:
        limits.append(f"deadline {b.deadline.isoformat(timespec='seconds')}")
    lines.append("budgets: " + ", ".join(limits))
    return "\n".join(lines)


def render_route(d: RouteDecision) -> str:
    """A routing decision with every candidate and why it was or was not eligible."""
    c = d.classification
    head = [
        f"model: {d.model}",
        f"rule:  {d.rule}",
        f"why:   {d.reason}",
        f"task:  type {c.type}, complexity {c.complexity}"
        + (f" (score {c.score:.3f})" if c.score is not None else "")
        + f", vision {'yes' if c.needs_vision else 'no'}, {c.token_count:,} tokens,"
        f" classifier {c.classifier}",
        f"estimated cost: {usd(d.estimated_cost_usd)}",
        "",
    ]
    rows = [
        [
            ("* " if cand.model == d.model else "  ") + cand.model,
            "yes" if cand.eligible else "no",
            usd(cand.estimated_cost_usd),
            cand.why_not or "",
        ]
        for cand in d.candidates
    ]
    return "\n".join(head) + table(["candidate", "eligible", "est. cost", "why not"], rows, {2})
