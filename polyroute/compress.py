"""Context compression: build a step's input from the handoff and cut it to a token budget.

The input is the step itself, the original task, the results of the step's own dependencies,
the documents it reads and the facts gathered so far, never the whole history. When it does
not fit, the least relevant parts go first, and the result is guaranteed to fit: the final
text is measured with the same estimator the budget is expressed in.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from polyroute.schema import AgentHandoff, Step
from polyroute.tokens import estimate_tokens

_WORD = re.compile(r"[a-z0-9]{3,}")
_CHUNK_TOKENS = 400
MIN_BUDGET = 8


@dataclass(frozen=True)
class Document:
    """A text the step reads (an attachment), by name."""

    name: str
    text: str


@dataclass(frozen=True)
class CompressedInput:
    """A step's input, split into the shared (cacheable) prefix and the step's own part."""

    prefix: str
    prompt: str
    tokens: int
    budget: int
    full_tokens: int
    dropped: list[str] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)

    @property
    def compressed(self) -> bool:
        return bool(self.dropped or self.truncated)


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def _relevance(text: str, query: set[str]) -> float:
    words = _words(text)
    if not words or not query:
        return 0.0
    return len(words & query) / math.sqrt(len(words))


def truncate_to_tokens(text: str, max_tokens: int, marker: str = " [... cut to fit]") -> str:
    """The longest prefix of ``text`` (plus a marker) whose estimate is within ``max_tokens``."""
    if estimate_tokens(text) <= max_tokens:
        return text
    room = max_tokens - estimate_tokens(marker)
    if room <= 0:
        return ""
    # No token covers more than a dozen characters, so the answer lies below 12 * room.
    lo, hi = 0, min(len(text), 12 * room + 16)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate_tokens(text[:mid]) <= room:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo] + marker if lo else ""


def _as_text(result: Any) -> str:
    if isinstance(result, str):
        return result
    return json.dumps(result, ensure_ascii=False, indent=1, default=str)


def _chunks(text: str) -> list[str]:
    """Paragraph-aligned chunks of about ``_CHUNK_TOKENS`` tokens each."""
    paragraphs = re.split(r"(?<=\n)\s*\n", text)
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for para in paragraphs:
        n = estimate_tokens(para)
        if current and size + n > _CHUNK_TOKENS:
            chunks.append("".join(current))
            current, size = [], 0
        if n > _CHUNK_TOKENS * 2:
            # One huge paragraph: split it by characters near the chunk size.
            step = max(1, len(para) * _CHUNK_TOKENS // n)
            chunks.extend(para[i : i + step] for i in range(0, len(para), step))
            continue
        current.append(para)
        size += n
    if current:
        chunks.append("".join(current))
    return chunks


def _select_chunks(doc: Document, budget: int, query: set[str]) -> tuple[str, bool]:
    """The most relevant chunks of a document that fit, in document order."""
    chunks = _chunks(doc.text)
    sizes = [estimate_tokens(c) for c in chunks]
    if sum(sizes) <= budget:
        return doc.text, False
    # The opening chunk sets context; then the most relevant ones.
    order = [0, *sorted(range(1, len(chunks)), key=lambda i: -_relevance(chunks[i], query))]
    chosen: set[int] = set()
    used = 0
    gap = estimate_tokens("\n[... omitted ...]\n")
    for i in order:
        if used + sizes[i] + gap <= budget:
            chosen.add(i)
            used += sizes[i] + gap
    parts: list[str] = []
    skipped = 0
    for i, chunk in enumerate(chunks):
        if i in chosen:
            if skipped:
                parts.append(f"\n[... {skipped} part(s) omitted ...]\n")
                skipped = 0
            parts.append(chunk)
        else:
            skipped += 1
    if skipped:
        parts.append(f"\n[... {skipped} part(s) omitted ...]\n")
    return "".join(parts), True


@dataclass
class _Section:
    key: str
    title: str
    text: str
    cacheable: bool
    kind: str


def _render(sections: Sequence[_Section], cacheable: bool) -> str:
    return "\n\n".join(
        f"## {s.title}\n{s.text}" for s in sections if s.cacheable == cacheable and s.text
    )


def build_sections(
    handoff: AgentHandoff,
    step: Step,
    documents: Sequence[Document] = (),
    shared_facts: frozenset[str] | None = None,
) -> list[_Section]:
    """Every part of a step's input, most important first.

    Facts named in ``shared_facts`` (all, when None) are the same for every step of a run and
    go in the cacheable prefix; the others are the step's own."""
    by_agent = {c.agent_id: c for c in handoff.completed_steps}
    query = _words(step.description + " " + handoff.original_task)
    sections = [
        _Section("step", f"Your step: {step.id} ({step.type})", step.description, False, "step"),
        _Section("task", "Original task", handoff.original_task, True, "task"),
    ]
    for dep in step.depends_on:
        done = by_agent.get(dep)
        if done is not None:
            sections.append(
                _Section(
                    f"dep:{dep}",
                    f"Result of {dep} ({done.model})",
                    _as_text(done.result),
                    False,
                    "dependency",
                )
            )
    sections.extend(
        _Section(f"doc:{d.name}", f"Document: {d.name}", d.text, False, "document")
        for d in documents
    )
    facts = sorted(
        handoff.current_context.items(),
        key=lambda kv: -_relevance(f"{kv[0]} {_as_text(kv[1])}", query),
    )
    sections.extend(
        _Section(
            f"fact:{k}",
            f"Fact: {k}",
            _as_text(v),
            shared_facts is None or k in shared_facts,
            "fact",
        )
        for k, v in facts
    )
    return sections


