"""The local learned router: hashed words and a few hand features into two logistic heads.

It runs in pure Python (no numpy, no network, no model download) and costs nothing per call.
One logistic head estimates P(weak model right), the other P(strong model right), from the same
features; their difference is the expected accuracy gain of a strong call. Ranking by that
gain, rather than by P(weak wrong) alone, is what held up on subjects the model never saw:
prompts that both models fail are not worth a strong call. The shipped score mixes the gain's
quantile with the question length's quantile among the training prompts (``LengthBlend``),
which did better again on held-out subjects (benchmarks/ROUTING.md). ``p_weak_fails`` gives
the plain probability that the weak model fails.

The learned parameters ship as ``local_router.json`` beside this module, written by
``polyroute.routers.train``; ``LocalRouter.from_file`` loads a model trained on your own data.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import os
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from polyroute.errors import ConfigError
from polyroute.routers import calibrate

SCHEMA_VERSION = 1
FEATURE_VERSION = 1
MODEL_KIND = "polyroute-local-router"
SHIPPED_MODEL = "local_router.json"
MODEL_ENV = "POLYROUTE_LOCAL_ROUTER"
"""Path of a model file (from ``polyroute train-router`` or ``calibrate --out``) to use instead
of the shipped one."""
Complexity = Literal["low", "medium", "high"]
_SCORE_DOC = "(1 + P(strong right) - P(weak right)) / 2"
_BLEND_DOC = (
    "(1 - w) * quantile of (P(strong right) - P(weak right)) + w * quantile of log1p(chars),"
    " quantiles among the training prompts"
)

_ANSWER_LINE = re.compile(r"Answer:[ \t]*\(?[A-J]\)?[^\n]*\n")
_TRAILING_ANSWER = re.compile(r"\n?\s*Answer:\s*$")
_OPTION = re.compile(r"(?m)^[ \t]*\(?([A-J])[.):][ \t]+")
_TOKEN = re.compile(r"[a-z]+|\d+|[^\sa-z\d]")
_NEGATION = re.compile(r"\b(NOT|EXCEPT|LEAST|FALSE|INCORRECT)\b")
_ROMAN = re.compile(r"\b(?:I|II|III|IV)\b")
_MATH = frozenset("=+^$\\<>*\u221a\u03c0\u00d7\u00f7\u2211\u222b\u2264\u2265\u00b1")
_MAX_TOKENS = 400
"""Only the first 400 tokens of the question and 200 of the options are hashed: enough for
nearly every MMLU question, and it keeps the cost per call flat on long inputs."""

HAND_FEATURES: tuple[str, ...] = (
    "stem_chars",
    "option_chars",
    "option_max_chars",
    "option_count",
    "no_options",
    "stem_digit_share",
    "option_digit_share",
    "numeric_options",
    "math_symbols",
    "capitalised_words",
    "negation",
    "question_mark",
    "blank",
    "sentences",
    "roman_options",
    "statement_pair",
    "mean_word_chars",
    "few_shot",
)


def last_question(prompt: str) -> tuple[str, list[str], bool]:
    """The question to route on, split into (stem, options, was few-shot).

    A few-shot prompt ends with the question being asked; worked examples before it (each
    closed by an ``Answer: X`` line) say nothing about this question's difficulty. A plain
    task description comes back whole, with no options.
    """
    chunks = _ANSWER_LINE.split(prompt)
    few_shot = len(chunks) > 1
    text = _TRAILING_ANSWER.sub("", chunks[-1]).strip()
    marks = list(_OPTION.finditer(text))
    if len(marks) >= 2 and marks[0].group(1) == "A":
        options = [
            text[m.end() : marks[i + 1].start() if i + 1 < len(marks) else len(text)].strip()
            for i, m in enumerate(marks)
        ]
        return text[: marks[0].start()].strip(), options, few_shot
    return text, [], few_shot


def _tokens(text: str) -> list[str]:
    # Numbers become their digit count, so "1984" and "2024" share a feature.
    return [f"#{min(len(t), 4)}" if t[0].isdigit() else t for t in _TOKEN.findall(text.lower())]


def hand_features(stem: str, options: Sequence[str], few_shot: bool) -> list[float]:
    """The ``HAND_FEATURES`` of a question, each scaled to about [0, 1]."""
    stem_chars = len(stem)
    option_chars = [len(o) for o in options] or [0]
    total_option_chars = sum(option_chars)
    words = stem.split()
    capitalised = sum(1 for word in words[1:] if word[:1].isupper())
    numeric = sum(
        1 for o in options if len(o) <= 16 and any(c.isdigit() for c in o) and " " not in o[:8]
    )
    return [
        math.log1p(stem_chars) / 8.0,
        math.log1p(total_option_chars) / 8.0,
        math.log1p(max(option_chars)) / 6.0,
        len(options) / 4.0,
        0.0 if options else 1.0,
        min(1.0, 5.0 * sum(c.isdigit() for c in stem) / (stem_chars + 1)),
        sum(c.isdigit() for o in options for c in o) / (total_option_chars + 1),
        numeric / len(options) if options else 0.0,
        math.log1p(sum(1 for c in stem if c in _MATH)) / 3.0,
        min(1.0, 3.0 * capitalised / (len(words) + 1)),
        1.0 if _NEGATION.search(stem) else 0.0,
        1.0 if stem.rstrip().endswith("?") else 0.0,
        1.0 if "___" in stem else 0.0,
        math.log1p(stem.count(". ")) / 3.0,
        1.0 if any(_ROMAN.search(o) for o in options) else 0.0,
        1.0 if "Statement 1" in stem else 0.0,
        min(1.0, sum(len(w) for w in words) / (len(words) + 1) / 8.0),
        1.0 if few_shot else 0.0,
    ]


def features(prompt: str, hash_bits: int) -> list[tuple[int, float]]:
    """Sparse features of a prompt: hashed words, bigrams and option words, then hand features.

    Hashed features are binary and scaled so their vector has unit length; hand feature j sits
    at index ``2**hash_bits + j``. CRC-32 is the hash: stable across processes and fast.
    """
    return question_features(*last_question(prompt), hash_bits)


def question_chars(stem: str, options: Sequence[str]) -> int:
    """Length of the question asked: its stem and options, without worked examples."""
    return len(stem) + sum(len(o) for o in options)


def question_features(
    stem: str, options: Sequence[str], few_shot: bool, hash_bits: int
) -> list[tuple[int, float]]:
    """``features`` of a question already split by ``last_question``."""
    keys: set[str] = set()
    words = _tokens(stem)[:_MAX_TOKENS]
    keys.update(f"w:{w}" for w in words)
    keys.update(f"b:{a} {b}" for a, b in itertools.pairwise(words))
    option_words = [t for o in options for t in _tokens(o)][: _MAX_TOKENS // 2]
    keys.update(f"o:{t}" for t in option_words)
    mask = (1 << hash_bits) - 1
    hashed = {zlib.crc32(k.encode("utf-8")) & mask for k in keys}
    value = 1.0 / math.sqrt(len(hashed)) if hashed else 0.0
    out = [(index, value) for index in sorted(hashed)]
    base = 1 << hash_bits
    out.extend(
        (base + j, v) for j, v in enumerate(hand_features(stem, options, few_shot)) if v != 0.0
    )
    return out


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@dataclass
class Head:
    """One logistic model: bias plus sparse weights."""

    bias: float
    weights: dict[int, float]

    def probability(self, feats: Sequence[tuple[int, float]]) -> float:
        get = self.weights.get
        return _sigmoid(self.bias + sum(get(i, 0.0) * v for i, v in feats))

    def to_json(self) -> dict[str, Any]:
        items = sorted(self.weights.items())
        return {
            "bias": round(self.bias, 6),
            "index": [i for i, _ in items],
            "weight": [round(w, 6) for _, w in items],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Head:
        index, weight = data["index"], data["weight"]
        if len(index) != len(weight):
            raise ValueError("head has unequal index and weight lists")
        return cls(float(data["bias"]), dict(zip(index, weight, strict=True)))


@dataclass
class ComplexityThresholds:
    """Scores at or above ``high`` are high, at or above ``medium`` medium, else low."""

    high: float
    medium: float
    high_share: float
    medium_share: float

    def level(self, score: float) -> Complexity:
        if score >= self.high:
            return "high"
        if score >= self.medium:
            return "medium"
        return "low"

    def to_json(self) -> dict[str, float]:
        return {
            "high": self.high,
            "medium": self.medium,
            "highShare": self.high_share,
            "mediumShare": self.medium_share,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ComplexityThresholds:
        return cls(
            float(data["high"]),
            float(data["medium"]),
            float(data["highShare"]),
            float(data["mediumShare"]),
        )

    @classmethod
    def calibrated(
        cls, scores: Sequence[float], high_share: float = 0.2, medium_share: float = 0.3
    ) -> ComplexityThresholds:
        """Thresholds putting ``high_share`` of these prompts at high, the next
        ``medium_share`` at medium and the rest at low."""
        if high_share + medium_share > 1.0:
            raise ValueError("high and medium shares add up to more than 1")
        return cls(
            calibrate(scores, high_share),
            calibrate(scores, high_share + medium_share),
            high_share,
            medium_share,
        )


def _cdf(value: float, quantiles: Sequence[float]) -> float:
    # Piecewise-linear empirical CDF through evenly spaced quantiles.
    if value <= quantiles[0]:
        return 0.0
    if value >= quantiles[-1]:
        return 1.0
    i = bisect.bisect_right(quantiles, value)
    low, high = quantiles[i - 1], quantiles[i]
    step = (value - low) / (high - low) if high > low else 1.0
    return (i - 1 + step) / (len(quantiles) - 1)


def quantiles(values: Sequence[float], points: int = 101) -> list[float]:
    """``points`` evenly spaced quantiles of ``values``, lowest first."""
    ordered = sorted(values)
    last = len(ordered) - 1
    out = []
    for k in range(points):
        position = k * last / (points - 1)
        i = int(position)
        j = min(i + 1, last)
        out.append(ordered[i] + (ordered[j] - ordered[i]) * (position - i))
    return out


@dataclass
class LengthBlend:
    """Mixes the learned gain with question length, each as its quantile among training prompts.

    Held-out subjects showed why: the heads learn what separates prompts within the subjects
    they saw, while longer questions come from subjects where the strong model gains more.
    """

    length_weight: float
    gain_quantiles: list[float]
    length_quantiles: list[float]
    """Quantiles of ``log1p(question_chars)``."""

    def score(self, gain: float, chars: int) -> float:
        w = self.length_weight
        return (1.0 - w) * _cdf(gain, self.gain_quantiles) + w * _cdf(
            math.log1p(chars), self.length_quantiles
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "lengthWeight": self.length_weight,
            "gainQuantiles": [round(q, 6) for q in self.gain_quantiles],
            "lengthQuantiles": [round(q, 6) for q in self.length_quantiles],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LengthBlend:
        gain, length = list(data["gainQuantiles"]), list(data["lengthQuantiles"])
        if len(gain) < 2 or len(length) < 2 or gain != sorted(gain) or length != sorted(length):
            raise ValueError("blend quantiles must be ascending lists of at least two values")
        return cls(float(data["lengthWeight"]), gain, length)


@dataclass
class LocalModel:
    """The learned parameters: feature settings, two heads, calibrated thresholds."""

    hash_bits: int
    weak: Head
    strong: Head
    complexity: ComplexityThresholds | None = None
    strong_share: tuple[float, float] | None = None
    """A calibrated (share, threshold) pair, when ``polyroute calibrate`` wrote one."""
    training: dict[str, Any] = field(default_factory=dict)
    blend: LengthBlend | None = None

    def raw_score(self, prompt: str) -> tuple[float, float, int]:
        """(P(weak right), P(strong right), question chars) for this prompt."""
        stem, options, few_shot = last_question(prompt)
        feats = question_features(stem, options, few_shot, self.hash_bits)
        return (
            self.weak.probability(feats),
            self.strong.probability(feats),
            question_chars(stem, options),
        )

    def score(self, prompt: str) -> float:
        """The routing score in [0, 1]; higher sends the prompt to the strong model."""
        p_weak, p_strong, chars = self.raw_score(prompt)
        if self.blend is None:
            return (1.0 + p_strong - p_weak) / 2.0
        return self.blend.score(p_strong - p_weak, chars)

    def to_json(self) -> dict[str, Any]:
        thresholds: dict[str, Any] = {}
        if self.complexity is not None:
            thresholds["complexity"] = self.complexity.to_json()
        if self.strong_share is not None:
            share, threshold = self.strong_share
            thresholds["strongShare"] = {"share": share, "threshold": threshold}
        return {
            "schemaVersion": SCHEMA_VERSION,
            "kind": MODEL_KIND,
            "featureVersion": FEATURE_VERSION,
            "hashBits": self.hash_bits,
            "handFeatures": list(HAND_FEATURES),
            "score": _SCORE_DOC if self.blend is None else _BLEND_DOC,
            "blend": None if self.blend is None else self.blend.to_json(),
            "thresholds": thresholds,
            "training": self.training,
            "heads": {"weak": self.weak.to_json(), "strong": self.strong.to_json()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LocalModel:
        if data.get("kind") != MODEL_KIND:
            raise ValueError(f"its kind is {data.get('kind')!r}, not {MODEL_KIND!r}")
        if data.get("schemaVersion") != SCHEMA_VERSION:
            raise ValueError(f"unsupported model schemaVersion {data.get('schemaVersion')!r}")
        if data.get("featureVersion") != FEATURE_VERSION:
            raise ValueError(f"model built for featureVersion {data.get('featureVersion')!r}")
        if list(data.get("handFeatures", [])) != list(HAND_FEATURES):
            raise ValueError("model hand features differ from this version's")
        thresholds = data.get("thresholds", {})
        share = thresholds.get("strongShare")
        return cls(
            hash_bits=int(data["hashBits"]),
            weak=Head.from_json(data["heads"]["weak"]),
            strong=Head.from_json(data["heads"]["strong"]),
            complexity=ComplexityThresholds.from_json(thresholds["complexity"])
            if "complexity" in thresholds
            else None,
            strong_share=None
            if share is None
            else (float(share["share"]), float(share["threshold"])),
            training=dict(data.get("training", {})),
            blend=None if data.get("blend") is None else LengthBlend.from_json(data["blend"]),
        )

    def save(self, path: str | Path) -> None:
        """Write the model as compact JSON."""
        text = json.dumps(self.to_json(), separators=(",", ":"), sort_keys=False)
        Path(path).write_text(text + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> LocalModel:
        """Read a model written by ``save``; a one-line ``ConfigError`` if it is not one."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such model file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the model file: {exc}") from None
        try:
            return cls.from_json(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
        except (ValueError, KeyError, TypeError) as exc:
            reason = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ConfigError(f"{path}: not a local router model ({reason})") from None


class LocalRouter:
    """The learned router; ``score`` in [0, 1] ranks prompts by the gain of a strong call."""

    def __init__(self, model: LocalModel, name: str = "local") -> None:
        self.name = name
        self.model = model

    @classmethod
    def default(cls) -> LocalRouter:
        """The router with ``default_model()``."""
        return cls(default_model())

    @classmethod
    def from_file(cls, path: str | Path, name: str = "local") -> LocalRouter:
        """A router with a model trained by ``polyroute train-router``."""
        return cls(LocalModel.load(path), name)

    def probabilities(self, prompt: str) -> tuple[float, float]:
        """(P(weak model right), P(strong model right)) for this prompt."""
        p_weak, p_strong, _ = self.model.raw_score(prompt)
        return p_weak, p_strong

    def p_weak_fails(self, prompt: str) -> float:
        """Estimated probability that the weak model gets this prompt wrong."""
        return 1.0 - self.probabilities(prompt)[0]

    def score(self, prompt: str) -> float:
        return self.model.score(prompt)

    def complexity(self, prompt: str) -> Complexity:
        """The prompt's complexity level under the model's calibrated thresholds."""
        return complexity_from_score(self.score(prompt), self.model)


@lru_cache(maxsize=1)
def shipped_model() -> LocalModel:
    """The model file shipped inside the package."""
    text = resources.files("polyroute.routers").joinpath(SHIPPED_MODEL).read_text("utf-8")
    return LocalModel.from_json(json.loads(text))


@lru_cache(maxsize=1)
def default_model() -> LocalModel:
    """The model named by ``$POLYROUTE_LOCAL_ROUTER``, else the shipped one; read once."""
    path = os.environ.get(MODEL_ENV)
    if not path:
        return shipped_model()
    try:
        return LocalModel.load(path)
    except ConfigError as exc:
        raise ConfigError(f"{MODEL_ENV}: {exc}") from None


def complexity_from_score(score: float, model: LocalModel | None = None) -> Complexity:
    """``"low"``, ``"medium"`` or ``"high"`` for a local-router score.

    Uses the thresholds calibrated into ``model`` (``default_model()`` by default): for the
    shipped one, about 20% of prompts like the training ones are high and 30% medium.
    """
    thresholds = (model or default_model()).complexity
    if thresholds is None:
        raise ValueError("this model carries no calibrated complexity thresholds")
    return thresholds.level(score)
