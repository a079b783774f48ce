"""Measure routers on outcome data: which prompts each model answered correctly.

The metrics follow RouteLLM (Ong et al., 2024): sweep the threshold from 0% to 100% calls to
the strong model, read accuracy at each share, and summarise the curve as APGR (average
performance gap recovered) and CPT(x) (call-performance threshold: the strong-call share
needed to recover x of the weak-to-strong gap). Unlike RouteLLM's ten quantile bins, the sweep
here visits every distinct threshold, so the curve is exact; ties in score move together.

Nothing here imports numpy; matplotlib is imported only when a plot is asked for.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from polyroute.errors import RoutingDataError
from polyroute.tokens import estimate_tokens

if TYPE_CHECKING:
    from polyroute.routers import Router

CONTAMINATED_FILE = "contaminated_prompts.jsonl"
PROMPT_COLUMN = "prompt"
TOKEN_ESTIMATE = "polyroute.tokens.estimate_tokens"
"""Input tokens come from the project's tokenizer-free estimate (BPE-like word pieces, never
more than 10% under o200k/cl100k on English). Both models see the same prompt, so its error
mostly cancels in the savings ratio."""
DEFAULT_OUTPUT_TOKENS = 1
"""The MMLU outcome data was graded on one output token (the answer letter), so one output token
per answer is what those calls cost. Pass a larger figure for tasks that answer in prose."""
QUALITY_TARGET = 0.95

_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})

PriceLookup = Callable[[str], tuple[float, float]]
"""Maps a model id to its (input, output) price in USD per million tokens."""


@dataclass(frozen=True)
class RoutingExample:
    """One prompt and whether each of the two models answered it correctly."""

    prompt: str
    weak: bool
    strong: bool
    group: str
    """The CSV file's stem (for MMLU: the subject); cross-validation holds out whole groups."""


@dataclass(frozen=True)
class RoutingDataset:
    """Outcome data for one weak/strong model pair, contaminated prompts already dropped."""

    examples: tuple[RoutingExample, ...]
    weak_column: str
    strong_column: str
    dropped_contaminated: int = 0

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def prompts(self) -> list[str]:
        return [e.prompt for e in self.examples]

    @property
    def weak(self) -> list[bool]:
        return [e.weak for e in self.examples]

    @property
    def strong(self) -> list[bool]:
        return [e.strong for e in self.examples]

    @property
    def groups(self) -> list[str]:
        return [e.group for e in self.examples]


def _parse_bool(value: str, path: Path, column: str, line: int) -> bool:
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise RoutingDataError(
        f"{path}: line {line}: column {column!r} holds {value!r}, expected True or False"
    )


def _contaminated(folder: Path) -> set[str]:
    path = folder / CONTAMINATED_FILE
    if not path.is_file():
        return set()
    found: set[str] = set()
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RoutingDataError(f"{path}: line {number}: not JSON ({exc.msg})") from None
            prompt = record.get("eval_prompt") if isinstance(record, dict) else None
            if not isinstance(prompt, str):
                raise RoutingDataError(f"{path}: line {number}: no string field 'eval_prompt'")
            found.add(prompt)
    return found


def _read_csv(
    path: Path, weak: str, strong: str, contaminated: set[str]
) -> tuple[list[RoutingExample], int]:
    examples: list[RoutingExample] = []
    dropped = 0
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        for column in (PROMPT_COLUMN, weak, strong):
            if column not in header:
                raise RoutingDataError(f"{path}: no column {column!r}")
        for row in reader:
            prompt = row[PROMPT_COLUMN]
            if prompt in contaminated:
                dropped += 1
                continue
            line = reader.line_num
            examples.append(
                RoutingExample(
                    prompt=prompt,
                    weak=_parse_bool(row[weak] or "", path, weak, line),
                    strong=_parse_bool(row[strong] or "", path, strong, line),
                    group=path.stem,
                )
            )
    return examples, dropped