def compress(
    handoff: AgentHandoff,
    step: Step,
    budget_tokens: int,
    documents: Sequence[Document] = (),
    shared_facts: frozenset[str] | None = None,
) -> CompressedInput:
    """The step's input, cut to ``budget_tokens`` (by this project's estimator)."""
    budget = max(MIN_BUDGET, budget_tokens)
    sections = build_sections(handoff, step, documents, shared_facts)
    query = _words(step.description + " " + handoff.original_task)
    full = measure_sections(sections)
    if full <= budget:
        return CompressedInput(
            prefix=_render(sections, True),
            prompt=_render(sections, False),
            tokens=full,
            budget=budget,
            full_tokens=full,
        )

    dropped: list[str] = []
    truncated: list[str] = []
    target = budget
    kept: list[_Section] = []
    for _ in range(6):
        kept, dropped, truncated = _fit(sections, target, query)
        used = _measure(kept)
        if used <= budget:
            break
        target -= used - budget + 4
    else:
        # Last resort: the step alone, cut to the budget.
        step_only = _Section(
            "step",
            sections[0].title,
            truncate_to_tokens(sections[0].text, budget // 2),
            False,
            "step",
        )
        kept = [step_only]
        dropped = [s.key for s in sections[1:]]
        truncated = ["step"]
    return CompressedInput(
        prefix=_render(kept, True),
        prompt=_render(kept, False),
        tokens=_measure(kept),
        budget=budget,
        full_tokens=full,
        dropped=dropped,
        truncated=truncated,
    )


def measure_sections(sections: Sequence[_Section]) -> int:
    """An upper bound of the rendered input's tokens, from the (cached) estimates of its
    parts: splitting a text never lowers the estimate, so the sum bounds the whole."""
    return sum(estimate_tokens(f"## {s.title}\n") + 2 + estimate_tokens(s.text) for s in sections)


def _measure(sections: Sequence[_Section]) -> int:
    return estimate_tokens(_render(sections, True)) + estimate_tokens(_render(sections, False))


def _fit(
    sections: Sequence[_Section], budget: int, query: set[str]
) -> tuple[list[_Section], list[str], list[str]]:
    """Greedy fill in priority order: whole sections while they fit, then cut the rest."""
    left = budget
    kept: list[_Section] = []
    dropped: list[str] = []
    truncated: list[str] = []
    for s in sections:
        header = estimate_tokens(f"## {s.title}\n") + 2
        need = header + estimate_tokens(s.text)
        if need <= left:
            kept.append(s)
            left -= need
            continue
        room = left - header
        # The step and the task are always kept, cut if need be; others only if it is worth it.
        if room < 16 and s.kind not in ("step", "task"):
            dropped.append(s.key)
            continue
        if room <= 0:
            dropped.append(s.key)
            continue
        if s.kind == "document":
            text, _ = _select_chunks(Document(s.title, s.text), room, query)
            text = truncate_to_tokens(text, room)
        else:
            share = room if s.kind != "task" else max(room // 2, min(room, 64))
            text = truncate_to_tokens(s.text, share)
        if not text:
            dropped.append(s.key)
            continue
        kept.append(_Section(s.key, s.title, text, s.cacheable, s.kind))
        truncated.append(s.key)
        left -= header + estimate_tokens(text)
    return kept, dropped, truncated
