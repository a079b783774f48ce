"""Held-out-subject cross-validation of the local router against random and length routing.

Whole subjects (CSV files) are held out: the folds split the subjects, the local router is
trained on the other folds' subjects with the shipped settings, and every router is measured
on the held-out fold's prompts pooled together. Also times the shipped model.

    python benchmarks/routing_holdout.py [--folds 5] [--seed 0] [--write benchmarks/ROUTING.md]

The data defaults to ``../shared/data/routing/mmlu`` beside the repository.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from polyroute.routers import LengthRouter, RandomRouter
from polyroute.routers.local import SHIPPED_MODEL, LocalModel, LocalRouter
from polyroute.routers.train import TrainConfig, group_folds, out_of_group_scores
from polyroute.routing_eval import (
    RoutingDataset,
    evaluate_scores,
    load_routing_data,
    plot_evaluation,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "data" / "routing" / "mmlu"
WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG = "gpt-4-1106-preview"
ROUTERS = ("local", "length", "random")


def _fmt(value: float | None, pct: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value * 100:.1f}%" if pct else f"{value:.3f}"


def _subset_scores(
    dataset: RoutingDataset, scores: dict[str, list[float]], keep: set[str]
) -> tuple[RoutingDataset, dict[str, list[float]]]:
    idx = [i for i, g in enumerate(dataset.groups) if g in keep]
    sub = RoutingDataset(
        tuple(dataset.examples[i] for i in idx), dataset.weak_column, dataset.strong_column
    )
    return sub, {name: [values[i] for i in idx] for name, values in scores.items()}


def timing(prompts: Sequence[str], samples: int = 2000) -> dict[str, float]:
    """Load time, file size and median score latency of the shipped model."""
    resource = resources.files("polyroute.routers").joinpath(SHIPPED_MODEL)
    data = resource.read_bytes()
    loads = []
    for _ in range(5):
        start = time.perf_counter()
        model = LocalModel.from_json(json.loads(data))
        loads.append(time.perf_counter() - start)
    router = LocalRouter(model)
    per_prompt = []
    for prompt in prompts[:samples]:
        start = time.perf_counter()
        router.score(prompt)
        per_prompt.append(time.perf_counter() - start)
    return {
        "load_ms": statistics.median(loads) * 1000,
        "median_score_ms": statistics.median(per_prompt) * 1000,
        "p99_score_ms": sorted(per_prompt)[int(0.99 * (len(per_prompt) - 1))] * 1000,
        "file_bytes": float(len(data)),
        "weights": float(len(model.weak.weights) + len(model.strong.weights)),
    }


def subject_gains(dataset: RoutingDataset) -> list[float]:
    """Each prompt's subject's true mean gain (strong right - weak right): what a router told
    the subject, and nothing else, would best rank by."""
    totals: dict[str, list[int]] = {}
    for group, weak, strong in zip(dataset.groups, dataset.weak, dataset.strong, strict=True):
        total = totals.setdefault(group, [0, 0])
        total[0] += int(strong) - int(weak)
        total[1] += 1
    return [totals[g][0] / totals[g][1] for g in dataset.groups]


def ceiling_lines(
    dataset: RoutingDataset, local: Sequence[float], split: Sequence[Sequence[str]]
) -> list[str]:
    """The subject-oracle ceiling, alone and with the local router's order inside subjects."""
    gains = subject_gains(dataset)
    # Local scores lie in [0, 1]; scaled by 1e-6 they only order prompts within a subject.
    scores = {
        "subject": gains,
        "subject+local": [g + 1e-6 * s for g, s in zip(gains, local, strict=True)],
    }
    pooled = evaluate_scores(dataset, scores).results
    folds = [evaluate_scores(*_subset_scores(dataset, scores, set(fold))).results for fold in split]

    def fold_mean(name: str) -> str:
        values = [r[name].apgr for r in folds if r[name].apgr is not None]
        return _fmt(statistics.fmean(values) if values else None)

    subject, both = pooled["subject"], pooled["subject+local"]
    return [
        "Ceiling of a router that knows only the subject: told each held-out subject's true mean "
        f"gain, it reaches pooled APGR {_fmt(subject.apgr)} (fold mean {fold_mean('subject')}), "
        f"CPT(50%) {_fmt(subject.cpt50, True)}, CPT(80%) {_fmt(subject.cpt80, True)}. "
        "Ordering each subject's prompts by the held-out local score on top of that gives "
        f"{_fmt(both.apgr)} (fold mean {fold_mean('subject+local')}), "
        f"CPT(50%) {_fmt(both.cpt50, True)}: what the text adds inside a subject.",
    ]


