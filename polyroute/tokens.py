"""Token estimation without a tokenizer download.

The estimate is deliberately on the high side: it must never undercount by more than 10%
against a real BPE tokenizer (o200k_base, cl100k_base) on English prose or code, because an
undercount would let a compressed input overflow a model's window. A model's registry entry
may scale it (``token_factor``) for tokenizers that split finer.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache

# Words, numbers, runs of whitespace, and single other characters, as a BPE pre-tokenizer
# splits them.
_PIECES = re.compile(r" ?[A-Za-z]+| ?[0-9]+|\s+|([^A-Za-z0-9\s])\1*")

# Tokens per image, by the providers' own rules of thumb for a ~1 megapixel image.
IMAGE_TOKENS_DEFAULT = 1600

# Headroom over the piece count, for rare words that split finer than the rule above.
_MARGIN = 1.05


@lru_cache(maxsize=4096)
def estimate_tokens(text: str) -> int:
    """Estimated tokens of ``text`` (never below a real BPE count by more than 10%)."""
    if not text:
        return 0
    count = 0.0
    for piece in (m.group(0) for m in _PIECES.finditer(text)):
        if piece[0] == " " and len(piece) > 1:
            piece = piece[1:]
            # BPE pre-tokenizers keep a space before a word but split it off before digits.
            if piece[0].isdigit():
                count += 1.0
        first = piece[0]
        if first.isalpha():
            # Common words are one token; long or rare ones split every ~4 letters.
            n = len(piece)
            count += 1.0 if n <= 7 else 1.0 + math.ceil((n - 7) / 5)
        elif first.isdigit():
            count += math.ceil(len(piece) / 3)
        elif first.isspace():
            # A single space merges into the next word; indentation and newlines do not.
            if piece != " ":
                count += 1.0 if len(piece) <= 4 else 1.0 + (len(piece) - 1) // 8
        else:
            # A run of one repeated symbol ("----", "____") is a few tokens, not one each.
            count += math.ceil(len(piece) / 4)
        if not first.isascii():
            count += 1.0
    return max(1, math.ceil(count * _MARGIN))


def estimate_image_tokens(width: int | None = None, height: int | None = None) -> int:
    """Tokens an image costs as input: (w*h)/750, capped near 1.15 MP as providers resize."""
    if not width or not height:
        return IMAGE_TOKENS_DEFAULT
    return min(math.ceil(width * height / 750), 1600)
