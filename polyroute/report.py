"""The visual run report: one self-contained HTML page (inline CSS, JS and SVG, nothing
fetched) and a PNG of the timeline.

The page shows the plan as a graph laid out by waves and coloured by model, a timeline of
the steps with the critical path marked, cost by model and by step against the baseline,
every routing decision with its reason and the rejected candidates, and the budgets used.
matplotlib (the ``report`` extra) is imported only to draw the PNG.
"""

from __future__ import annotations

import html
import json
import math
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from polyroute.errors import InputError
from polyroute.registry import first_error
from polyroute.render import usd
from polyroute.schema import RunResult, StepResult

PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#b07aa1",
    "#76b7b2",
    "#edc948",
    "#9c755f",
    "#ff9da7",
    "#e15759",
    "#bab0ac",
)
NO_MODEL = "#c9ced6"
BASELINE = "#8a94a6"
STATUS_COLOURS = {
    "succeeded": "#2f9e44",
    "partial": "#e8890c",
    "failed": "#e03131",
    "skipped": "#868e96",
    "cancelled": "#868e96",
}


def esc(value: Any) -> str:
    """HTML-escaped text (quotes too, so it is safe inside attributes)."""
    return html.escape(str(value), quote=True)


def plural(count: int, word: str) -> str:
    """``1 step``, ``3 steps``."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def ran(step: StepResult) -> bool:
    """The step reached a model (a step refused by a budget before its call did not)."""
    return step.started_at is not None and (step.attempts > 0 or step.status == "succeeded")


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def duration(ms: float) -> str:
    """Milliseconds as a person reads them."""
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.2f} s"
    return f"{int(ms // 60_000)} min {ms % 60_000 / 1000:.0f} s"


def load_run(path: str | Path) -> RunResult:
    """Read a RunResult JSON file (``polyroute run --json``); one-line InputError if bad."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: cannot read: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    if isinstance(data, dict) and isinstance(data.get("result"), dict) and "status" in data:
        data = data["result"]  # a TaskStatus from the API: report its result
    try:
        return RunResult.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"{p}: not a RunResult: {first_error(exc)}") from None


# --- the facts the page draws ------------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    """One step on the timeline, in milliseconds from the start of the run."""

    step: StepResult
    start_ms: float
    end_ms: float


class ReportData:
    """Everything derived from a RunResult that the page and the PNG need."""

    def __init__(self, result: RunResult) -> None:
        self.result = result
        self.steps = {s.step_id: s for s in result.steps}
        self.waves = result.waves or _waves_of(result.steps)
        self.critical = list(result.critical_path)
        self.critical_edges = set(zip(self.critical, self.critical[1:], strict=False))
        models: list[str] = []
        for s in result.steps:
            if s.model and s.model not in models:
                models.append(s.model)
        self.models = models
        self.colours = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(models)}
        self.t0 = result.started_at
        self.bars = [
            Bar(s, self.ms(s.started_at), self.ms(s.finished_at or s.started_at))
            for s in result.steps
            if ran(s)
        ]
        ends = [b.end_ms for b in self.bars] + [self.ms(result.finished_at)]
        self.span_ms = max(1.0, *ends)
        self.baseline_by_step = _baseline_by_step(result)

    def ms(self, at: datetime | None) -> float:
        """Milliseconds from the start of the run."""
        if at is None:
            return 0.0
        return max(0.0, (at - self.t0).total_seconds() * 1000.0)

    def colour(self, model: str | None) -> str:
        """The colour of a model (grey when a step has none)."""
        return self.colours.get(model or "", NO_MODEL)

    def cost_by_model(self) -> dict[str, float]:
        """Dollars per model over the run's steps."""
        out: dict[str, float] = {}
        for s in self.result.steps:
            if s.model and s.cost_usd:
                out[s.model] = out.get(s.model, 0.0) + s.cost_usd
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _waves_of(steps: list[StepResult]) -> list[list[str]]:
    level: dict[str, int] = {}
    ids = {s.step_id for s in steps}
    remaining = list(steps)
    while remaining:
        progressed = False
        for s in list(remaining):
            deps = [d for d in s.depends_on if d in ids]
            if all(d in level for d in deps):
                level[s.step_id] = 1 + max((level[d] for d in deps), default=-1)
                remaining.remove(s)
                progressed = True
        if not progressed:  # a cycle cannot come from a run; draw what is left in one column
            for s in remaining:
                level[s.step_id] = max(level.values(), default=-1) + 1
            break
    waves: list[list[str]] = []
    for s in steps:
        n = level[s.step_id]
        while len(waves) <= n:
            waves.append([])
        waves[n].append(s.step_id)
    return waves


def _baseline_by_step(result: RunResult) -> dict[str, float]:
    """What each billed step (failed ones too) would have cost on the baseline model: priced
    with the registry when it knows the model, else the baseline total shared out by tokens."""
    done = [s for s in result.steps if s.usage.total > 0]
    if not result.baseline.model:
        return {}
    try:
        from polyroute.cost import call_cost
        from polyroute.registry import load_registry

        spec = load_registry().get(result.baseline.model)
        return {s.step_id: call_cost(spec, s.usage) for s in done}
    except Exception:  # a custom registry the report cannot see: share it out instead
        tokens = sum(s.usage.total for s in done) or 1
        return {s.step_id: result.baseline.cost_usd * s.usage.total / tokens for s in done}