def load_routing_data(
    folders: Iterable[str | Path], weak_column: str, strong_column: str
) -> RoutingDataset:
    """Read every ``*.csv`` in each folder: a ``prompt`` column and one boolean column per model.

    Prompts listed (as ``eval_prompt``) in a folder's ``contaminated_prompts.jsonl`` are dropped.
    """
    examples: list[RoutingExample] = []
    dropped = 0
    folder_list = [Path(f) for f in folders]
    if not folder_list:
        raise RoutingDataError("no data folder given")
    for folder in folder_list:
        if not folder.is_dir():
            raise RoutingDataError(f"{folder}: no such folder")
        files = sorted(folder.glob("*.csv"))
        if not files:
            raise RoutingDataError(f"{folder}: no CSV files")
        contaminated = _contaminated(folder)
        for path in files:
            found, skipped = _read_csv(path, weak_column, strong_column, contaminated)
            examples.extend(found)
            dropped += skipped
    if not examples:
        raise RoutingDataError(f"{', '.join(map(str, folder_list))}: no rows")
    return RoutingDataset(tuple(examples), weak_column, strong_column, dropped)


# --------------------------------------------------------------------------- the sweep


@dataclass(frozen=True)
class CurvePoint:
    """Accuracy when every prompt scoring at least ``threshold`` goes to the strong model."""

    share: float
    accuracy: float
    threshold: float
    strong_calls: int


def _order(scores: Sequence[float]) -> list[int]:
    # Highest score first; the index breaks ties so the order is reproducible.
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def sweep(
    scores: Sequence[float], weak: Sequence[bool], strong: Sequence[bool]
) -> list[CurvePoint]:
    """Accuracy at every distinct threshold, from 0% to 100% strong calls."""
    n = len(scores)
    if n == 0 or len(weak) != n or len(strong) != n:
        raise ValueError("scores, weak and strong must be non-empty and of equal length")
    order = _order(scores)
    correct = sum(weak)
    points = [CurvePoint(0.0, correct / n, math.inf, 0)]
    for k, i in enumerate(order, start=1):
        correct += int(strong[i]) - int(weak[i])
        if k < n and scores[order[k]] == scores[i]:
            continue
        points.append(CurvePoint(k / n, correct / n, scores[i], k))
    return points


def accuracy(outcomes: Sequence[bool]) -> float:
    """Share of true values."""
    return sum(outcomes) / len(outcomes)


def oracle_accuracy(weak: Sequence[bool], strong: Sequence[bool]) -> float:
    """Accuracy of a router that knows the answers: right whenever either model is."""
    return sum(w or s for w, s in zip(weak, strong, strict=True)) / len(weak)


def _trapezoid(xs: Sequence[float], ys: Sequence[float]) -> float:
    return sum((xs[i] - xs[i - 1]) * (ys[i] + ys[i - 1]) / 2 for i in range(1, len(xs)))


def apgr(curve: Sequence[CurvePoint], weak_accuracy: float, strong_accuracy: float) -> float:
    """Area under PGR(x) = (acc(x) - weak) / (strong - weak) over strong-call share x in [0, 1].

    Not clipped: a router that beats the strong model (an oracle does) scores above 1. Random
    routing scores 0.5 in expectation. NaN when the two models are equally accurate.
    """
    gap = strong_accuracy - weak_accuracy
    if gap == 0:
        return math.nan
    return _trapezoid([p.share for p in curve], [(p.accuracy - weak_accuracy) / gap for p in curve])


def cpt(
    curve: Sequence[CurvePoint], weak_accuracy: float, strong_accuracy: float, fraction: float
) -> float | None:
    """Smallest strong-call share at which the curve recovers ``fraction`` of the gap.

    Linear between sweep points. None when the strong model is no better than the weak one.
    """
    gap = strong_accuracy - weak_accuracy
    if gap <= 0:
        return None
    target = weak_accuracy + fraction * gap
    if curve[0].accuracy >= target:
        return curve[0].share
    for before, after in itertools.pairwise(curve):
        if after.accuracy >= target:
            rise = after.accuracy - before.accuracy
            step = (target - before.accuracy) / rise if rise > 0 else 1.0
            return before.share + step * (after.share - before.share)
    return None


