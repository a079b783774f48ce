from __future__ import annotations

import asyncio

import pytest

from polyroute.classify import ClassifyInput, ModelClassifier, local_type, parse_model_answer
from polyroute.errors import ClassificationError, OverloadedError
from polyroute.execute import RetriesExhaustedError
from polyroute.providers.base import ModelRequest, ModelResponse
from polyroute.registry import load_registry
from polyroute.schema import Usage


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Plan the migration of the billing service", "planning"),
        ("Implement a function that parses ISO dates", "implementation"),
        ("Classify this support ticket by urgency", "classification"),
        ("Summarize the attached report", "summarization"),
        ("Extract the invoice number and total", "extraction"),
        ("Review this pull request", "review"),
        ("What is the capital of France?", "qa"),
        ("Tell me a story", "general"),
    ],
)
def test_local_type_rules(text: str, expected: str) -> None:
    assert local_type(text) == expected


class ScriptedProvider:
    name = "scripted"

    def __init__(self, answers: list[str]) -> None:
        self.answers = answers
        self.requests: list[ModelRequest] = []

    async def request(self, req: ModelRequest) -> ModelResponse:
        self.requests.append(req)
        return ModelResponse(
            text=self.answers.pop(0),
            usage=Usage(input_tokens=2000, output_tokens=20),
            latency_ms=1.0,
            model=req.model.id,
            provider=self.name,
        )


def test_model_classifier_retries_once_on_invalid_json_then_succeeds() -> None:
    haiku = load_registry().get("claude-haiku-4-5")
    provider = ScriptedProvider(["not json", '{"type": "planning", "complexity": "high"}'])
    result = asyncio.run(ModelClassifier(haiku, provider).classify(ClassifyInput("x")))
    assert (result.type, result.complexity) == ("planning", "high")
    assert len(provider.requests) == 2
    assert all(r.max_tokens == 100 and r.json_mode for r in provider.requests)
    assert "rejected" in provider.requests[1].prompt
    # two calls of 2,000 in + 20 out on Haiku 4.5
    assert result.cost_usd == pytest.approx(2 * (2000 * 1 + 20 * 5) / 1e6)
    assert result.classifier == "model:claude-haiku-4-5"


def test_model_classifier_gives_a_clear_error_after_two_bad_answers() -> None:
    haiku = load_registry().get("claude-haiku-4-5")
    provider = ScriptedProvider(['{"type": "poetry", "complexity": "low"}', "{}"])
    with pytest.raises(ClassificationError, match="invalid classification JSON twice"):
        asyncio.run(ModelClassifier(haiku, provider).classify(ClassifyInput("x")))


def test_parse_model_answer_accepts_camel_case_and_surrounding_text() -> None:
    ans = parse_model_answer('Sure: {"type": "qa", "complexity": "low", "needsVision": true}')
    assert ans.needs_vision is True
    with pytest.raises(ValueError, match="complexity"):
        parse_model_answer('{"type": "qa", "complexity": "extreme"}')


def test_model_classifier_makes_its_calls_through_the_injected_call() -> None:
    """The engine passes a call that budgets and retries; what it raises besides a provider
    error (retries that ran out) passes through for the engine to fall back."""
    haiku = load_registry().get("claude-haiku-4-5")
    provider = ScriptedProvider([])
    seen: list[ModelRequest] = []

    async def call(req: ModelRequest) -> ModelResponse:
        seen.append(req)
        return ModelResponse(
            text='{"type": "qa", "complexity": "low"}',
            usage=Usage(input_tokens=50, output_tokens=10),
            latency_ms=1.0,
            model=req.model.id,
            provider="injected",
        )

    result = asyncio.run(ModelClassifier(haiku, provider, call=call).classify(ClassifyInput("x")))
    assert (result.type, result.complexity) == ("qa", "low")
    assert provider.requests == [] and [r.purpose for r in seen] == ["classify"]

    async def exhausted(req: ModelRequest) -> ModelResponse:
        raise RetriesExhaustedError(OverloadedError("529"), 3)

    with pytest.raises(RetriesExhaustedError):
        asyncio.run(ModelClassifier(haiku, provider, call=exhausted).classify(ClassifyInput("x")))


@pytest.mark.parametrize("limit", [1, 50, 1_000, 30_000])
def test_head_within_keeps_the_longest_start_that_fits(limit: int) -> None:
    from polyroute.classify import head_within
    from polyroute.tokens import estimate_tokens

    text = " ".join(f"line{i} of the parser's 2,048-byte header" for i in range(4_000))
    head, read, whole = head_within(text, limit)
    assert text.startswith(head) and read == estimate_tokens(head) <= limit
    assert whole == estimate_tokens(text) > limit
    assert read >= limit * 0.9 or limit < 10  # not cut far more than needed


def test_head_within_leaves_a_text_that_fits_whole() -> None:
    from polyroute.classify import head_within

    assert head_within("Review this pull request", 100)[0] == "Review this pull request"


@pytest.mark.parametrize(
    "text",
    [
        "Look at this bug in the parser",
        "Look at the diff and review the error handling",
        "What do you see wrong in this function?",
        "Describe the chart of monthly sign-ups in the report",
    ],
)
def test_words_alone_never_make_a_task_need_vision(text: str) -> None:
    from polyroute.classify import LocalClassifier

    c = LocalClassifier().classify_sync(ClassifyInput(text))
    assert c.needs_vision is False and c.type != "vision"
    with_image = LocalClassifier().classify_sync(ClassifyInput(text, image_count=1))
    assert with_image.needs_vision is True


def test_an_attached_image_makes_a_wordless_task_a_vision_task() -> None:
    from polyroute.classify import LocalClassifier

    c = LocalClassifier().classify_sync(ClassifyInput("Tell me about it", image_count=1))
    assert (c.type, c.needs_vision) == ("vision", True)


def test_the_model_classifier_cannot_ask_for_vision_without_an_image() -> None:
    haiku = load_registry().get("claude-haiku-4-5")
    answer = '{"type": "review", "complexity": "low", "needs_vision": true}'
    no_image = ClassifyInput("Look at this bug in the parser")
    c = asyncio.run(ModelClassifier(haiku, ScriptedProvider([answer])).classify(no_image))
    assert (c.type, c.needs_vision) == ("review", False)
    one_image = ClassifyInput("Look at this screenshot", image_count=1)
    c = asyncio.run(ModelClassifier(haiku, ScriptedProvider([answer])).classify(one_image))
    assert c.needs_vision is True