# --- SVG pieces ------------------------------------------------------------------------------

NODE_W, NODE_H, COL_GAP, ROW_GAP, PAD = 184, 64, 70, 18, 16


def plan_svg(d: ReportData) -> str:
    """The plan as a graph: one column per wave, edges from dependency to dependant."""
    pos: dict[str, tuple[float, float]] = {}
    tallest = max((len(w) for w in d.waves), default=1)
    height = PAD * 2 + 22 + tallest * NODE_H + (tallest - 1) * ROW_GAP
    for col, wave in enumerate(d.waves):
        col_h = len(wave) * NODE_H + (len(wave) - 1) * ROW_GAP
        top = PAD + 22 + (height - PAD * 2 - 22 - col_h) / 2
        for row, sid in enumerate(wave):
            pos[sid] = (PAD + col * (NODE_W + COL_GAP), top + row * (NODE_H + ROW_GAP))
    width = PAD * 2 + len(d.waves) * NODE_W + max(0, len(d.waves) - 1) * COL_GAP
    parts = [
        f'<svg class="plan" viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" '
        f'role="img" aria-label="plan graph">',
        "<defs>",
        '<marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="9" '
        'markerHeight="9" markerUnits="userSpaceOnUse" orient="auto-start-reverse">'
        '<path d="M0,0 L10,5 L0,10 z" fill="#b8c0cc"/></marker>',
        '<marker id="arrow-crit" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="10" '
        'markerHeight="10" markerUnits="userSpaceOnUse" orient="auto-start-reverse">'
        '<path d="M0,0 L10,5 L0,10 z" fill="#1f2937"/></marker>',
        "</defs>",
    ]
    for col in range(len(d.waves)):
        x = PAD + col * (NODE_W + COL_GAP) + NODE_W / 2
        parts.append(f'<text class="wave-label" x="{x:.0f}" y="{PAD + 6}">wave {col + 1}</text>')
    for s in d.result.steps:
        if s.step_id not in pos:
            continue
        x2, y2 = pos[s.step_id]
        for dep in s.depends_on:
            if dep not in pos:
                continue
            x1, y1 = pos[dep]
            ax, ay = x1 + NODE_W, y1 + NODE_H / 2
            bx, by = x2 - 2, y2 + NODE_H / 2
            dx = max(24.0, (bx - ax) / 2)
            crit = (dep, s.step_id) in d.critical_edges
            parts.append(
                f'<path class="edge{" crit" if crit else ""}" data-step="{esc(s.step_id)}" '
                f'd="M{ax:.1f},{ay:.1f} C{ax + dx:.1f},{ay:.1f} {bx - dx:.1f},{by:.1f} '
                f'{bx:.1f},{by:.1f}" marker-end="url(#{"arrow-crit" if crit else "arrow"})"/>'
            )
    for s in d.result.steps:
        if s.step_id not in pos:
            continue
        x, y = pos[s.step_id]
        colour = d.colour(s.model)
        crit = s.step_id in d.critical
        cls = f"node status-{s.status}" + (" crit" if crit else "")
        tip = f"{s.step_id}: {s.description}\n{s.status}" + (f" — {s.error}" if s.error else "")
        meta = f"{usd(s.cost_usd)} · {duration(s.duration_ms)}" if ran(s) else s.status
        parts.append(
            f'<g class="{cls}" data-step="{esc(s.step_id)}" transform="translate({x:.1f},{y:.1f})">'
            f"<title>{esc(tip)}</title>"
            f'<rect class="box" width="{NODE_W}" height="{NODE_H}" rx="10"/>'
            f'<rect class="stripe" width="8" height="{NODE_H}" rx="4" fill="{colour}"/>'
            f'<circle class="dot" cx="{NODE_W - 14}" cy="14" r="5" '
            f'fill="{STATUS_COLOURS.get(s.status, "#868e96")}"/>'
            f'<text class="node-id" x="18" y="22">{esc(_clip(s.step_id, 20))}</text>'
            f'<text class="node-model" x="18" y="39" fill="{colour}">'
            f"{esc(_clip(s.model or 'not routed', 24))}</text>"
            f'<text class="node-meta" x="18" y="55">{esc(meta)}</text>'
            "</g>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _nice_step(span: float, target: int = 8) -> float:
    raw = span / target
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for mult in (1, 2, 2.5, 5, 10):
        if raw <= mult * mag:
            return mult * mag
    return 10 * mag


GANTT_LABEL, GANTT_W, ROW_H = 150, 860, 30


def timeline_svg(d: ReportData) -> str:
    """The Gantt chart: a row per step, bars from start to finish, the critical path outlined."""
    rows = list(d.result.steps)
    top, bottom = 28, 34
    height = top + len(rows) * ROW_H + bottom
    width = GANTT_LABEL + GANTT_W + 20
    scale = GANTT_W / d.span_ms
    parts = [
        f'<svg class="timeline" viewBox="0 0 {width} {height}" role="img" aria-label="timeline">',
        '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="6" height="6" fill="#fde2e2"/>'
        '<line x1="0" y1="0" x2="0" y2="6" stroke="#e03131" stroke-width="2"/></pattern></defs>',
    ]
    step = _nice_step(d.span_ms)
    t = 0.0
    while t <= d.span_ms + 1e-9:
        x = GANTT_LABEL + t * scale
        parts.append(
            f'<line class="grid" x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" '
            f'y2="{height - bottom + 4}"/>'
            f'<text class="tick" x="{x:.1f}" y="{height - bottom + 20}">{esc(duration(t))}</text>'
        )
        t += step
    by_id = {b.step.step_id: b for b in d.bars}
    for i, s in enumerate(rows):
        y = top + i * ROW_H
        crit = s.step_id in d.critical
        parts.append(
            f'<g class="row{" crit" if crit else ""}" data-step="{esc(s.step_id)}">'
            f'<rect class="band" x="0" y="{y}" width="{width}" height="{ROW_H}"/>'
            f'<text class="row-label" x="{GANTT_LABEL - 10}" y="{y + ROW_H / 2 + 4}">'
            f"{esc(_clip(s.step_id, 18))}</text>"
        )
        bar = by_id.get(s.step_id)
        if bar is None:
            why = s.error or s.status
            parts.append(
                f'<text class="not-run" x="{GANTT_LABEL + 6}" y="{y + ROW_H / 2 + 4}">'
                f"{esc(_clip(f'{s.status}: {why}', 110))}</text></g>"
            )
            continue
        x = GANTT_LABEL + bar.start_ms * scale
        w = max(2.0, (bar.end_ms - bar.start_ms) * scale)
        fill = "url(#hatch)" if s.status in ("failed", "cancelled") else d.colour(s.model)
        tip = (
            f"{s.step_id} on {s.model or '-'}: {duration(bar.start_ms)} → "
            f"{duration(bar.end_ms)} ({duration(s.duration_ms)}), {usd(s.cost_usd)}, {s.status}"
        )
        label = f"{s.model or s.status} · {duration(s.duration_ms)}"
        room = len(label) * 6.4 + 12
        inside = w > room
        fits_right = x + w + room <= GANTT_LABEL + GANTT_W + 20
        parts.append(
            f'<rect class="bar{" crit" if crit else ""}" x="{x:.1f}" y="{y + 5}" '
            f'width="{w:.1f}" height="{ROW_H - 10}" rx="4" fill="{fill}">'
            f"<title>{esc(tip)}</title></rect>"
        )
        if inside:
            parts.append(
                f'<text class="bar-label in" x="{x + 7:.1f}" y="{y + ROW_H / 2 + 4}">'
                f"{esc(label)}</text>"
            )
        elif fits_right:
            parts.append(
                f'<text class="bar-label out" x="{x + w + 6:.1f}" y="{y + ROW_H / 2 + 4}">'
                f"{esc(label)}</text>"
            )
        else:
            parts.append(
                f'<text class="bar-label out left" x="{x - 6:.1f}" y="{y + ROW_H / 2 + 4}">'
                f"{esc(label)}</text>"
            )
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def _hbars(items: list[tuple[str, float, str, str]], label_w: int = 170) -> str:
    """A horizontal bar chart: (label, value, colour, css class) per row."""
    width, bar_w, row = 640, 300, 30
    peak = max((v for _, v, _, _ in items), default=0.0) or 1.0
    height = row * len(items) + 8
    parts = [f'<svg class="hbars" viewBox="0 0 {width} {height}" role="img">']
    for i, (label, value, colour, cls) in enumerate(items):
        y = 4 + i * row
        w = max(1.5, bar_w * value / peak)
        parts.append(
            f'<g class="{cls}"><text class="hb-label" x="{label_w - 10}" y="{y + 16}">'
            f"{esc(_clip(label, 34))}</text>"
            f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 8}" rx="3" '
            f'fill="{colour}"><title>{esc(label)}: {esc(usd(value))}</title></rect>'
            f'<text class="hb-value" x="{label_w + w + 8:.1f}" y="{y + 16}">'
            f"{esc(usd(value))}</text></g>"
        )
    parts.append("</svg>")
    return "".join(parts)


