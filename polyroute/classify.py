"""Classification of a task or step: type, complexity, needs-vision, token count.

Two classifiers behind one interface: ``local`` (default; no network, microseconds, free)
and ``model`` (the seed's cheap-model call: at most 100 output tokens of validated JSON).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError

from polyroute.cost import call_cost
from polyroute.errors import ClassificationError, ConfigError, ProviderError
from polyroute.providers.base import ModelRequest, ModelResponse, Provider
from polyroute.registry import ModelSpec
from polyroute.schema import TASK_TYPES, Classification, Complexity, TaskType
from polyroute.tokens import estimate_tokens

if TYPE_CHECKING:
    from polyroute.routers import Router

CLASSIFY_MAX_TOKENS = 100

ModelCall = Callable[[ModelRequest], Awaitable[ModelResponse]]
"""How a classification or planning request reaches its model. The engine passes one that
reserves the call's worst case, retries it and settles what it used; by default it is the
provider's own ``request``."""

# Keyword rules for the task type, in priority order; the first that matches wins.
_TYPE_PATTERNS: tuple[tuple[TaskType, str], ...] = (
    (
        "planning",
        r"\b(plan|planning|roadmap|strategy|break (it|this|the \w+) down|"
        r"design an? |architect(ure)?|decompose|milestones?)\b",
    ),
    ("review", r"\b(review|audit|critique|code review|pull request|PR)\b"),
    (
        "implementation",
        r"\b(implement|write (a|the|some)? ?(code|function|class|script|"
        r"test|program)|refactor|fix (the|a|this) bug|build (a|the)|"
        r"add (a|an) (endpoint|feature|method))\b",
    ),
    (
        "classification",
        r"\b(classify|categori[sz]e|label|sentiment|triage|is (this|it) "
        r"(spam|toxic))\b",
    ),
    ("extraction", r"\b(extract|pull out|parse|fields? from|structured data)\b"),
    ("summarization", r"\b(summari[sz]e|summary|tl;?dr|condense|digest)\b"),
    ("analysis", r"\b(analy[sz]e|analysis|compare|evaluate|assess|investigate|why)\b"),
    ("vision", r"\b(image|photo|picture|screenshot|diagram|chart)\b"),
)
_TYPE_RULES: tuple[tuple[TaskType, re.Pattern[str]], ...] = tuple(
    (t, re.compile(p, re.IGNORECASE)) for t, p in _TYPE_PATTERNS
)


@dataclass(frozen=True)
class ClassifyInput:
    """What a classifier looks at."""

    text: str
    type_hint: TaskType | None = None
    complexity_hint: Complexity | None = None
    image_count: int = 0
    extra_tokens: int = 0


class Classifier(Protocol):
    """Classifies a task or step."""

    name: str

    async def classify(self, item: ClassifyInput) -> Classification:
        """Return the classification of ``item``."""
        ...


def local_type(text: str, *, images: bool = True) -> TaskType:
    """The task type by keyword rules; ``images=False`` (nothing to look at) passes over
    the vision words, which then only name what the text is about."""
    for task_type, pattern in _TYPE_RULES:
        if task_type == "vision" and not images:
            continue
        if pattern.search(text):
            return task_type
    if text.strip().endswith("?") and len(text) < 400:
        return "qa"
    return "general"


@lru_cache(maxsize=1)
def _local_router() -> Router:
    from polyroute.routers import get_router

    return get_router("local")


def score_complexity(text: str) -> tuple[float, Complexity]:
    """The local router's routing score (higher: more to gain from a strong model; it ranks
    tasks, it is not a probability) and the complexity level its
    calibrated thresholds give."""
    from polyroute.routers.local import complexity_from_score

    score = _local_router().score(text)
    return score, complexity_from_score(score)


class LocalClassifier:
    """Free, offline classification; complexity comes from the local learned router's score."""

    name = "local"

    def classify_sync(self, item: ClassifyInput) -> Classification:
        """The classification, computed in-process."""
        text = item.text
        # Vision needs an image: words alone ("look at this bug") never ask for it.
        needs_vision = item.image_count > 0
        task_type = item.type_hint or local_type(text, images=needs_vision)
        if needs_vision and item.type_hint is None and task_type == "general":
            task_type = "vision"
        score, level = score_complexity(text)
        complexity = item.complexity_hint or level
        return Classification(
            type=task_type,
            complexity=complexity,
            needs_vision=needs_vision,
            token_count=estimate_tokens(text) + item.extra_tokens,
            score=round(score, 4),
            classifier=self.name,
        )

    async def classify(self, item: ClassifyInput) -> Classification:
        return self.classify_sync(item)