def run(data: Path, folds: int, seed: int) -> tuple[str, dict[str, object]]:
    """The markdown report and the raw figures."""
    dataset = load_routing_data([data], WEAK, STRONG)
    config = TrainConfig()
    split = group_folds(dataset.groups, folds, seed)
    started = time.perf_counter()
    scores = {
        "local": out_of_group_scores(
            dataset, split, config, lambda m: print(m, file=sys.stderr, flush=True)
        ),
        "length": [LengthRouter().score(p) for p in dataset.prompts],
        "random": [RandomRouter(seed).score(p) for p in dataset.prompts],
    }
    train_seconds = time.perf_counter() - started

    lines = [
        "| fold | subjects | n | weak | strong | "
        + " | ".join(f"{r} APGR | {r} CPT50 | {r} CPT80" for r in ROUTERS)
        + " |",
        "|" + "---|" * (5 + 3 * len(ROUTERS)),
    ]
    per_fold: dict[str, list[dict[str, float | None]]] = {r: [] for r in ROUTERS}
    for number, fold in enumerate(split, start=1):
        sub, sub_scores = _subset_scores(dataset, scores, set(fold))
        ev = evaluate_scores(sub, sub_scores)
        cells = []
        for r in ROUTERS:
            res = ev.results[r]
            per_fold[r].append({"apgr": res.apgr, "cpt50": res.cpt50, "cpt80": res.cpt80})
            cells += [_fmt(res.apgr), _fmt(res.cpt50, True), _fmt(res.cpt80, True)]
        lines.append(
            f"| {number} | {len(fold)} | {ev.n} | {_fmt(ev.weak_accuracy, True)} | "
            f"{_fmt(ev.strong_accuracy, True)} | " + " | ".join(cells) + " |"
        )

    def mean(router: str, key: str) -> float | None:
        values = [f[key] for f in per_fold[router] if f[key] is not None]
        return statistics.fmean(v for v in values if v is not None) if values else None

    mean_cells = []
    for r in ROUTERS:
        mean_cells += [
            f"**{_fmt(mean(r, 'apgr'))}**",
            _fmt(mean(r, "cpt50"), True),
            _fmt(mean(r, "cpt80"), True),
        ]
    lines.append("| mean | | | | | " + " | ".join(mean_cells) + " |")
    pooled = evaluate_scores(dataset, scores)
    pooled_cells = []
    for r in ROUTERS:
        res = pooled.results[r]
        pooled_cells += [_fmt(res.apgr), _fmt(res.cpt50, True), _fmt(res.cpt80, True)]
    lines.append(
        f"| pooled | {len(set(dataset.groups))} | {pooled.n} | "
        f"{_fmt(pooled.weak_accuracy, True)} | {_fmt(pooled.strong_accuracy, True)} | "
        + " | ".join(pooled_cells)
        + " |"
    )
    ceiling = ceiling_lines(dataset, scores["local"], split)
    times = timing(dataset.prompts)
    if len(split) <= 10:
        lines.append("")
        lines += [
            f"Fold {number}: " + ", ".join(name.removeprefix("mmlu_") for name in fold) + "."
            for number, fold in enumerate(split, start=1)
        ]
    lines += [
        "",
        *ceiling,
        "",
        f"Shipped model: {times['file_bytes'] / 1e6:.2f} MB, {int(times['weights'])} non-zero "
        f"weights; load {times['load_ms']:.0f} ms; score median {times['median_score_ms']:.3f} "
        f"ms, p99 {times['p99_score_ms']:.3f} ms per prompt (one core, "
        f"{platform.python_implementation()} {platform.python_version()}). "
        f"Cross-validation took {train_seconds:.0f} s.",
    ]
    figures: dict[str, object] = {
        "folds": [sorted(f) for f in split],
        "perFold": per_fold,
        "pooled": {r: pooled.results[r].summary() for r in ROUTERS},
        "timing": times,
        "evaluation": pooled,
        "dataset": dataset,
    }
    return "\n".join(lines), figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="outcome data folder")
    parser.add_argument("--folds", type=int, default=5, help="subject folds (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="fold split and random router seed")
    parser.add_argument("--write", type=Path, help="also write the table into this markdown file")
    parser.add_argument(
        "--plot", type=Path, help="also draw the pooled held-out curves of every router (PNG)"
    )
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"error: {args.data}: no such folder", file=sys.stderr)
        return 2
    table, figures = run(args.data, args.folds, args.seed)
    print(table)
    if args.plot:
        plot_evaluation(
            args.plot,
            figures["dataset"],  # type: ignore[arg-type]
            figures["evaluation"],  # type: ignore[arg-type]
            title=f"Held-out subjects ({args.folds} folds): accuracy against strong calls",
        )
    if args.write:
        command = ".venv/bin/python benchmarks/routing_holdout.py"
        command += f" --folds {args.folds} --seed {args.seed}"
        _write(args.write, table, command)
    return 0


def _write(path: Path, table: str, command: str) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    start, end = "<!-- holdout:start -->", "<!-- holdout:end -->"
    block = f"{start}\n\n`{command}`\n\n{table}\n\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text + ("\n" if text else "") + block + "\n"
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