def cost_by_model_svg(d: ReportData) -> str:
    """Routed dollars per model, then the baseline's total."""
    items = [(m, c, d.colour(m), "routed") for m, c in d.cost_by_model().items()]
    r = d.result
    if r.totals.classifier_cost_usd:
        items.append(("classifier / planner", r.totals.classifier_cost_usd, NO_MODEL, "routed"))
    if not r.baseline.model:
        note = f"Routed {usd(r.totals.cost_usd)}; no step was billed, so there is no baseline."
        return _hbars(items, label_w=240) + f'<p class="chart-note">{esc(note)}</p>'
    items.append((f"baseline: all on {r.baseline.model}", r.baseline.cost_usd, BASELINE, "base"))
    saved = r.baseline.cost_usd - r.totals.cost_usd
    note = (
        f"Routed {usd(r.totals.cost_usd)} against {usd(r.baseline.cost_usd)}: "
        f"{usd(saved)} ({r.savings_pct:.1f}%) saved by sending each step to the cheapest model "
        "that fits it."
        if saved > 0
        else f"Routed {usd(r.totals.cost_usd)} against {usd(r.baseline.cost_usd)}: no saving."
    )
    return _hbars(items, label_w=240) + f'<p class="chart-note">{esc(note)}</p>'


def cost_by_step_svg(d: ReportData) -> str:
    """Each step's routed cost next to what the baseline model would have charged."""
    width, bar_w, label_w, pair = 640, 330, 150, 40
    rows = [s for s in d.result.steps if ran(s)]
    peak = max(
        [s.cost_usd for s in rows] + [d.baseline_by_step.get(s.step_id, 0.0) for s in rows],
        default=0.0,
    )
    peak = peak or 1.0
    height = pair * len(rows) + 8
    parts = [f'<svg class="hbars" viewBox="0 0 {width} {height}" role="img">']
    for i, s in enumerate(rows):
        y = 4 + i * pair
        base = d.baseline_by_step.get(s.step_id, 0.0)
        w1 = max(1.5, bar_w * s.cost_usd / peak)
        w2 = max(1.5, bar_w * base / peak) if base else 0.0
        parts.append(
            f'<g data-step="{esc(s.step_id)}">'
            f'<text class="hb-label" x="{label_w - 10}" y="{y + 21}">'
            f"{esc(_clip(s.step_id, 18))}</text>"
            f'<rect x="{label_w}" y="{y + 3}" width="{w1:.1f}" height="14" rx="3" '
            f'fill="{d.colour(s.model)}"><title>{esc(s.step_id)} on {esc(s.model or "-")}: '
            f"{esc(usd(s.cost_usd))}</title></rect>"
            f'<text class="hb-value" x="{label_w + w1 + 6:.1f}" y="{y + 14}">'
            f"{esc(usd(s.cost_usd))}</text>"
        )
        if w2:
            parts.append(
                f'<rect class="base-bar" x="{label_w}" y="{y + 20}" width="{w2:.1f}" '
                f'height="10" rx="3"><title>on {esc(d.result.baseline.model)}: '
                f"{esc(usd(base))}</title></rect>"
                f'<text class="hb-value base" x="{label_w + w2 + 6:.1f}" y="{y + 29}">'
                f"{esc(usd(base))}</text>"
            )
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


