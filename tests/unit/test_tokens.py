"""The estimator must never undercount by more than 10% against a real tokenizer."""

from __future__ import annotations

import csv
import random
import sysconfig
from pathlib import Path

import pytest

from polyroute.tokens import estimate_tokens

bpe = pytest.importorskip("bpe_openai", reason="bpe-openai ships real BPE vocabularies offline")

REPO = Path(__file__).resolve().parents[2]
MMLU = REPO.parent / "shared" / "data" / "routing" / "mmlu"


def _english() -> list[str]:
    texts = [
        "What is the capital of France?",
        "Summarize the quarterly report and list the three biggest risks.",
        (REPO / "examples/data/annual_report.txt").read_text()[:20_000],
    ]
    if MMLU.is_dir():
        for path in sorted(MMLU.glob("*.csv"))[::4]:
            with path.open(newline="") as fh:
                rows = list(csv.DictReader(fh))[:8]
            texts.extend(r["prompt"] for r in rows)
    return texts


def _code() -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if p.name != "this.py")
    rng = random.Random(7)
    texts = [p.read_text(errors="ignore")[:15_000] for p in rng.sample(files, 40)]
    texts.append((REPO / "examples/data/payments_refund.diff").read_text())
    texts.extend(p.read_text() for p in sorted((REPO / "polyroute").glob("*.py"))[:10])
    return [t for t in texts if len(t) > 40]


@pytest.mark.parametrize("encoding", ["o200k_base", "cl100k_base"])
@pytest.mark.parametrize("kind", ["english", "code"])
def test_never_undercounts_by_more_than_ten_percent(kind: str, encoding: str) -> None:
    enc = bpe.get_encoding(encoding)
    texts = _english() if kind == "english" else _code()
    worst = min(estimate_tokens(t) / len(enc.encode(t)) for t in texts)
    assert worst >= 0.9, f"{kind}/{encoding}: estimate as low as {worst:.2f} of the real count"


def test_does_not_wildly_overcount_on_long_text() -> None:
    enc = bpe.get_encoding("o200k_base")
    text = (REPO / "examples/data/annual_report.txt").read_text()
    assert estimate_tokens(text) / len(enc.encode(text)) < 1.5


def test_empty_and_tiny() -> None:
    assert estimate_tokens("") == 0
    assert 1 <= estimate_tokens("a") <= 2
    assert estimate_tokens("hello world") <= 3
