"""Train the local router from outcome data; the shipped model file is made by this code.

Pure Python: FTRL-Proximal logistic regression (McMahan et al., 2013) over the features of
``polyroute.routers.local``, a few passes over the data in a seeded order, so the same data
and seed give the same file byte for byte. L1 keeps most hashed weights at exactly zero,
which keeps the file small.

    python -m polyroute.routers.train --data DIR --weak COL --strong COL --out model.json
"""

from __future__ import annotations

import argparse
import hashlib
import math
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from polyroute.errors import InputError
from polyroute.routers.local import (
    ComplexityThresholds,
    Head,
    LengthBlend,
    LocalModel,
    features,
    last_question,
    quantiles,
    question_chars,
)
from polyroute.routing_eval import RoutingDataset, load_routing_data

Features = list[tuple[int, float]]


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser and feature settings; the defaults are the shipped model's."""

    seed: int = 0
    epochs: int = 6
    hash_bits: int = 18
    alpha: float = 0.2
    beta: float = 1.0
    l1: float = 1.0
    l2: float = 1.0
    length_weight: float = 0.5
    high_share: float = 0.2
    medium_share: float = 0.3


class _Ftrl:
    """Per-coordinate FTRL-Proximal state for one logistic head."""

    def __init__(self, config: TrainConfig, bias_index: int) -> None:
        self.alpha, self.beta = config.alpha, config.beta
        self.l1, self.l2 = config.l1, config.l2
        self.bias_index = bias_index
        self.z: dict[int, float] = {}
        self.n: dict[int, float] = {}

    def weight(self, i: int) -> float:
        z = self.z.get(i, 0.0)
        # The bias is not regularised: a skewed label rate should not cost anything.
        l1 = 0.0 if i == self.bias_index else self.l1
        l2 = 0.0 if i == self.bias_index else self.l2
        if abs(z) <= l1:
            return 0.0
        return -(z - math.copysign(l1, z)) / (
            (self.beta + math.sqrt(self.n.get(i, 0.0))) / self.alpha + l2
        )

    def update(self, feats: Features, label: float) -> None:
        weights = [self.weight(i) for i, _ in feats]
        margin = sum(w * v for w, (_, v) in zip(weights, feats, strict=True))
        p = 1.0 / (1.0 + math.exp(-max(-35.0, min(35.0, margin))))
        for w, (i, v) in zip(weights, feats, strict=True):
            g = (p - label) * v
            n = self.n.get(i, 0.0)
            sigma = (math.sqrt(n + g * g) - math.sqrt(n)) / self.alpha
            self.z[i] = self.z.get(i, 0.0) + g - sigma * w
            self.n[i] = n + g * g

    def head(self) -> Head:
        weights = {i: w for i in sorted(self.z) if (w := self.weight(i)) != 0.0}
        bias = weights.pop(self.bias_index, 0.0)
        return Head(bias, weights)


def _bias_index(hash_bits: int) -> int:
    # After the hashed space and the hand features: an index no feature uses.
    return (1 << hash_bits) + 1024


def featurize(prompts: Sequence[str], hash_bits: int) -> list[Features]:
    """The features of every prompt, each with the constant bias feature appended."""
    bias = (_bias_index(hash_bits), 1.0)
    return [[*features(p, hash_bits), bias] for p in prompts]


def fit_heads(
    feats: Sequence[Features],
    weak: Sequence[bool],
    strong: Sequence[bool],
    config: TrainConfig,
) -> tuple[Head, Head]:
    """Train the weak-right and strong-right heads on precomputed features."""
    bias = _bias_index(config.hash_bits)
    weak_head, strong_head = _Ftrl(config, bias), _Ftrl(config, bias)
    order = list(range(len(feats)))
    rng = random.Random(config.seed)
    for _ in range(config.epochs):
        rng.shuffle(order)
        for i in order:
            weak_head.update(feats[i], 1.0 if weak[i] else 0.0)
            strong_head.update(feats[i], 1.0 if strong[i] else 0.0)
    return weak_head.head(), strong_head.head()


def data_digest(dataset: RoutingDataset) -> str:
    """SHA-256 of the outcome data, stored in a model to tell which data it was trained on."""
    digest = hashlib.sha256()
    for e in dataset.examples:
        digest.update(f"{e.group}\0{e.prompt}\0{e.weak:d}{e.strong:d}\n".encode())
    return digest.hexdigest()