# --------------------------------------------------------------------------- cost


@dataclass(frozen=True)
class PricePair:
    """USD per million tokens for the weak and the strong model."""

    weak_model: str
    strong_model: str
    weak_price_in: float
    weak_price_out: float
    strong_price_in: float
    strong_price_out: float


def price_pair(weak_model: str, strong_model: str, price_lookup: PriceLookup) -> PricePair:
    """Look both models' prices up (``price_lookup`` raises for an unknown model)."""
    weak_in, weak_out = price_lookup(weak_model)
    strong_in, strong_out = price_lookup(strong_model)
    return PricePair(weak_model, strong_model, weak_in, weak_out, strong_in, strong_out)


def call_costs(
    prompts: Sequence[str],
    weak_price_in: float,
    weak_price_out: float,
    strong_price_in: float,
    strong_price_out: float,
    output_tokens: int = DEFAULT_OUTPUT_TOKENS,
) -> tuple[list[float], list[float]]:
    """USD per prompt on the weak and on the strong model (input tokens: ``TOKEN_ESTIMATE``)."""
    weak: list[float] = []
    strong: list[float] = []
    for prompt in prompts:
        tokens_in = estimate_tokens(prompt)
        weak.append((tokens_in * weak_price_in + output_tokens * weak_price_out) / 1e6)
        strong.append((tokens_in * strong_price_in + output_tokens * strong_price_out) / 1e6)
    return weak, strong


@dataclass(frozen=True)
class Savings:
    """Cost of routing at the first sweep point that reaches the quality target."""

    quality_target: float
    share: float
    accuracy: float
    cost_usd: float
    always_strong_usd: float
    always_weak_usd: float

    @property
    def saved(self) -> float:
        """Fraction of the always-strong cost saved."""
        return 1.0 - self.cost_usd / self.always_strong_usd if self.always_strong_usd else 0.0


def savings_at_quality(
    scores: Sequence[float],
    weak: Sequence[bool],
    strong: Sequence[bool],
    weak_costs: Sequence[float],
    strong_costs: Sequence[float],
    quality: float = QUALITY_TARGET,
) -> Savings:
    """Cost saved against always-strong while keeping ``quality`` x the strong model's accuracy.

    The routed set is the top-scoring prompts at the first sweep point that reaches the
    target (no interpolation); 100% strong calls always reaches it.
    """
    n = len(scores)
    target = quality * accuracy(strong)
    order = _order(scores)
    correct = sum(weak)
    cost = sum(weak_costs)
    always_weak = cost
    k = 0
    while k < n and correct / n < target:
        # Move a whole tie group at once, as the sweep does.
        level = scores[order[k]]
        while k < n and scores[order[k]] == level:
            i = order[k]
            correct += int(strong[i]) - int(weak[i])
            cost += strong_costs[i] - weak_costs[i]
            k += 1
    return Savings(quality, k / n, correct / n, cost, sum(strong_costs), always_weak)


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class RouterResult:
    """One router's figures on one data set."""

    name: str
    apgr: float
    cpt50: float | None
    cpt80: float | None
    savings: Savings | None
    curve: list[CurvePoint] = field(repr=False)

    def summary(self) -> dict[str, object]:
        """The JSON view (camelCase, as everything polyroute prints)."""
        out: dict[str, object] = {
            "apgr": _rounded(self.apgr),
            "cpt50": _rounded(self.cpt50),
            "cpt80": _rounded(self.cpt80),
            "savingsAt95Pct": None if self.savings is None else _rounded(self.savings.saved),
        }
        if self.savings is not None:
            out["shareAt95Pct"] = _rounded(self.savings.share)
            out["accuracyAt95Pct"] = _rounded(self.savings.accuracy)
            out["costUsdAt95Pct"] = round(self.savings.cost_usd, 6)
        return out