# --- HTML pieces -----------------------------------------------------------------------------


def _meter(label: str, used: float, limit: float | None, text: str) -> str:
    if limit:
        frac = used / limit
        pct = min(100.0, 100.0 * frac)
        level = "ok" if frac < 0.7 else ("warn" if frac < 0.9 else "over")
        bar = f'<div class="meter"><div class="fill {level}" style="width:{pct:.1f}%"></div></div>'
        share = f"{100 * frac:.0f}%"
    else:
        bar = '<div class="meter none"><div class="fill" style="width:0"></div></div>'
        share = "no limit"
    return (
        f'<div class="budget"><div class="budget-head"><span>{esc(label)}</span>'
        f'<span class="share">{esc(share)}</span></div>{bar}'
        f'<div class="budget-text">{esc(text)}</div></div>'
    )


def budgets_html(d: ReportData) -> str:
    """A meter per budget: steps, tokens, dollars and the deadline."""
    r, b = d.result, d.result.budgets
    parts = [
        _meter("Steps", b.steps_used, b.max_steps, f"{b.steps_used} of {b.max_steps} steps"),
        _meter(
            "Tokens",
            b.tokens_used,
            b.max_token_budget,
            f"{b.tokens_used:,}"
            + (f" of {b.max_token_budget:,} tokens" if b.max_token_budget else " tokens"),
        ),
        _meter(
            "Dollars",
            b.cost_used_usd,
            b.max_cost_usd,
            usd(b.cost_used_usd) + (f" of {usd(b.max_cost_usd)}" if b.max_cost_usd else ""),
        ),
    ]
    if b.deadline is not None:
        allowed = (b.deadline - r.started_at).total_seconds() * 1000
        used = (r.finished_at - r.started_at).total_seconds() * 1000
        parts.append(
            _meter(
                "Time to deadline",
                used,
                max(allowed, 1.0),
                f"{duration(used)} of {duration(max(allowed, 0))} "
                f"(deadline {b.deadline.isoformat(timespec='seconds')})",
            )
        )
    else:
        used = (r.finished_at - r.started_at).total_seconds() * 1000
        parts.append(_meter("Time", used, None, f"{duration(used)}, no deadline"))
    return "".join(parts)


def _candidates_table(d: ReportData, s: StepResult) -> str:
    """The candidates as a small bar list of estimated cost: chosen first, then the other
    eligible models, then the rejected ones with why."""
    if not s.candidates:
        return '<p class="muted">No candidates recorded.</p>'

    def order(c: Any) -> tuple[int, float]:
        rank = 0 if c.model == s.model else 1 if c.model == s.fallback_from else 2
        return (rank if c.eligible or rank < 2 else 3, c.estimated_cost_usd)

    peak = max(c.estimated_cost_usd for c in s.candidates) or 1.0
    rows = []
    for c in sorted(s.candidates, key=order):
        if c.model == s.model:
            kind, label, why = "chosen", "answered" if s.fallback_from else "chosen", ""
        elif c.model == s.fallback_from:
            kind, label, why = "rejected", "failed", "routed here first; the call failed"
        elif c.eligible:
            kind, label, why = "eligible", "eligible", ""
        else:
            kind, label, why = "rejected", "rejected", c.why_not or "not eligible"
        pct = 100.0 * c.estimated_cost_usd / peak
        rows.append(
            f'<tr class="{kind}"><td class="cand-name">'
            f'<span class="swatch" style="background:{d.colour(c.model)}"></span>'
            f"{esc(c.model)}</td>"
            f'<td class="cand-bar"><div class="cbar {kind}" style="width:{pct:.1f}%"></div></td>'
            f'<td class="num">{esc(usd(c.estimated_cost_usd))}</td>'
            f'<td class="cand-why"><span class="pill {kind}">{label}</span> {esc(why)}</td></tr>'
        )
    return (
        '<table class="cands"><thead><tr><th>candidate</th><th>estimated cost</th><th></th>'
        f"<th>verdict</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        '<p class="cand-note">Eligible models were passed over because the rule picks a '
        "tier; rejected ones lack a capability, the window or the budget.</p>"
    )