class _ModelAnswer(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: TaskType
    complexity: Complexity
    needs_vision: bool = False


CLASSIFY_SYSTEM = (
    "You classify tasks for a model router. Answer with one JSON object and nothing else: "
    '{"type": one of ' + ", ".join(TASK_TYPES) + ', "complexity": "low" | "medium" | "high", '
    '"needs_vision": true | false}.'
)


def parse_model_answer(text: str) -> _ModelAnswer:
    """Validate a classification model's answer; raise ValueError with the reason."""
    match = re.search(r"\{.*\}", text, re.DOTALL)
    if match is None:
        raise ValueError("no JSON object in the answer")
    try:
        data = json.loads(match.group(0))
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc.msg}") from None
    if isinstance(data, dict) and "needsVision" in data:
        data["needs_vision"] = data.pop("needsVision")
    try:
        return _ModelAnswer.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ValueError(f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from None


# The classification request's own text around the task (system prompt, labels, the retry
# note), with room to spare.
CLASSIFY_OVERHEAD_TOKENS = estimate_tokens(CLASSIFY_SYSTEM) + 100


def head_within(text: str, max_tokens: int) -> tuple[str, int, int]:
    """The longest start of ``text`` (cut at a line or word) whose estimate is within
    ``max_tokens``; with its estimate and the whole text's."""
    whole = estimate_tokens(text)
    if whole <= max_tokens:
        return text, whole, whole
    end = len(text) * max(0, max_tokens) // whole
    while end > 0:
        cut = max(text.rfind("\n", 0, end), text.rfind(" ", 0, end))
        head = text[: cut if cut > end // 2 else end]
        tokens = estimate_tokens(head)
        if tokens <= max_tokens:
            return head, tokens, whole
        # The estimate is not linear in length: shrink by how far over it is, and a little.
        end = min(len(head) - 1, len(head) * max_tokens // tokens * 99 // 100)
    return "", 0, whole


class ModelClassifier:
    """The seed's classifier: the cheap classification model answers in JSON.

    One retry on an invalid answer, then ``ClassificationError``; a provider error is a
    ``ClassificationError`` too. What ``call`` raises otherwise (the engine's retries running
    out, a budget or deadline) passes through, for the caller to fall back. Its cost is
    recorded."""

    name = "model"

    def __init__(
        self,
        model: ModelSpec,
        provider: Provider,
        seed: int = 0,
        call: ModelCall | None = None,
        max_input_tokens: int | None = None,
    ) -> None:
        self.model = model
        self.provider = provider
        self.seed = seed
        self.call = call or provider.request
        self.max_input_tokens = max_input_tokens

    async def classify(self, item: ClassifyInput) -> Classification:
        """Classify ``item``; a text longer than ``max_input_tokens`` allows (the model's
        window share, less the request's own text) is read from its start only, and the
        classification's ``classifier`` says so (the token count is the whole text's)."""
        total_cost = 0.0
        reason = ""
        text, note = item.text, ""
        if self.max_input_tokens is not None:
            room = self.max_input_tokens - CLASSIFY_OVERHEAD_TOKENS
            text, read, whole = head_within(item.text, room)
            if read < whole:
                note = f" (read the first {read:,} of {whole:,} tokens of the task)"
        for attempt in range(2):
            prompt = f"Task:\n{text}\n\nImages attached: {item.image_count}"
            if attempt:
                prompt += f"\n\nYour previous answer was rejected ({reason}). JSON only."
            req = ModelRequest(
                model=self.model,
                system=CLASSIFY_SYSTEM,
                prompt=prompt,
                json_mode=True,
                max_tokens=CLASSIFY_MAX_TOKENS,
                purpose="classify",
                seed=self.seed + attempt,
            )
            try:
                resp = await self.call(req)
            except ProviderError as exc:
                raise ClassificationError(f"classification call failed: {exc}") from exc
            total_cost += call_cost(self.model, resp.usage)
            try:
                answer = parse_model_answer(resp.text)
            except ValueError as exc:
                reason = str(exc)
                continue
            return Classification(
                type=item.type_hint or answer.type,
                complexity=item.complexity_hint or answer.complexity,
                # The model's word alone does not make a task need vision: an image does.
                needs_vision=item.image_count > 0,
                token_count=estimate_tokens(item.text) + item.extra_tokens,
                classifier=f"model:{self.model.id}{note}",
                cost_usd=total_cost,
            )
        raise ClassificationError(
            f"{self.model.id} returned invalid classification JSON twice ({reason})"
        )


CLASSIFIERS = ("local", "model")


def check_classifier_name(name: str) -> str:
    """Validate a classifier name from configuration."""
    if name not in CLASSIFIERS:
        raise ConfigError(f"unknown classifier {name!r} (choose from {', '.join(CLASSIFIERS)})")
    return name