@dataclass(frozen=True)
class RoutingEvaluation:
    """Every router's result on one data set, plus the reference accuracies."""

    n: int
    weak_accuracy: float
    strong_accuracy: float
    oracle_accuracy: float
    oracle_share: float
    results: dict[str, RouterResult]
    prices: PricePair | None
    output_tokens: int
    dropped_contaminated: int

    def to_json(self, router: str) -> dict[str, object]:
        """Headline keys for ``router`` plus a breakdown per router."""
        if router not in self.results:
            raise KeyError(router)
        head = self.results[router].summary()
        out: dict[str, object] = {
            "router": router,
            "apgr": head["apgr"],
            "cpt50": head["cpt50"],
            "cpt80": head["cpt80"],
            "savingsAt95Pct": head["savingsAt95Pct"],
            "n": self.n,
            "weakAccuracy": _rounded(self.weak_accuracy),
            "strongAccuracy": _rounded(self.strong_accuracy),
            "oracleAccuracy": _rounded(self.oracle_accuracy),
            "oracleStrongShare": _rounded(self.oracle_share),
            "droppedContaminated": self.dropped_contaminated,
            "outputTokensPerAnswer": self.output_tokens,
            "tokenEstimate": TOKEN_ESTIMATE,
            "routers": {name: r.summary() for name, r in self.results.items()},
        }
        if self.prices is not None:
            p = self.prices
            out["prices"] = {
                "weakModel": p.weak_model,
                "strongModel": p.strong_model,
                "weakUsdPerMtok": [p.weak_price_in, p.weak_price_out],
                "strongUsdPerMtok": [p.strong_price_in, p.strong_price_out],
            }
        return out


def _rounded(value: float | None) -> float | None:
    if value is None or math.isnan(value):
        return None
    return round(value, 4)


def evaluate_scores(
    dataset: RoutingDataset,
    scores: Mapping[str, Sequence[float]],
    prices: PricePair | None = None,
    output_tokens: int = DEFAULT_OUTPUT_TOKENS,
) -> RoutingEvaluation:
    """Figures for each router's scores (one per prompt, in the data set's order)."""
    weak, strong = dataset.weak, dataset.strong
    weak_acc, strong_acc = accuracy(weak), accuracy(strong)
    costs = None
    if prices is not None:
        costs = call_costs(
            dataset.prompts,
            prices.weak_price_in,
            prices.weak_price_out,
            prices.strong_price_in,
            prices.strong_price_out,
            output_tokens,
        )
    results: dict[str, RouterResult] = {}
    for name, values in scores.items():
        if len(values) != len(dataset):
            raise ValueError(f"router {name!r}: {len(values)} scores for {len(dataset)} prompts")
        curve = sweep(values, weak, strong)
        results[name] = RouterResult(
            name=name,
            apgr=apgr(curve, weak_acc, strong_acc),
            cpt50=cpt(curve, weak_acc, strong_acc, 0.5),
            cpt80=cpt(curve, weak_acc, strong_acc, 0.8),
            savings=None
            if costs is None
            else savings_at_quality(values, weak, strong, costs[0], costs[1]),
            curve=curve,
        )
    useful = sum(1 for w, s in zip(weak, strong, strict=True) if s and not w)
    return RoutingEvaluation(
        n=len(dataset),
        weak_accuracy=weak_acc,
        strong_accuracy=strong_acc,
        oracle_accuracy=oracle_accuracy(weak, strong),
        oracle_share=useful / len(dataset),
        results=results,
        prices=prices,
        output_tokens=output_tokens,
        dropped_contaminated=dataset.dropped_contaminated,
    )


def score_prompts(score: Callable[[str], float], prompts: Sequence[str]) -> list[float]:
    """One router's score for every prompt."""
    return [score(p) for p in prompts]