def train(dataset: RoutingDataset, config: TrainConfig | None = None) -> LocalModel:
    """A local router model trained on ``dataset``, thresholds calibrated on its prompts."""
    config = config or TrainConfig()
    feats = featurize(dataset.prompts, config.hash_bits)
    weak_head, strong_head = fit_heads(feats, dataset.weak, dataset.strong, config)
    gains = [strong_head.probability(f) - weak_head.probability(f) for f in feats]
    chars = [question_chars(*last_question(p)[:2]) for p in dataset.prompts]
    blend = None
    if config.length_weight > 0:
        blend = LengthBlend(
            config.length_weight,
            quantiles(gains),
            quantiles([math.log1p(c) for c in chars]),
        )
    model = LocalModel(
        hash_bits=config.hash_bits,
        weak=weak_head,
        strong=strong_head,
        blend=blend,
        training={
            "examples": len(dataset),
            "groups": len(set(dataset.groups)),
            "weakColumn": dataset.weak_column,
            "strongColumn": dataset.strong_column,
            "weakAccuracy": round(sum(dataset.weak) / len(dataset), 4),
            "strongAccuracy": round(sum(dataset.strong) / len(dataset), 4),
            "dataSha256": data_digest(dataset),
            "config": asdict(config),
        },
    )
    scores = [
        (1.0 + g) / 2.0 if blend is None else blend.score(g, c)
        for g, c in zip(gains, chars, strict=True)
    ]
    model.complexity = ComplexityThresholds.calibrated(
        scores, config.high_share, config.medium_share
    )
    return model


def group_folds(groups: Sequence[str], k: int, seed: int = 0) -> list[list[str]]:
    """Split the distinct groups into ``k`` folds at random (seeded), as evenly as possible."""
    names = sorted(set(groups))
    if k < 2 or k > len(names):
        raise ValueError(f"need between 2 and {len(names)} folds, got {k}")
    random.Random(seed).shuffle(names)
    return [sorted(names[i::k]) for i in range(k)]


def out_of_group_scores(
    dataset: RoutingDataset,
    folds: Sequence[Sequence[str]],
    config: TrainConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[float]:
    """Each prompt's score from a model trained without any prompt of its group's fold."""
    scores = [math.nan] * len(dataset)
    for number, fold in enumerate(folds, start=1):
        held = frozenset(fold)
        rest = RoutingDataset(
            tuple(e for e in dataset.examples if e.group not in held),
            dataset.weak_column,
            dataset.strong_column,
        )
        model = train(rest, config)
        for i, example in enumerate(dataset.examples):
            if example.group in held:
                scores[i] = model.score(example.prompt)
        if progress is not None:
            progress(f"fold {number}/{len(folds)} done")
    return scores


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of ``polyroute train-router`` (shared with ``python -m``)."""
    parser = parser or argparse.ArgumentParser(
        prog="python -m polyroute.routers.train", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="DIR",
        help="folder of outcome CSVs (repeatable)",
    )
    parser.add_argument("--weak", required=True, metavar="COL", help="weak model's column")
    parser.add_argument("--strong", required=True, metavar="COL", help="strong model's column")
    parser.add_argument("--out", required=True, metavar="FILE", help="model file to write")
    parser.add_argument("--seed", type=int, default=TrainConfig.seed, help="shuffle seed")
    parser.add_argument(
        "--epochs", type=int, default=TrainConfig.epochs, help="passes over the data"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """Train and write the model; one line on stderr and exit code 2 on bad input."""
    try:
        dataset = load_routing_data(args.data, args.weak, args.strong)
    except InputError as exc:
        print(f"polyroute: error: {exc}", file=sys.stderr)
        return 2
    if args.epochs < 1:
        print("polyroute: error: --epochs must be at least 1", file=sys.stderr)
        return 2
    model = train(dataset, TrainConfig(seed=args.seed, epochs=args.epochs))
    try:
        model.save(args.out)
    except OSError as exc:
        print(f"polyroute: error: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
        return 2
    kept = len(model.weak.weights) + len(model.strong.weights)
    print(
        f"trained on {len(dataset)} prompts from {len(set(dataset.groups))} files; "
        f"{kept} non-zero weights; wrote {args.out}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m polyroute.routers.train``."""
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
