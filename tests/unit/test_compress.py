from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from polyroute.compress import Document, compress, truncate_to_tokens
from polyroute.schema import AgentHandoff, CompletedStep, Step
from polyroute.tokens import estimate_tokens


def done(step_id: str, result: str) -> CompletedStep:
    return CompletedStep(
        agent_id=step_id,
        model="m",
        action="a",
        result=result,
        confidence=0.9,
        duration_ms=1,
        tokens_used=1,
        cost_usd=0.0,
    )


def handoff(results: dict[str, str], facts: dict[str, str] | None = None) -> AgentHandoff:
    return AgentHandoff(
        task_id="t",
        original_task="Review the payments change for security problems.",
        completed_steps=[done(k, v) for k, v in results.items()],
        current_context=facts or {},
    )


def test_only_the_steps_own_dependencies_feed_it() -> None:
    h = handoff({"a": "result of a", "b": "result of b", "c": "result of c"})
    step = Step(id="d", description="combine", depends_on=["a", "c"])
    out = compress(h, step, 10_000)
    assert "result of a" in out.prompt and "result of c" in out.prompt
    assert "result of b" not in out.prompt + out.prefix
    assert not out.compressed


def test_task_and_facts_form_the_cacheable_prefix() -> None:
    h = handoff({}, {"currency": "EUR"})
    out = compress(h, Step(id="s", description="do it"), 10_000)
    assert "Original task" in out.prefix and "currency" in out.prefix
    assert "Your step" in out.prompt


def test_most_relevant_facts_survive_a_cut() -> None:
    facts = {f"noise-{i}": "weather football recipes gardening " * 20 for i in range(30)}
    facts["security-finding"] = "SQL injection in the payments refund query"
    h = handoff({}, facts)
    out = compress(h, Step(id="s", description="Summarise the security finding in payments"), 200)
    assert out.tokens <= 200
    assert "SQL injection" in out.prefix
    assert out.dropped


def test_long_document_keeps_relevant_chunks() -> None:
    filler = "\n\n".join(f"Paragraph {i} about weather and gardens." * 8 for i in range(300))
    needle = "\n\nThe board decided to approve the Frankfurt data-centre phase.\n\n"
    doc = Document("report.txt", filler[: len(filler) // 2] + needle + filler[len(filler) // 2 :])
    step = Step(id="s", description="What did the board decide about the data-centre?")
    out = compress(handoff({}), step, 3000, [doc])
    assert out.tokens <= 3000
    assert "Frankfurt" in out.prompt
    assert "omitted" in out.prompt


def test_truncate_marks_the_cut() -> None:
    text = "word " * 1000
    cut = truncate_to_tokens(text, 50)
    assert estimate_tokens(cut) <= 50 and cut.endswith("[... cut to fit]")


@settings(max_examples=200, deadline=None)
@given(
    budget=st.integers(min_value=1, max_value=5000),
    results=st.lists(st.text(min_size=0, max_size=3000), max_size=6),
    facts=st.dictionaries(st.text(min_size=1, max_size=20), st.text(max_size=2000), max_size=8),
    task=st.text(min_size=1, max_size=5000),
    doc=st.text(max_size=20_000),
)
def test_the_result_always_fits_the_budget(
    budget: int, results: list[str], facts: dict[str, str], task: str, doc: str
) -> None:
    h = AgentHandoff(
        task_id="t",
        original_task=task,
        completed_steps=[done(f"s{i}", r) for i, r in enumerate(results)],
        current_context=facts,
    )
    step = Step(
        id="x", description=task[:300] or "x", depends_on=[f"s{i}" for i in range(len(results))]
    )
    out = compress(h, step, budget, [Document("doc", doc)] if doc else [])
    effective = max(budget, 8)
    assert out.tokens <= effective
    assert estimate_tokens(out.prefix) + estimate_tokens(out.prompt) <= effective