def decisions_html(d: ReportData) -> str:
    """A card per step: the model, the rule and reason, fallbacks, errors and candidates."""
    cards = []
    for s in d.result.steps:
        colour = d.colour(s.model)
        notes = []
        if s.fallback_from:
            notes.append(f'<p class="note warn">Fell back from {esc(s.fallback_from)}.</p>')
        if s.error:
            notes.append(f'<p class="note err">{esc(s.error)}</p>')
        rejected = sum(1 for c in s.candidates if not c.eligible)
        cards.append(
            f'<article class="card decision" data-step="{esc(s.step_id)}" '
            f'style="--model:{colour}">'
            f'<header><span class="step-id">{esc(s.step_id)}</span>'
            f'<span class="arrow">→</span><span class="model" style="color:{colour}">'
            f"{esc(s.model or 'not routed')}</span>"
            f'<span class="pill status {esc(s.status)}">{esc(s.status)}</span></header>'
            f'<p class="desc">{esc(s.description)}</p>'
            + (
                f'<p class="rule"><span class="pill rule">{esc(s.rule)}</span></p>'
                if s.rule
                else ""
            )
            + (f'<p class="reason">{esc(s.reason)}</p>' if s.reason else "")
            + "".join(notes)
            + f'<p class="facts">{esc(s.type)} · {s.usage.input_tokens:,} in / '
            f"{s.usage.output_tokens:,} out tokens · {esc(usd(s.cost_usd))} · "
            f"{s.attempts} attempt{'s' if s.attempts != 1 else ''} · "
            f"{len(s.candidates)} candidates, {rejected} not eligible</p>"
            f"<details open><summary>candidates</summary>{_candidates_table(d, s)}</details>"
            "</article>"
        )
    return "".join(cards)


def _legend(d: ReportData) -> str:
    items = [
        f'<span class="legend-item"><span class="swatch" style="background:{c}"></span>'
        f"{esc(m)}</span>"
        for m, c in d.colours.items()
    ]
    items.append(
        '<span class="legend-item"><span class="swatch crit-swatch"></span>critical path</span>'
    )
    return f'<div class="legend">{"".join(items)}</div>'


def _outputs(d: ReportData) -> str:
    done = d.result.handoff.completed_steps
    if not done:
        return '<p class="muted">No step produced output.</p>'
    parts = []
    for c in done:
        text = c.result if isinstance(c.result, str) else json.dumps(c.result, indent=2)
        parts.append(
            f'<details data-step="{esc(c.agent_id)}"><summary><b>{esc(c.agent_id)}</b> '
            f'<span class="muted">by {esc(c.model)}, confidence {c.confidence:.2f}</span>'
            f"</summary><pre>{esc(text)}</pre></details>"
        )
    return "".join(parts)


def render_html(result: RunResult) -> str:
    """The whole report page as one HTML string."""
    from polyroute import __version__

    d = ReportData(result)
    r, t = result, result.totals
    ok = sum(1 for s in r.steps if s.status == "succeeded")
    saved = r.baseline.cost_usd - t.cost_usd
    against = f"against every step on {r.baseline.model}" if r.baseline.model else "no baseline"
    parallel_gain = t.duration_ms and sum(s.duration_ms for s in r.steps) / max(1, t.duration_ms)
    banner = (
        '<div class="banner">Simulated run: the answers come from the offline simulated '
        "provider, not real models.</div>"
        if r.simulated
        else ""
    )
    stop = (
        f'<span class="pill stop">stopped by {esc(r.stop_reason)}</span>' if r.stop_reason else ""
    )
    cls = r.classification
    classified = (
        f"classified {esc(cls.type)} / {esc(cls.complexity)} by {esc(cls.classifier)}"
        if cls
        else ""
    )
    kpis = [
        (
            "Cost",
            usd(t.cost_usd),
            f"baseline {usd(r.baseline.cost_usd)} on {r.baseline.model}"
            if r.baseline.model
            else "no baseline: no step was billed",
        ),
        (
            "Saving",
            f"{r.savings_pct:.1f}%" if r.baseline.model else "-",
            f"{usd(saved)} less than one model for every step" if saved > 0 else "no saving",
        ),
        (
            "Wall time",
            duration(t.duration_ms),
            f"critical path {duration(t.critical_path_ms)}"
            + (f" · {parallel_gain:.1f} steps at a time" if parallel_gain else ""),
        ),
        ("Steps", f"{ok}/{len(r.steps)}", f"succeeded, in {plural(len(d.waves), 'wave')}"),
        (
            "Tokens",
            f"{t.input_tokens + t.cache_read_tokens + t.cache_write_tokens:,}",
            f"prompt tokens, and {t.output_tokens:,} output",
        ),
    ]
    kpi_html = "".join(
        f'<div class="kpi"><div class="kpi-label">{esc(a)}</div>'
        f'<div class="kpi-value">{esc(b)}</div><div class="kpi-sub">{esc(c)}</div></div>'
        for a, b, c in kpis
    )
    crit = " → ".join(r.critical_path) or "-"
    title = f"polyroute · {r.task_id}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{_CSS}</style></head>
