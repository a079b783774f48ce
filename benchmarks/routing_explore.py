"""Other routers tried on held-out subjects, with numpy and scikit-learn (not shipped).

The same subject folds as ``routing_holdout.py``; each approach is trained on the other folds'
subjects and measured on the held-out prompts pooled, alone and mixed half and half with the
length quantile (as the shipped router mixes its heads). Needs the ``explore`` extra:

    .venv/bin/pip install -e '.[explore]'
    .venv/bin/python benchmarks/routing_explore.py [--seeds 0 1] [--write benchmarks/ROUTING.md]
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy.stats import rankdata
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import Ridge
from sklearn.preprocessing import StandardScaler, normalize
from wordfreq import tokenize, zipf_frequency

from polyroute.routers.local import hand_features, last_question, question_chars
from polyroute.routers.train import group_folds
from polyroute.routing_eval import RoutingDataset, evaluate_scores, load_routing_data

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "data" / "routing" / "mmlu"
WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG = "gpt-4-1106-preview"
START, END = "<!-- explore:start -->", "<!-- explore:end -->"

Array = NDArray[np.float64]
Mask = NDArray[np.bool_]
FitPredict = Callable[[Mask, Mask], Array]


def rarity(words: Sequence[str], cache: dict[str, float]) -> list[float]:
    """Word-frequency statistics (Zipf scale, wordfreq's English lists) of a word list."""
    if not words:
        return [0.0] * 6
    zipf = np.array([cache.setdefault(w, zipf_frequency(w, "en")) for w in words])
    content = zipf[zipf < 5.5] if (zipf < 5.5).any() else zipf
    return [
        float(zipf.mean()),
        float(content.mean()),
        float(np.percentile(content, 10)),
        float(content.min()),
        float((zipf < 3).mean()),
        float((zipf == 0).mean()),
    ]


def features(prompts: Sequence[str]) -> tuple[Array, Array, Array, list[str]]:
    """Hand features, rarity features, log length and the question text of every prompt."""
    hand, rare, length, texts = [], [], [], []
    cache: dict[str, float] = {}
    for prompt in prompts:
        stem, options, few_shot = last_question(prompt)
        hand.append(hand_features(stem, options, few_shot))
        stem_words = [t for t in tokenize(stem, "en") if t.isalpha()]
        option_words = [t for o in options for t in tokenize(o, "en") if t.isalpha()]
        rare.append(
            rarity(stem_words, cache)
            + rarity(option_words, cache)
            + rarity(stem_words + option_words, cache)
        )
        length.append(math.log1p(question_chars(stem, options)))
        texts.append(stem + "\n" + "\n".join(options))
    return np.array(hand), np.array(rare), np.array(length), texts


def out_of_fold(groups: Array, split: Sequence[Sequence[str]], fit: FitPredict) -> Array:
    scores = np.zeros(len(groups))
    for fold in split:
        test = np.isin(groups, list(fold))
        scores[test] = fit(~test, test)
    return scores


def approaches(dataset: RoutingDataset) -> dict[str, FitPredict]:
    hand, rare, length, texts = features(dataset.prompts)
    gain = np.array(dataset.strong, float) - np.array(dataset.weak, float)
    groups = np.array(dataset.groups)
    tfidf = TfidfVectorizer(sublinear_tf=True, min_df=2, stop_words="english").fit_transform(texts)

    def ridge_on(x: Array, alpha: float = 10.0) -> FitPredict:
        def fit(train: Mask, test: Mask) -> Array:
            scaler = StandardScaler().fit(x[train])
            model = Ridge(alpha=alpha).fit(scaler.transform(x[train]), gain[train])
            return np.asarray(model.predict(scaler.transform(x[test])), float)

        return fit

    def boosted_on(x: Array) -> FitPredict:
        def fit(train: Mask, test: Mask) -> Array:
            model = HistGradientBoostingRegressor(
                max_iter=150, learning_rate=0.05, max_leaf_nodes=15, min_samples_leaf=80
            ).fit(x[train], gain[train])
            return np.asarray(model.predict(x[test]), float)

        return fit

    def tfidf_ridge(train: Mask, test: Mask) -> Array:
        model = Ridge(alpha=1.0).fit(tfidf[train], gain[train])
        return np.asarray(model.predict(tfidf[test]), float)

    def nearest_subjects(train: Mask, test: Mask) -> Array:
        # Each held-out prompt gets the gains of the training subjects it resembles most.
        names = sorted(set(groups[train]))
        centroids = normalize(
            np.vstack([np.asarray(tfidf[groups == g].mean(axis=0)) for g in names])
        )
        subject_gain = np.array([gain[groups == g].mean() for g in names])
        weights = np.exp((tfidf[test] @ centroids.T) / 0.02)
        weights /= weights.sum(axis=1, keepdims=True)
        return np.asarray(weights @ subject_gain, float)

    both = np.hstack([hand, rare, length[:, None]])
    return {
        "word rarity (wordfreq), ridge on the gain": ridge_on(rare),
        "word rarity, gradient boosting on the gain": boosted_on(rare),
        "hand features, gradient boosting on the gain": boosted_on(hand),
        "hand + rarity + length, gradient boosting": boosted_on(both),
        "TF-IDF words, ridge on the gain": tfidf_ridge,
        "gain of the most similar training subjects (TF-IDF centroids)": nearest_subjects,
        "length": lambda _train, test: length[test],
    }


def run(data: Path, seeds: Sequence[int]) -> str:
    dataset = load_routing_data([data], WEAK, STRONG)
    groups = np.array(dataset.groups)
    length = np.array([math.log1p(question_chars(*last_question(p)[:2])) for p in dataset.prompts])

    def pooled(scores: Array) -> float:
        result = evaluate_scores(dataset, {"x": [float(s) for s in scores]}).results["x"]
        assert result.apgr is not None
        return result.apgr

    def quantile(x: Array) -> Array:
        return np.asarray(rankdata(x) / len(x), float)

    header = " | ".join(f"seed {s} | seed {s}, half length" for s in seeds)
    lines = [f"| approach | {header} |", "|---|" + "---|" * (2 * len(seeds))]
    for name, fit in approaches(dataset).items():
        cells = []
        for seed in seeds:
            scores = out_of_fold(groups, group_folds(dataset.groups, 5, seed), fit)
            mixed = 0.5 * quantile(scores) + 0.5 * quantile(length)
            cells += [f"{pooled(scores):.3f}", f"{pooled(mixed):.3f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        print(lines[-1], file=sys.stderr, flush=True)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="outcome data folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="fold seeds")
    parser.add_argument("--write", type=Path, help="also write the table into this markdown file")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"error: {args.data}: no such folder", file=sys.stderr)
        return 2
    table = run(args.data, args.seeds)
    print(table)
    if args.write:
        command = "`.venv/bin/python benchmarks/routing_explore.py --seeds " + " ".join(
            str(s) for s in args.seeds
        )
        block = f"{START}\n\n{command}` (pooled held-out APGR, 5 subject folds)\n\n{table}\n\n{END}"
        text = args.write.read_text(encoding="utf-8")
        if START not in text or END not in text:
            print(f"error: {args.write}: no {START} ... {END} block", file=sys.stderr)
            return 2
        text = text[: text.index(START)] + block + text[text.index(END) + len(END) :]
        args.write.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
