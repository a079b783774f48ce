"""Regenerates the example data: a receipt PNG and a long annual report (>100,000 tokens).

Deterministic: ``python examples/data/make_data.py`` writes the same bytes every time."""

from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent


def png(width: int, height: int) -> bytes:
    """A grey receipt-shaped PNG with dark 'text' bars (the pixels do not matter offline)."""
    rows = []
    for y in range(height):
        bar = (y // 12) % 3 == 0 and 40 < y < height - 40
        row = bytes(
            [0] + [40 if bar and 30 < x < width - 30 - (y * 7) % 120 else 245 for x in range(width)]
        )
        rows.append(row)
    raw = b"".join(rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


SECTIONS = [
    "Revenue",
    "Operating costs",
    "Cloud infrastructure",
    "Data-centre expansion",
    "Risk factors",
    "Regulation",
    "Customers",
    "People",
    "Security",
    "Outlook",
]
SUBJECTS = [
    "Revenue",
    "The board",
    "Our margin",
    "Demand",
    "The cost of power",
    "Churn",
    "The new region",
    "Cash flow",
    "The team",
    "Our largest customer",
    "The audit",
]
VERBS = [
    "rose",
    "fell",
    "held steady",
    "grew",
    "was under review",
    "came in ahead of plan",
    "fell short of the forecast",
    "improved",
    "was flat",
]
TAILS = [
    "in the first half of the year",
    "after the price change in March",
    "as we moved more work to the cloud",
    "while the new site was built",
    "because two large contracts were renewed",
    "as the market slowed in the autumn",
    "and we expect the same next year",
    "but the risk to supply remains high",
    "which the committee will track each month",
    "as rates and prices went up",
]


def report(target_words: int = 88_000) -> str:
    rng = random.Random(2026)
    out = ["Northwind Data plc — Annual Report 2026\n"]
    words = 0
    quarter = 0
    while words < target_words:
        section = SECTIONS[quarter % len(SECTIONS)]
        out.append(f"\n{section} (part {quarter // len(SECTIONS) + 1})\n")
        for _ in range(6):
            sentences = []
            for _ in range(rng.randint(4, 7)):
                s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(TAILS)}"
                if rng.random() < 0.3:
                    s += f", by {rng.randint(2, 40)} per cent"
                sentences.append(s + ".")
                words += len(s.split())
            out.append(" ".join(sentences) + "\n")
        if section == "Data-centre expansion" and quarter // len(SECTIONS) == 3:
            out.append(
                "The board decided to approve the second data-centre phase in Frankfurt, "
                "capped at 48 million euros, conditional on a signed power contract.\n"
            )
        quarter += 1
    return "".join(out)


if __name__ == "__main__":
    (HERE / "receipt.png").write_bytes(png(600, 900))
    (HERE / "annual_report.txt").write_text(report(), encoding="utf-8")