<body>
<header class="top">
  <div class="brand">polyroute <span>run report</span></div>
  <h1>{esc(r.task_id)} <span class="pill status {esc(r.status)}">{esc(r.status)}</span>{stop}</h1>
  <p class="task">{esc(r.handoff.original_task)}</p>
  <p class="meta">{esc(r.started_at.isoformat(timespec="seconds"))} · plan {esc(r.plan_source)}
    · {classified}</p>
</header>
<main>
{banner}
<section class="kpis">{kpi_html}</section>

<section class="panel">
  <h2>Plan <small>{plural(len(r.steps), "step")} in {plural(len(d.waves), "wave")}, coloured by
    model</small></h2>
  <div class="scroll">{plan_svg(d)}</div>
  {_legend(d)}
</section>

<section class="panel">
  <h2>Timeline <small>what ran in parallel; critical path {esc(crit)}
    ({esc(duration(t.critical_path_ms))})</small></h2>
  <div class="scroll">{timeline_svg(d)}</div>
</section>

<section class="two">
  <div class="panel">
    <h2>Cost by model <small>{esc(against)}</small></h2>
    {cost_by_model_svg(d)}
  </div>
  <div class="panel">
    <h2>Cost by step <small>routed (colour) and baseline (grey)</small></h2>
    {cost_by_step_svg(d)}
  </div>
</section>

<section class="panel">
  <h2>Budgets</h2>
  <div class="budgets">{budgets_html(d)}</div>
</section>

<section class="panel">
  <h2>Routing decisions <small>the model each step went to, why, and who else was
    considered</small></h2>
  <div class="decisions">{decisions_html(d)}</div>
</section>

<section class="panel">
  <h2>Outputs <small>what each step handed on</small></h2>
  {_outputs(d)}
</section>
</main>
<footer>polyroute {esc(__version__)} · RunResult schema {esc(r.schema_version)} ·
  this page is self-contained: it loads nothing from the network</footer>