def evaluate_routers(
    dataset: RoutingDataset,
    routers: Sequence[Router],
    price_lookup: PriceLookup | None = None,
    models: tuple[str, str] | None = None,
    output_tokens: int = DEFAULT_OUTPUT_TOKENS,
) -> tuple[RoutingEvaluation, dict[str, list[float]]]:
    """Score every prompt with each router and measure them; also return the scores.

    With ``price_lookup`` and ``models`` = (weak model id, strong model id), the savings at
    95% of the strong model's accuracy are priced; ``price_lookup`` is injected so this module
    does not depend on the model registry.
    """
    scores = {router.name: score_prompts(router.score, dataset.prompts) for router in routers}
    prices = None
    if price_lookup is not None and models is not None:
        prices = price_pair(models[0], models[1], price_lookup)
    return evaluate_scores(dataset, scores, prices, output_tokens), scores


def prompt_id(prompt: str) -> str:
    """A short stable id for a prompt (first 16 hex digits of its SHA-256)."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def write_scores_csv(
    path: str | Path, dataset: RoutingDataset, scores: Mapping[str, Sequence[float]]
) -> None:
    """One row per prompt: group, prompt hash, outcomes and each router's score."""
    names = list(scores)
    with Path(path).open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["subject", "index", "promptSha256", "weak", "strong", *names])
        for i, example in enumerate(dataset.examples):
            writer.writerow(
                [
                    example.group,
                    i,
                    prompt_id(example.prompt),
                    example.weak,
                    example.strong,
                    *(f"{scores[name][i]:.6f}" for name in names),
                ]
            )


def _oracle_curve(weak: Sequence[bool], strong: Sequence[bool]) -> list[CurvePoint]:
    # Prompts where only the strong model is right first, those where only the weak one is last.
    rank = [
        1.0 if s and not w else 0.0 if w and not s else 0.5
        for w, s in zip(weak, strong, strict=True)
    ]
    return sweep(rank, weak, strong)


def _thin(curve: Sequence[CurvePoint], points: int = 400) -> list[CurvePoint]:
    if len(curve) <= points:
        return list(curve)
    step = len(curve) / points
    kept = [curve[int(i * step)] for i in range(points)]
    return [*kept, curve[-1]]


def plot_evaluation(
    path: str | Path,
    dataset: RoutingDataset,
    evaluation: RoutingEvaluation,
    title: str = "Routing: accuracy against strong-model calls",
) -> None:
    """Accuracy against strong-call share for every router, with random and oracle, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    weak_acc, strong_acc = evaluation.weak_accuracy, evaluation.strong_accuracy
    ax.plot(
        [0, 100],
        [weak_acc * 100, strong_acc * 100],
        ":",
        color="grey",
        label="random, expected (0.50)",
    )
    oracle = _oracle_curve(dataset.weak, dataset.strong)
    ax.plot(
        [p.share * 100 for p in oracle],
        [p.accuracy * 100 for p in oracle],
        "--",
        color="black",
        label=f"oracle ({apgr(oracle, weak_acc, strong_acc):.2f})",
    )
    for name, result in evaluation.results.items():
        thin = _thin(result.curve)
        ax.plot(
            [p.share * 100 for p in thin],
            [p.accuracy * 100 for p in thin],
            label=f"{name} ({result.apgr:.3f})",
        )
    ax.axhline(weak_acc * 100, color="tab:grey", linewidth=0.8, label="weak model")
    ax.axhline(strong_acc * 100, color="tab:red", linewidth=0.8, label="strong model")
    ax.axhline(
        QUALITY_TARGET * strong_acc * 100,
        color="tab:red",
        linewidth=0.6,
        linestyle=":",
        label="95% of strong",
    )
    if evaluation.prices is not None:
        p = evaluation.prices
        ax.set_xlabel(f"strong-model calls (%)  [weak {p.weak_model}, strong {p.strong_model}]")
    else:
        ax.set_xlabel("strong-model calls (%)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{title} (n={evaluation.n}; legend: APGR)")
    ax.set_xlim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(Path(path), dpi=110)
    plt.close(fig)