<script>{_JS}</script>
</body></html>
"""


_CSS = """
:root{--ink:#1f2937;--muted:#6b7280;--line:#e5e7eb;--bg:#f5f7fa;--panel:#fff;
--accent:#3b5bdb}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
color:var(--ink);background:var(--bg)}
header.top{background:linear-gradient(120deg,#1e293b,#334155);color:#f8fafc;padding:22px 40px 18px}
.brand{font-weight:700;letter-spacing:.04em;color:#a5b4fc;font-size:13px;text-transform:uppercase}
.brand span{color:#cbd5e1;font-weight:400}
h1{margin:6px 0 4px;font-size:26px;display:flex;align-items:center;gap:10px;flex-wrap:wrap}
.task{margin:4px 0;max-width:1000px;color:#e2e8f0}
.meta{margin:0;color:#94a3b8;font-size:12.5px}
main{max-width:1240px;margin:0 auto;padding:20px 28px 8px}
.banner{background:#fff8db;border:1px solid #f3d878;color:#7a5b00;padding:8px 14px;
border-radius:8px;margin-bottom:16px;font-size:13px}
.kpis{display:grid;grid-template-columns:repeat(5,1fr);gap:14px;margin-bottom:18px}
.kpi{background:var(--panel);border:1px solid var(--line);border-radius:12px;padding:14px 16px;
box-shadow:0 1px 2px rgba(0,0,0,.04)}
.kpi-label{font-size:12px;color:var(--muted);text-transform:uppercase;letter-spacing:.05em}
.kpi-value{font-size:26px;font-weight:700;margin:2px 0}
.kpi-sub{font-size:12px;color:var(--muted)}
.panel{background:var(--panel);border:1px solid var(--line);border-radius:12px;
padding:16px 20px;margin-bottom:18px;box-shadow:0 1px 2px rgba(0,0,0,.04)}
.two{display:grid;grid-template-columns:1fr 1fr;gap:18px}
.two .panel{margin-bottom:18px}
h2{font-size:16px;margin:0 0 12px}
h2 small{font-weight:400;color:var(--muted);font-size:12.5px;margin-left:8px}
.scroll{overflow-x:auto}
svg{display:block;max-width:100%;height:auto;font-family:inherit}
svg.plan{margin:0 auto}
.pill{display:inline-block;font-size:11.5px;font-weight:600;padding:2px 9px;border-radius:99px;
background:#e5e7eb;color:#374151;vertical-align:middle}
.pill.status.succeeded{background:#d3f9d8;color:#1b6e2c}
.pill.status.partial{background:#ffe8cc;color:#a35200}
.pill.status.failed{background:#ffe3e3;color:#b42318}
.pill.status.skipped,.pill.status.cancelled{background:#eceff3;color:#5f6b7a}
.pill.stop{background:#ffe8cc;color:#a35200}
.pill.rule{background:#e7ecff;color:#2c43a8;font-family:ui-monospace,monospace}
.pill.chosen{background:#d3f9d8;color:#1b6e2c}
.pill.eligible{background:#eef2f7;color:#4b5563}
.pill.rejected{background:#ffe3e3;color:#b42318}
.wave-label{font-size:11px;fill:var(--muted);text-anchor:middle;text-transform:uppercase;
letter-spacing:.06em}
.edge{fill:none;stroke:#b8c0cc;stroke-width:1.6}
.edge.crit{stroke:#1f2937;stroke-width:2.6}
.node .box{fill:#fff;stroke:#d5dae1;stroke-width:1.2}
.node.crit .box{stroke:#1f2937;stroke-width:2.2}
.node.status-failed .box{stroke:#e03131;stroke-width:2;fill:#fff5f5}
.node.status-skipped .box,.node.status-cancelled .box{stroke-dasharray:5 4;fill:#f8f9fa}
.node.status-skipped,.node.status-cancelled{opacity:.75}
.node-id{font-weight:700;font-size:13px;fill:var(--ink)}
.node-model{font-size:12px;font-weight:600}
.node-meta{font-size:11.5px;fill:var(--muted)}
.node,.row,.decision{transition:opacity .15s}
.dim .node:not(.hl),.dim .row:not(.hl){opacity:.25}
.dim .edge:not(.hl){opacity:.15}
.grid{stroke:#eef0f3;stroke-width:1}
.tick{font-size:11px;fill:var(--muted);text-anchor:middle}
.band{fill:transparent}
.row:nth-child(even) .band{fill:#fafbfc}
.row.hl .band{fill:#eef2ff}
.row-label{font-size:12.5px;text-anchor:end;fill:var(--ink);font-weight:600}
.row.crit .row-label{text-decoration:underline;text-decoration-thickness:2px}
.bar.crit{stroke:#1f2937;stroke-width:2}
.bar-label{font-size:11.5px}
.bar-label.in{fill:#fff;font-weight:600}
.bar-label.out{fill:var(--muted)}
.bar-label.left{text-anchor:end}
.not-run{font-size:12px;fill:#9aa4b2;font-style:italic}
.hb-label{font-size:12.5px;text-anchor:end;fill:var(--ink)}
.hb-value{font-size:11.5px;fill:var(--muted)}
.hb-value.base{fill:#8a94a6}
.base-bar{fill:#c3c9d4}
.legend{display:flex;flex-wrap:wrap;gap:14px;margin-top:10px;font-size:12.5px;color:#374151}
.legend-item{display:inline-flex;align-items:center;gap:6px}
.swatch{display:inline-block;width:12px;height:12px;border-radius:3px;margin-right:6px;
vertical-align:-1px}
.crit-swatch{background:#fff;border:2.5px solid #1f2937;width:14px;height:12px}
.budgets{display:grid;grid-template-columns:repeat(4,1fr);gap:18px}
.budget-head{display:flex;justify-content:space-between;font-weight:600;font-size:13px}
.share{color:var(--muted);font-weight:500}
.meter{height:10px;background:#eef0f3;border-radius:99px;overflow:hidden;margin:6px 0 4px}
.meter.none{background:repeating-linear-gradient(45deg,#eef0f3 0 6px,#f7f8fa 6px 12px)}
.fill{height:100%;border-radius:99px}
.fill.ok{background:#40c057}.fill.warn{background:#fab005}.fill.over{background:#e03131}
.budget-text{font-size:12px;color:var(--muted)}
.decisions{display:grid;grid-template-columns:1fr 1fr;gap:14px}
.card{border:1px solid var(--line);border-left:5px solid var(--model);border-radius:10px;
padding:12px 14px;background:#fff}
.card.hl{box-shadow:0 0 0 2px #c7d2fe}
.card header{display:flex;align-items:center;gap:8px;flex-wrap:wrap}
.step-id{font-weight:700}
.arrow{color:var(--muted)}
.model{font-weight:700}
.card header .pill{margin-left:auto}
.desc{margin:6px 0;color:#374151}
.rule{margin:4px 0}
.reason{margin:4px 0;font-size:12.5px;color:#4b5563;font-family:ui-monospace,"DejaVu Sans Mono",
monospace;background:#f8fafc;border-radius:6px;padding:6px 8px}
.facts{font-size:12px;color:var(--muted);margin:6px 0}
.note{font-size:12.5px;margin:6px 0;padding:5px 8px;border-radius:6px}
.note.warn{background:#fff4e6;color:#a35200}
.note.err{background:#fff5f5;color:#b42318}
details summary{cursor:pointer;color:var(--accent);font-size:12.5px;margin:4px 0}
table.cands{width:100%;border-collapse:collapse;font-size:12px;margin-top:4px}
.cands th{text-align:left;color:var(--muted);font-weight:600;border-bottom:1px solid var(--line);
padding:4px 6px}
.cands td{padding:3px 6px;border-bottom:1px solid #f1f3f5;vertical-align:top}
.cands tr.chosen td{background:#f4fbf5;font-weight:600}
.cands tr.rejected td{color:#8a94a6}
.cand-name{white-space:nowrap}
.cand-bar{width:30%}
.cand-note{font-size:11.5px;color:var(--muted);margin:6px 0 0}
.cbar{height:8px;border-radius:99px;min-width:2px}
.cbar.chosen{background:#2f9e44}.cbar.eligible{background:#adb5bd}.cbar.rejected{background:#ffc9c9}
.cand-why .pill{font-size:10.5px;padding:1px 7px}
.num{text-align:right;white-space:nowrap}
pre{white-space:pre-wrap;background:#f8fafc;border:1px solid var(--line);border-radius:8px;
padding:10px;font-size:12px;max-height:320px;overflow:auto}
.muted{color:var(--muted)}
.chart-note{font-size:12.5px;color:#4b5563;margin:14px 0 0;padding:8px 10px;background:#f8fafc;
border-radius:8px}
footer{text-align:center;color:var(--muted);font-size:12px;padding:10px 0 26px}
@media (max-width:900px){.kpis{grid-template-columns:repeat(2,1fr)}.two,.decisions,
.budgets{grid-template-columns:1fr}}
"""

_JS = """
(function(){
  "use strict";
  var all = document.querySelectorAll("[data-step]");
  function mark(step, on){
    document.body.classList.toggle("dim", on);
    for (var i = 0; i < all.length; i++) {
      var el = all[i];
      el.classList.toggle("hl", on && el.getAttribute("data-step") === step);
    }
  }
  for (var i = 0; i < all.length; i++) {
    (function(el){
      el.addEventListener("mouseenter", function(){ mark(el.getAttribute("data-step"), true); });
      el.addEventListener("mouseleave", function(){ mark(null, false); });
    })(all[i]);
  }
  document.documentElement.setAttribute("data-report-ready", String(all.length));
})();
"""


# --- the PNG -------------------------------------------------------------------------------------


def _plain(text: str) -> str:
    """Text matplotlib shows as is (a ``$`` would start its math mode)."""
    return text.replace("$", r"\$")


def write_timeline_png(result: RunResult, path: str | Path) -> Path:
    """The timeline as a PNG (matplotlib, Agg backend)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        raise InputError(
            "report: the timeline PNG needs matplotlib: pip install 'polyroute[report]'"
        ) from None
    d = ReportData(result)
    steps = list(result.steps)
    by_id = {b.step.step_id: b for b in d.bars}
    fig_h = 1.5 + 0.42 * max(1, len(steps))
    fig, ax = plt.subplots(figsize=(10, fig_h), dpi=150)
    try:
        unit, div = ("s", 1000.0) if d.span_ms >= 2000 else ("ms", 1.0)
        for i, s in enumerate(steps):
            bar = by_id.get(s.step_id)
            if bar is None:
                ax.text(0, i, f"  {s.status}", va="center", fontsize=8, color="#868e96")
                continue
            crit = s.step_id in d.critical
            failed = s.status in ("failed", "cancelled")
            ax.barh(
                i,
                (bar.end_ms - bar.start_ms) / div,
                left=bar.start_ms / div,
                height=0.62,
                color="#fde2e2" if failed else d.colour(s.model),
                edgecolor="#1f2937" if crit else ("#e03131" if failed else "none"),
                linewidth=1.8 if crit else 1.0,
                hatch="//" if failed else None,
            )
            ax.text(
                bar.end_ms / div,
                i,
                _plain(f"  {s.model or s.status} · {usd(s.cost_usd)}"),
                va="center",
                fontsize=7.5,
                color="#4b5563",
            )
        ax.set_yticks(range(len(steps)), [_plain(s.step_id) for s in steps], fontsize=8.5)
        ax.invert_yaxis()
        ax.set_xlim(0, d.span_ms / div * 1.28)
        ax.set_xlabel(f"time since the run started ({unit})", fontsize=8.5)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="x", color="#eef0f3")
        ax.set_axisbelow(True)
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
        crit_text = " → ".join(result.critical_path) or "-"
        ax.set_title(
            _plain(
                f"{result.task_id}: {result.status}, {usd(result.totals.cost_usd)} "
                + (
                    f"(baseline {usd(result.baseline.cost_usd)}), "
                    if result.baseline.model
                    else "(no baseline), "
                )
                + f"critical path {crit_text}"
            ),
            fontsize=9.5,
            loc="left",
        )
        handles = [Patch(facecolor=c, label=m) for m, c in d.colours.items()]
        handles.append(Patch(facecolor="white", edgecolor="#1f2937", label="critical path"))
        ax.legend(
            handles=handles,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.1 - 0.45 / fig_h),
            fontsize=7.5,
            frameon=False,
            ncol=min(5, len(handles)),
        )
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out, format="png", bbox_inches="tight", pad_inches=0.15)
    finally:
        plt.close(fig)
    return out


# --- writing ---------------------------------------------------------------------------------


def write_html(result: RunResult, path: str | Path) -> Path:
    """Write the report page."""
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render_html(result), encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{out}: cannot write: {exc}") from None
    return out


def write_report(result: RunResult, directory: str | Path) -> list[Path]:
    """Write run.json, report.html and timeline.png into ``directory``; the paths written.
    Without matplotlib the PNG is left out with a warning, the rest is still written."""
    base = Path(directory)
    try:
        base.mkdir(parents=True, exist_ok=True)
        run_json = base / "run.json"
        run_json.write_text(json.dumps(result.to_wire(), indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{base}: cannot write the report: {exc}") from None
    written = [run_json, write_html(result, base / "report.html")]
    try:
        written.append(write_timeline_png(result, base / "timeline.png"))
    except InputError as exc:
        sys.stderr.write(f"polyroute: warning: {exc}\n")
    return written
